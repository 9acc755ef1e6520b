//! Capabilities by name, and the five sets applied with capset/prctl.

use crate::error::{last_os, Result};

pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability number of a name ("CAP_CHOWN" or "chown").
pub fn from_name(name: &str) -> Option<u32> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// A set of capabilities as a 64-bit mask.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mask(pub u64);

impl Mask {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Mask {
        let mut m = 0u64;
        for n in names {
            if let Some(c) = from_name(n) {
                m |= 1 << c;
            }
        }
        Mask(m)
    }
    pub fn has(&self, c: u32) -> bool {
        self.0 & (1 << c) != 0
    }
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The five sets of a process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sets {
    pub bounding: Mask,
    pub effective: Mask,
    pub permitted: Mask,
    pub inheritable: Mask,
    pub ambient: Mask,
}

/// Drops every capability not in `bounding` from the bounding set. Needs
/// CAP_SETPCAP, so it runs before the user switch.
pub fn drop_bounding(bounding: Mask) -> Result<()> {
    for c in 0..=last_cap() {
        if !bounding.has(c) {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(last_os(format!(
                        "dropping {} from the bounding set",
                        NAMES[c as usize]
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then raises the ambient set.
pub fn apply(sets: &Sets) -> Result<()> {
    let lc = last_cap();
    let limit = if lc >= 63 {
        u64::MAX
    } else {
        (1u64 << (lc + 1)) - 1
    };
    let e = sets.effective.0 & limit;
    let p = sets.permitted.0 & limit;
    let i = sets.inheritable.0 & limit;
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        Data {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: hdr and data have the layout capset(2) expects.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) } != 0 {
        return Err(last_os("capset"));
    }
    // The kernel only allows ambient capabilities that are permitted and
    // inheritable; others are skipped, as runc does with its own default spec.
    let ambient = Mask(sets.ambient.0 & p & i);
    for c in 0..=lc {
        if ambient.has(c) {
            // SAFETY: prctl with integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    c as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(last_os(format!("raising ambient {}", NAMES[c as usize])));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_round_trip() {
        assert_eq!(from_name("CAP_CHOWN"), Some(0));
        assert_eq!(from_name("net_raw"), Some(13));
        assert_eq!(from_name("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(from_name("CAP_BOGUS"), None);
    }
}
