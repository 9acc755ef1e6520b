//! The client side of both protocols: exec/attach over SPDY or WebSocket
//! with a chosen subprotocol, and port-forward (used by the tests and by
//! `berthctl exec/attach/port-forward`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::mux::{MuxStream, RecvHalf, SendHalf};
use crate::spdy::conn::SpdyConn;
use crate::status::{self, Outcome};
use crate::ws::conn::{WsConn, WsOptions};
use crate::{protocol, Config, TermSize};

/// A failed request: the HTTP status when the server answered with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ClientError {}

fn err(message: impl Into<String>) -> ClientError {
    ClientError {
        status: None,
        message: message.into(),
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        err(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Spdy,
    WebSocket,
}

/// A socket whose first bytes were already read along with the HTTP response.
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Splits `http://host:port/path` into the address and the path.
fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| err(format!("url {url:?}: only http:// is supported")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(err(format!("url {url:?} has no host")));
    }
    Ok((host.to_string(), path.to_string()))
}

/// Sends the upgrade request; returns the socket and the negotiated protocol.
pub async fn upgrade(
    url: &str,
    transport: Transport,
    protocols: &[&str],
) -> Result<(Prefixed, String), ClientError> {
    let (host, path) = split_url(url)?;
    let mut io = TcpStream::connect(&host)
        .await
        .map_err(|e| err(format!("connect {host}: {e}")))?;
    let _ = io.set_nodelay(true);
    let mut req = String::new();
    let key = base64::engine::general_purpose::STANDARD.encode(crate::token::random_bytes::<16>());
    match transport {
        Transport::Spdy => {
            req.push_str(&format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"));
            for p in protocols {
                req.push_str(&format!("{}: {p}\r\n", protocol::HEADER_PROTOCOL));
            }
            req.push_str("Content-Length: 0\r\n\r\n");
        }
        Transport::WebSocket => {
            req.push_str(&format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            ));
            if !protocols.is_empty() {
                req.push_str(&format!(
                    "Sec-WebSocket-Protocol: {}\r\n",
                    protocols.join(", ")
                ));
            }
            req.push_str("\r\n");
        }
    }
    io.write_all(req.as_bytes()).await?;
    // Read the response head (bounded).
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(err("connection closed before the HTTP response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 << 10 {
            return Err(err("HTTP response head too large"));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf[..head_len])
        .map_err(|e| err(format!("bad HTTP response: {e}")))?;
    let code = resp.code.unwrap_or(0);
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if code != 101 {
        let mut body = buf[head_len..].to_vec();
        let want = get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0)
            .min(4096);
        while body.len() < want {
            let mut chunk = [0u8; 1024];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        return Err(ClientError {
            status: Some(code),
            message: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    let upgrade = get("upgrade").unwrap_or_default();
    let negotiated = match transport {
        Transport::Spdy => {
            if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
                return Err(err(format!("server upgraded to {upgrade:?}, not SPDY/3.1")));
            }
            get(protocol::HEADER_PROTOCOL).unwrap_or_else(|| protocol::V1.to_string())
        }
        Transport::WebSocket => {
            if !upgrade.eq_ignore_ascii_case("websocket") {
                return Err(err(format!(
                    "server upgraded to {upgrade:?}, not websocket"
                )));
            }
            if get("sec-websocket-accept").as_deref()
                != Some(crate::server::websocket_accept(&key).as_str())
            {
                return Err(err("wrong Sec-WebSocket-Accept"));
            }
            get("sec-websocket-protocol").unwrap_or_default()
        }
    };
    let prefix = Bytes::copy_from_slice(&buf[head_len..]);
    Ok((Prefixed { prefix, io }, negotiated))
}

/// Which streams to ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

enum Conn {
    Spdy(SpdyConn),
    Ws(WsConn),
}

/// A running exec or attach.
pub struct RemoteCommand {
    pub protocol: String,
    pub stdin: Option<SendHalf>,
    pub stdout: Option<RecvHalf>,
    pub stderr: Option<RecvHalf>,
    resize: Option<SendHalf>,
    error: RecvHalf,
    json: bool,
    conn: Conn,
}

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

fn limits() -> (crate::mux::Limits, crate::spdy::conn::SpdyLimits) {
    let c = Config::default();
    (c.mux_limits(), c.spdy_limits())
}

/// Starts an exec or attach at `url` (from the CRI response), offering `protocols`.
pub async fn remote_command(
    url: &str,
    transport: Transport,
    protocols: &[&str],
    opts: ExecOptions,
) -> Result<RemoteCommand, ClientError> {
    let (io, proto) = upgrade(url, transport, protocols).await?;
    let (lim, spdy_lim) = limits();
    let stderr = opts.stderr && !opts.tty;
    match transport {
        Transport::Spdy => {
            let conn = SpdyConn::start(io, false, lim, spdy_lim);
            let open = |kind: &'static str| {
                let conn = &conn;
                async move {
                    conn.open(&[("streamType", kind)], OPEN_TIMEOUT)
                        .await
                        .map_err(|e| err(format!("opening the {kind} stream: {e}")))
                }
            };
            let error = open("error").await?.recv_only();
            let stdin = if opts.stdin {
                Some(open("stdin").await?.send_only())
            } else {
                None
            };
            let stdout = if opts.stdout {
                Some(open("stdout").await?.recv_only())
            } else {
                None
            };
            let stderr = if stderr {
                Some(open("stderr").await?.recv_only())
            } else {
                None
            };
            let resize = if opts.tty && proto != protocol::V1 && proto != protocol::V2 {
                Some(open("resize").await?.send_only())
            } else {
                None
            };
            Ok(RemoteCommand {
                json: proto == protocol::V4 || proto == protocol::V5,
                protocol: proto,
                stdin,
                stdout,
                stderr,
                resize,
                error,
                conn: Conn::Spdy(conn),
            })
        }
        Transport::WebSocket => {
            let base64 = proto == protocol::BASE64 || proto == protocol::V4_BASE64;
            let wopts = WsOptions {
                server: false,
                base64,
                close_signal: proto == protocol::V5,
                max_message: Config::default().max_frame,
            };
            let (conn, streams) = WsConn::start(io, wopts, lim, 5);
            let mut it = streams.into_iter();
            let (s0, s1, s2, s3, s4) = (
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
            );
            let stdin = if opts.stdin {
                Some(s0.send_only())
            } else {
                drop(s0.recv_only_silent());
                None
            };
            let stdout = Some(s1.recv_only_silent()).filter(|_| opts.stdout);
            let stderr = Some(s2.recv_only_silent()).filter(|_| stderr);
            let error = s3.recv_only_silent();
            let resize = if opts.tty {
                Some(s4.send_only())
            } else {
                drop(s4.recv_only_silent());
                None
            };
            let json =
                proto == protocol::V4 || proto == protocol::V4_BASE64 || proto == protocol::V5;
            Ok(RemoteCommand {
                json,
                protocol: proto,
                stdin,
                stdout,
                stderr,
                resize,
                error,
                conn: Conn::Ws(conn),
            })
        }
    }
}

impl RemoteCommand {
    /// Sends a terminal size (v3+ over SPDY, any WebSocket protocol).
    pub async fn resize(&mut self, size: TermSize) -> io::Result<()> {
        let r = self
            .resize
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no resize stream"))?;
        let mut b = serde_json::to_vec(&size).unwrap();
        b.push(b'\n');
        r.write_all(&b).await
    }

    /// Waits for the status on the error stream, then closes the connection.
    pub async fn wait(self) -> Result<Outcome, ClientError> {
        let RemoteCommand {
            mut error,
            json,
            conn,
            resize,
            stdin,
            ..
        } = self;
        drop((resize, stdin));
        let mut b = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match error.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > 64 << 10 {
                        return Err(err("error stream too long"));
                    }
                }
                Err(e) => return Err(err(format!("reading the error stream: {e}"))),
            }
        }
        let failed = match &conn {
            Conn::Spdy(c) => c.mux().error(),
            Conn::Ws(c) => c.mux().error(),
        };
        match conn {
            Conn::Spdy(c) => c.close(Duration::from_secs(5)).await,
            Conn::Ws(c) => c.close(Duration::from_secs(5)).await,
        }
        if b.is_empty() && json {
            // v4 always writes a status; none means the session broke.
            return Err(err(format!(
                "no status from the server ({})",
                failed.unwrap_or_else(|| "connection closed".into())
            )));
        }
        Ok(if json {
            status::parse_json(&b)
        } else {
            status::parse_text(&b)
        })
    }
}

