//! Runtime spec 1.2 (Linux): mounts, root, maskedPaths, readonlyPaths and
//! devices, checked from inside real busybox containers.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

struct Ran {
    ok: bool,
    out: String,
    err: String,
}

/// Runs `sh -c script` in the foreground in a fresh bundle after `edit`,
/// with extra `berth run` flags.
fn try_sh(script: &str, flags: &[&str], edit: impl FnOnce(&mut Value, &Bundle)) -> Ran {
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let mut cfg = b.config.clone();
    edit(&mut cfg, &b);
    b.config = cfg;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("spec-{}", random_suffix());
    let mut args = vec!["run", "--bundle", b.path().to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push(&id);
    let o = berth.run(&args);
    Ran {
        ok: o.status.success(),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Like [`try_sh`] without flags; panics unless the container exits 0.
fn sh(script: &str, edit: impl FnOnce(&mut Value, &Bundle)) -> String {
    let r = try_sh(script, &[], edit);
    assert!(r.ok, "container failed: {}{}", r.out, r.err);
    r.out
}

fn mount_cmd(args: &[&str], target: &Path) {
    let st = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .unwrap();
    assert!(st.success(), "mount {args:?} {}", target.display());
}

fn add_mount(cfg: &mut Value, m: Value) {
    cfg["mounts"].as_array_mut().unwrap().push(m);
}

/// The mountinfo line of the mount at `dest` in `mountinfo` text.
fn mountinfo_line<'a>(mountinfo: &'a str, dest: &str) -> &'a str {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(dest))
        .unwrap_or_else(|| panic!("{dest} not mounted:\n{mountinfo}"))
}

/// Per-mount options (field 6) of a mountinfo line.
fn mount_opts(line: &str) -> Vec<&str> {
    line.split(' ').nth(5).unwrap().split(',').collect()
}

#[test]
fn bind_rbind_and_file_bind() {
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("hello"), "from host\n").unwrap();
    let file = host.path().join("single.txt");
    fs::write(&file, "one file\n").unwrap();
    let src = host.path().to_str().unwrap().to_string();
    let out = sh(
        "cat /mnt/bind/hello /mnt/rbind/hello /etc/single.txt && echo written > /mnt/bind/from-ctr",
        |c, _| {
            add_mount(
                c,
                json!({"destination": "/mnt/bind", "type": "bind", "source": src, "options": ["bind"]}),
            );
            add_mount(
                c,
                json!({"destination": "/mnt/rbind", "type": "none", "source": src, "options": ["rbind", "rw"]}),
            );
            add_mount(
                c,
                json!({"destination": "/etc/single.txt", "type": "bind", "source": file, "options": ["bind", "ro"]}),
            );
        },
    );
    assert_eq!(out, "from host\nfrom host\none file\n");
    assert_eq!(
        fs::read_to_string(host.path().join("from-ctr")).unwrap(),
        "written\n"
    );
}

#[test]
fn read_only_bind_refuses_writes() {
    let host = tempfile::tempdir().unwrap();
    let src = host.path().to_str().unwrap().to_string();
    let r = try_sh(
        "touch /mnt/ro/x 2>&1; grep ' /mnt/ro ' /proc/self/mountinfo",
        &[],
        |c, _| {
            add_mount(
                c,
                json!({"destination": "/mnt/ro", "type": "bind", "source": src, "options": ["rbind", "ro"]}),
            );
        },
    );
    assert!(r.ok, "{}", r.err);
    assert!(r.out.contains("Read-only file system"), "{}", r.out);
    assert!(mount_opts(mountinfo_line(&r.out, "/mnt/ro")).contains(&"ro"));
    assert!(!host.path().join("x").exists());
}

