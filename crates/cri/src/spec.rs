//! The OCI spec of a CRI container: the image config merged with the CRI
//! config, the way containerd and CRI-O do it.
//!
//! [`container_spec`] is a pure function of its inputs plus read-only looks
//! at the host (stat of bind sources and devices, the container's
//! /etc/passwd and /etc/group, a Localhost seccomp profile, mountinfo for
//! propagation checks). Every refusal is a [`SpecError`] naming the CRI field
//! (`config.mounts[2].host_path`), so kubelet's event tells the user what to
//! fix. The spec is assembled as JSON on top of berth's `runc spec`
//! defaults and parsed into [`oci_spec::runtime::Spec`] at the end.
//!
//! Split by concern: `process` (args, env, cwd), `user` (uid/gid/groups from
//! the image), `security` (capabilities, seccomp, privileged), `mounts`
//! (mounts, devices), `resources` (cgroup limits); CDI devices come last
//! (`crate::cdi`).

mod mounts;
mod process;
mod resources;
mod security;
mod user;

use berth_cri_api::v1::{ContainerConfig, NamespaceMode, PodSandboxConfig};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub use user::User;

/// What berthd decided for the pod a container joins.
pub struct SandboxInfo<'a> {
    pub id: &'a str,
    pub config: &'a PodSandboxConfig,
    /// The pod's network namespace; None: host network (no new one either).
    pub netns: Option<PathBuf>,
    /// The pod's IPC namespace; None: host IPC.
    pub ipcns: Option<PathBuf>,
    /// The pod's UTS namespace; None: host UTS.
    pub utsns: Option<PathBuf>,
    /// Some: the pod shares one pid namespace (joined). None: a new pid
    /// namespace per container, unless the namespace options say NODE.
    pub pidns: Option<PathBuf>,
    /// Some when the pod runs with hostUsers=false.
    pub userns: Option<UserNs>,
    /// (container path, host file) pairs such as /etc/hostname,
    /// /etc/resolv.conf and /etc/hosts, bind-mounted read-write unless the
    /// container's rootfs is read-only.
    pub etc_files: Vec<(String, PathBuf)>,
    /// The pod's /dev/shm (bound) when it has its own IPC namespace; None: a
    /// private tmpfs.
    pub shm: Option<PathBuf>,
    /// The pod cgroup, cgroupfs style ("/kubepods/burstable/pod123").
    pub cgroup_parent: String,
}

/// The pod's user namespace.
pub struct UserNs {
    /// Join this namespace; None: a new one with the mappings.
    pub path: Option<PathBuf>,
    /// (container id, host id, size).
    pub uid_map: Vec<(u32, u32, u32)>,
    pub gid_map: Vec<(u32, u32, u32)>,
}

/// The container being created.
pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    pub image: &'a berth_image::ImageConfig,
    /// The container's mounted rootfs on the host.
    pub rootfs: &'a Path,
    /// When not empty, Localhost seccomp profiles must resolve inside it.
    pub seccomp_localhost_root: &'a Path,
    /// The PID namespace of the target container (`namespace_options.pid`
    /// TARGET: an ephemeral debug container joining another's processes).
    pub target_pidns: Option<PathBuf>,
    /// Image volumes: (index in `config.mounts`, the host directory to
    /// mount: the image's read-only view, or the `image_sub_path` in it).
    pub image_volumes: Vec<(usize, PathBuf)>,
    /// Directories of CDI spec files, for the CDI devices the container
    /// asks for (`[cdi] spec_dirs`).
    pub cdi_spec_dirs: &'a [PathBuf],
}

/// A CRI request berth cannot turn into a container; `field` is the CRI
/// field path ("config.linux.security_context.run_as_user").
#[derive(Debug, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct SpecError {
    pub field: String,
    pub msg: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, msg: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, SpecError>;

/// CRI field prefix of the container's security context.
const SC: &str = "config.linux.security_context";

