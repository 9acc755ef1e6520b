//! Mounts (the runtime's defaults, the pod's /dev/shm and /etc files, the
//! CRI's volumes) and devices.

use super::{ContainerInput, Result, SandboxInfo, SpecError};
use berth_cri_api::v1::{ContainerConfig, LinuxContainerSecurityContext, MountPropagation};
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub struct Built {
    pub mounts: Vec<Value>,
    pub rootfs_propagation: Option<&'static str>,
}

/// `p` made canonical without touching the filesystem ("/a/./b/../c/" ->
/// "/a/c"); None unless absolute.
pub fn clean(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn dest(m: &Value) -> &str {
    m["destination"].as_str().unwrap_or_default()
}

/// Adds `m`, replacing an earlier mount on the same destination.
fn put(mounts: &mut Vec<Value>, m: Value) {
    mounts.retain(|o| dest(o) != dest(&m));
    mounts.push(m);
}

fn depth(m: &Value) -> usize {
    dest(m).split('/').filter(|c| !c.is_empty()).count()
}

fn bind(dest: &str, src: &Path, opts: &[&str]) -> Value {
    let mut o = vec!["rbind"];
    o.extend_from_slice(opts);
    json!({"destination": dest, "type": "bind", "source": src, "options": o})
}

pub fn build(
    defaults: Vec<Value>,
    sb: &SandboxInfo,
    c: &ContainerInput,
    sc: &LinuxContainerSecurityContext,
) -> Result<Built> {
    let mut mounts = defaults;
    if sc.privileged {
        // Privileged containers see sysfs and their cgroups read-write.
        for m in &mut mounts {
            let d = m["destination"].as_str().unwrap_or_default();
            if d == "/sys" || d == "/sys/fs/cgroup" {
                if let Some(o) = m["options"].as_array_mut() {
                    o.retain(|o| o != "ro");
                }
            }
        }
    }
    // The pod's and the CRI's mounts, later ones replacing earlier ones on
    // the same destination.
    let mut extra = Vec::new();
    if let Some(shm) = &sb.shm {
        put(
            &mut extra,
            bind("/dev/shm", shm, &["rprivate", "nosuid", "nodev", "noexec"]),
        );
    }
    let rw = if sc.readonly_rootfs { "ro" } else { "rw" };
    for (i, (dest, src)) in sb.etc_files.iter().enumerate() {
        let Some(d) = clean(dest) else {
            return Err(SpecError::new(
                format!("sandbox.etc_files[{i}]"),
                format!("{dest:?} is not an absolute path"),
            ));
        };
        put(&mut extra, bind(&d, src, &["rprivate", rw]));
    }

    let mut rootfs_propagation = None;
    for (i, m) in c.config.mounts.iter().enumerate() {
        let f = |name: &str| format!("config.mounts[{i}].{name}");
        let Some(target) = clean(&m.container_path) else {
            return Err(SpecError::new(
                f("container_path"),
                format!("{:?} is not an absolute path", m.container_path),
            ));
        };
        if m.image.as_ref().is_some_and(|im| !im.image.is_empty()) {
            // An image volume (KEP-4639): the image's read-only view, never
            // executable from, as the kubelet expects.
            let Some((_, src)) = c.image_volumes.iter().find(|(j, _)| *j == i) else {
                return Err(SpecError::new(
                    f("image"),
                    "the image volume was not prepared",
                ));
            };
            put(
                &mut extra,
                bind(
                    &target,
                    src,
                    &["ro", "nosuid", "nodev", "noexec", "rprivate"],
                ),
            );
            continue;
        }
        if !m.host_path.starts_with('/') {
            return Err(SpecError::new(
                f("host_path"),
                format!("{:?} is not an absolute path", m.host_path),
            ));
        }
        // The CRI: a symlink as host path is followed, and the real
        // destination mounted.
        let src = std::fs::canonicalize(&m.host_path)
            .map_err(|e| SpecError::new(f("host_path"), format!("{:?}: {e}", m.host_path)))?;
        // Checked first: rro only makes sense on a private mount.
        if m.recursive_read_only {
            if !m.readonly {
                return Err(SpecError::new(
                    f("recursive_read_only"),
                    "needs readonly to be set too",
                ));
            }
            if m.propagation != MountPropagation::PropagationPrivate as i32 {
                return Err(SpecError::new(
                    f("recursive_read_only"),
                    "needs propagation PRIVATE",
                ));
            }
        }
        let mut opts: Vec<&str> = Vec::new();
        match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => opts.push("rprivate"),
            Ok(MountPropagation::PropagationHostToContainer) => {
                check_host_propagation(&src, false)
                    .map_err(|e| SpecError::new(f("propagation"), e))?;
                opts.push("rslave");
                if rootfs_propagation != Some("rshared") {
                    rootfs_propagation = Some("rslave");
                }
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                check_host_propagation(&src, true)
                    .map_err(|e| SpecError::new(f("propagation"), e))?;
                opts.push("rshared");
                rootfs_propagation = Some("rshared");
            }
            Err(_) => {
                return Err(SpecError::new(
                    f("propagation"),
                    format!("unknown propagation {}", m.propagation),
                ))
            }
        }
        if m.recursive_read_only {
            opts.extend(["ro", "rro"]);
        } else if m.readonly {
            opts.push("ro");
        } else {
            opts.push("rw");
        }
        let mut v = bind(&target, &src, &opts);
        let maps = |l: &[berth_cri_api::v1::IdMapping]| -> Value {
            l.iter()
                .map(|m| json!({"containerID": m.container_id, "hostID": m.host_id, "size": m.length}))
                .collect()
        };
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
                return Err(SpecError::new(
                    f("uid_mappings"),
                    "an idmapped mount needs both uid_mappings and gid_mappings",
                ));
            }
            if let Some((j, _)) = m
                .uid_mappings
                .iter()
                .chain(&m.gid_mappings)
                .enumerate()
                .find(|(_, m)| m.length == 0)
            {
                let (name, j) = if j < m.uid_mappings.len() {
                    ("uid_mappings", j)
                } else {
                    ("gid_mappings", j - m.uid_mappings.len())
                };
                return Err(SpecError::new(
                    f(&format!("{name}[{j}].length")),
                    "must be greater than 0",
                ));
            }
            v["uidMappings"] = maps(&m.uid_mappings);
            v["gidMappings"] = maps(&m.gid_mappings);
        }
        put(&mut extra, v);
    }
    // They replace the defaults on their destinations (a /dev also those
    // under it), and go after them, parents before children so a volume
    // on /etc cannot hide the pod's /etc/hosts.
    mounts.retain(|o| {
        let d = dest(o);
        !extra
            .iter()
            .any(|e| dest(e) == d || (dest(e) == "/dev" && d.starts_with("/dev/")))
    });
    extra.sort_by_key(depth);
    if sb.userns.is_some() {
        // In the pod's user namespace, host files owned by root would show
        // as nobody: volumes and the pod's /etc files are idmapped with the
        // pod's mappings (an `idmap` without its own takes the container's).
        // Image volumes are idmapped views already (an overlay cannot be
        // idmapped again).
        for m in &mut extra {
            let image_volume = c
                .image_volumes
                .iter()
                .any(|(_, src)| m["source"] == json!(src));
            if m.get("uidMappings").is_none() && !image_volume {
                if let Some(o) = m["options"].as_array_mut() {
                    o.push(json!("idmap"));
                }
            }
        }
    }
    mounts.extend(extra);
    Ok(Built {
        mounts,
        rootfs_propagation,
    })
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A host→container (rslave) volume needs its host mount shared or a
/// slave, a bidirectional (rshared) one needs it shared: otherwise no
/// mount would ever propagate and the pod silently misbehaves.
fn check_host_propagation(src: &Path, need_shared: bool) -> std::result::Result<(), String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mut best: Option<(usize, PathBuf, bool, bool)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || sep < 6 {
            continue;
        }
        let mp = PathBuf::from(unescape(f[4]));
        if !src.starts_with(&mp) {
            continue;
        }
        let shared = f[6..sep].iter().any(|o| o.starts_with("shared:"));
        let slave = f[6..sep].iter().any(|o| o.starts_with("master:"));
        let depth = mp.components().count();
        // Later lines mount over earlier ones at the same point.
        if best.as_ref().is_none_or(|b| depth >= b.0) {
            best = Some((depth, mp, shared, slave));
        }
    }
    let Some((_, mp, shared, slave)) = best else {
        return Err(format!("no mount holds {}", src.display()));
    };
    if need_shared && !shared {
        return Err(format!(
            "{} is on the mount {}, which is not shared: BIDIRECTIONAL propagation needs a shared mount",
            src.display(),
            mp.display()
        ));
    }
    if !shared && !slave {
        return Err(format!(
            "{} is on the mount {}, which is neither shared nor a slave: HOST_TO_CONTAINER propagation needs one of them",
            src.display(),
            mp.display()
        ));
    }
    Ok(())
}

