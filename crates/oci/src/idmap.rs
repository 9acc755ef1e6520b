//! Idmapped bind mounts (`mounts[].uidMappings`/`gidMappings`, the `idmap`
//! and `ridmap` options).
//!
//! Marking a mount idmapped needs CAP_SYS_ADMIN over the filesystem's user
//! namespace (the host's), which the container's init no longer has once it
//! is inside its own user namespace. So the runtime makes the mounts in the
//! parent, before forking: a clone of the source tree (`open_tree`), marked
//! with `mount_setattr(MOUNT_ATTR_IDMAP)` and a user namespace that carries
//! the mount's mappings. The detached trees travel to the init as fds and
//! are attached there with `move_mount` onto targets resolved in the rootfs.
//!
//! Mappings are written to that namespace as given (`containerID hostID
//! size`): the kernel maps a file's on-disk id as a container id to the
//! host id, so with the same mappings as `linux.uidMappings` a file owned by
//! host uid 0 appears owned by the container's root.

use crate::error::{last_os, Error, Result};
use crate::fsutil;
use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Whether a mount asks for an idmapped mount, and if so recursively.
pub fn wanted(m: &Mount) -> Option<bool> {
    let opts = m.options().clone().unwrap_or_default();
    let ridmap = opts.iter().any(|o| o == "ridmap");
    let idmap = opts.iter().any(|o| o == "idmap");
    if ridmap || idmap || m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        Some(ridmap)
    } else {
        None
    }
}

/// uid and gid mappings.
type Maps = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

/// The mappings of mount `m`: its own, or (runtime-spec 1.2, `idmap` with
/// empty mappings) the container's user namespace mappings.
fn mappings(spec: &Spec, m: &Mount, field: &str) -> Result<Maps> {
    let linux = spec.linux().clone().unwrap_or_default();
    let pick = |own: &Option<Vec<LinuxIdMapping>>, ctr: &Option<Vec<LinuxIdMapping>>| match own {
        Some(v) if !v.is_empty() => v.clone(),
        _ => ctr.clone().unwrap_or_default(),
    };
    let u = pick(m.uid_mappings(), linux.uid_mappings());
    let g = pick(m.gid_mappings(), linux.gid_mappings());
    if u.is_empty() || g.is_empty() {
        return Err(Error::config(
            "config.json",
            format!("{field}.uidMappings"),
            "an idmapped mount needs uidMappings and gidMappings (its own or the container's)",
        ));
    }
    Ok((u, g))
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// A user namespace carrying the given mappings: a child unshares one, the
/// caller writes its maps and keeps an fd of it, the child is killed.
pub fn userns_fd(uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let holder = NsHolder::spawn(uid, gid, 0, None)?;
    fsutil::open_path(&holder.ns_path("user"), libc::O_RDONLY)
}

/// A child process holding a new user namespace with the given mappings
/// (written by the caller, as the kernel wants) and the namespaces of
/// `extra_flags` (net, ipc, uts, ...), which that user namespace owns. The
/// caller pins or opens what it needs from [`NsHolder::ns_path`]; dropping
/// the holder kills and reaps the child.
pub struct NsHolder {
    pid: libc::pid_t,
}

impl NsHolder {
    /// `hostname` is set in the new UTS namespace when `extra_flags` has
    /// CLONE_NEWUTS.
    pub fn spawn(
        uid: &[LinuxIdMapping],
        gid: &[LinuxIdMapping],
        extra_flags: libc::c_int,
        hostname: Option<&str>,
    ) -> Result<NsHolder> {
        // Prepared before fork: the child makes raw syscalls only.
        let host = hostname.map(|h| h.as_bytes().to_vec());
        let mut ready = [0; 2];
        // SAFETY: ready is a valid 2-int array.
        if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(last_os("pipe"));
        }
        // SAFETY: pipe2 returned two fresh fds.
        let (rd, wr) = unsafe {
            (
                OwnedFd::from_raw_fd(ready[0]),
                OwnedFd::from_raw_fd(ready[1]),
            )
        };
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only makes async-signal-safe calls, so forking
        // a multi-threaded caller (berthd) is fine too.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(last_os("fork"));
        }
        if pid == 0 {
            // SAFETY: raw syscalls only, then _exit / pause until killed.
            unsafe {
                // Never outlive a caller killed while it held us (the forking
                // thread stays until we are reaped, so this fires only then).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let mut ok = libc::unshare(libc::CLONE_NEWUSER | extra_flags) == 0;
                if ok && extra_flags & libc::CLONE_NEWUTS != 0 {
                    if let Some(h) = &host {
                        ok = libc::sethostname(h.as_ptr().cast(), h.len()) == 0;
                    }
                }
                let b = [u8::from(ok)];
                libc::write(wr.as_raw_fd(), b.as_ptr().cast(), 1);
                if !ok {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        drop(wr);
        let holder = NsHolder { pid };
        let mut b = [0u8; 1];
        // SAFETY: b is a valid 1-byte buffer.
        let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n != 1 || b[0] != 1 {
            return Err(Error::Other("creating a user namespace failed".into()));
        }
        let dir = format!("/proc/{pid}");
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            // Unprivileged writers must deny setgroups before gid_map.
            std::fs::write(format!("{dir}/setgroups"), "deny").map_err(|e| Error::Os {
                ctx: format!("writing {dir}/setgroups"),
                err: e,
            })?;
        }
        for (file, maps) in [("uid_map", uid), ("gid_map", gid)] {
            std::fs::write(format!("{dir}/{file}"), map_text(maps)).map_err(|e| Error::Os {
                ctx: format!("writing {dir}/{file}"),
                err: e,
            })?;
        }
        Ok(holder)
    }

    /// `/proc/<child>/ns/<name>`.
    pub fn ns_path(&self, name: &str) -> std::path::PathBuf {
        format!("/proc/{}/ns/{name}", self.pid).into()
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        // SAFETY: pid is our child; kill and reap it whatever happened.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            while libc::waitpid(self.pid, &mut st, 0) < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}

/// A detached clone of `src` (with its submounts for `rbind`) whose ids are
/// mapped through `userns` (on the submounts too for `ridmap`).
pub fn idmapped_tree(
    src: &std::path::Path,
    rbind: bool,
    ridmap: bool,
    userns: &OwnedFd,
) -> Result<OwnedFd> {
    let sfd = fsutil::open_path(src, libc::O_PATH)?;
    let clone_rec = if rbind { AT_RECURSIVE } else { 0 };
    let rec = if ridmap { AT_RECURSIVE } else { 0 };
    // SAFETY: sfd is open; empty path with AT_EMPTY_PATH.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            sfd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_EMPTY_PATH as u32 | clone_rec,
        )
    };
    if fd < 0 {
        return Err(last_os(format!("open_tree {}", src.display())));
    }
    // SAFETY: open_tree returned a fresh fd.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: attr is a valid mount_attr of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(last_os(format!(
            "mount_setattr(MOUNT_ATTR_IDMAP) on {} (does its filesystem support idmapped mounts?)",
            src.display()
        )));
    }
    Ok(tree)
}

