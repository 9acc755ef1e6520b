//! `linux.memoryPolicy` (runtime-spec 1.3): the NUMA policy the container's
//! processes start with, set with set_mempolicy(2) by the init (and by each
//! exec'd process) while it prepares the process, before execve;
//! children and execve inherit it.
//!
//! Checked with the rest of the config, so a bad mode, flag or node list
//! fails `create` before anything exists; the kernel has the last word on
//! nodes that are not online (its EINVAL names the field too).

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxMemoryPolicy, MemoryPolicyFlagType, MemoryPolicyModeType};

// <linux/mempolicy.h>
const MPOL_DEFAULT: i32 = 0;
const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_LOCAL: i32 = 4;
const MPOL_PREFERRED_MANY: i32 = 5;
const MPOL_WEIGHTED_INTERLEAVE: i32 = 6;
const MPOL_F_NUMA_BALANCING: i32 = 1 << 13;
const MPOL_F_RELATIVE_NODES: i32 = 1 << 14;
const MPOL_F_STATIC_NODES: i32 = 1 << 15;

/// The kernel's largest node count (CONFIG_NODES_SHIFT is at most 10).
const MAX_NODES: usize = 1024;

/// The arguments of set_mempolicy(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Mode with its flags or'ed in.
    pub mode: i32,
    /// Node bitmask, 64 nodes a word; empty for no nodes.
    pub mask: Vec<u64>,
}

/// Parses a node list like "0-3,7" into a bitmask.
pub fn parse_nodes(s: &str) -> std::result::Result<Vec<u64>, String> {
    let mut mask = Vec::new();
    if s.trim().is_empty() {
        return Ok(mask);
    }
    for part in s.split(',') {
        let part = part.trim();
        let num = |t: &str| -> std::result::Result<usize, String> {
            let n: usize = t
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: {t:?} is not a node number"))?;
            if n >= MAX_NODES {
                return Err(format!("{s:?}: node {n} is beyond {MAX_NODES}"));
            }
            Ok(n)
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("{s:?}: range {part:?} runs backwards"));
        }
        for n in lo..=hi {
            if mask.len() <= n / 64 {
                mask.resize(n / 64 + 1, 0);
            }
            mask[n / 64] |= 1 << (n % 64);
        }
    }
    Ok(mask)
}

/// Validates the spec's policy into set_mempolicy arguments; errors name
/// `file` and the field.
pub fn compile(file: &str, p: &LinuxMemoryPolicy) -> Result<Policy> {
    let bad =
        |field: &str, msg: String| Error::config(file, format!("linux.memoryPolicy.{field}"), msg);
    let mode = match p.mode() {
        MemoryPolicyModeType::MpolDefault => MPOL_DEFAULT,
        MemoryPolicyModeType::MpolBind => MPOL_BIND,
        MemoryPolicyModeType::MpolInterleave => MPOL_INTERLEAVE,
        MemoryPolicyModeType::MpolWeightedInterleave => MPOL_WEIGHTED_INTERLEAVE,
        MemoryPolicyModeType::MpolPreferred => MPOL_PREFERRED,
        MemoryPolicyModeType::MpolPreferredMany => MPOL_PREFERRED_MANY,
        MemoryPolicyModeType::MpolLocal => MPOL_LOCAL,
    };
    let mask = parse_nodes(p.nodes().as_deref().unwrap_or("")).map_err(|e| bad("nodes", e))?;
    let has_nodes = mask.iter().any(|w| *w != 0);
    match mode {
        // The kernel refuses nodes for these.
        MPOL_DEFAULT | MPOL_LOCAL if has_nodes => {
            return Err(bad("nodes", format!("{} takes no nodes", p.mode())))
        }
        // An empty MPOL_PREFERRED means local allocation; the rest need nodes.
        MPOL_BIND | MPOL_INTERLEAVE | MPOL_WEIGHTED_INTERLEAVE | MPOL_PREFERRED_MANY
            if !has_nodes =>
        {
            return Err(bad(
                "nodes",
                format!("{} needs at least one node", p.mode()),
            ))
        }
        _ => {}
    }
    let mut flags = 0;
    for f in p.flags().iter().flatten() {
        flags |= match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => MPOL_F_NUMA_BALANCING,
            MemoryPolicyFlagType::MpolFRelativeNodes => MPOL_F_RELATIVE_NODES,
            MemoryPolicyFlagType::MpolFStaticNodes => MPOL_F_STATIC_NODES,
        };
    }
    if flags & MPOL_F_STATIC_NODES != 0 && flags & MPOL_F_RELATIVE_NODES != 0 {
        return Err(bad(
            "flags",
            "MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other".into(),
        ));
    }
    if flags != 0 && matches!(mode, MPOL_DEFAULT | MPOL_LOCAL) {
        return Err(bad("flags", format!("{} takes no flags", p.mode())));
    }
    if flags & MPOL_F_NUMA_BALANCING != 0 && mode != MPOL_BIND && mode != MPOL_PREFERRED_MANY {
        return Err(bad(
            "flags",
            "MPOL_F_NUMA_BALANCING goes with MPOL_BIND or MPOL_PREFERRED_MANY only".into(),
        ));
    }
    Ok(Policy {
        mode: mode | flags,
        mask,
    })
}

