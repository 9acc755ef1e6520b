//! Connecting to a port inside a pod's network namespace, for a
//! [`Backend::port_forward`](crate::Backend::port_forward).

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;

/// Connects to `port` on the loopback of the network namespace at `netns`
/// (e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`), or of the
/// caller's own namespace when `netns` is None (a host-network pod, whose
/// ports are the node's): 127.0.0.1 first, then `[::1]`, as containerd does.
/// The socket is made on a thread of its own that enters the namespace and
/// then exits, so no thread of the caller's pool is ever left inside a pod.
pub async fn dial(netns: Option<&Path>, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let path: Option<PathBuf> = netns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_blocking(path.as_deref(), port, timeout));
        })?;
    let s = rx
        .await
        .map_err(|_| io::Error::other("netns dial thread died"))??;
    s.set_nonblocking(true)?;
    TcpStream::from_std(s)
}

fn dial_blocking(netns: Option<&Path>, port: u16, timeout: Duration) -> io::Result<StdTcpStream> {
    if let Some(netns) = netns {
        let ns = File::open(netns)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", netns.display())))?;
        // SAFETY: setns on an open namespace fd affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("setns {}: {e}", netns.display()),
            ));
        }
    }
    let place = netns.map_or("the host network".to_string(), |p| p.display().to_string());
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let e4 = match StdTcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    StdTcpStream::connect_timeout(&v6, timeout).map_err(|e6| {
        io::Error::new(
            e6.kind(),
            format!("connect to port {port} in {place}: {v4}: {e4}; {v6}: {e6}"),
        )
    })
}