#[test]
fn tmpfs_size_and_mode() {
    let out = sh(
        "stat -c %a /mnt/t; grep ' /mnt/t ' /proc/self/mountinfo",
        |c, _| {
            add_mount(
                c,
                json!({"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=710"]}),
            );
        },
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("710"));
    let line = lines.next().unwrap();
    assert!(line.contains(" - tmpfs "), "{line}");
    let super_opts = line.rsplit(' ').next().unwrap();
    assert!(super_opts.split(',').any(|o| o == "size=1024k"), "{line}");
    assert!(super_opts.split(',').any(|o| o == "mode=710"), "{line}");
}

#[test]
fn propagation_options_are_applied() {
    let host = tempfile::tempdir().unwrap();
    let src = host.path().to_str().unwrap().to_string();
    let out = sh("cat /proc/self/mountinfo", |c, _| {
        for (dest, prop) in [
            ("/mnt/private", "rprivate"),
            ("/mnt/slave", "rslave"),
            ("/mnt/shared", "rshared"),
            ("/mnt/unbindable", "runbindable"),
        ] {
            add_mount(
                c,
                json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", prop]}),
            );
        }
    });
    // Optional fields (7th on) carry the propagation of each mount.
    let optional = |dest: &str| -> String {
        let line = mountinfo_line(&out, dest);
        let fields: Vec<&str> = line.split(' ').collect();
        let end = fields.iter().position(|f| *f == "-").unwrap();
        fields[6..end].join(" ")
    };
    assert_eq!(optional("/mnt/private"), "");
    assert!(optional("/mnt/shared").starts_with("shared:"), "{out}");
    assert_eq!(optional("/mnt/unbindable"), "unbindable");
    // A slave of a private mount ends up private: rslave is accepted and
    // the mount never becomes a peer of anything.
    assert!(!optional("/mnt/slave").contains("shared:"), "{out}");
}

/// A host directory that is a shared tmpfs mount (made in the caller's
/// private mount namespace), bound at /mnt/h of a detached `sleep`
/// container with `prop`; runs `check` while the container runs.
fn with_shared_host_dir(
    prop: &str,
    root_prop: &str,
    check: impl FnOnce(&Berth, &str, &Path) + Send,
) {
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().to_path_buf();
    in_private_mount_ns(|| {
        mount_cmd(&["-t", "tmpfs", "berth-spec-shared"], &dir);
        mount_cmd(&["--make-shared"], &dir);
        let mut b = Bundle::new(&["sleep", "1000"]).unwrap();
        add_mount(
            &mut b.config,
            json!({"destination": "/mnt/h", "type": "bind", "source": dir, "options": ["rbind", prop]}),
        );
        b.config["linux"]["rootfsPropagation"] = json!(root_prop);
        b.write().unwrap();
        let berth = Berth::new(BIN).unwrap();
        let id = format!("prop-{}", random_suffix());
        berth.run_detached(&b, &id);
        check(&berth, &id, &dir);
        berth.ok(&["delete", "--force", &id]);
    });
}

#[test]
fn rslave_bind_receives_later_host_mounts() {
    // Kubernetes' HostToContainer propagation.
    with_shared_host_dir("rslave", "rslave", |berth, id, dir| {
        let late = dir.join("late");
        fs::create_dir(&late).unwrap();
        mount_cmd(&["-t", "tmpfs", "berth-spec-late"], &late);
        fs::write(late.join("f"), "late mount\n").unwrap();
        let out = berth.ok(&["exec", id, "cat", "/mnt/h/late/f"]);
        assert_eq!(out, "late mount\n");
    });
}

#[test]
fn rshared_bind_propagates_container_mounts_to_the_host() {
    // Kubernetes' Bidirectional propagation.
    with_shared_host_dir("rshared", "rshared", |berth, id, dir| {
        let out = berth.ok(&[
            "exec", "--cap", "CAP_SYS_ADMIN", id, "sh", "-c",
            "mkdir /mnt/h/fromctr && mount -t tmpfs berth-spec-ctr /mnt/h/fromctr && echo x > /mnt/h/fromctr/f && echo ok",
        ]);
        assert_eq!(out, "ok\n");
        assert_eq!(fs::read_to_string(dir.join("fromctr/f")).unwrap(), "x\n");
    });
}