/// A SPDY port-forward connection (`portforward.k8s.io`): one data and one
/// error stream per forwarded connection.
pub struct PortForward {
    conn: SpdyConn,
    next: AtomicU64,
}

pub async fn port_forward(url: &str) -> Result<PortForward, ClientError> {
    let (io, proto) = upgrade(url, Transport::Spdy, &[protocol::PORT_FORWARD]).await?;
    if proto != protocol::PORT_FORWARD {
        return Err(err(format!("server chose {proto:?}")));
    }
    let (lim, spdy_lim) = limits();
    Ok(PortForward {
        conn: SpdyConn::start(io, false, lim, spdy_lim),
        next: AtomicU64::new(0),
    })
}

/// The same over SPDY tunnelled in WebSocket messages
/// (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31+ uses).
pub async fn port_forward_tunnel(url: &str) -> Result<PortForward, ClientError> {
    let (io, proto) = upgrade(
        url,
        Transport::WebSocket,
        &[protocol::SPDY_TUNNEL_PORT_FORWARD],
    )
    .await?;
    if proto != protocol::SPDY_TUNNEL_PORT_FORWARD {
        return Err(err(format!("server chose {proto:?}")));
    }
    let (lim, spdy_lim) = limits();
    let (ours, theirs) = tokio::io::duplex(lim.stream_buf);
    tokio::spawn(crate::ws::tunnel::run(
        io,
        theirs,
        Config::default().max_frame,
        false,
    ));
    Ok(PortForward {
        conn: SpdyConn::start(ours, false, lim, spdy_lim),
        next: AtomicU64::new(0),
    })
}

