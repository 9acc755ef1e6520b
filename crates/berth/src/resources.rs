//! `berth update` and `berth events`: changing a live container's limits and
//! streaming its stats and OOM events as runc does (one JSON object a line:
//! `{"type":"stats"|"oom","id":...,"data":{...}}`).

use anyhow::{anyhow, bail, Context as _, Result};
use berth_oci::container;
use berth_oci::state::{self, Root, Status};
use clap::Args;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// runc's `update` flags. Byte sizes take k/m/g/t suffixes (powers of 1024).
#[derive(Args, Clone, Default)]
pub struct UpdateArgs {
    /// A JSON file of linux.resources to apply ('-' reads standard input);
    /// the flags below override its values.
    #[arg(short, long)]
    resources: Option<String>,
    /// Block IO weight (10-1000).
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds per period (-1: unlimited).
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    cpu_quota: Option<i64>,
    /// CPU CFS burst in microseconds.
    #[arg(long = "cpu-burst")]
    cpu_burst: Option<u64>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", alias = "cpu-shares")]
    cpu_share: Option<u64>,
    /// Realtime period in microseconds.
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    /// Realtime runtime in microseconds.
    #[arg(long = "cpu-rt-runtime", allow_hyphen_values = true)]
    cpu_rt_runtime: Option<i64>,
    /// CPUs the container may use ("0-2,4").
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// CPU idle scheduling (0 or 1).
    #[arg(long = "cpu-idle")]
    cpu_idle: Option<i64>,
    /// Kernel memory limit (ignored by kernels since 5.16).
    #[arg(long = "kernel-memory", allow_hyphen_values = true)]
    kernel_memory: Option<String>,
    /// Kernel TCP buffer memory limit.
    #[arg(long = "kernel-memory-tcp", allow_hyphen_values = true)]
    kernel_memory_tcp: Option<String>,
    /// Memory limit (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Maximum number of processes (-1: unlimited).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Intel RDT: not supported.
    #[arg(long = "l3-cache-schema", hide = true)]
    l3_cache_schema: Option<String>,
    /// Intel RDT: not supported.
    #[arg(long = "mem-bw-schema", hide = true)]
    mem_bw_schema: Option<String>,
}

/// "512k", "64m", "1g", "-1", "1024" → bytes.
pub fn parse_bytes(flag: &str, s: &str) -> Result<i64> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let lower = t.to_ascii_lowercase();
    let num = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = lower[num.len()..]
        .trim_end_matches('b')
        .trim_end_matches('i');
    let mul: i64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("--{flag}: {s:?} is not a size (like 512k, 64m, 1g)"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("--{flag}: {s:?} is not a size (like 512k, 64m, 1g)"))?;
    if n < 0.0 {
        bail!("--{flag}: {s:?} is negative (-1 means unlimited)");
    }
    Ok((n * mul as f64) as i64)
}

/// Go-style durations as runc takes them: "5s", "250ms", "1m30s", "1.5s".
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || anyhow!("--interval: {s:?} is not a duration (like 5s or 250ms)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// The resources an `update` asks for: the file's, then the flags'.
fn resources_from(a: &UpdateArgs) -> Result<(String, LinuxResources)> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("--l3-cache-schema/--mem-bw-schema: Intel RDT is not supported");
    }
    let (file, mut v) = match &a.resources {
        Some(p) => {
            let mut data = Vec::new();
            if p == "-" {
                std::io::stdin().read_to_end(&mut data)?;
            } else {
                data = std::fs::read(p).with_context(|| format!("reading {p}"))?;
            }
            let name = if p == "-" {
                "(stdin)".to_string()
            } else {
                p.clone()
            };
            // Parse once for errors naming the field, keep the JSON to merge flags.
            let _: LinuxResources = berth_oci::config::parse_json(&name, &data)?;
            (name, serde_json::from_slice::<Value>(&data)?)
        }
        None => ("update".to_string(), json!({})),
    };
    let mut set = |section: &str, key: &str, val: Value| {
        let obj = v.as_object_mut().expect("resources are an object");
        let sec = obj
            .entry(section.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !sec.is_object() {
            *sec = Value::Object(Map::new());
        }
        sec.as_object_mut()
            .expect("just made an object")
            .insert(key.to_string(), val);
    };
    if let Some(w) = a.blkio_weight {
        set("blockIO", "weight", json!(w));
    }
    if let Some(x) = a.cpu_period {
        set("cpu", "period", json!(x));
    }
    if let Some(x) = a.cpu_quota {
        set("cpu", "quota", json!(x));
    }
    if let Some(x) = a.cpu_burst {
        set("cpu", "burst", json!(x));
    }
    if let Some(x) = a.cpu_share {
        set("cpu", "shares", json!(x));
    }
    if let Some(x) = a.cpu_rt_period {
        set("cpu", "realtimePeriod", json!(x));
    }
    if let Some(x) = a.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", json!(x));
    }
    if let Some(x) = &a.cpuset_cpus {
        set("cpu", "cpus", json!(x));
    }
    if let Some(x) = &a.cpuset_mems {
        set("cpu", "mems", json!(x));
    }
    if let Some(x) = a.cpu_idle {
        set("cpu", "idle", json!(x));
    }
    for (flag, key, val) in [
        ("kernel-memory", "kernel", &a.kernel_memory),
        ("kernel-memory-tcp", "kernelTCP", &a.kernel_memory_tcp),
        ("memory", "limit", &a.memory),
        ("memory-reservation", "reservation", &a.memory_reservation),
        ("memory-swap", "swap", &a.memory_swap),
    ] {
        if let Some(s) = val {
            set("memory", key, json!(parse_bytes(flag, s)?));
        }
    }
    if let Some(x) = a.pids_limit {
        set("pids", "limit", json!(x));
    }
    let r: LinuxResources =
        berth_oci::config::parse_json(&file, serde_json::to_vec(&v)?.as_slice())?;
    Ok((file, r))
}

