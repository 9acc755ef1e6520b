//! Checks on `linux.resources` that hold whatever the cgroup version, run
//! before anything exists on the host, and the device rules every container
//! gets.
//!
//! Conventions follow runc's: a zero means "not set" for memory, cpu quota,
//! period and shares and the pids limit; -1 means "unlimited".

use crate::{Error, Mode, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use std::io::Write;
use std::path::Path;

/// An error about `linux.resources.<field>`.
pub(crate) fn field_err(field: &str, msg: impl Into<String>) -> Error {
    Error::Resource {
        field: format!("linux.resources.{field}"),
        msg: msg.into(),
    }
}

/// Writes `val` to `<dir>/<file>` (v1 or v2); an error names the field and
/// the file, with a hint for the two errors users meet most.
pub(crate) fn set(dir: &Path, file: &str, val: &str, field: &str) -> Result<()> {
    let p = dir.join(file);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|mut f| f.write_all(val.as_bytes()));
    r.map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => format!("{e} (this kernel or cgroup lacks the setting)"),
            Some(libc::EBUSY) => format!("{e} (current usage is above the new limit?)"),
            _ => e.to_string(),
        };
        field_err(field, format!("writing {val:?} to {}: {why}", p.display()))
    })
}

fn bad(field: &str, msg: impl Into<String>) -> Error {
    Error::Resource {
        field: format!("linux.resources.{field}"),
        msg: msg.into(),
    }
}

/// The kernel's bounds for CFS bandwidth (cpu.cfs_period_us / cfs_quota_us).
const CFS_MIN_US: u64 = 1_000;
const CFS_MAX_PERIOD_US: u64 = 1_000_000;
/// The kernel's bounds for v1 cpu.shares.
const SHARES_MIN: u64 = 2;
const SHARES_MAX: u64 = 262_144;

