#!/bin/bash
# metalor repack against umoci repack: the Debian benchmark image, one changed file.
#
#   bash benches/repack.sh            (as root; RUNS=3 by default)
#
# Setup (not timed): the Debian image's layout (tag gzip) is copied into a work directory
# (blobs hardlinked, so the shared image is never written), unpacked once by metalor
# (ROOTFS) and once by `umoci unpack` (BUNDLE, whose mtree umoci repack diffs against),
# and the same one-line change is made to etc/debian_version in both.
# Timed, interleaved, RUNS times each, every run into a fresh tag:
#   metalor repack --image LAYOUT:gzip --rootfs ROOTFS --tag mN        (the header scan)
#   metalor repack ... --hash                                          (content compared too)
#   umoci repack --image LAYOUT:uN BUNDLE                              (mtree diff)
# Both tools leave their trees as they were (umoci without --refresh-bundle), so each run
# repacks the same change. Reported: median wall time, min-max, CPU (user+sys), peak RSS,
# and metalor / umoci (target: <= 0.2x). Each tool's new layer is listed with GNU tar once,
# so the table also shows that both wrote the change.
#
# Env: RUNS (3), BENCH (/tmp/metalor-bench), IMAGES ($BENCH/images), WORK ($BENCH/repack),
# TOOLS (shared/tools with make-images.sh), CARGO_TARGET_DIR.
set -euo pipefail
umask 022
export LC_ALL=C

[ "$(id -u)" = 0 ] || { echo "run as root (umoci unpack keeps owners)" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
BENCH=${BENCH:-/tmp/metalor-bench}
IMAGES=${IMAGES:-$BENCH/images}
WORK=${WORK:-$BENCH/repack}
IMG=$IMAGES/debian

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in umoci jq tar /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install umoci jq tar time)"
done
if [ ! -f "$IMG/index.json" ]; then
  TOOLS=${TOOLS:-$ROOT/../shared/tools}
  [ -f "$TOOLS/make-images.sh" ] || TOOLS=/work/shared/tools
  log "building the benchmark images with $TOOLS/make-images.sh"
  bash "$TOOLS/make-images.sh" "$IMAGES"
fi

log "cargo build --release --features isal"
(cd "$ROOT" && cargo build --release --quiet --features isal)
METALOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/metalor

rm -rf "$WORK"
mkdir -p "$WORK/layout"
L=$WORK/layout
cp "$IMG/index.json" "$IMG/oci-layout" "$L/"
cp -al "$IMG/blobs" "$L/blobs"
log "setup: metalor unpack and umoci unpack of $IMG:gzip"
"$METALOR" unpack --quiet --image "$L:gzip" "$WORK/rootfs"
umoci unpack --image "$L:gzip" "$WORK/bundle" >/dev/null
for tree in "$WORK/rootfs" "$WORK/bundle/rootfs"; do
  [ -f "$tree/etc/debian_version" ] || die "no etc/debian_version in $tree"
  echo "changed by benches/repack.sh" >> "$tree/etc/debian_version"
done

# measure NAME CMD... : one timed run; appends "wall cpu rss" to $WORK/NAME.times.
measure() {
  local name=$1; shift
  sync
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.out" "$@" >/dev/null 2>"$WORK/$name.err" \
    || { cat "$WORK/$name.err" >&2; die "$name failed"; }
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$WORK/time.out" >> "$WORK/$name.times"
}

for i in $(seq 1 "$RUNS"); do
  log "run $i/$RUNS"
  measure metalor "$METALOR" repack --quiet --image "$L:gzip" --rootfs "$WORK/rootfs" --tag "m$i"
  measure metalor-hash "$METALOR" repack --quiet --hash --image "$L:gzip" --rootfs "$WORK/rootfs" --tag "h$i"
  measure umoci umoci repack --image "$L:u$i" "$WORK/bundle"
done

# last_layer TAG : the blob path of TAG's last layer.
last_layer() {
  local m
  m=$(jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$L/index.json")
  echo "$L/blobs/$(jq -r '.layers[-1].digest' "$L/blobs/${m/://}" | tr : /)"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1.times"; }
row() {
  local name=$1 entries=$2 wall
  wall=$(col "$name" 1 | median)
  printf '%-14s %8s s  (%s-%s)  cpu %6s s  rss %7s KiB  layer entries: %s\n' "$name" "$wall" \
    "$(col "$name" 1 | sort -n | head -1)" "$(col "$name" 1 | sort -n | tail -1)" \
    "$(col "$name" 2 | median)" "$(col "$name" 3 | sort -n | tail -1)" "$entries"
}
M_WALL=$(col metalor 1 | median)
H_WALL=$(col metalor-hash 1 | median)
U_WALL=$(col umoci 1 | median)
echo
echo "repack of the Debian image (tag gzip), one changed file, medians of $RUNS runs, in $WORK"
row metalor "$(tar -tzf "$(last_layer m1)" | tr '\n' ' ')"
row metalor-hash "$(tar -tzf "$(last_layer h1)" | tr '\n' ' ')"
row umoci "$(tar -tzf "$(last_layer u1)" | tr '\n' ' ')"
awk -v m="$M_WALL" -v h="$H_WALL" -v u="$U_WALL" 'BEGIN {
  printf "metalor / umoci: %.3fx (target <= 0.2x); with --hash: %.3fx\n", m / u, h / u }'
