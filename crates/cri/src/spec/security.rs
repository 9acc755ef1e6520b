//! Capabilities and seccomp.

use super::{Result, SpecError, SC};
use berth_cri_api::v1::security_profile::ProfileType;
use berth_cri_api::v1::LinuxContainerSecurityContext;
use berth_oci::caps::{from_name, last_cap, NAMES};
use berth_oci::fsutil::{openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS};
use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The capabilities a container gets unless it asks otherwise: the set
/// containerd and CRI-O give (Docker's historical default).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process's capability sets, as "CAP_X" names in kernel order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    /// Also the effective and permitted sets.
    pub bounding: Vec<String>,
    /// Also the inheritable set (ambient capabilities must be inheritable).
    pub ambient: Vec<String>,
}

impl Caps {
    pub fn to_json(&self) -> Value {
        json!({
            "bounding": self.bounding,
            "effective": self.bounding,
            "permitted": self.bounding,
            "inheritable": self.ambient,
            "ambient": self.ambient,
        })
    }
}

/// "All" capabilities: those the kernel knows that berthd itself may hand
/// on (its bounding set), as containerd does; asking for more than the
/// runtime holds would only fail the container's capset.
fn all_caps() -> Vec<u32> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    (0..=last_cap().min(NAMES.len() as u32 - 1))
        .filter(|c| bounding & (1 << c) != 0)
        .collect()
}

/// Parses a list of names: with or without CAP_, any case, and "ALL".
/// Returns (has ALL, the others).
fn parse_list(list: &[String], field: &str) -> Result<(bool, Vec<u32>)> {
    let mut all = false;
    let mut out = Vec::new();
    for (i, n) in list.iter().enumerate() {
        if n.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        match from_name(n.trim()) {
            Some(c) => out.push(c),
            None => {
                return Err(SpecError::new(
                    format!("{field}[{i}]"),
                    format!("unknown capability {n:?}"),
                ))
            }
        }
    }
    Ok((all, out))
}

/// The capability sets: the default set, or all of them when privileged;
/// "ALL" in add then in drop, then the named adds and ambient adds, then the
/// named drops (a drop removes a capability from every set).
pub fn capabilities(sc: &LinuxContainerSecurityContext) -> Result<Caps> {
    let f = format!("{SC}.capabilities");
    let empty = Default::default();
    let c: &berth_cri_api::v1::Capability = sc.capabilities.as_ref().unwrap_or(&empty);
    let (add_all, add) = parse_list(&c.add_capabilities, &format!("{f}.add_capabilities"))?;
    let (drop_all, drop) = parse_list(&c.drop_capabilities, &format!("{f}.drop_capabilities"))?;
    let (amb_all, amb) = parse_list(
        &c.add_ambient_capabilities,
        &format!("{f}.add_ambient_capabilities"),
    )?;
    let mut ambient: Vec<u32> = if amb_all { all_caps() } else { amb };
    let set: Vec<u32> = if sc.privileged {
        // CRI: privileged MAY ignore add and drop; containerd does.
        all_caps()
    } else {
        let mut set: Vec<u32> = DEFAULT_CAPS.iter().filter_map(|n| from_name(n)).collect();
        if add_all {
            set = all_caps();
        }
        if drop_all {
            set.clear();
        }
        set.extend(&add);
        set.extend(&ambient);
        set.retain(|c| !drop.contains(c));
        ambient.retain(|c| !drop.contains(c));
        set
    };
    let names = |mut v: Vec<u32>| -> Vec<String> {
        v.sort_unstable();
        v.dedup();
        v.into_iter()
            .map(|c| NAMES[c as usize].to_string())
            .collect()
    };
    Ok(Caps {
        bounding: names(set),
        ambient: names(ambient),
    })
}

/// What the container asked for, from the field or the deprecated string.
enum Wanted {
    Default,
    Unconfined,
    Localhost(String, String),
}

/// The seccomp profile: RuntimeDefault is berth's built-in profile for the
/// container's capabilities; Unconfined none; Localhost a JSON profile
/// (OCI `linux.seccomp` format) from inside `root`. With neither the field
/// nor the deprecated string set, none (the CRI's default is unconfined;
/// kubelet sends RuntimeDefault when the cluster defaults to it).
pub fn seccomp(
    sc: &LinuxContainerSecurityContext,
    caps: &[String],
    root: &Path,
) -> Result<Option<LinuxSeccomp>> {
    let wanted = if let Some(p) = &sc.seccomp {
        let field = format!("{SC}.seccomp.localhost_ref");
        match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Wanted::Default,
            Ok(ProfileType::Unconfined) => Wanted::Unconfined,
            Ok(ProfileType::Localhost) => Wanted::Localhost(p.localhost_ref.clone(), field),
            Err(_) => {
                return Err(SpecError::new(
                    format!("{SC}.seccomp.profile_type"),
                    format!("unknown profile type {}", p.profile_type),
                ))
            }
        }
    } else {
        #[allow(deprecated)]
        let s = sc.seccomp_profile_path.as_str();
        let field = format!("{SC}.seccomp_profile_path");
        match s {
            "" | "unconfined" => Wanted::Unconfined,
            "runtime/default" | "docker/default" => Wanted::Default,
            _ => match s.strip_prefix("localhost/") {
                Some(p) => Wanted::Localhost(p.to_string(), field),
                None => {
                    return Err(SpecError::new(
                        field,
                        format!("unknown seccomp profile {s:?}"),
                    ))
                }
            },
        }
    };
    match wanted {
        Wanted::Unconfined => Ok(None),
        Wanted::Default => Ok(Some(berth_oci::seccomp_default::profile(caps))),
        Wanted::Localhost(path, field) => localhost(&path, root, &field, caps).map(Some),
    }
}

