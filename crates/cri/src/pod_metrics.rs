//! ListMetricDescriptors and ListPodSandboxMetrics: the kubelet's
//! cAdvisor-free metrics (PodAndContainerStatsFromCRI), made from the same
//! cgroup and network readings as the stats RPCs. Names follow cAdvisor's;
//! values are integers (the CRI's UInt64Value), so CPU time is exposed in
//! nanoseconds rather than as cAdvisor's fractional seconds.

use crate::daemon::Daemon;
use crate::error::Result;
use crate::model::PodRecord;
use berth_cri_api::v1 as cri;

/// (name, help, counter?): per container, without labels.
const CONTAINER: &[(&str, &str, bool)] = &[
    (
        "container_cpu_usage_nanoseconds_total",
        "Cumulative CPU time consumed, in nanoseconds.",
        true,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage, including all memory regardless of when it was accessed.",
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set.",
        false,
    ),
    ("container_memory_rss", "Size of RSS.", false),
    (
        "container_memory_failures_total",
        "Cumulative count of page faults.",
        true,
    ),
];

/// Per pod, labelled by interface.
const POD_NETWORK: &[(&str, &str)] = &[
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
    ),
];

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    let d = |name: &str, help: &str, keys: &[&str]| cri::MetricDescriptor {
        name: name.into(),
        help: help.into(),
        label_keys: keys.iter().map(|k| k.to_string()).collect(),
    };
    CONTAINER
        .iter()
        .map(|(n, h, _)| d(n, h, &[]))
        .chain(POD_NETWORK.iter().map(|(n, h)| d(n, h, &["interface"])))
        .collect()
}

fn metric(name: &str, counter: bool, labels: Vec<String>, v: u64) -> cri::Metric {
    cri::Metric {
        name: name.into(),
        // Gathered live.
        timestamp: 0,
        metric_type: if counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels,
        value: Some(cri::UInt64Value { value: v }),
    }
}

impl Daemon {
    pub fn pod_metrics(
        &self,
        p: &PodRecord,
        all: &[crate::model::ContainerRecord],
    ) -> Result<cri::PodSandboxMetrics> {
        let stats = self.pod_stats_among(p, all)?;
        let linux = stats.linux.unwrap_or_default();
        let val = |v: &Option<cri::UInt64Value>| v.as_ref().map(|v| v.value);
        let container_metrics = linux
            .containers
            .iter()
            .map(|c| {
                let mem = c.memory.unwrap_or_default();
                let values = [
                    c.cpu.as_ref().and_then(|u| val(&u.usage_core_nano_seconds)),
                    val(&mem.usage_bytes),
                    val(&mem.working_set_bytes),
                    val(&mem.rss_bytes),
                    val(&mem.page_faults),
                ];
                cri::ContainerMetrics {
                    container_id: c
                        .attributes
                        .as_ref()
                        .map(|a| a.id.clone())
                        .unwrap_or_default(),
                    metrics: CONTAINER
                        .iter()
                        .zip(values)
                        .filter_map(|((n, _, counter), v)| Some(metric(n, *counter, vec![], v?)))
                        .collect(),
                }
            })
            .collect();
        let mut metrics = Vec::new();
        if let Some(net) = &linux.network {
            // `interfaces` holds the default one too.
            for i in &net.interfaces {
                let values = [
                    val(&i.rx_bytes),
                    val(&i.tx_bytes),
                    val(&i.rx_errors),
                    val(&i.tx_errors),
                ];
                for ((n, _), v) in POD_NETWORK.iter().zip(values) {
                    if let Some(v) = v {
                        metrics.push(metric(n, true, vec![i.name.clone()], v));
                    }
                }
            }
        }
        Ok(cri::PodSandboxMetrics {
            pod_sandbox_id: p.id.clone(),
            metrics,
            container_metrics,
        })
    }
}
