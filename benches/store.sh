#!/usr/bin/env bash
# Image-store benchmark, as root, on one image served by a loopback
# docker-registry (default: the generated Debian image, gzip; build it with
# `flock /tmp/metalor-bench.lock bash shared/tools/make-images.sh`):
#
#   benches/store.sh [oci:LAYOUT:TAG] [RUNS]      (default RUNS=30)
#
# 1. cold `metalor run --image … -- /bin/true` on a new store, against
#    `podman pull` of the same image into a new podman store, alternated
#    A B A B (PAIRS pairs, default 5). `podman run` itself cannot start containers in this
#    sandbox (crun's setrlimit is refused), so only its pull is measured;
#    that pull also unpacks into podman's overlay store.
# 2. warm `metalor run --image … -- /bin/true` against `metalor run
#    --rootfs` of an unpacked copy of the same image, same binary, in one
#    hyperfine run.
# 3. `prepare_oci_rootfs` (examples/prepare_rootfs.rs, with a cache root)
#    cold against warm, on ext4 (/var/tmp) and on tmpfs (/dev/shm): warm
#    with the bundle untouched (kept as it is), and warm after the caller
#    changed a file and removed a directory in it (repaired).
#
# Prints medians and ratios; quote ratios, the machine may be shared.
#
# ext4 without a journal (this machine's /var/tmp) skips inodes freed in
# the last 60 s (300 s while their table block is dirty) when it allocates
# new ones, so creating a tree soon after any big `rm -rf` on the same
# filesystem is several times slower (`perf` shows `recently_deleted`). The
# cold pairs therefore start after a `sync` and a SETTLE-second pause (65),
# and every store is kept until the script ends (deleting one would slow
# what follows it).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-oci:/tmp/metalor-bench/images/debian:gzip}
RUNS=${2:-30}
PAIRS=${PAIRS:-5}
[ "$(id -u)" = 0 ] || { echo "benches/store.sh: run as root" >&2; exit 1; }
for p in hyperfine podman skopeo docker-registry jq; do
  command -v "$p" >/dev/null || need=1
done
if [ -n "${need:-}" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine podman skopeo docker-registry jq >/dev/null
fi
# The benchmarks use the `isal` feature, as the static binary does.
cargo build --release --features isal --bin metalor --example prepare_rootfs
METALOR=$PWD/target/release/metalor
PREPARE=$PWD/target/release/examples/prepare_rootfs
. benches/lib/registry.sh
WORK=$(mktemp -d /var/tmp/metalor-store-bench.XXXXXX)
cleanup() {
  stop_registry
  for i in $(seq 1 "$PAIRS"); do
    podman --root "$WORK/podman-$i" --runroot "$WORK/podman-run-$i" system reset -f >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
start_registry "$WORK/registry"
skopeo copy -q --dest-tls-verify=false "$SRC" "docker://$REG/bench:latest"
IMAGE=$REG/bench:latest

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
# A / B, rounded to 4 places (bc truncates).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", a / b}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "== cold: metalor run --image vs podman pull (A B A B, $PAIRS pairs)"
: > "$WORK/cold-metalor"; : > "$WORK/cold-podman"
sync; sleep "${SETTLE:-65}"
for i in $(seq 1 "$PAIRS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now); "$METALOR" run -q --store "$WORK/store-$i" --image "$IMAGE" -- /bin/true; t1=$(now)
  secs "$t0" "$t1" >> "$WORK/cold-metalor"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now)
  podman --root "$WORK/podman-$i" --runroot "$WORK/podman-run-$i" pull -q --tls-verify=false "$IMAGE" >/dev/null
  t1=$(now)
  secs "$t0" "$t1" >> "$WORK/cold-podman"
done
cm=$(median < "$WORK/cold-metalor"); cp_=$(median < "$WORK/cold-podman")
echo "cold metalor run --image: median ${cm}s; podman pull: median ${cp_}s; ratio $(ratio "$cm" "$cp_")"
echo "(podman run is not measured: crun's setrlimit is refused in this sandbox)"

echo "== warm: metalor run --image vs metalor run --rootfs"
STORE=$WORK/store
"$METALOR" run -q --store "$STORE" --image "$IMAGE" -- /bin/true
mkdir -p "$WORK/copy"
"$METALOR" unpack --image "$SRC" "$WORK/copy/rootfs" >/dev/null
hyperfine -N -w 5 -r "$RUNS" --export-json "$WORK/warm.json" \
  -n "run --image (warm)" "$METALOR run -q --store $STORE --image $IMAGE -- /bin/true" \
  -n "run --rootfs" "$METALOR run --rootfs $WORK/copy/rootfs -- /bin/true"
jq -r '.results | "warm ratio (image / rootfs medians): \(.[0].median / .[1].median)"' "$WORK/warm.json"

echo "== prepare_oci_rootfs: cold vs warm (cache hit)"
for base in /var/tmp /dev/shm; do
  dir=$(mktemp -d "$base/metalor-prepare.XXXXXX")
  t0=$(now); "$PREPARE" "$dir" "docker://$IMAGE" "$dir/cache" >/dev/null; t1=$(now)
  cold=$(secs "$t0" "$t1"); : > "$dir/warm"
  for i in 1 2 3; do
    t0=$(now); "$PREPARE" "$dir" "docker://$IMAGE" "$dir/cache" >/dev/null; t1=$(now)
    secs "$t0" "$t1" >> "$dir/warm"
  done
  warm=$(median < "$dir/warm")
  # A bundle the caller wrote to: one file changed, one directory removed
  # (the warm call repairs just those from the pristine tree).
  : > "$dir/touched"
  for i in 1 2 3; do
    rootfs=$(find "$dir" -maxdepth 5 -type d -name rootfs -path '*/oci/bundle/*')
    echo changed >> "$rootfs/etc/hostname"; rm -rf "$rootfs/usr/share/doc"
    t0=$(now); "$PREPARE" "$dir" "docker://$IMAGE" "$dir/cache" >/dev/null; t1=$(now)
    secs "$t0" "$t1" >> "$dir/touched"
  done
  touched=$(median < "$dir/touched")
  fs=$(stat -f -c %T "$base")
  echo "prepare_oci_rootfs on $fs: cold ${cold}s, warm median ${warm}s, warm/cold $(ratio "$warm" "$cold")"
  echo "prepare_oci_rootfs on $fs: touched-bundle warm median ${touched}s, touched/cold $(ratio "$touched" "$cold")"
  rm -rf "$dir"
done
