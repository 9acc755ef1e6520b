#!/usr/bin/env bash
# Runs the cgroup v2 tests for real: builds the test binaries here, then runs
# them as root inside a throwaway qemu guest (../shared/tools/cgroup2-vm) whose
# kernel mounts cgroup2 with every controller. The guest sees this machine's
# root read-only and the repository read-write, so the binaries (and the
# berth path compiled into them) are the same files.
# Without the VM tool, a Debian kernel or qemu, it says the v2 tests were
# skipped and why, and exits 0: on such hosts they also skip themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
vm=${CGROUP2_VM:-$repo/../shared/tools/cgroup2-vm}

skip() { echo "test-cgroup2: SKIPPED the cgroup v2 tests: $*" >&2; exit 0; }
[ -x "$vm" ] || skip "no VM tool at $vm"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || skip "no Debian kernel in /boot (apt-get install linux-image-amd64)"

# The berth binary and the test binaries, without running anything: the
# berth-cgroups crate's own tests (unit, OOM watcher) and the v2 integration
# tests of the berth binary.
cargo build -p berth --bin berth
executables() {  # cargo's JSON messages on stdin -> test executables
  python3 -c '
import json, sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])'
}
cg_test=$(cargo test -p berth --test cgroups_v2 --no-run --message-format=json | executables)
crate_tests=$(cargo test -p berth-cgroups --lib --tests --no-run --message-format=json | executables | tr '\n' ' ')
[ -x "$cg_test" ] && [ -n "$crate_tests" ] || { echo "test-cgroup2: test binaries not found" >&2; exit 1; }

# Inside the guest: the v2 integration tests must really run, not skip.
mkdir -p "$repo/target"  # shared read-write with the guest
guest=$(mktemp "$repo/target/cgroup2-guest.XXXXXX.sh")
trap 'rm -f "$guest"' EXIT
cat > "$guest" <<GUEST
set -e
grep -q cgroup2 /proc/mounts
for t in $crate_tests; do "\$t" -q; done
out=\$("$cg_test" --test-threads=2 2>&1) || { echo "\$out"; exit 1; }
echo "\$out"
if echo "\$out" | grep -q "skipped: not a cgroup v2 host"; then
  echo "test-cgroup2: the tests skipped inside the VM" >&2; exit 1
fi
GUEST
start=$(date +%s)
status=0
"$vm" --rw "$repo" --timeout 300 -- sh "$guest" || status=$?
echo "test-cgroup2: VM run took $(( $(date +%s) - start )) s, exit $status"
exit "$status"
