//! Server sessions: remote commands and port forwarding over an upgraded
//! connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::mux::{Mux, MuxStream, RecvHalf, SendHalf};
use crate::server::Inner;
use crate::spdy::conn::SpdyConn;
use crate::spdy::frame::rst;
use crate::status::{self, Outcome};
use crate::ws::conn::{WsConn, WsOptions};
use crate::{protocol, Request, Stdio, TermSize};

/// The streams of a remote command, whatever carries them.
struct Channels {
    stdin: Option<RecvHalf>,
    stdout: Option<SendHalf>,
    stderr: Option<SendHalf>,
    error: SendHalf,
    resize: Option<RecvHalf>,
    /// v4 and later: the status is JSON, also on success.
    json_status: bool,
}

struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn wanted(req: &Request) -> Wanted {
    let (stdin, stdout, stderr, tty) = match req {
        Request::Exec {
            stdin,
            stdout,
            stderr,
            tty,
            ..
        }
        | Request::Attach {
            stdin,
            stdout,
            stderr,
            tty,
            ..
        } => (*stdin, *stdout, *stderr, *tty),
        Request::PortForward { .. } => (false, false, false, false),
    };
    // A terminal merges stderr into stdout (CRI: tty excludes stderr).
    Wanted {
        stdin,
        stdout,
        stderr: stderr && !tty,
        tty,
    }
}

pub(crate) fn spdy<IO>(
    inner: Arc<Inner>,
    io: IO,
    req: Request,
    proto: String,
) -> crate::BoxFuture<'static, ()>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    Box::pin(spdy_session(inner, io, req, proto))
}

async fn spdy_session<IO>(inner: Arc<Inner>, io: IO, req: Request, proto: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = SpdyConn::start(io, true, inner.cfg.mux_limits(), inner.cfg.spdy_limits());
    if let Request::PortForward { pod_id, ports } = req {
        spdy_port_forward(&inner, &conn, pod_id, ports).await;
        conn.close(inner.cfg.linger).await;
        return;
    }
    let w = wanted(&req);
    let resize = w.tty && proto != protocol::V1 && proto != protocol::V2;
    let mut got: HashMap<String, MuxStream> = HashMap::new();
    let need = |got: &HashMap<String, MuxStream>| {
        got.contains_key("error")
            && (!w.stdin || got.contains_key("stdin"))
            && (!w.stdout || got.contains_key("stdout"))
            && (!w.stderr || got.contains_key("stderr"))
            && (!resize || got.contains_key("resize"))
    };
    let deadline = Instant::now() + inner.cfg.stream_creation_timeout;
    while !need(&got) {
        let s = match tokio::time::timeout_at(deadline.into(), conn.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => return conn.close(inner.cfg.linger).await,
            Err(_) => {
                tracing::debug!("client did not create the expected streams in time");
                return conn.close(inner.cfg.linger).await;
            }
        };
        let kind = s.header("streamtype").unwrap_or_default();
        match kind.as_str() {
            "error" | "stdin" | "stdout" | "stderr" | "resize" if !got.contains_key(&kind) => {
                got.insert(kind, s);
            }
            other => {
                tracing::debug!(stream_type = other, "unexpected stream");
                s.reset(rst::REFUSED_STREAM);
            }
        }
    }
    // Streams beyond the expected ones are refused.
    let mux = conn.mux().clone();
    let extra = {
        let mux2 = mux.clone();
        tokio::spawn(async move {
            while let Some(s) = mux2.accept().await {
                s.reset(rst::REFUSED_STREAM);
            }
        })
    };
    // The server never writes to stdin or resize, but must not end them
    // either: client-go closes its stdin when it sees our side end (a
    // go-dockerclient convention), which would cut the upload short. Their
    // outbound halves live until the session is over.
    let mut keep: Vec<SendHalf> = Vec::new();
    let mut inbound = |kind: &str, wanted: bool| {
        let (r, w) = got.remove(kind).filter(|_| wanted)?.into_split();
        keep.push(w);
        Some(r)
    };
    let stdin = inbound("stdin", w.stdin);
    let resize_in = inbound("resize", resize);
    let outbound = |s: Option<MuxStream>| s.map(MuxStream::send_only);
    let stdout = outbound(got.remove("stdout").filter(|_| w.stdout));
    let stderr = outbound(got.remove("stderr").filter(|_| w.stderr));
    let error = got.remove("error").unwrap().send_only();
    drop(got);
    let ch = Channels {
        stdin,
        stdout,
        stderr,
        error,
        resize: resize_in,
        json_status: proto == protocol::V4 || proto == protocol::V5,
    };
    run_remote(&inner, &mux, req, ch).await;
    extra.abort();
    drop(keep);
    conn.close(inner.cfg.linger).await;
}

/// Reads JSON terminal sizes from the resize stream.
async fn pump_resize(mut r: RecvHalf, tx: mpsc::Sender<TermSize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    used = it.byte_offset();
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!("bad resize message: {e}");
                    return;
                }
                None => {
                    used = buf.len();
                    break;
                }
            }
        }
        buf.drain(..used);
        // One size is a few dozen bytes; anything longer is garbage.
        if buf.len() > 4096 {
            return;
        }
    }
}