#[test]
fn rshared_root_keeps_container_mounts_off_a_shared_host() {
    // As on systemd hosts, everything is shared (in this test's own mount
    // namespace): the container's rootfs bind, /proc, /dev... must still
    // not show up on the "host", before or after the container.
    in_private_mount_ns(|| {
        mount_cmd(&["--make-rshared"], Path::new("/"));
        let mut b = Bundle::new(&["sleep", "1000"]).unwrap();
        b.config["linux"]["rootfsPropagation"] = json!("rshared");
        b.write().unwrap();
        let berth = Berth::new(BIN).unwrap();
        let id = format!("rshared-{}", random_suffix());
        berth.run_detached(&b, &id);
        let bundle = b.path().to_str().unwrap().to_string();
        let here = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(!here.contains(&bundle), "container mounts leaked:\n{here}");
        let out = berth.ok(&["exec", &id, "cat", "/proc/self/mountinfo"]);
        assert!(mountinfo_line(&out, "/").contains("shared:"), "{out}");
        berth.ok(&["delete", "--force", &id]);
        let after = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert_eq!(after.lines().count(), here.lines().count(), "{after}");
    });
}

#[test]
fn nosuid_nodev_noexec() {
    let r = try_sh(
        // busybox picks its applet by name: the copies are called "true".
        "cp /bin/busybox /mnt/noexec/true && cp /bin/busybox /mnt/exec/true && /mnt/exec/true && echo exec-ok; \
         /mnt/noexec/true; echo noexec=$?; grep ' /mnt/noexec ' /proc/self/mountinfo",
        &[],
        |c, _| {
            add_mount(c, json!({"destination": "/mnt/noexec", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec"]}));
            add_mount(c, json!({"destination": "/mnt/exec", "type": "tmpfs", "source": "tmpfs", "options": ["exec"]}));
        },
    );
    assert!(r.ok, "{}{}", r.out, r.err);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "exec-ok", "{}{}", r.out, r.err);
    assert_eq!(lines[1], "noexec=126", "{}{}", r.out, r.err);
    let opts = mount_opts(lines[2]);
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(opts.contains(&o), "{o} missing: {}", lines[2]);
    }
}

/// Runs `f` in a private mount namespace of its own thread, so mounts made
/// for one test never reach the host (unshare(CLONE_NEWNS) is per thread
/// once CLONE_FS is unshared too).
fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on this thread only.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS), 0);
                let none = c"none";
                let root = c"/";
                assert_eq!(
                    libc::mount(
                        none.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null()
                    ),
                    0
                );
            }
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn recursive_read_only_covers_submounts() {
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let src = host.path().to_str().unwrap().to_string();
    // A plain "ro" rbind leaves the submount writable; "rro" does not.
    let script = "touch /mnt/ro/sub/x && echo ro-sub-writable; \
                  touch /mnt/rro/y 2>/dev/null || echo rro-top-ro; \
                  touch /mnt/rro/sub/y 2>/dev/null || echo rro-sub-ro";
    let r = in_private_mount_ns(|| {
        mount_cmd(&["-t", "tmpfs", "berth-spec-sub"], &sub);
        try_sh(script, &[], |c, _| {
            add_mount(
                c,
                json!({"destination": "/mnt/ro", "type": "bind", "source": src, "options": ["rbind", "ro"]}),
            );
            add_mount(
                c,
                json!({"destination": "/mnt/rro", "type": "bind", "source": src, "options": ["rbind", "rro"]}),
            );
        })
    });
    assert!(r.ok, "{}{}", r.out, r.err);
    assert_eq!(r.out, "ro-sub-writable\nrro-top-ro\nrro-sub-ro\n");
}