pub fn update(root: &Root, id: &str, a: &UpdateArgs) -> Result<i32> {
    root.load(id)?;
    let (file, r) = resources_from(a)?;
    container::update(root, id, &file, &r)?;
    Ok(0)
}

/// runc's stats layout (the parts berth measures), plus OOM kills.
fn stats_json(s: &berth_cgroups::stats::Stats) -> Value {
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage_total_ns,
                "user": s.cpu.usage_user_ns,
                "kernel": s.cpu.usage_system_ns,
            },
            "throttling": {
                "periods": s.cpu.periods,
                "throttledPeriods": s.cpu.throttled_periods,
                "throttledTime": s.cpu.throttled_time_ns,
            },
        },
        "memory": {
            "cache": s.memory.cache_bytes,
            "usage": {
                "usage": s.memory.usage_bytes,
                "max": s.memory.max_usage_bytes,
                "limit": s.memory.limit_bytes,
                "failcnt": s.memory.failcnt,
            },
            "swap": { "usage": s.memory.swap_usage_bytes },
            "workingSet": s.memory.working_set_bytes,
            "rss": s.memory.rss_bytes,
            "pageFaults": s.memory.page_faults,
            "majorPageFaults": s.memory.major_page_faults,
            "oomKills": s.memory.oom_kill_count,
        },
        "pids": { "current": s.pids.current, "limit": s.pids.limit },
        "blkio": {
            "readBytes": s.io.read_bytes,
            "writeBytes": s.io.write_bytes,
            "readOps": s.io.read_ops,
            "writeOps": s.io.write_ops,
        },
    })
}

fn emit(id: &str, typ: &str, data: Option<Value>) -> Result<()> {
    let mut ev = json!({"type": typ, "id": id});
    if let Some(d) = data {
        ev["data"] = d;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ev}")?;
    out.flush()?;
    Ok(())
}

/// Whether the container still exists and runs (or is created/paused).
fn alive(root: &Root, id: &str) -> bool {
    match root.load(id) {
        Ok(rec) => state::status_of(root, &rec) != Status::Stopped,
        Err(_) => false,
    }
}

/// `berth events`: with `--stats` one stats event; otherwise stats every
/// interval and OOM events as they happen, until the container stops.
pub fn events(root: &Root, id: &str, once: bool, interval: &str) -> Result<i32> {
    let interval = parse_duration(interval)?;
    if interval.is_zero() {
        bail!("--interval must be greater than zero");
    }
    let mgr = container::cgroup_of(root, id)?;
    if once {
        emit(id, "stats", Some(stats_json(&mgr.stats()?)))?;
        return Ok(0);
    }
    // Without a memory controller there are only stats.
    let mut watcher = berth_cgroups::oom::OomWatcher::new(&mgr).ok();
    // Status is checked at least this often, so the stream ends soon after
    // the container does.
    let status_every = Duration::from_millis(200);
    let mut next_stats = Instant::now() + interval;
    loop {
        let now = Instant::now();
        let wait = next_stats.saturating_duration_since(now).min(status_every);
        let wake = match watcher.as_mut() {
            Some(w) => w.wait(Some(wait))?,
            None => {
                std::thread::sleep(wait);
                Default::default()
            }
        };
        for _ in 0..wake.ooms {
            emit(id, "oom", None)?;
        }
        if wake.gone || !alive(root, id) {
            // A kill that raced with the exit is still reported.
            if let Some(w) = watcher.as_mut() {
                for _ in 0..w.check().map(|w| w.ooms).unwrap_or(0) {
                    emit(id, "oom", None)?;
                }
            }
            return Ok(0);
        }
        if Instant::now() >= next_stats {
            if let Ok(s) = mgr.stats() {
                emit(id, "stats", Some(stats_json(&s)))?;
            }
            next_stats += interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("memory", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("memory", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("memory", "512kb").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("memory", "-1").unwrap(), -1);
        assert_eq!(parse_bytes("memory", "1000").unwrap(), 1000);
        assert!(parse_bytes("memory", "12q").is_err());
        assert!(parse_bytes("memory", "-5").is_err());
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
