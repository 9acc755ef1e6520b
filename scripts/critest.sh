#!/usr/bin/env bash
# Runs the Kubernetes CRI validation suite (../shared/critest, cri-tools 1.36)
# against a private runtime: its own root, state, socket, CNI bridge and
# subnet, cgroup, and registry mirrors (hosts.toml) pointing at the kit's
# registry on 127.0.0.1:5000.
#
#   scripts/critest.sh [--bin DIR] [--transport spdy|websocket|both] [critest args...]
#       berthd, once over SPDY (critest's default) and once with
#       -websocket-exec -websocket-attach -websocket-portforward. Every spec
#       must pass except those in EXPECTED_FAILURES (each with its reason).
#   scripts/critest.sh --containerd [--bin DIR] [critest args...]
#       Debian's containerd (CRI plugin, cgroupfs, overlayfs) whose runc shim
#       runs berth as its runc binary (BinaryName), and the same containerd
#       with runc as the reference, in one run: berth must pass every spec
#       that runc passes. Both counts are printed side by side.
#
# Each failure is printed; the reports of a failed run are kept in
# target/critest/. Where ../shared/critest (or containerd) is missing, says
# so and exits 0. DIR holds berthd, berth-monitor and berth (default
# target/debug; build them first).
set -euo pipefail
cd "$(dirname "$0")/.."
kit="$(cd .. && pwd)/shared/critest"
if [ ! -x "$kit/run-critest" ] || [ ! -x "$kit/bin/critest" ]; then
  echo "critest: skipped: no CRI validation kit at $kit"
  exit 0
fi

bin="$PWD/target/debug"
transport=both
mode=berthd
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$(cd "$2" && pwd); shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --containerd) mode=containerd; shift ;;
    *) break ;;
  esac
done
if [ $mode = containerd ] && ! command -v containerd >/dev/null; then
  echo "critest: containerd: skipped: containerd is not installed"
  exit 0
fi
for b in berthd berth-monitor berth; do
  [ -x "$bin/$b" ] || { echo "critest: $bin/$b is missing: build it first" >&2; exit 1; }
done

# Specs that cannot pass on this machine, whatever the runtime:
# - the kit's README: an upstream image pinned by digest cannot be rebuilt offline.
# - AppArmor is not enabled here (those specs skip themselves; listed in case they fail).
EXPECTED_FAILURES=(
  'public image with digest should be pulled and removed'
  'AppArmor'
)

work=$(mktemp -d /tmp/berth-critest.XXXXXX)
# Searchable by all, as /var/lib is: a user-namespaced pod's root (an
# unprivileged host uid) must reach its rootfs view under it.
chmod 0711 "$work"
sfx=$(printf '%04x' $((RANDOM % 65536)))
bridge="bcri$sfx"
net="10.$((150 + RANDOM % 50)).$((RANDOM % 250)).0"
cgparent="/berth-critest-$sfx"
pid=""
fwd=$(cat /proc/sys/net/ipv4/ip_forward)

# Stops the runtime and removes whatever it or its pods left: processes
# started from $work (monitors, shims, containers' inits are their
# children), mounts under $work, the cgroups under $cgparent.
stop_runtime() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  pid=""
  local p
  for p in $(pgrep -f -- "$work/" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -f "$h${cgparent#/}/cgroup.procs" ] || continue
    find "$h${cgparent#/}" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  sleep 0.3
  grep -o "$work[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
cleanup() {
  stop_runtime
  echo "$fwd" >/proc/sys/net/ipv4/ip_forward
  ip link del "$bridge" 2>/dev/null || true
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -d "$h${cgparent#/}" ] && find "$h${cgparent#/}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

"$kit/setup-registry" >"$work/registry.log" 2>&1 || { cat "$work/registry.log" >&2; exit 1; }
"$kit/setup-registry" mirrors containerd "$work/certs.d" >/dev/null

# The bridge has its address up front, so the plugin needs no host-wide forwarding.
ip link add "$bridge" type bridge
ip addr add "${net%.0}.1/24" dev "$bridge"
ip link set "$bridge" up
mkdir -p "$work/net.d"
cat >"$work/net.d/10-critest.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "berth-critest", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$net/24", "gateway": "${net%.0}.1"}]],
            "dataDir": "$work/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON

# Runs CMD... in the cgroup $cgparent of every hierarchy, so whatever it
# makes relative to its own cgroup (containerd's shims: the `.slice` parent
# critest asks for) stays under it.
in_own_cgroup() {
  local moves="" h d
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -f "${h}cgroup.procs" ] || continue
    d="$h${cgparent#/}"
    mkdir -p "$d"
    if [ -f "${h}cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then
      cat "${h}cpuset.cpus" >"$d/cpuset.cpus"
      cat "${h}cpuset.mems" >"$d/cpuset.mems"
    fi
    moves+="echo \$\$ > $d/cgroup.procs; "
  done
  sh -c "${moves}exec \"\$@\"" sh "$@"
}

start_berthd() {
  cat >"$work/berth.toml" <<TOML
root = "$work/berthd/root"
state = "$work/berthd/state"
socket = "$work/berthd/berth.sock"
[runtime]
cgroup_parent = "$cgparent/berthd"
monitor = "$bin/berth-monitor"
[cni]
conf_dir = "$work/net.d"
bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
[registry]
config_path = "$work/certs.d"
TOML
  mkdir -p "$work/berthd"
  "$bin/berthd" --config "$work/berth.toml" --log-level info >"$work/runtime.log" 2>&1 &
  pid=$!
  socket="$work/berthd/berth.sock"
  wait_socket berthd
}

