#!/bin/bash
# metalor unpack against the usual extractors, on the Debian benchmark image.
#
#   bash benches/compare.sh            (as root; RUNS=3 by default)
#
# Tools, one command at a time, each into a FRESH directory:
#   metalor unpack -q --image DEBIAN:TAG ROOTFS             gzip zstd plain
#   umoci unpack --rootless --keep-dirlinks                 gzip plain
#   GNU tar per layer, in manifest order                    gzip (tar -xzf), zstd (zstd -dc | tar -x),
#                                                           plain (tar -xf)
#   pigz -dc | tar -x per layer                             gzip
# on tmpfs (/dev/shm) and on the disk under $BENCH (ext4 here). Reported per case: median
# wall time over RUNS, min-max, user and sys CPU (medians), peak RSS (max; for a pipeline
# the biggest single process), the 1-minute load average before the first and after the
# last run, and metalor's wall time divided by the tool's (<1: metalor is faster).
#
# Order: runs are interleaved (run 1 of every case, then run 2, ...) so slow drifts in
# background load hit every case alike. Before each measurement: `sync` and, on disk,
# nothing is deleted. ext4 extraction right after `rm -rf` of a big tree is 3-10x slower
# (recently freed inodes are skipped), so disk targets are all created fresh and only
# deleted after the last measurement. tmpfs targets are deleted right after each
# measurement (no such effect there, and keeping them would fill RAM).
# GNU tar and pigz do not apply whiteouts; umoci also writes an mtree manifest of the
# rootfs. As root, metalor and tar keep the image's owners; umoci --rootless does not.
#
# Env: RUNS (3), BENCH (/tmp/metalor-bench), IMAGES ($BENCH/images), TOOLS (shared/tools
# with make-images.sh), TMPFS_DIR (/dev/shm/metalor-compare), DISK_DIR ($BENCH/compare),
# FILESYSTEMS ("tmpfs disk"), CARGO_TARGET_DIR. Results: stdout and $BENCH/results/.
set -euo pipefail
umask 022
export LC_ALL=C

