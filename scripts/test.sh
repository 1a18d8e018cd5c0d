#!/usr/bin/env bash
# Runs metalor's whole test suite on a fresh machine: installs what the tests
# need (Debian packages for the oracle tools, rustup components), then
# `cargo test`. Needs root, like the tests themselves (namespaces, mounts,
# chown). Usage: bash scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The oracles and fixtures the tests use; never used by metalor itself.
# strace: vendor-tests/static_binary.rs records every exec of the static
# binary. musl-tools: to build that binary (.ci/run does, before the tests).
# qemu-user-static: foreign-architecture runs in tests/emulator.rs.
APT_PACKAGES=(umoci skopeo libarchive-tools zstd tar gzip busybox-static docker-registry apache2-utils
  strace musl-tools qemu-user-static)
# The `isal` cargo feature builds ISA-L from source: nasm and autotools.
APT_PACKAGES+=(nasm autoconf automake libtool make)

# tests/emulator.rs downloads Debian's busybox-static:arm64 with
# `apt-get download`, which needs the arm64 package lists.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "scripts/test.sh: adding the arm64 package architecture" >&2
  dpkg --add-architecture arm64
  apt-get update -qq
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo test "$@"

# The same decoder guarantees with ISA-L's gunzip (the `isal` feature, which
# the static binary and the benchmarks use): its unit tests, the hostile
# layers and the tar oracles.
cargo test --features isal --lib unpack::decode
cargo test --features isal --test unpack_hostile --test tar_oracles
