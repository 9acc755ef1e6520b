//! OCI start benchmark: berth against Debian's crun and runc.
//!
//! `cargo bench -p berth --bench oci_start [-- N]` (or `OCI_START_N=N`,
//! default 100; `OCI_START_WARMUP`, default 3). Each runtime gets its own
//! private `--root` and a busybox bundle running `/bin/true` (the `runc spec`
//! config without a terminal; crun and runc get ociVersion 1.0.2 because
//! Debian's crun 1.8 rejects newer ones). Every config carries the same
//! `linux.seccomp`, berth's built-in default profile for the config's
//! capabilities (what the CRI daemon applies as RuntimeDefault), and every
//! run creates the container's cgroup, as a Kubernetes start does
//! (`OCI_START_SECCOMP=0` leaves seccomp out). Iterations are interleaved
//! (berth, crun, runc, berth, ...) so drift hits all runtimes alike.
//!
//! Two passes, each with uncounted warm-up runs:
//! * `run`: wall time of a whole `<rt> --root R run --bundle B id`;
//! * phases: `create`, `start`, `wait` (until the container's init exits,
//!   seen through a pidfd, so no polling interval is measured) and `delete`.
//!
//! Peak RSS is `ru_maxrss` from `wait4` on the runtime process: the maximum
//! over that process and the descendants it waited for (so the container's
//! init counts for `run` but not for a detached `create`).
//!
//! The berth binary is the one cargo built for this bench
//! (`CARGO_BIN_EXE_berth`, i.e. target/release/berth), or `$BERTH_BIN`.
//! crun and runc are looked up on `$PATH` (`$CRUN_BIN`, `$RUNC_BIN`).
//! Results go to target/bench/oci_start.json. Numbers only: nothing about
//! speed is asserted.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A runtime invocation that takes longer than this is killed and counted as
/// failed, so a hung runtime cannot hang the benchmark.
const TIMEOUT: Duration = Duration::from_secs(30);

const PHASES: [&str; 4] = ["create", "start", "wait", "delete"];

/// One measured invocation.
struct Sample {
    wall: Duration,
    /// ru_maxrss in KiB (0 for the `wait` phase, which runs no runtime).
    maxrss_kib: i64,
}

/// Samples of one measured quantity plus failures seen while taking them.
#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    failures: usize,
    first_error: Option<String>,
}

impl Series {
    fn fail(&mut self, e: &anyhow::Error) {
        self.failures += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.wall.as_secs_f64() * 1e3)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Nearest-rank percentile in ms.
    fn pct(&self, p: f64) -> Option<f64> {
        let v = self.sorted_ms();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }

    fn peak_rss_kib(&self) -> i64 {
        self.samples.iter().map(|s| s.maxrss_kib).max().unwrap_or(0)
    }