/// The OCI runtime spec for container `c` of pod `sb`.
pub fn container_spec(sb: &SandboxInfo, c: &ContainerInput) -> Result<oci_spec::runtime::Spec> {
    let cfg = c.config;
    berth_oci::config::validate_id(c.id)
        .map_err(|e| SpecError::new("container id", e.to_string()))?;
    let name = cfg
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(SpecError::new("config.metadata.name", "missing"));
    }
    let default_sc = Default::default();
    let sc: &berth_cri_api::v1::LinuxContainerSecurityContext = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let pod_sc = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if sc.privileged && !pod_sc.is_some_and(|p| p.privileged) {
        return Err(SpecError::new(
            format!("{SC}.privileged"),
            "a privileged container needs a privileged pod sandbox",
        ));
    }

    let mut spec = berth_oci::spec_default::default_spec(false);
    spec["root"] = json!({"path": c.rootfs, "readonly": sc.readonly_rootfs});

    // Process.
    let pod_hostname = pod_hostname(sb);
    let user = user::resolve(sc, c.image, c.rootfs)?;
    let caps = security::capabilities(sc)?;
    let p = &mut spec["process"];
    p["terminal"] = json!(cfg.tty);
    p["args"] = json!(process::args(cfg, c.image)?);
    p["env"] = json!(process::env(cfg, c.image, &pod_hostname)?);
    p["cwd"] = json!(process::cwd(cfg, c.image)?);
    p["user"] = user.to_json();
    p["capabilities"] = caps.to_json();
    p["noNewPrivileges"] = json!(sc.no_new_privs);
    let res = cfg.linux.as_ref().and_then(|l| l.resources.as_ref());
    let oom = res.map_or(0, |r| r.oom_score_adj);
    if !(-1000..=1000).contains(&oom) {
        return Err(SpecError::new(
            "config.linux.resources.oom_score_adj",
            format!("{oom} is outside -1000..1000"),
        ));
    }
    p["oomScoreAdj"] = json!(oom);

    // Namespaces, hostname, sysctls.
    let linux = spec["linux"].as_object_mut().expect("linux is an object");
    linux.insert(
        "namespaces".into(),
        json!(namespaces(sb, sc, c.target_pidns.as_deref())?),
    );
    if let Some(u) = &sb.userns {
        let maps = |m: &[(u32, u32, u32)]| -> Value {
            m.iter()
                .map(|&(c, h, s)| json!({"containerID": c, "hostID": h, "size": s}))
                .collect()
        };
        if u.path.is_none() && (u.uid_map.is_empty() || u.gid_map.is_empty()) {
            return Err(SpecError::new(
                "sandbox.userns.uid_map",
                "a new user namespace needs uid and gid mappings",
            ));
        }
        if !u.uid_map.is_empty() {
            linux.insert("uidMappings".into(), maps(&u.uid_map));
        }
        if !u.gid_map.is_empty() {
            linux.insert("gidMappings".into(), maps(&u.gid_map));
        }
    }
    let sysctls = sysctls(sb)?;
    if !sysctls.is_empty() {
        linux.insert("sysctl".into(), Value::Object(sysctls));
    }
    linux.insert(
        "cgroupsPath".into(),
        json!(format!(
            "{}/{}",
            sb.cgroup_parent.trim_end_matches('/'),
            c.id
        )),
    );
    match sb.utsns {
        Some(_) if !pod_hostname.is_empty() => spec["hostname"] = json!(pod_hostname),
        // Host UTS: the hostname is the node's, never set from a container.
        _ => {
            spec.as_object_mut().expect("object").remove("hostname");
        }
    }

    // Mounts, devices, resources.
    let defaults = spec["mounts"].as_array().cloned().unwrap_or_default();
    let m = mounts::build(defaults, sb, c, sc)?;
    spec["mounts"] = json!(m.mounts);
    let linux = spec["linux"].as_object_mut().expect("linux is an object");
    if let Some(p) = m.rootfs_propagation {
        linux.insert("rootfsPropagation".into(), json!(p));
    }
    let devs = mounts::devices(cfg, sc.privileged)?;
    linux.insert("devices".into(), json!(devs.devices));
    linux.insert(
        "resources".into(),
        resources::build(res, devs.rules, sc.privileged)?,
    );

    // Security.
    if sc.privileged {
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    } else {
        if !sc.masked_paths.is_empty() {
            linux.insert("maskedPaths".into(), json!(sc.masked_paths));
        }
        if !sc.readonly_paths.is_empty() {
            linux.insert("readonlyPaths".into(), json!(sc.readonly_paths));
        }
        for (name, list) in [
            ("masked_paths", &sc.masked_paths),
            ("readonly_paths", &sc.readonly_paths),
        ] {
            if let Some((i, _)) = list.iter().enumerate().find(|(_, p)| !p.starts_with('/')) {
                return Err(SpecError::new(
                    format!("{SC}.{name}[{i}]"),
                    "must be an absolute path",
                ));
            }
        }
        if let Some(profile) = security::seccomp(sc, &caps.bounding, c.seccomp_localhost_root)? {
            linux.insert(
                "seccomp".into(),
                serde_json::to_value(profile).expect("a seccomp profile serializes"),
            );
        }
    }

    // CDI devices, applied last as containerd and CRI-O do (their env
    // replaces the CRI's, their nodes and mounts those on the same path).
    let want = crate::cdi::requested(cfg).map_err(|(f, m)| SpecError::new(f, m))?;
    if !want.is_empty() {
        let edits = crate::cdi::Registry::load(c.cdi_spec_dirs)
            .resolve(&want)
            .map_err(|(f, m)| SpecError::new(f, m))?;
        crate::cdi::apply(&mut spec, &edits);
    }

    // Annotations: the CRI's own, plus what an OCI hook needs to tell a
    // container from a sandbox and find its pod. Labels stay in berthd.
    let mut ann: Map<String, Value> = cfg
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let meta = sb.config.metadata.clone().unwrap_or_default();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", name),
        ("io.kubernetes.cri.sandbox-id", sb.id),
        ("io.kubernetes.cri.sandbox-name", &meta.name),
        ("io.kubernetes.cri.sandbox-namespace", &meta.namespace),
        ("io.kubernetes.cri.sandbox-uid", &meta.uid),
        (
            "io.kubernetes.cri.image-name",
            cfg.image.as_ref().map_or("", |i| i.image.as_str()),
        ),
    ] {
        ann.insert(k.into(), json!(v));
    }
    spec["annotations"] = Value::Object(ann);

    serde_json::from_value(spec)
        .map_err(|e| SpecError::new("(spec)", format!("generated an invalid spec: {e}")))
}