/// Makes the detached idmapped trees for every mount that asks for one, as
/// (index in `mounts`, tree fd). User namespaces are shared between mounts
/// with the same mappings.
pub fn prepare(spec: &Spec) -> Result<Vec<(usize, OwnedFd)>> {
    let mut out = Vec::new();
    let mut ns: Vec<(Maps, OwnedFd)> = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let Some(ridmap) = wanted(m) else {
            continue;
        };
        let opts = m.options().clone().unwrap_or_default();
        let rbind = crate::mount_opts::parse(&opts).flags & libc::MS_REC != 0;
        let field = format!("mounts[{i}]");
        let ctx = |e: Error| Error::Other(format!("{field} ({}): {e}", m.destination().display()));
        let maps = mappings(spec, m, &field)?;
        let src = m.source().as_ref().ok_or_else(|| {
            Error::config(
                "config.json",
                format!("{field}.source"),
                "an idmapped mount needs a source",
            )
        })?;
        let pos = match ns.iter().position(|(k, _)| *k == maps) {
            Some(p) => p,
            None => {
                let fd = userns_fd(&maps.0, &maps.1).map_err(ctx)?;
                ns.push((maps, fd));
                ns.len() - 1
            }
        };
        let tree = idmapped_tree(src, rbind, ridmap, &ns[pos].1).map_err(ctx)?;
        out.push((i, tree));
    }
    Ok(out)
}

/// Attaches a detached tree onto `target` (an O_PATH fd in the rootfs).
pub fn attach(tree: i32, target: &OwnedFd) -> Result<()> {
    // SAFETY: both fds are open; empty paths with the EMPTY_PATH flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(last_os("move_mount of the idmapped mount"));
    }
    Ok(())
}
