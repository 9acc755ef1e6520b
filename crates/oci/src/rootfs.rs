//! The container's filesystem view: mounts, devices, pivot_root, and the
//! masked and read-only paths. Runs in the container's mount namespace.

use crate::error::{last_os, Error, Result};
use crate::fsutil::{
    self, cstr, fd_path, Kind, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS,
};
use crate::mount_opts;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let s = src.map(cstr).transpose()?;
    let t = cstr(target)?;
    let ty = fstype.map(|f| CString::new(f).unwrap_or_default());
    let d = data.map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: all pointers are valid C strings or null.
    let r = unsafe {
        libc::mount(
            s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            t.as_ptr(),
            ty.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            d.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()),
        )
    };
    if r != 0 {
        return Err(last_os(format!(
            "mount {} on {} (type {}, flags {:#x}, data {:?})",
            src.map(|p| p.display().to_string()).unwrap_or_default(),
            target.display(),
            fstype.unwrap_or(""),
            flags,
            data.unwrap_or("")
        )));
    }
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on the mount at `fd`, recursively.
fn setattr_recursive(fd: &OwnedFd, set: u64, clr: u64) -> Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    const AT_RECURSIVE: u32 = 0x8000;
    // SAFETY: attr is a valid mount_attr of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as u32) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(last_os(format!(
            "mount_setattr of the recursive options (attr_set {set:#x}, attr_clr {clr:#x})"
        )));
    }
    Ok(())
}

/// Flags of an existing mount that a bind remount must keep (the kernel
/// refuses to clear locked flags inside a user namespace).
fn locked_flags(fd: &OwnedFd) -> libc::c_ulong {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and st a valid out-pointer.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

fn at_err(what: &str, path: &Path) -> Error {
    last_os(format!("{what} {}", path.display()))
}

/// Copies the tree below directory `src` into directory `dst` (for
/// `tmpcopyup`): files, directories, symlinks (as links, never followed),
/// fifos and device nodes, with mode, owner and times. Everything goes
/// through *at calls on directory fds with O_NOFOLLOW, so nothing planted
/// in the image leads outside either tree. Ownership a user namespace
/// cannot map is left to the copier. `what` names entries in errors.
fn copy_tree(src: &OwnedFd, dst: &OwnedFd, what: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let entries = std::fs::read_dir(fd_path(src)).map_err(|e| Error::Os {
        ctx: format!("listing {}", what.display()),
        err: e,
    })?;
    for e in entries {
        let e = e.map_err(|e| Error::Os {
            ctx: format!("listing {}", what.display()),
            err: e,
        })?;
        let name = e.file_name();
        let path = what.join(&name);
        let c = CString::new(name.as_bytes()).map_err(|_| at_err("name of", &path))?;
        let (s, d, n) = (src.as_raw_fd(), dst.as_raw_fd(), c.as_ptr());
        let nofollow = libc::AT_SYMLINK_NOFOLLOW;
        // SAFETY: st is a valid out-pointer; s, d are open directory fds and
        // n a C string; every fd opened here is owned right away.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstatat(s, n, &mut st, nofollow) != 0 {
                return Err(at_err("stat of", &path));
            }
            let mode = st.st_mode & 0o7777;
            let open = |fd: i32, flags: i32, m: u32| -> Result<OwnedFd> {
                let r = libc::openat(fd, n, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, m);
                if r < 0 {
                    return Err(at_err("opening", &path));
                }
                Ok(std::os::fd::FromRawFd::from_raw_fd(r))
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    if libc::mkdirat(d, n, 0o700) != 0 {
                        return Err(at_err("creating", &path));
                    }
                    let flags = libc::O_DIRECTORY | libc::O_RDONLY;
                    let (sub_s, sub_d) = (open(s, flags, 0)?, open(d, flags, 0)?);
                    copy_tree(&sub_s, &sub_d, &path)?;
                }
                libc::S_IFREG => {
                    let from = open(s, libc::O_RDONLY, 0)?;
                    let to = open(d, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?;
                    let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
                    std::io::copy(&mut from, &mut to).map_err(|e| Error::Os {
                        ctx: format!("copying {}", path.display()),
                        err: e,
                    })?;
                }
                libc::S_IFLNK => {
                    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
                    let len = libc::readlinkat(s, n, buf.as_mut_ptr().cast(), buf.len() - 1);
                    if len < 0 {
                        return Err(at_err("reading link", &path));
                    }
                    buf.truncate(len as usize);
                    let target = CString::new(buf).map_err(|_| at_err("link", &path))?;
                    if libc::symlinkat(target.as_ptr(), d, n) != 0 {
                        return Err(at_err("creating link", &path));
                    }
                }
                libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
                    if libc::mknodat(d, n, st.st_mode, st.st_rdev) != 0 {
                        return Err(at_err("creating node", &path));
                    }
                }
                // Sockets belong to whoever listened on them.
                _ => continue,
            }
            // Owner before mode: chown clears set-id bits. An owner this
            // namespace cannot map (EINVAL, EPERM) stays the copier's.
            if libc::fchownat(d, n, st.st_uid, st.st_gid, nofollow) != 0 {
                let err = std::io::Error::last_os_error().raw_os_error();
                if !matches!(err, Some(libc::EINVAL | libc::EPERM | libc::EOVERFLOW)) {
                    return Err(at_err("changing the owner of", &path));
                }
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK && libc::fchmodat(d, n, mode, 0) != 0 {
                return Err(at_err("changing the mode of", &path));
            }
            let times = [
                libc::timespec {
                    tv_sec: st.st_atime,
                    tv_nsec: st.st_atime_nsec,
                },
                libc::timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec,
                },
            ];
            if libc::utimensat(d, n, times.as_ptr(), nofollow) != 0 {
                return Err(at_err("setting the times of", &path));
            }
        }
    }
    Ok(())
}

