//! `bench cri`: CRI endpoints side by side. Per endpoint:
//!
//! * sequential: N pod lifecycles, each call timed (RunPodSandbox,
//!   CreateContainer, StartContainer, StopContainer, RemoveContainer,
//!   StopPodSandbox, RemovePodSandbox) and pod startup (the first three);
//! * concurrent: N lifecycles with C in flight, the same timings under load
//!   and the throughput;
//! * density: M pods started C at a time and kept running: pods per second,
//!   then the memory of the runtime's processes (the daemon plus the
//!   per-pod processes it started: shims, monitors) per running pod.
//!
//! Runtime processes are the daemon serving the socket plus processes that
//! appeared during the density phase, are outside the pods' cgroups, and
//! either descend from the daemon or were reparented to pid 1 and name the
//! socket or look like a shim/monitor/conmon.

use super::report::{Op, Report, Target};
use super::stats::Series;
use super::Common;
use crate::client::{channel, Cri};
use anyhow::{Context, Result};
use berth_cri_api::v1 as cri;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OPS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

#[derive(clap::Args)]
pub struct CriArgs {
    /// CRI endpoints, as URL or NAME=URL (repeatable; unix:///path.sock)
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<String>,
    /// Lifecycles in flight in the concurrent pass (1 skips it)
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Pods kept running at once for the density measurement (0 skips it;
    /// default: N)
    #[arg(long)]
    pub density: Option<usize>,
    /// The container image (must exist on each endpoint or be pullable)
    #[arg(long, default_value = "localhost/berth/busybox:latest")]
    pub image: String,
    /// Pods' cgroup parent (default /berthctl-bench-<random>, removed after)
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// Runtime handler for RunPodSandbox
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
    #[command(flatten)]
    pub common: Common,
}

struct Ctx {
    image: String,
    cgroup_parent: String,
    handler: String,
    logs: PathBuf,
    tag: String,
}

impl Ctx {
    fn pod_config(&self, i: usize) -> cri::PodSandboxConfig {
        let name = format!("bench-{}-{i}", self.tag);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                uid: format!("{name}-uid"),
                name,
                namespace: "berthctl-bench".into(),
                attempt: 0,
            }),
            log_directory: self.logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self, i: usize) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: format!("c{i}"),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("c{i}.log"),
            ..Default::default()
        }
    }
}

/// Starts pod `i` with one running container; returns (pod, ctr, timings).
async fn start_pod(c: &mut Cri, ctx: &Ctx, i: usize) -> Result<(String, String, [Duration; 3])> {
    let pcfg = ctx.pod_config(i);
    let t = Instant::now();
    let pod =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pcfg.clone()),
            runtime_handler: ctx.handler.clone(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let d0 = t.elapsed();
    let rest = async {
        let t = Instant::now();
        let ctr =
            c.rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctx.container_config(i)),
                sandbox_config: Some(pcfg),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        let d1 = t.elapsed();
        let t = Instant::now();
        c.rt.start_container(cri::StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .context("StartContainer")?;
        Ok::<_, anyhow::Error>((ctr, d1, t.elapsed()))
    }
    .await;
    match rest {
        Ok((ctr, d1, d2)) => Ok((pod, ctr, [d0, d1, d2])),
        Err(e) => {
            remove_pod(c, &pod).await;
            Err(e)
        }
    }
}

/// Stops and removes; returns the four timings.
async fn stop_pod(c: &mut Cri, pod: &str, ctr: &str) -> Result<[Duration; 4]> {
    let t = Instant::now();
    c.rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.into(),
        timeout: 0,
    })
    .await
    .context("StopContainer")?;
    let d0 = t.elapsed();
    let t = Instant::now();
    c.rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.into(),
    })
    .await
    .context("RemoveContainer")?;
    let d1 = t.elapsed();
    let t = Instant::now();
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .context("StopPodSandbox")?;
    let d2 = t.elapsed();
    let t = Instant::now();
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .context("RemovePodSandbox")?;
    Ok([d0, d1, d2, t.elapsed()])
}

