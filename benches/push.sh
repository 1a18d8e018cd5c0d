#!/usr/bin/env bash
# Push benchmark: metalor push versus skopeo copy, from an OCI layout into
# an EMPTY loopback docker-registry, each tool into its own fresh registry
# every run, so that neither can skip or mount a blob.
#
#   benches/push.sh [IMAGE_LAYOUT:REF] [RUNS]
#
# IMAGE_LAYOUT:REF defaults to the generated Debian image
# (/tmp/metalor-bench/images/debian:gzip, see shared/tools/make-images.sh).
# Prints wall, user and system seconds and peak RSS (KiB) per run from
# /usr/bin/time, then the medians and the metalor/skopeo wall ratio
# (target: at most 0.5) and metalor's peak RSS (target: under 32 MiB).
# Needs: docker-registry, skopeo, curl, python3, /usr/bin/time, a release
# build of metalor.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/tmp/metalor-bench/images/debian:gzip}
RUNS=${2:-3}
OUT=${OUT:-/tmp}
METALOR=${METALOR:-${CARGO_TARGET_DIR:-target}/release/metalor}
[ -x "$METALOR" ] || cargo build --release --bin metalor
WORK=$(mktemp -d "$OUT/metalor-push-bench.XXXXXX")
. benches/lib/registry.sh
trap 'stop_registry; rm -rf "$WORK"' EXIT
RESULTS=$WORK/results
: > "$RESULTS"

# timed TOOL: one push by TOOL into a fresh, empty registry; appends
# "TOOL wall user sys rss" to $RESULTS and prints it.
timed() {
  local tool=$1 t
  rm -rf "$WORK/registry"
  start_registry "$WORK/registry"
  local dest="docker://$REG/bench:latest"
  sync
  case $tool in
    metalor) cmd=("$METALOR" push --quiet "oci:$SRC" "$dest") ;;
    skopeo) cmd=(skopeo copy -q --dest-tls-verify=false "oci:$SRC" "$dest") ;;
  esac
  t=$( { /usr/bin/time -f '%e %U %S %M' "${cmd[@]}" >/dev/null; } 2>&1 | tail -1)
  stop_registry
  echo "$tool $t" >> "$RESULTS"
  echo "$tool $run    $t"
}

echo "tool    run  wall_s user_s sys_s peak_rss_kib"
for run in $(seq 1 "$RUNS"); do
  timed metalor
  timed skopeo
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for tool in ("metalor", "skopeo"):
    runs = [r for r in rows if r[0] == tool]
    med[tool] = (statistics.median(float(r[1]) for r in runs),
                 max(int(r[4]) for r in runs))
    print(f"median {tool}: wall {med[tool][0]:.2f} s, peak RSS {med[tool][1]} KiB")
ratio = med["metalor"][0] / med["skopeo"][0]
print(f"ratio metalor/skopeo wall: {ratio:.2f} (target <= 0.5); "
      f"metalor peak RSS {med['metalor'][1] / 1024:.1f} MiB (target < 32)")
PY
