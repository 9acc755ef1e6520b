//! User namespaces beyond the basics in spec_linux.rs: idmapped bind mounts
//! (`mounts[].uidMappings`/`gidMappings`, `idmap`/`ridmap`) and rootless
//! operation (berth run by an unprivileged user).

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// The container's root is host uid/gid 100000 (65536 ids).
fn userns(c: &mut Value) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["linux"]["uidMappings"] = map.clone();
    c["linux"]["gidMappings"] = map;
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn idmapped_bind_shows_host_ids_as_container_ids() {
    // A host directory with files of host uid 0 and 1000.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.path().join("root_file"), "r").unwrap();
    std::fs::write(data.path().join("user_file"), "u").unwrap();
    std::os::unix::fs::chown(data.path().join("user_file"), Some(1000), Some(1000)).unwrap();
    let script = "stat -c '%n %u:%g' /root/root_file /root/user_file /home/user/root_file; \
                  echo x > /root/made_by_root; \
                  touch /root/given_to_user; chown 1000:1000 /root/given_to_user; \
                  stat -c '%n %u:%g' /root/made_by_root /root/given_to_user";
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let mut c = b.config.clone();
    userns(&mut c);
    // chown needs CAP_CHOWN (runc's default set has none).
    for set in ["bounding", "effective", "permitted"] {
        c["process"]["capabilities"][set] = json!(["CAP_CHOWN"]);
    }
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/root", "type": "bind", "source": data.path(),
               "options": ["rbind", "rw", "idmap"],
               "uidMappings": map, "gidMappings": map}),
        // The same directory without idmapping: host ids unmapped in the
        // container's user namespace show as the overflow id.
        json!({"destination": "/home/user", "type": "bind", "source": data.path(),
               "options": ["rbind", "ro"]}),
    ]);
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "/root/root_file 0:0",
            "/root/user_file 1000:1000",
            "/home/user/root_file 65534:65534",
            "/root/made_by_root 0:0",
            "/root/given_to_user 1000:1000",
        ],
        "{out}"
    );
    // Written through the idmapped mount by the container's root (host
    // 100000): owned by host root on disk.
    assert_eq!(owner(&data.path().join("made_by_root")), (0, 0));
    assert_eq!(owner(&data.path().join("given_to_user")), (1000, 1000));
    assert_eq!(owner(&data.path().join("user_file")), (1000, 1000));
}

#[test]
fn idmapped_rootfs_content_owned_by_container_root_without_chown() {
    // The bundle's rootfs belongs to host root. Bound over itself with
    // `ridmap` and no mappings of its own, /bin takes the container's
    // mappings (runtime-spec 1.2) and shows root-owned files as 0:0, while
    // the rest of the rootfs shows them as the overflow id.
    let script = "stat -c '%u:%g' /bin/busybox /etc/passwd; touch /bin/new; stat -c '%u' /bin/new";
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let rootfs = b.rootfs();
    assert_eq!(owner(&rootfs.join("bin/busybox")), (0, 0));
    let mut c = b.config.clone();
    userns(&mut c);
    c["root"]["readonly"] = json!(false);
    c["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/bin", "type": "bind", "source": rootfs.join("bin"),
        "options": ["rbind", "ridmap"]
    }));
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-root-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0:0", "65534:65534", "0"],
        "{out}"
    );
    assert_eq!(owner(&rootfs.join("bin/new")), (0, 0));
}

#[test]
fn an_idmapped_bind_on_root_idmaps_the_whole_rootfs() {
    // The rootfs bound on "/" with `ridmap`: every file of it, root-owned on
    // disk, is the container root's, and what the container writes is host
    // root's again on disk; the spec's other mounts sit on top of it.
    let script = "stat -c '%u:%g' / /etc/passwd /bin/busybox; touch /etc/made; \
                  test -e /proc/self/ns/user && echo proc";
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let rootfs = b.rootfs();
    assert_eq!(owner(&rootfs.join("etc/passwd")), (0, 0));
    let mut c = b.config.clone();
    userns(&mut c);
    c["root"]["readonly"] = json!(false);
    // Listed last on purpose: it still goes under the others.
    c["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/", "type": "bind", "source": rootfs,
        "options": ["rbind", "ridmap"]
    }));
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-all-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0:0", "0:0", "0:0", "proc"],
        "{out}"
    );
    assert_eq!(owner(&rootfs.join("etc/made")), (0, 0));
}

#[test]
fn idmap_without_any_mappings_names_the_field_and_leaves_nothing() {
    let mut b = Bundle::new(&["true"]).unwrap();
    let mut c = b.config.clone();
    c["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/mnt", "type": "bind", "source": "/tmp", "options": ["rbind", "idmap"]
    }));
    let n = c["mounts"].as_array().unwrap().len() - 1;
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-bad-{}", random_suffix());
    let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("mounts[{n}].uidMappings")), "{err}");
    assert_eq!(std::fs::read_dir(berth.root.path()).unwrap().count(), 0);
    assert!(b.cgroup_dirs().is_empty(), "{:?}", b.cgroup_dirs());
}