/// Best effort, for failures and the end.
async fn remove_pod(c: &mut Cri, pod: &str) {
    let _ =
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await;
    let _ =
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await;
}

/// The seven call series plus pod startup.
#[derive(Default, Clone)]
struct Timings {
    ops: [Series; 7],
    startup: Series,
}

impl Timings {
    fn record(&mut self, r: &Result<[Duration; 7]>) {
        match r {
            Ok(d) => {
                for (s, d) in self.ops.iter_mut().zip(d) {
                    s.push(*d);
                }
                self.startup.push(d[0] + d[1] + d[2]);
            }
            Err(e) => {
                self.ops.iter_mut().for_each(|s| s.fail(e));
                self.startup.fail(e);
            }
        }
    }
}

async fn lifecycle(c: &mut Cri, ctx: &Ctx, i: usize) -> Result<[Duration; 7]> {
    let (pod, ctr, a) = start_pod(c, ctx, i).await?;
    match stop_pod(c, &pod, &ctr).await {
        Ok(b) => Ok([a[0], a[1], a[2], b[0], b[1], b[2], b[3]]),
        Err(e) => {
            remove_pod(c, &pod).await;
            Err(e)
        }
    }
}

/// Runs `count` jobs with `conc` in flight; each job gets its own client
/// (one connection each, as separate kubelet-like callers).
async fn concurrent<T, F, Fut>(
    target: &crate::client::Target,
    count: usize,
    conc: usize,
    f: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Cri, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (Cri, T)> + Send,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1).min(count.max(1)) {
        let c = Cri::connect(target).await?;
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let (c2, r) = f(c, i).await;
                c = c2;
                out.push(r);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    Ok(all)
}

/// Pid of the process that has the listening socket at `path` open.
fn daemon_pid(path: &str) -> Option<u32> {
    let net = std::fs::read_to_string("/proc/net/unix").ok()?;
    let inodes: HashSet<String> = net
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Flags 00010000 = __SO_ACCEPTCON: the listening socket.
            (f.len() >= 8 && f[7] == path && f[3] == "00010000").then(|| f[6].to_string())
        })
        .collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                let l = l.to_string_lossy();
                if let Some(ino) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if inodes.contains(ino) {
                        return Some(pid);
                    }
                }
            }
        }
    }
    None
}

