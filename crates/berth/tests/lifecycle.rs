//! berth's runc-compatible command line, checked the way a runc user would:
//! real busybox containers, their state JSON, exit codes, files they write
//! into a bind-mounted host directory, and what is left on the host.

use berth_testutil::{build_rootfs, random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn berth() -> Berth {
    Berth::new(env!("CARGO_BIN_EXE_berth")).expect("state root")
}

/// A container id unique across parallel tests.
fn uid(tag: &str) -> String {
    format!("{tag}-{}", random_suffix())
}

/// A busybox bundle running `sh -c script`, with the host directory
/// `<bundle>/out` bind-mounted read-write at /out (the rootfs is read-only),
/// so the program can leave marks the test reads.
fn mkbundle(script: &str) -> Bundle {
    let b = Bundle::new(&["sh", "-c", script]).expect("bundle");
    let out = b.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut b = b;
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]
    }));
    b.write().unwrap();
    b
}

fn out(b: &Bundle, name: &str) -> PathBuf {
    b.path().join("out").join(name)
}

fn bpath(b: &Bundle) -> &str {
    b.path().to_str().unwrap()
}

/// Polls `f` until true. The bound only keeps a broken runtime from hanging
/// the suite; nothing here asserts on how fast things happen.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs berth with stdout+stderr going to `log`: create, run -d and exec -d
/// hand their stdio to the container, so a pipe would stay open (and
/// `Command::output` would block) for as long as the container runs.
fn berth_logged(b: &Berth, args: &[&str], log: &Path) -> (ExitStatus, String) {
    let f = fs::File::create(log).unwrap();
    let status = b
        .cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .expect("spawning berth");
    (status, fs::read_to_string(log).unwrap_or_default())
}

/// `berth create`; returns the file holding the container's stdout/stderr.
fn create(b: &Berth, bundle: &Bundle, id: &str) -> PathBuf {
    let log = bundle.path().join(format!("{id}.log"));
    let (st, text) = berth_logged(b, &["create", "--bundle", bpath(bundle), id], &log);
    assert!(st.success(), "create {id} failed: {text}");
    log
}

fn status(b: &Berth, id: &str) -> String {
    b.state(id)["status"].as_str().unwrap().to_string()
}

fn wait_status(b: &Berth, id: &str, want: &str) {
    wait_for(&format!("{id} to be {want}"), || status(b, id) == want);
}

fn fails(b: &Berth, args: &[&str]) -> String {
    let o = b.run(args);
    assert!(!o.status.success(), "berth {args:?} should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pid_alive(pid: i64) -> bool {
    // A zombie still has a /proc entry; it has exited all the same.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let st = s.rsplit(')').next().unwrap_or("").trim_start();
            !st.starts_with('Z') && !st.starts_with('X')
        }
        Err(_) => false,
    }
}

/// The container's cgroup in the pids hierarchy, as a user would look it up.
fn pids_cgroup(bundle: &Bundle) -> PathBuf {
    Path::new("/sys/fs/cgroup/pids")
        .join(&bundle.cgroup_parent)
        .join("ctr")
}

/// The state directory is gone and no cgroup directory of the bundle's
/// parent is left in any hierarchy.
fn assert_gone(b: &Berth, bundle: &Bundle, id: &str) {
    assert!(
        !b.root.path().join(id).exists(),
        "state dir of {id} left behind"
    );
    assert!(
        bundle.cgroup_dirs().is_empty(),
        "cgroup dirs left behind: {:?}",
        bundle.cgroup_dirs()
    );
    let err = fails(b, &["state", id]);
    assert!(err.contains("does not exist"), "{err}");
}

/// Waits for the container program's "I am here" mark.
fn wait_file(p: &Path) {
    wait_for(&format!("{}", p.display()), || p.exists());
}

/// Keeps running until the test creates /out/stop. Marks are made with the
/// shell's own `: > file` so no short-lived child shows up in process lists.
const UNTIL_STOP: &str = "while [ ! -e /out/stop ]; do sleep 0.05; done";

#[test]
fn create_start_state_delete() {
    let mut bundle = mkbundle(&format!(": > /out/ran; {UNTIL_STOP}; echo bye"));
    bundle.config["annotations"] = json!({"org.example.test": "lifecycle"});
    bundle.write().unwrap();
    let b = berth();
    let id = uid("life");
    create(&b, &bundle, &id);

    let st = b.state(&id);
    assert_eq!(
        st["ociVersion"].as_str().unwrap().split('.').next(),
        Some("1")
    );
    assert_eq!(st["id"], json!(id));
    assert_eq!(st["status"], json!("created"));
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0 && pid_alive(pid), "{st}");
    let real_bundle = fs::canonicalize(bundle.path()).unwrap();
    assert_eq!(st["bundle"], json!(real_bundle));
    assert_eq!(st["rootfs"], json!(real_bundle.join("rootfs")));
    let created = st["created"].as_str().unwrap();
    assert!(
        created.len() > 20 && created.as_bytes()[4] == b'-' && created.contains('T'),
        "created is not RFC 3339: {created}"
    );
    assert_eq!(st["owner"], json!("root"));
    assert_eq!(st["annotations"]["org.example.test"], json!("lifecycle"));

    // The init exists (in its cgroup) but the program has not run.
    let procs = fs::read_to_string(pids_cgroup(&bundle).join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    assert!(!out(&bundle, "ran").exists(), "program ran before start");

    b.ok(&["start", &id]);
    wait_file(&out(&bundle, "ran"));
    assert_eq!(status(&b, &id), "running");
    let err = fails(&b, &["start", &id]);
    assert!(err.contains("running"), "{err}");

    fs::write(out(&bundle, "stop"), "").unwrap();
    wait_status(&b, &id, "stopped");
    assert!(!pid_alive(pid));
    assert_eq!(
        b.state(&id)["pid"],
        json!(0),
        "runc reports pid 0 once stopped"
    );
    let err = fails(&b, &["start", &id]);
    assert!(err.contains("stopped"), "{err}");

    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}

