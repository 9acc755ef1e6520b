//! The OOM watcher against a real memory cgroup: a kill is reported once and
//! counted in the stats, and removing the cgroup ends the watch. Runs on v1
//! (eventfd) and v2 (inotify on memory.events; scripts/test-cgroup2.sh runs
//! it in a cgroup2 guest); skips on hosts with neither memory controller.

use berth_cgroups::oom::OomWatcher;
use berth_cgroups::{detect_mode, Manager, Mode};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
fn oom_kill_is_seen_once_and_removal_ends_the_watch() {
    let root = Path::new("/sys/fs/cgroup");
    let has_memory = match detect_mode(root) {
        Mode::Unified => std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")),
        _ => root.join("memory/memory.oom_control").exists(),
    };
    if !has_memory {
        eprintln!("skipping: no memory cgroup controller");
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
    let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 16 << 20, "swap": 16 << 20}
    }))
    .unwrap();
    m.apply(&r).unwrap();
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

fn memory_root() -> Option<&'static Path> {
    let root = Path::new("/sys/fs/cgroup");
    let has_memory = match detect_mode(root) {
        Mode::Unified => std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")),
        _ => root.join("memory/memory.oom_control").exists(),
    };
    if !has_memory {
        eprintln!("skipping: no memory cgroup controller");
    }
    has_memory.then_some(root)
}

/// An OOM of the container's parent cgroup that kills a process outside the
/// container is not the container's: v1 signals the eventfds of every
/// cgroup below the one at its limit, so a wake alone proves nothing.
#[test]
fn an_ancestors_oom_that_kills_elsewhere_is_not_reported() {
    let Some(root) = memory_root() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let parent = format!("/berth-test-oomanc-{}-{nanos}", std::process::id());
    let ctr = Manager::new(root, Path::new(&format!("{parent}/ctr")));
    let hog = Manager::new(root, Path::new(&format!("{parent}/hog")));
    let top = Manager::new(root, Path::new(&parent));
    let mut created = ctr.create().unwrap();
    created.extend(hog.create().unwrap());
    struct Cleanup(Vec<Manager>, Vec<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for m in &self.0 {
                let _ = m.remove();
            }
            berth_cgroups::remove_dirs(&self.1);
        }
    }
    let _cleanup = Cleanup(vec![ctr.clone(), hog.clone(), top.clone()], created.clone());
    // The limit is the parent's: the hog in its sibling cgroup hits it.
    let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 16 << 20, "swap": 16 << 20}
    }))
    .unwrap();
    top.apply(&r).unwrap();
    let mut w = OomWatcher::new(&ctr).unwrap();
    let mut hog_w = OomWatcher::new(&hog).unwrap();
    let procs = hog.controller_dir("memory").unwrap().join("cgroup.procs");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec python3 -c 'b = bytearray(64 << 20); print(len(b))'",
            procs.display()
        ))
        .status()
        .unwrap();
    assert!(!st.success(), "the hog survived its parent's limit");
    // The hog's own watcher sees its kill, so the OOM has happened...
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen == 0 {
        assert!(Instant::now() < deadline, "no OOM reported for the hog");
        seen += hog_w.wait(Some(Duration::from_millis(100))).unwrap().ooms;
    }
    // ...and the container's watcher, woken or not, reports nothing.
    let mut ooms = 0;
    for _ in 0..10 {
        ooms += w.wait(Some(Duration::from_millis(100))).unwrap().ooms;
    }
    assert_eq!(ooms, 0, "the parent's OOM was reported for the container");
    assert_eq!(ctr.stats().unwrap().memory.oom_kill_count, 0);
}
