//! v1 limits for hierarchies this host does not mount (hugetlb, net_cls,
//! net_prio): the test mounts them itself under /sys/fs/cgroup, runs a
//! container with those limits, checks the values the kernel holds, and
//! unmounts them again. Its own test binary, with one test, so no other
//! container is created while the extra hierarchies are visible.

use berth_testutil::{Berth, Bundle};
use serde_json::json;
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Hierarchies this test mounted; unmounted (and their mount points
/// removed) on drop, also when an assertion fails.
struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let c = CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: plain syscall on a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            let _ = fs::remove_dir(p);
        }
    }
}

/// Mounts controller `name` at /sys/fs/cgroup/<name> unless it is mounted
/// somewhere already. Returns false when it cannot be used here.
fn mount_controller(name: &str, made: &mut Mounted) -> bool {
    let target = Path::new("/sys/fs/cgroup").join(name);
    if target.exists() {
        return true;
    }
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mi.lines().any(|l| {
        l.contains(" - cgroup ")
            && l.rsplit(' ')
                .next()
                .unwrap_or("")
                .split(',')
                .any(|o| o == name)
    }) {
        return false;
    }
    fs::create_dir(&target).unwrap();
    let (src, tgt, opts) = (
        CString::new(name).unwrap(),
        CString::new(target.to_str().unwrap()).unwrap(),
        CString::new(name).unwrap(),
    );
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            c"cgroup".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        let _ = fs::remove_dir(&target);
        return false;
    }
    made.0.push(target);
    true
}

#[test]
fn hugetlb_and_network_limits_are_written() {
    if !Path::new("/sys/fs/cgroup/memory").exists() {
        eprintln!("skipped: not a cgroup v1 host");
        return;
    }
    let mut made = Mounted(Vec::new());
    for c in ["hugetlb", "net_cls", "net_prio"] {
        if !mount_controller(c, &mut made) {
            eprintln!("skipped: the {c} controller is mounted elsewhere or unavailable");
            return;
        }
    }
    let mut bundle = Bundle::new(&["sleep", "600"]).unwrap();
    bundle.config["linux"]["resources"]["hugepageLimits"] =
        json!([{"pageSize": "2MB", "limit": 4194304}]);
    bundle.config["linux"]["resources"]["network"] =
        json!({"classID": 1048577, "priorities": [{"name": "lo", "priority": 5}]});
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    b.create(&bundle, "v1-mounted");
    let dir = |c: &str| {
        Path::new("/sys/fs/cgroup")
            .join(c)
            .join(&bundle.cgroup_parent)
            .join("ctr")
    };
    let read =
        |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(
        read(dir("hugetlb").join("hugetlb.2MB.limit_in_bytes")).trim(),
        "4194304"
    );
    assert_eq!(
        read(dir("net_cls").join("net_cls.classid")).trim(),
        "1048577"
    );
    let prio = read(dir("net_prio").join("net_prio.ifpriomap"));
    assert!(prio.lines().any(|l| l == "lo 5"), "{prio}");
    b.ok(&["delete", "--force", "v1-mounted"]);
    for c in ["hugetlb", "net_cls", "net_prio"] {
        assert!(!dir(c).exists(), "{c} cgroup left behind");
        let _ = fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&bundle.cgroup_parent),
        );
    }
}
