//! The monitor's protocol: one JSON request per connection on a
//! SOCK_SEQPACKET unix socket, one JSON reply, file descriptors (pipe ends,
//! a pty master) riding along as SCM_RIGHTS.

use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Largest message either side accepts; requests carry a process spec at
/// most, replies a container list.
pub const MAX_MESSAGE: usize = 1 << 20;
const MAX_FDS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a container (berth runtime library) as the monitor's child.
    Create {
        id: String,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        tty: bool,
        stdin: bool,
        stdin_once: bool,
        /// A runc-compatible binary to drive instead of the built-in runtime.
        #[serde(default)]
        runtime: Option<ExternalRuntime>,
    },
    Start {
        id: String,
    },
    /// Runs a process in a container; the reply carries its stdio ends
    /// (stdin writer if asked, stdout and stderr readers; or a pty master).
    Exec {
        id: String,
        process: serde_json::Value,
        stdin: bool,
        #[serde(default)]
        runtime: Option<ExternalRuntime>,
    },
    /// Replies when the exec process has exited.
    WaitExec {
        pid: i32,
    },
    /// Replies when the container has exited.
    Wait {
        id: String,
    },
    Status,
    /// Copies of the container's output from now on, and its stdin (moved
    /// out for stdin_once: the container sees EOF when the attacher closes
    /// it). fds: stdout reader, stderr reader (none with a tty: the stdout
    /// reader carries the terminal), then the stdin writer if there is one.
    Attach {
        id: String,
    },
    ReopenLog {
        id: String,
    },
    /// Drops a removed container from the monitor's table.
    Forget {
        id: String,
    },
    /// The monitor exits (refused while containers still run).
    Shutdown,
}

/// A runc-compatible runtime (runc, crun, a sandboxing runtime) by path,
/// with its own state root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRuntime {
    pub path: PathBuf,
    pub root: PathBuf,
}

impl ExternalRuntime {
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.path);
        c.arg("--root").arg(&self.root);
        c
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Created {
        pid: i32,
    },
    /// fds: the pty master if the process has a terminal; otherwise stdout
    /// and stderr readers, then the stdin writer if stdin was asked for.
    ExecStarted {
        pid: i32,
    },
    Attached {
        tty: bool,
        stdin: bool,
    },
    Exited(ExitInfo),
    Containers {
        containers: Vec<ContainerInfo>,
    },
    Error {
        msg: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, or 128 + the signal that killed it.
    pub code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    #[serde(default)]
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub pid: i32,
    pub started: bool,
    pub exit: Option<ExitInfo>,
}

/// A unix socket address for `path`, going through /proc/self/fd when the
/// path is longer than sun_path allows (deep state directories). `_dir`
/// keeps that directory fd open while the address is used.
pub fn socket_addr(path: &Path) -> io::Result<(nix::sys::socket::UnixAddr, Option<OwnedFd>)> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return Ok((nix::sys::socket::UnixAddr::new(path)?, None));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let d: OwnedFd = std::fs::File::options()
        .read(true)
        .custom_flags_dir()
        .open(dir)?
        .into();
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    Ok((nix::sys::socket::UnixAddr::new(&short)?, Some(d)))
}

trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

/// Where the monitor of a pod keeps its socket and records.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("monitor.sock")
}

/// The durable exit record of a container (written before anyone is told).
pub fn exit_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("exits").join(format!("{id}.json"))
}

pub fn read_exit(dir: &Path, id: &str) -> Option<ExitInfo> {
    let s = std::fs::read(exit_path(dir, id)).ok()?;
    serde_json::from_slice(&s).ok()
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Sends one message with optional fds.
pub fn send(sock: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds it carried (close-on-exec). Empty
/// payload: the peer closed.
pub fn recv(sock: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cbuf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock, &mut iov, Some(&mut cbuf), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: fds received by SCM_RIGHTS are new and ours.
                        fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                let truncated =
                    m.flags.contains(MsgFlags::MSG_TRUNC) || m.flags.contains(MsgFlags::MSG_CTRUNC);
                break (m.bytes, fds, truncated);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "monitor message too large",
        ));
    }
    buf.truncate(n);
    Ok((buf, fds))
}

/// A connection to a pod's monitor (blocking; berthd calls it from
/// blocking tasks).
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(dir: &Path) -> Client {
        Client {
            path: socket_path(dir),
        }
    }

    fn connect(&self) -> io::Result<OwnedFd> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let (addr, _dir) = socket_addr(&self.path)?;
        let _: Option<&UnixAddr> = None;
        connect(fd.as_raw_fd(), &addr).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("monitor {}: {e}", self.path.display()),
            )
        })?;
        Ok(fd)
    }

    /// One request, one reply (with the fds it carried).
    pub fn call(&self, req: &Request) -> io::Result<(Response, Vec<OwnedFd>)> {
        self.call_timeout(req, None)
    }

    /// Like `call`, giving up (ErrorKind::WouldBlock/TimedOut) after `timeout`.
    pub fn call_timeout(
        &self,
        req: &Request,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<(Response, Vec<OwnedFd>)> {
        let fd = self.connect()?;
        if let Some(t) = timeout {
            let t = t.max(std::time::Duration::from_millis(1));
            let tv = libc::timeval {
                tv_sec: t.as_secs() as _,
                tv_usec: t.subsec_micros() as _,
            };
            // SAFETY: setsockopt with a valid timeval.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as _,
                )
            };
        }
        send(fd.as_raw_fd(), &serde_json::to_vec(req)?, &[])?;
        let (buf, fds) = recv(fd.as_raw_fd())?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("monitor {} closed the connection", self.path.display()),
            ));
        }
        let resp: Response = serde_json::from_slice(&buf)?;
        if let Response::Error { msg } = &resp {
            return Err(io::Error::other(msg.clone()));
        }
        Ok((resp, fds))
    }

    pub fn alive(&self) -> bool {
        self.connect().is_ok()
    }
}