pub struct Devs {
    /// linux.devices
    pub devices: Vec<Value>,
    /// allow rules for linux.resources.devices
    pub rules: Vec<Value>,
}

/// (type, major, minor, mode, uid, gid) of a device node, None if `m` is
/// not one.
fn dev_of(m: &std::fs::Metadata) -> Option<(&'static str, u64, u64, u32, u32, u32)> {
    let t = m.file_type();
    let typ = if t.is_char_device() {
        "c"
    } else if t.is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some((
        typ,
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev),
        m.mode() & 0o777,
        m.uid(),
        m.gid(),
    ))
}

/// Device nodes under `dir` (not following symlinks), with their paths
/// relative to it. Skips what the runtime mounts itself.
fn walk_devices(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        let r = rel.join(e.file_name());
        if m.is_dir() {
            walk_devices(&e.path(), &r, out, depth + 1);
        } else if dev_of(&m).is_some() {
            out.push((r, m));
        }
    }
}

fn device_json(path: &str, d: (&str, u64, u64, u32, u32, u32)) -> Value {
    json!({"path": path, "type": d.0, "major": d.1, "minor": d.2, "fileMode": d.3, "uid": d.4, "gid": d.5})
}

fn rule_json(d: (&str, u64, u64, u32, u32, u32), access: &str) -> Value {
    json!({"allow": true, "type": d.0, "major": d.1, "minor": d.2, "access": access})
}