fn pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match ppid(pid) {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// (RSS, PSS) in KiB from smaps_rollup.
fn mem_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn runtime_processes(
    daemon: u32,
    before: &HashSet<u32>,
    sock: &str,
    cgroup_parent: &str,
) -> Vec<u32> {
    let cg = cgroup_parent.trim_start_matches('/');
    pids()
        .into_iter()
        .filter(|p| !before.contains(p) && *p != daemon && *p != std::process::id())
        .filter(|p| {
            let cgroups = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
            if cgroups.contains(cg) {
                return false;
            }
            if descends_from(*p, daemon) {
                return true;
            }
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            ppid(*p) == Some(1)
                && (cmd.contains(sock)
                    || ["shim", "monitor", "conmon"]
                        .iter()
                        .any(|k| cmd.contains(k)))
        })
        .collect()
}

async fn density(
    target: &crate::client::Target,
    ctx: std::sync::Arc<Ctx>,
    m: usize,
    conc: usize,
) -> Result<Value> {
    let sock = crate::client::socket_path(&target.runtime)
        .unwrap_or_default()
        .to_string();
    let daemon = daemon_pid(&sock);
    let before = pids();
    let daemon_before = daemon.map(mem_kib).unwrap_or_default();
    let t0 = Instant::now();
    let cx = ctx.clone();
    let started = concurrent(target, m, conc, move |mut c, i| {
        let cx = cx.clone();
        async move {
            let r = start_pod(&mut c, &cx, 100_000 + i).await;
            (c, r)
        }
    })
    .await?;
    let wall = t0.elapsed();
    let ok: Vec<(String, String)> = started
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(p, c, _)| (p.clone(), c.clone())))
        .collect();
    let first_error = started
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
    // Let per-pod processes settle (lazy allocations, exited helpers).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let procs = daemon
        .map(|d| runtime_processes(d, &before, &sock, &ctx.cgroup_parent))
        .unwrap_or_default();
    let daemon_after = daemon.map(mem_kib).unwrap_or_default();
    let (mut rss, mut pss) = (daemon_after.0, daemon_after.1);
    for p in &procs {
        let (r, s) = mem_kib(*p);
        rss += r;
        pss += s;
    }
    // Tear down, also C at a time.
    let pods = std::sync::Arc::new(ok.clone());
    let n = ok.len();
    let t1 = Instant::now();
    concurrent(target, n, conc, move |mut c, i| {
        let pods = pods.clone();
        async move {
            let (p, ctr) = &pods[i];
            if stop_pod(&mut c, p, ctr).await.is_err() {
                remove_pod(&mut c, p).await;
            }
            (c, ())
        }
    })
    .await?;
    let teardown = t1.elapsed();
    let per = |v: u64| {
        if n > 0 {
            Some(v as f64 / n as f64)
        } else {
            None
        }
    };
    Ok(json!({
        "pods_requested": m,
        "pods_running": n,
        "first_error": first_error,
        "start_wall_s": wall.as_secs_f64(),
        "pods_per_second": if wall.as_secs_f64() > 0.0 { n as f64 / wall.as_secs_f64() } else { 0.0 },
        "teardown_wall_s": teardown.as_secs_f64(),
        "daemon_pid": daemon,
        "daemon_rss_kib_before": daemon_before.0,
        "daemon_pss_kib_before": daemon_before.1,
        "daemon_rss_kib_after": daemon_after.0,
        "runtime_processes": procs.len() + usize::from(daemon.is_some()),
        "runtime_rss_kib_total": rss,
        "runtime_pss_kib_total": pss,
        "rss_kib_per_pod": per(rss),
        "pss_kib_per_pod": per(pss),
        "pss_kib_per_pod_added": per(pss.saturating_sub(daemon_before.1)),
    }))
}

fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            super::oci::collect_dirs(&e.path().join(rel), &mut dirs);
        }
    }
    super::oci::collect_dirs(&Path::new("/sys/fs/cgroup").join(rel), &mut dirs);
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    dirs.dedup();
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

