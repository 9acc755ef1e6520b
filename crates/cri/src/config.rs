//! berthd's configuration (TOML). Unknown keys are errors, so a typo never
//! silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: images, snapshots, the metadata store.
    pub root: PathBuf,
    /// Runtime state: container state, pod directories, sockets.
    pub state: PathBuf,
    /// Containers' writable layers (their root filesystem views). Empty:
    /// under `root`, one filesystem for images and containers. On a
    /// filesystem of its own, ImageFsInfo reports the image and container
    /// filesystems apart (a split image filesystem, KEP-4191) and the
    /// kubelet evicts for each.
    pub container_root: PathBuf,
    /// The CRI socket (mode 0660).
    pub socket: PathBuf,
    pub runtime: RuntimeConfig,
    pub cni: CniSection,
    pub registry: RegistrySection,
    pub logs: LogSection,
    pub stream: StreamSection,
    pub metrics: MetricsSection,
    pub cdi: CdiSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The handler used when a pod names none.
    pub default_handler: String,
    /// `cgroupfs` (systemd is reported as unavailable: no systemd here).
    pub cgroup_driver: String,
    /// The parent of pod cgroups when the kubelet gives none.
    pub cgroup_parent: String,
    /// The berth-monitor binary; empty: next to berthd.
    pub monitor: PathBuf,
    /// Extra RuntimeClass handlers: runc-compatible binaries by path.
    pub handlers: BTreeMap<String, Handler>,
    /// When set, Localhost seccomp profiles must lie inside this directory.
    /// Empty (the default): any absolute path the kubelet sends, as
    /// containerd and CRI-O take it.
    pub seccomp_profile_root: PathBuf,
    /// Sysctls pods may not set even when the kubelet allows them: names,
    /// or prefixes ending in `*` ("net.core.*"). Empty by default: the
    /// kubelet (`--allowed-unsafe-sysctls`) decides, and berthd applies
    /// every sysctl of a namespace the pod owns.
    pub denied_sysctls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniSection {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Directory of per-registry hosts.toml files (mirrors, TLS).
    pub config_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Longer output lines are split into partial records.
    pub max_line_size: usize,
    /// ExecSync output kept, stdout and stderr together (at most the
    /// kubelet's 16 MiB message less framing); the rest is read and dropped.
    pub max_exec_output: usize,
    /// berthd's own log format: text or json.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSection {
    pub address: String,
    pub token_ttl_seconds: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// host:port for Prometheus metrics; empty: off.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdiSection {
    /// Directories of CDI spec files (`*.json`, `*.yaml`); a later one
    /// overrides an earlier one for the same device. A missing one is
    /// skipped.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiSection {
    fn default() -> Self {
        CdiSection {
            spec_dirs: crate::cdi::default_spec_dirs(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            container_root: PathBuf::new(),
            socket: "/run/berth/berth.sock".into(),
            runtime: RuntimeConfig::default(),
            cni: CniSection::default(),
            registry: RegistrySection::default(),
            logs: LogSection::default(),
            stream: StreamSection::default(),
            metrics: MetricsSection::default(),
            cdi: CdiSection::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default_handler: "berth".into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_parent: "/berth".into(),
            monitor: PathBuf::new(),
            handlers: BTreeMap::new(),
            seccomp_profile_root: PathBuf::new(),
            denied_sysctls: Vec::new(),
        }
    }
}

impl Default for CniSection {
    fn default() -> Self {
        CniSection {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        }
    }
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            config_path: "/etc/berth/certs.d".into(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            max_line_size: 16 * 1024,
            max_exec_output: 16 * 1024 * 1024,
            format: "text".into(),
        }
    }
}

impl Default for StreamSection {
    fn default() -> Self {
        StreamSection {
            address: "127.0.0.1:0".into(),
            token_ttl_seconds: 60,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default path means defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default())
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let c: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.runtime.cgroup_driver != "cgroupfs" {
            return Err(format!(
                "runtime.cgroup_driver: {:?} is not available (no systemd is reachable); use \"cgroupfs\"",
                self.runtime.cgroup_driver
            ));
        }
        if !self.runtime.cgroup_parent.starts_with('/') {
            return Err("runtime.cgroup_parent: must be an absolute cgroup path".into());
        }
        for (name, h) in &self.runtime.handlers {
            if name == "berth" {
                return Err(
                    "runtime.handlers.berth: the built-in handler's name is reserved".into(),
                );
            }
            if !h.path.is_absolute() {
                return Err(format!("runtime.handlers.{name}.path: must be absolute"));
            }
        }
        let known = self.runtime.default_handler == "berth"
            || self
                .runtime
                .handlers
                .contains_key(&self.runtime.default_handler);
        if !known {
            return Err(format!(
                "runtime.default_handler: no handler named {:?}",
                self.runtime.default_handler
            ));
        }
        if self.logs.max_line_size < 1024 {
            return Err("logs.max_line_size: at least 1024".into());
        }
        if !["text", "json"].contains(&self.logs.format.as_str()) {
            return Err("logs.format: text or json".into());
        }
        for (field, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("socket", &self.socket),
        ] {
            if !p.is_absolute() {
                return Err(format!("{field}: must be an absolute path"));
            }
        }
        for (i, d) in self.cdi.spec_dirs.iter().enumerate() {
            if !d.is_absolute() {
                return Err(format!("cdi.spec_dirs[{i}]: must be an absolute path"));
            }
        }
        Ok(())
    }

    pub fn print(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_keys_fail() {
        let d = Config::default();
        let text = d.print();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.socket, d.socket);
        let e = toml::from_str::<Config>("[runtime]\ncgroup_drvier = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("cgroup_drvier"), "{e}");
    }

    #[test]
    fn systemd_driver_is_refused_by_name() {
        let c: Config = toml::from_str("[runtime]\ncgroup_driver = \"systemd\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("runtime.cgroup_driver"));
    }
}