impl PortForward {
    /// Opens a connection to `port` in the pod.
    pub async fn open(&self, port: u16) -> io::Result<Forwarded> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let p = port.to_string();
        let error = self
            .conn
            .open(
                &[("streamType", "error"), ("port", &p), ("requestID", &id)],
                OPEN_TIMEOUT,
            )
            .await?
            .recv_only();
        let data = self
            .conn
            .open(
                &[("streamType", "data"), ("port", &p), ("requestID", &id)],
                OPEN_TIMEOUT,
            )
            .await?;
        Ok(Forwarded { data, error })
    }

    pub async fn close(self) {
        self.conn.close(Duration::from_secs(5)).await
    }
}

/// One forwarded connection: read and write it like a socket; `shutdown`
/// half-closes it.
pub struct Forwarded {
    pub data: MuxStream,
    error: RecvHalf,
}

impl Forwarded {
    /// The server's error message for this connection, if any (waits for the error stream to end).
    pub async fn error(&mut self) -> Option<String> {
        read_error(&mut self.error).await
    }
}

async fn read_error(r: &mut RecvHalf) -> Option<String> {
    let mut b = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 || b.len() > 64 << 10 {
            break;
        }
        b.extend_from_slice(&chunk[..n]);
    }
    (!b.is_empty()).then(|| String::from_utf8_lossy(&b).into_owned())
}

impl AsyncRead for Forwarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().data).poll_read(cx, buf)
    }
}

impl AsyncWrite for Forwarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().data).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().data).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().data).poll_shutdown(cx)
    }
}

/// A WebSocket port-forward: one data and one error channel per port, each
/// starting with the port number (little-endian), which is checked here.
pub struct WsPortForward {
    conn: WsConn,
    /// Per requested port: the data stream and the error channel.
    pub ports: Vec<(u16, MuxStream, RecvHalf)>,
}

pub async fn port_forward_ws(
    url: &str,
    ports: &[u16],
    protocols: &[&str],
) -> Result<WsPortForward, ClientError> {
    let (io, proto) = upgrade(url, Transport::WebSocket, protocols).await?;
    let base64 = proto == protocol::V4_BASE64;
    let (lim, _) = limits();
    let wopts = WsOptions {
        server: false,
        base64,
        close_signal: false,
        max_message: Config::default().max_frame,
    };
    let (conn, streams) = WsConn::start(io, wopts, lim, ports.len() * 2);
    let mut it = streams.into_iter();
    let mut out = Vec::new();
    for &port in ports {
        let mut data = it.next().unwrap();
        let mut error = it.next().unwrap().recv_only_silent();
        let mut p = [0u8; 2];
        data.read_exact(&mut p)
            .await
            .map_err(|e| err(format!("reading the data channel's port: {e}")))?;
        if u16::from_le_bytes(p) != port {
            return Err(err(format!(
                "data channel names port {}, expected {port}",
                u16::from_le_bytes(p)
            )));
        }
        error
            .read_exact(&mut p)
            .await
            .map_err(|e| err(format!("reading the error channel's port: {e}")))?;
        out.push((port, data, error));
    }
    Ok(WsPortForward { conn, ports: out })
}

impl WsPortForward {
    pub async fn error(r: &mut RecvHalf) -> Option<String> {
        read_error(r).await
    }

    pub async fn close(self) {
        drop(self.ports);
        self.conn.close(Duration::from_secs(5)).await
    }
}
