//! A typed channel between the runtime and the container's init stages, over
//! a SOCK_SEQPACKET socketpair: one message per datagram, EOF when the peer
//! is gone (or has exec'd, since both ends are close-on-exec).

use crate::error::{last_os, Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Parent → child: the child may go on (it is in its cgroup, its maps are
    /// written, or the hooks ran).
    Go,
    /// Stage 1 → parent: a new user namespace exists, write its id maps.
    UsernsReady,
    /// Stage 1 → parent: the pid (in the parent's pid namespace) of stage 2.
    Stage2Pid(i32),
    /// Stage 2 → parent: mounts are done, run createRuntime hooks.
    CreateRuntimeHooks,
    /// Parent → stage 2: the OCI state JSON for createContainer and
    /// startContainer hooks.
    HookState(String),
    /// Stage 2 → parent: the next datagram carries the seccomp notification
    /// listener fd (SCM_RIGHTS), or an error.
    SeccompListener,
    /// Stage 2 → parent: set up and waiting for `start`.
    Ready,
    /// Child → parent: setup failed.
    Error(String),
}

pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn pair() -> Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid 2-element array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(last_os("socketpair"));
        }
        // SAFETY: socketpair returned two new fds that we now own.
        unsafe {
            Ok((
                Channel {
                    fd: OwnedFd::from_raw_fd(fds[0]),
                },
                Channel {
                    fd: OwnedFd::from_raw_fd(fds[1]),
                },
            ))
        }
    }

    pub fn send(&self, m: &Msg) -> Result<()> {
        let data = serde_json::to_vec(m).map_err(|e| Error::Other(e.to_string()))?;
        loop {
            // SAFETY: data is a valid buffer of data.len() bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::Os {
                    ctx: "sync send".into(),
                    err: e,
                });
            }
        }
    }

    /// The next message, or `None` when the peer closed its end.
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                return serde_json::from_slice(&buf[..n as usize])
                    .map(Some)
                    .map_err(|e| Error::Other(format!("sync: bad message: {e}")));
            }
            if n == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::Os {
                    ctx: "sync recv".into(),
                    err: e,
                });
            }
        }
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}
