//! Pods with `hostUsers: false`: the kubelet's user namespace options,
//! checked, as berthd records them.

use crate::error::{invalid, Result};
use crate::model::PodUserNs;
use berth_cri_api::v1::{NamespaceMode, PodSandboxConfig};

pub const USERNS: &str = "config.linux.security_context.namespace_options.userns_options";

/// The pod's user namespace mappings, each (container id, host id, size):
/// None when the pod uses the node's user namespace (hostUsers: true).
pub fn userns_mappings(cfg: &PodSandboxConfig) -> Result<Option<PodUserNs>> {
    let o = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(u) = o.and_then(|o| o.userns_options.as_ref()) else {
        return Ok(None);
    };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => return Ok(None),
        Ok(NamespaceMode::Pod) => {}
        _ => {
            return Err(invalid(
                format!("{USERNS}.mode"),
                "only POD and NODE user namespaces are supported",
            ))
        }
    }
    let o = o.expect("userns_options came from namespace_options");
    for (name, mode) in [("network", o.network), ("pid", o.pid), ("ipc", o.ipc)] {
        if mode == NamespaceMode::Node as i32 {
            return Err(invalid(
                format!("config.linux.security_context.namespace_options.{name}"),
                "a pod in its own user namespace cannot share the node's namespaces",
            ));
        }
    }
    let maps =
        |list: &[berth_cri_api::v1::IdMapping], name: &str| -> Result<Vec<(u32, u32, u32)>> {
            if list.is_empty() {
                return Err(invalid(
                    format!("{USERNS}.{name}"),
                    "a POD user namespace needs mappings",
                ));
            }
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let f = format!("{USERNS}.{name}[{i}]");
                if m.length == 0 {
                    return Err(invalid(format!("{f}.length"), "must be greater than 0"));
                }
                if m.container_id.checked_add(m.length - 1).is_none()
                    || m.host_id.checked_add(m.length - 1).is_none()
                {
                    return Err(invalid(f, "the range overflows 32 bits"));
                }
                if m.host_id == 0 {
                    return Err(invalid(
                        format!("{f}.host_id"),
                        "must not map the node's root into the pod",
                    ));
                }
                out.push((m.container_id, m.host_id, m.length));
            }
            // The kernel takes at most 340 lines and no overlapping ranges.
            if out.len() > 340 {
                return Err(invalid(format!("{USERNS}.{name}"), "at most 340 mappings"));
            }
            for (i, a) in out.iter().enumerate() {
                for b in &out[..i] {
                    let overlap = |x: u32, y: u32| {
                        let (x, y) = (u64::from(x), u64::from(y));
                        x < y + u64::from(b.2) && y < x + u64::from(a.2)
                    };
                    if overlap(a.0, b.0) || overlap(a.1, b.1) {
                        return Err(invalid(
                            format!("{USERNS}.{name}[{i}]"),
                            "overlaps an earlier mapping",
                        ));
                    }
                }
            }
            if !out.iter().any(|&(c, _, _)| c == 0) {
                return Err(invalid(
                    format!("{USERNS}.{name}"),
                    "must map the container's root (container_id 0)",
                ));
            }
            Ok(out)
        };
    Ok(Some(PodUserNs {
        path: Default::default(),
        uid_map: maps(&u.uids, "uids")?,
        gid_map: maps(&u.gids, "gids")?,
    }))
}

/// As the OCI runtime library takes them.
pub fn oci_mappings(m: &[(u32, u32, u32)]) -> Vec<oci_spec::runtime::LinuxIdMapping> {
    m.iter()
        .map(|&(c, h, s)| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(c)
                .host_id(h)
                .size(s)
                .build()
                .expect("all fields set")
        })
        .collect()
}
