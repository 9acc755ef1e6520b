//! Pod sysctls. The kubelet is the policy point (its safe set and
//! `--allowed-unsafe-sysctls`); berthd applies every sysctl that lives in a
//! namespace the pod owns and refuses only what would change the node, as
//! containerd and CRI-O do. An operator may deny more (`denied_sysctls`).

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNs {
    Net,
    Ipc,
}

/// Which of the pod's namespaces are its own (not the node's).
#[derive(Debug, Clone, Copy)]
pub struct OwnNamespaces {
    pub net: bool,
    pub ipc: bool,
}

/// Checks one sysctl: a well-formed name (no way out of /proc/sys), a single
/// plain value (no second assignment smuggled in), a namespace the pod owns,
/// and not denied by the node's config. The error says why.
pub fn check(key: &str, value: &str, own: OwnNamespaces, denied: &[String]) -> Result<(), String> {
    let name_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !key.starts_with(['.', '/'])
        && !key.ends_with(['.', '/'])
        && !key.contains("..")
        && !key.contains("//")
        && !key.contains("./")
        && !key.contains("/.");
    if !name_ok {
        return Err(format!("{key:?} is not a sysctl name"));
    }
    if value.contains(['\n', '\r', '\0', '=']) {
        return Err(format!("value {value:?} must be a single plain value"));
    }
    let norm = key.replace('/', ".");
    match namespace_of(&norm)? {
        SysctlNs::Net if !own.net => {
            return Err("net.* sysctls need the pod's own network namespace".into())
        }
        SysctlNs::Ipc if !own.ipc => {
            return Err("IPC sysctls need the pod's own IPC namespace".into())
        }
        _ => {}
    }
    if denied.iter().any(|d| matches(d, &norm)) {
        return Err("denied by the node's [runtime] denied_sysctls".into());
    }
    Ok(())
}

/// The namespace of a sysctl (dotted form), or why it cannot be set for a
/// pod: it is not namespaced (it would change the node), or it is the UTS
/// hostname, which the pod's hostname field owns (runc refuses it too).
pub fn namespace_of(key: &str) -> Result<SysctlNs, String> {
    if key.starts_with("net.") {
        return Ok(SysctlNs::Net);
    }
    if key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key == "kernel.sem_next_id"
        || key.starts_with("fs.mqueue.")
    {
        return Ok(SysctlNs::Ipc);
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return Err(format!(
            "{key} conflicts with the pod's hostname; set config.hostname instead"
        ));
    }
    Err(format!(
        "{key} is not a namespaced sysctl: it would change the node"
    ))
}

/// A deny-list entry: a name, or a prefix ending in `*` ("net.core.*").
fn matches(entry: &str, key: &str) -> bool {
    let entry = entry.replace('/', ".");
    match entry.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => entry == key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: OwnNamespaces = OwnNamespaces {
        net: true,
        ipc: true,
    };

    #[test]
    fn every_namespaced_sysctl_is_applied() {
        for k in [
            "net.ipv4.ip_forward",
            "net/ipv4/ip_forward",
            "net.core.somaxconn",
            "kernel.shmmax",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            assert_eq!(check(k, "1", OWN, &[]), Ok(()), "{k}");
        }
    }

    #[test]
    fn node_wide_and_hostname_sysctls_are_refused() {
        for k in ["kernel.panic", "vm.overcommit_memory", "fs.file-max"] {
            let e = check(k, "1", OWN, &[]).unwrap_err();
            assert!(e.contains("would change the node"), "{k}: {e}");
        }
        for k in ["kernel.hostname", "kernel.domainname"] {
            let e = check(k, "x", OWN, &[]).unwrap_err();
            assert!(e.contains("config.hostname"), "{k}: {e}");
        }
    }

    #[test]
    fn a_node_namespace_takes_no_sysctl() {
        let host_net = OwnNamespaces {
            net: false,
            ipc: true,
        };
        assert!(check("net.core.somaxconn", "1", host_net, &[]).is_err());
        assert!(check("kernel.shmmax", "1", host_net, &[]).is_ok());
        let host_ipc = OwnNamespaces {
            net: true,
            ipc: false,
        };
        assert!(check("kernel.msgmax", "1", host_ipc, &[]).is_err());
        assert!(check("fs.mqueue.msg_max", "1", host_ipc, &[]).is_err());
    }

    #[test]
    fn names_and_values_cannot_inject() {
        for (k, v) in [
            ("net.ipv4.ip_forward", "1\nkernel.panic=1"),
            ("net.ipv4.ip_forward", "1=kernel.panic"),
            ("net/../../kernel/panic", "1"),
            ("net./ipv4", "1"),
            ("", "1"),
            ("net.ipv4 x", "1"),
        ] {
            assert!(check(k, v, OWN, &[]).is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn the_operator_can_deny_more() {
        let denied = vec!["net.core.*".to_string(), "kernel.msgmax".to_string()];
        assert!(check("net.core.somaxconn", "1", OWN, &denied)
            .unwrap_err()
            .contains("denied_sysctls"));
        assert!(check("kernel.msgmax", "1", OWN, &denied).is_err());
        assert!(check("kernel.msgmnb", "1", OWN, &denied).is_ok());
        assert!(check("net.ipv4.tcp_syncookies", "1", OWN, &denied).is_ok());
    }
}