#[test]
fn kernel_filesystems_are_mounted() {
    let out = sh("awk '{ print $2, $3 }' /proc/mounts", |_, _| {});
    // pivot_root left exactly one root and nothing of the host's tree.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("/ ")).count(),
        1,
        "{out}"
    );
    assert!(!out.contains("/tmp/"), "{out}");
    for want in [
        "/proc proc",
        "/sys sysfs",
        "/dev tmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/dev/mqueue mqueue",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
    }
}

#[test]
fn readonly_root_keeps_tmpfs_writable() {
    let out = sh(
        "touch /rootfile 2>&1; touch /tmp/ok && echo tmp-ok; cat /proc/self/mountinfo",
        |c, _| {
            add_mount(
                c,
                json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}),
            );
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("Read-only file system"), "{out}");
    assert_eq!(lines[1], "tmp-ok");
    assert!(
        mount_opts(mountinfo_line(&out, "/")).contains(&"ro"),
        "{out}"
    );
}

#[test]
fn writable_root_when_not_readonly() {
    let out = sh("echo hi > /rootfile && cat /rootfile", |c, _| {
        c["root"]["readonly"] = json!(false);
    });
    assert_eq!(out, "hi\n");
}

#[test]
fn rootfs_propagation() {
    // "shared" makes the container's / a peer group of its own; "private"
    // and "rslave" are accepted and leave it without peers.
    let root_opt = |prop: &str| -> String {
        let out = sh("cat /proc/self/mountinfo", |c, _| {
            c["linux"]["rootfsPropagation"] = json!(prop);
        });
        let fields: Vec<&str> = mountinfo_line(&out, "/").split(' ').collect();
        let end = fields.iter().position(|f| *f == "-").unwrap();
        fields[6..end].join(" ")
    };
    assert!(root_opt("shared").starts_with("shared:"));
    assert_eq!(root_opt("private"), "");
    assert!(!root_opt("rslave").contains("shared:"));
}

#[test]
fn no_pivot_runs_in_the_rootfs() {
    let r = try_sh(
        "cat /etc/hostname; ls / | wc -l",
        &["--no-pivot"],
        |_, _| {},
    );
    assert!(r.ok, "{}", r.err);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "busybox", "{}", r.out);
    // Only the rootfs entries (bin etc proc sys dev tmp root home var usr).
    assert_eq!(lines[1].trim(), "10", "{}", r.out);
}

#[test]
fn masked_paths() {
    let out = sh(
        "wc -c < /etc/secret; ls -A /opt/secretdir | wc -l; wc -c < /proc/keys",
        |c, b| {
            fs::write(b.rootfs().join("etc/secret"), "s3cret\n").unwrap();
            fs::create_dir_all(b.rootfs().join("opt/secretdir")).unwrap();
            fs::write(b.rootfs().join("opt/secretdir/key"), "k\n").unwrap();
            c["linux"]["maskedPaths"] = json!([
                "/etc/secret",
                "/opt/secretdir",
                "/proc/keys",
                "/does/not/exist"
            ]);
        },
    );
    let n: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(n, ["0", "0", "0"], "{out}");
}

#[test]
fn readonly_paths() {
    let out = sh(
        "(echo 200 > /proc/sys/kernel/ns_last_pid) 2>&1; touch /opt/ro/x 2>&1; touch /opt/rw/x && echo opt-rw",
        |c, b| {
            fs::create_dir_all(b.rootfs().join("opt/ro")).unwrap();
            fs::create_dir_all(b.rootfs().join("opt/rw")).unwrap();
            c["root"]["readonly"] = json!(false);
            // With CAP_SYS_ADMIN ns_last_pid (of the container's own pid
            // namespace) is writable, so only the read-only mount stops it.
            let caps = json!(["CAP_SYS_ADMIN"]);
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set] = caps.clone();
            }
            c["linux"]["readonlyPaths"] = json!(["/proc/sys", "/opt/ro", "/does/not/exist"]);
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("Read-only file system"), "{out}");
    assert!(lines[1].contains("Read-only file system"), "{out}");
    assert_eq!(lines[2], "opt-rw");
}

