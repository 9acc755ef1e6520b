//! Pod sandboxes: namespaces pinned without a pause process, the pod's
//! monitor, /etc files, CNI networking. Every step is recorded first so a
//! crash at any point can be undone by recovery.

use crate::cni::{Bandwidth, PodNetwork, PortMapping};
use crate::daemon::Daemon;
use crate::error::{internal, invalid, CriError, Result};
use crate::model::{new_id, now_ns, PodRecord, PodState};
use crate::netns::{self, Ns};
use crate::store::Kind;
use crate::userns::{oci_mappings, userns_mappings, USERNS};
use berth_cri_api::v1::{NamespaceMode, PodSandboxConfig};
use berth_monitor::proto::{Client, Request};
use std::fs;
use std::path::Path;
use std::process::Command;

pub fn namespace_modes(cfg: &PodSandboxConfig) -> (i32, i32, i32) {
    let o = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    match o {
        Some(o) => (o.network, o.pid, o.ipc),
        None => (0, 0, 0),
    }
}

fn validate(cfg: &PodSandboxConfig, denied_sysctls: &[String]) -> Result<()> {
    let m = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    for (f, v) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(invalid(f, "is required"));
        }
        // They travel in CNI_ARGS, `K=V;K=V`.
        if v.contains([';', '=', '\0', '\n']) || v.len() > 253 {
            return Err(invalid(
                f,
                format!("{v:?}: at most 253 characters, none of ';', '=', NUL, newline"),
            ));
        }
    }
    if !cfg.hostname.is_empty() {
        let ok = cfg.hostname.len() <= 64
            && cfg
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return Err(invalid(
                "config.hostname",
                format!("{:?} is not a valid hostname", cfg.hostname),
            ));
        }
    }
    if let Some(l) = &cfg.linux {
        if !l.cgroup_parent.is_empty() {
            berth_cgroups::normalize_path(&l.cgroup_parent)
                .map_err(|e| invalid("config.linux.cgroup_parent", e.to_string()))?;
        }
        let (net, _, ipc) = namespace_modes(cfg);
        crate::pod_resources::validate_config(l.resources.as_ref(), l.overhead.as_ref())?;
        let own = crate::sysctl::OwnNamespaces {
            net: net != NamespaceMode::Node as i32,
            ipc: ipc != NamespaceMode::Node as i32,
        };
        for (k, v) in &l.sysctls {
            crate::sysctl::check(k, v, own, denied_sysctls)
                .map_err(|m| invalid(format!("config.linux.sysctls[{k}]"), m))?;
        }
    }
    for (i, p) in cfg.port_mappings.iter().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return Err(invalid(
                format!("config.port_mappings[{i}].container_port"),
                "must be 1-65535",
            ));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(invalid(
                format!("config.port_mappings[{i}].host_port"),
                "must be 0-65535",
            ));
        }
        if berth_cri_api::v1::Protocol::try_from(p.protocol).is_err() {
            return Err(invalid(
                format!("config.port_mappings[{i}].protocol"),
                format!("unknown protocol {}", p.protocol),
            ));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                format!("config.port_mappings[{i}].host_ip"),
                format!("{:?} is not an IP address", p.host_ip),
            ));
        }
    }
    if let Some(d) = &cfg.dns_config {
        for (i, s) in d.servers.iter().enumerate() {
            if s.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    format!("config.dns_config.servers[{i}]"),
                    format!("{s:?} is not an IP address"),
                ));
            }
        }
        for (f, list) in [("searches", &d.searches), ("options", &d.options)] {
            if let Some((i, _)) = list
                .iter()
                .enumerate()
                .find(|(_, s)| s.contains(['\n', '\r', ' ']))
            {
                return Err(invalid(
                    format!("config.dns_config.{f}[{i}]"),
                    "must be one word",
                ));
            }
        }
    }
    Ok(())
}

fn resolv_conf(cfg: &PodSandboxConfig) -> String {
    match &cfg.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s += &format!("search {}\n", d.searches.join(" "));
            }
            for n in &d.servers {
                s += &format!("nameserver {n}\n");
            }
            if !d.options.is_empty() {
                s += &format!("options {}\n", d.options.join(" "));
            }
            s
        }
        _ => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ips.first() {
        s += &format!("{ip}\t{hostname}\n");
    }
    s
}

