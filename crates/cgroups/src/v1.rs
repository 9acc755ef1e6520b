//! cgroup v1: one directory per controller hierarchy.
//!
//! Values follow runc's conventions (see `resources`): zero leaves a setting
//! alone, -1 means unlimited. A requested limit whose controller is not
//! mounted is an error naming the field, never silently dropped.

use crate::resources::{
    device_rule_lines, effective_device_rules, field_err, page_size_bytes, set,
};
use crate::stats::Stats;
use crate::{Manager, Result};
use oci_spec::runtime::LinuxResources;
use std::fs;
use std::io::Write;
use std::path::Path;

/// v1 reports "unlimited" as the largest page-aligned i64.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

fn dir<'a>(m: &'a Manager, ctrl: &str, field: &str) -> Result<&'a Path> {
    m.controller_dir(ctrl).ok_or_else(|| {
        field_err(
            field,
            format!("the {ctrl} cgroup controller is not mounted"),
        )
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// Writes `linux.resources` into the container's v1 directories. Device
/// rules are enforced when `r.devices` is set (create always sets it), with
/// runc's default allow list appended.
pub fn apply(m: &Manager, r: &LinuxResources) -> Result<()> {
    apply_memory(m, r)?;
    apply_cpu(m, r)?;
    if let Some(p) = r.pids() {
        if p.limit() != 0 {
            let v = if p.limit() < 0 {
                "max".to_string()
            } else {
                p.limit().to_string()
            };
            set(dir(m, "pids", "pids.limit")?, "pids.max", &v, "pids.limit")?;
        }
    }
    apply_blkio(m, r)?;
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("hugepageLimits[{i}]");
        let d = dir(m, "hugetlb", &field)?;
        // The kernel names files "2MB", "1GB", "64KB".
        let size = page_size_bytes(h.page_size()).unwrap_or(0);
        let name = if size >= 1 << 30 {
            format!("{}GB", size >> 30)
        } else if size >= 1 << 20 {
            format!("{}MB", size >> 20)
        } else {
            format!("{}KB", size >> 10)
        };
        set(
            d,
            &format!("hugetlb.{name}.limit_in_bytes"),
            &h.limit().to_string(),
            &format!("{field}.limit"),
        )?;
    }
    if let Some(n) = r.network() {
        if let Some(c) = n.class_id() {
            let d = dir(m, "net_cls", "network.classID")?;
            set(d, "net_cls.classid", &c.to_string(), "network.classID")?;
        }
        for (i, p) in n.priorities().iter().flatten().enumerate() {
            let f = format!("network.priorities[{i}]");
            let d = dir(m, "net_prio", &f)?;
            set(
                d,
                "net_prio.ifpriomap",
                &format!("{} {}", p.name(), p.priority()),
                &f,
            )?;
        }
    }
    if r.devices().is_some() {
        apply_devices(m, r)?;
    }
    Ok(())
}

/// Enforces the spec's device rules followed by the default allow list.
/// Rules go in order, each as its own write, on one open fd per file; the
/// cgroup is new (or the caller accepts a brief deny-all window).
pub fn apply_devices(m: &Manager, r: &LinuxResources) -> Result<()> {
    let Some(d) = m.controller_dir("devices") else {
        // Without the devices controller there is nothing to enforce with;
        // refusing would make every container fail on such hosts.
        return Ok(());
    };
    let open = |f: &str| {
        let p = d.join(f);
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| field_err("devices", format!("opening {}: {e}", p.display())))
    };
    let mut allow = open("devices.allow")?;
    let mut deny = open("devices.deny")?;
    // Start from nothing, as an OCI rule list does.
    deny.write_all(b"a")
        .map_err(|e| field_err("devices", format!("denying all devices: {e}")))?;
    let rules = effective_device_rules(Some(r));
    let n_spec = r.devices().as_ref().map_or(0, |v| v.len());
    for (i, rule) in rules.iter().enumerate() {
        let f = if rule.allow() { &mut allow } else { &mut deny };
        for line in device_rule_lines(rule) {
            if let Err(e) = f.write_all(line.as_bytes()) {
                let field = if i < n_spec {
                    format!("devices[{i}]")
                } else {
                    "devices".to_string()
                };
                return Err(field_err(&field, format!("rule {line:?}: {e}")));
            }
        }
    }
    Ok(())
}

