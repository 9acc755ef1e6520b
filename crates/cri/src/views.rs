//! CRI views of records: statuses, list items with their filters, stats.

use crate::daemon::Daemon;
use crate::error::Result;
use crate::model::{now_ns, ContainerRecord, CtrState, PodRecord, PodState};
use crate::store::Kind;
use berth_cri_api::v1 as cri;
use std::collections::HashMap;
use std::path::Path;

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

pub fn ctr_state(s: CtrState) -> i32 {
    match s {
        CtrState::Creating | CtrState::Created => cri::ContainerState::ContainerCreated as i32,
        CtrState::Running => cri::ContainerState::ContainerRunning as i32,
        CtrState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

pub fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn labels_match(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn id_match(id: &str, want: &str) -> bool {
    want.is_empty() || id.starts_with(want)
}

pub fn pod_status(p: &PodRecord) -> cri::PodSandboxStatus {
    let (net, pid, ipc) = crate::sandbox::namespace_modes(&p.config);
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: pod_state(p.state),
        created_at: p.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: p.ips.first().cloned().unwrap_or_default(),
            additional_ips: p
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: net,
                    pid,
                    ipc,
                    ..Default::default()
                }),
            }),
        }),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

/// A container as ListContainers reports it.
pub fn cri_container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: Some(cri::ImageSpec {
            image: c.image_ref.clone(),
            ..Default::default()
        }),
        image_ref: c.image_id.clone(),
        state: ctr_state(c.state),
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: ctr_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(cri::ImageSpec {
            image: c.image_ref.clone(),
            ..Default::default()
        }),
        image_ref: if c.image_digest_ref.is_empty() {
            c.image_id.clone()
        } else {
            c.image_digest_ref.clone()
        },
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: c.image_id.clone(),
        stop_signal: crate::stop_signal::of_number(c.stop_signal) as i32,
        user: c.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.additional_gids.iter().map(|&g| g.into()).collect(),
            }),
        }),
    }
}

impl Daemon {
    /// The pod records a ListPodSandbox filter selects.
    pub fn filter_pods(&self, f: Option<cri::PodSandboxFilter>) -> Result<Vec<PodRecord>> {
        let f = f.unwrap_or_default();
        Ok(self
            .pods()?
            .into_iter()
            .filter(|p| p.state != PodState::Creating)
            .filter(|p| id_match(&p.id, &f.id))
            .filter(|p| {
                f.state
                    .as_ref()
                    .is_none_or(|s| s.state == pod_state(p.state))
            })
            .filter(|p| labels_match(&p.config.labels, &f.label_selector))
            .collect())
    }

    pub fn list_pods(&self, f: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        Ok(self
            .filter_pods(f)?
            .into_iter()
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                state: pod_state(p.state),
                created_at: p.created_at,
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .collect())
    }

