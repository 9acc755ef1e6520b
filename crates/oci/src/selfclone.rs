//! Defence against overwriting the runtime binary from inside a container
//! (CVE-2019-5736 class): before berth does anything in a container's
//! namespaces it makes sure /proc/<pid>/exe of every berth process a
//! container can see cannot be opened for writing:
//!
//! * if the binary already lives on a read-only mount, nothing is needed;
//! * else berth re-executes itself through a read-only bind mount of its own
//!   binary, detached right after it is opened (writes through the exe link
//!   then fail with EROFS) — no copy, so it costs one exec;
//! * where mounting is not allowed, it re-executes from a sealed memfd copy.

use crate::error::{last_os, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

const MFD_CLOEXEC: u32 = 0x1;
const MFD_ALLOW_SEALING: u32 = 0x2;
const MFD_EXEC: u32 = 0x10;
const SEALS: i32 = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True if this process's binary cannot be written through /proc/self/exe:
/// a sealed memfd, or a file on a read-only mount.
pub fn is_cloned() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl/fstatvfs on an fd we own, into a local.
    unsafe {
        let seals = libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS);
        if seals >= 0 && seals & SEALS == SEALS {
            return true;
        }
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::fstatvfs(f.as_raw_fd(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
    }
}

/// Re-executes the current process so that its binary cannot be written
/// through /proc/<pid>/exe, unless that already holds. `scratch` is a
/// directory only root can write (berth's state root) for the bind mount's
/// target. Returns only on failure.
pub fn ensure_cloned(scratch: &std::path::Path) -> Result<()> {
    if is_cloned() {
        return Ok(());
    }
    if let Some(fd) = ro_bind_self(scratch) {
        let (args, envs) = argv_envp();
        exec_fd(&fd, &args, &envs, libc::AT_EMPTY_PATH);
        // Fall through to the copy if the exec itself failed.
    }
    memfd_reexec()
}

fn argv_envp() -> (Vec<CString>, Vec<CString>) {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let envs: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    (args, envs)
}

fn exec_fd(fd: &OwnedFd, args: &[CString], envs: &[CString], flags: i32) {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            flags,
        )
    };
}

/// Binds /proc/self/exe read-only onto a scratch file, opens it, and detaches
/// the mount again: the returned fd keeps the (now invisible) read-only mount
/// alive for the exec. None if any step is not allowed here.
fn ro_bind_self(scratch: &std::path::Path) -> Option<OwnedFd> {
    // The state root: private to its owner, as `Root::ensure` makes it.
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(scratch);
    let target = scratch.join(format!(".berth-exe.{}", std::process::id()));
    let ct = CString::new(target.as_os_str().as_bytes()).ok()?;
    // SAFETY: plain syscalls on valid C strings; every path is undone below.
    unsafe {
        let f = libc::open(
            ct.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o500,
        );
        if f < 0 {
            return None;
        }
        libc::close(f);
        let mut fd = None;
        if libc::mount(
            c"/proc/self/exe".as_ptr(),
            ct.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) == 0
        {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            if libc::mount(
                std::ptr::null(),
                ct.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) == 0
            {
                let r = libc::open(ct.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if r >= 0 {
                    fd = Some(OwnedFd::from_raw_fd(r));
                }
            }
            libc::umount2(ct.as_ptr(), libc::MNT_DETACH);
        }
        libc::unlink(ct.as_ptr());
        fd
    }
}

/// Re-executes from a sealed memfd copy of the binary.
fn memfd_reexec() -> Result<()> {
    let exe = std::fs::File::open("/proc/self/exe").map_err(|e| crate::Error::Os {
        ctx: "open /proc/self/exe".into(),
        err: e,
    })?;
    let len = exe.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let name = c"berth";
    // SAFETY: memfd_create with a valid name; retry without MFD_EXEC on
    // kernels older than 6.3.
    let mut fd = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            name.as_ptr(),
            MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC,
        )
    };
    if fd < 0 {
        fd = unsafe {
            libc::syscall(
                libc::SYS_memfd_create,
                name.as_ptr(),
                MFD_CLOEXEC | MFD_ALLOW_SEALING,
            )
        };
    }
    if fd < 0 {
        return Err(last_os("memfd_create"));
    }
    // SAFETY: memfd_create returned a new fd that we own.
    let mfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut left = len;
    while left > 0 {
        // SAFETY: both fds are open.
        let n =
            unsafe { libc::sendfile(mfd.as_raw_fd(), exe.as_raw_fd(), std::ptr::null_mut(), left) };
        if n < 0 {
            return Err(last_os("copying the berth binary into a memfd"));
        }
        if n == 0 {
            break;
        }
        left -= n as usize;
    }
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(mfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(last_os("sealing the berth memfd"));
    }
    let (args, envs) = argv_envp();
    exec_fd(&mfd, &args, &envs, libc::AT_EMPTY_PATH);
    Err(last_os("re-executing berth from its memfd copy"))
}