fn apply_memory(m: &Manager, r: &LinuxResources) -> Result<()> {
    let Some(mem) = r.memory() else {
        return Ok(());
    };
    let given = |v: Option<i64>| v.filter(|&v| v != 0);
    let limit = given(mem.limit());
    let swap = given(mem.swap());
    let reservation = given(mem.reservation());
    let any = limit.is_some()
        || swap.is_some()
        || reservation.is_some()
        || mem.kernel_tcp().is_some()
        || mem.swappiness().is_some()
        || mem.disable_oom_killer().is_some();
    if !any {
        return Ok(());
    }
    let d = dir(m, "memory", "memory")?;
    let memsw = d.join("memory.memsw.limit_in_bytes");
    // memory+swap must stay >= memory at every step: raise memsw first when
    // the new memory limit would exceed the current memsw limit.
    let swap_first = match (limit, swap) {
        (Some(l), Some(_)) => {
            let cur = read_u64(&memsw).unwrap_or(u64::MAX);
            l < 0 || l as u64 > cur
        }
        _ => false,
    };
    let write_swap = |s: i64| -> Result<()> {
        if !memsw.exists() {
            // No swap accounting on this kernel: nothing to limit.
            return Ok(());
        }
        set(
            d,
            "memory.memsw.limit_in_bytes",
            &s.to_string(),
            "memory.swap",
        )
    };
    if swap_first {
        write_swap(swap.unwrap_or(-1))?;
    }
    if let Some(l) = limit {
        if let (None, Some(cur)) = (swap, read_u64(&memsw)) {
            if l < 0 || (l as u64 > cur && cur < V1_UNLIMITED) {
                return Err(field_err(
                    "memory.limit",
                    format!(
                        "{l} is above the current memory+swap limit {cur}: set memory.swap too"
                    ),
                ));
            }
        }
        set(d, "memory.limit_in_bytes", &l.to_string(), "memory.limit")?;
    }
    if let (Some(s), false) = (swap, swap_first) {
        write_swap(s)?;
    }
    if let Some(res) = reservation {
        set(
            d,
            "memory.soft_limit_in_bytes",
            &res.to_string(),
            "memory.reservation",
        )?;
    }
    if let Some(k) = mem.kernel_tcp().filter(|&k| k != 0) {
        set(
            d,
            "memory.kmem.tcp.limit_in_bytes",
            &k.to_string(),
            "memory.kernelTCP",
        )?;
    }
    // memory.kernel is not applied: kernels since 5.16 have no kmem limit.
    if let Some(s) = mem.swappiness() {
        set(d, "memory.swappiness", &s.to_string(), "memory.swappiness")?;
    }
    if let Some(off) = mem.disable_oom_killer() {
        set(
            d,
            "memory.oom_control",
            if off { "1" } else { "0" },
            "memory.disableOOMKiller",
        )?;
    }
    Ok(())
}

