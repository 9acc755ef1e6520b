//! Real clients drive berth in place of runc: podman (through conmon) and
//! containerd (through its `io.containerd.runc.v2` shim, driven by `ctr`).
//! Containers really run the locally built busybox image; the tests check
//! their output and exit codes, and that berth's own state shows them.
//!
//! Everything is private: podman and containerd get their own roots,
//! sockets and lock files in temp dirs, cgroups live under a
//! `/berth-test-<random>` parent, and all of it is removed at the end.
//! Missing tools make the tests fail (naming the Debian package), never
//! pass silently: CI installs them with scripts/setup.sh.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Image name; the OCI archive carries it as org.opencontainers.image.ref.name,
/// which both `podman load` and `ctr images import` use as the image's name.
const IMAGE: &str = "localhost/berth-busybox:clients";

/// Upper bound for one client command; a hang must fail, not stall CI.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Tests of one client run one at a time: they share host-wide default
/// paths the client creates (see [`HostDefaults`]), which the last user
/// removes.
static PODMAN_LOCK: Mutex<()> = Mutex::new(());
static CONTAINERD_LOCK: Mutex<()> = Mutex::new(());

fn lock(m: &'static Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the mutex; the next test still gets a clean setup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- helpers

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Tests may run with a PATH lacking the sbin directories (runc is there).
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails the test with the package to install when a tool is missing.
fn require(client: &str, tools: &[(&str, &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|(bin, pkg)| format!("`{bin}` (Debian package {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "{client} tests need {}: install them with scripts/setup.sh",
        missing.join(", ")
    );
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with output in files rather than pipes: detaching clients
/// leave daemons (conmon) that may inherit and hold a pipe open forever.
fn run(cmd: Command, scratch: &Path) -> Out {
    run_within(cmd, scratch, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`] for cleanup code, which must not panic while unwinding.
fn run_quietly(cmd: Command, scratch: &Path) -> Option<Out> {
    run_within(cmd, scratch, Duration::from_secs(20)).ok()
}

fn run_within(mut cmd: Command, scratch: &Path, timeout: Duration) -> Result<Out, String> {
    let what = format!("{cmd:?}");
    let so = scratch.join(format!("out-{}", berth_testutil::random_suffix()));
    let se = so.with_extension("err");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&so).expect("stdout file"))
        .stderr(fs::File::create(&se).expect("stderr file"));
    let mut child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| format!("waiting for {what}: {e}"))?
        {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {timeout:?}"));
        }
        sleep(Duration::from_millis(20));
    };
    let out = Out {
        status,
        stdout: fs::read_to_string(&so).unwrap_or_default(),
        stderr: fs::read_to_string(&se).unwrap_or_default(),
    };
    let _ = fs::remove_file(&so);
    let _ = fs::remove_file(&se);
    Ok(out)
}

fn ok(cmd: Command, scratch: &Path) -> Out {
    let what = format!("{cmd:?}");
    let o = run(cmd, scratch);
    assert!(o.status.success(), "{what} failed: {}", o.describe());
    o
}

/// `script` gives the client a controlling terminal, as an interactive
/// user would have, so `-t` is exercised without a human at a tty.
fn under_pty(cmd: &Command) -> Command {
    let quote = |s: &OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut line = quote(cmd.get_program());
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut c = Command::new("script");
    // -e: exit with the child's status; /dev/null: no typescript file.
    c.args(["-q", "-e", "-c"]).arg(line).arg("/dev/null");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Waits until `cond` holds, failing with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

/// A private copy of the berth binary: clients keep its path in their
/// state, and a concurrent `cargo build` must not swap it mid-test.
fn berth_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("berth");
    fs::copy(env!("CARGO_BIN_EXE_berth"), &dst).expect("copying the berth binary");
    dst
}

/// `berth --root <root> <args>`: the tests read berth's own view of what
/// the clients created.
fn berth(bin: &Path, root: &Path, args: &[&str], scratch: &Path) -> Out {
    let mut c = Command::new(bin);
    c.arg("--root").arg(root).args(args);
    run(c, scratch)
}

fn berth_status(bin: &Path, root: &Path, id: &str, scratch: &Path) -> String {
    let o = berth(bin, root, &["state", id], scratch);
    assert!(o.status.success(), "berth state {id}: {}", o.describe());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("berth state prints JSON");
    v["status"].as_str().unwrap_or_default().to_string()
}

/// Processes whose command line mentions `dir` (daemons, conmon, shims this
/// test started) get SIGKILL; only for cleanup after a failure.
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: plain syscall on a pid we just identified as ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Detaches every mount at or below `dir` (container rootfs, shm) left by
/// a failed run, deepest first, so removing the temp dir cannot descend
/// into them.
fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    points.reverse();
    for m in points {
        if let Ok(c) = std::ffi::CString::new(m) {
            // SAFETY: valid C string; MNT_DETACH only affects this mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn dirs_below(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                dirs_below(&e.path(), out);
            }
        }
    }
}

/// Kills what is left in the test's cgroup parent and removes it in every
/// hierarchy (v1 controllers, the named systemd one, the v2 unified one).
fn remove_cgroup_parent(parent: &str) {
    let mut all = Vec::new();
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let d = e.path().join(parent);
            if d.is_dir() {
                dirs_below(&d, &mut all);
            }
        }
    }
    let root = Path::new("/sys/fs/cgroup").join(parent);
    if root.is_dir() && !all.contains(&root) {
        dirs_below(&root, &mut all);
    }
    for d in &all {
        for pid in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                // SAFETY: plain syscall; the process lives in our cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    // Killed processes take a moment to leave their cgroups.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        all.retain(|d| d.exists() && fs::remove_dir(d).is_err());
        if all.is_empty() || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Host-wide default paths a client creates even with private roots
/// (podman: its blob-info cache and network run dir; containerd: the shim
/// socket dir). Those that did not exist before are removed afterwards, and
/// only while empty, so a concurrent user of the client keeps them.
struct HostDefaults {
    /// Directories that did not exist, deepest last.
    created: Vec<PathBuf>,
    /// Files the client puts in them.
    files: Vec<&'static str>,
}

impl HostDefaults {
    fn new(dirs: &[&str], files: &[&'static str]) -> HostDefaults {
        HostDefaults {
            created: dirs
                .iter()
                .map(PathBuf::from)
                .filter(|d| !d.exists())
                .collect(),
            files: files.to_vec(),
        }
    }
}

impl Drop for HostDefaults {
    fn drop(&mut self) {
        for f in &self.files {
            let f = Path::new(f);
            if f.parent()
                .is_some_and(|p| self.created.iter().any(|c| c == p))
            {
                let _ = fs::remove_file(f);
            }
        }
        for d in self.created.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

fn cgroup_parent() -> String {
    format!("berth-test-{}", berth_testutil::random_suffix())
}

// ---------------------------------------------------------------- podman

/// A private podman: its own storage (vfs, no mounts), run root, tmp dir,
/// file locks (not the host's shared-memory lock table), network config dir
/// and event log; berth as its runtime.
///
/// berth keeps its state in its default root, /run/berth (as runc does in
/// /run/runc): podman 4 drops `--runtime-flag` from the cleanup command
/// conmon runs at exit, so a private `--root` would miss that `delete`.
struct Podman {
    dir: tempfile::TempDir,
    berth: PathBuf,
    /// The OCI runtime podman drives: the copy of berth, or runc to compare.
    runtime: PathBuf,
    /// berth's default state root, which podman uses.
    berth_root: PathBuf,
    parent: String,
    _host: HostDefaults,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Podman {
    fn new() -> Podman {
        Self::with_runtime(None)
    }

    /// A private podman driving `runtime` (None: berth).
    fn with_runtime(runtime: Option<PathBuf>) -> Podman {
        let guard = lock(&PODMAN_LOCK);
        require(
            "podman",
            &[
                ("podman", "podman"),
                ("conmon", "conmon"),
                ("script", "bsdutils"),
            ],
        );
        let host = HostDefaults::new(
            &[
                "/var/lib/containers",
                "/var/lib/containers/cache",
                "/run/containers",
                "/run/containers/networks",
                "/run/berth",
            ],
            &["/var/lib/containers/cache/blob-info-cache-v1.boltdb"],
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-podman-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["root", "runroot", "tmp", "net.d", "volumes"] {
            fs::create_dir_all(d.join(sub)).expect("podman dirs");
        }
        let p = d.display();
        // This VM's root lacks CAP_SYS_RESOURCE, so podman's default rlimits
        // (nofile 1048576, nproc 32768) fail with runc and crun too; lower
        // limits can always be set.
        fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_config_dir = "{p}/net.d"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{p}/events.log"
tmp_dir = "{p}/tmp"
lock_type = "file"
static_dir = "{p}/root/libpod"
volume_path = "{p}/volumes"
image_copy_tmp_dir = "{p}/tmp"
"#
            ),
        )
        .expect("containers.conf");
        fs::write(
            d.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{p}/runroot\"\ngraphroot = \"{p}/root\"\n"),
        )
        .expect("storage.conf");
        let berth = berth_copy(d);
        let pm = Podman {
            berth_root: PathBuf::from("/run/berth"),
            runtime: runtime.unwrap_or_else(|| berth.clone()),
            berth,
            parent: cgroup_parent(),
            _host: host,
            dir,
            _lock: guard,
        };
        let archive = pm.dir.path().join("image.tar");
        berth_testutil::write_image_archive(&archive, IMAGE, &["sh"]).expect("image archive");
        let mut load = pm.cmd(&["load", "-i"]);
        load.arg(&archive);
        let o = ok(load, pm.dir.path());
        assert!(o.stdout.contains(IMAGE), "podman load: {}", o.describe());
        pm
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args);
        c
    }

    /// `podman run <flags> IMAGE <argv>` in our cgroup parent.
    fn run_cmd(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut c = self.cmd(&["run", "--network", "none"]);
        c.arg("--cgroup-parent")
            .arg(format!("/{}", self.parent))
            .args(flags)
            .arg(IMAGE)
            .args(argv);
        c
    }

    fn run(&self, c: Command) -> Out {
        run(c, self.dir.path())
    }

    fn ok(&self, args: &[&str]) -> Out {
        ok(self.cmd(args), self.dir.path())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        let _ = run_quietly(self.cmd(&["rm", "--all", "--force", "--time", "0"]), &d);
        kill_processes_mentioning(&d);
        remove_cgroup_parent(&self.parent);
        unmount_below(&d);
    }
}

#[test]
fn podman_run_rm_reports_output_and_exit_code() {
    let pm = Podman::new();
    let cidfile = pm.dir.path().join("cid");
    let cid_arg = cidfile.to_str().expect("utf-8 temp path");
    let o = pm.run(pm.run_cmd(
        &["--rm", "--cidfile", cid_arg],
        &["sh", "-c", "echo hi; exit 7"],
    ));
    assert_eq!(o.code(), Some(7), "podman run: {}", o.describe());
    assert_eq!(o.stdout, "hi\n", "podman run: {}", o.describe());
    // --rm removed the container, and berth deleted its state (berth's root
    // is shared with other users of the default, so look up this id only).
    assert_eq!(pm.ok(&["ps", "--all", "--quiet"]).stdout.trim(), "");
    let id = fs::read_to_string(&cidfile).expect("podman wrote the cidfile");
    let s = berth(
        &pm.berth,
        &pm.berth_root,
        &["state", id.trim()],
        pm.dir.path(),
    );
    assert!(
        !s.status.success(),
        "berth still knows {id} after podman run --rm"
    );
}

#[test]
fn podman_detached_exec_stop_rm() {
    let pm = Podman::new();
    let script = "trap 'echo got-term; exit 42' TERM; echo started; while :; do sleep 0.1; done";
    let o = pm.run(pm.run_cmd(&["-d", "--name", "d1"], &["sh", "-c", script]));
    assert!(o.status.success(), "podman run -d: {}", o.describe());
    let id = o.stdout.trim().to_string();
    assert_eq!(
        id.len(),
        64,
        "podman run -d prints the container id: {}",
        o.describe()
    );
    wait_for(20, "the container to print 'started'", || {
        pm.ok(&["logs", "d1"]).stdout.contains("started")
    });
    // podman names berth's container after its own id.
    assert_eq!(
        berth_status(&pm.berth, &pm.berth_root, &id, pm.dir.path()),
        "running"
    );
    let inspect = pm.ok(&["inspect", "--format", "{{.State.Status}}", "d1"]);
    assert_eq!(inspect.stdout.trim(), "running");

    let e = pm.run(pm.cmd(&["exec", "d1", "sh", "-c", "echo from-exec $$; exit 5"]));
    assert_eq!(e.code(), Some(5), "podman exec: {}", e.describe());
    assert!(
        e.stdout.starts_with("from-exec "),
        "podman exec: {}",
        e.describe()
    );
    // The exec'd shell is not the container's init.
    assert_ne!(e.stdout.trim(), "from-exec 1");

    // exec -t: conmon passes berth a console socket for the exec process.
    let t = pm.run(under_pty(&pm.cmd(&[
        "exec",
        "-t",
        "d1",
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && echo exec-tty-ok; exit 6",
    ])));
    assert_eq!(t.code(), Some(6), "podman exec -t: {}", t.describe());
    assert!(
        t.stdout.contains("exec-tty-ok"),
        "podman exec -t: {}",
        t.describe()
    );

    // stop sends SIGTERM through berth kill; the trap's exit code comes back.
    pm.ok(&["stop", "--time", "20", "d1"]);
    let st = pm.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "d1",
    ]);
    assert_eq!(st.stdout.trim(), "exited 42");
    let logs = pm.ok(&["logs", "d1"]).stdout;
    assert!(logs.contains("got-term"), "logs: {logs}");

    pm.ok(&["rm", "d1"]);
    assert_eq!(pm.ok(&["ps", "--all", "--quiet"]).stdout.trim(), "");
    let s = berth(&pm.berth, &pm.berth_root, &["state", &id], pm.dir.path());
    assert!(
        !s.status.success(),
        "berth still knows {id} after podman rm"
    );
}

#[test]
fn podman_run_tty() {
    let pm = Podman::new();
    let c = pm.run_cmd(
        &["--rm", "-t"],
        &[
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo tty-ok; tty; exit 4",
        ],
    );
    let o = pm.run(under_pty(&c));
    assert_eq!(o.code(), Some(4), "podman run -t: {}", o.describe());
    assert!(
        o.stdout.contains("tty-ok"),
        "podman run -t: {}",
        o.describe()
    );
    // The terminal is a pty of the container's own devpts (the console
    // berth sent conmon over the socket), with line discipline: CRLF.
    assert!(
        o.stdout.contains("/dev/pts/0\r\n"),
        "podman run -t: {}",
        o.describe()
    );
}

/// What podman shows of a container, with the times taken out: `ps`'s
/// status ("Up", "Exited (43)"), command and names, and `inspect`'s state.
fn podman_view(pm: &Podman, name: &str) -> String {
    let ps = pm.ok(&[
        "ps",
        "--all",
        "--format",
        "{{.Names}}|{{.Status}}|{{.Command}}|{{.Image}}",
    ]);
    let ps: Vec<String> = ps
        .stdout
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split('|').map(String::from).collect();
            if let Some(st) = f.get_mut(1) {
                *st = match st.find(')') {
                    Some(i) if st.starts_with("Exited") => st[..=i].to_string(),
                    _ => st.split_whitespace().next().unwrap_or("").to_string(),
                };
            }
            f.join("|")
        })
        .collect();
    let inspect = pm.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} running={{.State.Running}} paused={{.State.Paused}} \
         oom={{.State.OOMKilled}} exit={{.State.ExitCode}} tty={{.Config.Tty}} \
         restarts={{.RestartCount}} pidset={{if .State.Pid}}yes{{else}}no{{end}}",
        name,
    ]);
    format!("{}\n{}", ps.join("\n"), inspect.stdout.trim())
}

/// `podman ps` and `inspect` say the same of a container run by berth as
/// of one run by runc, through a detached run with a terminal, an exec and
/// a stop (SIGTERM trapped, so the exit code is the program's).
#[test]
fn podman_ps_and_inspect_agree_with_runc_through_a_tty_run_and_stop() {
    let Some(runc) = find_tool("runc") else {
        eprintln!("skipping: no runc to compare with");
        return;
    };
    let mut views = Vec::new();
    for runtime in [None, Some(runc)] {
        let pm = Podman::with_runtime(runtime);
        let script = "trap 'exit 43' TERM; echo up; while :; do sleep 0.1; done";
        let o = pm.run(pm.run_cmd(&["-d", "-t", "--name", "t1"], &["sh", "-c", script]));
        assert!(o.status.success(), "podman run -d -t: {}", o.describe());
        wait_for(20, "the container to print 'up'", || {
            pm.ok(&["logs", "t1"]).stdout.contains("up")
        });
        let running = podman_view(&pm, "t1");
        let e = pm.run(pm.cmd(&["exec", "t1", "sh", "-c", "exit 3"]));
        assert_eq!(e.code(), Some(3), "podman exec: {}", e.describe());
        pm.ok(&["stop", "--time", "20", "t1"]);
        let stopped = podman_view(&pm, "t1");
        pm.ok(&["rm", "t1"]);
        views.push(format!("{running}\n--\n{stopped}"));
    }
    eprintln!("{}", views[0]);
    assert_eq!(views[0], views[1], "berth's view, then runc's");
    assert!(views[0].contains("Exited (43)"), "{}", views[0]);
}

// ------------------------------------------------------------- containerd

/// A private containerd (own root, state, sockets, opt dir; CRI off) with
/// `ctr` as its client in a namespace named like the cgroup parent, so
/// containers land in `/berth-test-<random>/<id>`.
///
/// Runtime: the `io.containerd.runc.v2` shim with berth as its runc. In
/// containerd 1.6 the runc options (BinaryName, Root) live in config.toml
/// only under the CRI plugin, which `ctr` bypasses; `ctr` sends the same
/// options to the shim with --runc-binary and --runc-root.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    berth: PathBuf,
    /// The shim's runc Root: berth's state lives in `<root>/<namespace>`.
    runc_root: PathBuf,
    ns: String,
    _host: HostDefaults,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Containerd {
    fn new() -> Containerd {
        let guard = lock(&CONTAINERD_LOCK);
        require(
            "containerd",
            &[
                ("containerd", "containerd"),
                ("ctr", "containerd"),
                ("containerd-shim-runc-v2", "containerd"),
                ("script", "bsdutils"),
            ],
        );
        // The shim's socket dir is fixed at /run/containerd/s in 1.6.
        let host = HostDefaults::new(&["/run/containerd", "/run/containerd/s"], &[]);
        let dir = tempfile::Builder::new()
            .prefix("berth-ctd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("fifo")).expect("fifo dir");
        fs::write(d.join("config.toml"), berth_testutil::containerd_config(d))
            .expect("config.toml");
        let log = fs::File::create(d.join("containerd.log")).expect("containerd.log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let berth = berth_copy(d);
        let ctd = Containerd {
            daemon,
            berth,
            runc_root: d.join("berth-state"),
            ns: cgroup_parent(),
            _host: host,
            dir,
            _lock: guard,
        };
        wait_for(20, "containerd to serve its socket", || {
            run(ctd.ctr(&["version"]), ctd.dir.path()).status.success()
        });
        let archive = ctd.dir.path().join("image.tar");
        berth_testutil::write_image_archive(&archive, IMAGE, &["sh"]).expect("image archive");
        let mut import = ctd.ctr(&["images", "import"]);
        import.arg(&archive);
        ctd.ok(import);
        let ls = ctd.ok(ctd.ctr(&["images", "list", "--quiet"]));
        assert!(
            ls.stdout.lines().any(|l| l == IMAGE),
            "ctr images: {}",
            ls.describe()
        );
        ctd
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        // native: plain copies, no overlay mounts, works on any /tmp.
        c.env("CONTAINERD_SNAPSHOTTER", "native")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", &self.ns])
            .args(args);
        c
    }

    /// `ctr run <flags> IMAGE ID <argv>` with berth as the shim's runc.
    fn ctr_run(&self, flags: &[&str], id: &str, argv: &[&str]) -> Command {
        let mut c = self.ctr(&["run"]);
        c.args(self.runtime_flags())
            .args(flags)
            .arg(IMAGE)
            .arg(id)
            .args(argv);
        c
    }

    fn runtime_flags(&self) -> Vec<OsString> {
        vec![
            "--runc-binary".into(),
            self.berth.clone().into(),
            "--runc-root".into(),
            self.runc_root.clone().into(),
            "--fifo-dir".into(),
            self.dir.path().join("fifo").into(),
        ]
    }

    /// `ctr task exec --exec-id EXEC <flags> ID <argv>`.
    fn ctr_exec(&self, flags: &[&str], id: &str, exec_id: &str, argv: &[&str]) -> Command {
        let mut c = self.ctr(&["task", "exec", "--exec-id", exec_id, "--fifo-dir"]);
        c.arg(self.dir.path().join("fifo"))
            .args(flags)
            .arg(id)
            .args(argv);
        c
    }

    fn berth_root(&self) -> PathBuf {
        self.runc_root.join(&self.ns)
    }

    fn run(&self, c: Command) -> Out {
        run(c, self.dir.path())
    }

    fn ok(&self, c: Command) -> Out {
        let what = format!("{c:?}");
        let o = run(c, self.dir.path());
        assert!(
            o.status.success(),
            "{what} failed: {}\n--- containerd log (tail):\n{}",
            o.describe(),
            self.log()
        );
        o
    }

    fn log(&self) -> String {
        let l = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let o = self.ok(self.ctr(&["task", "list"]));
        o.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        // Tasks first (their shims and containers), then the daemon.
        let list = |what: &str| {
            run_quietly(self.ctr(&[what, "list", "--quiet"]), &d)
                .map(|o| o.stdout)
                .unwrap_or_default()
        };
        for id in list("task")
            .lines()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let _ = run_quietly(self.ctr(&["task", "kill", "--signal", "SIGKILL", id]), &d);
            let _ = run_quietly(self.ctr(&["task", "delete", "--force", id]), &d);
        }
        for id in list("containers")
            .lines()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let _ = run_quietly(self.ctr(&["containers", "delete", id]), &d);
        }
        // SAFETY: plain syscall on the daemon we spawned.
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        kill_processes_mentioning(&d);
        remove_cgroup_parent(&self.ns);
        unmount_below(&d);
    }
}

#[test]
fn containerd_run_rm_reports_output_and_exit_code() {
    let ctd = Containerd::new();
    let o = ctd.run(ctd.ctr_run(&["--rm"], "c1", &["sh", "-c", "echo hi; exit 3"]));
    assert_eq!(o.code(), Some(3), "ctr run: {}", o.describe());
    assert_eq!(o.stdout, "hi\n", "ctr run: {}", o.describe());
    assert_eq!(ctd.task_status("c1"), None);
    let l = berth(
        &ctd.berth,
        &ctd.berth_root(),
        &["list", "--quiet"],
        ctd.dir.path(),
    );
    assert!(
        l.status.success() && l.stdout.trim().is_empty(),
        "berth list: {}",
        l.describe()
    );
}

#[test]
fn containerd_detached_exec_kill_delete() {
    let ctd = Containerd::new();
    let log = ctd.dir.path().join("d1.log");
    let script = "trap 'echo got-term; exit 42' TERM; echo started; while :; do sleep 0.1; done";
    let log_uri = format!("file://{}", log.display());
    ctd.ok(ctd.ctr_run(&["-d", "--log-uri", &log_uri], "d1", &["sh", "-c", script]));
    wait_for(20, "the task to print 'started'", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
    });
    assert_eq!(ctd.task_status("d1").as_deref(), Some("RUNNING"));
    // The shim ran berth: berth's state (in the shim's runc root, per
    // namespace) has the task.
    let root = ctd.berth_root();
    assert_eq!(
        berth_status(&ctd.berth, &root, "d1", ctd.dir.path()),
        "running"
    );

    let e = ctd.run(ctd.ctr_exec(&[], "d1", "e1", &["sh", "-c", "echo from-exec $$; exit 5"]));
    assert_eq!(e.code(), Some(5), "ctr task exec: {}", e.describe());
    assert!(
        e.stdout.starts_with("from-exec "),
        "ctr task exec: {}",
        e.describe()
    );
    assert_ne!(e.stdout.trim(), "from-exec 1");

    let t = ctd.run(under_pty(&ctd.ctr_exec(
        &["--tty"],
        "d1",
        "e2",
        &[
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo exec-tty-ok; exit 6",
        ],
    )));
    assert_eq!(t.code(), Some(6), "ctr task exec -t: {}", t.describe());
    assert!(
        t.stdout.contains("exec-tty-ok"),
        "ctr task exec -t: {}",
        t.describe()
    );

    // SIGTERM (ctr's default) reaches the init's trap through berth kill.
    ctd.ok(ctd.ctr(&["task", "kill", "d1"]));
    wait_for(20, "the task to stop", || {
        ctd.task_status("d1").as_deref() == Some("STOPPED")
    });
    assert!(fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("got-term"));
    // ctr reports a non-zero exit status when deleting the task.
    let del = ctd.ok(ctd.ctr(&["task", "delete", "d1"]));
    assert!(
        format!("{}{}", del.stdout, del.stderr).contains("exit code 42"),
        "ctr task delete: {}",
        del.describe()
    );
    assert_eq!(ctd.task_status("d1"), None);
    let s = berth(&ctd.berth, &root, &["state", "d1"], ctd.dir.path());
    assert!(
        !s.status.success(),
        "berth still knows d1 after ctr task delete"
    );
    ctd.ok(ctd.ctr(&["containers", "delete", "d1"]));
}

#[test]
fn containerd_run_tty() {
    let ctd = Containerd::new();
    let c = ctd.ctr_run(
        &["--rm", "--tty"],
        "t1",
        &["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; exit 4"],
    );
    let o = ctd.run(under_pty(&c));
    assert_eq!(o.code(), Some(4), "ctr run -t: {}", o.describe());
    assert!(o.stdout.contains("tty-ok"), "ctr run -t: {}", o.describe());
    assert_eq!(ctd.task_status("t1"), None);
}
