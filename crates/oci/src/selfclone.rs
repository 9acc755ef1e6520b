//! Defence against overwriting the runtime binary from inside a container
//! (CVE-2019-5736 class): before berth does anything in a container's
//! namespaces it re-executes itself from a sealed memfd copy, so that
//! /proc/<pid>/exe of every berth process a container can see is a sealed,
//! anonymous file, never the host's binary.

use crate::error::{last_os, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

const MFD_CLOEXEC: u32 = 0x1;
const MFD_ALLOW_SEALING: u32 = 0x2;
const MFD_EXEC: u32 = 0x10;
const SEALS: i32 = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True if this process runs from a sealed memfd.
pub fn is_cloned() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on an fd we own.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Re-executes the current process from a sealed memfd copy of its binary,
/// unless it already runs from one. Returns only on failure.
pub fn ensure_cloned() -> Result<()> {
    if is_cloned() {
        return Ok(());
    }
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
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envs: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
    unsafe { libc::fexecve(mfd.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
    Err(last_os("re-executing berth from its memfd copy"))
}