#[test]
fn default_devices_and_links() {
    let out = sh(
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done; \
         for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done; \
         echo hi > /dev/null && head -c 3 /dev/zero | wc -c",
        |_, _| {},
    );
    let expected = "\
/dev/null character special file 1:3 666
/dev/zero character special file 1:5 666
/dev/full character special file 1:7 666
/dev/random character special file 1:8 666
/dev/urandom character special file 1:9 666
/dev/tty character special file 5:0 666
fd /proc/self/fd
stdin /proc/self/fd/0
stdout /proc/self/fd/1
stderr /proc/self/fd/2
ptmx pts/ptmx
3
";
    assert_eq!(out, expected);
}

#[test]
fn linux_devices_are_created() {
    let out = sh(
        "stat -c '%n %F %t:%T %a %u:%g' /dev/spec-char /dev/sub/spec-block /dev/spec-fifo",
        |c, _| {
            c["linux"]["devices"] = json!([
                {"path": "/dev/spec-char", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 1000, "gid": 2000},
                {"path": "/dev/sub/spec-block", "type": "b", "major": 7, "minor": 200, "fileMode": 0o600, "uid": 0, "gid": 0},
                {"path": "/dev/spec-fifo", "type": "p", "fileMode": 0o620, "uid": 0, "gid": 5}
            ]);
        },
    );
    let expected = "\
/dev/spec-char character special file 1:3 640 1000:2000
/dev/sub/spec-block block special file 7:c8 600 0:0
/dev/spec-fifo fifo 0:0 620 0:5
";
    assert_eq!(out, expected);
}

#[test]
fn bind_source_must_exist() {
    let r = try_sh("true", &[], |c, _| {
        add_mount(
            c,
            json!({"destination": "/mnt/x", "type": "bind", "source": "/nonexistent/berth-src", "options": ["bind"]}),
        );
    });
    assert!(!r.ok);
    assert!(r.err.contains("/nonexistent/berth-src"), "{}", r.err);
}

/// A destination behind a dangling symlink (/var/run -> /run, /run missing,
/// as in many images) is created where the symlink points, inside the
/// rootfs, as runc does; the mount lands there and nowhere on the host.
#[test]
fn mount_behind_a_dangling_symlink_is_created_inside_the_rootfs() {
    let out = sh(
        "grep -c ' /run/secrets/token ' /proc/self/mountinfo; ls -d /var/run/secrets/token",
        |cfg, b| {
            let rootfs = b.rootfs();
            let _ = fs::remove_dir_all(rootfs.join("var/run"));
            let _ = fs::remove_dir_all(rootfs.join("run"));
            std::os::unix::fs::symlink("/run", rootfs.join("var/run")).unwrap();
            add_mount(
                cfg,
                json!({"destination": "/var/run/secrets/token", "type": "tmpfs", "source": "tmpfs"}),
            );
        },
    );
    assert_eq!(out, "1\n/var/run/secrets/token\n");
    assert!(
        !Path::new("/run/secrets/token").exists() || fs::read_dir("/run/secrets/token").is_ok()
    );
}

/// How an option of `berth features` is tried: on an rbind of a tmpfs
/// with two submounts, on a fresh tmpfs (superblock options, which a bind
/// cannot change), or on an idmapped rbind.
#[derive(Clone, Copy, PartialEq)]
enum On {
    Bind,
    Tmpfs,
    Idmap,
}