pub struct Rootfs<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// Inside a new user namespace device nodes cannot be made: bind them.
    pub in_userns: bool,
    /// The container has its own cgroup namespace: fresh cgroup mounts then
    /// show only the container's subtree.
    pub cgroup_ns: bool,
    /// The container's cgroup, relative to each hierarchy's root.
    pub cgroup_rel: Option<PathBuf>,
    /// Detached idmapped trees made by the runtime (see idmap.rs), as
    /// (index in mounts, fd).
    pub idmapped: &'a [(usize, std::os::fd::RawFd)],
}

impl Rootfs<'_> {
    /// Everything before pivot_root: propagation, the rootfs bind, the spec's
    /// mounts and /dev. Returns an O_PATH fd of the new root.
    pub fn prepare(&self) -> Result<OwnedFd> {
        let linux = self.spec.linux().clone().unwrap_or_default();
        let prop = match linux.rootfs_propagation().as_deref() {
            // Shared: host mounts stay peers, so mounts made under a shared
            // bind reach the host (Kubernetes' Bidirectional propagation).
            Some("shared") | Some("rshared") => 0,
            None | Some("") => libc::MS_SLAVE | libc::MS_REC,
            Some(p) => mount_opts::parse_one(p)
                .and_then(|o| match o {
                    mount_opts::Opt::Propagation(f) => Some(f),
                    _ => None,
                })
                .unwrap_or(libc::MS_SLAVE | libc::MS_REC),
        };
        // Unbindable: the rootfs could not be bound onto itself below an
        // unbindable `/` (EINVAL, runc 1.1's failure): rslave now, and
        // unbindable on the new root at the end (root_unbindable).
        let prop = if prop & libc::MS_UNBINDABLE != 0 {
            libc::MS_SLAVE | libc::MS_REC
        } else {
            prop
        };
        if prop != 0 {
            mount(None, Path::new("/"), None, prop, None)?;
        } else {
            // But the rootfs bind and what is mounted on it must not
            // propagate to the host, and pivot_root refuses shared parents:
            // make the mount holding the rootfs, and /, private.
            let parent = containing_mount(self.rootfs)?;
            mount(None, &parent, None, libc::MS_PRIVATE, None)?;
            mount(None, Path::new("/"), None, libc::MS_PRIVATE, None)?;
        }
        // The rootfs must be a mount point for pivot_root.
        mount(
            Some(self.rootfs),
            self.rootfs,
            Some("bind"),
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        let mut root = fsutil::open_path(self.rootfs, libc::O_PATH | libc::O_DIRECTORY)?;
        // The spec has no idmap field for `root`: an idmapped bind on "/"
        // (of the rootfs, with `idmap`/`ridmap`) becomes the root itself,
        // under every other mount, so a root-owned rootfs shows as the
        // container root's without a chown.
        let idmapped_root = self.spec.mounts().iter().flatten().position(|m| {
            m.destination() == Path::new("/") && is_bind(m) && crate::idmap::wanted(m).is_some()
        });
        if let Some(i) = idmapped_root {
            let tree = self
                .idmapped
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, fd)| *fd)
                .ok_or_else(|| {
                    Error::Other(format!("mounts[{i}] (/): idmapped mount was not prepared"))
                })?;
            crate::idmap::attach(tree, &root)
                .map_err(|e| Error::Other(format!("mounts[{i}] (/): {e}")))?;
            root = fsutil::open_path(self.rootfs, libc::O_PATH | libc::O_DIRECTORY)?;
        }
        let mut dev_is_tmpfs = false;
        for (i, m) in self.spec.mounts().iter().flatten().enumerate() {
            if Some(i) == idmapped_root {
                continue;
            }
            let tree = self
                .idmapped
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, fd)| *fd);
            self.mount_one(&root, m, tree).map_err(|e| {
                Error::Other(format!("mounts[{i}] ({}): {e}", m.destination().display()))
            })?;
            if m.destination() == Path::new("/dev") && !is_bind(m) {
                dev_is_tmpfs = true;
            }
        }
        if dev_is_tmpfs {
            self.default_devices(&root)?;
        }
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            self.make_device(&root, d).map_err(|e| {
                Error::Other(format!("linux.devices[{i}] ({}): {e}", d.path().display()))
            })?;
        }
        if dev_is_tmpfs {
            self.dev_symlinks(&root)?;
        }
        Ok(root)
    }

    fn mount_one(
        &self,
        root: &OwnedFd,
        m: &Mount,
        idmapped: Option<std::os::fd::RawFd>,
    ) -> Result<()> {
        let opts = m.options().clone().unwrap_or_default();
        let p = mount_opts::parse(&opts);
        let typ = m.typ().as_deref().unwrap_or("");
        let bind = is_bind(m);
        if crate::idmap::wanted(m).is_some() && idmapped.is_none() {
            return Err(Error::Other("idmapped mount was not prepared".into()));
        }
        let src_is_file = bind
            && m.source()
                .as_ref()
                .and_then(|s| std::fs::metadata(s).ok())
                .is_some_and(|md| !md.is_dir());
        // procfs and sysfs must never land on a symlink: writes meant for
        // them could be redirected.
        let extra = if matches!(typ, "proc" | "sysfs") {
            RESOLVE_NO_SYMLINKS
        } else {
            0
        };
        let kind = if src_is_file { Kind::File } else { Kind::Dir };
        // runc's wording, which callers and tests match on.
        let not_ordinary = || {
            Error::Other(format!(
                "filesystem {typ:?} must be mounted on ordinary directory"
            ))
        };
        let target = match fsutil::resolve_create(root, m.destination(), kind, extra) {
            Err(Error::Os { err, .. }) if extra != 0 && err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(not_ordinary())
            }
            r => r?,
        };
        if matches!(typ, "proc" | "sysfs") {
            // Only on a real directory.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: target is open and st a valid out-pointer.
            unsafe { libc::fstat(target.as_raw_fd(), &mut st) };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(not_ordinary());
            }
        }
        if typ == "cgroup" {
            return self.mount_cgroup(root, m, &p);
        }
        let tpath = fd_path(&target);
        let data = if p.data.is_empty() {
            None
        } else {
            Some(p.data.join(","))
        };
        if bind {
            if let Some(tree) = idmapped {
                crate::idmap::attach(tree, &target)?;
            } else {
                let src = m.source().as_ref().expect("validated");
                let sfd = fsutil::open_path(src, libc::O_PATH)?;
                let rec = p.flags & libc::MS_REC;
                mount(
                    Some(&fd_path(&sfd)),
                    &tpath,
                    None,
                    libc::MS_BIND | rec,
                    None,
                )?;
            }
            let want = p.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
            if want != 0 {
                // Re-resolve: the fd still points below the new mount.
                let top = fsutil::resolve_create(root, m.destination(), kind, 0)?;
                let keep = locked_flags(&top);
                mount(
                    None,
                    &fd_path(&top),
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | want | keep,
                    None,
                )?;
            }
        } else if p.flags & libc::MS_REMOUNT != 0 {
            mount(None, &tpath, None, p.flags, data.as_deref())?;
        } else {
            let src = m
                .source()
                .as_ref()
                .map(|s| s.as_path())
                .unwrap_or(Path::new(typ));
            // tmpcopyup: the image's content at the destination, reached
            // through an fd opened before the tmpfs covers it, is copied in
            // (into a writable mount; read-only comes after the copy).
            let copyup = typ == "tmpfs" && opts.iter().any(|o| o == "tmpcopyup");
            let under = if copyup {
                Some(fsutil::reopen_dir(&target, m.destination())?)
            } else {
                None
            };
            let flags = if copyup {
                p.flags & !libc::MS_RDONLY
            } else {
                p.flags
            };
            let r = mount(Some(src), &tpath, Some(typ), flags, data.as_deref());
            if let (Ok(()), Some(under)) = (&r, under) {
                let top = fsutil::resolve_create(root, m.destination(), kind, 0)?;
                let dst = fsutil::reopen_dir(&top, m.destination())?;
                copy_tree(&under, &dst, m.destination())?;
                if p.flags & libc::MS_RDONLY != 0 {
                    let keep = locked_flags(&top);
                    mount(
                        None,
                        &fd_path(&top),
                        None,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                        None,
                    )?;
                }
            }
            if let Err(e) = r {
                // sysfs cannot be mounted in a user namespace without its own
                // net namespace; runc falls back to a bind of the host's.
                if typ == "sysfs" && self.in_userns {
                    mount(
                        Some(Path::new("/sys")),
                        &tpath,
                        None,
                        libc::MS_BIND | libc::MS_REC,
                        None,
                    )?;
                } else if typ == "mqueue" || typ == "cgroup" || typ == "cgroup2" {
                    // Fall back to a bind of the host's when a fresh one is refused.
                    let host = if typ == "mqueue" {
                        "/dev/mqueue"
                    } else {
                        crate::CGROUP_ROOT
                    };
                    if Path::new(host).exists() {
                        mount(
                            Some(Path::new(host)),
                            &tpath,
                            None,
                            libc::MS_BIND | libc::MS_REC,
                            None,
                        )?;
                        let top = fsutil::resolve_create(root, m.destination(), kind, 0)?;
                        let keep = locked_flags(&top);
                        mount(
                            None,
                            &fd_path(&top),
                            None,
                            libc::MS_BIND | libc::MS_REMOUNT | p.flags | keep,
                            None,
                        )?;
                    } else {
                        return Err(e);
                    }
                } else {
                    return Err(e);
                }
            }
        }
        if p.attr_set != 0 || p.attr_clr != 0 || !p.propagation.is_empty() {
            let top = fsutil::resolve_create(root, m.destination(), kind, 0)?;
            if p.attr_set != 0 || p.attr_clr != 0 {
                setattr_recursive(&top, p.attr_set, p.attr_clr)?;
            }
            for f in &p.propagation {
                mount(None, &fd_path(&top), None, *f, None)?;
            }
        }
        Ok(())
    }

    /// A `cgroup` mount shows the container its own cgroups, never the host's
    /// tree: on v2 a cgroup2 mount; on v1 a tmpfs with one mount per host
    /// hierarchy. Inside a cgroup namespace those are fresh mounts rooted at
    /// the container's cgroup; without one, binds of the container's cgroup
    /// directories. Read-only is applied per mount (a bind remount), never to
    /// the shared superblock, which would make the host's hierarchy read-only.
    fn mount_cgroup(&self, root: &OwnedFd, m: &Mount, p: &mount_opts::Parsed) -> Result<()> {
        let dest = m.destination();
        let ro = p.flags & libc::MS_RDONLY != 0;
        let flags = p.flags & !(libc::MS_RDONLY | libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        let rel = self.cgroup_rel.clone().unwrap_or_default();
        let host_root = Path::new(crate::CGROUP_ROOT);
        let mode = berth_cgroups::detect_mode(host_root);
        let mut made: Vec<PathBuf> = Vec::new();
        let mut one = |sub: &Path, fstype: &str, opts: &str| -> Result<()> {
            let d = if sub.as_os_str().is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(sub)
            };
            let t = fsutil::resolve_create(root, &d, Kind::Dir, RESOLVE_NO_SYMLINKS)?;
            if self.cgroup_ns {
                let data = if opts.is_empty() { None } else { Some(opts) };
                mount(
                    Some(Path::new(fstype)),
                    &fd_path(&t),
                    Some(fstype),
                    flags,
                    data,
                )?;
            } else {
                let src = host_root.join(sub).join(&rel);
                if !src.is_dir() {
                    // Hierarchies berth does not place containers in (the bare
                    // unified one on a hybrid host) stay empty.
                    return Ok(());
                }
                let s = fsutil::open_path(&src, libc::O_PATH | libc::O_DIRECTORY)?;
                mount(Some(&fd_path(&s)), &fd_path(&t), None, libc::MS_BIND, None)?;
            }
            made.push(d);
            Ok(())
        };
        if mode == berth_cgroups::Mode::Unified {
            one(Path::new(""), "cgroup2", "")?;
        } else {
            let t = fsutil::resolve_create(root, dest, Kind::Dir, RESOLVE_NO_SYMLINKS)?;
            mount(
                Some(Path::new("tmpfs")),
                &fd_path(&t),
                Some("tmpfs"),
                flags,
                Some("mode=755"),
            )?;
            for (name, fstype, opts) in host_hierarchies() {
                one(Path::new(&name), &fstype, &opts)?;
            }
            // Combined hierarchies are reached through symlinks (cpu -> cpu,cpuacct).
            if let Ok(rd) = std::fs::read_dir(host_root) {
                for e in rd.flatten() {
                    if let Ok(target) = std::fs::read_link(e.path()) {
                        let dir =
                            fsutil::resolve_create(root, dest, Kind::Dir, RESOLVE_NO_SYMLINKS)?;
                        let dfd = fsutil::reopen_dir(&dir, dest)?;
                        let n = cstr(Path::new(&e.file_name()))?;
                        let tg = cstr(&target)?;
                        // SAFETY: valid C strings and dir fd.
                        unsafe { libc::symlinkat(tg.as_ptr(), dfd.as_raw_fd(), n.as_ptr()) };
                    }
                }
            }
            made.insert(0, dest.to_path_buf());
        }
        if ro {
            for d in &made {
                let top = fsutil::resolve_create(root, d, Kind::Dir, RESOLVE_NO_SYMLINKS)?;
                let keep = locked_flags(&top);
                mount(
                    None,
                    &fd_path(&top),
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                    None,
                )?;
            }
        }
        Ok(())
    }

    fn default_devices(&self, root: &OwnedFd) -> Result<()> {
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let path = PathBuf::from("/dev").join(name);
            self.create_node(root, &path, libc::S_IFCHR, major, minor, 0o666, 0, 0)?;
        }
        Ok(())
    }

    fn make_device(&self, root: &OwnedFd, d: &LinuxDevice) -> Result<()> {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::Other(
                    "type 'a' is only valid in cgroup rules".into(),
                ))
            }
        };
        let mode = d.file_mode().unwrap_or(0o666);
        self.create_node(
            root,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &self,
        root: &OwnedFd,
        path: &Path,
        kind: u32,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/dev"));
        let pfd = fsutil::resolve_create(root, parent, Kind::Dir, 0)?;
        let pdir = fsutil::reopen_dir(&pfd, parent)?;
        let name = cstr(Path::new(path.file_name().unwrap_or_default()))?;
        // Replace whatever the image has there.
        // SAFETY: pdir is a dir fd and name a valid C string.
        unsafe { libc::unlinkat(pdir.as_raw_fd(), name.as_ptr(), 0) };
        if self.in_userns && kind != libc::S_IFIFO {
            // mknod is not allowed in a user namespace: bind the host node.
            // SAFETY: as above.
            let fd = unsafe {
                libc::openat(
                    pdir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o000,
                )
            };
            if fd < 0 {
                return Err(last_os(format!("creating {}", path.display())));
            }
            // SAFETY: fd was just opened.
            unsafe { libc::close(fd) };
            let target = fsutil::resolve_create(root, path, Kind::File, RESOLVE_NO_SYMLINKS)?;
            let host = fsutil::open_path(path, libc::O_PATH)?;
            return mount(
                Some(&fd_path(&host)),
                &fd_path(&target),
                None,
                libc::MS_BIND,
                None,
            );
        }
        let dev = libc::makedev(major as u32, minor as u32);
        // SAFETY: as above.
        if unsafe { libc::mknodat(pdir.as_raw_fd(), name.as_ptr(), kind | (mode & 0o7777), dev) }
            != 0
        {
            return Err(last_os(format!("mknod {}", path.display())));
        }
        // mknod honours the umask; set the mode and owner exactly.
        // SAFETY: as above.
        unsafe {
            if libc::fchmodat(pdir.as_raw_fd(), name.as_ptr(), mode & 0o7777, 0) != 0 {
                return Err(last_os(format!("chmod {}", path.display())));
            }
            if libc::fchownat(
                pdir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            ) != 0
            {
                return Err(last_os(format!("chown {}", path.display())));
            }
        }
        Ok(())
    }

    fn dev_symlinks(&self, root: &OwnedFd) -> Result<()> {
        let dev = fsutil::resolve_create(root, Path::new("/dev"), Kind::Dir, 0)?;
        let ddir = fsutil::reopen_dir(&dev, Path::new("/dev"))?;
        let mut links = vec![
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
        ];
        if Path::new("/proc/kcore").exists() {
            links.push(("/proc/kcore", "core"));
        }
        for (target, name) in links {
            let t = CString::new(target).unwrap();
            let n = CString::new(name).unwrap();
            // SAFETY: valid C strings and dir fd.
            unsafe { libc::unlinkat(ddir.as_raw_fd(), n.as_ptr(), 0) };
            if unsafe { libc::symlinkat(t.as_ptr(), ddir.as_raw_fd(), n.as_ptr()) } != 0 {
                return Err(last_os(format!("symlink /dev/{name}")));
            }
        }
        Ok(())
    }
}