    fn to_json(&self) -> Value {
        let ms = self.sorted_ms();
        json!({
            "count": ms.len(),
            "failures": self.failures,
            "first_error": self.first_error,
            "min_ms": self.pct(0.0),
            "p50_ms": self.pct(50.0),
            "p90_ms": self.pct(90.0),
            "p99_ms": self.pct(99.0),
            "max_ms": self.pct(100.0),
            "peak_rss_kib": self.peak_rss_kib(),
            "samples_ms": self.samples.iter().map(|s| s.wall.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        })
    }
}

struct Runtime {
    name: &'static str,
    bin: PathBuf,
    version: String,
    /// Private state root (`--root`).
    root: tempfile::TempDir,
    /// Bundle dir (config.json + rootfs).
    bundle: tempfile::TempDir,
    /// Why the runtime is left out of a pass, if it is.
    skip_run: Option<String>,
    skip_phases: Option<String>,
    run: Series,
    phases: [Series; 4],
}

/// What one runtime invocation did.
struct Outcome {
    wall: Duration,
    maxrss_kib: i64,
    status: i32,
    stderr: String,
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` has exited (readable pidfd), up to
/// `timeout`. Returns false on timeout.
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

/// Runs `bin args`, timing from just before spawn to the reap, and returns
/// its wall time, ru_maxrss, wait status and stderr.
fn invoke(bin: &Path, args: &[&str]) -> Result<Outcome> {
    // stderr goes to an anonymous file, not a pipe: a detached container
    // inherits it, and a pipe would also need draining while we wait.
    let mut err = tempfile::tempfile()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id() as i32;
    // Not reaped yet, so the pid is still ours to open.
    let pidfd = pidfd_open(pid).context("pidfd_open")?;
    let mut timed_out = false;
    if !pidfd_wait(&pidfd, TIMEOUT)? {
        pidfd_kill(&pidfd);
        timed_out = true;
    }
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let wall = t0.elapsed();
    let mut stderr = String::new();
    err.rewind()?;
    err.read_to_string(&mut stderr)?;
    if timed_out {
        bail!(
            "timed out after {TIMEOUT:?} and was killed; stderr: {}",
            stderr.trim()
        );
    }
    Ok(Outcome {
        wall,
        maxrss_kib: ru.ru_maxrss,
        status,
        stderr,
    })
}

/// Like [`invoke`] but an error unless the process exited 0.
fn invoke_ok(bin: &Path, args: &[&str]) -> Result<Outcome> {
    let o = invoke(bin, args)?;
    if !libc::WIFEXITED(o.status) || libc::WEXITSTATUS(o.status) != 0 {
        bail!(
            "{} {} failed (wait status {:#x}): {}",
            bin.display(),
            args.join(" "),
            o.status,
            o.stderr.trim()
        );
    }
    Ok(o)
}

/// Reaps exited orphans that were reparented to us (we are a subreaper, so
/// detached container inits land here instead of the VM's pid 1).
fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for any child; none is being waited for
        // elsewhere at this point.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

impl Runtime {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--root", self.root.path().to_str().unwrap_or_default()];
        v.extend_from_slice(rest);
        v
    }

    fn bundle_str(&self) -> &str {
        self.bundle.path().to_str().unwrap_or_default()
    }

    /// Best effort: removes a container a failed iteration left behind.
    fn force_delete(&self, id: &str) {
        let _ = invoke(&self.bin, &self.args(&["delete", "--force", id]));
        reap_orphans();
    }

    /// One whole `run` of /bin/true.
    fn run_once(&self, id: &str) -> Result<Sample> {
        let r = invoke_ok(
            &self.bin,
            &self.args(&["run", "--bundle", self.bundle_str(), id]),
        );
        reap_orphans();
        match r {
            Ok(o) => Ok(Sample {
                wall: o.wall,
                maxrss_kib: o.maxrss_kib,
            }),
            Err(e) => {
                self.force_delete(id);
                Err(e)
            }
        }
    }

    /// create, start, wait for exit, delete: one sample per phase.
    fn phases_once(&self, id: &str) -> Result<[Sample; 4]> {
        let r = self.phases_inner(id);
        reap_orphans();
        if r.is_err() {
            self.force_delete(id);
        }
        r
    }

    fn phases_inner(&self, id: &str) -> Result<[Sample; 4]> {
        let pid_file = self.root.path().join(format!("{id}.pid"));
        let pf = pid_file.to_str().unwrap_or_default();
        let c = invoke_ok(
            &self.bin,
            &self.args(&[
                "create",
                "--bundle",
                self.bundle_str(),
                "--pid-file",
                pf,
                id,
            ]),
        )
        .context("create")?;
        let pid: i32 = fs::read_to_string(&pid_file)
            .context("reading pid file")?
            .trim()
            .parse()
            .context("parsing pid file")?;
        let _ = fs::remove_file(&pid_file);
        // Opened before start, while the init is surely alive and waiting.
        let pidfd = pidfd_open(pid).context("pidfd_open on container init")?;
        let s = invoke_ok(&self.bin, &self.args(&["start", id])).context("start")?;
        let t0 = Instant::now();
        if !pidfd_wait(&pidfd, TIMEOUT)? {
            bail!("container init {pid} still running after {TIMEOUT:?}");
        }
        let w = t0.elapsed();
        // Reap it if it was reparented to us, so delete sees no live process.
        let mut st = 0;
        // SAFETY: non-blocking wait; ECHILD if it is not our child.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        let d = invoke_ok(&self.bin, &self.args(&["delete", id])).context("delete")?;
        Ok([
            Sample {
                wall: c.wall,
                maxrss_kib: c.maxrss_kib,
            },
            Sample {
                wall: s.wall,
                maxrss_kib: s.maxrss_kib,
            },
            Sample {
                wall: w,
                maxrss_kib: 0,
            },
            Sample {
                wall: d.wall,
                maxrss_kib: d.maxrss_kib,
            },
        ])
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn iterations() -> Result<(usize, usize)> {
    let mut n: usize = match std::env::var("OCI_START_N") {
        Ok(v) => v.parse().context("OCI_START_N")?,
        Err(_) => 100,
    };
    let warmup: usize = match std::env::var("OCI_START_WARMUP") {
        Ok(v) => v.parse().context("OCI_START_WARMUP")?,
        Err(_) => 3,
    };
    // cargo bench passes `--bench`; a bare number (after `--`) sets N.
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" | "--iterations" => n = args.next().context("-n needs a value")?.parse()?,
            _ => {
                if let Ok(v) = a.parse() {
                    n = v;
                }
            }
        }
    }
    if n == 0 {
        bail!("N must be at least 1");
    }
    Ok((n, warmup))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn is_mountpoint(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

const HUGETLB: &str = "/sys/fs/cgroup/hugetlb";

/// What the benchmark set up on the host and must undo.
#[derive(Default)]
struct HostState {
    mounted_hugetlb: bool,
    made_hugetlb_dir: bool,
}

/// Debian's crun on this cgroup v1 hybrid host only runs with the hugetlb v1
/// hierarchy mounted; mount it if nobody has, and remember that it is ours.
fn ensure_hugetlb(host: &mut HostState) -> Result<()> {
    if is_mountpoint(HUGETLB) {
        return Ok(());
    }
    if !Path::new(HUGETLB).exists() {
        fs::create_dir(HUGETLB).context("mkdir hugetlb mount point")?;
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

/// Removes our cgroup parent from every hierarchy, deepest first, then
/// undoes the hugetlb mount if it was ours.
fn cleanup_host(parent: &str, host: &HostState) {
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
        if let Err(e) = fs::remove_dir(d) {
            if d.exists() {
                eprintln!("warning: could not remove cgroup {}: {e}", d.display());
            }
        }
    }
    if host.mounted_hugetlb {
        // SAFETY: unmounting the mount this process made.
        if unsafe { libc::umount(c"/sys/fs/cgroup/hugetlb".as_ptr()) } != 0 {
            eprintln!(
                "warning: umount {HUGETLB}: {}",
                std::io::Error::last_os_error()
            );
        } else if host.made_hugetlb_dir {
            let _ = fs::remove_dir(HUGETLB);
        }
    }
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
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

fn setup_runtime(name: &'static str, bin: PathBuf, parent: &str) -> Result<Runtime> {
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let root = tempfile::Builder::new()
        .prefix(&format!("berth-bench-root-{name}-"))
        .tempdir()?;
    let bundle = tempfile::Builder::new()
        .prefix(&format!("berth-bench-bundle-{name}-"))
        .tempdir()?;
    berth_testutil::build_rootfs(&bundle.path().join("rootfs"))?;
    let mut config = berth_testutil::runc_spec(&["/bin/true"]);
    if name != "berth" {
        config["ociVersion"] = json!("1.0.2");
    }
    if std::env::var("OCI_START_SECCOMP").as_deref() != Ok("0") {
        let caps: Vec<String> = config["process"]["capabilities"]["bounding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        config["linux"]["seccomp"] =
            serde_json::to_value(berth_oci::seccomp_default::profile(&caps))?;
    }
    // One cgroup per runtime under our parent; containers run one at a time.
    config["linux"]["cgroupsPath"] = json!(format!("/{parent}/{name}"));
    fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(Runtime {
        name,
        bin,
        version,
        root,
        bundle,
        skip_run: None,
        skip_phases: None,
        run: Series::default(),
        phases: Default::default(),
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn print_table(title: &str, rows: &[(&str, &Series)]) {
    println!("\n{title}");
    println!(
        "{:<16} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5}",
        "runtime", "n", "min", "p50", "p90", "p99", "max", "rss MiB", "fail"
    );
    for (name, s) in rows {
        let rss = if s.peak_rss_kib() > 0 {
            format!("{:.1}", s.peak_rss_kib() as f64 / 1024.0)
        } else {
            "-".into()
        };
        println!(
            "{:<16} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5}",
            name,
            s.samples.len(),
            fmt_ms(s.pct(0.0)),
            fmt_ms(s.pct(50.0)),
            fmt_ms(s.pct(90.0)),
            fmt_ms(s.pct(99.0)),
            fmt_ms(s.pct(100.0)),
            rss,
            s.failures
        );
    }
}

/// berth's median over another runtime's (below 1 means berth is faster).
fn ratio(berth: &Series, other: &Series) -> Option<f64> {
    Some(berth.pct(50.0)? / other.pct(50.0)?)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("oci_start: needs root (creates namespaces and cgroups); skipping");
        return;
    }
    let parent = format!("berth-bench-{}", berth_testutil::random_suffix());
    let mut host = HostState::default();
    let r = bench(&parent, &mut host);
    cleanup_host(&parent, &host);
    if let Err(e) = r {
        eprintln!("oci_start: {e:#}");
        std::process::exit(1);
    }
}

fn bench(parent: &str, host: &mut HostState) -> Result<()> {
    let (n, warmup) = iterations()?;
    // Detached container inits are reparented to us rather than to the VM's
    // pid 1, which may not reap them.
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }

    let berth_bin = std::env::var_os("BERTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let candidates: [(&'static str, Option<PathBuf>); 3] = [
        ("berth", Some(berth_bin)),
        (
            "crun",
            std::env::var_os("CRUN_BIN")
                .map(PathBuf::from)
                .or_else(|| which("crun")),
        ),
        (
            "runc",
            std::env::var_os("RUNC_BIN")
                .map(PathBuf::from)
                .or_else(|| which("runc")),
        ),
    ];

    let mut rts = Vec::new();
    for (name, bin) in candidates {
        match bin {
            Some(b) if b.is_file() => {
                if name == "crun" {
                    if let Err(e) = ensure_hugetlb(host) {
                        println!("note: {e:#}; crun may fail");
                    }
                }
                rts.push(setup_runtime(name, b, parent)?);
            }
            Some(b) => println!("skipping {name}: {} does not exist", b.display()),
            None => println!("skipping {name}: not found on PATH"),
        }
    }
    println!("oci_start: N={n} warm-up={warmup}, cgroup parent /{parent}");
    for rt in &rts {
        println!("  {:<6} {} ({})", rt.name, rt.bin.display(), rt.version);
    }

    // Pass 1: whole `run`. The first warm-up run (there is always one)
    // decides whether a runtime takes part at all.
    let warmup = warmup.max(1);
    for i in 0..warmup + n {
        for rt in rts.iter_mut().filter(|r| r.skip_run.is_none()) {
            let warm = i < warmup;
            let id = if warm {
                format!("warm-{i}")
            } else {
                format!("id-{}", i - warmup)
            };
            match rt.run_once(&id) {
                Ok(s) if !warm => rt.run.samples.push(s),
                Ok(_) => {}
                Err(e) if i == 0 => {
                    println!("skipping {} (run): first run failed: {e:#}", rt.name);
                    rt.skip_run = Some(format!("first run failed: {e:#}"));
                }
                Err(e) => rt.run.fail(&e),
            }
        }
    }

    // Pass 2: the same split into phases.
    for i in 0..warmup + n {
        for rt in rts.iter_mut().filter(|r| r.skip_phases.is_none()) {
            let warm = i < warmup;
            let id = if warm {
                format!("pwarm-{i}")
            } else {
                format!("ph-{}", i - warmup)
            };
            match rt.phases_once(&id) {
                Ok(s) if !warm => {
                    for (series, sample) in rt.phases.iter_mut().zip(s) {
                        series.samples.push(sample);
                    }
                }
                Ok(_) => {}
                Err(e) if i == 0 => {
                    println!("skipping {} (phases): first cycle failed: {e:#}", rt.name);
                    rt.skip_phases = Some(format!("first cycle failed: {e:#}"));
                }
                Err(e) => {
                    for series in rt.phases.iter_mut() {
                        series.fail(&e);
                    }
                }
            }
        }
    }

    report(&rts, n, warmup)
}

fn report(rts: &[Runtime], n: usize, warmup: usize) -> Result<()> {
    let ran: Vec<&Runtime> = rts.iter().filter(|r| r.skip_run.is_none()).collect();
    print_table(
        "run of /bin/true, wall ms (rss = peak ru_maxrss of runtime + waited children)",
        &ran.iter().map(|r| (r.name, &r.run)).collect::<Vec<_>>(),
    );
    let phased: Vec<&Runtime> = rts.iter().filter(|r| r.skip_phases.is_none()).collect();
    let mut rows = Vec::new();
    let labels: Vec<Vec<String>> = phased
        .iter()
        .map(|r| PHASES.iter().map(|p| format!("{} {p}", r.name)).collect())
        .collect();
    for (pi, _) in PHASES.iter().enumerate() {
        for (ri, r) in phased.iter().enumerate() {
            rows.push((labels[ri][pi].as_str(), &r.phases[pi]));
        }
    }
    print_table(
        "phases, wall ms (wait = start returned -> init exited; no runtime process)",
        &rows,
    );

    let berth = rts.iter().find(|r| r.name == "berth");
    let mut ratios = serde_json::Map::new();
    if let Some(b) = berth {
        println!("\nberth p50 / other p50 (below 1: berth faster)");
        for other in rts.iter().filter(|r| r.name != "berth") {
            let mut line = format!(
                "  vs {:<5} run {}",
                other.name,
                fmt_ratio(ratio_if(b, other, None))
            );
            let mut o = serde_json::Map::new();
            o.insert("run".into(), json!(ratio_if(b, other, None)));
            for (pi, p) in PHASES.iter().enumerate() {
                let v = ratio_if(b, other, Some(pi));
                line.push_str(&format!("  {p} {}", fmt_ratio(v)));
                o.insert((*p).into(), json!(v));
            }
            println!("{line}");
            ratios.insert(format!("berth_vs_{}", other.name), Value::Object(o));
        }
    }
    for r in rts {
        for (pass, s) in [("run", &r.run)]
            .into_iter()
            .chain(PHASES.iter().copied().zip(r.phases.iter()))
        {
            if let Some(e) = &s.first_error {
                println!("{} {pass}: {} failure(s); first: {e}", r.name, s.failures);
            }
        }
    }

    let mut runtimes = serde_json::Map::new();
    for r in rts {
        let mut phases = serde_json::Map::new();
        for (p, s) in PHASES.iter().zip(r.phases.iter()) {
            phases.insert((*p).into(), s.to_json());
        }
        runtimes.insert(
            r.name.into(),
            json!({
                "bin": r.bin,
                "version": r.version,
                "skipped_run": r.skip_run,
                "skipped_phases": r.skip_phases,
                "run": if r.skip_run.is_none() { r.run.to_json() } else { Value::Null },
                "phases": if r.skip_phases.is_none() { Value::Object(phases) } else { Value::Null },
            }),
        );
    }
    let doc = json!({
        "benchmark": "oci_start",
        "iterations": n,
        "warmup": warmup,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "runtimes": runtimes,
        "ratios_p50": ratios,
    });
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let out = dir.canonicalize().unwrap_or(dir).join("oci_start.json");
    fs::write(&out, serde_json::to_vec_pretty(&doc)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

/// Ratio of medians for the run pass (`None`) or a phase, when both
/// runtimes took part in that pass.
fn ratio_if(b: &Runtime, o: &Runtime, phase: Option<usize>) -> Option<f64> {
    match phase {
        None if b.skip_run.is_none() && o.skip_run.is_none() => ratio(&b.run, &o.run),
        Some(i) if b.skip_phases.is_none() && o.skip_phases.is_none() => {
            ratio(&b.phases[i], &o.phases[i])
        }
        _ => None,
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}
