//! Accounting read from a container's cgroup: the numbers the CRI daemon's
//! ContainerStats and `berth events --stats` report. Counters missing on a
//! host (a controller not mounted) stay zero.

use serde::Serialize;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub io: IoStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// Total CPU time consumed, nanoseconds.
    pub usage_total_ns: u64,
    pub usage_user_ns: u64,
    pub usage_system_ns: u64,
    /// CFS bandwidth periods elapsed (0 without a quota).
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time_ns: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// Peak usage (v1 memory.max_usage_in_bytes, v2 memory.peak).
    pub max_usage_bytes: u64,
    /// Times usage hit the limit (v1 memory.failcnt, v2 "max" in memory.events).
    pub failcnt: u64,
    pub swap_usage_bytes: u64,
    /// Page cache charged to the cgroup.
    pub cache_bytes: u64,
    /// usage minus inactive file pages: what the kubelet evicts on.
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit in force (u64::MAX when unlimited).
    pub limit_bytes: u64,
    /// Processes killed by the OOM killer in this cgroup so far.
    pub oom_kill_count: u64,
    /// The cgroup is at its limit with the OOM killer disabled (v1).
    pub under_oom: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited.
    pub limit: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct IoStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}
