//! A byte stream carried in WebSocket binary messages (the SPDY tunnel of
//! kubectl's WebSocket port-forward): message payloads in order are the
//! stream; each write becomes one message.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::frame::{self, close_payload};

fn mask(server: bool) -> Option<[u8; 4]> {
    (!server).then(crate::token::random_bytes::<4>)
}

/// Moves bytes between the WebSocket `io` and `local` until either ends;
/// `server` selects who masks. Memory: one frame of at most `max_frame`
/// plus the duplex buffer, whose fullness stops reading the socket.
pub(crate) async fn run<IO>(io: IO, local: DuplexStream, max_frame: usize, server: bool)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, w) = tokio::io::split(io);
    let (mut lr, mut lw) = tokio::io::split(local);
    let w = std::sync::Arc::new(tokio::sync::Mutex::new(w));
    let w2 = w.clone();
    let inbound = async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            match frame::parse(&buf, max_frame, server) {
                Ok(Some((f, n))) => {
                    let _ = buf.split_to(n);
                    match f.opcode {
                        frame::OP_BINARY | frame::OP_CONTINUATION | frame::OP_TEXT
                            if lw.write_all(&f.payload).await.is_err() =>
                        {
                            return;
                        }
                        frame::OP_PING => {
                            let mut out = BytesMut::new();
                            frame::put_frame(
                                &mut out,
                                true,
                                frame::OP_PONG,
                                &f.payload,
                                mask(server),
                            );
                            let _ = w2.lock().await.write_all(&out).await;
                        }
                        frame::OP_CLOSE => {
                            let mut out = BytesMut::new();
                            frame::put_frame(
                                &mut out,
                                true,
                                frame::OP_CLOSE,
                                &f.payload[..f.payload.len().min(2)],
                                None,
                            );
                            let _ = w2.lock().await.write_all(&out).await;
                            let _ = lw.shutdown().await;
                            return;
                        }
                        _ => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let mut out = BytesMut::new();
                    frame::put_frame(
                        &mut out,
                        true,
                        frame::OP_CLOSE,
                        &close_payload(e.close_code(), &e.to_string()),
                        None,
                    );
                    let _ = w2.lock().await.write_all(&out).await;
                    let _ = lw.shutdown().await;
                    return;
                }
            }
            buf.reserve(16 << 10);
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = lw.shutdown().await;
                    return;
                }
                Ok(_) => {}
            }
        }
    };
    let outbound = async move {
        let mut chunk = vec![0u8; 32 << 10];
        loop {
            let n = match lr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut out = BytesMut::with_capacity(n + 10);
            frame::put_frame(&mut out, true, frame::OP_BINARY, &chunk[..n], mask(server));
            if w.lock().await.write_all(&out).await.is_err() {
                return;
            }
        }
        let mut out = BytesMut::new();
        frame::put_frame(
            &mut out,
            true,
            frame::OP_CLOSE,
            &close_payload(frame::CLOSE_NORMAL, ""),
            None,
        );
        let mut w = w.lock().await;
        let _ = w.write_all(&out).await;
        let _ = w.shutdown().await;
    };
    // The SPDY side ends the tunnel (after its GOAWAY); the client then has
    // a moment to close its side.
    tokio::pin!(inbound, outbound);
    tokio::select! {
        _ = &mut outbound => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), inbound).await;
        }
        _ = &mut inbound => outbound.await,
    }
}