/// What each mount option must show in /proc/self/mountinfo: tokens of the
/// per-mount options and propagation fields ("!x": absent; "super:x": in
/// the superblock options), on the mount itself and, for recursive
/// options, on both submounts (`None`: not checked; `Some(&["absent"])`:
/// the submounts are not there). Submount `a` starts ro, nosuid, nodev,
/// noexec, noatime, nodiratime, nosymfollow; `b` and the top with tmpfs
/// defaults (rw, relatime).
#[allow(clippy::type_complexity)]
const EXPECT: &[(&str, On, &[&str], Option<&[&str]>)] = &[
    ("defaults", On::Bind, &["rw"], None),
    ("ro", On::Bind, &["ro"], None),
    ("rw", On::Bind, &["rw"], None),
    ("suid", On::Bind, &["!nosuid"], None),
    ("nosuid", On::Bind, &["nosuid"], None),
    ("dev", On::Bind, &["!nodev"], None),
    ("nodev", On::Bind, &["nodev"], None),
    ("exec", On::Bind, &["!noexec"], None),
    ("noexec", On::Bind, &["noexec"], None),
    ("sync", On::Tmpfs, &["super:sync"], None),
    ("async", On::Tmpfs, &["!super:sync"], None),
    ("dirsync", On::Tmpfs, &["super:dirsync"], None),
    ("remount", On::Bind, &["rw"], None),
    // Mandatory locking is gone from Linux (5.15): accepted, no effect.
    ("mand", On::Tmpfs, &[], None),
    ("nomand", On::Tmpfs, &["!super:mand"], None),
    ("atime", On::Bind, &["!noatime"], None),
    ("noatime", On::Bind, &["noatime"], None),
    ("diratime", On::Bind, &["!nodiratime"], None),
    ("nodiratime", On::Bind, &["nodiratime"], None),
    ("bind", On::Bind, &[], Some(&["absent"])),
    ("rbind", On::Bind, &[], Some(&[])),
    ("relatime", On::Bind, &["relatime"], None),
    ("norelatime", On::Bind, &["!noatime"], None),
    ("strictatime", On::Bind, &["!relatime", "!noatime"], None),
    ("nostrictatime", On::Bind, &["relatime"], None),
    ("nosymfollow", On::Bind, &["nosymfollow"], None),
    ("symfollow", On::Bind, &["!nosymfollow"], None),
    ("silent", On::Tmpfs, &[], None),
    // What it copies: tmpcopyup_fills_the_tmpfs_with_the_images_content.
    ("tmpcopyup", On::Tmpfs, &[], None),
    ("loud", On::Tmpfs, &[], None),
    ("private", On::Bind, &["!shared", "!master"], None),
    (
        "rprivate",
        On::Bind,
        &["!shared", "!master"],
        Some(&["!shared", "!master"]),
    ),
    ("shared", On::Bind, &["shared"], None),
    ("rshared", On::Bind, &["shared"], Some(&["shared"])),
    ("slave", On::Bind, &["!shared"], None),
    ("rslave", On::Bind, &["!shared"], Some(&["!shared"])),
    ("unbindable", On::Bind, &["unbindable"], None),
    (
        "runbindable",
        On::Bind,
        &["unbindable"],
        Some(&["unbindable"]),
    ),
    ("rro", On::Bind, &["ro"], Some(&["ro"])),
    ("rrw", On::Bind, &["rw"], Some(&["rw"])),
    ("rnosuid", On::Bind, &["nosuid"], Some(&["nosuid"])),
    ("rsuid", On::Bind, &["!nosuid"], Some(&["!nosuid"])),
    ("rnodev", On::Bind, &["nodev"], Some(&["nodev"])),
    ("rdev", On::Bind, &["!nodev"], Some(&["!nodev"])),
    ("rnoexec", On::Bind, &["noexec"], Some(&["noexec"])),
    ("rexec", On::Bind, &["!noexec"], Some(&["!noexec"])),
    ("rnoatime", On::Bind, &["noatime"], Some(&["noatime"])),
    ("ratime", On::Bind, &["relatime"], Some(&["relatime"])),
    ("rrelatime", On::Bind, &["relatime"], Some(&["relatime"])),
    (
        "rnostrictatime",
        On::Bind,
        &["relatime"],
        Some(&["relatime"]),
    ),
    (
        "rstrictatime",
        On::Bind,
        &["!relatime", "!noatime"],
        Some(&["!relatime", "!noatime"]),
    ),
    (
        "rnorelatime",
        On::Bind,
        &["!relatime", "!noatime"],
        Some(&["!relatime", "!noatime"]),
    ),
    (
        "rnodiratime",
        On::Bind,
        &["nodiratime"],
        Some(&["nodiratime"]),
    ),
    (
        "rdiratime",
        On::Bind,
        &["!nodiratime"],
        Some(&["!nodiratime"]),
    ),
    (
        "rnosymfollow",
        On::Bind,
        &["nosymfollow"],
        Some(&["nosymfollow"]),
    ),
    (
        "rsymfollow",
        On::Bind,
        &["!nosymfollow"],
        Some(&["!nosymfollow"]),
    ),
    // The idmapped tree is cloned by the parent from its own mount
    // namespace, where the submounts exist too.
    ("idmap", On::Idmap, &["idmapped"], Some(&["!idmapped"])),
    ("ridmap", On::Idmap, &["idmapped"], Some(&["idmapped"])),
];

