//! Runtime spec 1.2: the six hooks, each a shell script that logs its name,
//! argv, environment and the state JSON it read on stdin.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Stdio;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// POSIX sh (the host's dash and the container's busybox): appends
/// `NAME|argv|$HOOK_ENV|$BERTH_SPEC_LEAK|mount ns|state` to the log given
/// as $2.
/// fd 3 is opened by this shell itself, so /proc/self is the hook process
/// (its $$ would be wrong for hooks run in the container's pid namespace).
const HOOK_SH: &str = r#"state=$(cat)
exec 3< /proc/self/cmdline
argv=$(tr '\0' ' ' <&3)
mnt=$(readlink /proc/self/ns/mnt)
printf '%s|%s|%s|%s|%s|%s\n' "$1" "$argv" "${HOOK_ENV-unset}" "${BERTH_SPEC_LEAK-unset}" "$mnt" "$state" >> "$2"
"#;

const NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Runs berth with no pipes (a created init keeps berth's stdio, so
/// capturing it would wait for the container); returns success and stderr.
fn quiet(berth: &Berth, args: &[&str]) -> (bool, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let st = berth
        .cmd()
        .args(args)
        .env("BERTH_SPEC_LEAK", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .status()
        .unwrap();
    (st.success(), fs::read_to_string(log.path()).unwrap())
}

/// Blocks until process `pid` has exited (pidfd, no polling).
fn wait_exit(pidfd: i32) {
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd; -1 waits without a timeout.
    while unsafe { libc::poll(&mut p, 1, -1) } < 0 {}
    // SAFETY: closing our pidfd.
    unsafe { libc::close(pidfd) };
}

fn pidfd_open(pid: i64) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    fd as i32
}

struct Entry {
    name: String,
    argv: String,
    env: String,
    leak: String,
    mntns: String,
    state: Value,
}

fn read_log(path: &Path) -> Vec<Entry> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(6, '|').collect();
            Entry {
                name: f[0].to_string(),
                argv: f.get(1).unwrap_or(&"").trim_end().to_string(),
                env: f.get(2).unwrap_or(&"").to_string(),
                leak: f.get(3).unwrap_or(&"").to_string(),
                mntns: f.get(4).unwrap_or(&"").to_string(),
                state: serde_json::from_str(f.get(5).unwrap_or(&"null")).unwrap_or(Value::Null),
            }
        })
        .collect()
}