/// The mount point (from /proc/self/mountinfo) of the mount holding `path`.
fn containing_mount(path: &Path) -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::Os {
        ctx: "reading /proc/self/mountinfo".into(),
        err: e,
    })?;
    let mut best = PathBuf::from("/");
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(unescape_mountinfo(mp));
        if path.starts_with(&mp) && mp.components().count() > best.components().count() {
            best = mp;
        }
    }
    Ok(best)
}

/// mountinfo writes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup hierarchies under /sys/fs/cgroup as (directory name,
/// filesystem type, options for a new mount of the same hierarchy).
fn host_hierarchies() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return out;
    };
    for line in mi.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let superopts = post.nth(1).unwrap_or("");
        let Some(name) = mountpoint.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') || !(fstype == "cgroup" || fstype == "cgroup2") {
            continue;
        }
        let opts: Vec<&str> = superopts
            .split(',')
            .filter(|o| {
                !matches!(
                    *o,
                    "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
                )
            })
            .collect();
        let opts = if fstype == "cgroup2" {
            String::new()
        } else {
            opts.join(",")
        };
        out.push((name.to_string(), fstype.to_string(), opts));
    }
    out
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Switches the process root to `root`: pivot_root, or with `no_pivot` a
/// MS_MOVE + chroot (for ramdisk roots where pivot_root is not allowed).
pub fn enter_root(root: &OwnedFd, no_pivot: bool) -> Result<()> {
    // SAFETY: root is an open directory fd.
    if unsafe { libc::fchdir(root.as_raw_fd()) } != 0 {
        return Err(last_os("fchdir to the rootfs"));
    }
    if no_pivot {
        mount(
            Some(Path::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        )?;
        // SAFETY: valid C string.
        if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
            return Err(last_os("chroot"));
        }
    } else {
        // pivot_root(".", ".") stacks the old root on top of the new one;
        // detach it without propagating the unmount to the host. "." stays
        // the new root, so step into the old one first: making the new root
        // rslave would undo the mounts' own propagation (rshared binds).
        let old_root = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
        // SAFETY: valid C strings.
        if unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } != 0 {
            return Err(last_os("pivot_root"));
        }
        // SAFETY: old_root is an open directory fd.
        if unsafe { libc::fchdir(old_root.as_raw_fd()) } != 0 {
            return Err(last_os("fchdir to the old root"));
        }
        mount(
            None,
            Path::new("."),
            None,
            libc::MS_SLAVE | libc::MS_REC,
            None,
        )?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(last_os("detaching the old root"));
        }
    }
    // SAFETY: valid C string.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(last_os("chdir /"));
    }
    Ok(())
}