/// True if the mountinfo `line` has `token` (see [`EXPECT`]).
fn has_token(line: &str, token: &str) -> bool {
    let f: Vec<&str> = line.split(' ').collect();
    let dash = f.iter().position(|x| *x == "-").unwrap();
    if let Some(t) = token.strip_prefix("super:") {
        return f[dash + 3].split(',').any(|o| o == t);
    }
    // Optional fields are "shared:N", "master:N", "unbindable".
    f[5].split(',').any(|o| o == token)
        || f[6..dash]
            .iter()
            .any(|o| o.split(':').next() == Some(token))
}

/// Every mount option `berth features` advertises works on a real mount,
/// as the container sees it in /proc/self/mountinfo; and every option the
/// table knows is advertised.
#[test]
fn every_advertised_mount_option_works() {
    let f: Value = serde_json::from_str(&Berth::new(BIN).unwrap().ok(&["features"])).unwrap();
    let advertised: Vec<&str> = f["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for o in &advertised {
        assert!(
            EXPECT.iter().any(|e| e.0 == *o),
            "{o} is advertised but not tested here"
        );
    }
    for e in EXPECT {
        assert!(
            advertised.contains(&e.0),
            "{} works but is not advertised",
            e.0
        );
    }
    let host = tempfile::tempdir().unwrap();
    let src = host.path().to_path_buf();
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let r = in_private_mount_ns(|| {
        mount_cmd(&["-t", "tmpfs", "berth-spec-top"], &src);
        for s in ["a", "b"] {
            fs::create_dir(src.join(s)).unwrap();
        }
        mount_cmd(
            &[
                "-t",
                "tmpfs",
                "-o",
                "nosuid,nodev,noexec,noatime,nodiratime,nosymfollow",
                "berth-spec-a",
            ],
            &src.join("a"),
        );
        mount_cmd(&["-o", "remount,bind,ro"], &src.join("a"));
        mount_cmd(&["-t", "tmpfs", "berth-spec-b"], &src.join("b"));
        try_sh("cat /proc/self/mountinfo", &[], |c, _| {
            for (opt, on, _, _) in EXPECT {
                let dest = format!("/m/{opt}");
                let m = match on {
                    On::Tmpfs => json!({"destination": dest, "type": "tmpfs",
                                        "source": "tmpfs", "options": [opt]}),
                    On::Bind => {
                        let opts = if *opt == "bind" {
                            json!([opt])
                        } else {
                            json!(["rbind", opt])
                        };
                        json!({"destination": dest, "type": "bind", "source": src,
                               "options": opts})
                    }
                    On::Idmap => json!({"destination": dest, "type": "bind", "source": src,
                                        "options": ["rbind", opt],
                                        "uidMappings": map, "gidMappings": map}),
                };
                add_mount(c, m);
            }
        })
    });
    assert!(r.ok, "{}{}", r.out, r.err);
    let info = &r.out;
    let mut bad = Vec::new();
    for (opt, _, top, subs) in EXPECT {
        let mut check = |dest: String, tokens: &[&str]| {
            let line = info.lines().rfind(|l| l.split(' ').nth(4) == Some(&dest));
            for t in tokens {
                let ok = match (line, t.strip_prefix('!')) {
                    (None, _) => *t == "absent",
                    (Some(_), _) if *t == "absent" => false,
                    (Some(l), Some(t)) => !has_token(l, t),
                    (Some(l), None) => has_token(l, t),
                };
                if !ok {
                    bad.push(format!("{opt}: {dest} wants {t}: {line:?}"));
                }
            }
            if line.is_none() && !tokens.contains(&"absent") {
                bad.push(format!("{opt}: {dest} is not mounted"));
            }
        };
        check(format!("/m/{opt}"), top);
        if let Some(s) = subs {
            check(format!("/m/{opt}/a"), s);
            check(format!("/m/{opt}/b"), s);
        }
    }
    assert!(bad.is_empty(), "{}\n\nmountinfo:\n{info}", bad.join("\n"));
}