fn apply_cpu(m: &Manager, r: &LinuxResources) -> Result<()> {
    let Some(c) = r.cpu() else {
        return Ok(());
    };
    let nz = |v: Option<u64>| v.filter(|&v| v != 0);
    if let Some(s) = nz(c.shares()) {
        let d = dir(m, "cpu", "cpu.shares")?;
        set(d, "cpu.shares", &s.to_string(), "cpu.shares")?;
    }
    let period = nz(c.period());
    let quota = c.quota().filter(|&q| q != 0);
    if period.is_some() || quota.is_some() {
        let d = dir(m, "cpu", "cpu.quota")?;
        let w_period = |p: u64| set(d, "cpu.cfs_period_us", &p.to_string(), "cpu.period");
        let w_quota = |q: i64| set(d, "cpu.cfs_quota_us", &q.to_string(), "cpu.quota");
        // The kernel checks each write against the other value; if the first
        // order is refused the other one may be valid.
        let first = match period {
            Some(p) => w_period(p),
            None => Ok(()),
        }
        .and_then(|_| quota.map_or(Ok(()), w_quota));
        if let Err(e) = first {
            match (period, quota) {
                (Some(p), Some(q)) => {
                    w_quota(q)?;
                    w_period(p)?;
                }
                _ => return Err(e),
            }
        }
    }
    if let Some(b) = c.burst() {
        let d = dir(m, "cpu", "cpu.burst")?;
        set(d, "cpu.cfs_burst_us", &b.to_string(), "cpu.burst")?;
    }
    // The runtime budget must fit the period: set the period first.
    if let Some(p) = nz(c.realtime_period()) {
        let d = dir(m, "cpu", "cpu.realtimePeriod")?;
        set(d, "cpu.rt_period_us", &p.to_string(), "cpu.realtimePeriod")?;
    }
    if let Some(rt) = c.realtime_runtime().filter(|&v| v != 0) {
        let d = dir(m, "cpu", "cpu.realtimeRuntime")?;
        set(
            d,
            "cpu.rt_runtime_us",
            &rt.to_string(),
            "cpu.realtimeRuntime",
        )?;
    }
    if let Some(i) = c.idle() {
        let d = dir(m, "cpu", "cpu.idle")?;
        set(d, "cpu.idle", &i.to_string(), "cpu.idle")?;
    }
    for (file, field, v) in [
        ("cpuset.cpus", "cpu.cpus", c.cpus()),
        ("cpuset.mems", "cpu.mems", c.mems()),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            let d = dir(m, "cpuset", field)?;
            set(d, file, v.trim(), field)?;
        }
    }
    Ok(())
}

fn apply_blkio(m: &Manager, r: &LinuxResources) -> Result<()> {
    let Some(b) = r.block_io() else {
        return Ok(());
    };
    let blk = || dir(m, "blkio", "blockIO");
    // blkio.weight exists with CFQ; with BFQ the file is blkio.bfq.weight.
    let weight_file = |d: &Path, leaf: bool| -> String {
        let plain = if leaf {
            "blkio.leaf_weight"
        } else {
            "blkio.weight"
        };
        if d.join(plain).exists() || leaf {
            plain.to_string()
        } else {
            "blkio.bfq.weight".to_string()
        }
    };
    if let Some(w) = b.weight().filter(|&w| w != 0) {
        let d = blk()?;
        set(d, &weight_file(d, false), &w.to_string(), "blockIO.weight")?;
    }
    if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
        let d = blk()?;
        set(
            d,
            &weight_file(d, true),
            &w.to_string(),
            "blockIO.leafWeight",
        )?;
    }
    for (i, wd) in b.weight_device().iter().flatten().enumerate() {
        let d = blk()?;
        let dev = format!("{}:{}", wd.major(), wd.minor());
        if let Some(w) = wd.weight() {
            let f = format!("{}_device", weight_file(d, false));
            set(
                d,
                &f,
                &format!("{dev} {w}"),
                &format!("blockIO.weightDevice[{i}].weight"),
            )?;
        }
        if let Some(w) = wd.leaf_weight() {
            set(
                d,
                "blkio.leaf_weight_device",
                &format!("{dev} {w}"),
                &format!("blockIO.weightDevice[{i}].leafWeight"),
            )?;
        }
    }
    for (name, file, list) in [
        (
            "throttleReadBpsDevice",
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "throttleWriteBpsDevice",
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "throttleReadIOPSDevice",
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "throttleWriteIOPSDevice",
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for (i, t) in list.iter().flatten().enumerate() {
            let d = blk()?;
            set(
                d,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                &format!("blockIO.{name}[{i}]"),
            )?;
        }
    }
    Ok(())
}

/// Reads `key value` lines (memory.stat, cpu.stat, memory.oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads a small file into `buf` (reused across reads to stay cheap).
fn read_into<'a>(buf: &'a mut String, p: &Path) -> Option<&'a str> {
    use std::io::Read;
    buf.clear();
    fs::File::open(p).ok()?.read_to_string(buf).ok()?;
    Some(buf.as_str())
}