#[test]
fn all_six_hooks_run_in_order_with_state() {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("log");
    let script = logdir.path().join("hook.sh");
    fs::write(&script, HOOK_SH).unwrap();
    let script = script.to_str().unwrap().to_string();
    let logs = log.to_str().unwrap().to_string();

    let mut b = Bundle::new(&["sh", "-c", "echo program >> /hooklog/log"]).unwrap();
    // startContainer runs inside the container: its path and script
    // resolve in the rootfs, and the log is reached through a bind mount.
    fs::create_dir(b.rootfs().join("hooks")).unwrap();
    fs::write(b.rootfs().join("hooks/hook.sh"), HOOK_SH).unwrap();
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/hooklog", "type": "bind",
        "source": logdir.path(), "options": ["bind", "rw"]
    }));
    let host_hook = |name: &str| {
        json!([{
            "path": "/bin/sh",
            // args[0] is argv[0], not the path.
            "args": [format!("argv0-{name}"), script, name, logs],
            "env": [format!("HOOK_ENV=env-{name}"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "timeout": 30
        }])
    };
    b.config["hooks"] = json!({
        "prestart": host_hook("prestart"),
        "createRuntime": host_hook("createRuntime"),
        "createContainer": host_hook("createContainer"),
        // busybox runs the applet named by argv[0]: with the path as
        // argv[0] it would not find one.
        "startContainer": [{
            "path": "/bin/busybox",
            "args": ["sh", "/hooks/hook.sh", "startContainer", "/hooklog/log"],
            "env": ["HOOK_ENV=env-startContainer", "PATH=/bin"]
        }],
        "poststart": host_hook("poststart"),
        "poststop": host_hook("poststop"),
    });
    b.write().unwrap();

    let berth = Berth::new(BIN).unwrap();
    let id = format!("hooks-{}", random_suffix());
    let bundle = b.path().to_str().unwrap();
    let (ok, err) = quiet(&berth, &["create", "--bundle", bundle, &id]);
    assert!(ok, "create: {err}");
    let st = berth.state(&id);
    let pid = st["pid"].as_i64().unwrap();
    let pidfd = pidfd_open(pid);
    let ctr_mnt = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    let host_mnt = fs::read_link("/proc/self/ns/mnt").unwrap();
    let (ok, err) = quiet(&berth, &["start", &id]);
    assert!(ok, "start: {err}");
    wait_exit(pidfd);
    let (ok, err) = quiet(&berth, &["delete", &id]);
    assert!(ok, "delete: {err}");

    let entries = read_log(&log);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let hooks: Vec<&str> = names.iter().copied().filter(|n| *n != "program").collect();
    assert_eq!(hooks, NAMES, "log: {names:?}");
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("program") > at("startContainer"), "{names:?}");
    // poststart runs once the program has been started.
    assert!(!err.contains("warning"), "{err}");

    let canonical_bundle = fs::canonicalize(b.path()).unwrap();
    for e in entries.iter().filter(|e| e.name != "program") {
        let n = e.name.as_str();
        let want_argv = if n == "startContainer" {
            "sh /hooks/hook.sh startContainer /hooklog/log".to_string()
        } else {
            format!("argv0-{n} {script} {n} {logs}")
        };
        assert_eq!(e.argv, want_argv, "{n}");
        assert_eq!(e.env, format!("env-{n}"), "{n}: env not passed");
        assert_eq!(e.leak, "unset", "{n}: runtime env leaked into the hook");
        // createContainer and startContainer run in the container's mount
        // namespace, the others in the runtime's.
        let want_mnt = if n == "createContainer" || n == "startContainer" {
            &ctr_mnt
        } else {
            &host_mnt
        };
        assert_eq!(Path::new(&e.mntns), want_mnt, "{n}: mount namespace");
        assert_eq!(e.state["id"], json!(id), "{n}: {}", e.state);
        assert_eq!(e.state["pid"], json!(pid), "{n}: {}", e.state);
        assert_eq!(
            e.state["bundle"],
            json!(canonical_bundle),
            "{n}: {}",
            e.state
        );
        assert!(e.state["ociVersion"].is_string(), "{n}: {}", e.state);
        let status = e.state["status"].as_str().unwrap_or("");
        // As runc's, except poststart: runc 1.1 runs it inside `create`.
        let want = match n {
            "prestart" | "createRuntime" | "createContainer" => "creating",
            "startContainer" => "created",
            "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(status, want, "{n}");
    }
}

/// A bundle whose `kind` hooks are exactly `hook`; create must fail and
/// leave no state, cgroup or process behind.
fn create_fails(kind: &str, hook: Value, expect: &str) {
    let mut b = Bundle::new(&["true"]).unwrap();
    b.config["hooks"] = json!({ kind: [hook] });
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("hookfail-{}", random_suffix());
    let (ok, err) = quiet(
        &berth,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    assert!(!ok, "{kind}: create succeeded");
    assert!(err.contains(kind) && err.contains(expect), "{kind}: {err}");
    assert!(!berth.root.path().join(&id).exists(), "{kind}: state left");
    assert!(berth.run(&["state", &id]).status.code() != Some(0));
    assert!(
        b.cgroup_dirs().is_empty(),
        "{kind}: cgroup left: {:?}",
        b.cgroup_dirs()
    );
}

#[test]
fn failing_create_hooks_fail_create() {
    for kind in ["prestart", "createRuntime", "createContainer"] {
        create_fails(
            kind,
            json!({"path": "/bin/false", "args": ["false"]}),
            "exited",
        );
    }
}

#[test]
fn hook_timeout_fails_create_and_kills_the_hook() {
    // A unique sleep length marks the hook's process.
    let n = u32::from_str_radix(&random_suffix()[..5], 16).unwrap();
    let secs = format!("300.{n}");
    create_fails(
        "createRuntime",
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("exec sleep {secs}")], "timeout": 1}),
        "timed out",
    );
    let marker = format!("sleep\0{secs}\0");
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            assert!(
                cmd != marker.as_bytes(),
                "the timed-out hook still runs as pid {:?}",
                e.file_name()
            );
        }
    }
}

