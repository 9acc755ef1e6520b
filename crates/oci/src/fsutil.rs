//! Path resolution that cannot escape a root, and procfs checks.
//!
//! Every mount target inside a container is resolved with openat2
//! RESOLVE_IN_ROOT from an fd of the rootfs, so a symlink planted in the
//! image (or swapped in by a racing process) resolves inside the rootfs, and
//! the mount is then made on the resolved fd through /proc/self/fd/N.

use crate::error::{last_os, Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Other(format!("path {} contains a NUL byte", p.display())))
}

/// openat2(2). Returns the raw errno on failure so callers can branch on it.
pub fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: i32,
    resolve: u64,
) -> std::result::Result<OwnedFd, i32> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    loop {
        // SAFETY: c and how are valid for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new fd that we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if e != libc::EAGAIN && e != libc::EINTR {
            return Err(e);
        }
    }
}

pub fn open_path(path: &Path, flags: i32) -> Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_os(format!("open {}", path.display())));
    }
    // SAFETY: open returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What to create when the target does not exist.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Dir,
    File,
}

/// Resolves `path` inside `root` (an O_PATH dir fd) and returns an O_PATH fd
/// to it, creating missing components (directories, and a final file when
/// `kind` is File). `extra` adds RESOLVE_* flags such as NO_SYMLINKS.
pub fn resolve_create(root: &OwnedFd, path: &Path, kind: Kind, extra: u64) -> Result<OwnedFd> {
    let mut rel = relative(path);
    // Like the kernel's own limit on symlinks followed in one lookup.
    for _ in 0..40 {
        match resolve_create_once(root, &rel, kind, extra)? {
            Step::Done(fd) => return Ok(fd),
            Step::Retry(next) => rel = next,
        }
    }
    Err(Error::Os {
        ctx: format!("resolving {} in the rootfs", path.display()),
        err: std::io::Error::from_raw_os_error(libc::ELOOP),
    })
}

enum Step {
    Done(OwnedFd),
    /// A missing component is a dangling symlink: resolve this path instead.
    Retry(std::path::PathBuf),
}

fn resolve_create_once(root: &OwnedFd, rel: &Path, kind: Kind, extra: u64) -> Result<Step> {
    let resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | extra;
    let resolve_err = |p: &Path, e: i32| Error::Os {
        ctx: format!("resolving /{} in the rootfs", p.display()),
        err: std::io::Error::from_raw_os_error(e),
    };
    match openat2(root.as_raw_fd(), rel, libc::O_PATH, resolve) {
        Ok(fd) => return Ok(Step::Done(fd)),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(resolve_err(rel, e)),
    }
    let comps: Vec<_> = rel.components().collect();
    let mut cur = root.try_clone().map_err(|e| Error::Os {
        ctx: "dup".into(),
        err: e,
    })?;
    let mut prefix = std::path::PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        let last = i + 1 == comps.len();
        match openat2(root.as_raw_fd(), &prefix, libc::O_PATH, resolve) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(libc::ENOENT) => {}
            Err(e) => return Err(resolve_err(&prefix, e)),
        }
        let name = cstr(Path::new(c.as_os_str()))?;
        // Reopen the parent as a real directory fd for the *at calls.
        let parent = reopen_dir(&cur, &prefix)?;
        // A dangling symlink: follow it the way the kernel would, but inside
        // the rootfs (an absolute target restarts at the rootfs' root; `..`
        // stays for openat2 RESOLVE_IN_ROOT to clamp), as runc creates mount
        // targets behind e.g. /var/run -> /run when /run is missing.
        if extra & RESOLVE_NO_SYMLINKS == 0 {
            if let Some(target) = readlinkat(&parent, &name) {
                let mut next = if target.is_absolute() {
                    std::path::PathBuf::new()
                } else {
                    prefix.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                next.push(relative(&target));
                for rest in &comps[i + 1..] {
                    next.push(rest);
                }
                return Ok(Step::Retry(next));
            }
        }
        // SAFETY: parent is a valid dir fd and name a valid C string.
        let r = if last && kind == Kind::File {
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                unsafe { libc::close(fd) };
                0
            } else {
                -1
            }
        } else {
            unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(Error::Os {
                    ctx: format!("creating /{} in the rootfs", prefix.display()),
                    err: e,
                });
            }
        }
        cur = openat2(root.as_raw_fd(), &prefix, libc::O_PATH, resolve)
            .map_err(|e| resolve_err(&prefix, e))?;
    }
    Ok(Step::Done(cur))
}

/// The target of `name` in `dir` if it is a symlink.
fn readlinkat(dir: &OwnedFd, name: &std::ffi::CStr) -> Option<std::path::PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is valid for its length; dir is an open directory.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(std::path::PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// Reopens an O_PATH directory fd as a real directory fd for the *at calls;
/// `what` names it in the error.
pub fn reopen_dir(fd: &impl AsRawFd, what: &Path) -> Result<OwnedFd> {
    openat2(
        fd.as_raw_fd(),
        Path::new("."),
        libc::O_DIRECTORY | libc::O_RDONLY,
        0,
    )
    .map_err(|e| Error::Os {
        ctx: format!("opening {}", what.display()),
        err: std::io::Error::from_raw_os_error(e),
    })
}

/// `path` without its leading `/` and `.` parts, for *at calls.
pub fn relative(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// "/proc/self/fd/N": the magic-link path through which mount(2) and other
/// path-based syscalls act on exactly the object the fd refers to.
pub fn fd_path(fd: &impl AsRawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

pub fn is_procfs(fd: &impl AsRawFd) -> bool {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and st a valid out-pointer.
    unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == PROC_SUPER_MAGIC }
}

/// Writes `val` to a file under the procfs mounted at `/proc`, refusing when
/// /proc (or the file) is not a real procfs or the path crosses a mount or a
/// symlink: a container could otherwise redirect the write (CVE-2019-19921
/// class).
pub fn write_proc(rel: &str, val: &str) -> Result<()> {
    let proc = open_path(Path::new("/proc"), libc::O_PATH | libc::O_DIRECTORY)?;
    if !is_procfs(&proc) {
        return Err(Error::Other(
            "/proc is not a procfs mount; refusing to write to it".into(),
        ));
    }
    let f = openat2(
        proc.as_raw_fd(),
        Path::new(rel),
        libc::O_WRONLY,
        RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| Error::Os {
        ctx: format!("opening /proc/{rel}"),
        err: std::io::Error::from_raw_os_error(e),
    })?;
    if !is_procfs(&f) {
        return Err(Error::Other(format!(
            "/proc/{rel} is not on procfs; refusing to write"
        )));
    }
    // SAFETY: f is open for writing and val a valid buffer.
    let n = unsafe { libc::write(f.as_raw_fd(), val.as_ptr().cast(), val.len()) };
    if n < 0 {
        return Err(last_os(format!("writing {val:?} to /proc/{rel}")));
    }
    Ok(())
}
