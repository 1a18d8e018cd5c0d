#!/bin/bash
# metalor against the usual extractors and its Rust peers, on the Debian benchmark image.
#
#   bash benches/compare.sh            (as root; RUNS=3 by default)
#
# Tools, one command at a time, each into a FRESH directory:
#   metalor unpack -q --image DEBIAN:TAG ROOTFS             gzip zstd plain
#   umoci unpack --rootless --keep-dirlinks                 gzip plain
#   GNU tar per layer, in manifest order                    gzip (tar -xzf), zstd (zstd -dc | tar -x),
#                                                           plain (tar -xf)
#   pigz -dc | tar -x per layer                             gzip
#   floor: igzip -dc / zstd -dc of every layer to /dev/null gzip zstd (decode only: the floor
#     the targets below are measured against; no tree)
#   peers oci-image  (oci-image 0.1.0, apply_layer_file)    gzip zstd plain
#   peers ocirender  (ocirender 0.3.0, convert_streaming)   gzip zstd plain
# and end to end from a loopback docker-registry this script starts (127.0.0.1, a free port,
# storage under $BENCH; the image is pushed once with skopeo, stopped at exit):
#   metalor pull + metalor unpack                           gzip zstd
#   prepare_oci_rootfs (examples/prepare_rootfs: the pull   gzip zstd
#     and the unpack overlap, each blob is hashed once)
#   skopeo copy + umoci unpack --rootless --keep-dirlinks   gzip
#   peers oci-unpack (oci-unpack 0.2.0, pull + unpack)      gzip zstd
# The peers run through benches/peers (bench-only drivers, built here with
# `cargo build --release -p metalor-peers`). oci-unpack checks each blob's digest as it
# downloads; none of the peers checks a diff_id, and oci-image and ocirender check no
# digest at all. metalor verifies every blob digest and size and every diff_id.
#
# on tmpfs (/dev/shm) and on the disk under $BENCH (ext4 here). Reported per case: median
# wall time over RUNS, min-max, CPU (user+sys, medians), peak RSS (max; for a pipeline
# the biggest single process), the 1-minute load average before and after each command
# (every run is logged; the table shows the highest before and after over the runs), and
# metalor's wall time and CPU divided by the tool's (<1: metalor is faster). The end-to-end
# cases compare with prepare_oci_rootfs, the others with metalor unpack. CPU is the
# command's own (the registry serving it is not counted).
#
# Targets (the performance issue), printed under the table from the tmpfs medians:
#   gzip: metalor <= 0.75x oci-image and <= 1.2x the igzip floor;
#   zstd: metalor <= 0.9x oci-image and <= 0.8x the zstd -dc | tar -x loop.
# metalor is built with the `isal` feature (ISA-L's igzip for gunzip), as the static binary is.
#
# Syscalls: after all timed runs, each case runs once more on tmpfs under `strace -f -c`
# (all processes of the command, the bash wrapper's few hundred included); not timed.
# Trees: on the first tmpfs run each result's paths, types, modes, sizes and link targets are
# listed and compared with metalor's (GNU tar and pigz do not apply whiteouts, so they keep
# the 7 .wh. files and what those delete).
#
# Order: runs are interleaved (run 1 of every case, then run 2, ...) so slow drifts in
# background load hit every case alike. Before each measurement: `sync` and, on disk,
# nothing is deleted. ext4 extraction right after `rm -rf` of a big tree is 3-10x slower
# (recently freed inodes are skipped), so disk targets are all created fresh and only
# deleted after the last measurement. If the disk has no room for RUNS rounds of targets
# (about 0.9 GB a case), the disk gets as many rounds as fit (at least one; noted under
# the table) rather than measuring on the aftermath of a deletion. tmpfs targets are deleted right after each measurement (no such
# effect there, and keeping them would fill RAM).
# umoci also writes an mtree manifest of the rootfs. As root, metalor, tar and the peers
# keep the image's owners; umoci --rootless does not. umoci and oci-unpack unpack into
# DEST/rootfs.
#
# Env: RUNS (3), BENCH (/tmp/metalor-bench), IMAGES ($BENCH/images), TOOLS (shared/tools
# with make-images.sh), TMPFS_DIR (/dev/shm/metalor-compare), DISK_DIR ($BENCH/compare),
# FILESYSTEMS ("tmpfs disk"), PREFAULT_MB (8192: tmpfs memory touched once before the
# tmpfs runs, at most its free space less 1 GB), STRACE (1; 0 skips the traced runs), ONLY (a regex of case
# names to run besides the references metalor and metalor-prepare, e.g.
# ONLY='tar|skopeo\+umoci'), CARGO_TARGET_DIR.
# Results: stdout and $BENCH/results/.
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
STRACE=${STRACE:-1}
PREFAULT_MB=${PREFAULT_MB:-8192}
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
need_pkgs time pigz umoci zstd tar gzip jq coreutils findutils skopeo docker-registry curl strace iproute2 \
  isal nasm autoconf automake libtool make

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
# Two builds, so metalor is the binary its users get (no features unified with the peers').
log "cargo build --release --features isal (metalor, examples/prepare_rootfs), benches/peers"
(cd "$ROOT" && cargo build --release --quiet --features isal \
  && cargo build --release --quiet --features isal --example prepare_rootfs \
  && cargo build --release --quiet -p metalor-peers)
METALOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/metalor
PREPARE=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/prepare_rootfs
PEERS=${CARGO_TARGET_DIR:-$ROOT/target}/release/peers
[ -x "$METALOR" ] || die "no binary at $METALOR"
[ -x "$PEERS" ] || die "no binary at $PEERS"

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

# ------------------------------------------------------------------ the registry
# Debian's docker-registry on 127.0.0.1 at a free port, storage on disk under $BENCH,
# holding debian:gzip and debian:zstd exactly as in the layout (manifests compared).
REGWORK=$BENCH/compare-registry
. "$ROOT/benches/lib/registry.sh"
trap 'stop_registry; rm -rf "$REGWORK"' EXIT

serve_image() {
  rm -rf "$REGWORK"
  start_registry "$REGWORK" || die "could not start docker-registry"
  local tag a b
  for tag in gzip zstd; do
    skopeo copy -q --dest-tls-verify=false "oci:$IMG:$tag" "docker://$REG/debian:$tag"
    a=$(skopeo inspect --raw "oci:$IMG:$tag" | sha256sum | cut -d' ' -f1)
    b=$(skopeo inspect --raw --tls-verify=false "docker://$REG/debian:$tag" | sha256sum | cut -d' ' -f1)
    [ "$a" = "$b" ] || die "debian:$tag: the registry's manifest (sha256:$b) is not the layout's (sha256:$a)"
  done
  log "registry on $REG (pid $REG_PID) holds debian:gzip and debian:zstd"
}
serve_image

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
  "floor|gzip|for l in ${LAYERS[gzip]}; do igzip -dc \$l > /dev/null; done"
  "floor|zstd|for l in ${LAYERS[zstd]}; do zstd -dc \$l > /dev/null; done"
  "oci-image|gzip|$PEERS oci-image $IMG:gzip {T}"
  "oci-image|zstd|$PEERS oci-image $IMG:zstd {T}"
  "oci-image|plain|$PEERS oci-image $IMG:plain {T}"
  "ocirender|gzip|$PEERS ocirender $IMG:gzip {T}"
  "ocirender|zstd|$PEERS ocirender $IMG:zstd {T}"
  "ocirender|plain|$PEERS ocirender $IMG:plain {T}"
  "metalor-pull|gzip|$METALOR pull -q docker://$REG/debian:gzip oci:{D}/layout:img && $METALOR unpack -q --image {D}/layout:img {T}"
  "metalor-pull|zstd|$METALOR pull -q docker://$REG/debian:zstd oci:{D}/layout:img && $METALOR unpack -q --image {D}/layout:img {T}"
  "metalor-prepare|gzip|mkdir {T} && $PREPARE {T} $REG/debian:gzip >/dev/null"
  "metalor-prepare|zstd|mkdir {T} && $PREPARE {T} $REG/debian:zstd >/dev/null"
  "skopeo+umoci|gzip|skopeo copy -q --src-tls-verify=false docker://$REG/debian:gzip oci:{D}/layout:img && umoci unpack --rootless --keep-dirlinks --image {D}/layout:img {T}"
  "oci-unpack|gzip|$PEERS oci-unpack $REG/debian:gzip {T}"
  "oci-unpack|zstd|$PEERS oci-unpack $REG/debian:zstd {T}"
)
if [ -n "${ONLY:-}" ]; then
  # The reference cases (metalor unpack, prepare_oci_rootfs) always run: every ratio
  # and tree comparison needs them.
  kept=()
  for c in "${CASES[@]}"; do [[ ${c%%|*} =~ ^(metalor|metalor-prepare|floor|$ONLY)$ ]] && kept+=("$c"); done
  [ ${#kept[@]} -gt 0 ] || die "ONLY=$ONLY matches no case"
  CASES=("${kept[@]}")
fi
label() {
  case $1 in
    metalor) echo "metalor unpack" ;;
    umoci) echo "umoci unpack --rootless --keep-dirlinks" ;;
    tar) case $2 in gzip) echo "tar -xzf (per layer)" ;; zstd) echo "zstd -dc \| tar -x" ;; *) echo "tar -xf (per layer)" ;; esac ;;
    pigz+tar) echo "pigz -dc \| tar -x" ;;
    floor) case $2 in gzip) echo "floor: igzip -dc > /dev/null" ;; *) echo "floor: zstd -dc > /dev/null" ;; esac ;;
    oci-image) echo "oci-image 0.1.0" ;;
    ocirender) echo "ocirender 0.3.0" ;;
    metalor-pull) echo "pull: metalor pull + unpack" ;;
    metalor-prepare) echo "pull: prepare_oci_rootfs" ;;
    skopeo+umoci) echo "pull: skopeo copy + umoci unpack" ;;
    oci-unpack) echo "pull: oci-unpack 0.2.0" ;;
  esac
}
# The metalor case a tool is compared with: pulling tools with prepare_oci_rootfs.
reference() {
  case $1 in metalor-pull | metalor-prepare | skopeo+umoci | oci-unpack) echo metalor-prepare ;; *) echo metalor ;; esac
}
# Where a case's rootfs ends up inside its target.
rootfs_of() {
  case $1 in
    oci-unpack | umoci | skopeo+umoci) echo "$2/rootfs" ;;
    metalor-prepare) echo "$2/pkg/oci/bundle/rootfs" ;;
    *) echo "$2" ;;
  esac
}
command_of() { local c=${3//\{T\}/$2}; echo "${c//\{D\}/$1}"; }

# Path, type, mode, and a regular file's size or a symlink's target; not owners (umoci
# --rootless has none to keep).
list_tree() {
  (cd "$1" && find . -mindepth 1 \( -type f -printf '%P\t%y\t%m\t%s\n' \) \
    -o \( -type l -printf '%P\t%y\t%l\n' \) -o -printf '%P\t%y\t%m\n' | sort)
}

fs_dir() { case $1 in tmpfs) echo "$TMPFS_DIR" ;; disk) echo "$DISK_DIR" ;; esac; }

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
RAW=$RESULTS/compare-$STAMP.tsv
TREES=$RESULTS/compare-$STAMP.trees
mkdir -p "$TREES"
printf 'fs\ttool\tcomp\trun\twall\tuser\tsys\tmaxrss_kb\tload_before\tload_after\n' > "$RAW"