[ "$(id -u)" = 0 ] || { echo "run as root (umoci, ownership, /dev/shm)" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
BENCH=${BENCH:-/tmp/metalor-bench}
IMAGES=${IMAGES:-$BENCH/images}
RESULTS=${RESULTS:-$BENCH/results}
TMPFS_DIR=${TMPFS_DIR:-/dev/shm/metalor-compare}
DISK_DIR=${DISK_DIR:-$BENCH/compare}
FILESYSTEMS=${FILESYSTEMS:-tmpfs disk}
export BENCH IMAGES RESULTS

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# ------------------------------------------------------------------ prerequisites
need_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
need_pkgs time pigz umoci zstd tar gzip jq coreutils findutils

find_tools() {
  local d
  for d in "${TOOLS:-}" "$ROOT/../shared/tools" "$ROOT/shared/tools" /work/shared/tools; do
    [ -n "$d" ] && [ -x "$d/make-images.sh" -o -f "$d/make-images.sh" ] && { echo "$d"; return; }
  done
  return 1
}

IMG=$IMAGES/debian
if [ ! -f "$IMG/index.json" ]; then
  TOOLS=$(find_tools) || die "no $IMG and no make-images.sh found (set TOOLS=.../shared/tools)"
  log "building the benchmark images with $TOOLS/make-images.sh (several minutes the first time)"
  bash "$TOOLS/make-images.sh" "$IMAGES"
fi

command -v cargo >/dev/null || die "cargo not found"
log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
METALOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/metalor
[ -x "$METALOR" ] || die "no binary at $METALOR"

# ------------------------------------------------------------------ the image
# layers TAG : blob paths of TAG's manifest, in order.
layers() {
  local m
  m=$(jq -r --arg t "$1" \
      '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
      "$IMG/index.json")
  [ -n "$m" ] || die "no tag $1 in $IMG"
  jq -r '.layers[].digest' "$IMG/blobs/${m/://}" | sed "s,^\([a-z0-9]*\):,$IMG/blobs/\1/,"
}
declare -A LAYERS
for tag in gzip zstd plain; do
  LAYERS[$tag]=$(layers "$tag" | tr '\n' ' ')
done
# Warm the page cache: every tool reads the blobs from memory.
cat ${LAYERS[gzip]} ${LAYERS[zstd]} ${LAYERS[plain]} > /dev/null

# ------------------------------------------------------------------ the cases
# name|compression|command template; {D} is the fresh target's parent, {T} the target.
CASES=(
  "metalor|gzip|$METALOR unpack -q --image $IMG:gzip {T}"
  "metalor|zstd|$METALOR unpack -q --image $IMG:zstd {T}"
  "metalor|plain|$METALOR unpack -q --image $IMG:plain {T}"
  "umoci|gzip|umoci unpack --rootless --keep-dirlinks --image $IMG:gzip {T}"
  "umoci|plain|umoci unpack --rootless --keep-dirlinks --image $IMG:plain {T}"
  "tar|gzip|mkdir {T} && for l in ${LAYERS[gzip]}; do tar -xzf \$l -C {T}; done"
  "tar|zstd|mkdir {T} && for l in ${LAYERS[zstd]}; do zstd -dc \$l | tar -x -C {T}; done"
  "tar|plain|mkdir {T} && for l in ${LAYERS[plain]}; do tar -xf \$l -C {T}; done"
  "pigz+tar|gzip|mkdir {T} && for l in ${LAYERS[gzip]}; do pigz -dc \$l | tar -x -C {T}; done"
)
label() {
  case $1 in
    metalor) echo "metalor unpack" ;;
    umoci) echo "umoci unpack --rootless --keep-dirlinks" ;;
    tar) case $2 in gzip) echo "tar -xzf (per layer)" ;; zstd) echo "zstd -dc \| tar -x" ;; *) echo "tar -xf (per layer)" ;; esac ;;
    pigz+tar) echo "pigz -dc \| tar -x" ;;
  esac
}

