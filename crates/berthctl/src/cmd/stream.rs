//! exec -i/-t, attach and port-forward: the CRI call returns a URL on the
//! runtime's streaming server, spoken to with berth-streaming's client
//! (SPDY, the newest channel protocol the server accepts).

use crate::client::Cri;
use anyhow::{Context, Result};
use berth_streaming::client::{self, ExecOptions, RemoteCommand, Transport};
use berth_streaming::status::Outcome;
use berth_streaming::{protocol, TermSize};
use std::io::IsTerminal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOLS: &[&str] = &[protocol::V4, protocol::V3, protocol::V2, protocol::V1];

/// Puts the local terminal in raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable(tty: bool) -> RawMode {
        if !tty || !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return RawMode(None);
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: setting attributes of our own stdin.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the attributes read in enable().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn term_size() -> Option<TermSize> {
    // SAFETY: winsize is plain data filled by the ioctl.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ on stdout only reads the size.
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut w) } != 0 || w.ws_col == 0 {
        return None;
    }
    Some(TermSize {
        width: w.ws_col,
        height: w.ws_row,
    })
}

fn stream_err(e: client::ClientError) -> anyhow::Error {
    anyhow::anyhow!("streaming session: {e}")
}

/// Copies local stdin/stdout/stderr to and from the session; returns the
/// command's exit code.
async fn pump(mut rc: RemoteCommand, tty: bool) -> Result<Status> {
    let _raw = RawMode::enable(tty);
    if tty {
        if let Some(sz) = term_size() {
            let _ = rc.resize(sz).await;
        }
    }
    let stdin_task = rc.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = w.flush().await;
                    }
                }
            }
            // End of input: half-close so the remote side sees EOF.
            let _ = w.shutdown().await;
        })
    });
    let out_task = rc.stdout.take().map(|mut r| {
        tokio::spawn(async move {
            let mut o = tokio::io::stdout();
            let _ = tokio::io::copy(&mut r, &mut o).await;
            let _ = o.flush().await;
        })
    });
    let err_task = rc.stderr.take().map(|mut r| {
        tokio::spawn(async move {
            let mut o = tokio::io::stderr();
            let _ = tokio::io::copy(&mut r, &mut o).await;
            let _ = o.flush().await;
        })
    });
    let outcome = rc.wait().await;
    for t in [out_task, err_task].into_iter().flatten() {
        let _ = t.await;
    }
    if let Some(t) = stdin_task {
        // A terminal never reaches EOF by itself.
        t.abort();
    }
    Ok(match outcome {
        Ok(Outcome::Success) => Status::Code(0),
        Ok(Outcome::ExitCode(c)) => Status::Code(c),
        Ok(Outcome::Failure(m)) => anyhow::bail!("the runtime reported: {m}"),
        // containerd resets the status stream as it closes the session, and
        // the client may lose the status it carried.
        Err(e) if e.message.contains("stream reset") => Status::Unknown,
        Err(e) => return Err(stream_err(e)),
    })
}

/// How a streamed command ended.
enum Status {
    Code(i32),
    Unknown,
}

fn unknown_status() -> anyhow::Error {
    crate::coded(
        crate::EXIT_ERROR,
        "the session ended without the command's exit status (the server reset the status stream)",
    )
}

pub async fn exec(c: &mut Cri, id: &str, cmd: Vec<String>, stdin: bool, tty: bool) -> Result<i32> {
    let url =
        c.rt.exec(berth_cri_api::v1::ExecRequest {
            container_id: id.to_string(),
            cmd,
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await?
        .into_inner()
        .url;
    let rc = client::remote_command(
        &url,
        Transport::Spdy,
        PROTOCOLS,
        ExecOptions {
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
        },
    )
    .await
    .map_err(stream_err)?;
    match pump(rc, tty).await? {
        Status::Code(c) => Ok(c),
        Status::Unknown => Err(unknown_status()),
    }
}

pub async fn attach(c: &mut Cri, id: &str, stdin: bool, tty: bool) -> Result<i32> {
    let url =
        c.rt.attach(berth_cri_api::v1::AttachRequest {
            container_id: id.to_string(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await?
        .into_inner()
        .url;
    let rc = client::remote_command(
        &url,
        Transport::Spdy,
        PROTOCOLS,
        ExecOptions {
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
        },
    )
    .await
    .map_err(stream_err)?;
    match pump(rc, tty).await? {
        Status::Code(c) => Ok(c),
        // The container's own status says how it ended.
        Status::Unknown => {
            let st = super::containers::status(c, id)
                .await?
                .status
                .unwrap_or_default();
            if st.state == berth_cri_api::v1::ContainerState::ContainerExited as i32 {
                Ok(st.exit_code)
            } else {
                Err(unknown_status())
            }
        }
    }
}

/// `LOCAL:REMOTE` or `PORT` (same on both sides); LOCAL 0 picks a free port.
fn parse_port(s: &str) -> Result<(u16, u16)> {
    let bad = || {
        crate::coded(
            crate::EXIT_USAGE,
            format!("port {s:?}: use LOCAL:REMOTE or PORT"),
        )
    };
    let (l, r) = s.split_once(':').unwrap_or((s, s));
    let r: u16 = r.parse().map_err(|_| bad())?;
    let l: u16 = if l.is_empty() {
        0
    } else {
        l.parse().map_err(|_| bad())?
    };
    if r == 0 {
        return Err(bad());
    }
    Ok((l, r))
}

/// Listens on 127.0.0.1 for each pair until interrupted; each accepted
/// connection gets its own stream to the pod's port.
pub async fn port_forward(c: &mut Cri, pod: &str, ports: &[String]) -> Result<()> {
    let pairs = ports
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>>>()?;
    let url =
        c.rt.port_forward(berth_cri_api::v1::PortForwardRequest {
            pod_sandbox_id: pod.to_string(),
            port: pairs.iter().map(|(_, r)| i32::from(*r)).collect(),
        })
        .await?
        .into_inner()
        .url;
    let pf = std::sync::Arc::new(client::port_forward(&url).await.map_err(stream_err)?);
    let mut tasks = Vec::new();
    for (l, r) in pairs {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", l))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{l}"))?;
        let local = listener.local_addr()?;
        println!("Forwarding from {local} -> {r}");
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    break;
                };
                let pf = pf.clone();
                tokio::spawn(async move {
                    match pf.open(r).await {
                        Ok(mut f) => {
                            let _ = tokio::io::copy_bidirectional(&mut sock, &mut f.data).await;
                            if let Some(e) = f.error().await {
                                eprintln!("berthctl: port {r}: {e}");
                            }
                        }
                        Err(e) => eprintln!("berthctl: port {r}: {e}"),
                    }
                });
            }
        }));
    }
    let _ = tokio::signal::ctrl_c().await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports() {
        assert_eq!(super::parse_port("8080").unwrap(), (8080, 8080));
        assert_eq!(super::parse_port("0:80").unwrap(), (0, 80));
        assert_eq!(super::parse_port(":80").unwrap(), (0, 80));
        assert!(super::parse_port("x:80").is_err());
        assert!(super::parse_port("80:0").is_err());
    }
}
