//! Bad bundles and arguments: `berth create` and `berth run` must fail with
//! an error naming the field or file at fault, and leave nothing behind on
//! the host: no state directory, no cgroup, no process, no mount.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Stdio;

fn berth() -> Berth {
    Berth::new(env!("CARGO_BIN_EXE_berth")).expect("state root")
}

fn uid(tag: &str) -> String {
    format!("{tag}-{}", random_suffix())
}

/// Runs berth with its (and a container's, should one start by mistake)
/// stdio in a file, so a stray container cannot hold a pipe open.
fn berth_logged(b: &Berth, args: &[&str], log: &Path) -> (bool, String) {
    let f = fs::File::create(log).unwrap();
    let st = b
        .cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .expect("spawning berth");
    (st.success(), fs::read_to_string(log).unwrap_or_default())
}

/// Ids with state under the berth root.
fn state_entries(b: &Berth) -> Vec<String> {
    match fs::read_dir(b.root.path()) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pids of processes whose command line mentions `needle` (berth's own
/// stages are forks of `berth create --bundle <dir>`).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{name}: {c}"));
            }
        }
    }
    v
}

/// Nothing of `bundle` is left: cgroups (checked first: once they are
/// gone their processes have exited), processes, mounts.
fn assert_nothing_left(bundle: &Bundle) {
    assert!(
        bundle.cgroup_dirs().is_empty(),
        "cgroups left: {:?}",
        bundle.cgroup_dirs()
    );
    let dir = fs::canonicalize(bundle.path()).unwrap();
    let dir = dir.to_str().unwrap();
    let procs = processes_mentioning(dir);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(dir)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

/// Both `create` and `run` reject the bundle `prepare` leaves, naming
/// every string in `needles`, and leave nothing behind.
fn rejects(needles: &[&str], prepare: impl FnOnce(&mut Bundle)) {
    rejects_with(&[], needles, prepare)
}

/// [`rejects`] with extra command-line flags.
fn rejects_with(flags: &[&str], needles: &[&str], prepare: impl FnOnce(&mut Bundle)) {
    let mut bundle = Bundle::new(&["sh", "-c", "echo should-not-run"]).expect("bundle");
    prepare(&mut bundle);
    let b = berth();
    for cmd in ["create", "run"] {
        let id = uid(&format!("bad-{cmd}"));
        let log = bundle.path().join(format!("{cmd}.log"));
        let mut args = vec![cmd, "--bundle", bundle.path().to_str().unwrap()];
        args.extend_from_slice(flags);
        args.push(&id);
        let (ok, text) = berth_logged(&b, &args, &log);
        assert!(!ok, "{cmd} accepted a bad bundle: {text}");
        for n in needles {
            assert!(
                text.contains(n),
                "{cmd}: error does not mention {n:?}: {text}"
            );
        }
        assert!(
            !text.contains("should-not-run"),
            "{cmd} ran the program: {text}"
        );
        assert!(
            state_entries(&b).is_empty(),
            "{cmd} left state: {:?}",
            state_entries(&b)
        );
        assert_nothing_left(&bundle);
    }
}

/// Edits config.json as JSON.
fn edit(f: impl FnOnce(&mut Value)) -> impl FnOnce(&mut Bundle) {
    move |b| {
        f(&mut b.config);
        b.write().unwrap();
    }
}

#[test]
fn malformed_json_names_position() {
    rejects(&["config.json", "line 3", "column"], |b| {
        fs::write(
            b.path().join("config.json"),
            "{\n  \"ociVersion\": \"1.2.1\",\n  \"process\": {\"args\": [}\n}",
        )
        .unwrap();
    });
}

#[test]
fn missing_config_names_file() {
    rejects(&["config.json"], |b| {
        fs::remove_file(b.path().join("config.json")).unwrap()
    });
}

#[test]
fn wrong_type_names_field() {
    rejects(
        &["process.user.uid"],
        edit(|c| c["process"]["user"]["uid"] = json!("root")),
    );
}

#[test]
fn relative_cwd() {
    rejects(
        &["process.cwd"],
        edit(|c| c["process"]["cwd"] = json!("tmp")),
    );
}

#[test]
fn empty_args() {
    rejects(
        &["process.args"],
        edit(|c| c["process"]["args"] = json!([])),
    );
}

#[test]
fn duplicate_namespace() {
    rejects(
        &["linux.namespaces[6].type", "pid"],
        edit(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "pid"}))
        }),
    );
}

