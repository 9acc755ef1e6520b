//! CNI: pod networking through the plugins named by the first network config.
//!
//! The kubelet's rules (CNI spec 1.0, also 0.3/0.4 configs): the lexically first valid `*.conf`,
//! `*.conflist` or `*.json` in the conf dir is the pod network; its plugins run in order for ADD
//! (each gets the previous one's result) and in reverse for DEL. What ADD used (config, arguments,
//! result) is cached per sandbox, so DEL and CHECK run the same config after a restart or after the
//! conf dir changed. Synchronous: callers run it on a blocking thread.

mod cache;
mod conf;
mod exec;
mod netns;

use conf::{ConfCache, NetworkList};
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The interface name of the pod's network inside its namespace.
const IF_NAME: &str = "eth0";

/// Where network configs and plugins are, and where per-pod state is kept.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    /// Searched in order for plugin binaries (also the plugins' `CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cache_dir: "/var/lib/berthd/cni".into(),
        }
    }
}

/// A pod's network attachment request.
#[derive(Debug, Clone, Default)]
pub struct PodNetwork {
    /// Sandbox id (CNI_CONTAINERID, K8S_POD_INFRA_CONTAINER_ID).
    pub id: String,
    /// K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_UID.
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// A bind-mounted network namespace file.
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, Clone)]
pub struct PortMapping {
    pub container_port: u16,
    /// 0: not mapped on the host (skipped, as the kubelet does).
    pub host_port: u16,
    /// "tcp", "udp" or "sctp" (any case).
    pub protocol: String,
    /// "" = any address.
    pub host_ip: String,
}

/// Rates in bits per second, bursts in bits (the bandwidth plugin's units).
#[derive(Debug, Clone, Default)]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetworkResult {
    /// Pod IPs, the first one primary (IPv4 before IPv6).
    pub ips: Vec<IpAddr>,
    /// The plugin chain's result.
    pub raw: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network config (the reason names the dir or file).
    #[error("{0}")]
    NoConfig(String),
    #[error("invalid pod network request: {field}: {reason}")]
    InvalidPod { field: String, reason: String },
    #[error("CNI plugin {plugin:?} ({network}) not found in {dirs}")]
    PluginNotFound {
        plugin: String,
        network: String,
        dirs: String,
    },
    #[error("cannot run CNI plugin {plugin:?} ({network}): {source}")]
    Exec {
        plugin: String,
        network: String,
        #[source]
        source: std::io::Error,
    },
    /// The plugin exited non-zero; `msg` is its error's `msg` and `details` (or its stderr).
    #[error("CNI plugin {plugin:?} failed {command} ({network}){}: {msg}", code.map(|c| format!(" with code {c}")).unwrap_or_default())]
    Plugin {
        plugin: String,
        command: &'static str,
        network: String,
        code: Option<u64>,
        msg: String,
    },
    #[error("CNI plugin {plugin:?} {command} ({network}) did not finish within {timeout:?} and was killed")]
    Timeout {
        plugin: String,
        command: &'static str,
        network: String,
        timeout: Duration,
    },
    #[error("CNI plugin {plugin:?} {command} ({network}): {reason}")]
    BadOutput {
        plugin: String,
        command: &'static str,
        network: String,
        reason: String,
    },
    #[error("network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    #[error("CNI cache for sandbox {id} in {dir}: {source}")]
    Cache {
        id: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no network is set up for sandbox {0}")]
    NotSetUp(String),
    /// Undoing a failed ADD failed too (`cleanup` says how).
    #[error("{error}; undoing it failed too: {cleanup}")]
    Cleanup {
        error: Box<CniError>,
        cleanup: Box<CniError>,
    },
}

/// Runs CNI plugins for pods. Send + Sync: share it between threads.
pub struct Cni {
    cfg: CniConfig,
    timeout: Duration,
    conf: Mutex<ConfCache>,
}

#[derive(Clone, Copy, PartialEq)]
enum Cmd {
    Add,
    Del,
    Check,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
        }
    }
}

