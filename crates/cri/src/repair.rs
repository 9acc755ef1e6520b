//! `berthd repair`: the records of a lost store rebuilt from what is on
//! disk, and the check that keeps berthd from starting without them.
//!
//! Every pod past Creating has a copy of its record in its directory
//! (`pod.json`), every created container one in its bundle
//! (`container.json`); what changes later (a container's start and exit)
//! is read back from the pod's monitor and its exit records.

use crate::daemon::{Daemon, CONTAINER_RECORD, POD_RECORD};
use crate::model::{ContainerRecord, CtrState, PodRecord, PodState};
use crate::store::Kind;
use berth_monitor::proto;
use std::collections::HashSet;
use std::path::Path;

/// The pods the state directory holds: directories under `pods/` with a
/// record copy, a monitor or pinned namespaces (not an empty leftover).
pub fn pods_on_disk(state: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(state.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let d = e.path();
            d.join(POD_RECORD).exists() || d.join("monitor.pid").exists() || d.join("ns").is_dir()
        })
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    ids.sort();
    ids
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
}

impl Daemon {
    /// Records every pod and container found on disk that the store lacks;
    /// returns what it did, one line each. Recovery (at the next start)
    /// then treats them as it treats recorded ones.
    pub fn repair(&self) -> crate::error::Result<Vec<String>> {
        let mut report = Vec::new();
        let mut pods: HashSet<String> = self.pods()?.into_iter().map(|p| p.id).collect();
        let recorded_ctrs: HashSet<String> = self.containers()?.into_iter().map(|c| c.id).collect();
        for id in pods_on_disk(&self.cfg.state) {
            if pods.contains(&id) {
                continue;
            }
            let dir = self.cfg.state.join("pods").join(&id);
            let rec = match read_json::<PodRecord>(&dir.join(POD_RECORD)) {
                Ok(r) if r.id == id => {
                    report.push(format!("pod {id}: recorded again ({:?})", r.state));
                    r
                }
                r => {
                    // Never ready (killed while being created, or made by a
                    // berthd without record copies): recorded as Creating,
                    // so recovery undoes it as it would have.
                    let why = match r {
                        Ok(_) => format!("{POD_RECORD} names another pod"),
                        Err(e) => e,
                    };
                    report.push(format!(
                        "pod {id}: no usable record copy ({why}); recorded as being created, so berthd removes it when it starts"
                    ));
                    let ns = |n: &str| Some(dir.join("ns").join(n)).filter(|p| p.exists());
                    PodRecord {
                        id: id.clone(),
                        config: Default::default(),
                        runtime_handler: String::new(),
                        created_at: 0,
                        state: PodState::Creating,
                        dir: dir.clone(),
                        netns: ns("net"),
                        ipcns: ns("ipc"),
                        utsns: ns("uts"),
                        pidns: ns("pid"),
                        userns: None,
                        ips: vec![],
                        cgroup_parent: format!(
                            "{}/{id}",
                            self.cfg.runtime.cgroup_parent.trim_end_matches('/')
                        ),
                        own_cgroup: true,
                    }
                }
            };
            self.store.put(Kind::Pod, &rec.id, &rec)?;
            pods.insert(id);
        }
        for e in std::fs::read_dir(self.cfg.state.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().to_string();
            if recorded_ctrs.contains(&id) {
                continue;
            }
            let mut rec = match read_json::<ContainerRecord>(&e.path().join(CONTAINER_RECORD)) {
                Ok(r) if r.id == id && pods.contains(&r.pod_id) => r,
                Ok(_) => {
                    report.push(format!(
                        "container {id}: its pod is gone; berthd removes it when it starts"
                    ));
                    continue;
                }
                Err(e) => {
                    report.push(format!(
                        "container {id}: never created ({e}); berthd removes it when it starts"
                    ));
                    continue;
                }
            };
            let pod = self.cfg.state.join("pods").join(&rec.pod_id);
            let handler = self.handler_of_pod(&rec.pod_id);
            // Its state now, from who knows: the exit record, the monitor,
            // the process. When it started is not kept: its creation time
            // stands in.
            let info = crate::container::monitor_info(&pod, &id);
            let exit = proto::read_exit(&pod, &id).or_else(|| info.as_ref()?.exit.clone());
            rec.state = CtrState::Created;
            if let Some(x) = &exit {
                rec.started_at = rec.created_at;
                crate::container::apply_exit(&mut rec, x);
            } else if info.as_ref().is_some_and(|i| i.started)
                || (info.is_none() && handler.alive(self, &id))
            {
                rec.started_at = rec.created_at;
                rec.state = CtrState::Running;
            } else if info.is_none() {
                // Neither a monitor that holds it nor a process: reported
                // exited with its status unknown (by the refresh at start).
                rec.state = CtrState::Running;
            }
            report.push(format!("container {id}: recorded again ({:?})", rec.state));
            self.store.put(Kind::Container, &id, &rec)?;
        }
        Ok(report)
    }
}