#[test]
fn unknown_namespace_type() {
    rejects(
        &["linux.namespaces[0].type", "wormhole"],
        edit(|c| c["linux"]["namespaces"][0] = json!({"type": "wormhole"})),
    );
}

#[test]
fn hostname_without_uts_namespace() {
    rejects(
        &["hostname", "uts"],
        edit(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "uts")
        }),
    );
}

#[test]
fn host_wide_sysctl() {
    rejects(
        &["linux.sysctl.kernel.panic"],
        edit(|c| c["linux"]["sysctl"] = json!({"kernel.panic": "1"})),
    );
}

#[test]
fn unknown_rlimit() {
    rejects(
        &["process.rlimits[0].type", "RLIMIT_BOGUS"],
        edit(|c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}])),
    );
}

#[test]
fn mount_with_relative_destination() {
    rejects(
        &["mounts[7].destination"],
        edit(|c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "data", "type": "tmpfs", "source": "tmpfs"}));
        }),
    );
}

#[test]
fn bind_mount_of_missing_source() {
    let src = format!("/nonexistent-berth-{}", random_suffix());
    let s = src.clone();
    rejects(
        &[&src],
        edit(move |c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(
                json!({"destination": "/data", "type": "bind", "source": s, "options": ["rbind"]}),
            );
        }),
    );
}

#[test]
fn cgroups_path_escaping_the_root() {
    rejects(
        &["linux.cgroupsPath"],
        edit(|c| c["linux"]["cgroupsPath"] = json!("/berth-test-x/../../etc")),
    );
}

/// CFS bandwidth outside what the kernel accepts (quota >= 1000 µs, period
/// 1000..=1000000 µs) is refused before anything exists, naming the field.
#[test]
fn cpu_quota_and_period_out_of_the_kernels_range() {
    for (cpu, field) in [
        (
            json!({"quota": 999, "period": 100000}),
            "linux.resources.cpu.quota",
        ),
        (
            json!({"quota": 50000, "period": 999}),
            "linux.resources.cpu.period",
        ),
        (
            json!({"quota": 50000, "period": 1000001}),
            "linux.resources.cpu.period",
        ),
    ] {
        rejects(
            &[field],
            edit(move |c| c["linux"]["resources"]["cpu"] = cpu),
        );
    }
}

#[test]
fn realtime_runtime_above_its_period() {
    rejects(
        &["linux.resources.cpu.realtimeRuntime"],
        edit(|c| {
            c["linux"]["resources"]["cpu"] =
                json!({"realtimeRuntime": 20000, "realtimePeriod": 10000})
        }),
    );
}

#[test]
fn missing_rootfs() {
    rejects(&["root.path"], |b| fs::remove_dir_all(b.rootfs()).unwrap());
}

#[test]
fn program_not_in_path() {
    rejects(
        &["process.args[0]", "no-such-program", "not found"],
        edit(|c| c["process"]["args"] = json!(["no-such-program", "x"])),
    );
}

#[test]
fn invalid_container_id() {
    let bundle = Bundle::new(&["true"]).unwrap();
    let b = berth();
    for id in ["../x", "a/b", ".."] {
        for cmd in ["create", "run"] {
            let log = bundle.path().join("create.log");
            let (ok, text) = berth_logged(
                &b,
                &[cmd, "--bundle", bundle.path().to_str().unwrap(), id],
                &log,
            );
            assert!(!ok, "{cmd} {id}: {text}");
            assert!(text.contains("invalid container id"), "{cmd} {id}: {text}");
            assert!(state_entries(&b).is_empty());
            assert_nothing_left(&bundle);
        }
    }
}

