//! Loading and validating config.json.
//!
//! Parsing goes through `serde_path_to_error`, so a type error names the JSON
//! path (`process.user.uid`); semantic checks below name the field the same
//! way. Validation runs before anything is created on the host, so a bad
//! config leaves nothing behind.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";

/// A validated spec plus the absolute paths derived from it.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

/// Parses JSON into `T`, reporting the path of the offending field.
pub fn parse_json<T: serde::de::DeserializeOwned>(file: &str, data: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "(document)".to_string()
        } else {
            path
        };
        Error::config(file, field, e.into_inner().to_string())
    })
}

/// Reads `<bundle>/config.json`, validates it, and resolves the rootfs.
pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::Os {
        ctx: format!("bundle {}", dir.display()),
        err: e,
    })?;
    let file = dir.join(CONFIG_FILE);
    let fname = file.display().to_string();
    let data = std::fs::read(&file).map_err(|e| Error::Os {
        ctx: format!("reading {fname}"),
        err: e,
    })?;
    let spec: Spec = parse_json(&fname, &data)?;
    validate(&fname, &spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::config(&fname, "root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| Error::config(&fname, "root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(Error::config(&fname, "root.path", "not a directory"));
    }
    Ok(Bundle { dir, rootfs, spec })
}

const PROPAGATIONS: &[&str] = &[
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
];

