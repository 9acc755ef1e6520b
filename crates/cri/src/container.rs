//! Containers: the image's rootfs view, the OCI spec, and the pod's monitor
//! creating and starting them through the berth runtime library.

use crate::daemon::Daemon;
use crate::error::{internal, invalid, CriError, Result};
use crate::model::{new_id, now_ns, ContainerRecord, CtrState, PodRecord, PodState};
use crate::spec::{self, ContainerInput, SandboxInfo};
use crate::store::Kind;
use berth_cri_api::v1::{ContainerConfig, ContainerEventType, PodSandboxConfig};
use berth_monitor::proto::{self, Client, ExitInfo, Request, Response};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

fn validate(cfg: &ContainerConfig) -> Result<()> {
    let m = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    if m.name.is_empty() {
        return Err(invalid("config.metadata.name", "is required"));
    }
    let img = cfg.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
    if img.is_empty() {
        return Err(invalid("config.image.image", "is required"));
    }
    if cfg.log_path.contains("..") || cfg.log_path.starts_with('/') {
        return Err(invalid(
            "config.log_path",
            "must be a relative path inside the pod's log directory",
        ));
    }
    Ok(())
}

impl Daemon {
    pub fn create_container(
        &self,
        pod_id: &str,
        cfg: ContainerConfig,
        // The request's copy of the pod config: ignored for the recorded one.
        _sandbox_cfg: Option<PodSandboxConfig>,
    ) -> Result<String> {
        validate(&cfg)?;
        let pod = self.find_pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(CriError::Precondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let name = cfg
            .metadata
            .as_ref()
            .map(|m| (m.name.clone(), m.attempt))
            .unwrap_or_default();
        if self.containers()?.iter().any(|c| {
            c.pod_id == pod.id
                && c.config
                    .metadata
                    .as_ref()
                    .map(|m| (m.name.clone(), m.attempt))
                    == Some(name.clone())
        }) {
            return Err(invalid(
                "config.metadata",
                format!(
                    "a container named {:?} (attempt {}) already exists in the pod",
                    name.0, name.1
                ),
            ));
        }
        let image_ref = cfg
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self
            .images
            .images
            .get(&image_ref)
            .map_err(|_| CriError::NotFound(format!("image {image_ref:?}")))?;
        if let Some(sc) = cfg.linux.as_ref().and_then(|l| l.security_context.as_ref()) {
            let apparmor = sc.apparmor.as_ref().is_some_and(|p| {
                p.profile_type
                    != berth_cri_api::v1::security_profile::ProfileType::Unconfined as i32
            });
            if apparmor || sc.selinux_options.is_some() {
                tracing::warn!(pod = %pod.id, "AppArmor/SELinux settings are not supported here and are ignored");
            }
        }
        let target_pidns = self.target_pidns(&pod, &cfg)?;
        let volume_images = self.image_volume_images(&cfg)?;
        // The container's own stop signal, else the image's STOPSIGNAL.
        let stop_signal = match crate::stop_signal::from_config(&cfg)? {
            Some(n) => n,
            None => spec::stop_signal(&image.config)
                .map_err(|e| CriError::Internal(format!("image {image_ref}: {e}")))?,
        };
        let id = new_id();
        let bundle = self.cfg.state.join("containers").join(&id);
        let log_path = {
            let dir = &pod.config.log_directory;
            (!dir.is_empty() && !cfg.log_path.is_empty())
                .then(|| PathBuf::from(dir).join(&cfg.log_path))
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: cfg,
            image_ref: image_ref.clone(),
            image_id: image.id.to_string(),
            image_digest_ref: image.repo_digests.first().cloned().unwrap_or_default(),
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            state: CtrState::Creating,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: log_path.clone(),
            bundle: bundle.clone(),
            stop_signal,
            user: None,
            image_volumes: volume_images
                .iter()
                .map(|(_, i)| i.id.to_string())
                .collect(),
        };
        self.save_container(&rec)?;
        let r = (|| -> Result<crate::model::ProcessUser> {
            fs::create_dir_all(&bundle)?;
            crate::fault_point("create:recorded");
            let view = match &pod.userns {
                None => self.images.snapshots.create_view(&id, &image.chain_id)?,
                Some(u) => self.idmapped_view(&id, &image.chain_id, u)?,
            };
            let image_volumes =
                self.prepare_image_volumes(&id, &rec.config, &pod, &volume_images)?;
            crate::fault_point("create:view");
            // The recorded config, never the request's copy: a request must
            // not claim, say, a privileged pod it is not.
            let sb = sandbox_info(&pod, &pod.config);
            let input = ContainerInput {
                id: &id,
                config: &rec.config,
                image: &image.config,
                rootfs: &view.rootfs,
                seccomp_localhost_root: &self.cfg.runtime.seccomp_profile_root,
                target_pidns: target_pidns.clone(),
                image_volumes,
                cdi_spec_dirs: &self.cfg.cdi.spec_dirs,
            };
            let spec = spec::container_spec(&sb, &input).map_err(|e| CriError::Invalid {
                field: e.field.clone(),
                msg: e.msg.clone(),
            })?;
            let mut spec = spec;
            clamp_oom_score_adj(&mut spec, &id);
            let user = spec
                .process()
                .as_ref()
                .map(|p| crate::model::ProcessUser {
                    uid: p.user().uid(),
                    gid: p.user().gid(),
                    additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
                })
                .unwrap_or_default();
            let json = serde_json::to_vec_pretty(&spec).map_err(internal)?;
            fs::write(bundle.join("config.json"), json)?;
            if let Some(l) = &log_path {
                if let Some(d) = l.parent() {
                    fs::create_dir_all(d)?;
                }
            }
            let req = Request::Create {
                id: id.clone(),
                bundle: bundle.clone(),
                log_path: log_path.clone(),
                tty: rec.config.tty,
                stdin: rec.config.stdin,
                stdin_once: rec.config.stdin_once,
                runtime: self.handler(&pod.runtime_handler).external(),
            };
            Client::new(&pod.dir)
                .call(&req)
                .map_err(|e| internal(format!("creating container: {e}")))?;
            crate::fault_point("create:created");
            Ok(user)
        })();
        match r {
            Ok(user) => rec.user = Some(user),
            Err(e) => {
                self.cleanup_container(&rec);
                let _ = self.store.delete(Kind::Container, &id);
                return Err(e);
            }
        }
        rec.state = CtrState::Created;
        // A copy for `berthd repair`; its later states are read back from
        // the monitor and the exit records.
        let copy = serde_json::to_vec(&rec).map_err(internal).and_then(|json| {
            Ok(crate::store::write_atomic(
                &bundle.join(crate::daemon::CONTAINER_RECORD),
                &json,
            )?)
        });
        if let Err(e) = copy {
            self.cleanup_container(&rec);
            let _ = self.store.delete(Kind::Container, &id);
            return Err(e);
        }
        self.save_container(&rec)?;
        self.event(&rec, ContainerEventType::ContainerCreatedEvent);
        Ok(id)
    }

    /// For `namespace_options.pid` TARGET (`kubectl debug --target`): the
    /// PID namespace of the target, which must be a running container of
    /// the same pod.
    fn target_pidns(&self, pod: &PodRecord, cfg: &ContainerConfig) -> Result<Option<PathBuf>> {
        let Some(o) = cfg
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|o| o.pid == berth_cri_api::v1::NamespaceMode::Target as i32)
        else {
            return Ok(None);
        };
        const FIELD: &str = "config.linux.security_context.namespace_options.target_id";
        if o.target_id.is_empty() {
            return Err(invalid(FIELD, "is required with a TARGET pid namespace"));
        }
        let target = self
            .container(&o.target_id)?
            .filter(|t| t.pod_id == pod.id)
            .ok_or_else(|| {
                invalid(
                    FIELD,
                    format!("{:?} is not a container of pod {}", o.target_id, pod.id),
                )
            })?;
        let target = self.refresh(&target)?;
        let pid = (target.state == CtrState::Running)
            .then(|| {
                self.handler(&pod.runtime_handler)
                    .init_pid(self, &target.id)
            })
            .flatten()
            .ok_or_else(|| invalid(FIELD, format!("container {} is not running", target.id)))?;
        Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
    }

