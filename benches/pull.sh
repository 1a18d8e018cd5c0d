#!/usr/bin/env bash
# Pull benchmark: metalor pull versus skopeo copy, from a loopback
# docker-registry into a layout on the filesystem of $OUT (default /tmp).
#
#   benches/pull.sh [IMAGE_LAYOUT:REF] [RUNS]
#
# IMAGE_LAYOUT:REF defaults to the generated Debian image
# (/tmp/metalor-bench/images/debian:gzip, see shared/tools/make-images.sh).
# Starts its own registry on a free port with temp storage, pushes the image
# with skopeo, then runs each puller RUNS times (default 3) into a fresh
# layout, printing wall, user and system seconds and peak RSS (KiB) from /usr/bin/time.
# Needs: docker-registry, skopeo, curl, python3, /usr/bin/time, a release build of metalor.
#
# NOSYNC=1 adds a "metalor-nosync" row per run: the same binary under
# eatmydata (Debian package `eatmydata`), which turns fsync into a no-op, so
# the difference to the "metalor" row is what durability costs (blob fsync
# before rename, one blob-directory fsync before index.json). BASELINE=PATH
# adds a "baseline" row for another metalor binary (an older build, say).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/tmp/metalor-bench/images/debian:gzip}
RUNS=${2:-3}
OUT=${OUT:-/tmp}
METALOR=${METALOR:-${CARGO_TARGET_DIR:-target}/release/metalor}
[ -x "$METALOR" ] || cargo build --release --bin metalor
WORK=$(mktemp -d "$OUT/metalor-pull-bench.XXXXXX")
. benches/lib/registry.sh
trap 'stop_registry; rm -rf "$WORK"' EXIT
start_registry "$WORK/registry"
ADDR=$REG
skopeo copy -q --dest-tls-verify=false "oci:$SRC" "docker://$ADDR/bench:latest"
echo "tool    run  wall_s user_s sys_s peak_rss_kib"
for run in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/m" "$WORK/s"
  sync
  t=$( { /usr/bin/time -f '%e %U %S %M' "$METALOR" pull --quiet "docker://$ADDR/bench:latest" "oci:$WORK/m:img" >/dev/null; } 2>&1 | tail -1)
  echo "metalor $run    $t"
  if [ "${NOSYNC:-}" = 1 ]; then
    rm -rf "$WORK/m"
    sync
    t=$( { /usr/bin/time -f '%e %U %S %M' eatmydata "$METALOR" pull --quiet "docker://$ADDR/bench:latest" "oci:$WORK/m:img" >/dev/null; } 2>&1 | tail -1)
    echo "metalor-nosync $run $t"
  fi
  if [ -n "${BASELINE:-}" ]; then
    rm -rf "$WORK/m"
    sync
    t=$( { /usr/bin/time -f '%e %U %S %M' "$BASELINE" pull --quiet "docker://$ADDR/bench:latest" "oci:$WORK/m:img" >/dev/null; } 2>&1 | tail -1)
    echo "baseline $run   $t"
  fi
  sync
  t=$( { /usr/bin/time -f '%e %U %S %M' skopeo copy -q --src-tls-verify=false "docker://$ADDR/bench:latest" "oci:$WORK/s:img" >/dev/null; } 2>&1 | tail -1)
  echo "skopeo  $run    $t"
done