/// Semantic checks the JSON schema cannot express.
pub fn validate(file: &str, spec: &Spec) -> Result<()> {
    let err = |field: &str, msg: &str| Err(Error::config(file, field, msg));
    if spec.version().is_empty() {
        return err("ociVersion", "missing");
    }
    if !spec.version().starts_with("1.") {
        return err(
            "ociVersion",
            &format!(
                "unsupported version {:?} (berth implements 1.x)",
                spec.version()
            ),
        );
    }
    let Some(root) = spec.root() else {
        return err("root", "missing");
    };
    if root.path().as_os_str().is_empty() {
        return err("root.path", "empty");
    }
    let Some(process) = spec.process() else {
        return err("process", "missing");
    };
    validate_process(file, "process", process)?;

    let linux = spec.linux().clone().unwrap_or_default();
    let mut seen = HashSet::new();
    let mut has_new = HashSet::new();
    let mut has_any = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return err(
                &format!("linux.namespaces[{i}].type"),
                &format!("namespace {:?} listed twice", ns.typ().to_string()),
            );
        }
        has_any.insert(ns.typ());
        match ns.path() {
            Some(p) if !p.is_absolute() => {
                return err(&format!("linux.namespaces[{i}].path"), "must be absolute")
            }
            Some(_) => {}
            None => {
                has_new.insert(ns.typ());
            }
        }
    }
    let userns = has_any.contains(&LinuxNamespaceType::User);
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_new.contains(&LinuxNamespaceType::User) && !maps {
        return err(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        );
    }
    if maps && !userns {
        return err(
            "linux.uidMappings",
            "mappings given but no user namespace in linux.namespaces",
        );
    }
    for (name, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        for (i, m) in maps.iter().flatten().enumerate() {
            if m.size() == 0 {
                return err(&format!("{name}[{i}].size"), "must be greater than 0");
            }
        }
    }
    let uts = has_any.contains(&LinuxNamespaceType::Uts);
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !uts {
        return err("hostname", "setting a hostname needs a uts namespace");
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !uts {
        return err("domainname", "setting a domainname needs a uts namespace");
    }
    for (name, v) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if let Some(h) = v {
            if h.len() > 64
                || h.bytes()
                    .any(|b| b == 0 || b == b'/' || b.is_ascii_control())
            {
                return err(name, "must be at most 64 printable characters");
            }
        }
    }
    if let Some(offs) = linux.time_offsets() {
        if !offs.is_empty() && !has_new.contains(&LinuxNamespaceType::Time) {
            return err("linux.timeOffsets", "needs a new time namespace");
        }
        for k in offs.keys() {
            if k != "monotonic" && k != "boottime" {
                return err(
                    &format!("linux.timeOffsets.{k}"),
                    "only monotonic and boottime clocks have offsets",
                );
            }
        }
    }
    for (key, val) in linux.sysctl().iter().flatten() {
        validate_sysctl(file, key, val, &has_any, spec.hostname().is_some())?;
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !p.is_empty() && !PROPAGATIONS.contains(&p.as_str()) {
            return err(
                "linux.rootfsPropagation",
                &format!("unknown propagation {p:?}"),
            );
        }
    }
    for (name, list) in [
        ("linux.maskedPaths", linux.masked_paths()),
        ("linux.readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in list.iter().flatten().enumerate() {
            if !p.starts_with('/') {
                return err(&format!("{name}[{i}]"), "must be an absolute path");
            }
        }
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        if !d.path().is_absolute() {
            return err(&format!("linux.devices[{i}].path"), "must be absolute");
        }
        if !d.path().starts_with("/dev") {
            return err(
                &format!("linux.devices[{i}].path"),
                "devices may only be created under /dev",
            );
        }
    }
    if let Some(d) = linux.net_devices() {
        crate::netdev::validate(file, d, has_new.contains(&LinuxNamespaceType::Network))?;
    }
    if let Some(p) = linux.memory_policy() {
        crate::mempolicy::compile(file, p)?;
    }
    if let Some(cg) = linux.cgroups_path() {
        if let Err(e) = berth_cgroups::normalize_path(&cg.to_string_lossy()) {
            return err("linux.cgroupsPath", &e.to_string());
        }
    }
    let has_mntns = has_any.contains(&LinuxNamespaceType::Mount);
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.destination().is_absolute() {
            return err(&format!("{field}.destination"), "must be an absolute path");
        }
        if !has_mntns {
            return err(&field, "mounts need a mount namespace");
        }
        let opts = m.options().clone().unwrap_or_default();
        let is_bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if is_bind && m.source().is_none() {
            return err(&format!("{field}.source"), "a bind mount needs a source");
        }
        for o in &opts {
            if crate::mount_opts::parse_one(o).is_none() && o.contains('\n') {
                return err(&format!("{field}.options"), "option contains a newline");
            }
        }
        if crate::idmap::wanted(m).is_some() && !is_bind {
            return err(
                &format!("{field}.uidMappings"),
                "idmapped mounts are only supported for bind mounts",
            );
        }
    }
    if let Some(hooks) = spec.hooks() {
        #[allow(deprecated)]
        let all = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ];
        for (name, list) in all {
            for (i, h) in list.iter().flatten().enumerate() {
                if !h.path().is_absolute() {
                    return err(&format!("hooks.{name}[{i}].path"), "must be absolute");
                }
                if let Some(t) = h.timeout() {
                    if t <= 0 {
                        return err(&format!("hooks.{name}[{i}].timeout"), "must be positive");
                    }
                }
            }
        }
    }
    if let Some(r) = linux.resources() {
        validate_resources(file, r)?;
    }
    if let Some(p) = linux.personality() {
        if let Some((i, f)) = p.flags().iter().flatten().enumerate().next() {
            return err(
                &format!("linux.personality.flags[{i}]"),
                &format!("unsupported personality flag {f:?}"),
            );
        }
    }
    Ok(())
}

/// Checks `linux.resources` (also an `update`'s resources); errors name the
/// field as `linux.resources.<path>`.
pub fn validate_resources(file: &str, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
    // Only `unified` depends on the host's cgroup version: detect it only then.
    let mode = if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        berth_cgroups::detect_mode(Path::new(crate::CGROUP_ROOT))
    } else {
        berth_cgroups::Mode::Hybrid
    };
    berth_cgroups::resources::validate(r, mode).map_err(|e| match e {
        berth_cgroups::Error::Resource { field, msg } => Error::config(file, field, msg),
        e => e.into(),
    })
}

