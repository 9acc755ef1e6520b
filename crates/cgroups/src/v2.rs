//! cgroup v2: the unified hierarchy, one directory per container.
//!
//! `linux.resources` is shaped after v1; values are converted to the v2 files
//! as the runtime spec's cgroup v2 notes and the kernel's cgroup-v2.rst
//! describe (and as crun documents in its conversion table):
//!
//! | OCI | v2 file | conversion |
//! | --- | --- | --- |
//! | cpu.shares | cpu.weight | 1 + ((shares - 2) * 9999) / 262142 |
//! | cpu.quota, cpu.period | cpu.max | "quota period"; -1 → "max" |
//! | cpu.burst, cpu.idle | cpu.max.burst, cpu.idle | as is |
//! | cpu.cpus, cpu.mems | cpuset.cpus, cpuset.mems | as is |
//! | memory.limit | memory.max | -1 → "max" |
//! | memory.reservation | memory.low | -1 → "max" |
//! | memory.swap | memory.swap.max | swap - limit (OCI's swap is memory+swap) |
//! | pids.limit | pids.max | -1 → "max" |
//! | blockIO.weight | io.bfq.weight as is, else io.weight = 1 + (w - 10) * 9999 / 990 |
//! | blockIO.throttle* | io.max | "major:minor rbps=… wbps=… riops=… wiops=…" |
//! | hugepageLimits | hugetlb.<size>.max | as is |
//! | rdma | rdma.max | "dev hca_handle=… hca_object=…" |
//! | devices | an eBPF program | see `devices_bpf` |
//! | unified | the named files | written last, so they win |
//!
//! Settings without a v2 counterpart (memory.kernel, kernelTCP, swappiness,
//! disableOOMKiller, network classID/priorities) are ignored, as runc and
//! crun do on v2: the kernel accounts kernel memory in memory.max, and
//! network classification is done with eBPF by the network plugin.

use crate::resources::{effective_device_rules, field_err, page_size_bytes, set};
use crate::stats::Stats;
use crate::{devices_bpf, Error, Manager, Result};
use oci_spec::runtime::{LinuxResources, LinuxThrottleDevice};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// OCI cpu.shares (v1, 2..=262144, default 1024) to cpu.weight (1..=10000,
/// default 100), mapping the ends of one range onto the other.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// blkio.weight (10..=1000) to io.weight (1..=10000), the same way.
pub fn blkio_to_io_weight(w: u64) -> u64 {
    let w = w.clamp(10, 1000);
    1 + ((w - 10) * 9999) / 990
}

/// memory.swap.max from OCI's memory+swap total; None leaves the file alone.
pub fn swap_max(limit: Option<i64>, swap: Option<i64>) -> Result<Option<String>> {
    match (swap, limit) {
        (None | Some(0), _) => Ok(None),
        (Some(-1), _) => Ok(Some("max".into())),
        (Some(s), Some(l)) if l > 0 => {
            if s < l {
                return Err(field_err(
                    "memory.swap",
                    format!("{s} is below memory.limit {l} (swap is the memory+swap total)"),
                ));
            }
            Ok(Some((s - l).to_string()))
        }
        (Some(_), _) => Err(field_err(
            "memory.swap",
            "a memory+swap limit needs a memory limit",
        )),
    }
}