/// The stop signal for StopContainer: the image's STOPSIGNAL (a name such
/// as "SIGQUIT" or "QUIT", or a number), SIGTERM when it has none.
pub fn stop_signal(image: &berth_image::ImageConfig) -> Result<i32> {
    match image.stop_signal.as_deref().map(str::trim) {
        None | Some("") => Ok(libc::SIGTERM),
        Some(s) => berth_oci::container::parse_signal(s)
            .map_err(|e| SpecError::new("image.config.StopSignal", e.to_string())),
    }
}

/// The pod's hostname: the sandbox config's, or the node's on the host
/// network (where kubelet leaves it empty).
fn pod_hostname(sb: &SandboxInfo) -> String {
    if !sb.config.hostname.is_empty() {
        return sb.config.hostname.clone();
    }
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ns_mode(v: i32) -> NamespaceMode {
    NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod)
}

fn namespaces(
    sb: &SandboxInfo,
    sc: &berth_cri_api::v1::LinuxContainerSecurityContext,
    target_pidns: Option<&Path>,
) -> Result<Vec<Value>> {
    let join = |typ: &str, p: &Option<PathBuf>| p.as_ref().map(|p| json!({"type": typ, "path": p}));
    let mut v: Vec<Value> = [
        join("network", &sb.netns),
        join("ipc", &sb.ipcns),
        join("uts", &sb.utsns),
    ]
    .into_iter()
    .flatten()
    .collect();
    let pod_pid = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| ns_mode(o.pid));
    let ctr_pid = sc.namespace_options.as_ref().map(|o| ns_mode(o.pid));
    let target = match (ctr_pid, target_pidns) {
        (Some(NamespaceMode::Target), Some(p)) => Some(p),
        (Some(NamespaceMode::Target), None) => {
            return Err(SpecError::new(
                format!("{SC}.namespace_options.target_id"),
                "a TARGET pid namespace needs the target container's",
            ))
        }
        _ => None,
    };
    if sb.userns.is_some() && ctr_pid == Some(NamespaceMode::Node) {
        return Err(SpecError::new(
            format!("{SC}.namespace_options.pid"),
            "a container of a pod in its own user namespace cannot use the node's",
        ));
    }
    if let Some(p) = target {
        v.push(json!({"type": "pid", "path": p}));
    } else if let Some(p) = &sb.pidns {
        v.push(json!({"type": "pid", "path": p}));
    } else if pod_pid != Some(NamespaceMode::Node) && ctr_pid != Some(NamespaceMode::Node) {
        v.push(json!({"type": "pid"}));
    }
    v.push(json!({"type": "mount"}));
    // A cgroup namespace rooted at the container's cgroup, as containerd
    // does on cgroup v2 (berth mounts the v1 hierarchies inside it too).
    v.push(json!({"type": "cgroup"}));
    if let Some(u) = &sb.userns {
        v.push(match &u.path {
            Some(p) => json!({"type": "user", "path": p}),
            None => json!({"type": "user"}),
        });
    }
    Ok(v)
}

/// The pod's sysctls, checked again (RunPodSandbox did) against the
/// namespaces the pod really has: a record must never set a node's sysctl.
fn sysctls(sb: &SandboxInfo) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let Some(l) = sb.config.linux.as_ref() else {
        return Ok(out);
    };
    let own = crate::sysctl::OwnNamespaces {
        net: sb.netns.is_some(),
        ipc: sb.ipcns.is_some(),
    };
    for (k, v) in &l.sysctls {
        crate::sysctl::check(k, v, own, &[])
            .map_err(|m| SpecError::new(format!("config.linux.sysctls[{k}]"), m))?;
        out.insert(k.clone(), json!(v));
    }
    Ok(out)
}
