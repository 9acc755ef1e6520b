//! Kubernetes Pod manifests (`v1/Pod`): the subset `berthctl run` runs.
//! Fields it does not implement are refused by name rather than ignored.

use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PodSpec,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PodSpec {
    pub restart_policy: RestartPolicy,
    pub hostname: String,
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    pub security_context: Option<PodSecurityContext>,
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PodSecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub sysctls: Vec<NameValue>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub env: Vec<NameValue>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub security_context: Option<SecurityContext>,
    pub volume_mounts: Vec<VolumeMount>,
    pub tty: bool,
    pub stdin: bool,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
    pub protocol: String,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub limits: BTreeMap<String, Quantity>,
    pub requests: BTreeMap<String, Quantity>,
}

/// A quantity as YAML writes it: `500m`, `1`, `0.5`, `64Mi`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Quantity {
    Int(i64),
    Float(f64),
    Str(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Int(i) => i.to_string(),
            Quantity::Float(f) => f.to_string(),
            Quantity::Str(s) => s.clone(),
        }
    }

    /// Thousandths of a CPU.
    pub fn millicpu(&self, field: &str) -> Result<i64> {
        let t = self.text();
        let v = match t.strip_suffix('m') {
            Some(m) => m.parse::<f64>().ok(),
            None => t.parse::<f64>().ok().map(|c| c * 1000.0),
        };
        match v {
            Some(v) if v >= 0.0 => Ok(v.round() as i64),
            _ => bail!("{field}: {t:?} is not a CPU quantity (like 500m or 2)"),
        }
    }

    pub fn bytes(&self, field: &str) -> Result<i64> {
        let t = self.text();
        const SUF: [(&str, f64); 12] = [
            ("Ki", 1024.0),
            ("Mi", 1048576.0),
            ("Gi", 1073741824.0),
            ("Ti", 1099511627776.0),
            ("Pi", 1125899906842624.0),
            ("Ei", 1152921504606846976.0),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("P", 1e15),
            ("E", 1e18),
        ];
        let (num, mult) = SUF
            .iter()
            .find_map(|(s, m)| t.strip_suffix(s).map(|n| (n, *m)))
            .unwrap_or((t.as_str(), 1.0));
        match num.parse::<f64>() {
            Ok(v) if v >= 0.0 => Ok((v * mult).round() as i64),
            _ => bail!("{field}: {t:?} is not a memory quantity (like 64Mi or 1G)"),
        }
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SecurityContext {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Capabilities>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    /// A directory inside the volume (image volumes only, as berthctl runs them).
    pub sub_path: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Volume {
    pub name: String,
    pub empty_dir: Option<EmptyDir>,
    pub host_path: Option<HostPath>,
    /// An image volume (Kubernetes 1.36): the image's files, read-only.
    pub image: Option<ImageVolume>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ImageVolume {
    pub reference: String,
    pub pull_policy: PullPolicy,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct EmptyDir {
    pub medium: String,
    pub size_limit: Option<Quantity>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HostPath {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Pod {
    pub fn parse(text: &str, source: &str) -> Result<Pod> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let pod: Pod = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            anyhow::anyhow!("{source}: field {at}: {}", e.into_inner())
        })?;
        pod.validate()
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        Ok(pod)
    }

    /// Checks everything that can be checked before anything is created.
    fn validate(&self) -> Result<()> {
        if self.api_version != "v1" || self.kind != "Pod" {
            bail!(
                "apiVersion/kind: {}/{} is not a Pod (want apiVersion: v1, kind: Pod)",
                self.api_version,
                self.kind
            );
        }
        if !dns_label(&self.metadata.name) {
            bail!(
                "metadata.name: {:?} must be a DNS label (lower-case letters, digits, '-')",
                self.metadata.name
            );
        }
        if self.spec.containers.is_empty() {
            bail!("spec.containers: at least one container is required");
        }
        let mut vols = HashSet::new();
        for (i, v) in self.spec.volumes.iter().enumerate() {
            let at = format!("spec.volumes[{i}]");
            if !dns_label(&v.name) {
                bail!("{at}.name: {:?} must be a DNS label", v.name);
            }
            if !vols.insert(v.name.as_str()) {
                bail!("{at}.name: {:?} is defined twice", v.name);
            }
            match (&v.empty_dir, &v.host_path, &v.image) {
                (None, None, Some(im)) => {
                    if im.reference.is_empty() {
                        bail!("{at}.image.reference: is required");
                    }
                }
                (Some(e), None, None) => {
                    if !matches!(e.medium.as_str(), "" | "Memory") {
                        bail!("{at}.emptyDir.medium: {:?} (use \"\" or Memory)", e.medium);
                    }
                    if let Some(q) = &e.size_limit {
                        q.bytes(&format!("{at}.emptyDir.sizeLimit"))?;
                    }
                }
                (None, Some(h), None) => {
                    if !h.path.starts_with('/') {
                        bail!("{at}.hostPath.path: {:?} must be absolute", h.path);
                    }
                    if !matches!(
                        h.kind.as_str(),
                        "" | "DirectoryOrCreate" | "Directory" | "FileOrCreate" | "File"
                    ) {
                        bail!(
                            "{at}.hostPath.type: {:?} (supported: DirectoryOrCreate, Directory, FileOrCreate, File)",
                            h.kind
                        );
                    }
                }
                _ => bail!("{at}: give exactly one of emptyDir, hostPath and image"),
            }
        }
        let mut names = HashSet::new();
        let all = self
            .spec
            .init_containers
            .iter()
            .map(|c| ("initContainers", c))
            .chain(self.spec.containers.iter().map(|c| ("containers", c)));
        for (i, (list, c)) in all.enumerate() {
            let idx = if list == "containers" {
                i - self.spec.init_containers.len()
            } else {
                i
            };
            let at = format!("spec.{list}[{idx}]");
            if !dns_label(&c.name) {
                bail!("{at}.name: {:?} must be a DNS label", c.name);
            }
            if !names.insert(c.name.as_str()) {
                bail!("{at}.name: {:?} is used twice", c.name);
            }
            if c.image.is_empty() {
                bail!("{at}.image is required");
            }
            if c.tty || c.stdin {
                bail!(
                    "{at}: tty/stdin need the streaming client, which berthctl does not have yet"
                );
            }
            for (k, m) in c.volume_mounts.iter().enumerate() {
                if !vols.contains(m.name.as_str()) {
                    bail!(
                        "{at}.volumeMounts[{k}].name: no volume {:?} in spec.volumes",
                        m.name
                    );
                }
                let image = self
                    .spec
                    .volumes
                    .iter()
                    .any(|v| v.name == m.name && v.image.is_some());
                if !m.sub_path.is_empty() && !image {
                    bail!("{at}.volumeMounts[{k}].subPath: supported for image volumes only");
                }
                if !m.mount_path.starts_with('/') {
                    bail!(
                        "{at}.volumeMounts[{k}].mountPath: {:?} must be absolute",
                        m.mount_path
                    );
                }
            }
            for (k, v) in &c.resources.limits {
                match k.as_str() {
                    "cpu" => drop(v.millicpu(&format!("{at}.resources.limits.cpu"))?),
                    "memory" => drop(v.bytes(&format!("{at}.resources.limits.memory"))?),
                    other => {
                        bail!("{at}.resources.limits.{other}: only cpu and memory are supported")
                    }
                }
            }
            for (k, v) in &c.resources.requests {
                match k.as_str() {
                    "cpu" => drop(v.millicpu(&format!("{at}.resources.requests.cpu"))?),
                    "memory" => drop(v.bytes(&format!("{at}.resources.requests.memory"))?),
                    other => {
                        bail!("{at}.resources.requests.{other}: only cpu and memory are supported")
                    }
                }
            }
            for (k, p) in c.ports.iter().enumerate() {
                if !(1..=65535).contains(&p.container_port) {
                    bail!(
                        "{at}.ports[{k}].containerPort: {} is not a port",
                        p.container_port
                    );
                }
                crate::config::protocol(&p.protocol)
                    .map_err(|e| anyhow::anyhow!("{at}.ports[{k}].protocol: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: busybox}\n";

    #[test]
    fn minimal_pod_parses_with_defaults() {
        let p = Pod::parse(OK, "t").unwrap();
        assert_eq!(p.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(
            p.spec.containers[0].image_pull_policy,
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = Pod::parse(
            &OK.replace("image: busybox", "image: busybox, livenessProbe: {}"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.containers[0]") && e.contains("livenessProbe"),
            "{e}"
        );
        let e = Pod::parse(&format!("{OK}  volumes: [{{name: v}}]\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.volumes[0]"), "{e}");
        let bad_mount = OK.replace(
            "image: busybox",
            "image: busybox, volumeMounts: [{name: x, mountPath: /x}]",
        );
        let e = Pod::parse(&bad_mount, "t").unwrap_err().to_string();
        assert!(e.contains("volumeMounts[0].name"), "{e}");
    }

    #[test]
    fn quantities() {
        assert_eq!(Quantity::Str("500m".into()).millicpu("x").unwrap(), 500);
        assert_eq!(Quantity::Int(2).millicpu("x").unwrap(), 2000);
        assert_eq!(Quantity::Float(0.25).millicpu("x").unwrap(), 250);
        assert_eq!(Quantity::Str("64Mi".into()).bytes("x").unwrap(), 64 << 20);
        assert_eq!(
            Quantity::Str("1G".into()).bytes("x").unwrap(),
            1_000_000_000
        );
        assert!(Quantity::Str("lots".into()).bytes("x").is_err());
    }
}