fn limit_str(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Writes `linux.resources` into the container's v2 directory, converting
/// OCI (v1-shaped) values to v2 files where needed.
pub fn apply(m: &Manager, r: &LinuxResources) -> Result<()> {
    let d = m
        .dirs()
        .first()
        .ok_or_else(|| Error::Other("no cgroup directory".into()))?;
    let d = d.as_path();
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            set(
                d,
                "cpu.weight",
                &shares_to_weight(s).to_string(),
                "cpu.shares",
            )?;
        }
        let (q, p) = (c.quota().unwrap_or(0), c.period().unwrap_or(0));
        if q != 0 || p != 0 {
            // "max" keeps the period the kernel already has when none is given.
            let period = if p != 0 {
                p
            } else {
                fs::read_to_string(d.join("cpu.max"))
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or(100_000)
            };
            let quota = if q > 0 { q.to_string() } else { "max".into() };
            set(d, "cpu.max", &format!("{quota} {period}"), "cpu.quota")?;
        }
        if let Some(b) = c.burst() {
            set(d, "cpu.max.burst", &b.to_string(), "cpu.burst")?;
        }
        if let Some(i) = c.idle() {
            set(d, "cpu.idle", &i.to_string(), "cpu.idle")?;
        }
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(field_err(
                "cpu.realtimeRuntime",
                "realtime scheduling budgets do not exist on cgroup v2",
            ));
        }
        if let Some(s) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            set(d, "cpuset.cpus", s, "cpu.cpus")?;
        }
        if let Some(s) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            set(d, "cpuset.mems", s, "cpu.mems")?;
        }
    }
    if let Some(mem) = r.memory() {
        // Swap first when lowering, memory.max first when raising, is v1's
        // ordering problem; v2's files are independent.
        if let Some(l) = mem.limit().filter(|l| *l != 0) {
            set(d, "memory.max", &limit_str(l), "memory.limit")?;
        }
        if let Some(v) = mem.reservation().filter(|v| *v != 0) {
            set(d, "memory.low", &limit_str(v), "memory.reservation")?;
        }
        if let Some(v) = swap_max(mem.limit(), mem.swap())? {
            if d.join("memory.swap.max").exists() {
                set(d, "memory.swap.max", &v, "memory.swap")?;
            } else if v != "max" {
                return Err(field_err(
                    "memory.swap",
                    "this kernel has no swap accounting (memory.swap.max)",
                ));
            }
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() != 0 {
            set(d, "pids.max", &limit_str(p.limit()), "pids.limit")?;
        }
    }
    if let Some(b) = r.block_io() {
        apply_io(d, b)?;
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("hugepageLimits[{i}]");
        let size = page_size_bytes(h.page_size())
            .ok_or_else(|| field_err(&field, format!("bad pageSize {:?}", h.page_size())))?;
        let name = if size >= 1 << 30 {
            format!("{}GB", size >> 30)
        } else if size >= 1 << 20 {
            format!("{}MB", size >> 20)
        } else {
            format!("{}KB", size >> 10)
        };
        set(
            d,
            &format!("hugetlb.{name}.max"),
            &limit_str(h.limit()),
            &format!("{field}.limit"),
        )?;
    }
    for (dev, lim) in r.rdma().iter().flatten() {
        let mut v = dev.clone();
        if let Some(h) = lim.hca_handles() {
            v += &format!(" hca_handle={h}");
        }
        if let Some(o) = lim.hca_objects() {
            v += &format!(" hca_object={o}");
        }
        set(d, "rdma.max", &v, &format!("rdma.{dev}"))?;
    }
    if r.devices().is_some() {
        apply_devices(d, r)?;
    }
    if let Some(u) = r.unified() {
        // Sorted, so a failure is reproducible and names the same key.
        for (k, v) in u.iter().collect::<BTreeMap<_, _>>() {
            let field = format!("unified.{k}");
            if k.contains('/') || k == "." || k == ".." || k.is_empty() {
                return Err(field_err(&field, "not a file name"));
            }
            // Membership and tree shape stay the runtime's (also checked by
            // `resources::validate`; repeated for callers that skip it).
            if matches!(
                k.as_str(),
                "cgroup.procs" | "cgroup.threads" | "cgroup.subtree_control" | "cgroup.kill"
            ) {
                return Err(field_err(&field, "managed by the runtime"));
            }
            if !d.join(k).exists() {
                return Err(field_err(
                    &field,
                    format!("no such file in {} (controller not enabled?)", d.display()),
                ));
            }
            set(d, k, v, &field)?;
        }
    }
    Ok(())
}

fn apply_io(d: &Path, b: &oci_spec::runtime::LinuxBlockIo) -> Result<()> {
    let bfq = d.join("io.bfq.weight").exists();
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        if bfq {
            // BFQ takes blkio's own scale (1..=1000).
            set(d, "io.bfq.weight", &w.to_string(), "blockIO.weight")?;
        } else {
            let v = blkio_to_io_weight(w as u64).to_string();
            set(d, "io.weight", &format!("default {v}"), "blockIO.weight")?;
        }
    }
    for (i, wd) in b.weight_device().iter().flatten().enumerate() {
        let Some(w) = wd.weight() else { continue };
        let field = format!("blockIO.weightDevice[{i}]");
        let dev = format!("{}:{}", wd.major(), wd.minor());
        if bfq {
            set(d, "io.bfq.weight", &format!("{dev} {w}"), &field)?;
        } else {
            let v = blkio_to_io_weight(w as u64);
            set(d, "io.weight", &format!("{dev} {v}"), &field)?;
        }
    }
    let groups: [(&str, &str, &Option<Vec<LinuxThrottleDevice>>); 4] = [
        (
            "rbps",
            "throttleReadBpsDevice",
            b.throttle_read_bps_device(),
        ),
        (
            "wbps",
            "throttleWriteBpsDevice",
            b.throttle_write_bps_device(),
        ),
        (
            "riops",
            "throttleReadIOPSDevice",
            b.throttle_read_iops_device(),
        ),
        (
            "wiops",
            "throttleWriteIOPSDevice",
            b.throttle_write_iops_device(),
        ),
    ];
    for (key, name, list) in groups {
        for (i, t) in list.iter().flatten().enumerate() {
            // A zero rate removes the limit, as in v1.
            let rate = if t.rate() == 0 {
                "max".to_string()
            } else {
                t.rate().to_string()
            };
            let line = format!("{}:{} {key}={rate}", t.major(), t.minor());
            set(d, "io.max", &line, &format!("blockIO.{name}[{i}]"))?;
        }
    }
    Ok(())
}