pub fn pod_network(p: &PodRecord) -> PodNetwork {
    let m = p.config.metadata.clone().unwrap_or_default();
    let bandwidth = {
        let a = &p.config.annotations;
        let rate = |k: &str| a.get(k).and_then(|v| parse_quantity(v));
        match (
            rate("kubernetes.io/ingress-bandwidth"),
            rate("kubernetes.io/egress-bandwidth"),
        ) {
            (None, None) => None,
            (i, e) => Some(Bandwidth {
                ingress_rate: i.unwrap_or(0),
                ingress_burst: i.map(|_| u32::MAX as u64).unwrap_or(0),
                egress_rate: e.unwrap_or(0),
                egress_burst: e.map(|_| u32::MAX as u64).unwrap_or(0),
            }),
        }
    };
    PodNetwork {
        id: p.id.clone(),
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        netns: p.netns.clone().unwrap_or_default(),
        port_mappings: p
            .config
            .port_mappings
            .iter()
            .filter(|pm| pm.host_port > 0)
            .map(|pm| PortMapping {
                container_port: pm.container_port as u16,
                host_port: pm.host_port as u16,
                protocol: match pm.protocol {
                    1 => "udp",
                    2 => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                host_ip: pm.host_ip.clone(),
            })
            .collect(),
        bandwidth,
    }
}

/// "10M", "1Gi", "500k" → bits per second.
fn parse_quantity(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

impl Daemon {
    pub fn handler_known(&self, h: &str) -> bool {
        h.is_empty() || h == "berth" || self.cfg.runtime.handlers.contains_key(h)
    }

    pub fn run_pod(&self, cfg: PodSandboxConfig, handler: String) -> Result<String> {
        validate(&cfg, &self.cfg.runtime.denied_sysctls)?;
        if !self.handler_known(&handler) {
            return Err(invalid(
                "runtime_handler",
                format!("no runtime handler named {handler:?}"),
            ));
        }
        let handler = if handler.is_empty() {
            self.cfg.runtime.default_handler.clone()
        } else {
            handler
        };
        // A kubelet retrying a timed-out RunPodSandbox must not get a second
        // sandbox: the name (with its attempt) is taken, as in containerd.
        if let Some(other) = self
            .pods()?
            .into_iter()
            .find(|p| p.config.metadata == cfg.metadata)
        {
            let m = cfg.metadata.clone().unwrap_or_default();
            return Err(invalid(
                "config.metadata",
                format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) already exists as {}",
                    m.namespace, m.name, m.uid, m.attempt, other.id
                ),
            ));
        }
        let userns = userns_mappings(&cfg)?;
        if userns.is_some() && !self.handler(&handler).user_namespaces() {
            return Err(invalid(
                USERNS,
                format!("runtime handler {handler:?} does not support user namespaces"),
            ));
        }
        let id = new_id();
        let (net_mode, _pid_mode, ipc_mode) = namespace_modes(&cfg);
        let host_net = net_mode == NamespaceMode::Node as i32;
        let host_ipc = ipc_mode == NamespaceMode::Node as i32;
        let cg_given = cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let (cgroup_parent, own_cgroup) = if cg_given.is_empty() {
            (
                format!(
                    "{}/{}",
                    self.cfg.runtime.cgroup_parent.trim_end_matches('/'),
                    id
                ),
                true,
            )
        } else {
            (cg_given, false)
        };
        let mut rec = PodRecord {
            id: id.clone(),
            config: cfg,
            runtime_handler: handler,
            created_at: now_ns(),
            state: PodState::Creating,
            dir: self.cfg.state.join("pods").join(&id),
            netns: None,
            ipcns: None,
            utsns: None,
            pidns: None,
            userns,
            ips: Vec::new(),
            cgroup_parent,
            own_cgroup,
        };
        // Persist before acting: recovery undoes a Creating pod.
        self.save_pod(&rec)?;
        crate::fault_point("run_pod:recorded");
        match self.setup_pod(&mut rec, host_net, host_ipc) {
            Ok(()) => {
                rec.state = PodState::Ready;
                if let Err(e) = self.save_pod(&rec) {
                    // Not recorded ready (no space for its record copy):
                    // undone now, not left for a restart's recovery.
                    self.teardown_pod(&rec);
                    let _ = self.store.delete(Kind::Pod, &id);
                    return Err(e);
                }
                Ok(id)
            }
            Err(e) => {
                self.teardown_pod(&rec);
                let _ = self.store.delete(Kind::Pod, &id);
                Err(e)
            }
        }
    }

    fn setup_pod(&self, rec: &mut PodRecord, host_net: bool, host_ipc: bool) -> Result<()> {
        fs::create_dir_all(&rec.dir)?;
        // Pod-level limits hold before any container exists.
        crate::pod_resources::apply(rec)?;
        let mut kinds = vec![];
        if !host_net {
            kinds.push(Ns::Net);
            // A pod with its own network gets its own hostname too.
            kinds.push(Ns::Uts);
        }
        if !host_ipc {
            kinds.push(Ns::Ipc);
        }
        let hostname = if rec.config.hostname.is_empty() {
            rec.config
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        } else {
            rec.config.hostname.clone()
        };
        let hostname: String = hostname.chars().take(63).collect();
        if let Some(u) = &mut rec.userns {
            let (user, paths) = netns::create_in_userns(
                &rec.dir,
                &kinds,
                Some(&hostname),
                &oci_mappings(&u.uid_map),
                &oci_mappings(&u.gid_map),
            )
            .map_err(internal)?;
            u.path = user;
            crate::fault_point("run_pod:namespaces");
            for (k, p) in kinds.iter().zip(paths) {
                match k {
                    Ns::Net => rec.netns = Some(p),
                    Ns::Ipc => rec.ipcns = Some(p),
                    Ns::Uts => rec.utsns = Some(p),
                }
            }
            self.save_pod(rec)?;
        } else if !kinds.is_empty() {
            let paths = netns::create(&rec.dir, &kinds, Some(&hostname)).map_err(internal)?;
            crate::fault_point("run_pod:namespaces");
            for (k, p) in kinds.iter().zip(paths) {
                match k {
                    Ns::Net => rec.netns = Some(p),
                    Ns::Ipc => rec.ipcns = Some(p),
                    Ns::Uts => rec.utsns = Some(p),
                }
            }
            self.save_pod(rec)?;
        }
        if !host_ipc {
            mount_pod_shm(&rec.dir)?;
        }
        let etc = rec.dir.join("etc");
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        fs::write(etc.join("resolv.conf"), resolv_conf(&rec.config))?;
        let shared_pid = rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|o| o.pid == NamespaceMode::Pod as i32);
        let pid_userns = rec.userns.as_ref().map(|u| u.path.as_path());
        self.start_monitor_with(&rec.dir, shared_pid.then_some(pid_userns))?;
        if shared_pid {
            rec.pidns = Some(pin_pid_ns(&rec.dir)?);
            self.save_pod(rec)?;
        }
        crate::fault_point("run_pod:monitor");
        if !host_net {
            let res = self
                .cni
                .setup(&pod_network(rec))
                .map_err(|e| CriError::Internal(format!("pod network: {e}")))?;
            rec.ips = res.ips.iter().map(|i| i.to_string()).collect();
            crate::fault_point("run_pod:network");
        }
        fs::write(etc.join("hosts"), hosts_file(&hostname, &rec.ips))?;
        Ok(())
    }

    pub fn start_monitor(&self, dir: &Path) -> Result<()> {
        self.start_monitor_with(dir, None)
    }

    /// `pid_init`: Some when the pod shares a PID namespace, with the user
    /// namespace that must own it (the pod's own, if it has one).
    fn start_monitor_with(&self, dir: &Path, pid_init: Option<Option<&Path>>) -> Result<()> {
        let mut cmd = Command::new(&self.monitor_bin);
        if let Some(userns) = pid_init {
            cmd.arg("--pid-init");
            if let Some(u) = userns {
                cmd.arg("--pid-init-userns").arg(u);
            }
        }
        let out = cmd
            .arg("--dir")
            .arg(dir)
            .arg("--oci-root")
            .arg(&self.oci.path)
            .arg("--max-line")
            .arg(self.cfg.logs.max_line_size.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| internal(format!("starting {}: {e}", self.monitor_bin.display())))?;
        if !out.status.success() {
            return Err(internal(format!(
                "pod monitor: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Undoes whatever of a pod exists; every step tolerates its absence.
    pub fn teardown_pod(&self, rec: &PodRecord) {
        // First: a pod dir left with its record copy but no record would
        // make berthd refuse to start (it takes it for a lost record); the
        // record outlives the teardown, so a crash here is redone anyway.
        let _ = fs::remove_file(rec.dir.join(crate::daemon::POD_RECORD));
        if rec.netns.is_some() || rec.state == PodState::Creating {
            if let Err(e) = self.cni.teardown(&pod_network(rec)) {
                tracing::warn!(pod = %rec.id, "CNI teardown: {e}");
            }
        }
        self.stop_monitor(&rec.dir);
        kill_by_pid_file(&rec.dir.join("pidinit.pid"));
        let mut pinned: Vec<_> = [Ns::Net, Ns::Ipc, Ns::Uts]
            .iter()
            .map(|k| rec.dir.join("ns").join(k.name()))
            .collect();
        pinned.push(rec.dir.join("ns").join("pid"));
        pinned.push(rec.dir.join("ns").join("user"));
        netns::remove(&pinned);
        unmount_pod_shm(&rec.dir);
        let _ = fs::remove_dir_all(&rec.dir);
        if rec.own_cgroup {
            let m = berth_cgroups::Manager::new(
                Path::new(berth_oci::CGROUP_ROOT),
                Path::new(&rec.cgroup_parent),
            );
            let _ = m.remove();
            // Other runtimes (runc) also make it in hierarchies berth's
            // manager does not use, such as the hybrid unified one.
            for e in fs::read_dir(berth_oci::CGROUP_ROOT)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = fs::remove_dir(e.path().join(rec.cgroup_parent.trim_start_matches('/')));
            }
            self.remove_default_cgroup_parent(&rec.id);
        }
    }

    /// berthd's default cgroup parent is made on demand (by the first
    /// container's cgroup) and goes with the last pod that used it, so a
    /// node without pods has none left. A parent the kubelet gave is its
    /// own and never removed. A pod created meanwhile is recorded before it
    /// can make a cgroup (and has its setup still to do), so once no other
    /// pod of ours is recorded the parent is free to go; rmdir refuses a
    /// non-empty cgroup anyway.
    fn remove_default_cgroup_parent(&self, gone: &str) {
        let others = self
            .pods()
            .map(|ps| ps.iter().any(|p| p.own_cgroup && p.id != gone))
            .unwrap_or(true);
        if others {
            return;
        }
        let parent = self.cfg.runtime.cgroup_parent.trim_matches('/');
        if parent.is_empty() {
            return;
        }
        for e in fs::read_dir(berth_oci::CGROUP_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            // Only the parent itself: what is above it is not berthd's.
            let _ = fs::remove_dir(e.path().join(parent));
        }
    }

    fn stop_monitor(&self, dir: &Path) {
        let c = Client::new(dir);
        if c.call_timeout(&Request::Shutdown, Some(std::time::Duration::from_secs(5)))
            .is_ok()
        {
            return;
        }
        // Unresponsive or refusing (containers left): kill it by its pid file.
        kill_by_pid_file(&dir.join("monitor.pid"));
    }

    pub fn stop_pod(&self, id: &str) -> Result<()> {
        let Some(mut rec) = self.resolve_pod(id)? else {
            return Ok(());
        };
        for c in self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == rec.id)
        {
            self.stop_container_inner(&c.id, 0)?;
        }
        if rec.state == PodState::Ready {
            rec.state = PodState::NotReady;
            self.save_pod(&rec)?;
        }
        if rec.netns.is_some() {
            self.cni
                .teardown(&pod_network(&rec))
                .map_err(|e| CriError::Internal(format!("pod network teardown: {e}")))?;
        }
        Ok(())
    }

    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let Some(mut rec) = self.resolve_pod(id)? else {
            return Ok(());
        };
        self.stop_pod(&rec.id)?;
        for c in self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == rec.id)
        {
            self.remove_container_inner(&c.id)?;
        }
        crate::fault_point("remove_pod:containers");
        rec.state = PodState::NotReady;
        self.teardown_pod(&rec);
        crate::fault_point("remove_pod:torn_down");
        self.store.delete(Kind::Pod, &rec.id)?;
        Ok(())
    }
}