fs_dir() { case $1 in tmpfs) echo "$TMPFS_DIR" ;; disk) echo "$DISK_DIR" ;; esac; }

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
RAW=$RESULTS/compare-$STAMP.tsv
printf 'fs\ttool\tcomp\trun\twall\tuser\tsys\tmaxrss_kb\tload_before\tload_after\n' > "$RAW"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for fs in $FILESYSTEMS; do
  base=$(fs_dir "$fs")
  rm -rf "$base"
  mkdir -p "$base"
  sync
  [ "$fs" = disk ] && sleep 5   # let the removal's writeback settle before measuring
  fstype=$(findmnt -n -o FSTYPE -T "$base" 2>/dev/null | head -n1 || stat -f -c %T "$base")
  log "== $fs ($base, $fstype): $RUNS runs x ${#CASES[@]} cases, load $(cut -d' ' -f1-3 /proc/loadavg)"
  for run in $(seq 1 "$RUNS"); do
    for c in "${CASES[@]}"; do
      IFS='|' read -r tool comp tmpl <<< "$c"
      parent=$base/$tool-$comp-$run
      mkdir "$parent"
      target=$parent/out
      cmd=${tmpl//\{T\}/$target}
      sync
      lb=$(load1)
      tf=$parent.time
      if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" bash -c "$cmd" > "$parent.log" 2>&1; then
        cat "$parent.log" >&2
        die "$tool $comp failed on $fs: $cmd"
      fi
      la=$(load1)
      read -r wall user sys rss < <(tail -n1 "$tf")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$fs" "$tool" "$comp" "$run" "$wall" "$user" "$sys" "$rss" "$lb" "$la" >> "$RAW"
      extra=""
      if [ "$run" = 1 ] && [ "$fs" = tmpfs ]; then
        extra=", $(find "$target" | wc -l) paths"
      fi
      log "$fs run $run $tool/$comp: ${wall}s wall, ${user}s user, ${sys}s sys, $((rss / 1024)) MB rss, load $lb -> $la$extra"
      if [ "$fs" = tmpfs ]; then rm -rf "$parent"; fi
    done
  done
  log "== $fs done, load $(cut -d' ' -f1-3 /proc/loadavg)"
done

# Disk targets go only now, after every measurement.
for fs in $FILESYSTEMS; do rm -rf "$(fs_dir "$fs")"; done

# ------------------------------------------------------------------ the table
TABLE=$RESULTS/compare-$STAMP.md
{
  echo "metalor $("$METALOR" --version 2>/dev/null | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), RUNS=$RUNS, $(date -u +%Y-%m-%dT%H:%MZ)"
  mb() { cat "$@" | wc -c | awk '{printf "%.0f MB", $1 / 1e6}'; }
  echo "image: $IMG, $(echo ${LAYERS[plain]} | wc -w) layers, $(mb ${LAYERS[plain]}) as tar, $(mb ${LAYERS[gzip]}) gzip, $(mb ${LAYERS[zstd]}) zstd"
  echo
  echo "load average (1/5/15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  for fs in $FILESYSTEMS; do echo "$fs: $(fs_dir "$fs") ($(findmnt -n -o FSTYPE -T "$(dirname "$(fs_dir "$fs")")" 2>/dev/null | head -n1 || echo '?'))"; done
  echo
  echo "| fs | tool | layers | wall s (median) | min-max | user s | sys s | peak RSS MB | load before -> after | metalor / tool |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$TABLE"
awk -F'\t' -v OFS='\t' 'NR > 1' "$RAW" | sort -t$'\t' -k1,1 -k2,2 -k3,3 -k4,4n > "$RAW.sorted"
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F'\t' -v fs="$1" -v t="$2" -v c="$3" -v k="$4" '$1==fs && $2==t && $3==c {print $k}' "$RAW.sorted"; }
for fs in $FILESYSTEMS; do
  for c in "${CASES[@]}"; do
    IFS='|' read -r tool comp _ <<< "$c"
    wall=$(col "$fs" "$tool" "$comp" 5 | median)
    mn=$(col "$fs" "$tool" "$comp" 5 | sort -g | head -n1)
    mx=$(col "$fs" "$tool" "$comp" 5 | sort -g | tail -n1)
    user=$(col "$fs" "$tool" "$comp" 6 | median)
    sys=$(col "$fs" "$tool" "$comp" 7 | median)
    rss=$(col "$fs" "$tool" "$comp" 8 | sort -g | tail -n1)
    lb=$(col "$fs" "$tool" "$comp" 9 | head -n1)
    la=$(col "$fs" "$tool" "$comp" 10 | tail -n1)
    mwall=$(col "$fs" metalor "$comp" 5 | median)
    ratio=$(awk -v m="$mwall" -v w="$wall" 'BEGIN { if (w > 0) printf "%.2fx", m / w; else print "-" }')
    [ "$tool" = metalor ] && ratio="1"
    printf '| %s | %s | %s | %.2f | %.2f-%.2f | %.2f | %.2f | %.0f | %s -> %s | %s |\n' \
      "$fs" "$(label "$tool" "$comp")" "$comp" "$wall" "$mn" "$mx" "$user" "$sys" \
      "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$lb" "$la" "$ratio" >> "$TABLE"
  done
done
rm -f "$RAW.sorted"
{
  echo
  echo "wall/user/sys: medians over RUNS; peak RSS: max over runs (GNU time %M: the largest single process of a pipeline); load: 1-minute load average before the first and after the last run of the row; metalor / tool: metalor's median wall time on the same fs and layer compression divided by the tool's (<1: metalor faster). Raw runs: $RAW"
} >> "$TABLE"
cat "$TABLE"