#[test]
fn run_foreground_exit_codes() {
    let b = berth();
    for (script, code) in [("echo out-0; exit 0", 0), ("echo out-3; exit 3", 3)] {
        let bundle = mkbundle(script);
        let id = uid("run");
        let o = b.run(&["run", "--bundle", bpath(&bundle), &id]);
        assert_eq!(o.status.code(), Some(code), "{o:?}");
        assert_eq!(stdout_of(&o), format!("out-{code}\n"));
        // Without --keep, run removes the container when it exits.
        assert_gone(&b, &bundle, &id);
    }

    // Killed by SIGKILL: the shell convention 128+9.
    let bundle = mkbundle(&format!(": > /out/ran; {UNTIL_STOP}"));
    let id = uid("run-kill");
    let child = b
        .cmd()
        .args(["run", "--bundle", bpath(&bundle), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_file(&out(&bundle, "ran"));
    b.ok(&["kill", &id, "KILL"]);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(128 + 9), "{o:?}");
    assert_gone(&b, &bundle, &id);
}

#[test]
fn run_foreground_forwards_signals() {
    let bundle = mkbundle(TERM_TRAP);
    let b = berth();
    let id = uid("run-fwd");
    let child = b
        .cmd()
        .args(["run", "--bundle", bpath(&bundle), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_file(&out(&bundle, "ready"));
    // SIGTERM to berth reaches the program, whose trap exits 0.
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(fs::read_to_string(out(&bundle, "sig")).unwrap(), "TERM\n");
    assert_gone(&b, &bundle, &id);
}

#[test]
fn run_detached_pid_file_and_keep() {
    let bundle = mkbundle(&format!(": > /out/ran; {UNTIL_STOP}"));
    let b = berth();
    let id = uid("detach");
    let pid_file = bundle.path().join("init.pid");
    let log = bundle.path().join("run.log");
    let (st, text) = berth_logged(
        &b,
        &[
            "run",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--bundle",
            bpath(&bundle),
            &id,
        ],
        &log,
    );
    assert!(st.success(), "{text}");
    // run -d returned while the program keeps running.
    assert_eq!(status(&b, &id), "running");
    let pid: i64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(b.state(&id)["pid"], json!(pid));
    assert!(pid_alive(pid));
    // A host pid: /proc/<pid> on the host is the container's shell.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"sh\0-c\0"), "{cmdline:?}");
    wait_file(&out(&bundle, "ran"));
    fs::write(out(&bundle, "stop"), "").unwrap();
    wait_status(&b, &id, "stopped");
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);

    // --keep: the state outlives the program.
    let bundle = mkbundle("exit 0");
    let id = uid("keep");
    let o = b.run(&["run", "--keep", "--bundle", bpath(&bundle), &id]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(status(&b, &id), "stopped");
    assert!(
        !bundle.cgroup_dirs().is_empty(),
        "cgroup went away before delete"
    );
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}

/// A program that records SIGTERM (pid 1 ignores signals it has no handler
/// for) and marks /out/ready once the handler is in place.
const TERM_TRAP: &str =
    "trap 'echo TERM > /out/sig; exit 0' TERM; : > /out/ready; while :; do sleep 0.05; done";

fn start_running(b: &Berth, bundle: &Bundle, id: &str) {
    create(b, bundle, id);
    b.ok(&["start", id]);
    wait_file(&out(bundle, "ready"));
}

#[test]
fn kill_by_name_number_and_default() {
    let b = berth();
    // KILL by name and by number: the container dies at once.
    for sig in ["KILL", "9", "SIGKILL"] {
        let bundle = mkbundle(&format!(": > /out/ready; {UNTIL_STOP}"));
        let id = uid("kill");
        start_running(&b, &bundle, &id);
        b.ok(&["kill", &id, sig]);
        wait_status(&b, &id, "stopped");
        b.ok(&["delete", &id]);
        assert_gone(&b, &bundle, &id);
    }
    // SIGTERM by name, and as the default signal: the program's trap runs.
    for args in [vec!["SIGTERM"], vec!["TERM"], vec!["15"], vec![]] {
        let bundle = mkbundle(TERM_TRAP);
        let id = uid("term");
        start_running(&b, &bundle, &id);
        let mut cmd = vec!["kill", id.as_str()];
        cmd.extend(args.iter().copied());
        b.ok(&cmd);
        wait_status(&b, &id, "stopped");
        assert_eq!(
            fs::read_to_string(out(&bundle, "sig")).unwrap(),
            "TERM\n",
            "{args:?}"
        );
        b.ok(&["delete", &id]);
    }

    // A created container can be killed before it ever runs.
    let bundle = mkbundle(": > /out/ran");
    let id = uid("kill-created");
    create(&b, &bundle, &id);
    b.ok(&["kill", &id, "KILL"]);
    wait_status(&b, &id, "stopped");
    assert!(!out(&bundle, "ran").exists());
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);

    // Signals to a stopped container fail.
    let bundle = mkbundle("exit 0");
    let id = uid("kill-stopped");
    create(&b, &bundle, &id);
    b.ok(&["start", &id]);
    wait_status(&b, &id, "stopped");
    let err = fails(&b, &["kill", &id, "KILL"]);
    assert!(
        err.contains("stopped") || err.contains("not running"),
        "{err}"
    );
    let err = fails(&b, &["kill", &id, "NOSUCHSIG"]);
    assert!(err.contains("NOSUCHSIG"), "{err}");
    b.ok(&["delete", &id]);
}

#[test]
fn kill_all_reaches_every_process() {
    let bundle = mkbundle("sleep 100001 & sleep 100002 & : > /out/ready; wait");
    let b = berth();
    let id = uid("killall");
    start_running(&b, &bundle, &id);
    let pids: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.len() >= 3, "{pids:?}");
    b.ok(&["kill", "--all", &id, "KILL"]);
    wait_status(&b, &id, "stopped");
    wait_for("every process to die", || {
        pids.iter().all(|p| !pid_alive(*p))
    });
    let left: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(left.is_empty(), "{left:?}");
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}

#[test]
fn delete_running_needs_force() {
    let bundle = mkbundle(&format!(": > /out/ready; {UNTIL_STOP}"));
    let b = berth();
    let id = uid("del");
    start_running(&b, &bundle, &id);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    let err = fails(&b, &["delete", &id]);
    assert!(err.contains("running"), "{err}");
    assert_eq!(status(&b, &id), "running");
    b.ok(&["delete", "--force", &id]);
    assert!(!pid_alive(pid));
    assert_gone(&b, &bundle, &id);

    // Unknown ids: runc's --force succeeds, plain delete names the problem.
    let ghost = uid("ghost");
    b.ok(&["delete", "--force", &ghost]);
    let err = fails(&b, &["delete", &ghost]);
    assert!(err.contains("does not exist"), "{err}");

    // A created (never started) container is deleted without --force.
    let bundle2 = mkbundle(": > /out/ran");
    let id2 = uid("del-created");
    create(&b, &bundle2, &id2);
    let pid2 = b.state(&id2)["pid"].as_i64().unwrap();
    b.ok(&["delete", &id2]);
    assert!(!pid_alive(pid2));
    assert!(
        !out(&bundle2, "ran").exists(),
        "deleting a created container ran it"
    );
    assert_gone(&b, &bundle2, &id2);
}

#[test]
fn list_formats() {
    let b = berth();
    let created = mkbundle("true");
    let running = mkbundle(&format!(": > /out/ready; {UNTIL_STOP}"));
    let (idc, idr) = (uid("list-c"), uid("list-r"));
    create(&b, &created, &idc);
    start_running(&b, &running, &idr);

    let table = b.ok(&["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    for (id, st, bundle) in [(&idc, "created", &created), (&idr, "running", &running)] {
        let row = rows
            .iter()
            .find(|r| r[0] == id)
            .unwrap_or_else(|| panic!("{id}: {table}"));
        assert_eq!(row[1], b.state(id)["pid"].to_string());
        assert_eq!(row[2], st);
        assert_eq!(Path::new(row[3]), fs::canonicalize(bundle.path()).unwrap());
        assert_eq!(row[5], "root");
    }

    let all: Vec<Value> = serde_json::from_str(&b.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(all.len(), 2);
    for (id, st) in [(&idc, "created"), (&idr, "running")] {
        let e = all.iter().find(|e| e["id"] == json!(id)).unwrap();
        assert_eq!(e["status"], json!(st));
    }

    let mut ids: Vec<String> = b.ok(&["list", "-q"]).lines().map(String::from).collect();
    ids.sort();
    let mut want = vec![idc.clone(), idr.clone()];
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn ps_lists_container_processes() {
    let bundle = mkbundle("sleep 100003 & : > /out/ready; wait");
    let b = berth();
    let id = uid("ps");
    start_running(&b, &bundle, &id);
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let pids: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&init), "{pids:?}");
    assert_eq!(pids.len(), 2, "{pids:?}");

    // The forked child shows as sleep once it has exec'd.
    let mut table = String::new();
    wait_for("ps to show sleep", || {
        table = b.ok(&["ps", &id]);
        table.contains("sleep 100003")
    });
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap().split_whitespace().any(|h| h == "PID"),
        "{table}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().any(|l| l.contains("sleep 100003")), "{table}");
    // Only this container's processes: not the test or berth itself.
    assert!(!table.contains("berth"), "{table}");

    // Options after the id go to ps(1).
    let table = b.ok(&["ps", &id, "-o", "pid,comm"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["PID", "COMMAND"], "{table}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.contains(&vec![init.to_string().as_str(), "sh"]),
        "{table}"
    );
    assert!(rows.iter().any(|r| r[1] == "sleep"), "{table}");
}

#[test]
fn exec_into_running_container() {
    let bundle = mkbundle(": > /out/ready; exec sleep 100004");
    let b = berth();
    let id = uid("exec");
    start_running(&b, &bundle, &id);
    let ex = |args: &[&str]| {
        let mut v = vec!["exec"];
        v.extend_from_slice(args);
        b.run(&v)
    };

    let o = ex(&[&id, "echo", "hello", "world"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout_of(&o), "hello world\n");

    let o = ex(&[&id, "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    // Not pid 1 in there, so it can SIGKILL itself: 128+9 as with run.
    let o = ex(&[&id, "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(128 + 9), "{o:?}");

    let o = ex(&["--env", "FOO=bar", &id, "sh", "-c", "echo $FOO"]);
    assert_eq!(stdout_of(&o), "bar\n", "{o:?}");

    let o = ex(&["--cwd", "/tmp", &id, "pwd"]);
    assert_eq!(stdout_of(&o), "/tmp\n", "{o:?}");

    let o = ex(&["--user", "1000:1000", &id, "id"]);
    let s = stdout_of(&o);
    assert!(s.contains("uid=1000") && s.contains("gid=1000"), "{o:?}");

    // The container's pid namespace: its init is pid 1 in there.
    // -t without a console socket: berth proxies the pty to its stdout.
    let o = ex(&[
        "-t",
        &id,
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && echo exec-tty",
    ]);
    assert!(stdout_of(&o).contains("exec-tty"), "{o:?}");

    let o = ex(&[&id, "ps"]);
    let s = stdout_of(&o);
    assert!(
        s.lines()
            .any(|l| l.split_whitespace().next() == Some("1") && l.contains("sleep 100004")),
        "{o:?}"
    );

    // --process: a process.json replaces the command line.
    let pj = bundle.path().join("process.json");
    fs::write(
        &pj,
        json!({
            "args": ["sh", "-c", "echo $GREETING; pwd"],
            "env": ["PATH=/bin", "GREETING=from-process-json"],
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0}
        })
        .to_string(),
    )
    .unwrap();
    let o = ex(&["--process", pj.to_str().unwrap(), &id]);
    assert_eq!(stdout_of(&o), "from-process-json\n/tmp\n", "{o:?}");

    // -d with --pid-file: returns at once; the process lives in the
    // container's cgroup and pid namespace.
    let pid_file = bundle.path().join("exec.pid");
    let (st, text) = berth_logged(
        &b,
        &[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sleep",
            "100005",
        ],
        &bundle.path().join("exec.log"),
    );
    assert!(st.success(), "{text}");
    let pid: i64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        b"sleep\x00100005\x00"
    );
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{}/ctr", bundle.cgroup_parent);
    assert!(
        cg.lines()
            .any(|l| l.contains(":pids:") && l.ends_with(&want)),
        "{cg}"
    );
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let ns = |p: i64| fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_eq!(ns(pid), ns(init));
    let pids: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid) && pids.contains(&init), "{pids:?}");

    b.ok(&["delete", "--force", &id]);
    assert!(!pid_alive(pid));
    assert_gone(&b, &bundle, &id);
}

/// Debian's runc (the runc package), for behaviour berth must match.
fn runc_bin() -> PathBuf {
    let p = PathBuf::from(std::env::var("RUNC_BIN").unwrap_or_else(|_| "/usr/sbin/runc".into()));
    assert!(
        p.exists(),
        "{} is missing: install Debian's runc (scripts/setup.sh)",
        p.display()
    );
    p
}

/// `exec --user`, `--additional-gids` and `--cap` as runc does them:
/// without ":gid" the process keeps the config's gid (not 0), extra gids are
/// added to the config's, and a capability goes to the bounding, effective,
/// permitted and ambient sets but not inheritable (so a non-root user gets
/// none). Both runtimes run the same config and exec the same commands.
#[test]
fn exec_user_gids_and_caps_match_runc() {
    const CAPS: &str = "grep ^Cap /proc/self/status";
    let cases: &[&[&str]] = &[
        &["id"],
        &["--user", "1000", "id"],
        &["--user", "1000:5", "id"],
        &["--user", "1000", "--additional-gids", "9", "id"],
        &["--user", "0:0", "-g", "9", "-g", "10", "id"],
        &["sh", "-c", CAPS],
        &["--cap", "CAP_SYS_ADMIN", "sh", "-c", CAPS],
        &["--user", "1000", "--cap", "CAP_SYS_ADMIN", "sh", "-c", CAPS],
    ];
    let run = |bin: &Path, oci_version: &str| -> Vec<String> {
        let mut bundle = Bundle::new(&["sleep", "100006"]).unwrap();
        bundle.config["ociVersion"] = json!(oci_version);
        bundle.config["process"]["user"] = json!({"uid": 0, "gid": 1234, "additionalGids": [77]});
        bundle.write().unwrap();
        let root = tempfile::tempdir().unwrap();
        let rt = |args: &[&str]| {
            Command::new(bin)
                .arg("--root")
                .arg(root.path())
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let id = uid("exec-user");
        let err = fs::File::create(bundle.path().join("run.err")).unwrap();
        let st = Command::new(bin)
            .arg("--root")
            .arg(root.path())
            .args(["run", "-d", "--bundle", bpath(&bundle), &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "{}: {}",
            bin.display(),
            fs::read_to_string(bundle.path().join("run.err")).unwrap()
        );
        let mut outs = Vec::new();
        for c in cases {
            // Flags, then the id, then the command.
            let cmd = c.iter().position(|a| *a == "id" || *a == "sh").unwrap();
            let mut args = vec!["exec"];
            args.extend_from_slice(&c[..cmd]);
            args.push(&id);
            args.extend_from_slice(&c[cmd..]);
            let o = rt(&args);
            assert!(o.status.success(), "{} {args:?}: {o:?}", bin.display());
            outs.push(stdout_of(&o).trim().to_string());
        }
        let o = rt(&["delete", "--force", &id]);
        assert!(o.status.success(), "{o:?}");
        outs
    };
    let runc = run(&runc_bin(), "1.0.2");
    let ours = run(Path::new(env!("CARGO_BIN_EXE_berth")), "1.2.1");
    for ((c, r), o) in cases.iter().zip(&runc).zip(&ours) {
        assert_eq!(o, r, "exec {c:?}: berth vs runc");
    }
    // What runc does, spelled out: the config's gid stays.
    assert!(ours[1].starts_with("uid=1000(user) gid=1234 "), "{ours:?}");
}

#[test]
fn exec_into_stopped_container_fails() {
    let bundle = mkbundle("exit 0");
    let b = berth();
    let id = uid("exec-stopped");
    create(&b, &bundle, &id);
    b.ok(&["start", &id]);
    wait_status(&b, &id, "stopped");
    let err = fails(&b, &["exec", &id, "true"]);
    assert!(
        err.contains("stopped") || err.contains("not running"),
        "{err}"
    );
    let err = fails(&b, &["exec", &uid("nosuch"), "true"]);
    assert!(err.contains("does not exist"), "{err}");
}

/// `berth spec` is Debian's `runc spec` (runc 1.1) but for what berth
/// deliberately takes from runc 1.2's defaults (spec 1.2.1, a cgroup
/// namespace, /sys/devices/virtual/powercap masked) and its own hostname;
/// with --rootless berth also leaves out the /sys/fs/cgroup mount. Anything
/// else is drift.
#[test]
fn spec_is_runcs_spec_but_for_known_differences() {
    for rootless in [false, true] {
        let gen = |bin: &Path| -> Value {
            let dir = tempfile::tempdir().unwrap();
            let mut c = Command::new(bin);
            c.arg("spec").current_dir(dir.path());
            if rootless {
                c.arg("--rootless");
            }
            let o = c.output().unwrap();
            assert!(o.status.success(), "{} spec: {o:?}", bin.display());
            serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap()
        };
        let mut runc = gen(&runc_bin());
        let ours = gen(Path::new(env!("CARGO_BIN_EXE_berth")));
        assert_eq!(ours["ociVersion"], json!("1.2.1"));
        assert_eq!(ours["hostname"], json!("berth"));
        runc["ociVersion"] = ours["ociVersion"].clone();
        runc["hostname"] = ours["hostname"].clone();
        let linux = &mut runc["linux"];
        let ns = linux["namespaces"].as_array_mut().unwrap();
        let at = ns
            .iter()
            .position(|n| n["type"] == "user")
            .unwrap_or(ns.len());
        ns.insert(at, json!({"type": "cgroup"}));
        linux["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/sys/devices/virtual/powercap"));
        if rootless {
            runc["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["destination"] != "/sys/fs/cgroup");
        }
        assert_eq!(
            ours,
            runc,
            "rootless {rootless}:\nberth {}\nrunc {}",
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&runc).unwrap()
        );
    }
}

#[test]
fn spec_then_run() {
    let b = berth();
    let dir = tempfile::Builder::new()
        .prefix("berth-spec-")
        .tempdir()
        .unwrap();
    build_rootfs(&dir.path().join("rootfs")).unwrap();
    let d = dir.path().to_str().unwrap();
    b.ok(&["spec", "--bundle", d]);
    let cfg = dir.path().join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert_eq!(spec["root"]["path"], json!("rootfs"));

    let err = fails(&b, &["spec", "--bundle", d]);
    assert!(err.contains("exists"), "{err}");

    // As-is once terminal is off. Without cgroupsPath the cgroup is named
    // after the id, so the id carries the test prefix.
    spec["process"]["terminal"] = json!(false);
    fs::write(&cfg, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let id = format!("berth-test-{}", random_suffix());
    let mut child = b
        .cmd()
        .args(["run", "--bundle", d, &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // sh reads its commands from the inherited stdin.
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo spec-ok; hostname\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stdout_of(&o),
        format!("spec-ok\n{}\n", spec["hostname"].as_str().unwrap())
    );
    for ctrl in ["pids", "memory", "freezer"] {
        assert!(!Path::new("/sys/fs/cgroup").join(ctrl).join(&id).exists());
    }

    let rl = tempfile::tempdir().unwrap();
    b.ok(&[
        "spec",
        "--rootless",
        "--bundle",
        rl.path().to_str().unwrap(),
    ]);
    let spec: Value =
        serde_json::from_slice(&fs::read(rl.path().join("config.json")).unwrap()).unwrap();
    let ns = spec["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.iter().any(|n| n["type"] == json!("user")), "{spec}");
    for m in ["uidMappings", "gidMappings"] {
        let maps = spec["linux"][m].as_array().unwrap();
        assert!(
            !maps.is_empty() && maps[0]["size"].as_u64() > Some(0),
            "{spec}"
        );
    }
}

#[test]
fn features_json() {
    let b = berth();
    let f: Value = serde_json::from_str(&b.ok(&["features"])).unwrap();
    assert!(f["ociVersionMin"].as_str().unwrap().starts_with("1."));
    assert!(f["ociVersionMax"].as_str().unwrap().starts_with("1."));
    let has = |k: &Value, v: &str| k.as_array().unwrap().iter().any(|x| x == v);
    assert!(
        has(&f["hooks"], "prestart") && has(&f["hooks"], "poststop"),
        "{f}"
    );
    assert!(
        has(&f["mountOptions"], "rbind") && has(&f["mountOptions"], "ro"),
        "{f}"
    );
    for ns in [
        "pid", "mount", "network", "ipc", "uts", "user", "cgroup", "time",
    ] {
        assert!(has(&f["linux"]["namespaces"], ns), "{ns}: {f}");
    }
    // Each advertised mount option is tried on a real mount in
    // spec_mounts.rs::every_advertised_mount_option_works; here: idmapped
    // mounts work (userns.rs) and are listed, so is tmpcopyup, and options
    // are listed once.
    let opts: Vec<&str> = f["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    let mut uniq = opts.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), opts.len(), "duplicates: {opts:?}");
    for o in [
        "idmap",
        "ridmap",
        "rnoatime",
        "rstrictatime",
        "ratime",
        "tmpcopyup",
    ] {
        assert!(opts.contains(&o), "{o}: {opts:?}");
    }
    assert_eq!(
        f["linux"]["mountExtensions"]["idmap"]["enabled"],
        json!(true)
    );
    // rdma limits are written on cgroup v2 only: true exactly when this
    // host's /sys/fs/cgroup is cgroup2.
    let v2 = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "));
    assert_eq!(f["linux"]["cgroup"]["rdma"], json!(v2), "{f}");
    assert_eq!(f["linux"]["cgroup"]["systemd"], json!(false), "{f}");
}

#[test]
fn pause_and_resume() {
    let bundle = mkbundle(
        "i=0; while :; do i=$((i+1)); echo $i > /out/n.tmp; mv /out/n.tmp /out/n; sleep 0.02; done",
    );
    let b = berth();
    let id = uid("pause");
    create(&b, &bundle, &id);
    b.ok(&["start", &id]);
    let count = || -> u64 {
        fs::read_to_string(out(&bundle, "n"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_for("the counter to count", || count() > 2);

    b.ok(&["pause", &id]);
    assert_eq!(status(&b, &id), "paused");
    let frozen = count();
    // Long enough for dozens of increments, had it not been frozen.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), frozen, "counter moved while paused");
    assert_eq!(status(&b, &id), "paused");
    let err = fails(&b, &["pause", &id]);
    assert!(err.contains("paused"), "{err}");

    b.ok(&["resume", &id]);
    assert_eq!(status(&b, &id), "running");
    wait_for("the counter to move again", || count() > frozen);
    let err = fails(&b, &["resume", &id]);
    assert!(err.contains("not paused"), "{err}");

    // A paused container can be force-deleted (it gets thawed to die).
    b.ok(&["pause", &id]);
    b.ok(&["delete", "--force", &id]);
    assert_gone(&b, &bundle, &id);

    // ... and killed: SIGKILL reaches a frozen container.
    let bundle = mkbundle(&format!(": > /out/ready; {UNTIL_STOP}"));
    let id = uid("pause-kill");
    start_running(&b, &bundle, &id);
    b.ok(&["pause", &id]);
    b.ok(&["kill", &id, "KILL"]);
    wait_status(&b, &id, "stopped");
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}

/// Receives one fd over a unix socket (SCM_RIGHTS), as a console-socket
/// server (conmon, containerd-shim) does.
fn recv_fd(sock: &std::os::unix::net::UnixStream) -> OwnedFd {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg describes live buffers; the cmsg is checked before use.
    unsafe {
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null(), "no fd received on the console socket");
        assert_eq!(
            ((*c).cmsg_level, (*c).cmsg_type),
            (libc::SOL_SOCKET, libc::SCM_RIGHTS)
        );
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32))
    }
}

/// Reads a pty master until the slave side is gone (EIO).
fn read_pty(master: OwnedFd) -> String {
    let mut f = fs::File::from(master);
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

const TTY_SCRIPT: &str = "echo tty-ok; [ -t 0 ] && [ -t 1 ] && echo is-a-tty";

#[test]
fn console_socket_receives_pty_master() {
    let mut bundle = mkbundle(TTY_SCRIPT);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.write().unwrap();
    let b = berth();
    let id = uid("console");
    let sock_path = bundle.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let log = bundle.path().join("create.log");
    let (st, text) = berth_logged(
        &b,
        &[
            "create",
            "--console-socket",
            sock_path.to_str().unwrap(),
            "--bundle",
            bpath(&bundle),
            &id,
        ],
        &log,
    );
    assert!(st.success(), "{text}");
    // create connected and sent the master before returning.
    let (conn, _) = listener.accept().unwrap();
    let master = recv_fd(&conn);
    b.ok(&["start", &id]);
    let text = read_pty(master);
    assert!(
        text.contains("tty-ok") && text.contains("is-a-tty"),
        "{text:?}"
    );
    wait_status(&b, &id, "stopped");
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);

    // A terminal without a console socket cannot be handed to anyone.
    let id = uid("console-none");
    let (st, text) = berth_logged(&b, &["create", "--bundle", bpath(&bundle), &id], &log);
    assert!(!st.success());
    assert!(text.contains("console-socket"), "{text}");
    assert!(!b.root.path().join(&id).exists());
}

/// `stty` is not among the fixture's applets.
fn add_stty(bundle: &Bundle) {
    std::os::unix::fs::symlink("busybox", bundle.rootfs().join("bin/stty")).unwrap();
}

/// process.consoleSize sets the pty's size before the program starts.
#[test]
fn console_size_is_applied() {
    let mut bundle = mkbundle("stty size");
    add_stty(&bundle);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.config["process"]["consoleSize"] = json!({"height": 33, "width": 111});
    bundle.write().unwrap();
    let b = berth();
    let id = uid("console-size");
    let sock_path = bundle.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let log = bundle.path().join("create.log");
    let (st, text) = berth_logged(
        &b,
        &[
            "create",
            "--console-socket",
            sock_path.to_str().unwrap(),
            "--bundle",
            bpath(&bundle),
            &id,
        ],
        &log,
    );
    assert!(st.success(), "{text}");
    let (conn, _) = listener.accept().unwrap();
    let master = recv_fd(&conn);
    b.ok(&["start", &id]);
    let text = read_pty(master);
    assert_eq!(text.trim(), "33 111", "{text:?}");
    wait_status(&b, &id, "stopped");
    b.ok(&["delete", &id]);
}

/// `exec -t --console-socket S`: berth hands the exec'd process's pty
/// master to S (as conmon and the containerd shim want), waits for the
/// process and exits with its code; a --process consoleSize is applied.
#[test]
fn exec_console_socket_receives_pty_master() {
    let bundle = mkbundle(": > /out/ready; exec sleep 100007");
    add_stty(&bundle);
    let b = berth();
    let id = uid("exec-console");
    start_running(&b, &bundle, &id);
    let sock_path = bundle.path().join("exec-console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let exec = |args: &[&str]| {
        let log = bundle.path().join("exec-console.log");
        let f = fs::File::create(&log).unwrap();
        let mut child = b
            .cmd()
            .args(["exec", "--console-socket", sock_path.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let text = read_pty(recv_fd(&conn));
        let st = child.wait().unwrap();
        (st, text, fs::read_to_string(&log).unwrap())
    };
    let (st, text, log) = exec(&[
        "-t",
        &id,
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo exec-tty; exit 5",
    ]);
    assert_eq!(st.code(), Some(5), "{log}");
    assert!(text.contains("exec-tty"), "{text:?} {log}");
    // Nothing of the program's output goes to berth's own stdio.
    assert!(!log.contains("exec-tty"), "{log}");

    let pj = bundle.path().join("process.json");
    fs::write(
        &pj,
        json!({
            "terminal": true,
            "consoleSize": {"height": 20, "width": 70},
            "args": ["stty", "size"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        })
        .to_string(),
    )
    .unwrap();
    let (st, text, log) = exec(&["--process", pj.to_str().unwrap(), &id]);
    assert!(st.success(), "{log}");
    assert_eq!(text.trim(), "20 70", "{text:?} {log}");
    b.ok(&["delete", "--force", &id]);
    assert_gone(&b, &bundle, &id);
}

/// `exec --no-new-privs` sets no_new_privs for that process only, in a
/// container whose config does not ask for it.
#[test]
fn exec_no_new_privs() {
    let mut bundle = mkbundle(": > /out/ready; exec sleep 100008");
    bundle.config["process"]["noNewPrivileges"] = json!(false);
    bundle.write().unwrap();
    let b = berth();
    let id = uid("exec-nnp");
    start_running(&b, &bundle, &id);
    let nnp = |args: &[&str]| {
        let mut v = vec!["exec"];
        v.extend_from_slice(args);
        v.extend_from_slice(&[&id, "grep", "NoNewPrivs", "/proc/self/status"]);
        let o = b.run(&v);
        assert!(o.status.success(), "{o:?}");
        stdout_of(&o).split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(nnp(&[]), "0");
    assert_eq!(nnp(&["--no-new-privs"]), "1");
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    b.ok(&["delete", "--force", &id]);
}

/// What a shim or conmon does: become a child subreaper, `berth create`
/// and `berth start` (detached), then find the container's init among its
/// own children and reap it. Prints "self=<pid> ppid=<init's parent>",
/// the names of the init's ancestors up to this process, then "exit=<code>".
const REAPER_PY: &str = r#"
import ctypes, os, subprocess, sys
berth, root, bundle, cid, pidfile = sys.argv[1:6]
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
subprocess.run([berth, "--root", root, "create", "--bundle", bundle, "--pid-file", pidfile, cid], check=True, **quiet)
subprocess.run([berth, "--root", root, "start", cid], check=True, **quiet)
pid = int(open(pidfile).read())
def ppid(p):
    for l in open("/proc/%d/status" % p):
        if l.startswith("PPid:"):
            return int(l.split()[1])
print("self=%d ppid=%d" % (os.getpid(), ppid(pid)), flush=True)
p = ppid(pid)
while p > 1 and p != os.getpid():
    print("ancestor " + open("/proc/%d/comm" % p).read().strip(), flush=True)
    p = ppid(p)
# The container loops until /out/go exists: let it exit.
open(os.path.join(bundle, "out", "go"), "w").close()
_, st = os.waitpid(pid, 0)
print("exit=%d" % os.waitstatus_to_exitcode(st), flush=True)
"#;

/// After a detached `create` + `start`, the container's init is a child
/// of the caller (here a subreaper, as containerd's shim and conmon are),
/// never of a berth process: berth's stages exit, and the caller reaps the
/// init and gets its exit code.
#[test]
fn detached_init_is_the_callers_child_never_berths() {
    let bundle = mkbundle("while [ ! -e /out/go ]; do sleep 0.05; done; exit 3");
    let b = berth();
    let id = uid("reaper");
    let pidfile = bundle.path().join("init.pid");
    let o = Command::new("python3")
        .arg("-c")
        .arg(REAPER_PY)
        .arg(env!("CARGO_BIN_EXE_berth"))
        .arg(b.root.path())
        .arg(bundle.path())
        .arg(&id)
        .arg(&pidfile)
        .stdin(Stdio::null())
        .output()
        .expect("python3 is needed by this test");
    let text = format!("{}{}", stdout_of(&o), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let first = text.lines().next().unwrap();
    let (me, parent) = first
        .strip_prefix("self=")
        .and_then(|r| r.split_once(" ppid="))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(me, parent, "the init's parent is not the caller: {text}");
    assert!(!text.contains("ancestor"), "{text}");
    assert!(text.lines().any(|l| l == "exit=3"), "{text}");
    assert_eq!(status(&b, &id), "stopped");
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}

#[test]
fn run_foreground_terminal_without_tty_stdin() {
    let mut bundle = mkbundle(TTY_SCRIPT);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.write().unwrap();
    let b = berth();
    let id = uid("run-tty");
    // Command::output gives berth /dev/null as stdin: not a terminal.
    let o = b.run(&["run", "--bundle", bpath(&bundle), &id]);
    assert!(o.status.success(), "{o:?}");
    let s = stdout_of(&o);
    assert!(s.contains("tty-ok") && s.contains("is-a-tty"), "{o:?}");
    assert_gone(&b, &bundle, &id);
}

#[test]
fn log_file_json_on_failure() {
    let b = berth();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("berth.log");
    let ghost = uid("ghost");
    let o = b.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        &ghost,
    ]);
    assert!(!o.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], json!("error"), "{text}");
    let msg = line["msg"].as_str().unwrap();
    assert!(
        msg.contains(&ghost) && msg.contains("does not exist"),
        "{text}"
    );
}

/// `--debug`: timestamped phases of create on stderr, from berth and from
/// the container's init (another pid); none on stdout or in the --log file,
/// as `--help` says.
#[test]
fn debug_traces_phases_on_stderr() {
    let bundle = mkbundle("echo program-output");
    let b = berth();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("berth.log");
    let id = uid("debug");
    let o = b.run(&[
        "--debug",
        "--log",
        log.to_str().unwrap(),
        "run",
        "--bundle",
        bpath(&bundle),
        &id,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout_of(&o), "program-output\n");
    let err = String::from_utf8_lossy(&o.stderr);
    let mut pids = std::collections::BTreeSet::new();
    let mut phases = Vec::new();
    for l in err.lines() {
        // berth[<pid>] +<ms>ms <phase>
        let rest = l
            .strip_prefix("berth[")
            .unwrap_or_else(|| panic!("{l:?} in {err}"));
        let (pid, rest) = rest.split_once("] +").unwrap();
        let (ms, phase) = rest.split_once("ms ").unwrap();
        pids.insert(pid.parse::<u32>().unwrap());
        assert!(ms.parse::<f64>().unwrap() >= 0.0, "{l}");
        phases.push(phase.to_string());
    }
    for want in [
        "config loaded and validated",
        "cgroup created",
        "rootfs prepared",
        "process prepared",
        "init ready",
    ] {
        assert!(phases.iter().any(|p| p == want), "no {want:?}: {err}");
    }
    assert!(pids.len() >= 2, "only one process traced: {err}");
    assert!(!log.exists() || fs::read_to_string(&log).unwrap().is_empty());
    assert_gone(&b, &bundle, &id);
}

#[test]
fn systemd_cgroup_is_refused_clearly() {
    let bundle = mkbundle("true");
    let b = berth();
    let id = uid("systemd");
    let log = bundle.path().join("create.log");
    let (st, text) = berth_logged(
        &b,
        &[
            "--systemd-cgroup",
            "create",
            "--bundle",
            bpath(&bundle),
            &id,
        ],
        &log,
    );
    assert!(!st.success());
    assert!(
        text.contains("--systemd-cgroup") && text.contains("no systemd cgroup driver"),
        "{text}"
    );
    // What it says about this host is what holds here.
    let running = Path::new("/run/systemd/system").is_dir();
    assert_eq!(
        text.contains("systemd is running on this host"),
        running,
        "{text}"
    );
    assert_eq!(
        text.contains("/run/systemd/system is missing"),
        !running,
        "{text}"
    );
    assert!(!b.root.path().join(&id).exists());
    assert!(bundle.cgroup_dirs().is_empty());
}

/// `--log-format text` writes logrus-style lines (runc's default), one per
/// error, appended; the error also goes to stderr.
#[test]
fn log_file_text_on_failure() {
    let b = berth();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("berth.log");
    for _ in 0..2 {
        let ghost = uid("ghost");
        let o = b.run(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "text",
            "kill",
            &ghost,
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&ghost) && err.contains("does not exist"),
            "{err}"
        );
        let text = fs::read_to_string(&log).unwrap();
        let line = text.lines().last().unwrap();
        assert!(line.starts_with("time=\""), "{text}");
        assert!(line.contains(" level=error msg=\""), "{text}");
        assert!(
            line.contains(&ghost) && line.contains("does not exist"),
            "{text}"
        );
    }
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[test]
fn start_and_state_of_unknown_fail() {
    let b = berth();
    let ghost = uid("ghost");
    for cmd in ["start", "state", "pause", "resume", "ps"] {
        let err = fails(&b, &[cmd, &ghost]);
        assert!(err.contains("does not exist"), "{cmd}: {err}");
    }
    let err = fails(&b, &["kill", &ghost, "KILL"]);
    assert!(err.contains("does not exist"), "{err}");
    // An empty root lists nothing.
    let table = b.ok(&["list"]);
    assert_eq!(table.lines().count(), 1, "{table}");
    assert_eq!(b.ok(&["list", "-q"]), "");
    let all: Value = serde_json::from_str(&b.ok(&["list", "--format", "json"])).unwrap();
    assert!(
        all.as_array().is_some_and(|a| a.is_empty()) || all.is_null(),
        "{all}"
    );
    // --version names the runtime-spec version, as runc's does.
    let o = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(stdout_of(&o).contains("spec: 1."), "{o:?}");
}

#[test]
fn create_from_bundle_cwd_with_relative_pid_file() {
    // The usual runc workflow: cd into the bundle, no --bundle, a relative
    // --pid-file that must land in that directory.
    let bundle = mkbundle(": > /out/ran");
    let b = berth();
    let id = uid("cwd");
    let log = bundle.path().join("create.log");
    let st = b
        .cmd()
        .args(["create", "--pid-file", "rel.pid", &id])
        .current_dir(bundle.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(bundle.path().join("create.err")).unwrap())
        .status()
        .unwrap();
    let err = fs::read_to_string(bundle.path().join("create.err")).unwrap();
    assert!(st.success(), "{err}");
    let pid: i64 = fs::read_to_string(bundle.path().join("rel.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let st = b.state(&id);
    assert_eq!(st["pid"], json!(pid));
    assert_eq!(
        st["bundle"],
        json!(fs::canonicalize(bundle.path()).unwrap())
    );
    b.ok(&["start", &id]);
    wait_status(&b, &id, "stopped");
    assert!(out(&bundle, "ran").exists());
    b.ok(&["delete", &id]);
    assert_gone(&b, &bundle, &id);
}
