//! CRI container resources as OCI `linux.resources` (UpdateContainerResources).

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};

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
    if r.memory_limit_in_bytes > 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
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
