//! Pod namespaces without a pause process: a short-lived thread unshares
//! the network, IPC and UTS namespaces, sets the hostname, and bind-mounts
//! its namespace files onto files in the pod directory. The bind mounts
//! keep the namespaces alive; containers join them by path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Net,
    Ipc,
    Uts,
}

impl Ns {
    fn flag(self) -> libc::c_int {
        match self {
            Ns::Net => libc::CLONE_NEWNET,
            Ns::Ipc => libc::CLONE_NEWIPC,
            Ns::Uts => libc::CLONE_NEWUTS,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Ns::Net => "net",
            Ns::Ipc => "ipc",
            Ns::Uts => "uts",
        }
    }
}

fn cvt(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

pub fn bind(src: &Path, dst: &Path) -> io::Result<()> {
    let s = std::ffi::CString::new(src.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let d = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid C strings; null fstype/data for a bind mount.
    cvt(
        unsafe {
            libc::mount(
                s.as_ptr(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        },
        &format!("binding {} to {}", src.display(), dst.display()),
    )
}

/// Creates and pins `kinds` under `dir/ns/`; returns the pinned paths in the
/// same order. On error nothing stays mounted.
pub fn create(dir: &Path, kinds: &[Ns], hostname: Option<&str>) -> io::Result<Vec<PathBuf>> {
    let nsdir = dir.join("ns");
    fs::create_dir_all(&nsdir)?;
    let kinds = kinds.to_vec();
    let hostname = hostname.map(str::to_string);
    let nsdir2 = nsdir.clone();
    let r = std::thread::spawn(move || -> io::Result<Vec<PathBuf>> {
        let flags = kinds.iter().fold(0, |f, k| f | k.flag());
        // SAFETY: unshare of net/ipc/uts affects only this thread.
        cvt(unsafe { libc::unshare(flags) }, "unshare")?;
        if let Some(h) = &hostname {
            if kinds.contains(&Ns::Uts) {
                // SAFETY: valid pointer and length.
                cvt(
                    unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) },
                    "sethostname",
                )?;
            }
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut done = Vec::new();
        for k in &kinds {
            let target = nsdir2.join(k.name());
            fs::File::create(&target)?;
            let src = PathBuf::from(format!("/proc/self/task/{tid}/ns/{}", k.name()));
            if let Err(e) = bind(&src, &target) {
                remove(&done);
                return Err(e);
            }
            done.push(target);
        }
        Ok(done)
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?;
    if r.is_err() {
        let _ = fs::remove_dir_all(&nsdir);
    }
    r
}

/// Like [`create`], for a pod in its own user namespace (hostUsers: false):
/// a short-lived child creates the user namespace with the pod's mappings
/// and, owned by it, the `kinds` namespaces (so the pod's root may mount
/// sysfs, set net sysctls, and so on); all are pinned under `dir/ns/`.
/// Returns the pinned user namespace, then the others in order.
pub fn create_in_userns(
    dir: &Path,
    kinds: &[Ns],
    hostname: Option<&str>,
    uid_map: &[oci_spec::runtime::LinuxIdMapping],
    gid_map: &[oci_spec::runtime::LinuxIdMapping],
) -> io::Result<(PathBuf, Vec<PathBuf>)> {
    let nsdir = dir.join("ns");
    fs::create_dir_all(&nsdir)?;
    let flags = kinds.iter().fold(0, |f, k| f | k.flag());
    let mut done = Vec::new();
    let r = (|| -> io::Result<PathBuf> {
        let holder = berth_oci::idmap::NsHolder::spawn(uid_map, gid_map, flags, hostname)
            .map_err(|e| io::Error::other(format!("the pod's user namespace: {e}")))?;
        for name in std::iter::once("user").chain(kinds.iter().map(|k| k.name())) {
            let target = nsdir.join(name);
            fs::File::create(&target)?;
            bind(&holder.ns_path(name), &target)?;
            done.push(target);
        }
        Ok(done.remove(0))
    })();
    match r {
        Ok(user) => Ok((user, done)),
        Err(e) => {
            remove(&done);
            let _ = fs::remove_dir_all(&nsdir);
            Err(e)
        }
    }
}

/// Unmounts and deletes pinned namespace files (missing ones are fine).
pub fn remove(paths: &[PathBuf]) {
    for p in paths {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_file(p);
    }
}

/// Whether `p` is a pinned namespace (a mount of an nsfs file).
pub fn is_pinned(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == 0x6e73_6673 // NSFS_MAGIC
    }
}