/// Reads a Localhost profile from the absolute path the kubelet sends (its
/// `--root-dir` is a flag, and critest uses temporary directories), as
/// containerd and CRI-O do. When the node restricts profiles to `root`
/// (`seccomp_profile_root`, off by default), the path must lie under it, or be
/// relative to it, and is opened with RESOLVE_BENEATH from `root`, so neither
/// `..` nor a symlink can leave it.
fn localhost(path: &str, root: &Path, field: &str, caps: &[String]) -> Result<LinuxSeccomp> {
    let bad = |msg: String| SpecError::new(field, msg);
    if path.is_empty() {
        return Err(bad("a Localhost profile needs a path".into()));
    }
    let p = Path::new(path);
    let fd = if root.as_os_str().is_empty() {
        if !p.is_absolute() {
            return Err(bad(format!("{path:?} must be an absolute path")));
        }
        rustix::fs::open(
            p,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| bad(format!("{path:?}: {e}")))?
    } else {
        beneath(p, root).map_err(|m| bad(format!("{path:?}: {m}")))?
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| bad(e.to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(bad(format!("{path:?} is not a regular file")));
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(16 << 20)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("reading {path:?}: {e}")))?;
    let mut v: Value =
        serde_json::from_slice(&data).map_err(|e| bad(format!("{path:?} is not JSON: {e}")))?;
    docker_format(&mut v, caps);
    let profile: LinuxSeccomp = serde_json::from_value(v)
        .map_err(|e| bad(format!("{path:?} is not a seccomp profile: {e}")))?;
    // Compile now so a broken profile fails CreateContainer with its name,
    // not the runtime later.
    berth_oci::seccomp::compile(&profile).map_err(|e| bad(format!("{path:?}: {e}")))?;
    Ok(profile)
}

/// Opens `p` inside `root` (absolute under it, or relative to it) so that
/// nothing can lead out of it.
fn beneath(p: &Path, root: &Path) -> std::result::Result<OwnedFd, String> {
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain \"..\"".into());
    }
    let rel: PathBuf = if p.is_absolute() {
        p.strip_prefix(root)
            .map_err(|_| {
                format!(
                    "is outside the seccomp profile directory {}",
                    root.display()
                )
            })?
            .to_path_buf()
    } else {
        p.to_path_buf()
    };
    let dir = berth_oci::fsutil::open_path(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("the seccomp profile directory: {e}"))?;
    openat2(
        dir.as_raw_fd(),
        &rel,
        libc::O_RDONLY | libc::O_NONBLOCK,
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| {
        if e == libc::EXDEV {
            "leaves the seccomp profile directory".to_string()
        } else {
            std::io::Error::from_raw_os_error(e).to_string()
        }
    })
}

/// Profiles written for Docker (what kubelet's Localhost profiles usually
/// are) extend the OCI format: `archMap` instead of `architectures`, and
/// rules that apply only `includes`/`excludes` given capabilities or
/// architectures. Resolve those for this container and machine, so such a
/// rule is never applied unconditionally.
fn docker_format(v: &mut Value, caps: &[String]) {
    let (scmp_arch, go_arch) = match std::env::consts::ARCH {
        "x86_64" => ("SCMP_ARCH_X86_64", "amd64"),
        "aarch64" => ("SCMP_ARCH_AARCH64", "arm64"),
        "x86" => ("SCMP_ARCH_X86", "386"),
        "arm" => ("SCMP_ARCH_ARM", "arm"),
        other => (other, other),
    };
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if let Some(map) = obj.remove("archMap") {
        if !obj.contains_key("architectures") {
            let mut arches = Vec::new();
            for a in map.as_array().into_iter().flatten() {
                if a["architecture"] == scmp_arch {
                    arches.push(a["architecture"].clone());
                    arches.extend(
                        a["subArchitectures"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
            }
            if !arches.is_empty() {
                obj.insert("architectures".into(), Value::Array(arches));
            }
        }
    }
    let has_cap = |c: &Value| c.as_str().is_some_and(|c| caps.iter().any(|x| x == c));
    let is_arch = |a: &Value| a == go_arch;
    if let Some(rules) = obj.get_mut("syscalls").and_then(Value::as_array_mut) {
        rules.retain(|r| {
            let list = |k: &str, f: &str| r[k][f].as_array().cloned().unwrap_or_default();
            list("includes", "caps").iter().all(has_cap)
                && (list("includes", "arches").is_empty()
                    || list("includes", "arches").iter().any(is_arch))
                && !list("excludes", "caps").iter().any(has_cap)
                && !list("excludes", "arches").iter().any(is_arch)
        });
        for r in rules.iter_mut() {
            if let Some(r) = r.as_object_mut() {
                for k in ["includes", "excludes", "comment"] {
                    r.remove(k);
                }
            }
        }
    }
}
