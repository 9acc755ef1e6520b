//! A test backend: exec runs host processes (a real pty for tty), attach
//! joins processes the test started, port-forward dials real TCP servers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio as PStdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_streaming::{
    AsyncReadWrite, Backend, BoxFuture, Config, Server, ServerHandle, Stdio, TermSize,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout, Command};

/// A running process's stdin and stdout, until an attach takes them.
type Pipes = (Option<ChildStdin>, Option<ChildStdout>);

#[derive(Default)]
pub struct TestBackend {
    /// Port-forward targets per pod.
    pub pods: Mutex<HashMap<String, SocketAddr>>,
    /// Running "containers" for attach: their stdin and stdout.
    pub containers: Mutex<HashMap<String, Pipes>>,
    /// Terminal sizes that reached the backend.
    pub resizes: Arc<Mutex<Vec<TermSize>>>,
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W) {
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

fn status_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

impl TestBackend {
    async fn exec_plain(cmd: Vec<String>, io: Stdio) -> Result<i32, String> {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]).kill_on_drop(true);
        c.stdin(if io.stdin.is_some() {
            PStdio::piped()
        } else {
            PStdio::null()
        });
        c.stdout(if io.stdout.is_some() {
            PStdio::piped()
        } else {
            PStdio::null()
        });
        c.stderr(if io.stderr.is_some() {
            PStdio::piped()
        } else {
            PStdio::null()
        });
        let mut child = c.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd[0]))?;
        let stdin_task = match (io.stdin, child.stdin.take()) {
            (Some(r), Some(w)) => Some(tokio::spawn(pump(r, w))),
            _ => None,
        };
        let out = match (io.stdout, child.stdout.take()) {
            (Some(w), Some(r)) => Some(tokio::spawn(pump(r, w))),
            _ => None,
        };
        let err = match (io.stderr, child.stderr.take()) {
            (Some(w), Some(r)) => Some(tokio::spawn(pump(r, w))),
            _ => None,
        };
        let status = child.wait().await.map_err(|e| e.to_string())?;
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        Ok(status_code(status))
    }

    async fn exec_tty(
        cmd: Vec<String>,
        io: Stdio,
        resizes: Arc<Mutex<Vec<TermSize>>>,
    ) -> Result<i32, String> {
        let pty = nix::pty::openpty(None, None).map_err(|e| e.to_string())?;
        let master: OwnedFd = pty.master;
        let slave: OwnedFd = pty.slave;
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]).kill_on_drop(true);
        c.stdin(PStdio::from(slave.try_clone().unwrap()));
        c.stdout(PStdio::from(slave.try_clone().unwrap()));
        c.stderr(PStdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = c.spawn().map_err(|e| e.to_string())?;
        drop(c);
        let mfd = master.as_raw_fd();
        // The master is read and written from blocking threads.
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let mut writer = std::fs::File::from(master.try_clone().unwrap());
        let (otx, mut orx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = reader.read(&mut b) {
                if n == 0 || otx.blocking_send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let out_task = io.stdout.map(|mut w| {
            tokio::spawn(async move {
                while let Some(b) = orx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            })
        });
        let (itx, irx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            while let Ok(b) = irx.recv() {
                if writer.write_all(&b).is_err() {
                    break;
                }
            }
        });
        let in_task = io.stdin.map(|mut r| {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                loop {
                    match r.read(&mut b).await {
                        Ok(0) | Err(_) => {
                            // EOF on a terminal is ^D.
                            let _ = itx.send(vec![4]);
                            break;
                        }
                        Ok(n) => {
                            if itx.send(b[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        });
        let master_keep = master;
        let resize_task = io.resize.map(|mut rx| {
            tokio::spawn(async move {
                while let Some(s) = rx.recv().await {
                    let ws = libc::winsize {
                        ws_row: s.height,
                        ws_col: s.width,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                    unsafe { libc::ioctl(mfd, libc::TIOCSWINSZ, &ws) };
                    resizes.lock().unwrap().push(s);
                }
            })
        });
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if let Some(t) = out_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for t in [in_task, resize_task].into_iter().flatten() {
            t.abort();
        }
        drop(master_keep);
        Ok(status_code(status))
    }

    /// Starts a "container" for attach: `cmd` with piped stdin and stdout.
    pub fn start_container(&self, id: &str, cmd: &[&str]) -> tokio::process::Child {
        let mut child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(PStdio::piped())
            .stdout(PStdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (i, o) = (child.stdin.take(), child.stdout.take());
        self.containers
            .lock()
            .unwrap()
            .insert(id.to_string(), (i, o));
        child
    }
}

impl Backend for TestBackend {
    fn exec(
        &self,
        _container_id: &str,
        cmd: &[String],
        tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<i32, String>> {
        let cmd = cmd.to_vec();
        let resizes = self.resizes.clone();
        if cmd.is_empty() {
            return Box::pin(async { Err("empty command".to_string()) });
        }
        if tty {
            Box::pin(Self::exec_tty(cmd, io, resizes))
        } else {
            Box::pin(Self::exec_plain(cmd, io))
        }
    }

    fn attach(
        &self,
        container_id: &str,
        _tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<(), String>> {
        let taken = self
            .containers
            .lock()
            .unwrap()
            .get_mut(container_id)
            .map(|(i, o)| (i.take(), o.take()));
        let id = container_id.to_string();
        Box::pin(async move {
            let Some((cin, cout)) = taken else {
                return Err(format!("container {id} not found"));
            };
            // stdin_once: the container's stdin closes when the client's does.
            let a = match (io.stdin, cin) {
                (Some(r), Some(w)) => Some(tokio::spawn(pump(r, w))),
                _ => None,
            };
            let b = match (io.stdout, cout) {
                (Some(w), Some(r)) => Some(tokio::spawn(pump(r, w))),
                _ => None,
            };
            if let Some(b) = b {
                let _ = b.await;
            }
            if let Some(a) = a {
                a.abort();
            }
            Ok(())
        })
    }

    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn AsyncReadWrite>, String>> {
        let addr = self.pods.lock().unwrap().get(pod_id).copied();
        let pod = pod_id.to_string();
        Box::pin(async move {
            let mut addr = addr.ok_or_else(|| format!("pod {pod} not found"))?;
            addr.set_port(port);
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("dial {addr}: {e}"))?;
            Ok(Box::new(s) as Box<dyn AsyncReadWrite>)
        })
    }
}

pub async fn start(cfg: Config) -> (Arc<TestBackend>, ServerHandle) {
    let backend = Arc::new(TestBackend::default());
    let server = Server::bind(cfg, backend.clone()).await.unwrap();
    let (h, _task) = server.spawn();
    (backend, h)
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut b).await.unwrap();
    }
    b
}

/// A tiny HTTP server: answers every request with `<tag> <path>` and closes.
pub async fn http_server(addr: &str, tag: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = format!("{tag} {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// An echo server that answers only after its client half-closed: it sends
/// back the byte count and the data reversed, then closes.
pub async fn half_close_server(addr: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut b = Vec::new();
                if s.read_to_end(&mut b).await.is_err() {
                    return;
                }
                b.reverse();
                let _ = s.write_all(format!("{}:", b.len()).as_bytes()).await;
                let _ = s.write_all(&b).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}
