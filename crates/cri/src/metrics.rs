//! Prometheus metrics: per-RPC counts, errors and latency histograms.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Op {
    count: u64,
    errors: u64,
    sum: f64,
    buckets: [u64; 12],
}

#[derive(Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<&'static str, Op>>,
}

impl Metrics {
    pub fn observe(&self, op: &'static str, took: Duration, ok: bool) {
        let mut m = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let o = m.entry(op).or_default();
        let s = took.as_secs_f64();
        o.count += 1;
        o.sum += s;
        if !ok {
            o.errors += 1;
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                o.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        s += "# HELP berth_cri_operations_total CRI operations served.\n# TYPE berth_cri_operations_total counter\n";
        for (k, o) in m.iter() {
            s += &format!(
                "berth_cri_operations_total{{operation=\"{k}\"}} {}\n",
                o.count
            );
        }
        s += "# HELP berth_cri_operation_errors_total CRI operations that failed.\n# TYPE berth_cri_operation_errors_total counter\n";
        for (k, o) in m.iter() {
            s += &format!(
                "berth_cri_operation_errors_total{{operation=\"{k}\"}} {}\n",
                o.errors
            );
        }
        s += "# HELP berth_cri_operation_duration_seconds CRI operation latency.\n# TYPE berth_cri_operation_duration_seconds histogram\n";
        for (k, o) in m.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                s += &format!(
                    "berth_cri_operation_duration_seconds_bucket{{operation=\"{k}\",le=\"{b}\"}} {}\n",
                    o.buckets[i]
                );
            }
            s += &format!(
                "berth_cri_operation_duration_seconds_bucket{{operation=\"{k}\",le=\"+Inf\"}} {}\n",
                o.count
            );
            s += &format!(
                "berth_cri_operation_duration_seconds_sum{{operation=\"{k}\"}} {}\n",
                o.sum
            );
            s += &format!(
                "berth_cri_operation_duration_seconds_count{{operation=\"{k}\"}} {}\n",
                o.count
            );
        }
        s
    }
}
