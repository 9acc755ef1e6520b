//! Serving CRI on the unix socket (and metrics over HTTP).

use crate::authority::fix_authority;
use crate::daemon::Daemon;
use crate::service::Service;
use berth_cri_api::v1::image_service_server::ImageServiceServer;
use berth_cri_api::v1::runtime_service_server::RuntimeServiceServer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// Largest gRPC message accepted or sent (CRI messages are small; ExecSync
/// output is capped separately).
const MAX_MESSAGE: usize = 32 << 20;

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        // A socket someone answers on belongs to a running berthd: taking
        // it over would leave that one serving nobody. Only a stale one
        // (left by a stopped or killed berthd) is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is serving on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// How long a shutdown waits for unary calls in flight before it closes
/// the connections anyway (systemd's stop timeout is 90 s).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves until `shutdown`, then lets the unary calls in flight finish and
/// reply, and closes what is left: a kubelet's GetContainerEvents stream
/// never ends by itself, and waiting for its connection to close (tonic's
/// graceful shutdown) would keep berthd from exiting on SIGTERM.
pub async fn serve(
    d: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let metered = d.clone();
    let svc = Service { d };
    let incoming = async_stream_unix(listener);
    let in_flight = InFlight::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let counted = in_flight.clone();
    let server = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| CountUnary {
            inner,
            n: counted.clone(),
            d: metered.clone(),
        }))
        .add_service(
            RuntimeServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = shutdown => {}
    }
    // No new connections; idle ones close at once, busy ones after replying.
    let _ = stop_tx.send(());
    let drained = async {
        let t = std::time::Instant::now();
        while in_flight.get() > 0 {
            if t.elapsed() > SHUTDOWN_GRACE {
                tracing::warn!(calls = in_flight.get(), "shutdown: calls still running");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The last replies are encoded: give them time to be written.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    tokio::select! {
        r = &mut server => r,
        _ = drained => {
            tracing::info!("shutdown: closing the remaining streams");
            Ok(())
        }
    }
}

/// The server-streaming RPCs: they last as long as their client wants.
fn is_stream(path: &str) -> bool {
    path == "/runtime.v1.RuntimeService/GetContainerEvents"
}

/// Unary calls being served.
#[derive(Clone, Default)]
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct InFlightGuard(InFlight);

impl InFlightGuard {
    fn new(n: &InFlight) -> Self {
        n.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard(n.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The CRI methods, as metrics name them: a method not listed counts as
/// "Unknown", so no client can grow the metrics without bound.
const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

fn method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("Unknown")
}

/// Every call, whatever refused or served it, is metered here: its
/// latency until the reply's headers, and an error when they carry a
/// non-zero grpc-status (tonic sends errors trailers-only). Unary calls
/// are also counted as in flight until their handler returned (tonic has
/// then encoded the whole reply).
#[derive(Clone)]
struct CountUnary<S> {
    inner: S,
    n: InFlight,
    d: Arc<Daemon>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for CountUnary<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = (!is_stream(req.uri().path())).then(|| InFlightGuard::new(&self.n));
        let op = method(req.uri().path());
        let start = std::time::Instant::now();
        let d = self.d.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            let ok = r.as_ref().is_ok_and(|resp| {
                resp.headers()
                    .get("grpc-status")
                    .is_none_or(|v| v.as_bytes() == b"0")
            });
            d.metrics.observe(op, start.elapsed(), ok);
            r
        })
    }
}

/// Accepted connections, each wrapped so that clients sending the socket
/// path as :authority are served.
fn async_stream_unix(
    l: UnixListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<crate::authority::FixAuthority<tokio::net::UnixStream>>,
> {
    let s = tokio_stream::wrappers::UnixListenerStream::new(l);
    tokio_stream::StreamExt::map(s, |r| r.map(fix_authority))
}

/// A minimal HTTP endpoint for Prometheus scrapes.
pub async fn serve_metrics(d: Arc<Daemon>, addr: String) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let d = d.clone();
        tokio::spawn(async move {
            // The whole request head is read (bounded): closing a socket with
            // unread bytes makes the kernel reset it, and the client may then
            // lose the reply.
            let read_head = async {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await;
            let body = d.metrics.render();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