pub async fn run(a: CriArgs) -> Result<Report> {
    let n = a.common.iterations;
    if n == 0 {
        return Err(crate::coded(crate::EXIT_USAGE, "-n must be at least 1"));
    }
    let m = a.density.unwrap_or(n);
    let tag = berth_testutil::random_suffix();
    let own_parent = a.cgroup_parent.is_none();
    let parent = a
        .cgroup_parent
        .clone()
        .unwrap_or_else(|| format!("/berthctl-bench-{tag}"));
    let logs = tempfile::Builder::new()
        .prefix("berthctl-bench-logs-")
        .tempdir()?;
    let ctx = std::sync::Arc::new(Ctx {
        image: a.image.clone(),
        cgroup_parent: parent.clone(),
        handler: a.runtime_handler.clone(),
        logs: logs.path().to_path_buf(),
        tag: tag[..6].to_string(),
    });
    let mut targets = Vec::new();
    let mut results: Vec<(String, Timings, Option<Timings>)> = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut seen = HashMap::new();
    for spec in &a.endpoints {
        let (mut name, url) = super::named(spec, |_| String::new());
        let target = crate::client::Target {
            runtime: url.clone(),
            image: url.clone(),
            timeout: Duration::from_secs(10),
        };
        // Connect first, so a dead endpoint is skipped with its reason.
        let setup = async {
            channel(&url, target.timeout).await?;
            let mut c = Cri::connect(&target).await?;
            let v =
                c.rt.version(cri::VersionRequest {
                    version: "v1".into(),
                })
                .await?
                .into_inner();
            crate::cmd::images::ensure_image(&mut c, &ctx.image, &ctx.pod_config(0), false)
                .await
                .with_context(|| format!("image {} on {url}", ctx.image))?;
            Ok::<_, anyhow::Error>((c, v))
        }
        .await;
        let (mut c, v) = match setup {
            Ok(x) => x,
            Err(e) => {
                targets.push(Target {
                    name: if name.is_empty() { url.clone() } else { name },
                    what: url,
                    version: String::new(),
                    skipped: Some(crate::cmd::describe(&e)),
                });
                continue;
            }
        };
        if name.is_empty() {
            name = v.runtime_name.clone();
        }
        let k = seen.entry(name.clone()).or_insert(0);
        *k += 1;
        if *k > 1 {
            name = format!("{name}-{k}");
        }
        eprintln!(
            "bench cri: {name} ({url}): {} lifecycles sequentially",
            a.common.warmup + n
        );
        let mut seq = Timings::default();
        for i in 0..a.common.warmup + n {
            let r = lifecycle(&mut c, &ctx, i).await;
            if i >= a.common.warmup {
                seq.record(&r);
            }
        }
        let conc = if a.concurrency > 1 {
            eprintln!(
                "bench cri: {name}: {n} lifecycles, {} in flight",
                a.concurrency
            );
            let cx = ctx.clone();
            let t0 = Instant::now();
            let rs = concurrent(&target, n, a.concurrency, move |mut c, i| {
                let cx = cx.clone();
                async move {
                    let r = lifecycle(&mut c, &cx, 10_000 + i).await;
                    (c, r)
                }
            })
            .await?;
            let wall = t0.elapsed();
            let mut t = Timings::default();
            for r in &rs {
                t.record(r);
            }
            extra.insert(
                format!("{name}: concurrent"),
                json!({"concurrency": a.concurrency, "lifecycles": n, "wall_s": wall.as_secs_f64(),
                       "lifecycles_per_second": n as f64 / wall.as_secs_f64()}),
            );
            Some(t)
        } else {
            None
        };
        if m > 0 {
            eprintln!(
                "bench cri: {name}: density, {m} pods, {} at a time",
                a.concurrency.max(1)
            );
            let d = density(&target, ctx.clone(), m, a.concurrency.max(1)).await?;
            extra.insert(format!("{name}: density"), d);
        }
        targets.push(Target {
            name: name.clone(),
            what: url,
            version: format!(
                "{} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            ),
            skipped: None,
        });
        results.push((name, seq, conc));
    }
    if own_parent {
        remove_cgroup_parent(&parent);
    }
    let mut ops = Vec::new();
    let mut push = |label: String, pick: &dyn Fn(&Timings) -> Series, conc: bool| {
        let series: Vec<(String, Series)> = results
            .iter()
            .filter_map(|(n, s, c)| {
                let t = if conc { c.as_ref()? } else { s };
                Some((n.clone(), pick(t)))
            })
            .collect();
        if !series.is_empty() {
            ops.push(Op {
                name: label,
                unit: "ms",
                series,
            });
        }
    };
    push("pod startup".into(), &|t| t.startup.clone(), false);
    for (k, op) in OPS.iter().enumerate() {
        push(op.to_string(), &|t| t.ops[k].clone(), false);
    }
    if a.concurrency > 1 {
        let c = a.concurrency;
        push(format!("pod startup @{c}"), &|t| t.startup.clone(), true);
        for (k, op) in OPS.iter().enumerate() {
            push(format!("{op} @{c}"), &|t| t.ops[k].clone(), true);
        }
    }
    Ok(Report {
        kind: "cri",
        title: format!(
            "CRI endpoints: N={n}, concurrency {}, wall ms",
            a.concurrency
        ),
        params: json!({"n": n, "warmup": a.common.warmup, "concurrency": a.concurrency,
                       "density": m, "image": a.image, "cgroup_parent": parent}),
        baseline: a.common.baseline.clone(),
        targets,
        ops,
        extra: Value::Object(extra),
        out: a.common.out.clone(),
    })
}
