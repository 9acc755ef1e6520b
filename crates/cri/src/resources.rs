//! UpdateContainerResources: the CRI's LinuxContainerResources checked
//! before anything is written (errors name the request field, such as
//! `linux.cpu_quota`), merged into what the container was given, and
//! turned into OCI `linux.resources`.
//!
//! As everywhere in the CRI, zero means "not set": the cgroup keeps its
//! value. -1 means unlimited for cpu quota, memory and swap (runc's
//! convention, which the runtime applies).

use crate::error::{invalid, CriError};
use berth_cri_api::v1::LinuxContainerResources;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The kernel's bounds for CFS bandwidth and v1 cpu.shares.
const CFS_MIN_US: i64 = 1_000;
const CFS_MAX_PERIOD_US: i64 = 1_000_000;
const SHARES_MIN: i64 = 2;
const SHARES_MAX: i64 = 262_144;

/// v2 controllers whose files `unified` may set.
const UNIFIED_CONTROLLERS: &[&str] = &[
    "cgroup", "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];

fn bad(field: &str, msg: impl Into<String>) -> CriError {
    invalid(format!("linux.{field}"), msg)
}

/// Checks `r` as an update of a container that was given `old`: values in
/// range, lists well-formed, swap against the memory limit it will have,
/// unified keys only on a cgroup v2 host and naming a controller's file,
/// hugepage sizes this host has (`hugepages_dir`: /sys/kernel/mm/hugepages).
pub fn validate(
    r: &LinuxContainerResources,
    old: Option<&LinuxContainerResources>,
    mode: berth_cgroups::Mode,
    hugepages_dir: &Path,
) -> Result<(), CriError> {
    if r.cpu_period != 0 && !(CFS_MIN_US..=CFS_MAX_PERIOD_US).contains(&r.cpu_period) {
        return Err(bad(
            "cpu_period",
            format!(
                "{} µs is outside {CFS_MIN_US}..={CFS_MAX_PERIOD_US}",
                r.cpu_period
            ),
        ));
    }
    if r.cpu_quota < -1 || (r.cpu_quota > 0 && r.cpu_quota < CFS_MIN_US) {
        return Err(bad(
            "cpu_quota",
            format!(
                "{} must be -1 (unlimited), 0 (unchanged) or at least {CFS_MIN_US} µs",
                r.cpu_quota
            ),
        ));
    }
    if r.cpu_shares != 0 && !(SHARES_MIN..=SHARES_MAX).contains(&r.cpu_shares) {
        return Err(bad(
            "cpu_shares",
            format!("{} is outside {SHARES_MIN}..={SHARES_MAX}", r.cpu_shares),
        ));
    }
    for (name, v) in [
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < -1 {
            return Err(bad(
                name,
                format!("{v} must be -1 (unlimited), 0 (unchanged) or a size"),
            ));
        }
    }
    let limit = match r.memory_limit_in_bytes {
        0 => old.map_or(0, |o| o.memory_limit_in_bytes),
        l => l,
    };
    if r.memory_swap_limit_in_bytes > 0 {
        if limit <= 0 {
            return Err(bad(
                "memory_swap_limit_in_bytes",
                "a memory+swap limit needs a memory limit",
            ));
        }
        if r.memory_swap_limit_in_bytes < limit {
            return Err(bad(
                "memory_swap_limit_in_bytes",
                format!(
                    "{} is below the memory limit {limit} (it is the memory+swap total)",
                    r.memory_swap_limit_in_bytes
                ),
            ));
        }
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(bad(
            "oom_score_adj",
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    for (name, v) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        check_list(v).map_err(|m| bad(name, m))?;
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        let field = format!("hugepage_limits[{i}].page_size");
        let Some(bytes) = berth_cgroups::resources::page_size_bytes(&h.page_size) else {
            return Err(bad(
                &field,
                format!("{:?} is not a size like \"2MB\" or \"1GB\"", h.page_size),
            ));
        };
        if !hugepages_dir
            .join(format!("hugepages-{}kB", bytes >> 10))
            .is_dir()
        {
            return Err(bad(
                &field,
                format!("this host has no {} huge pages", h.page_size),
            ));
        }
        if i64::try_from(h.limit).is_err() {
            return Err(bad(&format!("hugepage_limits[{i}].limit"), "too large"));
        }
    }
    let mut keys: Vec<_> = r.unified.iter().collect();
    keys.sort();
    for (k, v) in keys {
        let field = format!("unified[{k}]");
        if mode != berth_cgroups::Mode::Unified {
            return Err(bad(&field, "needs a cgroup v2 host (this one uses v1)"));
        }
        let known = k.split_once('.').is_some_and(|(c, rest)| {
            UNIFIED_CONTROLLERS.contains(&c)
                && !rest.is_empty()
                && rest
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
        });
        if !known {
            return Err(bad(&field, "not a cgroup v2 interface file"));
        }
        // Membership and the tree's shape are the runtime's.
        if matches!(
            k.as_str(),
            "cgroup.procs" | "cgroup.threads" | "cgroup.subtree_control" | "cgroup.kill"
        ) {
            return Err(bad(&field, "managed by the runtime"));
        }
        if v.contains('\n') || v.contains('\0') {
            return Err(bad(&field, "the value must be a single line"));
        }
    }
    Ok(())
}

/// Checks a cpuset list such as "0-3,6" (empty: unchanged).
fn check_list(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    for part in s.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if a <= b => {}
            (Ok(_), Ok(_)) => return Err(format!("{s:?}: range {part} is reversed")),
            _ => return Err(format!("{s:?} is not a list like \"0-3,6\"")),
        }
    }
    Ok(())
}

/// `old` with every value `new` sets (non-zero, non-empty) replacing it:
/// what the container's record keeps after the update.
pub fn merge(
    old: Option<&LinuxContainerResources>,
    new: &LinuxContainerResources,
) -> LinuxContainerResources {
    let mut m = old.cloned().unwrap_or_default();
    let set = |dst: &mut i64, v: i64| {
        if v != 0 {
            *dst = v
        }
    };
    set(&mut m.cpu_period, new.cpu_period);
    set(&mut m.cpu_quota, new.cpu_quota);
    set(&mut m.cpu_shares, new.cpu_shares);
    set(&mut m.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(
        &mut m.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    set(&mut m.oom_score_adj, new.oom_score_adj);
    if !new.cpuset_cpus.is_empty() {
        m.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        m.cpuset_mems = new.cpuset_mems.clone();
    }
    if !new.hugepage_limits.is_empty() {
        m.hugepage_limits = new.hugepage_limits.clone();
    }
    m.unified.extend(new.unified.clone());
    m
}

/// The OCI resources an update writes: only what `r` sets. oom_score_adj
/// belongs to the process, not the cgroup: checked, recorded, not applied
/// (as containerd does).
pub fn to_oci(r: &LinuxContainerResources) -> Result<LinuxResources, String> {
    let mut cpu = Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut mem = Map::new();
    if r.memory_limit_in_bytes != 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes != 0 {
        mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    let mut v = Map::new();
    if !cpu.is_empty() {
        v.insert("cpu".into(), Value::Object(cpu));
    }
    if !mem.is_empty() {
        v.insert("memory".into(), Value::Object(mem));
    }
    if !r.hugepage_limits.is_empty() {
        v.insert(
            "hugepageLimits".into(),
            Value::Array(
                r.hugepage_limits
                    .iter()
                    .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                    .collect(),
            ),
        );
    }
    if !r.unified.is_empty() {
        v.insert("unified".into(), json!(r.unified));
    }
    serde_json::from_value(Value::Object(v)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cgroups::Mode;

    fn check(r: LinuxContainerResources) -> Result<(), String> {
        let huge = tempfile::tempdir().unwrap();
        std::fs::create_dir(huge.path().join("hugepages-2048kB")).unwrap();
        validate(&r, None, Mode::Legacy, huge.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_values_name_the_field() {
        let d = LinuxContainerResources::default;
        for (r, field) in [
            (
                LinuxContainerResources {
                    cpu_period: 999,
                    ..d()
                },
                "linux.cpu_period",
            ),
            (
                LinuxContainerResources {
                    cpu_quota: -2,
                    ..d()
                },
                "linux.cpu_quota",
            ),
            (
                LinuxContainerResources {
                    cpu_quota: 10,
                    ..d()
                },
                "linux.cpu_quota",
            ),
            (
                LinuxContainerResources {
                    cpu_shares: -5,
                    ..d()
                },
                "linux.cpu_shares",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: -7,
                    ..d()
                },
                "linux.memory_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    memory_swap_limit_in_bytes: 1 << 20,
                    ..d()
                },
                "linux.memory_swap_limit_in_bytes",
            ),
            (
                LinuxContainerResources {
                    oom_score_adj: 1001,
                    ..d()
                },
                "linux.oom_score_adj",
            ),
            (
                LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..d()
                },
                "linux.cpuset_cpus",
            ),
            (
                LinuxContainerResources {
                    hugepage_limits: vec![berth_cri_api::v1::HugepageLimit {
                        page_size: "3MB".into(),
                        limit: 1,
                    }],
                    ..d()
                },
                "linux.hugepage_limits[0].page_size",
            ),
            (
                LinuxContainerResources {
                    unified: [("memory.max".to_string(), "1".to_string())].into(),
                    ..d()
                },
                "linux.unified[memory.max]",
            ),
        ] {
            let e = check(r).unwrap_err();
            assert!(e.starts_with(&format!("{field}:")), "{field}: {e}");
        }
        check(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: -1,
            oom_score_adj: -1000,
            cpuset_cpus: "0-1,3".into(),
            hugepage_limits: vec![berth_cri_api::v1::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..d()
        })
        .unwrap();
    }

    #[test]
    fn unified_keys_on_v2_must_be_controller_files() {
        let v2 = |k: &str| {
            let r = LinuxContainerResources {
                unified: [(k.to_string(), "1".to_string())].into(),
                ..Default::default()
            };
            validate(&r, None, Mode::Unified, Path::new("/nonexistent"))
        };
        v2("memory.high").unwrap();
        assert!(v2("foo.bar").is_err());
        assert!(v2("memory").is_err());
        assert!(v2("cgroup.procs").is_err());
        assert!(v2("../x.y").is_err());
    }

    #[test]
    fn swap_is_checked_against_the_recorded_limit_and_merge_keeps_the_rest() {
        let old = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 256,
            ..Default::default()
        };
        let swap = |s| LinuxContainerResources {
            memory_swap_limit_in_bytes: s,
            ..Default::default()
        };
        let dir = Path::new("/nonexistent");
        assert!(validate(
            &swap(32 << 20),
            Some(&old),
            berth_cgroups::Mode::Legacy,
            dir
        )
        .is_err());
        validate(
            &swap(128 << 20),
            Some(&old),
            berth_cgroups::Mode::Legacy,
            dir,
        )
        .unwrap();
        let m = merge(Some(&old), &swap(128 << 20));
        assert_eq!(
            (
                m.memory_limit_in_bytes,
                m.memory_swap_limit_in_bytes,
                m.cpu_shares
            ),
            (64 << 20, 128 << 20, 256)
        );
    }
}