/// `tmpcopyup`: a tmpfs mount starts with what the image has at its
/// destination (files, directories, links as links, fifos; mode, owner and
/// mtime kept), writes stay in the tmpfs, and a link in the image pointing
/// at the host is copied, never followed.
#[test]
fn tmpcopyup_fills_the_tmpfs_with_the_images_content() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("marker"), "host\n").unwrap();
    let script = "stat -c '%n %a %u:%g %F' /data/f /data/sub /data/sub/g /data/p; \
                  readlink /data/link; readlink /data/esc; cat /data/f; stat -c %Y /data/f; \
                  echo new > /data/new && echo writable; \
                  grep ' /data ' /proc/self/mountinfo | grep -c ' - tmpfs '; ls /data/esc/ 2>&1 | grep -c marker; \
                  cat /data2/f; touch /data2/x 2>/dev/null || echo data2-ro";
    let r = try_sh(script, &[], |c, b| {
        let d = b.rootfs().join("data");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), "image\n").unwrap();
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o604)).unwrap();
        std::os::unix::fs::chown(d.join("f"), Some(1000), Some(2000)).unwrap();
        let st = Command::new("touch")
            .args(["-m", "-d", "@1000000000"])
            .arg(d.join("f"))
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub/g"), "g").unwrap();
        fs::set_permissions(d.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
        let st = Command::new("mkfifo").arg(d.join("p")).status().unwrap();
        assert!(st.success());
        symlink("/etc/passwd", d.join("link")).unwrap();
        symlink(host.path(), d.join("esc")).unwrap();
        let d2 = b.rootfs().join("data2");
        fs::create_dir(&d2).unwrap();
        fs::write(d2.join("f"), "image2\n").unwrap();
        add_mount(
            c,
            json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "tmpcopyup", "mode=755"]}),
        );
        add_mount(
            c,
            json!({"destination": "/data2", "type": "tmpfs", "source": "tmpfs",
                   "options": ["tmpcopyup", "ro"]}),
        );
    });
    assert!(r.ok, "{}{}", r.out, r.err);
    let want = format!(
        "/data/f 604 1000:2000 regular file\n\
         /data/sub 750 0:0 directory\n\
         /data/sub/g 644 0:0 regular file\n\
         /data/p 644 0:0 fifo\n\
         /etc/passwd\n{}\n\
         image\n1000000000\nwritable\n1\n0\nimage2\ndata2-ro\n",
        host.path().display()
    );
    assert_eq!(r.out, want, "{}", r.err);
    // The host dir behind the image's link was never reached.
    assert_eq!(
        fs::read_dir(host.path()).unwrap().count(),
        1,
        "the host dir changed"
    );
}