async fn run_remote(inner: &Inner, mux: &Arc<Mux>, req: Request, ch: Channels) {
    let Channels {
        stdin,
        stdout,
        stderr,
        mut error,
        resize,
        json_status,
    } = ch;
    let out_ids: Vec<u32> = stdout
        .iter()
        .chain(stderr.iter())
        .map(SendHalf::id)
        .collect();
    let resize_rx = resize.map(|r| {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(pump_resize(r, tx));
        rx
    });
    let io = Stdio {
        stdin: stdin.map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        stdout: stdout.map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
        stderr: stderr.map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
        resize: resize_rx,
    };
    let (cmd, fut): (Vec<String>, crate::BoxFuture<'static, Result<i32, String>>) = match &req {
        Request::Exec {
            container_id,
            cmd,
            tty,
            ..
        } => (cmd.clone(), inner.backend.exec(container_id, cmd, *tty, io)),
        Request::Attach {
            container_id, tty, ..
        } => {
            let f = inner.backend.attach(container_id, *tty, io);
            (Vec::new(), Box::pin(async move { f.await.map(|()| 0) }))
        }
        Request::PortForward { .. } => unreachable!(),
    };
    let gone = mux.wait_until(|st| st.dead);
    let outcome = tokio::select! {
        r = fut => match r {
            Ok(0) => Outcome::Success,
            Ok(code) => Outcome::ExitCode(code),
            Err(e) => Outcome::Failure(match req {
                Request::Exec { .. } => format!("error executing command in container: {e}"),
                _ => format!("error attaching to container: {e}"),
            }),
        },
        _ = gone => {
            tracing::debug!("client went away; the {} request is cancelled", req.path());
            return;
        }
    };
    // The status follows all output.
    let drained = mux.wait_until(|st| {
        st.dead
            || out_ids
                .iter()
                .all(|id| st.chans.get(id).is_none_or(|c| c.out_len == 0))
    });
    let _ = tokio::time::timeout(inner.cfg.linger, drained).await;
    let body = if json_status {
        match &outcome {
            Outcome::Success => status::success(),
            Outcome::ExitCode(c) => status::exit_code(&cmd, *c),
            Outcome::Failure(m) => status::internal_error(m),
        }
    } else {
        status::text(&outcome, &cmd)
    };
    if !body.is_empty() {
        let _ = error.write_all(&body).await;
    }
    let _ = error.shutdown().await;
}