    /// The container records (exits folded in) a ListContainers filter selects.
    pub fn filter_containers(
        &self,
        f: Option<cri::ContainerFilter>,
    ) -> Result<Vec<ContainerRecord>> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.containers()? {
            if let Some(c) = self.select_container(c, &f)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// `c` with its exit folded in, if filter `f` selects it.
    fn select_container(
        &self,
        c: ContainerRecord,
        f: &cri::ContainerFilter,
    ) -> Result<Option<ContainerRecord>> {
        if c.state == CtrState::Creating
            || !id_match(&c.id, &f.id)
            || !id_match(&c.pod_id, &f.pod_sandbox_id)
        {
            return Ok(None);
        }
        let c = self.refresh(&c)?;
        if f.state
            .as_ref()
            .is_some_and(|s| s.state != ctr_state(c.state))
            || !labels_match(&c.config.labels, &f.label_selector)
        {
            return Ok(None);
        }
        Ok(Some(c))
    }

    /// The records `f` selects, a page of the store at a time: `each` gets
    /// every page's selection (it may be empty) and returns false to stop.
    /// Memory holds one page, however many containers there are.
    pub fn each_container_page(
        &self,
        f: Option<cri::ContainerFilter>,
        mut each: impl FnMut(Vec<ContainerRecord>) -> bool,
    ) -> Result<()> {
        const PAGE: usize = 500;
        let f = f.unwrap_or_default();
        let mut after: Option<String> = None;
        loop {
            let page: Vec<(String, ContainerRecord)> =
                self.store.page(Kind::Container, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let full = page.len() == PAGE;
            let mut picked = Vec::new();
            for (_, c) in page {
                if let Some(c) = self.select_container(c, &f)? {
                    picked.push(c);
                }
            }
            if !each(picked) || !full {
                return Ok(());
            }
        }
    }

    pub fn list_containers(&self, f: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        Ok(self
            .filter_containers(f)?
            .iter()
            .map(cri_container)
            .collect())
    }

    pub fn container_stats(&self, c: &ContainerRecord) -> cri::ContainerStats {
        let ts = now_ns();
        let mut s = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            ..Default::default()
        };
        let st = crate::handler::container_cgroup(&c.bundle)
            .and_then(|p| berth_oci::container::cgroup_manager(&p).stats().ok());
        if let Some(st) = st {
            s.cpu = Some(cri::CpuUsage {
                psi: None,
                timestamp: ts,
                usage_core_nano_seconds: u64v(st.cpu.usage_total_ns),
                usage_nano_cores: None,
            });
            s.memory = Some(mem_usage(ts, &st.memory));
        }
        let used = self.writable_layer_usage(&c.id);
        s.writable_layer = Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.cfg.root.join("images").display().to_string(),
            }),
            used_bytes: u64v(used),
            inodes_used: None,
        });
        s
    }

    /// Bytes of a container's own writes, cached for [`USAGE_TTL`].
    fn writable_layer_usage(&self, id: &str) -> u64 {
        let now = std::time::Instant::now();
        let mut cache = self.usage_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(at, used)) = cache.get(id) {
            if now.duration_since(at) < USAGE_TTL {
                return used;
            }
        }
        // Entries of removed containers go when they are next stale.
        cache.retain(|_, (at, _)| now.duration_since(*at) < USAGE_TTL);
        drop(cache);
        let used = self.images.snapshots.view_usage(id).unwrap_or(0);
        self.usage_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), (now, used));
        used
    }

    pub fn pod_stats(&self, p: &PodRecord) -> Result<cri::PodSandboxStats> {
        self.pod_stats_among(p, &self.containers()?)
    }

    /// [`Daemon::pod_stats`] with the container records read once for all
    /// the pods of a list.
    pub fn pod_stats_among(
        &self,
        p: &PodRecord,
        all: &[ContainerRecord],
    ) -> Result<cri::PodSandboxStats> {
        let ts = now_ns();
        let containers: Vec<_> = all
            .iter()
            .filter(|c| c.pod_id == p.id && c.state == CtrState::Running)
            .map(|c| self.container_stats(c))
            .collect();
        let mgr = berth_cgroups::Manager::new(
            Path::new(berth_oci::CGROUP_ROOT),
            Path::new(&p.cgroup_parent),
        );
        let (cpu, memory, process) = match mgr.stats() {
            Ok(st) => (
                Some(cri::CpuUsage {
                    psi: None,
                    timestamp: ts,
                    usage_core_nano_seconds: u64v(st.cpu.usage_total_ns),
                    usage_nano_cores: None,
                }),
                Some(mem_usage(ts, &st.memory)),
                Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: u64v(st.pids.current),
                }),
            ),
            Err(_) => (None, None, None),
        };
        let network = p.netns.as_ref().and_then(|ns| net_usage(ns, ts));
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                io: None,
                cpu,
                memory,
                network,
                process,
                containers,
            }),
            windows: None,
        })
    }
}

/// How long a measured writable-layer usage is reused.
pub const USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

fn mem_usage(ts: i64, m: &berth_cgroups::stats::MemoryStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        psi: None,
        timestamp: ts,
        working_set_bytes: u64v(m.working_set_bytes),
        available_bytes: None,
        usage_bytes: u64v(m.usage_bytes),
        rss_bytes: u64v(m.rss_bytes),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
    }
}

/// Interface counters of a pod's network namespace, read in a thread that
/// joins it (/proc/net/dev is per network namespace).
fn net_usage(ns: &Path, ts: i64) -> Option<cri::NetworkUsage> {
    let ns = std::fs::File::open(ns).ok()?;
    let text = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd, in this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        std::fs::read_to_string("/proc/thread-self/net/dev").ok()
    })
    .join()
    .ok()??;
    let mut ifs = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 11 {
            continue;
        }
        ifs.push(cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: u64v(v[0]),
            rx_errors: u64v(v[2]),
            tx_bytes: u64v(v[8]),
            tx_errors: u64v(v[10]),
        });
    }
    let default = ifs
        .iter()
        .find(|i| i.name == "eth0")
        .cloned()
        .or_else(|| ifs.first().cloned());
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: default,
        interfaces: ifs,
    })
}