/// Resolves an absolute path in the (already entered) root, or None when it
/// does not exist.
fn resolve_existing(path: &str) -> Result<Option<OwnedFd>> {
    let root = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    match fsutil::openat2(
        root.as_raw_fd(),
        &fsutil::relative(Path::new(path)),
        libc::O_PATH,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::Os {
            ctx: format!("resolving {path}"),
            err: std::io::Error::from_raw_os_error(e),
        }),
    }
}

/// maskedPaths: directories get an empty read-only tmpfs, files /dev/null.
pub fn mask_path(path: &str) -> Result<()> {
    let Some(fd) = resolve_existing(path)? else {
        return Ok(());
    };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd open, st valid.
    unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            Some(Path::new("tmpfs")),
            &fd_path(&fd),
            Some("tmpfs"),
            libc::MS_RDONLY,
            Some("size=0k"),
        )
    } else {
        let null = fsutil::open_path(Path::new("/dev/null"), libc::O_PATH)?;
        mount(
            Some(&fd_path(&null)),
            &fd_path(&fd),
            None,
            libc::MS_BIND,
            None,
        )
    }
}

/// readonlyPaths: a read-only bind of the path onto itself.
pub fn readonly_path(path: &str) -> Result<()> {
    let Some(fd) = resolve_existing(path)? else {
        return Ok(());
    };
    mount(
        Some(&fd_path(&fd)),
        &fd_path(&fd),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let top = resolve_existing(path)?.ok_or_else(|| Error::Other(format!("{path} vanished")))?;
    let keep = locked_flags(&top);
    mount(
        None,
        &fd_path(&top),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | keep,
        None,
    )
}

/// Remounts the root read-only (root.readonly).
pub fn readonly_root() -> Result<()> {
    let root = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    let keep = locked_flags(&root);
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
        None,
    )
}

