#!/usr/bin/env bash
# End-to-end benchmark of prepare_oci_rootfs (pull, verify, unpack) from a
# loopback docker-registry, through examples/prepare_rootfs.rs.
#
#   benches/prepare.sh [IMAGE_LAYOUT] [RUNS] [TAG...]
#
# IMAGE_LAYOUT defaults to the generated Debian image
# (/tmp/metalor-bench/images/debian, see shared/tools/make-images.sh) and
# TAG to `gzip zstd`. Starts its own registry on a free port with temp
# storage, pushes each tag with skopeo, then runs RUNS times (default 3) per
# tag with a fresh cache and package root under $OUT (default /tmp),
# printing wall, user and system seconds and peak RSS (KiB) from
# /usr/bin/time, and the load average before the run. PREPARE may list
# several builds of the example (say, before and after a change) separated
# by spaces; they take turns within each run, and rows name them by path.
# Each run follows the previous run's `rm -rf`, which slows the next
# extraction on ext4 (see compare.sh), so compare builds with OUT on tmpfs
# (OUT=/dev/shm). Needs: docker-registry, skopeo, /usr/bin/time, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/tmp/metalor-bench/images/debian}
RUNS=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
TAGS=${*:-gzip zstd}
OUT=${OUT:-/tmp}
DEFAULT=${CARGO_TARGET_DIR:-target}/release/examples/prepare_rootfs
PREPARE=${PREPARE:-$DEFAULT}
[ "$PREPARE" != "$DEFAULT" ] || [ -x "$DEFAULT" ] || cargo build --release --example prepare_rootfs
WORK=$(mktemp -d "$OUT/metalor-prepare-bench.XXXXXX")
. benches/lib/registry.sh
trap 'stop_registry; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"
ADDR=$REG
for tag in $TAGS; do
  skopeo copy -q --dest-tls-verify=false "oci:$SRC:$tag" "docker://$ADDR/bench:$tag"
done
echo "build tag run wall_s user_s sys_s peak_rss_kib load_before"
for tag in $TAGS; do
  for run in $(seq 1 "$RUNS"); do
    for prepare in $PREPARE; do
      rm -rf "$WORK/run"
      mkdir -p "$WORK/run"
      sync
      load=$(cut -d' ' -f1 /proc/loadavg)
      t=$( { /usr/bin/time -f '%e %U %S %M' "$prepare" "$WORK/run" "$ADDR/bench:$tag" "$WORK/run/cache" >/dev/null; } 2>&1 | tail -1)
      echo "$prepare $tag $run $t $load"
    done
  done
done