/// What every plugin call of one pod shares.
struct Call<'a> {
    list: &'a NetworkList,
    id: &'a str,
    /// "" when the namespace is gone (DEL then still releases IPs and rules).
    netns: String,
    args: String,
    runtime: &'a Map<String, Value>,
}

impl Cni {
    pub fn new(cfg: CniConfig) -> Cni {
        Cni {
            cfg,
            timeout: Duration::from_secs(60),
            conf: Mutex::new(ConfCache::default()),
        }
    }

    /// How long one plugin call may take before it is killed (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// Ok when a usable network config exists (and its plugins are installed), Err(reason)
    /// otherwise. Re-reads the conf dir only when its file list changed.
    pub fn status(&self) -> Result<(), String> {
        self.current().map(|_| ()).map_err(|e| e.to_string())
    }

    fn current(&self) -> Result<Arc<NetworkList>, CniError> {
        let list = self
            .conf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .load(&self.cfg.conf_dir)
            .map_err(CniError::NoConfig)?;
        for i in 0..list.plugins.len() {
            self.plugin_path(&list, i)?;
        }
        Ok(list)
    }

    fn plugin_path(&self, list: &NetworkList, i: usize) -> Result<PathBuf, CniError> {
        let ty = list.plugin_type(i);
        conf::find_plugin(&self.cfg.bin_dirs, ty).ok_or_else(|| CniError::PluginNotFound {
            plugin: ty.to_string(),
            network: describe(list),
            dirs: self.cni_path(),
        })
    }

    fn cni_path(&self) -> String {
        let dirs: Vec<_> = self
            .cfg
            .bin_dirs
            .iter()
            .map(|d| d.to_string_lossy())
            .collect();
        dirs.join(":")
    }

