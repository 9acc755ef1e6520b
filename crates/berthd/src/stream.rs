//! berthd's side of the streaming server: Exec and Attach through the
//! pod's monitor (which hands over the process's stdio ends), PortForward
//! by connecting from inside the pod's network namespace.

use berth_cri::daemon::Daemon;
use berth_monitor::proto::{Client, Request, Response};
use berth_streaming::{AsyncReadWrite, Backend, BoxFuture, Stdio};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub struct StreamBackend {
    pub d: Arc<Daemon>,
}

fn reader(fd: OwnedFd) -> Box<dyn AsyncRead + Send + Unpin> {
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd.try_clone().expect("dup")) {
        Ok(r) => Box::new(r),
        // A pty master is not a pipe: read it on the blocking pool.
        Err(_) => Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))),
    }
}

fn writer(fd: OwnedFd) -> Box<dyn AsyncWrite + Send + Unpin> {
    match tokio::net::unix::pipe::Sender::from_owned_fd(fd.try_clone().expect("dup")) {
        Ok(w) => Box::new(w),
        Err(_) => Box::new(tokio::fs::File::from_std(std::fs::File::from(fd))),
    }
}

/// Copies `from` to `to` until EOF, then closes `to`.
async fn pump(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    mut to: Box<dyn AsyncWrite + Send + Unpin>,
) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Drains `from` (a process must never block on output nobody wants).
async fn drain(mut from: Box<dyn AsyncRead + Send + Unpin>) {
    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
}

struct Target {
    runtime: Option<berth_monitor::proto::ExternalRuntime>,
    pod_dir: PathBuf,
    bundle: PathBuf,
    id: String,
}

impl StreamBackend {
    fn target(&self, container_id: &str) -> Result<Target, String> {
        let c = self
            .d
            .find_container(container_id)
            .map_err(|e| e.to_string())?;
        let p = self.d.find_pod(&c.pod_id).map_err(|e| e.to_string())?;
        Ok(Target {
            runtime: self.d.handler(&p.runtime_handler).external(),
            pod_dir: p.dir,
            bundle: c.bundle,
            id: c.id,
        })
    }
}

/// Wires a session's streams to the process's fds; returns when output ended.
async fn wire(io: Stdio, tty: bool, fds: Vec<OwnedFd>, has_stdin: bool) {
    let mut it = fds.into_iter();
    let Stdio {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let mut tasks = Vec::new();
    let out_fd = it.next();
    let err_fd = if tty { None } else { it.next() };
    let in_fd = if has_stdin { it.next() } else { None };
    if let (Some(Ok(fd)), Some(mut r)) = (out_fd.as_ref().map(|f| f.try_clone()), resize) {
        tokio::spawn(async move {
            while let Some(sz) = r.recv().await {
                berth_oci::console::set_size(&fd, sz.height, sz.width);
            }
        });
    }
    if let Some(fd) = out_fd {
        let from = reader(fd);
        tasks.push(match stdout {
            Some(to) => tokio::spawn(pump(from, to)),
            None => tokio::spawn(drain(from)),
        });
    }
    if let Some(fd) = err_fd {
        let from = reader(fd);
        tasks.push(match stderr {
            Some(to) => tokio::spawn(pump(from, to)),
            None => tokio::spawn(drain(from)),
        });
    }
    if let (Some(fd), Some(from)) = (in_fd, stdin) {
        // Not awaited: stdin may stay open after the output ended.
        tokio::spawn(pump(from, writer(fd)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

impl Backend for StreamBackend {
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<i32, String>> {
        let t = self.target(container_id);
        let cmd = cmd.to_vec();
        Box::pin(async move {
            let t = t?;
            let spec: serde_json::Value = serde_json::from_slice(
                &std::fs::read(t.bundle.join("config.json"))
                    .map_err(|e| format!("container spec: {e}"))?,
            )
            .map_err(|e| e.to_string())?;
            let mut process = spec["process"].clone();
            process["args"] = serde_json::json!(cmd);
            process["terminal"] = serde_json::json!(tty);
            if let Some(env) = process["env"].as_array_mut() {
                if tty
                    && !env
                        .iter()
                        .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
                {
                    env.push(serde_json::json!("TERM=xterm"));
                }
            }
            let has_stdin = io.stdin.is_some();
            let client = Client::new(&t.pod_dir);
            let req = Request::Exec {
                id: t.id.clone(),
                process,
                stdin: has_stdin,
                runtime: t.runtime.clone(),
            };
            let (resp, fds) = tokio::task::spawn_blocking(move || client.call(&req))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let Response::ExecStarted { pid } = resp else {
                return Err(format!("exec: unexpected reply {resp:?}"));
            };
            // With a tty, stdin goes to the pty master as well.
            let fds = if tty && has_stdin {
                let m = fds.into_iter().next().ok_or("exec: no pty")?;
                let dup = m.try_clone().map_err(|e| e.to_string())?;
                vec![m, dup]
            } else {
                fds
            };
            wire(io, tty, fds, has_stdin).await;
            let client = Client::new(&t.pod_dir);
            let exit = tokio::task::spawn_blocking(move || client.call(&Request::WaitExec { pid }))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            match exit.0 {
                Response::Exited(x) => Ok(x.code),
                r => Err(format!("exec: unexpected reply {r:?}")),
            }
        })
    }

    fn attach(
        &self,
        container_id: &str,
        _tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<(), String>> {
        let t = self.target(container_id);
        Box::pin(async move {
            let t = t?;
            let client = Client::new(&t.pod_dir);
            let id = t.id.clone();
            let (resp, fds) =
                tokio::task::spawn_blocking(move || client.call(&Request::Attach { id }))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            let Response::Attached { tty, stdin } = resp else {
                return Err(format!("attach: unexpected reply {resp:?}"));
            };
            wire(io, tty, fds, stdin).await;
            Ok(())
        })
    }

    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn AsyncReadWrite>, String>> {
        // A host-network pod's ports are the node's: dial them from here.
        let netns = self.d.find_pod(pod_id).map(|p| p.netns);
        Box::pin(async move {
            let netns = netns.map_err(|e| e.to_string())?;
            let s = berth_streaming::netns::dial(netns.as_deref(), port, DIAL_TIMEOUT)
                .await
                .map_err(|e| format!("port-forward to port {port}: {e}"))?;
            Ok(Box::new(s) as Box<dyn AsyncReadWrite>)
        })
    }
}

/// How long a port-forward connection may take to be accepted.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn to_request(r: berth_cri::StreamRequest) -> berth_streaming::Request {
    use berth_cri::StreamRequest as S;
    use berth_streaming::Request as R;
    match r {
        S::Exec {
            container_id,
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
        } => R::Exec {
            container_id,
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
        },
        S::Attach {
            container_id,
            tty,
            stdin,
            stdout,
            stderr,
        } => R::Attach {
            container_id,
            tty,
            stdin,
            stdout,
            stderr,
        },
        S::PortForward { pod_id, ports } => R::PortForward { pod_id, ports },
    }
}
