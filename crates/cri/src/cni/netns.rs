//! The pod's network namespace file: recognising one, and bringing its loopback up.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a namespace file (a bind mount of `/proc/<pid>/ns/net` or similar). An
/// unmounted leftover is a plain empty file, which a plugin could not enter.
pub(crate) fn is_nsfs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC }
}

/// Sets IFF_UP on `lo` inside the network namespace `netns`, from a short-lived thread (a thread
/// may enter a network namespace on its own; the rest of the process stays where it is).
pub(crate) fn loopback_up(netns: &Path) -> io::Result<()> {
    let ns = File::open(netns)?;
    std::thread::Builder::new()
        .name("cni-lo-up".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: setns on an fd we own; affects this thread only, which ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            set_up("lo")
        })?
        .join()
        .map_err(|_| io::Error::other("loopback thread panicked"))?
}

fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: ifreq is fully initialised, and the ioctls read/write only it.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
