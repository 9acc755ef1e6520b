//! Refusals and bounds: tokens, negotiation, malformed frames, a zlib bomb,
//! the stream limit, idle connections, slow clients.

mod common;

use std::time::Duration;

use berth_streaming::client::{port_forward, remote_command, upgrade, ExecOptions, Transport};
use berth_streaming::spdy::frame::{self, goaway, Frame};
use berth_streaming::spdy::zlib::{encode_block, Deflater};
use berth_streaming::status::Outcome;
use berth_streaming::ws::frame as wsf;
use berth_streaming::{protocol, Config, Request};
use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Tests that measure this process's RSS run one at a time.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn exec_true() -> Request {
    Request::Exec {
        container_id: "c".into(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

fn out_err() -> ExecOptions {
    ExecOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

async fn status_of(url: &str, t: Transport, protos: &[&str]) -> Option<u16> {
    match remote_command(url, t, protos, out_err()).await {
        Ok(rc) => {
            assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
            None
        }
        Err(e) => Some(e.status.unwrap_or_else(|| panic!("{e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_one_time_and_expire() {
    let (_b, srv) = start(Config::default()).await;
    let url = srv.url_for(exec_true()).unwrap();
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        None
    );
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        Some(404),
        "reused"
    );
    let unknown = format!("http://{}/exec/AAAAAAAAAAAAAAAAAAAAAA", srv.local_addr());
    assert_eq!(
        status_of(&unknown, Transport::WebSocket, &[protocol::V5]).await,
        Some(404),
        "unknown"
    );
    // A token only opens its own kind of request.
    let url = srv
        .url_for(exec_true())
        .unwrap()
        .replace("/exec/", "/attach/");
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        Some(404),
        "wrong kind"
    );

    let (_b, srv) = start(Config {
        token_ttl: Duration::ZERO,
        ..Default::default()
    })
    .await;
    let url = srv.url_for(exec_true()).unwrap();
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        Some(404),
        "expired"
    );

    let (_b, srv) = start(Config {
        max_tokens: 2,
        ..Default::default()
    })
    .await;
    srv.url_for(exec_true()).unwrap();
    srv.url_for(exec_true()).unwrap();
    assert!(srv.url_for(exec_true()).is_err(), "token cache is bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_negotiation() {
    let (_b, srv) = start(Config::default()).await;
    let u = || srv.url_for(exec_true()).unwrap();
    assert_eq!(
        status_of(&u(), Transport::Spdy, &["v9.channel.k8s.io"]).await,
        Some(403)
    );
    assert_eq!(
        status_of(&u(), Transport::Spdy, &[]).await,
        Some(400),
        "no X-Stream-Protocol-Version"
    );
    assert_eq!(
        status_of(&u(), Transport::WebSocket, &["v9.channel.k8s.io"]).await,
        Some(403)
    );
    assert_eq!(
        status_of(&u(), Transport::Spdy, &[protocol::PORT_FORWARD]).await,
        Some(403),
        "port-forward protocol for exec"
    );
    // The client's order wins.
    let rc = remote_command(
        &u(),
        Transport::Spdy,
        &["v9", protocol::V2, protocol::V4],
        out_err(),
    )
    .await
    .unwrap();
    assert_eq!(rc.protocol, protocol::V2);
    rc.wait().await.unwrap();
    // A plain request without an upgrade is refused.
    let url = u();
    let (_, path) = url.split_once(&srv.local_addr().to_string()).unwrap();
    let mut s = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    assert!(
        b.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&b)
    );
}

/// Reads frames until the server closes; returns them.
async fn frames_until_close<R: AsyncRead + Unpin>(r: &mut R) -> Vec<Frame> {
    let mut buf = Vec::new();
    let read = async {
        let mut b = [0u8; 4096];
        loop {
            match r.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("server closed the connection");
    let mut out = Vec::new();
    let mut off = 0;
    while let Ok(Some((f, n))) = frame::parse(&buf[off..], 1 << 24) {
        out.push(f);
        off += n;
    }
    out
}

async fn raw_spdy(srv: &berth_streaming::ServerHandle) -> berth_streaming::client::Prefixed {
    let url = srv.url_for(exec_true()).unwrap();
    upgrade(&url, Transport::Spdy, &[protocol::V4])
        .await
        .unwrap()
        .0
}

fn goaway_protocol_error(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::GoAway { status, .. } if *status == goaway::PROTOCOL_ERROR))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_spdy_frames_close_the_connection() {
    let (_b, srv) = start(Config {
        max_frame: 64 << 10,
        ..Default::default()
    })
    .await;
    let mut d = Deflater::new();
    let good_block = d.deflate(&encode_block(&[("streamtype", "error")]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "SPDY version 2",
            vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
        ),
        (
            "length past the limit",
            vec![0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff],
        ),
        ("garbage header block", {
            let mut b = BytesMut::new();
            frame::put_syn_stream(&mut b, 1, 0, b"\x78\x9c garbage garbage");
            b.to_vec()
        }),
        ("even stream id from a client", {
            let mut b = BytesMut::new();
            frame::put_syn_stream(&mut b, 2, 0, &good_block);
            b.to_vec()
        }),
        (
            "SETTINGS with a wrong count",
            vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9],
        ),
        (
            "WINDOW_UPDATE of 0",
            vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ];
    for (what, bytes) in cases {
        let mut io = raw_spdy(&srv).await;
        io.write_all(&bytes).await.unwrap();
        let frames = frames_until_close(&mut io).await;
        assert!(goaway_protocol_error(&frames), "{what}: {frames:?}");
    }
    // The server is still fine.
    let url = srv.url_for(exec_true()).unwrap();
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_bomb_is_refused_without_memory_growth() {
    let _serial = MEMORY.lock().await;
    let (_b, srv) = start(Config::default()).await;
    // 64 MiB of header block that deflates to well under the 1 MiB frame limit.
    let bomb = {
        let mut plain = encode_block(&[("streamtype", "error")]);
        plain.resize(64 << 20, b'a');
        Deflater::new().deflate(&plain)
    };
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let mut b = BytesMut::new();
    frame::put_syn_stream(&mut b, 1, 0, &bomb);
    drop(bomb);
    let before = rss_kib();
    let mut io = raw_spdy(&srv).await;
    io.write_all(&b).await.unwrap();
    let frames = frames_until_close(&mut io).await;
    assert!(goaway_protocol_error(&frames), "{frames:?}");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 16 << 10, "RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_refuses_extra_streams() {
    let (backend, srv) = start(Config {
        max_streams: 4,
        ..Default::default()
    })
    .await;
    let addr = half_close_server("127.0.0.1:0").await;
    backend.pods.lock().unwrap().insert("p".into(), addr);
    let url = srv
        .url_for(Request::PortForward {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    let pf = port_forward(&url).await.unwrap();
    // Two forwarded connections are four streams.
    let mut a = pf.open(addr.port()).await.unwrap();
    let _b = pf.open(addr.port()).await.unwrap();
    let e = pf
        .open(addr.port())
        .await
        .err()
        .expect("a fifth stream is refused");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // Finishing one frees its streams.
    a.write_all(b"x").await.unwrap();
    a.shutdown().await.unwrap();
    let mut out = Vec::new();
    a.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"1:x");
    drop(a);
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(mut c) = pf.open(addr.port()).await {
            c.shutdown().await.unwrap();
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "streams were not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let (_b, srv) = start(Config {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    for (t, p) in [
        (Transport::Spdy, protocol::V4),
        (Transport::WebSocket, protocol::V5),
    ] {
        let url = srv
            .url_for(Request::Exec {
                container_id: "c".into(),
                cmd: sh("sleep 60"),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let rc = remote_command(&url, t, &[p], out_err()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(30), rc.wait())
            .await
            .expect("the idle connection was closed");
        assert!(r.is_err(), "{t:?}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_bounds_server_memory() {
    let _serial = MEMORY.lock().await;
    let (_b, srv) = start(Config::default()).await;
    let url = srv
        .url_for(Request::Exec {
            container_id: "c".into(),
            cmd: sh("head -c 67108864 /dev/zero"),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let before = rss_kib();
    let mut rc = remote_command(&url, Transport::Spdy, &[protocol::V4], out_err())
        .await
        .unwrap();
    // Not reading for a while: the server must stop taking output, not buffer it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "RSS grew by {grown} KiB while the client did not read"
    );
    let out = read_all(rc.stdout.take()).await;
    assert_eq!(out.len(), 64 << 20);
    assert!(out.iter().all(|&b| b == 0));
    assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_websocket_frames_close_the_connection() {
    let (_b, srv) = start(Config {
        max_frame: 64 << 10,
        ..Default::default()
    })
    .await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked client frame",
            vec![0x82, 0x02, 0, 1],
            wsf::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "message past the limit",
            vec![0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4],
            wsf::CLOSE_TOO_BIG,
        ),
        (
            "reserved bits",
            vec![0xf2, 0x80, 1, 2, 3, 4],
            wsf::CLOSE_PROTOCOL_ERROR,
        ),
        (
            "text on a binary protocol",
            {
                let mut b = BytesMut::new();
                wsf::put_frame(&mut b, true, wsf::OP_TEXT, b"0abc", Some([9, 8, 7, 6]));
                b.to_vec()
            },
            wsf::CLOSE_INVALID_DATA,
        ),
    ];
    for (what, bytes, code) in cases {
        let url = srv
            .url_for(Request::Exec {
                container_id: "c".into(),
                cmd: sh("sleep 60"),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let (mut io, _) = upgrade(&url, Transport::WebSocket, &[protocol::V4])
            .await
            .unwrap();
        io.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut buf))
            .await
            .expect(what)
            .ok();
        let mut off = 0;
        let mut close = None;
        while let Ok(Some((f, n))) = wsf::parse(&buf[off..], 1 << 20, false) {
            if f.opcode == wsf::OP_CLOSE {
                close = Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
            }
            off += n;
        }
        assert_eq!(close, Some(code), "{what}: {buf:?}");
    }
}

/// Reads SPDY frames until the server closes.
async fn collect<R: AsyncRead + Unpin>(r: &mut R) -> Vec<Frame> {
    frames_until_close(r).await
}

/// Kubernetes' Go client (spdystream) sends no SETTINGS or WINDOW_UPDATE and
/// ignores windows: the server must neither stall after 64 KiB of output nor
/// reset a stream that sends more than the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_without_flow_control() {
    let (_b, srv) = start(Config {
        stream_buffer: 64 << 10,
        ..Default::default()
    })
    .await;
    let url = srv
        .url_for(Request::Exec {
            container_id: "c".into(),
            cmd: sh("wc -c; head -c 1048576 /dev/zero"),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let (mut io, _) = upgrade(&url, Transport::Spdy, &[protocol::V4])
        .await
        .unwrap();
    let mut d = Deflater::new();
    let mut b = BytesMut::new();
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
        frame::put_syn_stream(
            &mut b,
            id,
            0,
            &d.deflate(&encode_block(&[("streamtype", kind)])),
        );
    }
    // 1 MiB of stdin in 32 KiB frames, far past the 64 KiB window, then FIN.
    let chunk = vec![b'x'; 32 << 10];
    for i in 0..32 {
        frame::put_data(&mut b, 3, i == 31, &chunk);
    }
    io.write_all(&b).await.unwrap();
    let frames = collect(&mut io).await;
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::RstStream { .. })),
        "a stream was reset"
    );
    let mut out = Vec::new();
    let mut status = Vec::new();
    for f in &frames {
        if let Frame::Data {
            stream_id, data, ..
        } = f
        {
            match stream_id {
                5 => out.extend_from_slice(data),
                1 => status.extend_from_slice(data),
                _ => {}
            }
        }
    }
    assert!(
        out.starts_with(b"1048576\n"),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(40)])
    );
    assert_eq!(out.len(), 8 + (1 << 20));
    assert_eq!(status, berth_streaming::status::success());
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::GoAway { status: 0, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded() {
    let (_b, srv) = start(Config {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let sleeper = Request::Exec {
        container_id: "c".into(),
        cmd: sh("sleep 60"),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let first = srv.url_for(sleeper).unwrap();
    let rc = remote_command(
        &first,
        Transport::Spdy,
        &[protocol::V4],
        ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        },
    )
    .await
    .unwrap();
    let url = srv.url_for(exec_true()).unwrap();
    assert_eq!(
        status_of(&url, Transport::Spdy, &[protocol::V4]).await,
        Some(503)
    );
    drop(rc);
    // Once the first session is gone, sessions are accepted again.
    let mut ok = false;
    for _ in 0..200 {
        let url = srv.url_for(exec_true()).unwrap();
        if status_of(&url, Transport::Spdy, &[protocol::V4])
            .await
            .is_none()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
}

/// Client pings (odd ids, as client-go's keepalive sends) come back; even
/// ids are the server's own and are not echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_echoed() {
    let (_b, srv) = start(Config::default()).await;
    let mut io = raw_spdy(&srv).await;
    let mut b = BytesMut::new();
    frame::put_ping(&mut b, 7);
    frame::put_ping(&mut b, 8);
    // Then a protocol error, so the server closes and we can collect.
    b.extend_from_slice(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    io.write_all(&b).await.unwrap();
    let frames = collect(&mut io).await;
    let pings: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Ping { .. }))
        .collect();
    assert_eq!(pings, vec![&Frame::Ping { id: 7 }]);
}