/// Why unprivileged user namespaces are unavailable here, if they are.
fn unprivileged_userns_blocked() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0".into());
    }
    // Debian's older switch and Ubuntu's AppArmor restriction.
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some("kernel.apparmor_restrict_unprivileged_userns is 1".into());
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("setpriv (util-linux) is not installed".into());
    }
    None
}

/// A throwaway unprivileged user: berth run through setpriv with only that
/// uid/gid, its default state root under its own XDG_RUNTIME_DIR.
struct User {
    uid: u32,
    runtime_dir: tempfile::TempDir,
    /// A copy of berth the user can reach (the build tree may not be).
    bin: tempfile::TempDir,
}

impl User {
    fn new() -> User {
        // Far above real users and the 100000+ ranges other tests map.
        let uid = 3_000_000 + u32::from_str_radix(&random_suffix()[..4], 16).unwrap();
        let runtime_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(runtime_dir.path(), Some(uid), Some(uid)).unwrap();
        let bin = tempfile::tempdir().unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(BIN, bin.path().join("berth")).unwrap();
        User {
            uid,
            runtime_dir,
            bin,
        }
    }

    fn cmd(&self, dir: &Path, args: &[&str]) -> std::process::Command {
        let id = self.uid.to_string();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
            .arg(self.bin.path().join("berth"))
            .args(args)
            .current_dir(dir)
            .env("XDG_RUNTIME_DIR", self.runtime_dir.path())
            .env_remove("BERTH_ROOT")
            .stdin(std::process::Stdio::null());
        c
    }

    fn berth(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        self.cmd(dir, args).output().unwrap()
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let o = self.berth(dir, args);
        assert!(
            o.status.success(),
            "berth {args:?} as uid {} failed: {}{}",
            self.uid,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn state_root(&self) -> std::path::PathBuf {
        self.runtime_dir.path().join("berth")
    }
}

#[test]
fn rootless_lifecycle_as_an_unprivileged_user() {
    if let Some(why) = unprivileged_userns_blocked() {
        eprintln!("SKIPPED: unprivileged user namespaces are not available: {why}");
        return;
    }
    // Detached containers are reparented here, so the test can reap them.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let user = User::new();
    let mut b = Bundle::new(&["true"]).unwrap();
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The config `berth spec --rootless` writes for this user.
    let specdir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(specdir.path(), Some(user.uid), Some(user.uid)).unwrap();
    user.ok(specdir.path(), &["spec", "--rootless"]);
    let mut c: Value =
        serde_json::from_slice(&std::fs::read(specdir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(c["linux"]["uidMappings"][0]["hostID"], json!(user.uid));
    c["process"]["terminal"] = json!(false);
    // Device nodes are host binds and /sys the host's, read-only.
    c["process"]["args"] = json!([
        "sh",
        "-c",
        "id -u; id -g; echo x >/dev/null && test -d /sys/kernel && ! touch /sys/x 2>/dev/null && echo hi"
    ]);
    b.config = c.clone();
    b.write().unwrap();

    let id = format!("rootless-{}", random_suffix());
    let o = user.berth(b.path(), &["run", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n0\nhi\n", "{err}");
    // The host's cgroups are not the user's: berth says it runs without one.
    assert!(err.contains("warning: rootless: no cgroup"), "{err}");
    // The default state root: the user's own, private.
    let md = std::fs::metadata(user.state_root()).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (user.uid, 0o700));
    // A state root another user owns is refused.
    let o = user.berth(b.path(), &["--root", "/tmp", "list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("state root /tmp is not a directory owned by uid"),
        "{err}"
    );

    // Detached: state, list, kill, delete by the same user.
    c["process"]["args"] = json!(["sleep", "1000"]);
    b.config = c;
    b.write().unwrap();
    let id = format!("rootless-d-{}", random_suffix());
    // The container keeps run's stdio: no pipes, or they would stay open.
    let st = user
        .cmd(b.path(), &["run", "-d", &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let st: Value = serde_json::from_str(&user.ok(b.path(), &["state", &id])).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    let pid = st["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let host_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(host_uid, user.uid.to_string());
    assert!(user.ok(b.path(), &["list", "-q"]).lines().any(|l| l == id));
    assert_eq!(user.ok(b.path(), &["exec", &id, "id", "-u"]), "0\n");
    // No cgroup to list the processes: --all reaches the init.
    user.ok(b.path(), &["kill", "--all", &id, "KILL"]);
    let mut stopped = false;
    for _ in 0..500 {
        let st: Value = serde_json::from_str(&user.ok(b.path(), &["state", &id])).unwrap();
        if st["status"] == "stopped" {
            stopped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(stopped, "{id} did not stop after SIGKILL");
    user.ok(b.path(), &["delete", &id]);
    assert_eq!(
        std::fs::read_dir(user.state_root()).unwrap().count(),
        0,
        "state left in {}",
        user.state_root().display()
    );
    // The init was reparented to this test (a subreaper): reap it, so no
    // zombie outlives the test.
    let mut wst = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    assert_eq!(
        unsafe { libc::waitpid(pid as i32, &mut wst, 0) },
        pid as i32
    );
    assert!(libc::WIFSIGNALED(wst) && libc::WTERMSIG(wst) == libc::SIGKILL);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
