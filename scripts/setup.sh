#!/usr/bin/env bash
# Installs what berth's build, tests and benchmarks need on a fresh Debian
# machine (root, Rust toolchain, gcc, python3 already present). Idempotent.
set -euo pipefail
pkgs=(busybox-static protobuf-compiler containernetworking-plugins libseccomp-dev pkg-config libc6-dev runc crun podman conmon containerd skopeo umoci docker-registry openssl
      iproute2 iptables uidmap procps bsdutils
      qemu-system-x86 linux-image-amd64 cpio kmod xz-utils zstd  # the cgroup v2 VM (test-cgroup2.sh)
      golang-go golang-google-grpc-dev)  # a grpc-go client, as kubelet dials (crates/cri/tests/authority.rs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# grpcio: a grpc-core client for crates/cri/tests/authority.rs (the test skips itself without it,
# so a failed install does not fail the setup).
python3 -c 'import grpc' 2>/dev/null || python3 -m pip install -q grpcio >/dev/null 2>&1 ||
  echo "setup: grpcio not installed; the grpc-core :authority test will be skipped" >&2
