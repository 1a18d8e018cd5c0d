#!/usr/bin/env bash
# Exec-latency benchmark: `metalor run -- /bin/true` in a busybox rootfs
# against `chroot`, `unshare ... chroot` and bubblewrap, in one hyperfine run.
#
#   benches/run.sh [RUNS]        (default RUNS=300)
#
# Builds the rootfs from Debian's busybox-static (static /bin/busybox plus
# applet links) and measures two metalor builds: the static musl binary
# (`--target x86_64-unknown-linux-musl`, what minimal images ship; $METALOR)
# and the default glibc build ($METALOR_GLIBC). Each is built in release
# mode when missing. Prints hyperfine's table, then median wall time, mean
# CPU (user+sys) and metalor's ratio to each of the others.
#
# Why two builds: on a VM, every glibc process start runs CPUID dozens of
# times (ld.so and libgcc_s probing the CPU), and each CPUID traps to the
# hypervisor. musl's startup does none of that, so the static build starts
# in about a quarter of the glibc build's time. metalor run starts two
# metalor processes (the caller and its re-exec), so this dominates.
# Needs root. Installs hyperfine, bubblewrap and busybox-static if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
[ "$(id -u)" = 0 ] || { echo "benches/run.sh: run as root" >&2; exit 1; }

missing=()
for p in hyperfine bubblewrap busybox-static jq; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

TARGET_DIR=${CARGO_TARGET_DIR:-target}
METALOR=${METALOR:-$TARGET_DIR/x86_64-unknown-linux-musl/release/metalor}
METALOR_GLIBC=${METALOR_GLIBC:-$TARGET_DIR/release/metalor}
if [ ! -x "$METALOR" ]; then
  # The same prerequisites as .ci/run's static build.
  command -v musl-gcc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools perl make >/dev/null
  rustup target add x86_64-unknown-linux-musl >/dev/null
  cargo build --release --target x86_64-unknown-linux-musl --bin metalor
fi
[ -x "$METALOR_GLIBC" ] || cargo build --release --bin metalor
WORK=$(mktemp -d /tmp/metalor-run-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs
mkdir -p "$R"/{bin,etc,tmp,proc,dev}
cp /bin/busybox "$R/bin/busybox"
for applet in sh true echo; do ln -s busybox "$R/bin/$applet"; done

# One run of each first, so a broken setup fails loudly instead of timing errors.
"$METALOR" run --rootfs "$R" -- /bin/true
"$METALOR_GLIBC" run --rootfs "$R" -- /bin/true
chroot "$R" /bin/true
unshare --mount --pid --fork --uts --ipc chroot "$R" /bin/true

cmds=(-n "metalor run" "$METALOR run --rootfs $R -- /bin/true"
      -n "metalor run (glibc build)" "$METALOR_GLIBC run --rootfs $R -- /bin/true"
      -n "chroot" "chroot $R /bin/true"
      -n "unshare mnt,pid,uts,ipc + chroot" "unshare --mount --pid --fork --uts --ipc chroot $R /bin/true")
if bwrap --bind "$R" / --proc /proc --dev /dev --unshare-pid /bin/true 2>/dev/null; then
  cmds+=(-n "bwrap + /proc /dev, pid ns" "bwrap --bind $R / --proc /proc --dev /dev --unshare-pid --unshare-ipc --unshare-uts /bin/true")
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
hyperfine -N --style basic --warmup 20 --runs "$RUNS" --export-json "$WORK/run.json" "${cmds[@]}" >&2
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
jq -r '.results as $r | ($r[] | select(.command == "metalor run") | .median) as $m
  | "| command | median ms | mean CPU ms | metalor / command |", "|---|---|---|---|",
    ($r[] | "| \(.command) | \(.median * 1000 | . * 100 | round / 100) | \((.user + .system) * 1000 | . * 100 | round / 100) | \($m / .median | . * 100 | round / 100)x |")' "$WORK/run.json"
