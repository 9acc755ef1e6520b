//! Mount option strings (as in fstab and the runtime spec) to mount(2) flags.

/// What one option string means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    /// Set these flags.
    Set(libc::c_ulong),
    /// Clear these flags.
    Clear(libc::c_ulong),
    /// A propagation change applied after the mount.
    Propagation(libc::c_ulong),
    /// Recursive mount attribute (mount_setattr), e.g. `rro`.
    RecAttrSet(u64),
    RecAttrClear(u64),
    /// Recursive access-time mode (one of the `MOUNT_ATTR_*ATIME` values).
    RecAtime(u64),
    /// Options that mean nothing to the kernel (idmap markers handled elsewhere).
    Ignore,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// The access-time field: its values are an enumeration, not bits, so
/// mount_setattr wants all of it in attr_clr whenever one is set.
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
/// Not in every libc crate release (Linux 5.10).
pub const MS_NOSYMFOLLOW: libc::c_ulong = 256;

/// Parses a single option; `None` means "pass it as filesystem data".
pub fn parse_one(o: &str) -> Option<Opt> {
    use libc::*;
    let v = match o {
        "defaults" => Opt::Set(0),
        "ro" => Opt::Set(MS_RDONLY),
        "rw" => Opt::Clear(MS_RDONLY),
        "suid" => Opt::Clear(MS_NOSUID),
        "nosuid" => Opt::Set(MS_NOSUID),
        "dev" => Opt::Clear(MS_NODEV),
        "nodev" => Opt::Set(MS_NODEV),
        "exec" => Opt::Clear(MS_NOEXEC),
        "noexec" => Opt::Set(MS_NOEXEC),
        "sync" => Opt::Set(MS_SYNCHRONOUS),
        "async" => Opt::Clear(MS_SYNCHRONOUS),
        "dirsync" => Opt::Set(MS_DIRSYNC),
        "remount" => Opt::Set(MS_REMOUNT),
        "mand" => Opt::Set(MS_MANDLOCK),
        "nomand" => Opt::Clear(MS_MANDLOCK),
        "atime" => Opt::Clear(MS_NOATIME),
        "noatime" => Opt::Set(MS_NOATIME),
        "diratime" => Opt::Clear(MS_NODIRATIME),
        "nodiratime" => Opt::Set(MS_NODIRATIME),
        "bind" => Opt::Set(MS_BIND),
        "rbind" => Opt::Set(MS_BIND | MS_REC),
        "relatime" => Opt::Set(MS_RELATIME),
        "norelatime" => Opt::Clear(MS_RELATIME),
        "strictatime" => Opt::Set(MS_STRICTATIME),
        "nostrictatime" => Opt::Clear(MS_STRICTATIME),
        "nosymfollow" => Opt::Set(MS_NOSYMFOLLOW),
        "symfollow" => Opt::Clear(MS_NOSYMFOLLOW),
        "silent" => Opt::Set(MS_SILENT),
        "loud" => Opt::Clear(MS_SILENT),
        "private" => Opt::Propagation(MS_PRIVATE),
        "rprivate" => Opt::Propagation(MS_PRIVATE | MS_REC),
        "shared" => Opt::Propagation(MS_SHARED),
        "rshared" => Opt::Propagation(MS_SHARED | MS_REC),
        "slave" => Opt::Propagation(MS_SLAVE),
        "rslave" => Opt::Propagation(MS_SLAVE | MS_REC),
        "unbindable" => Opt::Propagation(MS_UNBINDABLE),
        "runbindable" => Opt::Propagation(MS_UNBINDABLE | MS_REC),
        "rro" => Opt::RecAttrSet(MOUNT_ATTR_RDONLY),
        "rrw" => Opt::RecAttrClear(MOUNT_ATTR_RDONLY),
        "rnosuid" => Opt::RecAttrSet(MOUNT_ATTR_NOSUID),
        "rsuid" => Opt::RecAttrClear(MOUNT_ATTR_NOSUID),
        "rnodev" => Opt::RecAttrSet(MOUNT_ATTR_NODEV),
        "rdev" => Opt::RecAttrClear(MOUNT_ATTR_NODEV),
        "rnoexec" => Opt::RecAttrSet(MOUNT_ATTR_NOEXEC),
        "rexec" => Opt::RecAttrClear(MOUNT_ATTR_NOEXEC),
        // Without noatime (or relatime) the kernel's default is relatime,
        // as for a fresh mount.
        "rnoatime" => Opt::RecAtime(MOUNT_ATTR_NOATIME),
        "ratime" | "rrelatime" | "rnostrictatime" => Opt::RecAtime(MOUNT_ATTR_RELATIME),
        "rstrictatime" | "rnorelatime" => Opt::RecAtime(MOUNT_ATTR_STRICTATIME),
        "rnodiratime" => Opt::RecAttrSet(MOUNT_ATTR_NODIRATIME),
        "rdiratime" => Opt::RecAttrClear(MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => Opt::RecAttrSet(MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => Opt::RecAttrClear(MOUNT_ATTR_NOSYMFOLLOW),
        // Handled by rootfs (tmpcopyup) and idmap.rs.
        "idmap" | "ridmap" | "tmpcopyup" => Opt::Ignore,
        _ => return None,
    };
    Some(v)
}

/// All options of one mount, folded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub flags: libc::c_ulong,
    pub propagation: Vec<libc::c_ulong>,
    pub attr_set: u64,
    pub attr_clr: u64,
    pub data: Vec<String>,
}

pub fn parse(opts: &[String]) -> Parsed {
    let mut p = Parsed::default();
    let mut atime = None;
    for o in opts {
        match parse_one(o) {
            Some(Opt::Set(f)) => p.flags |= f,
            Some(Opt::Clear(f)) => p.flags &= !f,
            Some(Opt::Propagation(f)) => p.propagation.push(f),
            Some(Opt::RecAttrSet(a)) => {
                p.attr_set |= a;
                p.attr_clr &= !a;
            }
            Some(Opt::RecAttrClear(a)) => {
                p.attr_clr |= a;
                p.attr_set &= !a;
            }
            Some(Opt::RecAtime(a)) => atime = Some(a),
            Some(Opt::Ignore) => {}
            None => p.data.push(o.clone()),
        }
    }
    if let Some(a) = atime {
        // The whole field is cleared and one value set (relatime is 0).
        p.attr_clr |= MOUNT_ATTR__ATIME;
        p.attr_set = (p.attr_set & !MOUNT_ATTR__ATIME) | a;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_flags_and_data() {
        let o: Vec<String> = ["nosuid", "noexec", "ro", "rw", "mode=755", "rslave", "rro"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse(&o);
        assert_eq!(p.flags, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(p.data, vec!["mode=755".to_string()]);
        assert_eq!(p.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert_eq!(p.attr_set, MOUNT_ATTR_RDONLY);
    }

    #[test]
    fn atime_modes_clear_the_whole_field() {
        let p = |o: &[&str]| parse(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let q = p(&["rro", "rnoatime"]);
        assert_eq!(q.attr_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME);
        assert_eq!(q.attr_clr, MOUNT_ATTR__ATIME);
        // The last one wins; relatime is the value 0 but still clears.
        let q = p(&["rstrictatime", "ratime"]);
        assert_eq!((q.attr_set, q.attr_clr), (0, MOUNT_ATTR__ATIME));
        let q = p(&["rnoatime", "rnorelatime"]);
        assert_eq!(
            (q.attr_set, q.attr_clr),
            (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME)
        );
        // Other attributes never touch the atime field.
        let q = p(&["rnodiratime", "rnosuid"]);
        assert_eq!(q.attr_clr & MOUNT_ATTR__ATIME, 0);
    }
}