#[test]
fn id_already_in_use() {
    let first = Bundle::new(&["sleep", "100010"]).unwrap();
    let second = Bundle::new(&["sh", "-c", "echo should-not-run"]).unwrap();
    let b = berth();
    let id = uid("taken");
    let (ok, text) = berth_logged(
        &b,
        &["create", "--bundle", first.path().to_str().unwrap(), &id],
        &first.path().join("create.log"),
    );
    assert!(ok, "{text}");
    let before = b.state(&id);

    for cmd in ["create", "run"] {
        let log = second.path().join(format!("{cmd}.log"));
        let (ok, text) = berth_logged(
            &b,
            &[cmd, "--bundle", second.path().to_str().unwrap(), &id],
            &log,
        );
        assert!(!ok, "{cmd}: {text}");
        assert!(
            text.contains(&id) && text.contains("already exists"),
            "{cmd}: {text}"
        );
        assert!(!text.contains("should-not-run"));
        assert_nothing_left(&second);
        // The first container is untouched.
        assert_eq!(b.state(&id), before);
        assert_eq!(state_entries(&b), std::slice::from_ref(&id));
    }
    b.ok(&["delete", &id]);
    assert!(first.cgroup_dirs().is_empty());
}

#[test]
fn pid_file_in_missing_directory() {
    // The pid file is written last, after the init exists: the failure must
    // still undo everything.
    let dir = format!("/nonexistent-berth-{}", random_suffix());
    let pf = format!("{dir}/init.pid");
    rejects_with(&["--pid-file", &pf], &[&dir], |_| {});
}

#[test]
fn console_socket_that_nobody_listens_on() {
    let sock = format!("/tmp/nonexistent-berth-{}.sock", random_suffix());
    rejects_with(
        &["--console-socket", &sock],
        &["console socket", &sock],
        edit(|c| c["process"]["terminal"] = json!(true)),
    );
}

#[test]
fn console_socket_without_terminal() {
    rejects_with(
        &["--console-socket", "/tmp/unused.sock"],
        &["--console-socket", "terminal"],
        |_| {},
    );
}

#[test]
fn bad_exec_process_leaves_container_alone() {
    let bundle = Bundle::new(&["sleep", "100011"]).unwrap();
    let b = berth();
    let id = uid("exec-bad");
    let (ok, text) = berth_logged(
        &b,
        &["create", "--bundle", bundle.path().to_str().unwrap(), &id],
        &bundle.path().join("create.log"),
    );
    assert!(ok, "{text}");
    b.ok(&["start", &id]);
    let pids = b.ok(&["ps", "--format", "json", &id]);

    let pj = bundle.path().join("process.json");
    let pjs = pj.to_str().unwrap();
    let cases: [(Value, &str); 3] = [
        (
            json!({"args": ["true"], "cwd": "/", "user": {"uid": "root", "gid": 0}}),
            "user.uid",
        ),
        (
            json!({"args": ["true"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}),
            "cwd",
        ),
        (
            json!({"args": ["no-such-program"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
            "no-such-program",
        ),
    ];
    for (process, field) in cases {
        fs::write(&pj, process.to_string()).unwrap();
        for detach in [false, true] {
            let mut args = vec!["exec", "--process", pjs];
            if detach {
                args.push("-d");
            }
            args.push(&id);
            let (ok, text) = berth_logged(&b, &args, &bundle.path().join("exec.log"));
            assert!(!ok, "{args:?}: {text}");
            assert!(text.contains(field), "{args:?}: {text}");
            // The process file is named unless the error came from inside.
            if field != "no-such-program" {
                assert!(text.contains("process.json"), "{args:?}: {text}");
            }
            assert_eq!(b.ok(&["ps", "--format", "json", &id]), pids, "{args:?}");
            assert_eq!(b.state(&id)["status"], json!("running"));
        }
    }
    fs::write(&pj, "{\"args\": [\"true\"],").unwrap();
    let (ok, text) = berth_logged(
        &b,
        &["exec", "--process", pjs, &id],
        &bundle.path().join("exec.log"),
    );
    assert!(
        !ok && text.contains(pjs) && text.contains("line 1"),
        "{text}"
    );

    b.ok(&["delete", "--force", &id]);
    assert_nothing_left(&bundle);
}
