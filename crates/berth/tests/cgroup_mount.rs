//! A `cgroup` mount shows the container its own cgroups, read-only, and
//! nothing of the host's tree; the host's hierarchies stay writable.

use berth_testutil::{Berth, Bundle};
use serde_json::json;
use std::process::Stdio;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn run(b: &Berth, bundle: &Bundle, id: &str) -> String {
    let o = b
        .cmd()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

const SCRIPT: &str =
    "ls /sys/fs/cgroup/pids; echo procs=$(cat /sys/fs/cgroup/pids/cgroup.procs | wc -l); \
     mkdir /sys/fs/cgroup/pids/escape 2>/dev/null && echo WRITABLE; echo done";

fn check(out: &str, bundle: &Bundle) {
    assert!(out.contains("done"), "{out}");
    // The container's own cgroup: its files, its processes (sh, cat, wc).
    assert!(out.contains("cgroup.procs"), "{out}");
    assert!(!out.contains("procs=0"), "{out}");
    // Not the host's tree: no sibling or parent cgroup directories.
    assert!(!out.contains(&bundle.cgroup_parent), "{out}");
    assert!(!out.contains("process_api"), "{out}");
    assert!(!out.contains("WRITABLE"), "{out}");
}

#[test]
fn cgroup_mount_in_a_cgroup_namespace_is_the_containers_own() {
    let b = Berth::new(BERTH).unwrap();
    let bundle = Bundle::new(&["sh", "-c", SCRIPT]).unwrap();
    let out = run(&b, &bundle, "cgmount-ns");
    check(&out, &bundle);
    // The read-only flag stayed on the container's mounts, not the shared
    // superblock: the host can still make cgroups.
    let probe =
        std::path::Path::new("/sys/fs/cgroup/pids").join(format!("{}-probe", bundle.cgroup_parent));
    std::fs::create_dir(&probe).expect("host pids hierarchy must stay writable");
    std::fs::remove_dir(&probe).unwrap();
}

#[test]
fn cgroup_mount_without_a_cgroup_namespace_binds_the_containers_cgroup() {
    let b = Berth::new(BERTH).unwrap();
    let mut bundle = Bundle::new(&["sh", "-c", SCRIPT]).unwrap();
    bundle.config["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    bundle.write().unwrap();
    let out = run(&b, &bundle, "cgmount-nons");
    check(&out, &bundle);
}
