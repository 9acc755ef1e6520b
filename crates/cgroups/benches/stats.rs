//! What one stats reading costs: `Manager::stats` (in process) against
//! `berth events --stats <id>` and Debian's `runc events --stats <id>`.
//!
//! `cargo bench -p berth-cgroups --bench stats [-- N]` (root; N also from
//! `STATS_N`, default 200; warm-up rounds from `STATS_WARMUP`, default 5).
//! It starts one `sleep` container with berth and one with runc, each from
//! its own busybox bundle (`runc spec` defaults, no terminal) with a private
//! `--root`, both under a `berth-bench-<random>` cgroup parent, then times,
//! interleaved round by round:
//!
//! * `Manager::stats` on berth's container cgroup (the manager made once, as
//!   a daemon keeps it), and `Manager::new` + `stats` (what a one-shot
//!   reader does, mode detection included);
//! * `berth events --stats <id>` and `runc events --stats <id>`: spawn to
//!   reap, stdout read (one JSON line);
//! * `/bin/true`, spawned and reaped the same way: the floor of any CLI.
//!
//! The berth binary is `$BERTH_BIN`, else target/release/berth, else
//! target/debug/berth (build it first: `cargo build --release -p berth`);
//! runc is `$RUNC_BIN`, else /usr/sbin/runc, else runc on `$PATH`. It
//! prints min/p50/p90/p99/max and the ratios of medians, writes
//! target/bench/stats.json, and removes its containers and cgroups. It
//! asserts nothing.

use berth_cgroups::{normalize_path, Manager};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

type Result<T> = std::result::Result<T, String>;

#[derive(Default)]
struct Series {
    ns: Vec<u64>,
    failures: usize,
    first_error: Option<String>,
}

impl Series {
    fn push(&mut self, d: Duration) {
        self.ns.push(d.as_nanos() as u64);
    }

    fn fail(&mut self, e: String) {
        self.failures += 1;
        self.first_error.get_or_insert(e);
    }

    /// Nearest-rank percentile, in µs.
    fn pct(&self, p: f64) -> Option<f64> {
        let mut v = self.ns.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1] as f64 / 1e3)
    }

    fn to_json(&self) -> Value {
        json!({
            "count": self.ns.len(),
            "failures": self.failures,
            "first_error": self.first_error,
            "min_us": self.pct(0.0),
            "p50_us": self.pct(50.0),
            "p90_us": self.pct(90.0),
            "p99_us": self.pct(99.0),
            "max_us": self.pct(100.0),
        })
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn berth_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return Some(PathBuf::from(p));
    }
    ["release", "debug"]
        .iter()
        .map(|p| target_dir().join(p).join("berth"))
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
}

fn runc_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNC_BIN") {
        return Some(PathBuf::from(p));
    }
    let debian = PathBuf::from("/usr/sbin/runc");
    if debian.is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
}

fn version(bin: &Path) -> String {
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

/// Runs `bin args` to completion with stdout captured; the output if it
/// exited 0.
fn run(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let o = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(o.stdout)
}

/// A runtime with its private root, a bundle and one running container.
struct Container {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    id: String,
    cgroup: String,
}

impl Container {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--root", self.root.to_str().unwrap_or_default()];
        v.extend_from_slice(rest);
        v
    }

    /// `<rt> events --stats <id>`, checked to be one stats event.
    fn events_stats(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let out = run(&self.bin, &self.args(&["events", "--stats", &self.id]))?;
        let d = t0.elapsed();
        let ev: Value = serde_json::from_slice(&out)
            .map_err(|e| format!("{} events --stats: not JSON: {e}", self.name))?;
        if ev["type"] != "stats" {
            return Err(format!("{} events --stats: {ev}", self.name));
        }
        Ok(d)
    }
}

/// A busybox rootfs and `runc spec`'s config, running `args` in `cgroup`.
fn make_bundle(runc: &Path, dir: &Path, args: &[&str], cgroup: &str) -> Result<()> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::io::Error| format!("{what}: {err}")
    };
    let bin = dir.join("rootfs/bin");
    fs::create_dir_all(&bin).map_err(e("mkdir rootfs"))?;
    for d in ["proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(dir.join("rootfs").join(d)).map_err(e("mkdir rootfs"))?;
    }
    fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(e("copying /bin/busybox (apt-get install busybox-static)"))?;
    for a in ["sh", "sleep", "head", "tail"] {
        std::os::unix::fs::symlink("busybox", bin.join(a)).map_err(e("symlink"))?;
    }
    run(
        runc,
        &["spec", "--bundle", dir.to_str().unwrap_or_default()],
    )?;
    let f = dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&fs::read(&f).map_err(e("reading config.json"))?)
        .map_err(|x| x.to_string())?;
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!(args);
    c["linux"]["cgroupsPath"] = json!(cgroup);
    fs::write(
        &f,
        serde_json::to_vec_pretty(&c).map_err(|x| x.to_string())?,
    )
    .map_err(e("writing config.json"))
}