/// The CRI's devices (a directory as host path adds every device node
/// under it), and for a privileged container every device of the host's
/// /dev.
pub fn devices(cfg: &ContainerConfig, privileged: bool) -> Result<Devs> {
    let mut devices: Vec<Value> = Vec::new();
    let mut rules = Vec::new();
    let add = |devices: &mut Vec<Value>, v: Value| {
        devices.retain(|d| d["path"] != v["path"]);
        devices.push(v);
    };
    if privileged {
        let mut found = Vec::new();
        let skip = ["pts", "shm", "mqueue", "fd", "console", "core"];
        if let Ok(rd) = std::fs::read_dir("/dev") {
            let mut entries: Vec<_> = rd.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                if skip.contains(&name.as_str()) || name.starts_with('.') {
                    continue;
                }
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                if m.is_dir() {
                    walk_devices(&e.path(), Path::new(&name), &mut found, 1);
                } else if dev_of(&m).is_some() {
                    found.push((PathBuf::from(&name), m));
                }
            }
        }
        for (rel, m) in found {
            let d = dev_of(&m).expect("a device");
            add(
                &mut devices,
                device_json(&format!("/dev/{}", rel.display()), d),
            );
        }
    }
    for (i, dv) in cfg.devices.iter().enumerate() {
        let f = |name: &str| format!("config.devices[{i}].{name}");
        let perms = if dv.permissions.is_empty() {
            "rwm"
        } else {
            dv.permissions.as_str()
        };
        let mut seen = String::new();
        for ch in perms.chars() {
            if !"rwm".contains(ch) || seen.contains(ch) {
                return Err(SpecError::new(
                    f("permissions"),
                    format!("{:?} is not a combination of r, w and m", dv.permissions),
                ));
            }
            seen.push(ch);
        }
        if !dv.host_path.starts_with('/') {
            return Err(SpecError::new(
                f("host_path"),
                format!("{:?} is not an absolute path", dv.host_path),
            ));
        }
        let ctr = if dv.container_path.is_empty() {
            dv.host_path.as_str()
        } else {
            dv.container_path.as_str()
        };
        let ctr = match clean(ctr) {
            Some(c) if c.starts_with("/dev/") => c,
            _ => {
                return Err(SpecError::new(
                    f("container_path"),
                    format!("{ctr:?} is not an absolute path under /dev"),
                ))
            }
        };
        let m = std::fs::metadata(&dv.host_path)
            .map_err(|e| SpecError::new(f("host_path"), format!("{:?}: {e}", dv.host_path)))?;
        let mut found = Vec::new();
        if m.is_dir() {
            walk_devices(Path::new(&dv.host_path), Path::new(""), &mut found, 0);
        } else if dev_of(&m).is_some() {
            found.push((PathBuf::new(), m));
        } else {
            return Err(SpecError::new(
                f("host_path"),
                format!("{:?} is not a device", dv.host_path),
            ));
        }
        for (rel, m) in found {
            let d = dev_of(&m).expect("a device");
            let path = if rel.as_os_str().is_empty() {
                ctr.clone()
            } else {
                format!("{ctr}/{}", rel.display())
            };
            add(&mut devices, device_json(&path, d));
            rules.push(rule_json(d, perms));
        }
    }
    Ok(Devs { devices, rules })
}