    /// CNI ADD of the whole chain into `pod.netns`, after bringing `lo` up there. On failure
    /// what was added is deleted again and no cache entry remains.
    pub fn setup(&self, pod: &PodNetwork) -> Result<NetworkResult, CniError> {
        check_id(&pod.id)?;
        if !netns::is_nsfs(&pod.netns) {
            return Err(CniError::InvalidPod {
                field: "netns".into(),
                reason: format!("{:?} is not a network namespace file", pod.netns),
            });
        }
        let args = cni_args(pod)?;
        let runtime = runtime_config(pod)?;
        let list = self.current()?;
        // A repeated setup replaces the earlier attachment rather than leaking it.
        if self.read_cache(&pod.id)?.is_some() {
            self.teardown(pod)?;
        }
        let mut entry = cache::Entry {
            id: pod.id.clone(),
            conf_file: list.file.clone(),
            network: list.to_value(),
            if_name: IF_NAME.into(),
            netns: pod.netns.clone(),
            args,
            runtime_config: runtime,
            result: None,
            ips: Vec::new(),
        };
        // Persisted before any plugin runs: a crash half way still leaves something to DEL.
        self.write_cache(&entry)?;
        let call = Call {
            list: &list,
            id: &pod.id,
            netns: pod.netns.to_string_lossy().into_owned(),
            args: args_string(&entry.args),
            runtime: &entry.runtime_config,
        };
        // A failed ADD is undone and forgotten: DEL for what ran, then the entry goes even if
        // that DEL failed, since no one will tear down a sandbox whose setup failed (and a config
        // that broke ADD usually breaks DEL the same way, so retrying would not help).
        let undo = |error: CniError, upto: usize, prev: Option<&Value>| -> CniError {
            let mut cleanup = None;
            for i in (0..upto).rev() {
                if let Err(e) = self.invoke(&call, i, Cmd::Del, prev) {
                    cleanup.get_or_insert(e);
                }
            }
            if let Err(e) = cache::remove(&self.cfg.cache_dir, &pod.id) {
                cleanup.get_or_insert(self.cache_err(&pod.id, e));
            }
            match cleanup {
                None => error,
                Some(c) => {
                    tracing::warn!(id = pod.id, "undoing a failed CNI ADD: {c}");
                    CniError::Cleanup {
                        error: Box::new(error),
                        cleanup: Box::new(c),
                    }
                }
            }
        };
        if let Err(e) = netns::loopback_up(&pod.netns) {
            return Err(undo(
                CniError::Netns {
                    path: pod.netns.clone(),
                    reason: format!("cannot bring lo up: {e}"),
                },
                0,
                None,
            ));
        }
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            match self.invoke(&call, i, Cmd::Add, prev.as_ref()) {
                Ok(Some(r)) => prev = Some(r),
                Ok(None) => unreachable!("ADD returns a result"),
                // The failed plugin may have done part of its work: it gets a DEL too.
                Err(e) => return Err(undo(e, i + 1, prev.as_ref())),
            }
        }
        let raw = prev.expect("a network has at least one plugin");
        let n = list.plugins.len();
        let ips = pod_ips(&raw, IF_NAME);
        if ips.is_empty() {
            let e = CniError::BadOutput {
                plugin: list.plugin_type(n - 1).into(),
                command: "ADD",
                network: describe(&list),
                reason: format!("the result has no IP address for {IF_NAME}: {raw}"),
            };
            return Err(undo(e, n, Some(&raw)));
        }
        entry.result = Some(raw.clone());
        entry.ips = ips.clone();
        if let Err(e) = self.write_cache(&entry) {
            return Err(undo(e, n, Some(&raw)));
        }
        Ok(NetworkResult { ips, raw })
    }

    /// CNI DEL (plugins in reverse order) with the cached config, then the cache entry goes.
    /// Idempotent: an unknown id is Ok. A missing `pod.netns` is passed as an empty CNI_NETNS,
    /// so the plugins still release addresses and rules.
    pub fn teardown(&self, pod: &PodNetwork) -> Result<(), CniError> {
        check_id(&pod.id)?;
        let Some(entry) = self.read_cache(&pod.id)? else {
            return Ok(());
        };
        let list = self.cached_list(&entry)?;
        let netns = if pod.netns.as_os_str().is_empty() {
            &entry.netns
        } else {
            &pod.netns
        };
        let call = Call {
            list: &list,
            id: &pod.id,
            netns: if netns::is_nsfs(netns) {
                netns.to_string_lossy().into_owned()
            } else {
                String::new()
            },
            args: args_string(&entry.args),
            runtime: &entry.runtime_config,
        };
        // prevResult on DEL exists from 0.4.0 on.
        let prev = entry
            .result
            .as_ref()
            .filter(|_| list.version_at_least(0, 4));
        let mut first_err = None;
        // Every plugin gets its DEL even if one fails, so as much as possible is released; the
        // entry stays for a retry.
        for i in (0..list.plugins.len()).rev() {
            if let Err(e) = self.invoke(&call, i, Cmd::Del, prev) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        cache::remove(&self.cfg.cache_dir, &pod.id).map_err(|e| self.cache_err(&pod.id, e))
    }

    /// CNI CHECK with the cached config and result (nothing to do before 0.4.0 or with
    /// `disableCheck`).
    pub fn check(&self, pod: &PodNetwork) -> Result<(), CniError> {
        check_id(&pod.id)?;
        let entry = match self.read_cache(&pod.id)? {
            Some(e) if e.result.is_some() => e,
            _ => return Err(CniError::NotSetUp(pod.id.clone())),
        };
        let list = self.cached_list(&entry)?;
        if list.disable_check || !list.version_at_least(0, 4) {
            return Ok(());
        }
        let netns = if pod.netns.as_os_str().is_empty() {
            &entry.netns
        } else {
            &pod.netns
        };
        if !netns::is_nsfs(netns) {
            return Err(CniError::Netns {
                path: netns.clone(),
                reason: "not a network namespace file (gone?)".into(),
            });
        }
        let call = Call {
            list: &list,
            id: &pod.id,
            netns: netns.to_string_lossy().into_owned(),
            args: args_string(&entry.args),
            runtime: &entry.runtime_config,
        };
        for i in 0..list.plugins.len() {
            self.invoke(&call, i, Cmd::Check, entry.result.as_ref())?;
        }
        Ok(())
    }

    /// The cached result of a pod whose ADD finished.
    pub fn cached(&self, id: &str) -> Option<NetworkResult> {
        if !cache::valid_id(id) {
            return None;
        }
        let e = cache::read(&self.cfg.cache_dir, id).ok()??;
        Some(NetworkResult {
            ips: e.ips,
            raw: e.result?,
        })
    }

    /// Sandbox ids with a cache entry, including ADDs that were interrupted (they need a
    /// teardown too).
    pub fn cached_ids(&self) -> Vec<String> {
        cache::ids(&self.cfg.cache_dir)
    }

    fn read_cache(&self, id: &str) -> Result<Option<cache::Entry>, CniError> {
        cache::read(&self.cfg.cache_dir, id).map_err(|e| self.cache_err(id, e))
    }

    fn write_cache(&self, e: &cache::Entry) -> Result<(), CniError> {
        cache::write(&self.cfg.cache_dir, e).map_err(|err| self.cache_err(&e.id, err))
    }

    fn cache_err(&self, id: &str, source: std::io::Error) -> CniError {
        CniError::Cache {
            id: id.into(),
            dir: self.cfg.cache_dir.clone(),
            source,
        }
    }

    fn cached_list(&self, entry: &cache::Entry) -> Result<NetworkList, CniError> {
        NetworkList::from_value(&entry.conf_file, entry.network.clone()).map_err(|e| {
            self.cache_err(
                &entry.id,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("cached network config: {e}"),
                ),
            )
        })
    }

    /// Runs plugin `i` of the chain; ADD returns its result.
    fn invoke(
        &self,
        call: &Call,
        i: usize,
        cmd: Cmd,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let list = call.list;
        let plugin = list.plugin_type(i).to_string();
        let path = self.plugin_path(list, i)?;
        let network = describe(list);
        let env = [
            ("CNI_COMMAND", cmd.name().to_string()),
            ("CNI_CONTAINERID", call.id.to_string()),
            ("CNI_NETNS", call.netns.clone()),
            ("CNI_IFNAME", IF_NAME.to_string()),
            ("CNI_ARGS", call.args.clone()),
            ("CNI_PATH", self.cni_path()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let stdin = list.plugin_stdin(i, call.runtime, prev);
        tracing::debug!(
            plugin,
            command = cmd.name(),
            id = call.id,
            "running CNI plugin"
        );
        let out = exec::run(&path, &env, &stdin, self.timeout).map_err(|e| match e {
            exec::RunError::Spawn(source) | exec::RunError::Io(source) => CniError::Exec {
                plugin: plugin.clone(),
                network: network.clone(),
                source,
            },
            exec::RunError::Timeout => CniError::Timeout {
                plugin: plugin.clone(),
                command: cmd.name(),
                network: network.clone(),
                timeout: self.timeout,
            },
            exec::RunError::TooLarge => CniError::BadOutput {
                plugin: plugin.clone(),
                command: cmd.name(),
                network: network.clone(),
                reason: format!("output larger than {} bytes refused", exec::MAX_STDOUT),
            },
        })?;
        if !out.status.success() {
            let (code, msg) = plugin_error(&out);
            return Err(CniError::Plugin {
                plugin,
                command: cmd.name(),
                network,
                code,
                msg,
            });
        }
        if cmd != Cmd::Add {
            return Ok(None);
        }
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v @ Value::Object(_)) => Ok(Some(v)),
            Ok(_) => Err(CniError::BadOutput {
                plugin,
                command: cmd.name(),
                network,
                reason: "the result is not a JSON object".into(),
            }),
            Err(e) => Err(CniError::BadOutput {
                plugin,
                command: cmd.name(),
                network,
                reason: format!(
                    "the result is not valid JSON ({e}): {:?}",
                    String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(200)])
                ),
            }),
        }
    }
}

