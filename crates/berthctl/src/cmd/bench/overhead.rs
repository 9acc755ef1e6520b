//! `bench overhead`: the same busybox workloads on the host and inside a
//! container of each OCI runtime. Only the work is timed: the script
//! prints `B` before and `E` after it, and the bench timestamps the two
//! lines as they arrive on a pipe, so container start and exit are left
//! out. Workloads: CPU (sha256 of zeros), a write with fsync, and many
//! small file writes; in the container they run in its rootfs's /tmp
//! (the bundle, on the same filesystem as the host run's directory).

use super::oci::{cleanup_host, ensure_hugetlb, find_berth, version_of, which, write_bundle, Host};
use super::report::{Op, Report, Target};
use super::stats::Series;
use super::Common;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct OverheadArgs {
    /// Runtime binaries, as PATH or NAME=PATH (repeatable; default: berth,
    /// crun, runc found on $PATH or next to berthctl)
    #[arg(long = "runtime")]
    pub runtimes: Vec<String>,
    /// MiB hashed by the CPU workload
    #[arg(long, default_value_t = 256)]
    pub cpu_mib: u32,
    /// MiB written (then fsync'd) by the IO workload
    #[arg(long, default_value_t = 32)]
    pub io_mib: u32,
    /// Files written by the small-file workload
    #[arg(long, default_value_t = 2000)]
    pub files: u32,
    #[command(flatten)]
    pub common: Common,
}

fn workloads(a: &OverheadArgs) -> Vec<(String, String)> {
    vec![
        (
            format!("cpu: sha256 of {} MiB", a.cpu_mib),
            format!("dd if=/dev/zero bs=1M count={} 2>/dev/null | sha256sum >/dev/null", a.cpu_mib),
        ),
        (
            format!("io: write+fsync {} MiB", a.io_mib),
            format!("dd if=/dev/zero of=$D/big bs=1M count={} conv=fsync 2>/dev/null; rm $D/big", a.io_mib),
        ),
        (
            format!("io: {} small files", a.files),
            format!(
                "mkdir $D/s; i=0; while [ $i -lt {} ]; do echo x > $D/s/$i; i=$((i+1)); done; rm -r $D/s",
                a.files
            ),
        ),
    ]
}

fn script(work: &str, dir: &str) -> String {
    format!("D={dir}; echo B; {work}; echo E")
}

/// Spawns `cmd`, returns the time between its `B` and `E` lines.
fn timed(mut cmd: Command) -> Result<Duration> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the workload")?;
    let out = child.stdout.take().context("no stdout")?;
    let mut b = None;
    let mut e = None;
    for line in BufReader::new(out).lines() {
        match line?.trim() {
            "B" => b = Some(Instant::now()),
            "E" => e = Some(Instant::now()),
            _ => {}
        }
    }
    let o = child.wait_with_output()?;
    match (b, e) {
        (Some(b), Some(e)) if o.status.success() => Ok(e - b),
        _ => bail!(
            "workload failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
    }
}

struct Rt {
    name: String,
    bin: PathBuf,
    root: tempfile::TempDir,
    bundles: Vec<tempfile::TempDir>,
}

pub fn run(a: OverheadArgs) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "bench overhead needs root; run it with sudo",
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
    let parent = format!("berthctl-bench-{}", berth_testutil::random_suffix());
    let mut host = Host::default();
    let r = bench(&a, &specs, &parent, &mut host);
    cleanup_host(&parent, &host);
    r
}

fn bench(
    a: &OverheadArgs,
    specs: &[(String, PathBuf)],
    parent: &str,
    host: &mut Host,
) -> Result<Report> {
    let work = workloads(a);
    let host_dir = tempfile::Builder::new()
        .prefix("berthctl-overhead-host-")
        .tempdir()?;
    let mut rts = Vec::new();
    let mut targets = vec![Target {
        name: "host".into(),
        what: "busybox sh on the host".into(),
        version: String::new(),
        skipped: None,
    }];
    for (name, bin) in specs {
        if name.contains("crun") {
            if let Err(e) = ensure_hugetlb(host) {
                eprintln!("note: {e:#}; crun may fail");
            }
        }
        let mut bundles = Vec::new();
        for (_, w) in &work {
            let b = tempfile::Builder::new()
                .prefix(&format!("berthctl-overhead-{name}-"))
                .tempdir()?;
            write_bundle(
                b.path(),
                name,
                &["sh", "-c", &script(w, "/tmp")],
                parent,
                true,
            )?;
            // The runtime's config makes the rootfs read-only; /tmp must be writable.
            let cfg_path = b.path().join("config.json");
            let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
            cfg["root"]["readonly"] = json!(false);
            std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
            bundles.push(b);
        }
        targets.push(Target {
            name: name.clone(),
            what: bin.display().to_string(),
            version: version_of(bin),
            skipped: None,
        });
        rts.push(Rt {
            name: name.clone(),
            bin: bin.clone(),
            root: tempfile::Builder::new()
                .prefix("berthctl-overhead-root-")
                .tempdir()?,
            bundles,
        });
    }
    let mut series: Vec<Vec<Series>> = vec![vec![Series::default(); 1 + rts.len()]; work.len()];
    let (n, warmup) = (a.common.iterations, a.common.warmup);
    eprintln!("bench overhead: N={n}, warm-up {warmup}");
    for i in 0..warmup + n {
        for (k, (_, w)) in work.iter().enumerate() {
            let mut c = Command::new(berth_testutil::BUSYBOX);
            c.args([
                "sh",
                "-c",
                &script(w, &host_dir.path().display().to_string()),
            ]);
            let r = timed(c);
            if i >= warmup {
                match r {
                    Ok(d) => series[k][0].push(d),
                    Err(e) => series[k][0].fail(&e),
                }
            }
            for (j, rt) in rts.iter().enumerate() {
                let id = format!("ov-{i}-{k}");
                let mut c = Command::new(&rt.bin);
                c.arg("--root")
                    .arg(rt.root.path())
                    .args(["run", "--bundle"])
                    .arg(rt.bundles[k].path())
                    .arg(&id);
                let r = timed(c);
                if r.is_err() {
                    let _ = Command::new(&rt.bin)
                        .arg("--root")
                        .arg(rt.root.path())
                        .args(["delete", "--force", &id])
                        .stderr(Stdio::null())
                        .status();
                }
                if i >= warmup {
                    match r {
                        Ok(d) => series[k][j + 1].push(d),
                        Err(e) => series[k][j + 1].fail(&e),
                    }
                }
            }
        }
    }
    let names: Vec<String> = std::iter::once("host".to_string())
        .chain(rts.iter().map(|r| r.name.clone()))
        .collect();
    let ops = work
        .iter()
        .zip(series)
        .map(|((label, _), ss)| Op {
            name: label.clone(),
            unit: "ms",
            series: names.iter().cloned().zip(ss).collect(),
        })
        .collect();
    Ok(Report {
        kind: "overhead",
        title: format!("Workload overhead: container vs host, N={n}, wall ms of the work only"),
        params: json!({"n": n, "warmup": warmup, "cpu_mib": a.cpu_mib, "io_mib": a.io_mib, "files": a.files}),
        baseline: Some(a.common.baseline.clone().unwrap_or_else(|| "host".into())),
        targets,
        ops,
        extra: serde_json::Value::Null,
        out: a.common.out.clone(),
    })
}
