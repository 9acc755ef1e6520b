#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests, and integration tests
# that run real containers with the berth binary (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The CNI bridge plugin may switch on host-wide IPv4 forwarding when it
# configures an address; put back what the machine had.
fwd=$(cat /proc/sys/net/ipv4/ip_forward)
trap 'echo "$fwd" > /proc/sys/net/ipv4/ip_forward' EXIT
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads="${BERTH_TEST_THREADS:-4}"
# cgroup v2 for real, in a qemu guest (this host may be v1); says so if it cannot.
scripts/test-cgroup2.sh
# The Kubernetes CRI validation suite against a private berthd, over SPDY and
# WebSocket (../shared/critest; says so and skips where the kit is missing).
scripts/critest.sh
# The same suite through Debian's containerd with berth as its runc binary,
# next to the same containerd with runc: berth must pass all that runc passes.
scripts/critest.sh --containerd