/// "network \"x\" from /etc/cni/net.d/10-x.conflist", for error messages.
fn describe(list: &NetworkList) -> String {
    format!("network {:?} from {}", list.name, list.file.display())
}

/// The spec's error object (`code`, `msg`, `details`), else the stderr text or exit status.
fn plugin_error(out: &exec::Output) -> (Option<u64>, String) {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&out.stdout) {
        let msg = o.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = o.get("details").and_then(Value::as_str).unwrap_or_default();
        if !msg.is_empty() || !details.is_empty() {
            let text = match (msg.is_empty(), details.is_empty()) {
                (false, false) => format!("{msg}: {details}"),
                (false, true) => msg.to_string(),
                _ => details.to_string(),
            };
            return (o.get("code").and_then(Value::as_u64), text);
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if !stderr.is_empty() {
        stderr.to_string()
    } else if !stdout.trim().is_empty() {
        stdout.trim().to_string()
    } else {
        format!("{} with no output", out.status)
    };
    // Keep messages readable: the end of a long stderr says what went wrong.
    let text = match text.char_indices().rev().nth(2000) {
        Some((at, _)) => format!("...{}", &text[at..]),
        None => text,
    };
    (None, text)
}

fn check_id(id: &str) -> Result<(), CniError> {
    if cache::valid_id(id) {
        Ok(())
    } else {
        Err(CniError::InvalidPod {
            field: "id".into(),
            reason: format!("{id:?} is not a valid sandbox id (letters, digits, '-', '_', '.')"),
        })
    }
}

fn cni_args(pod: &PodNetwork) -> Result<Vec<(String, String)>, CniError> {
    // CNI_ARGS is `K=V;K=V`: a value holding ';' or '=' would forge other arguments.
    for (field, v) in [
        ("name", &pod.name),
        ("namespace", &pod.namespace),
        ("uid", &pod.uid),
    ] {
        if v.contains([';', '=', '\0']) {
            return Err(CniError::InvalidPod {
                field: field.into(),
                reason: format!("{v:?} may not contain ';', '=' or NUL"),
            });
        }
    }
    Ok(vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
        ("K8S_POD_NAME".into(), pod.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.clone()),
        ("K8S_POD_UID".into(), pod.uid.clone()),
    ])
}

