//! `linux.resources` from the CRI's LinuxContainerResources. Zero means
//! "not set" in the CRI, so zero values are left out (the runtime then
//! leaves the cgroup's value alone).

use super::{Result, SpecError};
use berth_cri_api::v1::LinuxContainerResources;
use serde_json::{json, Map, Value};

/// Device cgroup rules: deny everything, then the nodes every container
/// needs (what runc allows by default), then `extra` (the CRI's devices).
/// A privileged container may use every device.
fn device_rules(extra: Vec<Value>, privileged: bool) -> Vec<Value> {
    if privileged {
        return vec![json!({"allow": true, "access": "rwm"})];
    }
    let mut v = vec![json!({"allow": false, "access": "rwm"})];
    // mknod of any node (using one still needs its own rule).
    v.push(json!({"allow": true, "type": "c", "access": "m"}));
    v.push(json!({"allow": true, "type": "b", "access": "m"}));
    for (maj, min) in [
        (1, Some(3)), // null
        (1, Some(5)), // zero
        (1, Some(7)), // full
        (1, Some(8)), // random
        (1, Some(9)), // urandom
        (5, Some(0)), // tty
        (5, Some(1)), // console
        (5, Some(2)), // ptmx
        (136, None),  // pts/*
    ] {
        let mut r = json!({"allow": true, "type": "c", "major": maj, "access": "rwm"});
        if let Some(m) = min {
            r["minor"] = json!(m);
        }
        v.push(r);
    }
    v.extend(extra);
    v
}

pub fn build(
    r: Option<&LinuxContainerResources>,
    device_extra: Vec<Value>,
    privileged: bool,
) -> Result<Value> {
    let f = |name: &str| format!("config.linux.resources.{name}");
    let mut out = Map::new();
    out.insert(
        "devices".into(),
        json!(device_rules(device_extra, privileged)),
    );
    let Some(r) = r else {
        return Ok(Value::Object(out));
    };
    let mut cpu = Map::new();
    if r.cpu_shares < 0 {
        return Err(SpecError::new(f("cpu_shares"), "must not be negative"));
    }
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_period < 0 {
        return Err(SpecError::new(f("cpu_period"), "must not be negative"));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if r.cpu_quota < -1 {
        return Err(SpecError::new(
            f("cpu_quota"),
            "must be -1 (unlimited) or more",
        ));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    for (name, key, v) in [
        ("cpuset_cpus", "cpus", &r.cpuset_cpus),
        ("cpuset_mems", "mems", &r.cpuset_mems),
    ] {
        if v.is_empty() {
            continue;
        }
        if !v
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            return Err(SpecError::new(
                f(name),
                format!("{v:?} is not a CPU or node list"),
            ));
        }
        cpu.insert(key.into(), json!(v));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    let mut mem = Map::new();
    for (name, key, v) in [
        ("memory_limit_in_bytes", "limit", r.memory_limit_in_bytes),
        (
            "memory_swap_limit_in_bytes",
            "swap",
            r.memory_swap_limit_in_bytes,
        ),
    ] {
        if v < -1 {
            return Err(SpecError::new(f(name), "must be -1 (unlimited) or more"));
        }
        if v != 0 {
            mem.insert(key.into(), json!(v));
        }
    }
    if r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(SpecError::new(
            f("memory_swap_limit_in_bytes"),
            "memory+swap must not be less than the memory limit",
        ));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    let mut huge = Vec::new();
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        let ok = h.page_size.len() > 2
            && h.page_size.ends_with('B')
            && h.page_size[..h.page_size.len() - 2]
                .bytes()
                .all(|b| b.is_ascii_digit())
            && h.page_size[h.page_size.len() - 2..h.page_size.len() - 1]
                .bytes()
                .all(|b| b"KMGTP".contains(&b));
        if !ok {
            return Err(SpecError::new(
                f(&format!("hugepage_limits[{i}].page_size")),
                format!("{:?} is not a page size like 2MB or 1GB", h.page_size),
            ));
        }
        huge.push(json!({"pageSize": h.page_size, "limit": h.limit}));
    }
    if !huge.is_empty() {
        out.insert("hugepageLimits".into(), json!(huge));
    }
    if !r.unified.is_empty() {
        let mut keys: Vec<_> = r.unified.iter().collect();
        keys.sort();
        let mut u = Map::new();
        for (k, v) in keys {
            if k.is_empty() || k.contains('/') || k.contains("..") || !k.contains('.') {
                return Err(SpecError::new(
                    f(&format!("unified[{k}]")),
                    "not a cgroup v2 file name",
                ));
            }
            if v.contains('\n') || v.contains('\0') {
                return Err(SpecError::new(
                    f(&format!("unified[{k}]")),
                    "the value must be a single line",
                ));
            }
            u.insert(k.clone(), json!(v));
        }
        out.insert("unified".into(), Value::Object(u));
    }
    Ok(Value::Object(out))
}