/// A failed poststart hook fails `start` and stops the container (runc;
/// the spec now says so too); a failed poststop hook is only logged: delete
/// succeeds and removes everything (runc 1.1, and the spec).
#[test]
fn failing_poststart_fails_start_and_poststop_only_logs() {
    let mut b = Bundle::new(&["sleep", "1000"]).unwrap();
    let fail = json!([{"path": "/bin/false", "args": ["false"]}]);
    b.config["hooks"] = json!({"poststart": fail, "poststop": fail});
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("hookwarn-{}", random_suffix());
    let (ok, err) = quiet(
        &berth,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    assert!(ok, "{err}");
    let (ok, err) = quiet(&berth, &["start", &id]);
    assert!(!ok, "a failed poststart must fail start");
    assert!(err.contains("poststart hook #0"), "{err}");
    assert_eq!(berth.state(&id)["status"], "stopped");
    let (ok, err) = quiet(&berth, &["delete", &id]);
    assert!(ok, "a failed poststop must not fail delete: {err}");
    assert!(err.contains("poststop"), "not logged: {err}");
    assert!(!berth.root.path().join(&id).exists());
}

#[test]
fn hook_paths_must_be_absolute() {
    let mut b = Bundle::new(&["true"]).unwrap();
    b.config["hooks"] = json!({"prestart": [{"path": "bin/true"}]});
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), "relhook"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hooks.prestart[0].path"), "{err}");
}

/// A failing startContainer hook runs after `start` released the init, so
/// it cannot fail `start`; as with Debian's runc (1.1.5): `start` exits 0,
/// the program never runs, the init exits with the error on the
/// container's stderr and the container is stopped (kept until `delete`);
/// `run` in the foreground exits 1 and removes it.
#[test]
fn failing_start_container_hook_stops_the_container() {
    let mut b = Bundle::new(&["sh", "-c", "echo program-ran"]).unwrap();
    b.config["hooks"] = json!({"startContainer": [{"path": "/bin/false", "args": ["false"]}]});
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("hookstart-{}", random_suffix());
    // The container's stdio is create's.
    let out = b.path().join("ctr.out");
    let st = berth
        .cmd()
        .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::options().append(true).open(&out).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "{}", fs::read_to_string(&out).unwrap());
    let pid = berth.state(&id)["pid"].as_i64().unwrap() as i32;
    // SAFETY: pidfd_open on a pid we were given; checked below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0);
    let (ok, err) = quiet(&berth, &["start", &id]);
    assert!(ok, "start: {err}");
    wait_exit(pidfd);
    let state = berth.state(&id);
    assert_eq!(state["status"], json!("stopped"), "{state}");
    let text = fs::read_to_string(&out).unwrap();
    assert!(!text.contains("program-ran"), "{text}");
    assert!(
        text.contains("startContainer hook #0 (/bin/false)") && text.contains("exit"),
        "the error is not on the container's stderr: {text:?}"
    );
    let (ok, err) = quiet(&berth, &["delete", &id]);
    assert!(ok, "{err}");
    assert!(!berth.root.path().join(&id).exists());

    // Foreground run: exit status 1, nothing left behind.
    let id = format!("hookstart-run-{}", random_suffix());
    let o = berth.run_fg(&b, &id);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(!text.contains("program-ran"), "{text}");
    assert!(text.contains("startContainer hook #0"), "{text}");
    assert!(!berth.root.path().join(&id).exists());
    assert!(b.cgroup_dirs().iter().all(|d| !d.join("ctr").exists()));
}
