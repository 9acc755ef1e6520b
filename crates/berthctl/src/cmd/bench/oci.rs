//! `bench oci`: OCI runtime binaries side by side. Each gets a private
//! `--root` and busybox bundles built locally (`runc spec` defaults, no
//! terminal, the same default seccomp profile unless `--no-seccomp`), with
//! cgroups under `berthctl-bench-<random>`. Iterations are interleaved
//! across runtimes so drift hits all alike. Measured: `create`, `start`,
//! `kill+wait` (SIGKILL, then a pidfd until the init is gone), `delete` of
//! a sleeping container, and a whole `run` of /bin/true.

use super::report::{Op, Report, Target};
use super::stats::Series;
use super::Common;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A runtime invocation that takes longer is killed and counted as failed.
const TIMEOUT: Duration = Duration::from_secs(30);

const PHASES: [&str; 4] = ["create", "start", "kill+wait", "delete"];

#[derive(clap::Args)]
pub struct OciArgs {
    /// Runtime binaries, as PATH or NAME=PATH (repeatable; default: berth,
    /// crun, runc, youki found on $PATH or next to berthctl)
    #[arg(long = "runtime")]
    pub runtimes: Vec<String>,
    /// Leave seccomp out of the configs
    #[arg(long)]
    pub no_seccomp: bool,
    #[command(flatten)]
    pub common: Common,
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` exits; false on timeout.
fn pidfd_wait(pidfd: &OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            return Ok(false);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: signalling through a pidfd cannot hit a recycled pid.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            0,
            0,
        );
    }
}

/// Runs `bin args` to completion; wall time from spawn to reap.
fn invoke(bin: &Path, args: &[&str]) -> Result<Duration> {
    // stderr to an anonymous file: a detached container inherits it, and a
    // pipe would need draining.
    let mut err = tempfile::tempfile()?;
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id() as i32;
    let pidfd = pidfd_open(pid).context("pidfd_open")?;
    let timed_out = !pidfd_wait(&pidfd, TIMEOUT)?;
    if timed_out {
        pidfd_kill(&pidfd);
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waitpid");
        }
    }
    let wall = t0.elapsed();
    let mut stderr = String::new();
    err.rewind()?;
    err.read_to_string(&mut stderr)?;
    if timed_out {
        bail!(
            "{} {} timed out after {TIMEOUT:?}: {}",
            bin.display(),
            args.join(" "),
            stderr.trim()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} {} failed (wait status {status:#x}): {}",
            bin.display(),
            args.join(" "),
            stderr.trim()
        );
    }
    Ok(wall)
}

/// Reaps exited orphans reparented to us (we are a subreaper).
fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for any child.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

struct Runtime {
    name: String,
    bin: PathBuf,
    version: String,
    root: tempfile::TempDir,
    /// Bundles running /bin/true and `sleep 1000`.
    bundle_true: tempfile::TempDir,
    bundle_sleep: tempfile::TempDir,
    skipped: Option<String>,
    run: Series,
    phases: [Series; 4],
}

impl Runtime {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--root", self.root.path().to_str().unwrap_or_default()];
        v.extend_from_slice(rest);
        v
    }

    fn force_delete(&self, id: &str) {
        let _ = invoke(&self.bin, &self.args(&["delete", "--force", id]));
        reap_orphans();
    }

    fn run_once(&self, id: &str) -> Result<Duration> {
        let b = self.bundle_true.path().to_str().unwrap_or_default();
        let r = invoke(&self.bin, &self.args(&["run", "--bundle", b, id]));
        reap_orphans();
        if r.is_err() {
            self.force_delete(id);
        }
        r
    }

    fn phases_once(&self, id: &str) -> Result<[Duration; 4]> {
        let r = self.phases_inner(id);
        reap_orphans();
        if r.is_err() {
            self.force_delete(id);
        }
        r
    }

    fn phases_inner(&self, id: &str) -> Result<[Duration; 4]> {
        let b = self.bundle_sleep.path().to_str().unwrap_or_default();
        let pid_file = self.root.path().join(format!("{id}.pid"));
        let pf = pid_file.to_str().unwrap_or_default();
        let c = invoke(
            &self.bin,
            &self.args(&["create", "--bundle", b, "--pid-file", pf, id]),
        )
        .context("create")?;
        let pid: i32 = fs::read_to_string(&pid_file)
            .context("reading the pid file")?
            .trim()
            .parse()
            .context("parsing the pid file")?;
        let _ = fs::remove_file(&pid_file);
        let pidfd = pidfd_open(pid).context("pidfd_open on the container's init")?;
        let s = invoke(&self.bin, &self.args(&["start", id])).context("start")?;
        let t0 = Instant::now();
        invoke(&self.bin, &self.args(&["kill", id, "KILL"])).context("kill")?;
        if !pidfd_wait(&pidfd, TIMEOUT)? {
            bail!("container init {pid} still running {TIMEOUT:?} after SIGKILL");
        }
        let k = t0.elapsed();
        let mut st = 0;
        // SAFETY: non-blocking; ECHILD if it is not our child.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        let d = invoke(&self.bin, &self.args(&["delete", id])).context("delete")?;
        Ok([c, s, k, d])
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// berth next to berthctl (a cargo build puts both in one dir), else $PATH.
pub fn find_berth() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("berth")))
        .filter(|p| p.is_file())
        .or_else(|| which("berth"))
}

fn is_mountpoint(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

const HUGETLB: &str = "/sys/fs/cgroup/hugetlb";

/// What the bench changed on the host and must undo.
#[derive(Default)]
pub struct Host {
    mounted_hugetlb: bool,
    made_hugetlb_dir: bool,
}

/// Debian's crun on a cgroup v1 hybrid host only runs with the hugetlb v1
/// hierarchy mounted: mount it if nobody has, and remember it is ours.
pub fn ensure_hugetlb(host: &mut Host) -> Result<()> {
    if !Path::new("/sys/fs/cgroup/memory").is_dir() || is_mountpoint(HUGETLB) {
        return Ok(());
    }
    if !Path::new(HUGETLB).exists() {
        fs::create_dir(HUGETLB).context("mkdir the hugetlb mount point")?;
        host.made_hugetlb_dir = true;
    }
    let st = Command::new("mount")
        .args(["-t", "cgroup", "-o", "hugetlb", "hugetlb", HUGETLB])
        .status()?;
    if !st.success() {
        bail!("mount -t cgroup -o hugetlb failed ({st})");
    }
    host.mounted_hugetlb = true;
    Ok(())
}

/// Removes our cgroup parent everywhere, deepest first; undoes our mount.
pub fn cleanup_host(parent: &str, host: &Host) {
    let mut dirs = Vec::new();
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            collect_dirs(&e.path().join(parent), &mut dirs);
        }
    }
    collect_dirs(&Path::new("/sys/fs/cgroup").join(parent), &mut dirs);
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dirs.dedup();
    for d in &dirs {
        let _ = fs::remove_dir(d);
    }
    if host.mounted_hugetlb {
        // SAFETY: unmounting the mount this process made.
        if unsafe { libc::umount(c"/sys/fs/cgroup/hugetlb".as_ptr()) } == 0 && host.made_hugetlb_dir
        {
            let _ = fs::remove_dir(HUGETLB);
        }
    }
}

pub fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    if !d.is_dir() {
        return;
    }
    out.push(d.to_path_buf());
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

pub fn write_bundle(
    dir: &Path,
    name: &str,
    args: &[&str],
    parent: &str,
    seccomp: bool,
) -> Result<()> {
    berth_testutil::build_rootfs(&dir.join("rootfs"))?;
    let mut config = berth_testutil::runc_spec(args);
    if name != "berth" {
        // Debian's crun 1.8 rejects newer ociVersions.
        config["ociVersion"] = json!("1.0.2");
    }
    if seccomp {
        let caps: Vec<String> = config["process"]["capabilities"]["bounding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        config["linux"]["seccomp"] =
            serde_json::to_value(berth_oci::seccomp_default::profile(&caps))?;
    }
    config["linux"]["cgroupsPath"] = json!(format!("/{parent}/{name}"));
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

pub fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

pub fn run(a: OciArgs) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "bench oci needs root (it creates namespaces and cgroups); run it with sudo",
        ));
    }
    if a.common.iterations == 0 {
        return Err(crate::coded(crate::EXIT_USAGE, "-n must be at least 1"));
    }
    let mut specs: Vec<(String, PathBuf)> = Vec::new();
    if a.runtimes.is_empty() {
        for (n, p) in [
            ("berth", find_berth()),
            ("crun", which("crun")),
            ("runc", which("runc")),
            ("youki", which("youki")),
        ] {
            if let Some(p) = p {
                specs.push((n.into(), p));
            }
        }
    } else {
        for r in &a.runtimes {
            let (n, p) = super::named(r, |p| {
                Path::new(p)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.to_string())
            });
            let p = if p.contains('/') {
                Some(PathBuf::from(&p))
            } else {
                which(&p)
            };
            match p.filter(|p| p.is_file()) {
                Some(p) => specs.push((n, p)),
                None => {
                    return Err(crate::coded(
                        crate::EXIT_USAGE,
                        format!("--runtime {r}: no such binary (give a path, or NAME=PATH)"),
                    ))
                }
            }
        }
    }
    if specs.is_empty() {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "no OCI runtime found: pass --runtime PATH (berth, crun, runc, youki)",
        ));
    }
    let parent = format!("berthctl-bench-{}", berth_testutil::random_suffix());
    let mut host = Host::default();
    let r = bench(&a, &specs, &parent, &mut host);
    cleanup_host(&parent, &host);
    r
}

fn bench(
    a: &OciArgs,
    specs: &[(String, PathBuf)],
    parent: &str,
    host: &mut Host,
) -> Result<Report> {
    // Detached inits are reparented to us, not to a pid 1 that may not reap.
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut rts = Vec::new();
    for (name, bin) in specs {
        if name.contains("crun") {
            if let Err(e) = ensure_hugetlb(host) {
                eprintln!("note: {e:#}; crun may fail");
            }
        }
        let tmp = |k: &str| {
            tempfile::Builder::new()
                .prefix(&format!("berthctl-bench-{k}-{name}-"))
                .tempdir()
        };
        let rt = Runtime {
            name: name.clone(),
            version: version_of(bin),
            bin: bin.clone(),
            root: tmp("root")?,
            bundle_true: tmp("true")?,
            bundle_sleep: tmp("sleep")?,
            skipped: None,
            run: Series::default(),
            phases: Default::default(),
        };
        let seccomp = !a.no_seccomp;
        write_bundle(rt.bundle_true.path(), name, &["/bin/true"], parent, seccomp)?;
        write_bundle(
            rt.bundle_sleep.path(),
            name,
            &["sleep", "1000"],
            parent,
            seccomp,
        )?;
        rts.push(rt);
    }
    let (n, warmup) = (a.common.iterations, a.common.warmup.max(1));
    eprintln!("bench oci: N={n}, warm-up {warmup}, cgroups under /{parent}");
    for i in 0..warmup + n {
        for rt in rts.iter_mut().filter(|r| r.skipped.is_none()) {
            let warm = i < warmup;
            let run = rt.run_once(&format!("run-{i}"));
            let ph = rt.phases_once(&format!("ph-{i}"));
            match (run, ph) {
                (Err(e), _) | (_, Err(e)) if i == 0 => {
                    eprintln!("skipping {}: first iteration failed: {e:#}", rt.name);
                    rt.skipped = Some(format!("first iteration failed: {e:#}"));
                }
                (run, ph) if !warm => {
                    match run {
                        Ok(d) => rt.run.push(d),
                        Err(e) => rt.run.fail(&e),
                    }
                    match ph {
                        Ok(ds) => {
                            for (s, d) in rt.phases.iter_mut().zip(ds) {
                                s.push(d);
                            }
                        }
                        Err(e) => rt.phases.iter_mut().for_each(|s| s.fail(&e)),
                    }
                }
                _ => {}
            }
        }
    }
    let ran: Vec<&Runtime> = rts.iter().filter(|r| r.skipped.is_none()).collect();
    let mut ops = vec![Op {
        name: "run /bin/true".into(),
        unit: "ms",
        series: ran
            .iter()
            .map(|r| (r.name.clone(), r.run.clone()))
            .collect(),
    }];
    for (k, p) in PHASES.iter().enumerate() {
        ops.push(Op {
            name: p.to_string(),
            unit: "ms",
            series: ran
                .iter()
                .map(|r| (r.name.clone(), r.phases[k].clone()))
                .collect(),
        });
    }
    Ok(Report {
        kind: "oci",
        title: format!("OCI runtimes: N={n}, wall ms"),
        params: json!({"n": n, "warmup": warmup, "seccomp": !a.no_seccomp, "cgroup_parent": parent}),
        baseline: a.common.baseline.clone(),
        targets: rts
            .iter()
            .map(|r| Target {
                name: r.name.clone(),
                what: r.bin.display().to_string(),
                version: r.version.clone(),
                skipped: r.skipped.clone(),
            })
            .collect(),
        ops,
        extra: serde_json::Value::Null,
        out: a.common.out.clone(),
    })
}