/// v2 controllers whose files `linux.resources.unified` may set.
const UNIFIED_CONTROLLERS: &[&str] = &[
    "cgroup", "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];

/// Validates `r` for a host in `mode`. Errors name the offending field
/// (`linux.resources.cpu.quota`).
pub fn validate(r: &LinuxResources, mode: Mode) -> Result<()> {
    if let Some(m) = r.memory() {
        for (name, v) in [
            ("memory.limit", m.limit()),
            ("memory.reservation", m.reservation()),
            ("memory.swap", m.swap()),
            ("memory.kernel", m.kernel()),
            ("memory.kernelTCP", m.kernel_tcp()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(bad(name, format!("{v} is negative (-1 means unlimited)")));
                }
            }
        }
        if m.swap().is_some_and(|s| s > 0) && m.limit().is_none_or(|l| l <= 0) {
            return Err(bad(
                "memory.swap",
                "a memory+swap limit needs a memory.limit",
            ));
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(bad(
                    "memory.swap",
                    format!("{s} is below memory.limit {l} (swap is the memory+swap total)"),
                ));
            }
        }
        if let (Some(l), Some(res)) = (m.limit(), m.reservation()) {
            if l > 0 && res > l {
                return Err(bad(
                    "memory.reservation",
                    format!("{res} is above memory.limit {l}"),
                ));
            }
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(bad("memory.swappiness", format!("{s} is above 100")));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 && !(SHARES_MIN..=SHARES_MAX).contains(&s) {
                return Err(bad(
                    "cpu.shares",
                    format!("{s} is outside {SHARES_MIN}..={SHARES_MAX}"),
                ));
            }
        }
        if let Some(p) = c.period() {
            if p != 0 && !(CFS_MIN_US..=CFS_MAX_PERIOD_US).contains(&p) {
                return Err(bad(
                    "cpu.period",
                    format!("{p} µs is outside {CFS_MIN_US}..={CFS_MAX_PERIOD_US}"),
                ));
            }
        }
        if let Some(q) = c.quota() {
            if q < -1 {
                return Err(bad(
                    "cpu.quota",
                    format!("{q} is negative (-1 means unlimited)"),
                ));
            }
            if q > 0 && (q as u64) < CFS_MIN_US {
                return Err(bad(
                    "cpu.quota",
                    format!("{q} µs is below the kernel's minimum of {CFS_MIN_US}"),
                ));
            }
        }
        if let Some(b) = c.burst() {
            let q = c.quota().unwrap_or(0);
            if b > 0 && q <= 0 {
                return Err(bad("cpu.burst", "a burst needs a cpu.quota"));
            }
            if b > 0 && b > q as u64 {
                return Err(bad(
                    "cpu.burst",
                    format!("{b} µs is above cpu.quota {q} µs"),
                ));
            }
        }
        if let Some(rt) = c.realtime_runtime() {
            if rt < -1 {
                return Err(bad("cpu.realtimeRuntime", format!("{rt} is negative")));
            }
            if let Some(p) = c.realtime_period() {
                if rt > 0 && p > 0 && rt as u64 > p {
                    return Err(bad(
                        "cpu.realtimeRuntime",
                        format!("{rt} µs is above cpu.realtimePeriod {p} µs"),
                    ));
                }
            }
        }
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return Err(bad("cpu.idle", format!("{i} is neither 0 nor 1")));
            }
        }
        for (name, v) in [("cpu.cpus", c.cpus()), ("cpu.mems", c.mems())] {
            if let Some(s) = v {
                check_list(s).map_err(|m| bad(name, m))?;
            }
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(bad(
                "pids.limit",
                format!("{} is negative (-1 means unlimited)", p.limit()),
            ));
        }
    }
    if let Some(b) = r.block_io() {
        let weight_ok = |w: u16| w == 0 || (10..=1000).contains(&w);
        for (name, w) in [
            ("blockIO.weight", b.weight()),
            ("blockIO.leafWeight", b.leaf_weight()),
        ] {
            if let Some(w) = w {
                if !weight_ok(w) {
                    return Err(bad(name, format!("{w} is outside 10..=1000")));
                }
            }
        }
        for (i, d) in b.weight_device().iter().flatten().enumerate() {
            let f = format!("blockIO.weightDevice[{i}]");
            check_dev(&f, d.major(), d.minor())?;
            for (n, w) in [("weight", d.weight()), ("leafWeight", d.leaf_weight())] {
                if let Some(w) = w {
                    if !weight_ok(w) {
                        return Err(bad(
                            &format!("{f}.{n}"),
                            format!("{w} is outside 10..=1000"),
                        ));
                    }
                }
            }
        }
        for (name, list) in [
            ("throttleReadBpsDevice", b.throttle_read_bps_device()),
            ("throttleWriteBpsDevice", b.throttle_write_bps_device()),
            ("throttleReadIOPSDevice", b.throttle_read_iops_device()),
            ("throttleWriteIOPSDevice", b.throttle_write_iops_device()),
        ] {
            for (i, d) in list.iter().flatten().enumerate() {
                check_dev(&format!("blockIO.{name}[{i}]"), d.major(), d.minor())?;
            }
        }
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        if page_size_bytes(h.page_size()).is_none() {
            return Err(bad(
                &format!("hugepageLimits[{i}].pageSize"),
                format!("{:?} is not a size like \"2MB\" or \"1GB\"", h.page_size()),
            ));
        }
        if h.limit() < -1 {
            return Err(bad(&format!("hugepageLimits[{i}].limit"), "negative"));
        }
    }
    for (i, d) in r.devices().iter().flatten().enumerate() {
        if let Some(a) = d.access() {
            if a.is_empty() || !a.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(bad(
                    &format!("devices[{i}].access"),
                    format!("{a:?} must be made of r, w and m"),
                ));
            }
        }
        if let Some(t) = d.typ() {
            if !matches!(
                t,
                LinuxDeviceType::A | LinuxDeviceType::B | LinuxDeviceType::C
            ) {
                return Err(bad(
                    &format!("devices[{i}].type"),
                    format!("{:?} is not a, b or c", t.as_str()),
                ));
            }
        }
        for (n, v) in [("major", d.major()), ("minor", d.minor())] {
            if v.is_some_and(|v| v < -1) {
                return Err(bad(&format!("devices[{i}].{n}"), "negative (-1 means any)"));
            }
        }
    }
    if let Some(n) = r.network() {
        for (i, p) in n.priorities().iter().flatten().enumerate() {
            if p.name().is_empty() || p.name().contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(bad(
                    &format!("network.priorities[{i}].name"),
                    format!("{:?} is not an interface name", p.name()),
                ));
            }
        }
    }
    if let Some(u) = r.unified() {
        if !u.is_empty() && mode != Mode::Unified {
            return Err(bad("unified", "needs a cgroup v2 host (this one uses v1)"));
        }
        for (k, v) in u {
            let field = format!("unified.{k}");
            let ok = k.split_once('.').is_some_and(|(c, rest)| {
                UNIFIED_CONTROLLERS.contains(&c)
                    && !rest.is_empty()
                    && rest
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
            });
            if !ok {
                return Err(bad(&field, "not a cgroup v2 interface file"));
            }
            // Membership and tree shape are the runtime's to manage.
            if matches!(
                k.as_str(),
                "cgroup.procs" | "cgroup.threads" | "cgroup.subtree_control" | "cgroup.kill"
            ) {
                return Err(bad(&field, "managed by the runtime"));
            }
            if v.contains('\n') {
                return Err(bad(&field, "value must be a single line"));
            }
        }
    }
    Ok(())
}

