//! The v1 OOM watcher against a real memory cgroup: a kill is reported once
//! and counted in the stats, and removing the cgroup ends the watch. Skips on
//! hosts without a v1 memory hierarchy.

use berth_cgroups::oom::OomWatcher;
use berth_cgroups::Manager;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn v1_oom_kill_is_seen_once_and_removal_ends_the_watch() {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("memory/memory.oom_control").exists() {
        eprintln!("skipping: no cgroup v1 memory hierarchy");
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let rel = format!("/berth-test-oom-{}-{nanos}", std::process::id());
    let m = Manager::new(root, Path::new(&rel));
    let created = m.create().unwrap();
    // Removes the cgroup even when an assertion fails.
    struct Cleanup(Manager, Vec<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove();
            berth_cgroups::remove_dirs(&self.1);
        }
    }
    let _cleanup = Cleanup(m.clone(), created.clone());
    let limit = m
        .controller_dir("memory")
        .unwrap()
        .join("memory.limit_in_bytes");
    std::fs::write(&limit, "16777216").unwrap();
    let swap = m
        .controller_dir("memory")
        .unwrap()
        .join("memory.memsw.limit_in_bytes");
    if swap.exists() {
        std::fs::write(&swap, "16777216").unwrap();
    }
    let mut w = OomWatcher::new(&m).unwrap();
    assert_eq!(w.check().unwrap().ooms, 0);
    // The child moves itself into the memory cgroup, then outgrows it.
    let procs = m.controller_dir("memory").unwrap().join("cgroup.procs");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec python3 -c 'b = bytearray(64 << 20); print(len(b))'",
            procs.display()
        ))
        .status()
        .unwrap();
    assert!(!st.success(), "the hog survived its limit");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen == 0 {
        assert!(Instant::now() < deadline, "no OOM reported");
        seen += w.wait(Some(Duration::from_millis(100))).unwrap().ooms;
    }
    assert_eq!(seen, 1);
    assert_eq!(m.stats().unwrap().memory.oom_kill_count, 1);
    // Nothing more happened: no second report for the same kill.
    assert_eq!(w.check().unwrap().ooms, 0);
    m.remove().unwrap();
    berth_cgroups::remove_dirs(&created);
    let wake = w.wait(Some(Duration::from_secs(5))).unwrap();
    assert!(wake.gone, "{wake:?}");
}
