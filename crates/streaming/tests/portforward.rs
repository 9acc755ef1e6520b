//! Port-forward over SPDY and WebSocket into real TCP servers (IPv4 and IPv6).

mod common;

use berth_streaming::client::{port_forward, port_forward_tunnel, port_forward_ws};
use berth_streaming::{protocol, Config, Request};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(pf: &berth_streaming::client::PortForward, port: u16, path: &str) -> String {
    let mut s = pf.open(port).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    assert_eq!(s.error().await, None);
    let text = String::from_utf8(b).unwrap();
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_http_requests_ipv4_and_ipv6() {
    let (backend, srv) = start(Config::default()).await;
    let v4 = http_server("127.0.0.1:0", "v4").await;
    let v6 = http_server("[::1]:0", "v6").await;
    backend.pods.lock().unwrap().insert("pod4".into(), v4);
    backend.pods.lock().unwrap().insert("pod6".into(), v6);
    for (pod, addr, tag) in [("pod4", v4, "v4"), ("pod6", v6, "v6")] {
        let url = srv
            .url_for(Request::PortForward {
                pod_id: pod.into(),
                ports: vec![addr.port()],
            })
            .unwrap();
        let pf = std::sync::Arc::new(port_forward(&url).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let pf = pf.clone();
            let port = addr.port();
            tasks.push(tokio::spawn(async move {
                (i, get(&pf, port, &format!("/r{i}")).await)
            }));
        }
        for t in tasks {
            let (i, body) = t.await.unwrap();
            assert_eq!(body, format!("{tag} /r{i}"));
        }
        std::sync::Arc::into_inner(pf).unwrap().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways() {
    let (backend, srv) = start(Config::default()).await;
    let addr = half_close_server("127.0.0.1:0").await;
    backend.pods.lock().unwrap().insert("p".into(), addr);
    let url = srv
        .url_for(Request::PortForward {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    let pf = port_forward(&url).await.unwrap();
    let mut s = pf.open(addr.port()).await.unwrap();
    let data = pseudo_random(300_000, 7);
    s.write_all(&data).await.unwrap();
    // The server answers only once it sees our EOF; then it closes its side.
    s.shutdown().await.unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    let mut want = format!("{}:", data.len()).into_bytes();
    want.extend(data.iter().rev());
    assert!(b == want, "{} bytes back, {} expected", b.len(), want.len());
    pf.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_travel_on_the_error_stream() {
    let (backend, srv) = start(Config::default()).await;
    // A port nothing listens on: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    backend.pods.lock().unwrap().insert("p".into(), closed);
    let url = srv
        .url_for(Request::PortForward {
            pod_id: "p".into(),
            ports: vec![closed.port(), 1],
        })
        .unwrap();
    let pf = port_forward(&url).await.unwrap();
    let mut s = pf.open(closed.port()).await.unwrap();
    let e = s.error().await.unwrap();
    assert!(
        e.contains(&format!("error forwarding port {}", closed.port())),
        "{e}"
    );
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    assert!(b.is_empty());
    // Ports outside the request are refused.
    let mut s = pf.open(2).await.unwrap();
    let e = s.error().await.unwrap();
    assert!(e.contains("not among the ports"), "{e}");
    pf.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward() {
    let (backend, srv) = start(Config::default()).await;
    let a = http_server("127.0.0.1:0", "ws").await;
    backend.pods.lock().unwrap().insert("p".into(), a);
    for protos in [
        &[protocol::PORT_FORWARD][..],
        &[protocol::V4_BASE64][..],
        &[][..],
    ] {
        let url = srv
            .url_for(Request::PortForward {
                pod_id: "p".into(),
                ports: vec![a.port()],
            })
            .unwrap();
        let mut pf = port_forward_ws(&url, &[a.port()], protos).await.unwrap();
        let (_, data, _) = &mut pf.ports[0];
        data.write_all(b"GET /ws HTTP/1.1\r\n\r\n").await.unwrap();
        let mut b = Vec::new();
        // The pod's server closes after answering; the channel ends with the connection.
        data.read_to_end(&mut b).await.unwrap();
        assert!(
            String::from_utf8_lossy(&b).ends_with("ws /ws"),
            "{protos:?}: {:?}",
            String::from_utf8_lossy(&b)
        );
        pf.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_tunnelled_in_websocket() {
    let (backend, srv) = start(Config::default()).await;
    let a = http_server("127.0.0.1:0", "tun").await;
    let hc = half_close_server("127.0.0.1:0").await;
    backend.pods.lock().unwrap().insert("p".into(), a);
    backend.pods.lock().unwrap().insert("q".into(), hc);
    let url = srv
        .url_for(Request::PortForward {
            pod_id: "p".into(),
            ports: vec![],
        })
        .unwrap();
    let pf = std::sync::Arc::new(port_forward_tunnel(&url).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            (i, get(&pf, a.port(), &format!("/t{i}")).await)
        }));
    }
    for t in tasks {
        let (i, body) = t.await.unwrap();
        assert_eq!(body, format!("tun /t{i}"));
    }
    std::sync::Arc::into_inner(pf).unwrap().close().await;
    // Half-close through the tunnel.
    let url = srv
        .url_for(Request::PortForward {
            pod_id: "q".into(),
            ports: vec![],
        })
        .unwrap();
    let pf = port_forward_tunnel(&url).await.unwrap();
    let mut s = pf.open(hc.port()).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    s.shutdown().await.unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    assert_eq!(b, b"3:cba");
    pf.close().await;
}