/// Checks a process object (config.json's `process` or an exec process.json).
pub fn validate_process(file: &str, prefix: &str, p: &Process) -> Result<()> {
    let err = |field: &str, msg: &str| Err(Error::config(file, format!("{prefix}.{field}"), msg));
    match p.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return err("args", "must name the program to run"),
    }
    if !p.cwd().is_absolute() {
        return err("cwd", "must be an absolute path");
    }
    for (i, e) in p.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return err(&format!("env[{i}]"), "must have the form KEY=value");
        }
        if e.contains('\0') {
            return err(&format!("env[{i}]"), "contains a NUL byte");
        }
    }
    if p.console_size().is_some() && p.terminal() != Some(true) {
        return err("consoleSize", "only valid with terminal: true");
    }
    let mut seen = HashSet::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if !seen.insert(r.typ().to_string()) {
            return err(&format!("rlimits[{i}].type"), "listed twice");
        }
        if r.soft() > r.hard() {
            return err(&format!("rlimits[{i}].soft"), "greater than hard");
        }
    }
    if let Some(o) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&o) {
            return err("oomScoreAdj", "must be between -1000 and 1000");
        }
    }
    if let Some(u) = p.user().umask() {
        if u > 0o777 {
            return err("user.umask", "must be at most 0777");
        }
    }
    Ok(())
}

/// Sysctls are namespaced per kernel namespace; only those the container has
/// its own namespace for may be set, and keys may not walk out of /proc/sys.
fn validate_sysctl(
    file: &str,
    key: &str,
    val: &str,
    ns: &HashSet<LinuxNamespaceType>,
    _has_hostname: bool,
) -> Result<()> {
    let field = format!("linux.sysctl.{key}");
    let bad = |msg: &str| Err(Error::config(file, field.clone(), msg));
    if key.is_empty()
        || key.contains("..")
        || key.starts_with(['.', '/'])
        || key.ends_with(['.', '/'])
        || key.contains("//")
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return bad("not a valid sysctl name");
    }
    if val.bytes().any(|b| b == b'\n' || b == 0) {
        return bad("value must be a single line");
    }
    let k = key.replace('/', ".");
    // The IPC namespace's: kernel.shm*, kernel.msg* (incl. *_next_id),
    // kernel.sem and kernel.sem_next_id, fs.mqueue.*.
    let ipc = k.starts_with("kernel.shm")
        || k.starts_with("kernel.msg")
        || k == "kernel.sem"
        || k == "kernel.sem_next_id"
        || k.starts_with("fs.mqueue.");
    if ipc {
        if ns.contains(&LinuxNamespaceType::Ipc) {
            return Ok(());
        }
        return bad("needs an ipc namespace");
    }
    if k.starts_with("net.") {
        if ns.contains(&LinuxNamespaceType::Network) {
            return Ok(());
        }
        return bad("needs a network namespace");
    }
    if k == "kernel.hostname" || k == "kernel.domainname" {
        if ns.contains(&LinuxNamespaceType::Uts) {
            return Ok(());
        }
        return bad("needs a uts namespace");
    }
    bad("not a namespaced sysctl: it would change the host")
}

/// Container ids are used as directory and cgroup names.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        // runc's wording.
        return Err(Error::Other("container id cannot be empty".into()));
    }
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "hostname": "x",
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "network"}, {"type": "ipc"}]}
        })
    }

    fn check(v: serde_json::Value) -> Result<()> {
        let data = serde_json::to_vec(&v).unwrap();
        let spec: Spec = parse_json("config.json", &data)?;
        validate("config.json", &spec)
    }

    fn field_of(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn accepts_base() {
        check(base()).unwrap();
    }

    #[test]
    fn type_error_names_field() {
        let mut v = base();
        v["process"]["user"]["uid"] = serde_json::json!("root");
        assert_eq!(field_of(check(v)), "process.user.uid");
    }

    #[test]
    fn semantic_errors_name_field() {
        let mut v = base();
        v["process"]["cwd"] = serde_json::json!("relative");
        assert_eq!(field_of(check(v)), "process.cwd");

        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"kernel.panic": "1"});
        assert_eq!(field_of(check(v)), "linux.sysctl.kernel.panic");

        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"net/../../sysrq-trigger": "b"});
        assert_eq!(field_of(check(v)), "linux.sysctl.net/../../sysrq-trigger");

        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        assert_eq!(field_of(check(v)), "hostname");

        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}]);
        assert_eq!(field_of(check(v)), "linux.namespaces[1].type");

        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "rel", "type": "tmpfs"}]);
        assert_eq!(field_of(check(v)), "mounts[0].destination");

        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert_eq!(field_of(check(v)), "process.args");

        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}, {"type": "uts"}]);
        assert_eq!(field_of(check(v)), "linux.uidMappings");
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
    }
}
