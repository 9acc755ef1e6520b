//! The container's terminal: a pty made inside the container's devpts, its
//! master sent to the caller over the console socket (SCM_RIGHTS), as runc
//! does.

use crate::error::{last_os, Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Connects to the caller's console socket (a unix stream socket path).
pub fn connect(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| Error::Os {
        ctx: format!("connecting to console socket {}", path.display()),
        err: e,
    })?;
    Ok(s.into())
}

/// Sends `fd` with `name` (the pty's path) as payload over the unix socket `sock`.
pub fn send_fd(sock: RawFd, name: &str, fd: RawFd) -> Result<()> {
    crate::fdpass::send_fd(sock, name.as_bytes(), fd)
}

/// Receives one fd sent with [`send_fd`].
pub fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    match crate::fdpass::recv_fd(sock)? {
        (_, Some(fd)) => Ok(fd),
        (_, None) => Err(Error::Other("console socket: no fd received".into())),
    }
}

/// Opens a new pty pair from the devpts at /dev/pts (the container's, after
/// pivot_root). Returns (master, slave, slave path).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, String)> {
    // SAFETY: plain libc calls on fds we own.
    unsafe {
        let m = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(last_os("open /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::unlockpt(m) != 0 {
            return Err(last_os("unlockpt"));
        }
        let mut n: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCGPTN, &mut n) != 0 {
            return Err(last_os("TIOCGPTN"));
        }
        let path = format!("/dev/pts/{n}");
        let cpath = std::ffi::CString::new(path.clone()).unwrap();
        let s = libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(last_os(format!("open {path}")));
        }
        Ok((master, OwnedFd::from_raw_fd(s), path))
    }
}

pub fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Makes `slave` the controlling terminal and stdio of this (session
/// leader) process.
pub fn become_stdio(slave: &OwnedFd) -> Result<()> {
    let s = slave.as_raw_fd();
    // SAFETY: plain libc calls on an fd we own.
    unsafe {
        if libc::ioctl(s, libc::TIOCSCTTY, 0) != 0 {
            return Err(last_os("TIOCSCTTY"));
        }
        for t in 0..3 {
            if libc::dup2(s, t) < 0 {
                return Err(last_os("dup2 console"));
            }
        }
    }
    Ok(())
}