/// Sets the calling thread's policy (inherited across fork and execve).
pub fn apply(p: &Policy) -> Result<()> {
    let (ptr, maxnode) = if p.mask.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // maxnode counts bits; the kernel reads maxnode-1 of them.
        (p.mask.as_ptr(), p.mask.len() * 64 + 1)
    };
    // SAFETY: mask points to maxnode-1 readable bits (or is null with 0).
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, p.mode, ptr, maxnode) };
    if r != 0 {
        return Err(Error::Os {
            ctx: "linux.memoryPolicy: set_mempolicy".into(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy> {
        compile("config.json", &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn node_lists() {
        assert_eq!(parse_nodes("0").unwrap(), vec![1]);
        assert_eq!(parse_nodes("0-3,7").unwrap(), vec![0b1000_1111]);
        assert_eq!(parse_nodes("64").unwrap(), vec![0, 1]);
        assert!(parse_nodes("").unwrap().is_empty());
        for bad in ["x", "3-1", "1,,2", "-1", "5000", "0-"] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_and_flags() {
        let p = policy(r#"{"mode":"MPOL_INTERLEAVE","nodes":"0","flags":["MPOL_F_STATIC_NODES"]}"#)
            .unwrap();
        assert_eq!(
            p,
            Policy {
                mode: 3 | 1 << 15,
                mask: vec![1]
            }
        );
        assert_eq!(policy(r#"{"mode":"MPOL_LOCAL"}"#).unwrap().mode, 4);
        assert_eq!(
            policy(r#"{"mode":"MPOL_PREFERRED"}"#).unwrap().mask,
            Vec::<u64>::new()
        );
        let err = |j: &str| policy(j).unwrap_err().to_string();
        assert!(err(r#"{"mode":"MPOL_BIND"}"#).contains("linux.memoryPolicy.nodes"));
        assert!(err(r#"{"mode":"MPOL_DEFAULT","nodes":"0"}"#).contains("linux.memoryPolicy.nodes"));
        assert!(err(r#"{"mode":"MPOL_BIND","nodes":"0","flags":["MPOL_F_STATIC_NODES","MPOL_F_RELATIVE_NODES"]}"#)
            .contains("linux.memoryPolicy.flags"));
        assert!(
            err(r#"{"mode":"MPOL_INTERLEAVE","nodes":"0","flags":["MPOL_F_NUMA_BALANCING"]}"#)
                .contains("linux.memoryPolicy.flags")
        );
    }
}