/// rootfsPropagation shared/rshared is applied after pivot_root (a shared
/// parent would make pivot_root fail).
pub fn root_propagation(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let flags = match linux.rootfs_propagation().as_deref() {
        Some("shared") => libc::MS_SHARED,
        Some("rshared") => libc::MS_SHARED | libc::MS_REC,
        _ => return Ok(()),
    };
    mount(None, Path::new("/"), None, flags, None)
        .map_err(|e| Error::Other(format!("linux.rootfsPropagation: {e}")))
}

/// rootfsPropagation unbindable/runbindable goes on last: the rootfs bind,
/// and the self-binds of readonlyPaths, need bindable mounts under them.
pub fn root_unbindable(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let flags = match linux.rootfs_propagation().as_deref() {
        Some("unbindable") => libc::MS_UNBINDABLE,
        Some("runbindable") => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return Ok(()),
    };
    mount(None, Path::new("/"), None, flags, None)
        .map_err(|e| Error::Other(format!("linux.rootfsPropagation: {e}")))
}

/// Binds the console's pty slave onto /dev/console.
pub fn bind_console(slave_path: &str) -> Result<()> {
    let root = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    let target = fsutil::resolve_create(
        &root,
        Path::new("/dev/console"),
        Kind::File,
        RESOLVE_NO_SYMLINKS,
    )?;
    let src = fsutil::open_path(Path::new(slave_path), libc::O_PATH)?;
    mount(
        Some(&fd_path(&src)),
        &fd_path(&target),
        None,
        libc::MS_BIND,
        None,
    )
}
