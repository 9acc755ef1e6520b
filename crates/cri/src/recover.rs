//! Restart recovery: whatever a killed berthd left half-done is finished or
//! undone, and whatever exists without a record is removed.

use crate::daemon::Daemon;
use crate::model::{ContainerRecord, CtrState, PodState};
use crate::store::Kind;
use berth_monitor::proto::Client;
use std::collections::HashSet;

impl Daemon {
    pub fn recover(&self) {
        let pods = self.pods().unwrap_or_default();
        for p in &pods {
            if p.state == PodState::Creating {
                tracing::info!(pod = %p.id, "recovery: undoing a pod that was being created");
                for c in self
                    .containers()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.pod_id == p.id)
                {
                    self.cleanup_container(&c);
                    let _ = self.store.delete(Kind::Container, &c.id);
                }
                self.teardown_pod(p);
                let _ = self.store.delete(Kind::Pod, &p.id);
            } else if p.state == PodState::Ready
                && [&p.netns, &p.ipcns, &p.utsns]
                    .into_iter()
                    .flatten()
                    .any(|ns| !crate::netns::is_pinned(ns))
            {
                // After a reboot the pinned namespaces are gone: the pod can
                // only be stopped and removed (the kubelet makes a new one).
                tracing::warn!(pod = %p.id, "recovery: the pod's namespaces are gone; not ready");
                let mut p = p.clone();
                p.state = PodState::NotReady;
                let _ = self.save_pod(&p);
            } else if p.state == PodState::Ready && !Client::new(&p.dir).alive() {
                tracing::warn!(pod = %p.id, "recovery: the pod's monitor is gone; starting a new one");
                if let Err(e) = self.start_monitor(&p.dir) {
                    tracing::warn!(pod = %p.id, "recovery: {e}");
                }
            }
        }
        let pods = self.pods().unwrap_or_default();
        let pod_ids: HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        let ctrs = self.containers().unwrap_or_default();
        for c in &ctrs {
            if c.state == CtrState::Creating || !pod_ids.contains(c.pod_id.as_str()) {
                tracing::info!(container = %c.id, "recovery: removing a half-created container");
                self.cleanup_container(c);
                let _ = self.store.delete(Kind::Container, &c.id);
            } else {
                let mut c = c.clone();
                if c.state == CtrState::Created {
                    // Killed after the monitor started it, before recording
                    // that: the monitor knows.
                    let dir = self.cfg.state.join("pods").join(&c.pod_id);
                    let started = crate::container::monitor_info(&dir, &c.id)
                        .is_some_and(|i| i.started || i.exit.is_some());
                    if started {
                        tracing::info!(container = %c.id, "recovery: the container was started");
                        let now = crate::model::now_ns();
                        if let Ok(Some(r)) =
                            self.store
                                .update(Kind::Container, &c.id, |mut r: ContainerRecord| {
                                    r.state = CtrState::Running;
                                    r.started_at = now;
                                    Some(r)
                                })
                        {
                            c = r;
                        }
                    }
                }
                let _ = self.refresh(&c);
            }
        }
        let ctr_ids: HashSet<String> = self
            .containers()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        // Runtime state, rootfs views and bundles nobody records.
        for id in self.oci.ids().unwrap_or_default() {
            if !ctr_ids.contains(&id) {
                let _ = berth_oci::container::delete(&self.oci, &id, true);
            }
        }
        for name in self.cfg.runtime.handlers.keys() {
            let h = self.handler(name);
            if let Some(rt) = h.external() {
                for e in std::fs::read_dir(&rt.root).into_iter().flatten().flatten() {
                    let id = e.file_name().to_string_lossy().to_string();
                    if !ctr_ids.contains(&id) {
                        let _ = h.delete(self, &id);
                    }
                }
            }
        }
        for v in self.images.snapshots.views().unwrap_or_default() {
            if !ctr_ids.contains(crate::image_volume::owner_of(&v.id)) {
                let _ = self.images.snapshots.remove_view(&v.id);
            }
        }
        for dir in ["containers", "pods"] {
            let Ok(rd) = std::fs::read_dir(self.cfg.state.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let known = if dir == "pods" {
                    pod_ids.contains(name.as_str())
                } else {
                    ctr_ids.contains(&name)
                };
                if known {
                    continue;
                }
                if dir == "pods" {
                    // A pod directory without a record: tear down as a pod.
                    let rec = crate::model::PodRecord {
                        id: name.clone(),
                        config: Default::default(),
                        runtime_handler: String::new(),
                        created_at: 0,
                        state: PodState::Creating,
                        dir: e.path(),
                        netns: None,
                        ipcns: None,
                        utsns: None,
                        pidns: None,
                        userns: None,
                        ips: vec![],
                        cgroup_parent: String::new(),
                        own_cgroup: false,
                    };
                    self.teardown_pod(&rec);
                } else {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        for id in self.cni.cached_ids() {
            if !pod_ids.contains(id.as_str()) {
                let net = crate::cni::PodNetwork {
                    id: id.clone(),
                    ..Default::default()
                };
                if let Err(e) = self.cni.teardown(&net) {
                    tracing::warn!(pod = %id, "recovery: CNI teardown: {e}");
                }
            }
        }
    }
}
