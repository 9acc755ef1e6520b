#!/usr/bin/env bash
# Builds berth and runs a container from a busybox bundle built locally (no
# network): the quickest way to see berth work.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p berth
bin="$PWD/target/release/berth"
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
root="$work/state"
trap '"$bin" --root "$root" delete --force demo >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/etc"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for a in sh echo hostname id ls cat ps uname; do ln -s busybox "$work/bundle/rootfs/bin/$a"; done
cd "$work/bundle"
"$bin" spec
# Non-interactive: no terminal, a short script instead of an interactive sh.
python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo \"hello from $(hostname), pid $$ in its own namespaces\"; id; ps; uname -r"]
json.dump(c, open("config.json", "w"), indent=2)
PY
"$bin" --root "$root" run demo
