//! Pod and container config files for `runp` and `create`, in crictl's
//! format (the CRI messages' field names, JSON or YAML). Only the common
//! fields are accepted; an unknown one is an error naming it.

use anyhow::{Context, Result};
use berth_cri_api::v1 as cri;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Parses JSON or YAML (YAML is a superset), errors naming the field path.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{}: field {at}: {}", path.display(), e.into_inner())
    })
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Port {
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// 0 POD, 1 CONTAINER, 2 NODE (the CRI enum's numbers).
    pub network: i32,
    pub pid: i32,
    pub ipc: i32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PodSecurity {
    pub namespace_options: Option<NamespaceOptions>,
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub readonly_rootfs: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PodLinux {
    pub cgroup_parent: String,
    pub security_context: Option<PodSecurity>,
    pub sysctls: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    pub metadata: Metadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns_config: Option<Dns>,
    pub port_mappings: Vec<Port>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub linux: Option<PodLinux>,
}

pub fn protocol(p: &str) -> Result<i32> {
    Ok(match p.to_ascii_uppercase().as_str() {
        "" | "TCP" => cri::Protocol::Tcp as i32,
        "UDP" => cri::Protocol::Udp as i32,
        "SCTP" => cri::Protocol::Sctp as i32,
        other => anyhow::bail!("protocol {other:?}: use TCP, UDP or SCTP"),
    })
}

impl PodConfig {
    pub fn into_cri(self) -> Result<cri::PodSandboxConfig> {
        if self.metadata.name.is_empty() {
            anyhow::bail!("metadata.name is required");
        }
        let mut ports = Vec::new();
        for p in self.port_mappings {
            ports.push(cri::PortMapping {
                protocol: protocol(&p.protocol)?,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip,
            });
        }
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                uid: if self.metadata.uid.is_empty() {
                    format!("{}-uid", self.metadata.name)
                } else {
                    self.metadata.uid
                },
                namespace: if self.metadata.namespace.is_empty() {
                    "default".into()
                } else {
                    self.metadata.namespace
                },
                name: self.metadata.name,
                attempt: self.metadata.attempt,
            }),
            hostname: self.hostname,
            log_directory: self.log_directory,
            dns_config: self.dns_config.map(|d| cri::DnsConfig {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            }),
            port_mappings: ports,
            labels: self.labels,
            annotations: self.annotations,
            linux: self.linux.map(|l| cri::LinuxPodSandboxConfig {
                cgroup_parent: l.cgroup_parent,
                security_context: l
                    .security_context
                    .map(|s| cri::LinuxSandboxSecurityContext {
                        namespace_options: s.namespace_options.map(|n| cri::NamespaceOption {
                            network: n.network,
                            pid: n.pid,
                            ipc: n.ipc,
                            ..Default::default()
                        }),
                        privileged: s.privileged,
                        run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
                        readonly_rootfs: s.readonly_rootfs,
                        ..Default::default()
                    }),
                sysctls: l.sysctls,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Image {
    pub image: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Env {
    pub key: String,
    pub value: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MountCfg {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CtrSecurity {
    pub capabilities: Option<Caps>,
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub namespace_options: Option<NamespaceOptions>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CtrLinux {
    pub resources: Option<Resources>,
    pub security_context: Option<CtrSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    pub metadata: Metadata,
    pub image: Image,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<Env>,
    pub mounts: Vec<MountCfg>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub linux: Option<CtrLinux>,
}

pub fn resources(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        ..Default::default()
    }
}

impl ContainerConfig {
    pub fn into_cri(self) -> Result<cri::ContainerConfig> {
        if self.metadata.name.is_empty() {
            anyhow::bail!("metadata.name is required");
        }
        if self.image.image.is_empty() {
            anyhow::bail!("image.image is required");
        }
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.metadata.name,
                attempt: self.metadata.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.image,
                ..Default::default()
            }),
            command: self.command,
            args: self.args,
            working_dir: self.working_dir,
            envs: self
                .envs
                .into_iter()
                .map(|e| cri::KeyValue {
                    key: e.key,
                    value: e.value.into_bytes(),
                })
                .collect(),
            mounts: self
                .mounts
                .into_iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path,
                    host_path: m.host_path,
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            labels: self.labels,
            annotations: self.annotations,
            log_path: self.log_path,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
            tty: self.tty,
            linux: self.linux.map(|l| cri::LinuxContainerConfig {
                resources: l.resources.as_ref().map(resources),
                security_context: l
                    .security_context
                    .map(|s| cri::LinuxContainerSecurityContext {
                        capabilities: s.capabilities.map(|c| cri::Capability {
                            add_capabilities: c.add_capabilities,
                            drop_capabilities: c.drop_capabilities,
                            ..Default::default()
                        }),
                        privileged: s.privileged,
                        run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
                        run_as_group: s.run_as_group.map(|value| cri::Int64Value { value }),
                        readonly_rootfs: s.readonly_rootfs,
                        no_new_privs: s.no_new_privs,
                        namespace_options: s.namespace_options.map(|n| cri::NamespaceOption {
                            network: n.network,
                            pid: n.pid,
                            ipc: n.ipc,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
            }),
            ..Default::default()
        })
    }
}