# start_containerd RUNC_BINARY: Debian's containerd with its CRI plugin,
# cgroupfs and overlayfs, whose runc shim runs RUNC_BINARY.
start_containerd() {
  local d="$work/containerd-$(basename "$1")"
  mkdir -p "$d"
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = "$d/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  # No CAP_SYS_RESOURCE in this VM: lowering oom_score_adj (the sandbox
  # asks for -998) fails, so containerd clamps it to its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$1"
        Root = "$d/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$work/certs.d"
TOML
  in_own_cgroup containerd --config "$d/config.toml" --log-level warn >"$work/runtime.log" 2>&1 &
  pid=$!
  socket="$d/containerd.sock"
  wait_socket containerd
}

wait_socket() {
  for _ in $(seq 400); do [ -S "$socket" ] && return 0; sleep 0.05; done
  cat "$work/runtime.log" >&2
  echo "critest: $1 did not start" >&2
  exit 1
}

status=0
# run NAME [critest args]: one run of the suite; its failed specs (but the
# expected ones) go to $work/NAME.failed.
run() {
  local name=$1 out="$work/run-$1" rc=0
  shift
  CRITEST_OUT="$out" "$kit/run-critest" "unix://$socket" "$@" >"$out.stdout" 2>"$out.stderr" || rc=$?
  local counts
  counts=$(tail -n 1 "$out.stdout")
  echo "critest over $name: ${counts#critest: }"
  : >"$work/$name.failed"
  if [ ! -s "$out/results.tsv" ]; then
    echo "critest over $name: no results (exit $rc)" >&2
    cat "$out.stderr" >&2
    echo "(no results)" >"$work/$name.failed"
    return
  fi
  while IFS=$'\t' read -r state _ spec msg; do
    case $state in failed | panicked | timedout | interrupted | aborted) ;; *) continue ;; esac
    local ok=0 e
    for e in "${EXPECTED_FAILURES[@]}"; do [[ $spec == *"$e"* ]] && ok=1; done
    if [ $ok = 1 ]; then
      echo "  expected failure: $spec"
    else
      echo "$spec" >>"$work/$name.failed"
      echo "  failed: $spec"
      echo "      $msg"
    fi
  done < <(tail -n +2 "$out/results.tsv")
}
keep_reports() {
  mkdir -p target/critest
  rm -rf "target/critest/$1"
  cp -r "$work/run-$1" "target/critest/$1"
  cp "$work/runtime.log" "target/critest/$1/runtime.log"
  echo "  (reports in target/critest/$1)"
}

if [ $mode = berthd ]; then
  start_berthd
  case $transport in
    spdy) names=(spdy) ;;
    websocket) names=(websocket) ;;
    both) names=(spdy websocket) ;;
    *) echo "critest: --transport spdy|websocket|both" >&2; exit 2 ;;
  esac
  for n in "${names[@]}"; do
    if [ "$n" = websocket ]; then
      run websocket -websocket-exec -websocket-attach -websocket-portforward "$@"
    else
      run spdy "$@"
    fi
    if [ -s "$work/$n.failed" ]; then status=1; keep_reports "$n"; fi
  done
  exit $status
fi

# containerd: runc first (the reference), then berth, on the same machine.
runc_bin=$(command -v runc || true)
[ -n "$runc_bin" ] || { echo "critest: containerd: skipped: runc is not installed"; exit 0; }
for rt in runc berth; do
  if [ $rt = runc ]; then start_containerd "$runc_bin"; else start_containerd "$bin/berth"; fi
  run "containerd+$rt" "$@"
  stop_runtime
done
echo "critest through containerd: runc $(tail -n 1 "$work/run-containerd+runc.stdout" | sed 's/^critest: //')" \
  "| berth $(tail -n 1 "$work/run-containerd+berth.stdout" | sed 's/^critest: //')"
# berth must pass every spec runc passes. A spec that failed with berth
# only is run once more (with berth), so one timing hiccup on a loaded
# machine does not decide.
worse=$(comm -23 <(sort "$work/containerd+berth.failed") <(sort "$work/containerd+runc.failed"))
if [ -n "$worse" ]; then
  focus=$(printf '%s\n' "$worse" | python3 -c 'import re,sys; print("|".join(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", l.strip()) for l in sys.stdin if l.strip()))')
  echo "critest through containerd: running again with berth: $(printf '%s\n' "$worse" | wc -l) spec(s)"
  start_containerd "$bin/berth"
  run "containerd+berth-again" -ginkgo.focus="$focus" "$@"
  stop_runtime
  worse=$(comm -12 <(sort "$work/containerd+berth-again.failed") <(printf '%s\n' "$worse" | sort))
fi
if [ -n "$worse" ]; then
  echo "critest through containerd: berth fails where runc passes:"
  printf '  %s\n' "$worse"
  keep_reports containerd+berth
  exit 1
fi
better=$(comm -13 <(sort "$work/containerd+berth.failed") <(sort "$work/containerd+runc.failed"))
[ -z "$better" ] || { echo "critest through containerd: berth passes where runc fails:"; printf '  %s\n' "$better"; }
exit 0