async fn spdy_port_forward(inner: &Arc<Inner>, conn: &SpdyConn, pod: String, ports: Vec<u16>) {
    struct Pending {
        data: Option<MuxStream>,
        error: Option<MuxStream>,
        port: u16,
        since: Instant,
    }
    let mut pending: HashMap<String, Pending> = HashMap::new();
    while let Some(s) = conn.accept().await {
        // Pairs that never completed are dropped after the creation timeout.
        let timeout = inner.cfg.stream_creation_timeout;
        pending.retain(|_, p| p.since.elapsed() < timeout);
        let kind = s.header("streamtype").unwrap_or_default();
        let Some(port) = s
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
        else {
            tracing::debug!("port-forward stream without a valid port header");
            s.reset(rst::PROTOCOL_ERROR);
            continue;
        };
        // Old clients send no requestID: pair by stream id (error n, data n+2).
        let request_id = match s.header("requestid") {
            Some(r) => r,
            None => match kind.as_str() {
                "error" => s.id().to_string(),
                _ => s.id().saturating_sub(2).to_string(),
            },
        };
        let entry = pending.entry(request_id.clone()).or_insert(Pending {
            data: None,
            error: None,
            port,
            since: Instant::now(),
        });
        let slot = match kind.as_str() {
            "data" => &mut entry.data,
            "error" => &mut entry.error,
            _ => {
                s.reset(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        if slot.is_some() || entry.port != port {
            s.reset(rst::PROTOCOL_ERROR);
            continue;
        }
        *slot = Some(s);
        if entry.data.is_some() && entry.error.is_some() {
            let p = pending.remove(&request_id).unwrap();
            let inner = inner.clone();
            let pod = pod.clone();
            let allowed = ports.is_empty() || ports.contains(&p.port);
            tokio::spawn(async move {
                let (_, err_w) = p.error.unwrap().into_split();
                forward(&inner, &pod, p.port, allowed, p.data.unwrap(), err_w).await
            });
        }
    }
}

/// Copies between a client stream and a connection in the pod, each
/// direction ending with a half-close.
async fn forward(
    inner: &Inner,
    pod: &str,
    port: u16,
    allowed: bool,
    data: MuxStream,
    mut error: SendHalf,
) {
    let target = if allowed {
        inner.backend.port_forward(pod, port).await
    } else {
        Err(format!(
            "port {port} is not among the ports of the port-forward request"
        ))
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            tracing::debug!("{msg}");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = error.shutdown().await;
            drop(data);
            return;
        }
    };
    let (mut data_r, mut data_w) = data.into_split();
    let (mut pod_r, mut pod_w) = tokio::io::split(target);
    let up = async {
        let r = tokio::io::copy(&mut data_r, &mut pod_w).await;
        let _ = pod_w.shutdown().await;
        r
    };
    // Clients (kubectl) wait for the error stream to end once the pod's side
    // ended, then reset the pair; the other direction runs until the client
    // half-closes or resets, so a pod that half-closed can still read.
    let down = async {
        let r = tokio::io::copy(&mut pod_r, &mut data_w).await;
        let _ = data_w.shutdown().await;
        let _ = error.shutdown().await;
        r
    };
    let (u, d) = tokio::join!(up, down);
    if let Err(e) = u.and(d) {
        tracing::debug!(port, "port-forward copy ended: {e}");
    }
}

pub(crate) async fn websocket<IO>(inner: Arc<Inner>, io: IO, req: Request, proto: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    if proto == protocol::SPDY_TUNNEL_PORT_FORWARD {
        let (ours, theirs) = tokio::io::duplex(inner.cfg.stream_buffer.max(64 << 10));
        let tunnel = tokio::spawn(crate::ws::tunnel::run(
            io,
            theirs,
            inner.cfg.max_frame,
            true,
        ));
        spdy(inner, ours, req, protocol::PORT_FORWARD.to_string()).await;
        let _ = tunnel.await;
        return;
    }
    let base64 = proto == protocol::BASE64 || proto == protocol::V4_BASE64;
    let opts = WsOptions {
        server: true,
        base64,
        close_signal: false,
        max_message: inner.cfg.max_frame,
    };
    if let Request::PortForward { pod_id, ports } = req {
        let (conn, streams) = WsConn::start(io, opts, inner.cfg.mux_limits(), ports.len() * 2);
        ws_port_forward(&inner, &conn, streams, pod_id, ports).await;
        conn.close(inner.cfg.linger).await;
        return;
    }
    let w = wanted(&req);
    let (conn, streams) = WsConn::start(io, opts, inner.cfg.mux_limits(), 5);
    let mut it = streams.into_iter().map(MuxStream::into_split);
    let (stdin_r, _) = it.next().unwrap();
    let (_, stdout_w) = it.next().unwrap();
    let (_, stderr_w) = it.next().unwrap();
    let (_, error_w) = it.next().unwrap();
    let (resize_r, _) = it.next().unwrap();
    // An empty message on the first writable channel tells the client we are ready.
    let first = if w.stdout {
        1
    } else if w.stderr {
        2
    } else {
        3
    };
    conn.send_raw(first, &[], opts);
    let ch = Channels {
        stdin: w.stdin.then_some(stdin_r),
        stdout: w.stdout.then_some(stdout_w),
        stderr: w.stderr.then_some(stderr_w),
        error: error_w,
        resize: w.tty.then_some(resize_r),
        json_status: proto == protocol::V4 || proto == protocol::V4_BASE64 || proto == protocol::V5,
    };
    let mux = conn.mux().clone();
    run_remote(&inner, &mux, req, ch).await;
    conn.close(inner.cfg.linger).await;
}

async fn ws_port_forward(
    inner: &Arc<Inner>,
    _conn: &WsConn,
    streams: Vec<MuxStream>,
    pod: String,
    ports: Vec<u16>,
) {
    let mut tasks = Vec::new();
    let mut it = streams.into_iter();
    for port in ports {
        let data = it.next().unwrap();
        let (_, mut err_w) = it.next().unwrap().into_split();
        let inner = inner.clone();
        let pod = pod.clone();
        tasks.push(tokio::spawn(async move {
            // Each channel starts with its port, little-endian.
            let (data_r, mut data_w) = data.into_split();
            let _ = data_w.write_all(&port.to_le_bytes()).await;
            let _ = err_w.write_all(&port.to_le_bytes()).await;
            let data = Rejoined {
                r: data_r,
                w: data_w,
            };
            forward_ws(&inner, &pod, port, data, err_w).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

struct Rejoined {
    r: RecvHalf,
    w: SendHalf,
}

async fn forward_ws(inner: &Inner, pod: &str, port: u16, data: Rejoined, mut error: SendHalf) {
    let target = match inner.backend.port_forward(pod, port).await {
        Ok(t) => t,
        Err(e) => {
            let _ = error
                .write_all(format!("error forwarding port {port} to pod {pod}: {e}").as_bytes())
                .await;
            return;
        }
    };
    let Rejoined {
        r: mut data_r,
        w: mut data_w,
    } = data;
    let (mut pod_r, mut pod_w) = tokio::io::split(target);
    let up = async {
        let _ = tokio::io::copy(&mut data_r, &mut pod_w).await;
        let _ = pod_w.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut pod_r, &mut data_w).await;
        let _ = data_w.flush().await;
    };
    // A WebSocket channel cannot be half-closed: once the pod's side ended,
    // the client gets a moment to finish, then the forward ends (and with the
    // last one, the connection).
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {
            let _ = tokio::time::timeout(Duration::from_secs(1), up).await;
        }
        _ = &mut up => down.await,
    }
}
