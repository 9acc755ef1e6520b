//! Where runc's behaviour (Debian's runc 1.1) and the runtime spec's MUSTs
//! decide: each test runs the same bundle with runc and with berth, each
//! with its own `--root` in a temp dir and its own cgroup parent
//! `berth-test-<random>`, and compares. Without runc the comparisons skip
//! (with a message) and only berth's side is checked.

use berth_testutil::{random_suffix, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Debian's runc, or None (with a message) when it is not installed.
fn runc_bin() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("RUNC_BIN").unwrap_or_else(|_| "/usr/sbin/runc".into()));
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP runc comparison: {} is missing (apt-get install runc)",
            p.display()
        );
        None
    }
}

/// One runtime binary with a private state root; force-deletes what is
/// left on drop.
struct Rt {
    name: &'static str,
    bin: PathBuf,
    root: tempfile::TempDir,
}

impl Rt {
    fn new(name: &'static str, bin: impl Into<PathBuf>) -> Rt {
        Rt {
            name,
            bin: bin.into(),
            root: tempfile::Builder::new()
                .prefix("berth-cmp-root-")
                .tempdir()
                .unwrap(),
        }
    }

    fn berth() -> Rt {
        Rt::new("berth", BERTH)
    }

    fn runc() -> Option<Rt> {
        runc_bin().map(|b| Rt::new("runc", b))
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    /// A command that does not leave a container holding our pipes.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `run` in the foreground: the program's output is captured.
    fn run_fg(&self, b: &Bundle, id: &str) -> Output {
        self.run(&["run", "--bundle", b.path().to_str().unwrap(), id])
    }

    /// create / run -d: stdio to /dev/null and a file (a created init
    /// keeps the runtime's stdio open). Returns success and stderr.
    fn detached(&self, verb: &[&str], b: &Bundle, id: &str) -> (bool, String) {
        let err = b.path().join(format!("{}-{}-{id}.err", self.name, verb[0]));
        let st = self
            .cmd()
            .args(verb)
            .args(["--bundle", b.path().to_str().unwrap(), id])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (st.success(), fs::read_to_string(&err).unwrap_or_default())
    }

    fn start_detached(&self, b: &Bundle, id: &str) {
        let (ok, err) = self.detached(&["run", "-d"], b, id);
        assert!(ok, "{} run -d: {err}", self.name);
    }

    fn status(&self, id: &str) -> String {
        let o = self.run(&["state", id]);
        if !o.status.success() {
            return "gone".into();
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["status"].as_str().unwrap_or("").to_string()
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status(id) != want {
            assert!(
                Instant::now() < deadline,
                "{}: {id} never became {want}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = self.run(&["delete", "--force", id]);
                }
            }
        }
    }
}

/// berth, and runc when installed.
fn runtimes() -> Vec<Rt> {
    let mut v = vec![Rt::berth()];
    v.extend(Rt::runc());
    v
}

fn uid(tag: &str) -> String {
    format!("{tag}-{}", random_suffix())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bundle running `args`, with `edit` applied to its config.
fn bundle(args: &[&str], edit: impl Fn(&mut Value)) -> Bundle {
    let mut b = Bundle::new(args).unwrap();
    edit(&mut b.config);
    b.write().unwrap();
    b
}

/// Runs `args` in the foreground with every runtime, each on a bundle of
/// its own (own cgroup parent); returns (runtime name, output).
fn run_each(args: &[&str], edit: impl Fn(&mut Value)) -> Vec<(&'static str, Output)> {
    let mut out = Vec::new();
    for rt in runtimes() {
        let b = bundle(args, &edit);
        let id = uid("cmp");
        let o = rt.run_fg(&b, &id);
        let _ = rt.run(&["delete", "--force", &id]);
        out.push((rt.name, o));
    }
    out
}

/// Asserts both runtimes printed the same stdout with the same status.
fn same_as_runc(results: &[(&str, Output)]) {
    let (_, b) = &results[0];
    if let Some((_, r)) = results.get(1) {
        assert_eq!(
            (b.status.code(), stdout(b)),
            (r.status.code(), stdout(r)),
            "berth vs runc:\nberth: {}\nrunc: {}",
            text(b),
            text(r)
        );
    }
}

// 1. delete

#[test]
fn delete_follows_runc() {
    for rt in runtimes() {
        let n = rt.name;
        // A container that does not exist: exit 1, runc's message; with
        // --force it succeeds.
        let ghost = uid("ghost");
        let o = rt.run(&["delete", &ghost]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert!(text(&o).contains("does not exist"), "{n}: {}", text(&o));
        let o = rt.run(&["delete", "--force", &ghost]);
        assert!(o.status.success(), "{n}: {}", text(&o));
        // An empty id.
        let o = rt.run(&["delete", ""]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert!(
            text(&o).contains("container id cannot be empty"),
            "{n}: {}",
            text(&o)
        );

        // runc 1.1 deletes a *created* container without --force (it
        // kills the waiting init): so does berth.
        let b = bundle(&["sleep", "1001"], |_| {});
        let id = uid("created");
        let (ok, err) = rt.detached(&["create"], &b, &id);
        assert!(ok, "{n}: {err}");
        let o = rt.run(&["delete", &id]);
        assert!(o.status.success(), "{n}: {}", text(&o));
        assert_eq!(rt.status(&id), "gone", "{n}");

        // Running or paused: an error, and no effect.
        let id = uid("running");
        rt.start_detached(&b, &id);
        let o = rt.run(&["delete", &id]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert_eq!(rt.status(&id), "running", "{n}");
        assert!(rt.run(&["pause", &id]).status.success(), "{n}");
        let o = rt.run(&["delete", &id]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert_eq!(rt.status(&id), "paused", "{n}");
        // --force removes it, and stays idempotent.
        let o = rt.run(&["delete", "--force", &id]);
        assert!(o.status.success(), "{n}: {}", text(&o));
        assert_eq!(rt.status(&id), "gone", "{n}");
        let o = rt.run(&["delete", "--force", &id]);
        assert!(o.status.success(), "{n}: {}", text(&o));
    }
}

// 2. kill

#[test]
fn kill_follows_runc() {
    for rt in runtimes() {
        let n = rt.name;
        let o = rt.run(&["kill", &uid("ghost"), "KILL"]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert!(text(&o).contains("does not exist"), "{n}: {}", text(&o));
        let o = rt.run(&["kill", "", "KILL"]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert!(
            text(&o).contains("container id cannot be empty"),
            "{n}: {}",
            text(&o)
        );

        let b = bundle(&["sleep", "1002"], |_| {});
        let id = uid("kill");
        rt.start_detached(&b, &id);
        assert!(rt.run(&["kill", &id, "KILL"]).status.success(), "{n}");
        rt.wait_status(&id, "stopped");
        // The spec: signalling a stopped container is an error.
        let o = rt.run(&["kill", &id, "KILL"]);
        assert_eq!(o.status.code(), Some(1), "{n}: {}", text(&o));
        assert!(text(&o).contains("not running"), "{n}: {}", text(&o));
        // runc 1.1's --all signals what is left in the cgroup (nothing)
        // and succeeds.
        let o = rt.run(&["kill", "--all", &id, "KILL"]);
        assert!(o.status.success(), "{n}: {}", text(&o));
        assert!(rt.run(&["delete", &id]).status.success(), "{n}");
    }
}

// 3. poststart and poststop hooks

/// runc 1.1 runs poststart hooks inside `runc create` (a known bug: runc
/// #1710, moved to `start` by runc #5186) and a failure fails it and kills
/// the container; the spec (and newer runc) put them after the program
/// started: berth's `start` fails with exit 1 and the container is stopped.
#[test]
fn failing_poststart_fails_start_and_stops_the_container() {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("poststop");
    let b = bundle(&["sleep", "1003"], |c| {
        c["hooks"] = json!({
            "poststart": [{"path": "/bin/false", "args": ["false"]}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", log.display())]}],
        });
    });
    let rt = Rt::berth();
    let id = uid("poststart");
    let (ok, err) = rt.detached(&["create"], &b, &id);
    assert!(ok, "{err}");
    let o = rt.run(&["start", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("poststart hook #0"), "{}", text(&o));
    assert_eq!(rt.status(&id), "stopped");
    let o = rt.run(&["delete", &id]);
    assert!(o.status.success(), "{}", text(&o));
    let st: Value = serde_json::from_str(&fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(st["status"], "stopped", "{st}");
    assert!(b.cgroup_dirs().iter().all(|d| !d.join("ctr").exists()));

    // runc: the failure surfaces (at create in 1.1) and nothing is left.
    if let Some(runc) = Rt::runc() {
        let id = uid("poststart-runc");
        let (created, _) = runc.detached(&["create"], &b, &id);
        let started = created && runc.run(&["start", &id]).status.success();
        assert!(!started, "runc accepted a failing poststart hook");
    }
}

/// A failing poststop hook: runc 1.1's delete logs the error and exits 0
/// (the spec: "log a warning, the remaining hooks and lifecycle continue");
/// berth also runs the remaining poststop hooks, as the spec requires
/// (runc 1.1 stops at the first failure).
#[test]
fn failing_poststop_is_logged_and_delete_succeeds() {
    for rt in runtimes() {
        let n = rt.name;
        let logdir = tempfile::tempdir().unwrap();
        let second = logdir.path().join("second");
        let b = bundle(&["true"], |c| {
            c["hooks"] = json!({"poststop": [
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]},
                {"path": "/bin/touch", "args": ["touch", second.to_str().unwrap()]},
            ]});
        });
        let id = uid("poststop");
        let (ok, err) = rt.detached(&["create"], &b, &id);
        assert!(ok, "{n}: {err}");
        assert!(rt.run(&["start", &id]).status.success(), "{n}");
        rt.wait_status(&id, "stopped");
        let o = rt.run(&["delete", &id]);
        assert!(o.status.success(), "{n}: {}", text(&o));
        assert!(text(&o).contains("hook #0"), "{n}: {}", text(&o));
        assert_eq!(rt.status(&id), "gone", "{n}");
        if n == "berth" {
            assert!(second.exists(), "the second poststop hook did not run");
        }
    }
}

// 4. exec --ignore-paused; startContainer hooks

#[test]
fn exec_into_paused_container_needs_ignore_paused() {
    let b = bundle(&["sleep", "1004"], |_| {});
    for rt in runtimes() {
        let n = rt.name;
        let id = uid("paused");
        rt.start_detached(&b, &id);
        assert!(rt.run(&["pause", &id]).status.success(), "{n}");
        let o = rt.run(&["exec", &id, "true"]);
        assert!(!o.status.success(), "{n}: {}", text(&o));
        assert!(
            text(&o)
                .contains("cannot exec in a paused container (use --ignore-paused to override)"),
            "{n}: {}",
            text(&o)
        );
        // With the flag the process joins the frozen container and runs
        // once it is resumed.
        let child = rt
            .cmd()
            .args(["exec", "--ignore-paused", &id, "echo", "thawed"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(rt.run(&["resume", &id]).status.success(), "{n}");
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{n}: {}", text(&o));
        assert_eq!(stdout(&o), "thawed\n", "{n}");
        assert!(rt.run(&["delete", "--force", &id]).status.success());
    }
}

/// startContainer hooks run in the container with their own `env` only
/// (no PATH but what they set; the path is the container's), and see
/// status "created"; createContainer sees "creating". Compared with runc.
#[test]
fn container_hooks_env_and_status_match_runc() {
    let mut seen = Vec::new();
    for rt in runtimes() {
        let logdir = tempfile::tempdir().unwrap();
        let b = bundle(&["true"], |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/hl", "type": "bind",
                "source": logdir.path(), "options": ["bind", "rw"]
            }));
            let log = logdir.path().join("cc");
            c["hooks"] = json!({
                // Runs in the container's namespaces before pivot_root:
                // host paths.
                "createContainer": [{"path": "/bin/sh",
                    "args": ["sh", "-c", format!("cat > {}", log.display())]}],
                "startContainer": [{"path": "/bin/busybox",
                    "args": ["sh", "-c", "cat > /hl/sc; env | sort > /hl/env"],
                    "env": ["HOOK=1"]}],
            });
        });
        let id = uid("hookenv");
        let o = rt.run_fg(&b, &id);
        assert!(o.status.success(), "{}: {}", rt.name, text(&o));
        let read = |f: &str| fs::read_to_string(logdir.path().join(f)).unwrap();
        let cc: Value = serde_json::from_str(&read("cc")).unwrap();
        let sc: Value = serde_json::from_str(&read("sc")).unwrap();
        seen.push((
            rt.name,
            cc["status"].clone(),
            sc["status"].clone(),
            read("env"),
        ));
    }
    let (_, cc, sc, env) = &seen[0];
    assert_eq!(cc, "creating");
    assert_eq!(sc, "created");
    assert!(env.contains("HOOK=1\n") && !env.contains("TERM="), "{env}");
    if let Some(r) = seen.get(1) {
        assert_eq!(&seen[0].1, &r.1, "createContainer status vs runc");
        assert_eq!(&seen[0].2, &r.2, "startContainer status vs runc");
        assert_eq!(&seen[0].3, &r.3, "startContainer env vs runc");
    }
}

// 5. rootfsPropagation unbindable; proc/sysfs on a symlink

/// The propagation of the container's `/` (the mountinfo line whose mount
/// point is `/`).
const ROOT_PROPAGATION: &str = r#"while read a b c d mp rest; do [ "$mp" = / ] && echo "$rest"; done < /proc/self/mountinfo; true"#;

/// runc 1.1 fails this one (it makes `/` unbindable before binding the
/// rootfs onto itself: EINVAL); berth binds first and makes the new root
/// unbindable last.
#[test]
fn rootfs_propagation_unbindable_works() {
    for prop in ["unbindable", "runbindable"] {
        let b = bundle(&["sh", "-c", ROOT_PROPAGATION], |c| {
            c["linux"]["rootfsPropagation"] = json!(prop);
        });
        let rt = Rt::berth();
        let o = rt.run_fg(&b, &uid("unbind"));
        assert!(o.status.success(), "{prop}: {}", text(&o));
        assert!(stdout(&o).contains(" unbindable "), "{prop}: {}", text(&o));
    }
}

#[test]
fn proc_and_sysfs_on_a_symlink_are_refused_as_runc_words_it() {
    for typ in ["proc", "sysfs"] {
        for rt in runtimes() {
            let b = bundle(&["true"], |c| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/lnk", "type": typ, "source": typ}));
            });
            fs::create_dir(b.rootfs().join("real")).unwrap();
            std::os::unix::fs::symlink("real", b.rootfs().join("lnk")).unwrap();
            let o = rt.run_fg(&b, &uid("symproc"));
            assert!(!o.status.success(), "{}: {}", rt.name, text(&o));
            // runc's log line escapes the quotes.
            let t = text(&o).replace("\\\"", "\"");
            let want = format!("filesystem \"{typ}\" must be mounted on ordinary directory");
            assert!(t.contains(&want), "{}: {}", rt.name, text(&o));
        }
    }
}

// 6. no namespaces at all

/// Every namespace the host's: the program runs chrooted in the rootfs
/// with no mounts of its own. runc 1.1 cannot run this (without a mount
/// namespace it finds no /proc/self/fd in the rootfs to close fds with),
/// and on the way it binds the rootfs onto itself in the host's mount
/// namespace and leaves that mount behind: so this test never runs runc.
#[test]
fn no_namespaces_at_all_runs() {
    for list in [None, Some(json!([]))] {
        let b = bundle(&["sh", "-c", "echo hello; exit 3"], |c| {
            match &list {
                None => {
                    c["linux"].as_object_mut().unwrap().remove("namespaces");
                }
                Some(l) => c["linux"]["namespaces"] = l.clone(),
            }
            // Each of these needs a namespace of its own (refused by
            // both runtimes otherwise); none may touch the host.
            c["mounts"] = json!([]);
            c["root"]["readonly"] = json!(false);
            let o = c.as_object_mut().unwrap();
            o.remove("hostname");
            let l = c["linux"].as_object_mut().unwrap();
            l.remove("maskedPaths");
            l.remove("readonlyPaths");
        });
        let rt = Rt::berth();
        let o = rt.run_fg(&b, &uid("nons"));
        assert_eq!(o.status.code(), Some(3), "{list:?}: {}", text(&o));
        assert_eq!(stdout(&o), "hello\n", "{list:?}");
        let o = rt.run_fg(&b, &uid("nons"));
        assert_eq!(o.status.code(), Some(3));
        let t = bundle(&["true"], |c| {
            c["linux"]["namespaces"] = json!([]);
            c["mounts"] = json!([]);
            c["root"]["readonly"] = json!(false);
            c.as_object_mut().unwrap().remove("hostname");
            let l = c["linux"].as_object_mut().unwrap();
            l.remove("maskedPaths");
            l.remove("readonlyPaths");
        });
        let o = rt.run_fg(&t, &uid("nons-true"));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
}

// 7. a missing process.cwd is created

#[test]
fn missing_cwd_is_created_as_runc_does() {
    let r = run_each(&["sh", "-c", "pwd; stat -c %a /no/such/dir"], |c| {
        c["process"]["cwd"] = json!("/no/such/dir");
    });
    assert_eq!(stdout(&r[0].1), "/no/such/dir\n755\n", "{}", text(&r[0].1));
    same_as_runc(&r);
}

// 8. HOME

#[test]
fn home_comes_from_the_containers_passwd_as_with_runc() {
    for (uid_, env_home, want) in [
        (0, None, "/root"),
        (1000, None, "/home/user"),
        (4242, None, "/"),
        (0, Some("HOME=/custom"), "/custom"),
    ] {
        let r = run_each(&["sh", "-c", "echo $HOME"], |c| {
            c["process"]["user"]["uid"] = json!(uid_);
            if let Some(h) = env_home {
                c["process"]["env"].as_array_mut().unwrap().push(json!(h));
            }
        });
        assert_eq!(stdout(&r[0].1), format!("{want}\n"), "uid {uid_}");
        same_as_runc(&r);
    }
    // exec too, with --user and --env.
    let b = bundle(&["sleep", "1008"], |_| {});
    let cases: &[&[&str]] = &[
        &[],
        &["--user", "1000"],
        &["--user", "4242"],
        &["--env", "HOME=/e"],
    ];
    let mut seen: Vec<Vec<String>> = Vec::new();
    for rt in runtimes() {
        let id = uid("home");
        rt.start_detached(&b, &id);
        let mut v = Vec::new();
        for c in cases {
            let mut args = vec!["exec"];
            args.extend_from_slice(c);
            args.extend_from_slice(&[&id, "sh", "-c", "echo $HOME"]);
            let o = rt.run(&args);
            assert!(o.status.success(), "{}: {}", rt.name, text(&o));
            v.push(stdout(&o));
        }
        assert!(rt.run(&["delete", "--force", &id]).status.success());
        seen.push(v);
    }
    assert_eq!(seen[0], ["/root\n", "/home/user\n", "/\n", "/e\n"]);
    if seen.len() > 1 {
        assert_eq!(seen[0], seen[1], "exec HOME: berth vs runc");
    }
}

// 9. exec'd processes lead a process group (and session) of their own

/// pid, pgrp and session of a shell (fields 1, 5, 6 of /proc/self/stat,
/// read by the shell itself: `$$`), as "pid pgrp sid".
const STAT: &str =
    "read -r pid comm state ppid pgrp sid rest < /proc/$$/stat; echo $pid $pgrp $sid";

#[test]
fn exec_gets_its_own_process_group_as_with_runc() {
    let b = bundle(&["sleep", "1009"], |_| {});
    for rt in runtimes() {
        let id = uid("pgrp");
        rt.start_detached(&b, &id);
        let o = rt.run(&["exec", &id, "sh", "-c", STAT]);
        assert!(o.status.success(), "{}: {}", rt.name, text(&o));
        let f: Vec<String> = stdout(&o).split_whitespace().map(String::from).collect();
        assert_eq!(f.len(), 3, "{}: {}", rt.name, text(&o));
        // Its own group and session, both named after itself (not 0: a
        // group outside the container's pid namespace).
        assert_eq!(f[0], f[1], "{}: pgrp {f:?}", rt.name);
        assert_eq!(f[0], f[2], "{}: session {f:?}", rt.name);
        if rt.name == "berth" {
            // With a terminal too (runc -t needs the caller's tty, so berth
            // only: it makes the pty pair itself in the foreground).
            let o = rt.run(&["exec", "-t", &id, "sh", "-c", STAT]);
            assert!(o.status.success(), "{}", text(&o));
            let f: Vec<String> = stdout(&o).split_whitespace().map(String::from).collect();
            assert!(f.len() == 3 && f[0] == f[1] && f[0] == f[2], "-t: {f:?}");
        }
        assert!(rt.run(&["delete", "--force", &id]).status.success());
    }
}

// 10. linux.devices paths; blkio weight without the files; --log

#[test]
fn device_paths_in_new_dirs_and_with_a_trailing_slash_match_runc() {
    for (path, shown) in [("/dev/foo/bar", "/dev/foo/bar"), ("/dev/baz/", "/dev/baz")] {
        let script = format!("stat -c '%F %t:%T %a' {shown} && echo x > {shown} && echo written");
        let r = run_each(&["sh", "-c", &script], |c| {
            c["linux"]["devices"] =
                json!([{"path": path, "type": "c", "major": 1, "minor": 3, "fileMode": 438}]);
        });
        assert_eq!(
            stdout(&r[0].1),
            "character special file 1:3 666\nwritten\n",
            "{path}: {}",
            text(&r[0].1)
        );
        same_as_runc(&r);
    }
}

/// This host's blkio hierarchy may lack the weight files (no CFQ/BFQ):
/// runc 1.1 then fails the create, and so does berth, naming the field.
#[test]
fn blkio_weight_without_the_kernel_files_fails_as_runc() {
    let blkio = Path::new("/sys/fs/cgroup/blkio");
    if !blkio.is_dir()
        || blkio.join("blkio.weight").exists()
        || blkio.join("blkio.bfq.weight").exists()
    {
        eprintln!("SKIP: this host has blkio weight files (or no v1 blkio hierarchy)");
        return;
    }
    let r = run_each(&["true"], |c| {
        c["linux"]["resources"]["blockIO"] = json!({"weight": 500});
    });
    for (name, o) in &r {
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(o));
        assert!(text(o).contains("weight"), "{name}: {}", text(o));
    }
    assert!(text(&r[0].1).contains("linux.resources.blockIO.weight"));
}

/// runc opens --log before anything else and fails (exit 1) when it
/// cannot: nothing is created.
#[test]
fn unwritable_log_fails_before_anything_as_runc() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("missing-dir/log");
    let bad = bad.to_str().unwrap();
    let b = bundle(&["true"], |_| {});
    for rt in runtimes() {
        let id = uid("badlog");
        for args in [
            vec![
                "--log",
                bad,
                "run",
                "--bundle",
                b.path().to_str().unwrap(),
                &id,
            ],
            vec!["--log", bad, "state", &id],
            vec!["--log", bad, "delete", "--force", &id],
        ] {
            let o = rt.run(&args);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{} {args:?}: {}",
                rt.name,
                text(&o)
            );
            assert!(
                text(&o).contains("missing-dir/log"),
                "{}: {}",
                rt.name,
                text(&o)
            );
        }
        assert_eq!(rt.status(&id), "gone", "{}", rt.name);
        assert!(!Path::new(bad).exists());
    }
}
