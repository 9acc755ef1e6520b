//! The HTTP side: URLs, tokens, protocol negotiation and the upgrade.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::protocol;
use crate::token::{TokenCache, TokenError};
use crate::{Backend, Config, Request};

pub(crate) struct Inner {
    pub cfg: Config,
    pub tokens: TokenCache,
    pub backend: Arc<dyn Backend>,
    pub base: String,
    pub conns: Arc<Semaphore>,
    /// Upgraded sessions outlive their HTTP connection's permit: counted apart.
    pub sessions: Arc<Semaphore>,
}

/// The streaming server. Mint URLs with [`Server::url_for`] (or a
/// [`ServerHandle`] once it runs).
pub struct Server {
    inner: Arc<Inner>,
    listener: TcpListener,
    addr: SocketAddr,
}

/// Mints URLs for a running server.
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Mints a one-time token and returns the URL for the CRI response:
    /// `<base>/exec/TOKEN`, `/attach/TOKEN` or `/portforward/TOKEN`.
    pub fn url_for(&self, req: Request) -> Result<String, TokenError> {
        let path = req.path();
        let token = self.inner.tokens.insert(req)?;
        Ok(format!("{}/{path}/{token}", self.inner.base))
    }
}

impl Server {
    pub async fn bind(cfg: Config, backend: Arc<dyn Backend>) -> io::Result<Server> {
        let listener = TcpListener::bind(cfg.addr).await?;
        let addr = listener.local_addr()?;
        let base = match &cfg.base_url {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => format!("http://{addr}"),
        };
        let inner = Arc::new(Inner {
            tokens: TokenCache::new(cfg.token_ttl, cfg.max_tokens),
            conns: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            sessions: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            cfg,
            backend,
            base,
        });
        Ok(Server {
            inner,
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            inner: self.inner.clone(),
            addr: self.addr,
        }
    }

    pub fn url_for(&self, req: Request) -> Result<String, TokenError> {
        self.handle().url_for(req)
    }

    /// Serves connections until the task is dropped or aborted.
    pub async fn serve(self) {
        loop {
            let permit = match self.inner.conns.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("streaming server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let inner = inner.clone();
                    async move { Ok::<_, Infallible>(route(inner, req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .max_buf_size(16 << 10)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "streaming connection: {e}");
                }
                drop(permit);
            });
        }
    }

    pub fn spawn(self) -> (ServerHandle, JoinHandle<()>) {
        let h = self.handle();
        (h, tokio::spawn(self.serve()))
    }
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, msg: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// All values of a header, split at commas.
fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    header_list(h, name)
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

/// The first protocol the client offers that the server speaks (the client's order wins).
fn negotiate(client: &[String], server: &[&str]) -> Option<String> {
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
}

pub(crate) fn websocket_accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn route(inner: Arc<Inner>, mut req: hyper::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    // A token is good once, for its own kind of request.
    let Some(request) = inner.tokens.consume(token) else {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired token");
    };
    if request.path() != kind {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired token");
    }
    let Ok(session) = inner.sessions.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many streaming sessions",
        );
    };
    let h = req.headers().clone();
    let upgrade = h
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !has_token(&h, "connection", "upgrade") {
        return plain(
            StatusCode::BAD_REQUEST,
            "an upgrade request (Connection: Upgrade) is required",
        );
    }
    let port_forward = matches!(request, Request::PortForward { .. });
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let server: &[&str] = if port_forward {
            &[protocol::PORT_FORWARD]
        } else {
            protocol::SPDY_REMOTECOMMAND
        };
        let offered = header_list(&h, protocol::HEADER_PROTOCOL);
        if offered.is_empty() {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade: {} is required",
                    protocol::HEADER_PROTOCOL
                ),
            );
        }
        let Some(chosen) = negotiate(&offered, server) else {
            let mut r = plain(
                StatusCode::FORBIDDEN,
                format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {server:?}"),
            );
            for p in server {
                r.headers_mut()
                    .append(protocol::HEADER_ACCEPTED, HeaderValue::from_static(p));
            }
            return r;
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let proto = chosen.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => crate::session::spdy(inner, TokioIo::new(up), request, proto).await,
                Err(e) => tracing::debug!("spdy upgrade failed: {e}"),
            }
            drop(session);
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hm = r.headers_mut();
        hm.insert("connection", HeaderValue::from_static("Upgrade"));
        hm.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
        hm.insert(
            protocol::HEADER_PROTOCOL,
            HeaderValue::from_str(&chosen).unwrap(),
        );
        return r;
    }
    if upgrade.eq_ignore_ascii_case("websocket") {
        if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
            let mut r = plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
            r.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
            return r;
        }
        let Some(key) = h
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is required");
        };
        let server: &[&str] = if port_forward {
            protocol::WS_PORT_FORWARD
        } else {
            protocol::WS_REMOTECOMMAND
        };
        let offered = header_list(&h, "sec-websocket-protocol");
        // No subprotocol at all means the binary channel protocol.
        let chosen = if offered.is_empty() {
            String::new()
        } else {
            match negotiate(&offered, server) {
                Some(c) => c,
                None => {
                    return plain(
                        StatusCode::FORBIDDEN,
                        format!(
                        "requested protocol(s) are not supported: {offered:?}; supports {server:?}"
                    ),
                    )
                }
            }
        };
        if let (Request::PortForward { ports, .. }, false) =
            (&request, chosen == protocol::SPDY_TUNNEL_PORT_FORWARD)
        {
            // Two channels per port, numbered by one byte (the SPDY tunnel
            // names ports per stream instead).
            if ports.is_empty() || ports.len() > 127 {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket port-forward needs 1 to 127 ports",
                );
            }
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let proto = chosen.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => crate::session::websocket(inner, TokioIo::new(up), request, proto).await,
                Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
            }
            drop(session);
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hm = r.headers_mut();
        hm.insert("connection", HeaderValue::from_static("Upgrade"));
        hm.insert("upgrade", HeaderValue::from_static("websocket"));
        hm.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&websocket_accept(&key)).unwrap(),
        );
        if !chosen.is_empty() {
            hm.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&chosen).unwrap(),
            );
        }
        return r;
    }
    plain(
        StatusCode::BAD_REQUEST,
        "Upgrade must be SPDY/3.1 or websocket",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            super::websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