/// Reads accounting from the container's v1 directories. Missing
/// controllers or files leave their numbers at zero.
pub fn stats(m: &Manager) -> Result<Stats> {
    let mut s = Stats::default();
    let mut buf = String::with_capacity(4096);
    if let Some(d) = m.controller_dir("cpuacct") {
        s.cpu.usage_total_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
        match (
            read_u64(&d.join("cpuacct.usage_user")),
            read_u64(&d.join("cpuacct.usage_sys")),
        ) {
            (Some(u), Some(k)) => {
                s.cpu.usage_user_ns = u;
                s.cpu.usage_system_ns = k;
            }
            _ => {
                // Older kernels: cpuacct.stat in USER_HZ ticks.
                if let Some(t) = read_into(&mut buf, &d.join("cpuacct.stat")) {
                    // SAFETY: sysconf has no memory-safety preconditions.
                    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                    let ns = 1_000_000_000 / hz;
                    s.cpu.usage_user_ns = keyed(t, "user").unwrap_or(0) * ns;
                    s.cpu.usage_system_ns = keyed(t, "system").unwrap_or(0) * ns;
                }
            }
        }
    }
    if let Some(d) = m.controller_dir("cpu") {
        if let Some(t) = read_into(&mut buf, &d.join("cpu.stat")) {
            s.cpu.periods = keyed(t, "nr_periods").unwrap_or(0);
            s.cpu.throttled_periods = keyed(t, "nr_throttled").unwrap_or(0);
            s.cpu.throttled_time_ns = keyed(t, "throttled_time").unwrap_or(0);
        }
    }
    if let Some(d) = m.controller_dir("memory") {
        let mem = &mut s.memory;
        mem.usage_bytes = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
        mem.max_usage_bytes = read_u64(&d.join("memory.max_usage_in_bytes")).unwrap_or(0);
        mem.failcnt = read_u64(&d.join("memory.failcnt")).unwrap_or(0);
        mem.limit_bytes = match read_u64(&d.join("memory.limit_in_bytes")) {
            Some(l) if l < V1_UNLIMITED => l,
            _ => u64::MAX,
        };
        if let Some(sw) = read_u64(&d.join("memory.memsw.usage_in_bytes")) {
            mem.swap_usage_bytes = sw.saturating_sub(mem.usage_bytes);
        }
        if let Some(t) = read_into(&mut buf, &d.join("memory.stat")) {
            let inactive = keyed(t, "total_inactive_file").unwrap_or(0);
            mem.working_set_bytes = mem.usage_bytes.saturating_sub(inactive);
            mem.rss_bytes = keyed(t, "total_rss").unwrap_or(0);
            mem.cache_bytes = keyed(t, "total_cache").unwrap_or(0);
            mem.page_faults = keyed(t, "total_pgfault").unwrap_or(0);
            mem.major_page_faults = keyed(t, "total_pgmajfault").unwrap_or(0);
        }
        if let Some(t) = read_into(&mut buf, &d.join("memory.oom_control")) {
            mem.oom_kill_count = keyed(t, "oom_kill").unwrap_or(0);
            mem.under_oom = keyed(t, "under_oom") == Some(1);
        }
    }
    if let Some(d) = m.controller_dir("pids") {
        s.pids.current = read_u64(&d.join("pids.current")).unwrap_or(0);
        s.pids.limit = match read_u64(&d.join("pids.max")) {
            Some(u64::MAX) | None => 0,
            Some(l) => l,
        };
    }
    if let Some(d) = m.controller_dir("blkio") {
        let pick = |a: &str, b: &str| {
            let pa = d.join(a);
            if pa.exists() {
                pa
            } else {
                d.join(b)
            }
        };
        let bytes = pick(
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        );
        if let Some(t) = read_into(&mut buf, &bytes) {
            (s.io.read_bytes, s.io.write_bytes) = sum_rw(t);
        }
        let ops = pick(
            "blkio.throttle.io_serviced_recursive",
            "blkio.throttle.io_serviced",
        );
        if let Some(t) = read_into(&mut buf, &ops) {
            (s.io.read_ops, s.io.write_ops) = sum_rw(t);
        }
    }
    Ok(s)
}

/// Sums the per-device "maj:min Read N" / "maj:min Write N" lines.
fn sum_rw(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => r += n,
            "Write" => w += n,
            _ => {}
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkio_and_keyed() {
        let t = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 1\n8:16 Read 4\nTotal 4612\n";
        assert_eq!(sum_rw(t), (4100, 512));
        let oc = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oc, "oom_kill"), Some(3));
        assert_eq!(keyed(oc, "oom"), None);
    }
}