/// The pod's /dev/shm: one tmpfs its containers share (they share the IPC
/// namespace, and POSIX shared memory lives there), 64 MiB as containerd's.
pub fn pod_shm(dir: &Path) -> std::path::PathBuf {
    dir.join("shm")
}

fn mount_pod_shm(dir: &Path) -> Result<()> {
    let target = pod_shm(dir);
    fs::create_dir_all(&target)?;
    nix::mount::mount(
        Some("shm"),
        &target,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| {
        internal(format!(
            "mounting the pod's /dev/shm on {}: {e}",
            target.display()
        ))
    })
}

fn unmount_pod_shm(dir: &Path) {
    let target = pod_shm(dir);
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
}

/// Whether the pod has its shared /dev/shm mounted (pods made before it
/// existed, and host-IPC pods, do not).
pub fn has_pod_shm(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), fs::metadata(pod_shm(dir))) {
        (Ok(d), Ok(s)) => d.dev() != s.dev(),
        _ => false,
    }
}

/// Kills the berth-monitor (or its pid-namespace init) named by a pid file.
fn kill_by_pid_file(f: &Path) {
    if let Ok(pid) = fs::read_to_string(f) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            if is_monitor(pid) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Bind-mounts the pod init's PID namespace to `dir/ns/pid`.
fn pin_pid_ns(dir: &Path) -> Result<std::path::PathBuf> {
    let pid = fs::read_to_string(dir.join("pidinit.pid"))
        .map_err(|e| internal(format!("the pod's pid namespace init: {e}")))?;
    let target = dir.join("ns").join("pid");
    fs::create_dir_all(dir.join("ns"))?;
    fs::File::create(&target)?;
    netns::bind(Path::new(&format!("/proc/{}/ns/pid", pid.trim())), &target).map_err(internal)?;
    Ok(target)
}

/// The pid names a berth-monitor (pid files can go stale).
fn is_monitor(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "berth-monitor")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("x"), None);
    }
}