fn args_string(args: &[(String, String)]) -> String {
    let parts: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(";")
}

/// The capability arguments plugins may ask for in their `capabilities`.
fn runtime_config(pod: &PodNetwork) -> Result<Map<String, Value>, CniError> {
    let mut rc = Map::new();
    let mut maps = Vec::new();
    for (i, pm) in pod.port_mappings.iter().enumerate() {
        let bad = |f: &str, reason: String| CniError::InvalidPod {
            field: format!("port_mappings[{i}].{f}"),
            reason,
        };
        let protocol = pm.protocol.to_ascii_lowercase();
        if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad(
                "protocol",
                format!("{:?} is not tcp, udp or sctp", pm.protocol),
            ));
        }
        if pm.container_port == 0 {
            return Err(bad("container_port", "must not be 0".into()));
        }
        if !pm.host_ip.is_empty() && pm.host_ip.parse::<IpAddr>().is_err() {
            return Err(bad(
                "host_ip",
                format!("{:?} is not an IP address", pm.host_ip),
            ));
        }
        if pm.host_port == 0 {
            continue;
        }
        let mut m = json!({
            "hostPort": pm.host_port,
            "containerPort": pm.container_port,
            "protocol": protocol,
        });
        if !pm.host_ip.is_empty() {
            m["hostIP"] = pm.host_ip.clone().into();
        }
        maps.push(m);
    }
    if !maps.is_empty() {
        rc.insert("portMappings".into(), Value::Array(maps));
    }
    if let Some(b) = &pod.bandwidth {
        rc.insert(
            "bandwidth".into(),
            json!({
                "ingressRate": b.ingress_rate,
                "ingressBurst": b.ingress_burst,
                "egressRate": b.egress_rate,
                "egressBurst": b.egress_burst,
            }),
        );
    }
    Ok(rc)
}

