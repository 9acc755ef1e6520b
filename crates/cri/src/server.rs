//! Serving CRI on the unix socket (and metrics over HTTP).

use crate::authority::fix_authority;
use crate::daemon::Daemon;
use crate::service::Service;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
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
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

pub async fn serve(
    d: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let svc = Service { d };
    let incoming = async_stream_unix(listener);
    tonic::transport::Server::builder()
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
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
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
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
            let body = d.metrics.render();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
