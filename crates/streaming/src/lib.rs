//! Kubernetes stream protocols for exec, attach and port-forward.
//!
//! berthd's CRI `Exec`/`Attach`/`PortForward` calls mint a one-time URL with
//! [`Server::url_for`]; the client (kubelet, kubectl through the API server,
//! crictl) then upgrades an HTTP/1.1 request on that URL to SPDY/3.1 or to a
//! WebSocket and the server runs the request through a [`Backend`].
//!
//! - SPDY/3.1 (`spdy`): `channel.k8s.io`, `v2.channel.k8s.io`,
//!   `v3.channel.k8s.io` (terminal resize), `v4.channel.k8s.io` (exit status
//!   as JSON), `v5.channel.k8s.io` (as v4; what kubectl offers first) and
//!   `portforward.k8s.io`.
//! - WebSocket (`ws`, RFC 6455): `channel.k8s.io`, `base64.channel.k8s.io`,
//!   `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `v5.channel.k8s.io`
//!   (close signal), port-forward, and SPDY port-forward tunnelled through
//!   WebSocket messages (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+).
//!
//! Everything is bounded: frame and message sizes, inflated header blocks,
//! streams per connection, bytes buffered per stream, pending tokens,
//! connections and sessions, and idle time. [`client`] speaks the same
//! protocols.
//!
//! In berthd:
//!
//! ```text
//! let server = Server::bind(Config { addr, ..Default::default() }, backend).await?;
//! let (streaming, _task) = server.spawn();
//! // CRI Exec: ExecResponse { url: streaming.url_for(Request::Exec { .. })? }
//! // Backend::port_forward: netns::dial(Some(&sandbox_netns_path), port, timeout)
//! ```
//!
//! SPDY flow control: Kubernetes' Go clients do not take part in it, so the
//! server honours windows only for peers that show they do (see
//! [`spdy::conn`]); what it receives is bounded either way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub mod client;
mod mux;
pub mod netns;
mod server;
mod session;
pub mod status;
mod token;

pub mod spdy {
    //! SPDY/3.1 framing, header compression and connections.
    pub mod conn;
    mod dict;
    pub mod frame;
    pub mod zlib;
    pub use dict::dictionary;
}

pub mod ws {
    //! WebSocket framing and channel connections.
    pub mod conn;
    pub mod frame;
    pub(crate) mod tunnel;
}

pub use mux::{MuxStream, RecvHalf, SendHalf};
pub use server::{Server, ServerHandle};
pub use token::TokenError;

/// Subprotocol names.
pub mod protocol {
    pub const V1: &str = "channel.k8s.io";
    pub const V2: &str = "v2.channel.k8s.io";
    pub const V3: &str = "v3.channel.k8s.io";
    pub const V4: &str = "v4.channel.k8s.io";
    pub const V5: &str = "v5.channel.k8s.io";
    pub const BASE64: &str = "base64.channel.k8s.io";
    pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
    pub const PORT_FORWARD: &str = "portforward.k8s.io";
    /// Remote command protocols over SPDY (v5 is v4 there: SPDY closes
    /// streams by itself, and kubelet accepts it too).
    pub const SPDY_REMOTECOMMAND: &[&str] = &[V5, V4, V3, V2, V1];
    /// Remote command protocols over WebSocket.
    pub const WS_REMOTECOMMAND: &[&str] = &[V5, V4, V4_BASE64, V1, BASE64];
    /// SPDY carried inside WebSocket binary messages (kubectl 1.31+ port-forward).
    pub const SPDY_TUNNEL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
    /// Port-forward protocols over WebSocket.
    pub const WS_PORT_FORWARD: &[&str] = &[SPDY_TUNNEL_PORT_FORWARD, PORT_FORWARD, V4, V4_BASE64];
    pub const HEADER_PROTOCOL: &str = "X-Stream-Protocol-Version";
    pub const HEADER_ACCEPTED: &str = "X-Accepted-Stream-Protocol-Versions";
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the server listens (loopback, any port, by default).
    pub addr: SocketAddr,
    /// Base of the URLs handed out (`http://ADDR` when None), for a server
    /// bound to a wildcard address.
    pub base_url: Option<String>,
    /// How long a minted URL stays valid (kubelet: 1 minute).
    pub token_ttl: Duration,
    /// Tokens outstanding at once.
    pub max_tokens: usize,
    /// A connection without traffic in either direction this long is closed.
    pub idle_timeout: Duration,
    /// How long a client has to create the streams of a request.
    pub stream_creation_timeout: Duration,
    /// Concurrent streams per SPDY connection.
    pub max_streams: usize,
    /// Largest frame (SPDY) or message (WebSocket) payload accepted.
    pub max_frame: usize,
    /// Largest header block after decompression.
    pub max_header_block: usize,
    /// Bytes buffered per stream and direction (also the SPDY window).
    pub stream_buffer: usize,
    /// Concurrent HTTP connections, and (counted apart) concurrent upgraded sessions.
    pub max_connections: usize,
    /// How long to wait for a client to close after we did.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            max_tokens: 1000,
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            max_streams: 256,
            max_frame: 1 << 20,
            max_header_block: 64 << 10,
            stream_buffer: 256 << 10,
            max_connections: 512,
            linger: Duration::from_secs(5),
        }
    }
}

impl Config {
    pub(crate) fn mux_limits(&self) -> mux::Limits {
        mux::Limits {
            stream_buf: self.stream_buffer.max(1024),
            chunk: 32 << 10,
            ctrl_cap: 64,
            max_streams: self.max_streams,
            idle_timeout: self.idle_timeout,
        }
    }

    pub(crate) fn spdy_limits(&self) -> spdy::conn::SpdyLimits {
        spdy::conn::SpdyLimits {
            max_frame: self.max_frame,
            max_header_block: self.max_header_block,
            max_headers: 256,
        }
    }
}

/// A terminal size, as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// What a token stands for: the CRI request that minted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        ports: Vec<u16>,
    },
}

impl Request {
    pub(crate) fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream (a connection inside a pod).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// The client's side of a session, handed to the backend. A stream is None
/// when the request did not ask for it. `stdin` reaches EOF when the client
/// closes it; dropping (or shutting down) `stdout`/`stderr` ends them for
/// the client.
pub struct Stdio {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal sizes from the client (tty sessions only).
    pub resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
}

/// What runs the requests. Futures should finish writing output before
/// they resolve (the exit status is sent after it); a future is dropped if
/// the client goes away first.
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container; resolves to its exit code.
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<i32, String>>;
    /// Connects `io` to the running container's stdio until either side ends.
    /// `io.stdin` reaching EOF means the client closed its stdin: with the
    /// container's `stdin_once` the backend closes the container's stdin,
    /// otherwise it only detaches it.
    fn attach(
        &self,
        container_id: &str,
        tty: bool,
        io: Stdio,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// A connection to `port` inside the pod's network namespace.
    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn AsyncReadWrite>, String>>;
}