/// The pod's addresses from a result: those on `if_name` inside the sandbox when the result says
/// which interface an IP is on, else all; IPv4 first.
fn pod_ips(result: &Value, if_name: &str) -> Vec<IpAddr> {
    let parse = |v: &Value| -> Option<IpAddr> {
        let s = v.as_str()?;
        s.split('/').next()?.parse().ok()
    };
    let mut all = Vec::new();
    let mut on_if = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        let ifaces = result.get("interfaces").and_then(Value::as_array);
        for ip in ips {
            let Some(addr) = ip.get("address").and_then(parse) else {
                continue;
            };
            all.push(addr);
            let iface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| ifaces?.get(i as usize));
            if let Some(iface) = iface {
                let in_sandbox = iface
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                if in_sandbox && iface.get("name").and_then(Value::as_str) == Some(if_name) {
                    on_if.push(addr);
                }
            }
        }
    } else {
        // 0.1.0/0.2.0 results.
        for key in ["ip4", "ip6"] {
            if let Some(a) = result.get(key).and_then(|v| v.get("ip")).and_then(parse) {
                all.push(a);
            }
        }
    }
    let mut ips = if on_if.is_empty() { all } else { on_if };
    ips.sort_by_key(|a| a.is_ipv6());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn cni_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Cni>();
    }

    #[test]
    fn pod_ips_prefer_the_sandbox_interface_and_ipv4() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.1.0.1/24", "interface": 0},
                {"address": "10.1.0.5/24", "interface": 2}
            ]
        });
        assert_eq!(
            pod_ips(&r, "eth0"),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.9.0.3/16"}});
        assert_eq!(
            pod_ips(&old, "eth0"),
            vec!["10.9.0.3".parse::<IpAddr>().unwrap()]
        );
        assert!(pod_ips(&json!({"cniVersion": "1.0.0"}), "eth0").is_empty());
    }

    #[test]
    fn conf_parsing_names_the_field() {
        let p = Path::new("/x/10-a.conflist");
        let e = NetworkList::parse(
            p,
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"ipam":{}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e, "plugins[1].type: missing");
        let e = NetworkList::parse(p, br#"{"cniVersion":"9.9.9","name":"n","type":"bridge"}"#)
            .unwrap_err();
        assert!(
            e.starts_with("cniVersion: \"9.9.9\" is not supported"),
            "{e}"
        );
        let e = NetworkList::parse(p, br#"{"cniVersion":"1.0.0","name":"n","type":"../x"}"#)
            .unwrap_err();
        assert!(e.starts_with("type:"), "{e}");
        let l = NetworkList::parse(
            p,
            br#"{"cniVersion":"0.3.1","name":"n","type":"bridge","bridge":"b"}"#,
        )
        .unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert!(!l.version_at_least(0, 4));
        let mut rt = Map::new();
        rt.insert("portMappings".into(), json!([1]));
        let stdin: Value = serde_json::from_slice(&l.plugin_stdin(0, &rt, None)).unwrap();
        assert_eq!(
            stdin,
            json!({"cniVersion":"0.3.1","name":"n","type":"bridge","bridge":"b"})
        );
    }

    #[test]
    fn bad_pod_fields_are_named() {
        let pod = PodNetwork {
            port_mappings: vec![PortMapping {
                container_port: 80,
                host_port: 8080,
                protocol: "icmp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        };
        let e = runtime_config(&pod).unwrap_err().to_string();
        assert!(e.contains("port_mappings[0].protocol"), "{e}");
        let pod = PodNetwork {
            name: "a;K8S_POD_UID=x".into(),
            ..Default::default()
        };
        assert!(cni_args(&pod).unwrap_err().to_string().contains("name:"));
        assert!(
            check_id("../x").is_err() && check_id("").is_err() && check_id("abc-1.2_3").is_ok()
        );
    }
}