fn check_dev(field: &str, major: i64, minor: i64) -> Result<()> {
    if major < 0 || minor < 0 {
        return Err(bad(field, "major and minor must not be negative"));
    }
    Ok(())
}

/// Checks a cpuset list such as "0-3,6".
fn check_list(s: &str) -> std::result::Result<(), String> {
    if s.trim().is_empty() {
        return Ok(());
    }
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(format!("{s:?} is not a list like \"0-3,6\"")),
        };
        if a > b {
            return Err(format!("{s:?}: range {part} is reversed"));
        }
    }
    Ok(())
}

/// "2MB" → 2 MiB, as hugetlb names its files; None when malformed.
pub fn page_size_bytes(s: &str) -> Option<u64> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: u64 = digits.parse().ok()?;
    let mul = match unit {
        "KB" | "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// Device rules every container gets after its own, as runc adds them: mknod
/// of any node (opening one is still checked), and use of the devices a
/// process expects (null, zero, full, random, urandom, tty, ptmx, pts/*) and
/// /dev/net/tun.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(true);
        d.set_typ(Some(typ));
        d.set_major(major);
        d.set_minor(minor);
        d.set_access(Some(access.to_string()));
        d
    };
    use LinuxDeviceType::{B, C};
    vec![
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),
        rule(C, Some(1), Some(5), "rwm"),
        rule(C, Some(1), Some(7), "rwm"),
        rule(C, Some(1), Some(8), "rwm"),
        rule(C, Some(1), Some(9), "rwm"),
        rule(C, Some(5), Some(0), "rwm"),
        rule(C, Some(5), Some(1), "rwm"),
        rule(C, Some(5), Some(2), "rwm"),
        rule(C, Some(136), None, "rwm"),
        rule(C, Some(10), Some(200), "rwm"),
    ]
}

/// The device rules to enforce for `r`: the spec's, then the defaults.
pub fn effective_device_rules(r: Option<&LinuxResources>) -> Vec<LinuxDeviceCgroup> {
    let mut v: Vec<LinuxDeviceCgroup> = r.and_then(|r| r.devices().clone()).unwrap_or_default();
    v.extend(default_device_rules());
    v
}