    /// A rootfs view whose layers appear owned by the pod's root: each one
    /// an idmapped clone through the pod's own user namespace.
    pub(crate) fn idmapped_view(
        &self,
        id: &str,
        chain: &berth_image::Digest,
        u: &crate::model::PodUserNs,
    ) -> Result<berth_image::View> {
        let userns = berth_oci::fsutil::open_path(&u.path, libc::O_RDONLY)
            .map_err(|e| internal(format!("the pod's user namespace: {e}")))?;
        let map_layer = |p: &std::path::Path| {
            berth_oci::idmap::idmapped_tree(p, false, false, &userns)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        let idmap = berth_image::Idmap {
            map_layer: &map_layer,
            root_owner: u.root_owner(),
        };
        Ok(self
            .images
            .snapshots
            .create_view_with(id, chain, Some(&idmap))?)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let rec = self.find_container(id)?;
        let rec_now = self.refresh(&rec)?;
        if rec_now.state != CtrState::Created {
            return Err(CriError::Precondition(format!(
                "container {} is {:?}, not created",
                rec.id, rec_now.state
            )));
        }
        let pod = self.pod_of(&rec)?;
        // Taken before the start: a quick process may be gone before the
        // call returns, and finished_at must not precede started_at.
        let started_at = now_ns();
        Client::new(&pod.dir)
            .call(&Request::Start { id: rec.id.clone() })
            .map_err(|e| internal(format!("starting container: {e}")))?;
        crate::fault_point("start:started");
        // A quick process's exit may already have been folded in: keep it.
        let updated = self
            .store
            .update(Kind::Container, &rec.id, |mut r: ContainerRecord| {
                r.started_at = started_at;
                if r.state == CtrState::Created {
                    r.state = CtrState::Running;
                }
                Some(r)
            })?;
        if let Some(r) = updated {
            self.event(&r, ContainerEventType::ContainerStartedEvent);
        }
        Ok(())
    }

    fn pod_of(&self, c: &ContainerRecord) -> Result<PodRecord> {
        self.find_pod(&c.pod_id)
    }

    /// The record with a recorded exit folded in (the monitor writes exits
    /// while berthd may be down). The change is made in one store
    /// transaction on the stored record: a container removed meanwhile is
    /// not brought back, and only the caller that made the change emits
    /// the stopped event.
    pub fn refresh(&self, rec: &ContainerRecord) -> Result<ContainerRecord> {
        if !matches!(rec.state, CtrState::Running | CtrState::Created) {
            return Ok(rec.clone());
        }
        let dir = self.cfg.state.join("pods").join(&rec.pod_id);
        let mut exit = proto::read_exit(&dir, &rec.id);
        let mut lost = false;
        if exit.is_none() && rec.state == CtrState::Running && !self.alive(rec) {
            match monitor_info(&dir, &rec.id) {
                // An exit the monitor could not write yet (a full disk) is
                // in its memory.
                Some(i) => exit = i.exit,
                None => {
                    // The exit may have been recorded while we looked.
                    exit = proto::read_exit(&dir, &rec.id);
                    lost = exit.is_none();
                }
            }
        }
        if exit.is_none() && !lost {
            return Ok(rec.clone());
        }
        let updated = self
            .store
            .update(Kind::Container, &rec.id, |mut cur: ContainerRecord| {
                if !matches!(cur.state, CtrState::Running | CtrState::Created) {
                    return None;
                }
                match &exit {
                    Some(x) => apply_exit(&mut cur, x),
                    None => {
                        // No record and no process: the monitor died with it.
                        cur.state = CtrState::Exited;
                        cur.exit_code = 255;
                        cur.finished_at = now_ns();
                        cur.reason = "Error".into();
                        cur.message =
                            "the container's monitor went away; exit status unknown".into();
                    }
                }
                Some(cur)
            })?;
        match updated {
            Some(r) => {
                self.event(&r, ContainerEventType::ContainerStoppedEvent);
                Ok(r)
            }
            // Changed or removed by someone else meanwhile.
            None => Ok(self.container(&rec.id)?.unwrap_or_else(|| rec.clone())),
        }
    }

    /// Folds the exits the monitors recorded into the store, so a container
    /// that ends on its own is reported (and its stopped event sent) even
    /// when nobody asks about it. Cheap: one file lookup per live container.
    pub fn fold_recorded_exits(&self) {
        for c in self.containers().unwrap_or_default() {
            if matches!(c.state, CtrState::Running | CtrState::Created) {
                let dir = self.cfg.state.join("pods").join(&c.pod_id);
                if proto::exit_path(&dir, &c.id).exists() {
                    let _ = self.refresh(&c);
                }
            }
        }
    }

    fn alive(&self, r: &ContainerRecord) -> bool {
        self.handler_of_pod(&r.pod_id).alive(self, &r.id)
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(rec) = self.resolve_container(id)? else {
            return Ok(());
        };
        self.stop_container_inner(&rec.id, timeout)
    }

    pub fn stop_container_inner(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(rec) = self.container(id)? else {
            return Ok(());
        };
        let rec = self.refresh(&rec)?;
        match rec.state {
            CtrState::Exited => return Ok(()),
            CtrState::Creating => return Ok(()),
            _ => {}
        }
        let pod = self.pod_of(&rec)?;
        let client = Client::new(&pod.dir);
        let wait = |t: Duration| -> Option<ExitInfo> {
            match client.call_timeout(&Request::Wait { id: rec.id.clone() }, Some(t)) {
                Ok((Response::Exited(x), _)) => Some(x),
                _ => proto::read_exit(&pod.dir, &rec.id),
            }
        };
        let handler = self.handler(&pod.runtime_handler);
        let mut exit = None;
        if rec.state == CtrState::Running && timeout > 0 {
            exit = self.stop_gracefully(&handler, &rec, Duration::from_secs(timeout as u64), &wait);
        }
        if exit.is_none() {
            let _ = handler.kill(self, &rec.id, libc::SIGKILL, true);
            exit = wait(Duration::from_secs(10));
        }
        if exit.is_none() && rec.state != CtrState::Created {
            return Err(internal(format!("container {} did not stop", rec.id)));
        }
        // Only the one who records the exit reports it (the exit watcher
        // may have folded the monitor's record meanwhile).
        let updated = self
            .store
            .update(Kind::Container, &rec.id, |mut r: ContainerRecord| {
                if !matches!(r.state, CtrState::Running | CtrState::Created) {
                    return None;
                }
                match &exit {
                    Some(x) => apply_exit(&mut r, x),
                    None => {
                        // Never started: there is nothing to wait for.
                        r.state = CtrState::Exited;
                        r.finished_at = now_ns();
                        r.exit_code = 137;
                        r.reason = "Error".into();
                    }
                }
                Some(r)
            })?;
        if let Some(r) = updated {
            self.event(&r, ContainerEventType::ContainerStoppedEvent);
        }
        Ok(())
    }

    /// Sends the stop signal and waits up to `grace` for the exit. The init
    /// is PID 1 of its namespace, so the kernel drops a signal it has no
    /// handler for: one sent before the program installed its handler (a
    /// StopContainer right after StartContainer) would be lost and the stop
    /// would wait out the whole grace period. So while the init does not
    /// catch the signal, it is sent again every few milliseconds; once it
    /// does, it is sent one last time (the earlier ones may have been
    /// dropped) and the rest of the grace period is waited. A program that
    /// catches it from the start gets it once.
    fn stop_gracefully(
        &self,
        handler: &crate::handler::Handler,
        rec: &ContainerRecord,
        grace: Duration,
        wait: &dyn Fn(Duration) -> Option<ExitInfo>,
    ) -> Option<ExitInfo> {
        let sig = rec.stop_signal;
        let deadline = std::time::Instant::now() + grace;
        let pid = handler.init_pid(self, &rec.id);
        let mut nap = Duration::from_millis(5);
        loop {
            let caught = pid.is_none_or(|p| signal_caught(p, sig));
            if handler.kill(self, &rec.id, sig, false).is_err() {
                // Gone already, or the runtime refuses: wait briefly for
                // the exit and let the caller force it.
                return wait(Duration::from_millis(100));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if caught {
                return wait(left);
            }
            if let Some(x) = wait(nap.min(left)) {
                return Some(x);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            nap = (nap * 2).min(Duration::from_millis(200));
        }
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let Some(rec) = self.resolve_container(id)? else {
            return Ok(());
        };
        self.remove_container_inner(&rec.id)
    }

    pub fn remove_container_inner(&self, id: &str) -> Result<()> {
        let Some(rec) = self.container(id)? else {
            return Ok(());
        };
        let rec = self.refresh(&rec)?;
        if rec.state == CtrState::Running {
            self.stop_container_inner(&rec.id, 0)?;
        }
        self.cleanup_container(&rec);
        self.store.delete(Kind::Container, &rec.id)?;
        self.event(&rec, ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    /// Removes the runtime state, rootfs view and bundle of a container.
    pub fn cleanup_container(&self, rec: &ContainerRecord) {
        if let Err(e) = self.handler_of_pod(&rec.pod_id).delete(self, &rec.id) {
            tracing::warn!(container = %rec.id, "delete: {e}");
        }
        let dir = self.cfg.state.join("pods").join(&rec.pod_id);
        let _ = Client::new(&dir).call_timeout(
            &Request::Forget { id: rec.id.clone() },
            Some(Duration::from_secs(5)),
        );
        let _ = fs::remove_file(proto::exit_path(&dir, &rec.id));
        if let Err(e) = self.images.snapshots.remove_view(&rec.id) {
            if !matches!(e, berth_image::Error::NotFound(_)) {
                tracing::warn!(container = %rec.id, "removing the rootfs view: {e}");
            }
        }
        self.remove_image_volumes(&rec.id);
        let _ = fs::remove_dir_all(&rec.bundle);
    }

    pub fn reopen_log(&self, id: &str) -> Result<()> {
        let rec = self.find_container(id)?;
        let rec = self.refresh(&rec)?;
        if rec.state != CtrState::Running {
            return Err(CriError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.pod_of(&rec)?;
        Client::new(&pod.dir)
            .call(&Request::ReopenLog { id: rec.id.clone() })
            .map_err(|e| internal(format!("reopening the log: {e}")))?;
        Ok(())
    }

    /// Emits a lifecycle event with the pod's and its containers' statuses,
    /// as the kubelet's evented PLEG wants them.
    pub fn event(&self, rec: &ContainerRecord, t: ContainerEventType) {
        let pod_sandbox_status = self
            .pod(&rec.pod_id)
            .ok()
            .flatten()
            .map(|p| crate::views::pod_status(&p));
        let mut containers_statuses: Vec<_> = self
            .containers()
            .unwrap_or_default()
            .iter()
            .filter(|c| c.pod_id == rec.pod_id && c.id != rec.id)
            .map(crate::views::container_status)
            .collect();
        if t != ContainerEventType::ContainerDeletedEvent {
            containers_statuses.push(crate::views::container_status(rec));
        }
        self.emit(berth_cri_api::v1::ContainerEventResponse {
            container_id: rec.id.clone(),
            container_event_type: t as i32,
            created_at: now_ns(),
            pod_sandbox_status,
            containers_statuses,
        });
    }
}

/// Without CAP_SYS_RESOURCE a process may not lower its oom_score_adj
/// below what it inherited: such a request is raised to berthd's own value,
/// with a warning, rather than failing the container.
fn clamp_oom_score_adj(spec: &mut oci_spec::runtime::Spec, id: &str) {
    let Some(p) = spec.process().clone() else {
        return;
    };
    let Some(want) = p.oom_score_adj() else {
        return;
    };
    let own: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if want >= own || has_cap_sys_resource() {
        return;
    }
    tracing::warn!(container = %id, requested = want, used = own, "oom_score_adj below berthd's own needs CAP_SYS_RESOURCE; clamped");
    let mut p = p;
    p.set_oom_score_adj(Some(own));
    spec.set_process(Some(p));
}

const CAP_SYS_RESOURCE: u32 = 24;

fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Whether the pod's monitor (still) has `id` in its table: a restarted
/// monitor does not, so the exit of a container it never parented cannot
/// be waited for.
/// What the pod's monitor knows of container `id`.
pub fn monitor_info(dir: &std::path::Path, id: &str) -> Option<proto::ContainerInfo> {
    match Client::new(dir).call_timeout(&Request::Status, Some(Duration::from_secs(5))) {
        Ok((Response::Containers { containers }, _)) => containers.into_iter().find(|c| c.id == id),
        _ => None,
    }
}

pub fn apply_exit(r: &mut ContainerRecord, x: &ExitInfo) {
    r.state = CtrState::Exited;
    r.exit_code = x.code;
    r.finished_at = x.finished_at;
    r.reason = if x.oom_killed {
        "OOMKilled".into()
    } else if x.code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    if x.oom_killed {
        r.message = "the container was killed for running out of memory".into();
    }
}

pub fn sandbox_info<'a>(pod: &'a PodRecord, cfg: &'a PodSandboxConfig) -> SandboxInfo<'a> {
    let etc = pod.dir.join("etc");
    let mut etc_files = vec![("/etc/resolv.conf".to_string(), etc.join("resolv.conf"))];
    if pod.utsns.is_some() {
        etc_files.push(("/etc/hostname".to_string(), etc.join("hostname")));
    }
    etc_files.push(("/etc/hosts".to_string(), etc.join("hosts")));
    SandboxInfo {
        id: &pod.id,
        config: cfg,
        netns: pod.netns.clone(),
        ipcns: pod.ipcns.clone(),
        utsns: pod.utsns.clone(),
        pidns: pod.pidns.clone(),
        userns: pod.userns.as_ref().map(|u| spec::UserNs {
            path: Some(u.path.clone()),
            uid_map: u.uid_map.clone(),
            gid_map: u.gid_map.clone(),
        }),
        etc_files,
        shm: (pod.ipcns.is_some() && crate::sandbox::has_pod_shm(&pod.dir))
            .then(|| crate::sandbox::pod_shm(&pod.dir)),
        cgroup_parent: pod.cgroup_parent.clone(),
    }
}

/// Whether process `pid` has a handler installed for `sig` (`SigCgt` in
/// /proc/PID/status). An unreadable status counts as caught: nothing to
/// repeat for a process that is gone.
fn signal_caught(pid: i32, sig: i32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_none_or(|mask| !(1..=64).contains(&sig) || mask & (1u64 << (sig - 1)) != 0)
}