fn start(
    name: &'static str,
    bin: PathBuf,
    runc: &Path,
    base: &Path,
    parent: &str,
) -> Result<Container> {
    let root = base.join(format!("root-{name}"));
    let bundle = base.join(format!("bundle-{name}"));
    fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let cgroup = format!("/{parent}/{name}");
    // Something that holds memory, so the readings are not all zero.
    let workload = [
        "sh",
        "-c",
        "{ head -c 16777216 /dev/zero; sleep 100000; } | tail & sleep 100000",
    ];
    make_bundle(runc, &bundle, &workload, &cgroup)?;
    let c = Container {
        name,
        bin,
        root,
        bundle,
        id: format!("stats-{name}"),
        cgroup,
    };
    // Detached: stdio must not be a pipe the container would keep open.
    let st = Command::new(&c.bin)
        .args(c.args(&[
            "run",
            "-d",
            "--bundle",
            c.bundle.to_str().unwrap_or_default(),
            &c.id,
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("spawning {name}: {e}"))?;
    if !st.success() {
        let out = run(&c.bin, &c.args(&["state", &c.id])).unwrap_or_default();
        return Err(format!(
            "{name} run -d failed ({st}) {}",
            String::from_utf8_lossy(&out)
        ));
    }
    Ok(c)
}

fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking wait for any child.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

/// Deletes the containers and removes every directory under the cgroup
/// parent in every hierarchy, deepest first.
fn cleanup(containers: &[Container], parent: &str, base: &Path) {
    for c in containers {
        if let Err(e) = run(&c.bin, &c.args(&["delete", "--force", &c.id])) {
            eprintln!("warning: {e}");
        }
    }
    reap_orphans();
    let mut dirs = Vec::new();
    if let Ok(rd) = fs::read_dir(CGROUP_ROOT) {
        for e in rd.flatten() {
            collect_dirs(&e.path().join(parent), &mut dirs);
        }
    }
    collect_dirs(&Path::new(CGROUP_ROOT).join(parent), &mut dirs);
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dirs.dedup();
    for d in &dirs {
        let mut tries = 0;
        while let Err(e) = fs::remove_dir(d) {
            tries += 1;
            if !d.exists() {
                break;
            }
            if tries > 100 {
                eprintln!("warning: could not remove cgroup {}: {e}", d.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = fs::remove_dir_all(base);
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    if !d.is_dir() {
        return;
    }
    out.push(d.to_path_buf());
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

fn iterations() -> Result<(usize, usize)> {
    let env = |k: &str, d: usize| -> Result<usize> {
        match std::env::var(k) {
            Ok(v) => v.parse().map_err(|e| format!("{k}: {e}")),
            Err(_) => Ok(d),
        }
    };
    let mut n = env("STATS_N", 200)?;
    let warmup = env("STATS_WARMUP", 5)?;
    // cargo bench passes `--bench`; a bare number (after `--`) sets N.
    for a in std::env::args().skip(1) {
        if let Ok(v) = a.parse() {
            n = v;
        }
    }
    if n == 0 {
        return Err("N must be at least 1".into());
    }
    Ok((n, warmup))
}

const ROWS: [&str; 5] = [
    "Manager::stats",
    "Manager::new + stats",
    "berth events --stats",
    "runc events --stats",
    "spawn /bin/true",
];

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("stats: needs root (runs containers, makes cgroups); skipping");
        return;
    }
    let parent = format!("berth-bench-{}", random_suffix());
    let base = std::env::temp_dir().join(format!("{parent}-stats"));
    let mut containers = Vec::new();
    let r = bench(&parent, &base, &mut containers);
    cleanup(&containers, &parent, &base);
    if let Err(e) = r {
        eprintln!("stats: {e}");
        std::process::exit(1);
    }
}

fn bench(parent: &str, base: &Path, containers: &mut Vec<Container>) -> Result<()> {
    let (n, warmup) = iterations()?;
    // Detached inits are reparented to us, not to a pid 1 that may not reap.
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    let berth = berth_bin().ok_or("no berth binary: cargo build --release -p berth")?;
    let runc = runc_bin().ok_or("no runc (apt-get install runc)")?;
    fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    containers.push(start("berth", berth.clone(), &runc, base, parent)?);
    containers.push(start("runc", runc.clone(), &runc, base, parent)?);
    let (bc, rc) = (&containers[0], &containers[1]);
    let root = Path::new(CGROUP_ROOT);
    let path = normalize_path(&bc.cgroup).map_err(|e| e.to_string())?;
    let mgr = Manager::new(root, &path);
    let mode = format!("{:?}", mgr.mode());
    // Let the workload take its memory before the first reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mgr.stats().map_or(0, |s| s.memory.rss_bytes) < 16 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sample = mgr.stats().map_err(|e| e.to_string())?;
    println!("stats: N={n} warm-up={warmup}, cgroup mode {mode}, parent /{parent}");
    println!("  berth {} ({})", berth.display(), version(&berth));
    println!("  runc  {} ({})", runc.display(), version(&runc));
    println!(
        "  berth's container: memory {} KiB, rss {} KiB, {} pids",
        sample.memory.usage_bytes >> 10,
        sample.memory.rss_bytes >> 10,
        sample.pids.current
    );

    let mut series: [Series; 5] = Default::default();
    let truebin = Path::new("/bin/true");
    for i in 0..warmup + n {
        let keep = i >= warmup;
        let mut record = |k: usize, r: Result<Duration>| match r {
            Ok(d) if keep => series[k].push(d),
            Ok(_) => {}
            Err(e) => series[k].fail(e),
        };
        let t0 = Instant::now();
        let r = mgr.stats().map_err(|e| e.to_string());
        record(0, r.map(|_| t0.elapsed()));
        let t0 = Instant::now();
        let r = Manager::new(root, &path).stats().map_err(|e| e.to_string());
        record(1, r.map(|_| t0.elapsed()));
        record(2, bc.events_stats());
        record(3, rc.events_stats());
        let t0 = Instant::now();
        record(4, run(truebin, &[]).map(|_| t0.elapsed()));
    }
    report(&series, n, warmup, &mode, &berth, &runc)
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 1000.0 => format!("{:.2} ms", x / 1e3),
        Some(x) => format!("{x:.1} µs"),
        None => "-".into(),
    }
}

fn report(
    series: &[Series; 5],
    n: usize,
    warmup: usize,
    mode: &str,
    berth: &Path,
    runc: &Path,
) -> Result<()> {
    println!(
        "\none stats reading, wall time\n{:<22} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
        "", "n", "min", "p50", "p90", "p99", "max", "fail"
    );
    for (name, s) in ROWS.iter().zip(series) {
        println!(
            "{:<22} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5}",
            name,
            s.ns.len(),
            fmt_us(s.pct(0.0)),
            fmt_us(s.pct(50.0)),
            fmt_us(s.pct(90.0)),
            fmt_us(s.pct(99.0)),
            fmt_us(s.pct(100.0)),
            s.failures
        );
    }
    let p50 = |k: usize| series[k].pct(50.0);
    let ratio = |a: usize, b: usize| Some(p50(a)? / p50(b)?);
    let pairs = [
        ("runc_events_over_manager_stats", 3, 0),
        ("berth_events_over_manager_stats", 2, 0),
        ("runc_events_over_berth_events", 3, 2),
        ("berth_events_over_spawn_true", 2, 4),
        ("runc_events_over_spawn_true", 3, 4),
    ];
    println!("\nratios of medians");
    let mut ratios = serde_json::Map::new();
    for (key, a, b) in pairs {
        let r = ratio(a, b);
        println!(
            "  {:<22} / {:<22} {}",
            ROWS[a],
            ROWS[b],
            r.map_or("-".into(), |x| format!("{x:.1}x"))
        );
        ratios.insert(key.into(), json!(r));
    }
    for (name, s) in ROWS.iter().zip(series) {
        if let Some(e) = &s.first_error {
            println!("{name}: {} failure(s); first: {e}", s.failures);
        }
    }
    let mut rows = serde_json::Map::new();
    for (name, s) in ROWS.iter().zip(series) {
        rows.insert((*name).into(), s.to_json());
    }
    let doc = json!({
        "benchmark": "stats",
        "iterations": n,
        "warmup": warmup,
        "cgroup_mode": mode,
        "berth": {"bin": berth, "version": version(berth)},
        "runc": {"bin": runc, "version": version(runc)},
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "results": rows,
        "ratios_p50": ratios,
    });
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = dir.canonicalize().unwrap_or(dir).join("stats.json");
    fs::write(
        &out,
        serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    println!("\nwrote {}", out.display());
    Ok(())
}