/// The v1 rule lines for `d` ("c 1:3 rwm"). A whole-class rule is "a"; a
/// type-"a" rule narrower than that is written for both b and c, since the
/// kernel reads "a" as "everything".
pub fn device_rule_lines(d: &LinuxDeviceCgroup) -> Vec<String> {
    let typ = d.typ().unwrap_or(LinuxDeviceType::A);
    let num = |v: Option<i64>| match v {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".to_string(),
    };
    let mut access = d.access().clone().unwrap_or_else(|| "rwm".into());
    if access.is_empty() {
        access = "rwm".into();
    }
    let spec = format!("{}:{} {access}", num(d.major()), num(d.minor()));
    if typ == LinuxDeviceType::A {
        let full = ["r", "w", "m"].iter().all(|c| access.contains(c));
        if full && spec.starts_with("*:* ") {
            return vec!["a".into()];
        }
        return vec![format!("b {spec}"), format!("c {spec}")];
    }
    vec![format!("{} {spec}", typ.as_str())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    fn field(v: serde_json::Value) -> String {
        match validate(&res(v), Mode::Hybrid) {
            Err(Error::Resource { field, .. }) => field,
            r => panic!("expected a resource error, got {r:?}"),
        }
    }

    #[test]
    fn names_the_field() {
        assert_eq!(
            field(serde_json::json!({"memory": {"limit": -5}})),
            "linux.resources.memory.limit"
        );
        assert_eq!(
            field(serde_json::json!({"memory": {"limit": 100000000, "swap": 1000}})),
            "linux.resources.memory.swap"
        );
        assert_eq!(
            field(serde_json::json!({"memory": {"swap": 100000000}})),
            "linux.resources.memory.swap"
        );
        assert_eq!(
            field(serde_json::json!({"cpu": {"quota": 10}})),
            "linux.resources.cpu.quota"
        );
        assert_eq!(
            field(serde_json::json!({"cpu": {"period": 5}})),
            "linux.resources.cpu.period"
        );
        assert_eq!(
            field(serde_json::json!({"cpu": {"shares": 1}})),
            "linux.resources.cpu.shares"
        );
        assert_eq!(
            field(serde_json::json!({"cpu": {"cpus": "3-1"}})),
            "linux.resources.cpu.cpus"
        );
        assert_eq!(
            field(serde_json::json!({"pids": {"limit": -2}})),
            "linux.resources.pids.limit"
        );
        assert_eq!(
            field(serde_json::json!({"devices": [{"allow": true, "access": "rwx"}]})),
            "linux.resources.devices[0].access"
        );
        assert_eq!(
            field(serde_json::json!({"unified": {"memory.max": "1"}})),
            "linux.resources.unified"
        );
        assert_eq!(
            field(serde_json::json!({"hugepageLimits": [{"pageSize": "2XB", "limit": 1}]})),
            "linux.resources.hugepageLimits[0].pageSize"
        );
    }

    #[test]
    fn unified_keys_on_v2() {
        let r = res(serde_json::json!({"unified": {"memory.high": "1000000"}}));
        assert!(validate(&r, Mode::Unified).is_ok());
        let r = res(serde_json::json!({"unified": {"bogus.key": "1"}}));
        assert!(validate(&r, Mode::Unified).is_err());
        let r = res(serde_json::json!({"unified": {"cgroup.procs": "1"}}));
        assert!(validate(&r, Mode::Unified).is_err());
    }

    #[test]
    fn accepts_runc_defaults() {
        let r = res(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 16777216, "swap": 16777216},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1"},
            "pids": {"limit": -1}
        }));
        validate(&r, Mode::Hybrid).unwrap();
        assert_eq!(page_size_bytes("2MB"), Some(2 << 20));
    }

    #[test]
    fn rule_lines() {
        let r = effective_device_rules(Some(&res(
            serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}),
        )));
        assert_eq!(device_rule_lines(&r[0]), ["a"]);
        assert_eq!(device_rule_lines(&r[1]), ["c *:* m"]);
        assert_eq!(device_rule_lines(&r[3]), ["c 1:3 rwm"]);
    }
}