fn apply_devices(d: &Path, r: &LinuxResources) -> Result<()> {
    let prog = devices_bpf::compile(&effective_device_rules(Some(r)))?;
    let dir =
        fs::File::open(d).map_err(|e| field_err("devices", format!("{}: {e}", d.display())))?;
    devices_bpf::attach(dir.as_raw_fd(), &prog).map_err(|e| field_err("devices", e.to_string()))
}

fn read(p: &Path) -> Option<String> {
    match fs::read_to_string(p) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => None,
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    let s = read(p)?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// The value of `key` in a flat-keyed file ("key value" lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads accounting from the container's v2 directory.
pub fn stats(m: &Manager) -> Result<Stats> {
    let mut s = Stats::default();
    let Some(d) = m.dirs().first() else {
        return Ok(s);
    };
    if let Some(t) = read(&d.join("cpu.stat")) {
        s.cpu.usage_total_ns = keyed(&t, "usage_usec").unwrap_or(0) * 1000;
        s.cpu.usage_user_ns = keyed(&t, "user_usec").unwrap_or(0) * 1000;
        s.cpu.usage_system_ns = keyed(&t, "system_usec").unwrap_or(0) * 1000;
        s.cpu.periods = keyed(&t, "nr_periods").unwrap_or(0);
        s.cpu.throttled_periods = keyed(&t, "nr_throttled").unwrap_or(0);
        s.cpu.throttled_time_ns = keyed(&t, "throttled_usec").unwrap_or(0) * 1000;
    }
    let mem = &mut s.memory;
    mem.usage_bytes = read_u64(&d.join("memory.current")).unwrap_or(0);
    mem.max_usage_bytes = read_u64(&d.join("memory.peak")).unwrap_or(0);
    mem.swap_usage_bytes = read_u64(&d.join("memory.swap.current")).unwrap_or(0);
    mem.limit_bytes = read_u64(&d.join("memory.max")).unwrap_or(u64::MAX);
    if let Some(t) = read(&d.join("memory.stat")) {
        mem.cache_bytes = keyed(&t, "file").unwrap_or(0);
        mem.rss_bytes = keyed(&t, "anon").unwrap_or(0);
        mem.page_faults = keyed(&t, "pgfault").unwrap_or(0);
        mem.major_page_faults = keyed(&t, "pgmajfault").unwrap_or(0);
        let inactive = keyed(&t, "inactive_file").unwrap_or(0);
        mem.working_set_bytes = mem.usage_bytes.saturating_sub(inactive);
    }
    if let Some(t) = read(&d.join("memory.events")) {
        mem.failcnt = keyed(&t, "max").unwrap_or(0);
        mem.oom_kill_count = keyed(&t, "oom_kill").unwrap_or(0);
    }
    s.pids.current = read_u64(&d.join("pids.current")).unwrap_or(0);
    s.pids.limit = match read_u64(&d.join("pids.max")) {
        Some(u64::MAX) | None => 0,
        Some(n) => n,
    };
    if let Some(t) = read(&d.join("io.stat")) {
        // "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0", a line a device.
        for l in t.lines() {
            for kv in l.split_whitespace().skip(1) {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.io.read_bytes += v,
                    "wbytes" => s.io.write_bytes += v,
                    "rios" => s.io.read_ops += v,
                    "wios" => s.io.write_ops += v,
                    _ => {}
                }
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_onto_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // The v1 default 1024 lands near v2's default 100.
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(blkio_to_io_weight(500), 4950);
    }

    #[test]
    fn swap_is_the_total_minus_memory() {
        assert_eq!(swap_max(Some(100), Some(300)).unwrap(), Some("200".into()));
        assert_eq!(swap_max(Some(100), Some(100)).unwrap(), Some("0".into()));
        assert_eq!(swap_max(Some(100), Some(-1)).unwrap(), Some("max".into()));
        assert_eq!(swap_max(Some(100), None).unwrap(), None);
        let e = swap_max(Some(300), Some(100)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.swap"), "{e}");
        assert!(swap_max(None, Some(100)).is_err());
        assert!(swap_max(Some(-1), Some(100)).is_err());
    }

    #[test]
    fn keyed_files_parse() {
        let t = "usage_usec 12\nuser_usec 5\nsystem_usec 7\n";
        assert_eq!(keyed(t, "usage_usec"), Some(12));
        assert_eq!(keyed(t, "user_usec"), Some(5));
        assert_eq!(keyed(t, "nope"), None);
    }
}
