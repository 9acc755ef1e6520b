#!/usr/bin/env bash
# The main job, end to end and offline: builds berth, starts a private
# berthd (its own state, CNI bridge and cgroup parent), imports a busybox
# image built locally from Debian's busybox-static, and runs a Kubernetes
# Pod manifest on it with `berthctl run` (init container, emptyDir volume,
# logs followed, pod removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
manifest="${1:-crates/berthctl/examples/pod.yaml}"
scripts/setup.sh
cargo build --release -p berthd -p berth-monitor -p berthctl
bin="$PWD/target/release"
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
bridge="bdemo$$"; bridge="${bridge:0:15}"
net="10.$((200 + RANDOM % 50)).$((RANDOM % 250)).0"
pid=""
# The CNI bridge plugin may switch on host-wide IPv4 forwarding: restored at the end.
fwd=$(cat /proc/sys/net/ipv4/ip_forward)
cleanup() {
  echo "$fwd" > /proc/sys/net/ipv4/ip_forward
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  pkill -f "berth-monitor --dir $work/" 2>/dev/null || true
  grep -o "$work[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
  for h in /sys/fs/cgroup/*/; do find "$h/berth-demo-$$" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# The demo's own bridge with an address (no host-wide ip_forward needed).
ip link add "$bridge" type bridge
ip addr add "${net%.0}.1/24" dev "$bridge"
ip link set "$bridge" up
mkdir -p "$work/net.d"
cat > "$work/net.d/10-demo.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "berth-demo", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "ipam": {"type": "host-local",
   "ranges": [[{"subnet": "$net/24", "rangeStart": "${net%.0}.10", "gateway": "${net%.0}.1"}]],
   "dataDir": "$work/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
cat > "$work/berth.toml" <<TOML
root = "$work/root"
state = "$work/state"
socket = "$work/berth.sock"
[runtime]
cgroup_parent = "/berth-demo-$$"
[cni]
conf_dir = "$work/net.d"
bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
TOML
python3 scripts/busybox-image.py "$work/busybox.tar"
"$bin/berthd" --config "$work/berth.toml" import "$work/busybox.tar" localhost/berth/busybox:latest
"$bin/berthd" --config "$work/berth.toml" --log-level warn &
pid=$!
for _ in $(seq 100); do [ -S "$work/berth.sock" ] && break; sleep 0.05; done
"$bin/berthctl" -r "unix://$work/berth.sock" version
"$bin/berthctl" -r "unix://$work/berth.sock" run "$manifest"