# Disk targets stay until the end (see the header): as many rounds as fit, with 10% to spare.
DISK_RUNS=$RUNS
disk_runs() {
  local round avail fit
  round=$((${#CASES[@]} * 900 * 11 / 10))
  avail=$(df -Pm "$1" | awk 'NR == 2 {print $4}')
  fit=$((avail / round))
  log "disk: $round MB per round of targets, $avail MB available: room for $fit of $RUNS rounds"
  [ "$fit" -ge 1 ] || die "disk: not even one round of targets fits in $1"
  echo $((fit < RUNS ? fit : RUNS))
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for fs in $FILESYSTEMS; do
  base=$(fs_dir "$fs")
  rm -rf "$base"
  mkdir -p "$base"
  if [ "$fs" = tmpfs ]; then
    # On a fresh VM the first touch of guest memory is slow: the first
    # runs on tmpfs took 2-4x the system time of later ones, whichever tool
    # ran first. Touch PREFAULT_MB of it once, untimed.
    # Never more than the tmpfs has free, less 1 GB, or the write fails.
    free_mb=$(df -Pm "$base" | awk 'NR == 2 {print $4}')
    prefault=$((PREFAULT_MB < free_mb - 1024 ? PREFAULT_MB : free_mb - 1024))
    if [ "$prefault" -gt 0 ]; then
      log "tmpfs: touching $prefault MB once before measuring"
      head -c "${prefault}M" /dev/zero > "$base/prefault"
      rm -f "$base/prefault"
    fi
  fi
  sync
  [ "$fs" = disk ] && sleep 5   # let the removal's writeback settle before measuring
  runs=$RUNS
  if [ "$fs" = disk ]; then DISK_RUNS=$(disk_runs "$base"); runs=$DISK_RUNS; fi
  fstype=$(findmnt -n -o FSTYPE -T "$base" 2>/dev/null | head -n1 || stat -f -c %T "$base")
  log "== $fs ($base, $fstype): $runs runs x ${#CASES[@]} cases, load $(cut -d' ' -f1-3 /proc/loadavg)"
  for run in $(seq 1 "$runs"); do
    for c in "${CASES[@]}"; do
      IFS='|' read -r tool comp tmpl <<< "$c"
      parent=$base/$tool-$comp-$run
      mkdir "$parent"
      target=$parent/out
      cmd=$(command_of "$parent" "$target" "$tmpl")
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
      if [ "$run" = 1 ] && [ "$fs" = tmpfs ] && [ "$tool" != floor ]; then
        list_tree "$(rootfs_of "$tool" "$target")" > "$TREES/$tool-$comp"
        extra=", $(wc -l < "$TREES/$tool-$comp") paths"
      fi
      log "$fs run $run $tool/$comp: ${wall}s wall, ${user}s user, ${sys}s sys, $((rss / 1024)) MB rss, load $lb -> $la$extra"
      if [ "$fs" = tmpfs ]; then rm -rf "$parent"; fi
    done
  done
  log "== $fs done, load $(cut -d' ' -f1-3 /proc/loadavg)"
done

# Disk targets go only now, after every measurement.
for fs in $FILESYSTEMS; do rm -rf "$(fs_dir "$fs")"; done

# ------------------------------------------------------------------ syscalls
# One untimed run per case under strace -f -c, on tmpfs: calls, failed calls, top three.
SYSCALLS=$RESULTS/compare-$STAMP.strace
if [ "$STRACE" = 1 ]; then
  mkdir -p "$SYSCALLS" "$TMPFS_DIR"
  for c in "${CASES[@]}"; do
    IFS='|' read -r tool comp tmpl <<< "$c"
    parent=$TMPFS_DIR/strace-$tool-$comp
    mkdir "$parent"
    lb=$(load1)
    if ! strace -f -c -o "$SYSCALLS/$tool-$comp" bash -c "$(command_of "$parent" "$parent/out" "$tmpl")" \
        > "$parent.log" 2>&1; then
      cat "$parent.log" >&2
      die "$tool $comp failed under strace"
    fi
    rm -rf "$parent" "$parent.log"
    log "strace $tool/$comp: $(awk '$NF == "total" {print $4}' "$SYSCALLS/$tool-$comp") syscalls, load $lb -> $(load1)"
  done
  rmdir "$TMPFS_DIR" 2>/dev/null || true
fi
stop_registry

# ------------------------------------------------------------------ the tables
TABLE=$RESULTS/compare-$STAMP.md
{
  echo "metalor $("$METALOR" --version 2>/dev/null | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), RUNS=$RUNS, $(date -u +%Y-%m-%dT%H:%MZ)"
  mb() { cat "$@" | wc -c | awk '{printf "%.0f MB", $1 / 1e6}'; }
  echo "image: $IMG, $(echo ${LAYERS[plain]} | wc -w) layers, $(mb ${LAYERS[plain]}) as tar, $(mb ${LAYERS[gzip]}) gzip, $(mb ${LAYERS[zstd]}) zstd"
  echo
  echo "load average (1/5/15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  for fs in $FILESYSTEMS; do echo "$fs: $(fs_dir "$fs") ($(findmnt -n -o FSTYPE -T "$(dirname "$(fs_dir "$fs")")" 2>/dev/null | head -n1 || echo '?'))"; done
  echo
  echo "| fs | tool | layers | wall s (median) | min-max | CPU s (user+sys) | peak RSS MiB | load before -> after (max) | metalor / tool: wall | CPU |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
} > "$TABLE"
awk -F'\t' -v OFS='\t' 'NR > 1' "$RAW" | sort -t$'\t' -k1,1 -k2,2 -k3,3 -k4,4n > "$RAW.sorted"
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F'\t' -v fs="$1" -v t="$2" -v c="$3" -v k="$4" '$1==fs && $2==t && $3==c {print $k}' "$RAW.sorted"; }
cpu() { awk -F'\t' -v fs="$1" -v t="$2" -v c="$3" '$1==fs && $2==t && $3==c {print $6 + $7}' "$RAW.sorted" | median; }
ratio() { awk -v m="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.2fx", m / w; else print "-" }'; }
for fs in $FILESYSTEMS; do
  for c in "${CASES[@]}"; do
    IFS='|' read -r tool comp _ <<< "$c"
    ref=$(reference "$tool")
    wall=$(col "$fs" "$tool" "$comp" 5 | median)
    mn=$(col "$fs" "$tool" "$comp" 5 | sort -g | awk 'NR == 1')
    mx=$(col "$fs" "$tool" "$comp" 5 | sort -g | tail -n1)
    cputime=$(cpu "$fs" "$tool" "$comp")
    rss=$(col "$fs" "$tool" "$comp" 8 | sort -g | tail -n1)
    lb=$(col "$fs" "$tool" "$comp" 9 | sort -g | tail -n1)
    la=$(col "$fs" "$tool" "$comp" 10 | sort -g | tail -n1)
    rwall=$(ratio "$(col "$fs" "$ref" "$comp" 5 | median)" "$wall")
    rcpu=$(ratio "$(cpu "$fs" "$ref" "$comp")" "$cputime")
    [ "$tool" = "$ref" ] && { rwall=1; rcpu=1; }
    printf '| %s | %s | %s | %.2f | %.2f-%.2f | %.2f | %.0f | %s -> %s | %s | %s |\n' \
      "$fs" "$(label "$tool" "$comp")" "$comp" "$wall" "$mn" "$mx" "$cputime" \
      "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$lb" "$la" "$rwall" "$rcpu" >> "$TABLE"
  done
done
# The performance issue's targets: metalor unpack's tmpfs median over the yardstick's.
target_row() {
  local comp=$1 tool=$2 goal=$3 what=$4 m y r verdict
  m=$(col tmpfs metalor "$comp" 5 | median)
  y=$(col tmpfs "$tool" "$comp" 5 | median)
  if [ -z "$m" ] || [ -z "$y" ]; then
    echo "| $comp | $what | - | <= ${goal}x | not measured |"
    return
  fi
  r=$(awk -v m="$m" -v y="$y" 'BEGIN { printf "%.2f", m / y }')
  verdict=$(awk -v r="$r" -v g="$goal" 'BEGIN { print (r <= g ? "met" : "missed") }')
  echo "| $comp | $what | ${r}x (${m} s / ${y} s) | <= ${goal}x | $verdict |"
}
if [[ " $FILESYSTEMS " == *" tmpfs "* ]]; then
  {
    echo
    echo "Targets (tmpfs, wall medians of this run; metalor unpack built with --features isal):"
    echo
    echo "| layers | metalor unpack / | ratio | target | |"
    echo "|---|---|---:|---:|---|"
    target_row gzip oci-image 0.75 "oci-image 0.1.0"
    target_row gzip floor 1.2 "the igzip -dc floor"
    target_row zstd oci-image 0.9 "oci-image 0.1.0"
    target_row zstd tar 0.8 "zstd -dc \\| tar -x (per layer)"
  } >> "$TABLE"
fi
rm -f "$RAW.sorted"
{
  echo
  echo "wall/CPU: medians over RUNS (CPU = user + sys of the command and its children); peak RSS: max over runs (GNU time %M: the largest single process of a pipeline); load: the highest 1-minute load average seen before, and after, any run of the row; metalor / tool: metalor unpack's (for the pull rows, prepare_oci_rootfs's) median on the same fs and layer compression divided by the tool's (<1: metalor faster). Raw runs: $RAW"
  if [[ " $FILESYSTEMS " == *" disk "* ]] && [ "$DISK_RUNS" -lt "$RUNS" ]; then
    echo "disk: $DISK_RUNS run(s), not $RUNS: room for only $DISK_RUNS round(s) of targets, which stay until the end (ext4 is 3-10x slower right after a big rm -rf)."
  fi
  echo
  echo "Trees (first tmpfs run; path, type, mode, file size or link target, compared with metalor's tree for the same layers):"
  echo
  echo "| tool | layers | paths | only in tool | only in metalor | examples |"
  echo "|---|---|---:|---:|---:|---|"
  for c in "${CASES[@]}"; do
    IFS='|' read -r tool comp _ <<< "$c"
    [ -f "$TREES/$tool-$comp" ] || continue
    ref=$TREES/$(reference "$tool")-$comp
    extra=$(comm -23 "$TREES/$tool-$comp" "$ref" | wc -l)
    lost=$(comm -13 "$TREES/$tool-$comp" "$ref" | wc -l)
    ex=$( { comm -23 "$TREES/$tool-$comp" "$ref" | sed 's/^/+/'; comm -13 "$TREES/$tool-$comp" "$ref" | sed 's/^/-/'; } \
      | awk 'NR <= 3' | tr '\t' ' ' | paste -sd, - | sed 's/,/, /g')
    echo "| $(label "$tool" "$comp") | $comp | $(wc -l < "$TREES/$tool-$comp") | $extra | $lost | ${ex:--} |"
  done
  if [ "$STRACE" = 1 ]; then
    echo
    echo "Syscalls (one extra run per case on tmpfs under strace -f -c; all processes of the command):"
    echo
    echo "| tool | layers | syscalls | failed | top 3 (calls) |"
    echo "|---|---|---:|---:|---|"
    for c in "${CASES[@]}"; do
      IFS='|' read -r tool comp _ <<< "$c"
      f=$SYSCALLS/$tool-$comp
      # strace -c: % time, seconds, usecs/call, calls, [errors,] syscall; sorted by time.
      total=$(awk '$NF == "total" {print $4}' "$f")
      failed=$(awk '$NF == "total" {print (NF == 6 ? $5 : 0)}' "$f")
      top=$(awk '/^-/ {n++; next} n == 1 && $NF != "total" {print $4, $NF}' "$f" | sort -k1,1nr | awk 'NR <= 3' \
        | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}')
      echo "| $(label "$tool" "$comp") | $comp | $total | $failed | $top |"
    done
  fi
} >> "$TABLE"
cat "$TABLE"
