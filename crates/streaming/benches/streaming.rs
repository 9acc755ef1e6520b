//! Exec round trip (spawning `true` directly, as ExecSync would, against a
//! streaming exec of `true` over SPDY and WebSocket) and port-forward
//! throughput. `cargo bench -p berth-streaming` (N from `STREAM_BENCH_N`,
//! default 200; MiB moved from `STREAM_BENCH_MIB`, default 256). Prints a
//! table; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use berth_streaming::client::{
    port_forward, port_forward_ws, remote_command, ExecOptions, Transport,
};
use berth_streaming::{protocol, Config, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
        ms(v[0]),
        ms(p(0.5)),
        ms(p(0.9)),
        ms(p(0.99))
    );
}

async fn exec_round_trip(srv: &berth_streaming::ServerHandle, t: Transport, p: &str) -> Duration {
    let start = Instant::now();
    let url = srv
        .url_for(Request::Exec {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let mut rc = remote_command(
        &url,
        t,
        &[p],
        ExecOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_o, _e) = tokio::join!(
        common::read_all(rc.stdout.take()),
        common::read_all(rc.stderr.take())
    );
    rc.wait().await.unwrap();
    start.elapsed()
}

/// A pod-side server that sends `n` bytes to whoever connects.
async fn source(n: usize) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let buf = vec![0x5au8; 256 << 10];
                let mut left = n;
                while left > 0 {
                    let k = left.min(buf.len());
                    if s.write_all(&buf[..k]).await.is_err() {
                        return;
                    }
                    left -= k;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// Reads until EOF or `limit` bytes (a WebSocket forward ends a moment
/// after the pod's side closes, which is not transfer time).
async fn drain<R: tokio::io::AsyncRead + Unpin>(mut r: R, limit: usize) -> usize {
    let mut b = vec![0u8; 256 << 10];
    let mut n = 0;
    while n < limit {
        match r.read(&mut b).await {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k,
        }
    }
    n
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = env("STREAM_BENCH_N", 200);
        let mib = env("STREAM_BENCH_MIB", 256);
        let (backend, srv) = common::start(Config::default()).await;
        println!("exec round trip of `true`, N={n}\n");
        println!("| path | min ms | p50 ms | p90 ms | p99 ms |\n| --- | --- | --- | --- | --- |");
        let mut direct = Vec::new();
        let mut spdy = Vec::new();
        let mut ws = Vec::new();
        for _ in 0..3 {
            exec_round_trip(&srv, Transport::Spdy, protocol::V4).await;
        }
        for _ in 0..n {
            let s = Instant::now();
            tokio::process::Command::new("true").output().await.unwrap();
            direct.push(s.elapsed());
            spdy.push(exec_round_trip(&srv, Transport::Spdy, protocol::V4).await);
            ws.push(exec_round_trip(&srv, Transport::WebSocket, protocol::V5).await);
        }
        row("spawn `true` in the backend (ExecSync's work)", direct);
        row("streaming exec, SPDY v4.channel.k8s.io", spdy);
        row("streaming exec, WebSocket v5.channel.k8s.io", ws);

        let bytes = mib << 20;
        let src = source(bytes).await;
        backend.pods.lock().unwrap().insert("p".into(), src);
        println!("\nport-forward, {mib} MiB from a pod server to the client\n");
        println!("| path | MiB/s |\n| --- | --- |");
        let rate = |d: Duration| mib as f64 / d.as_secs_f64();
        let s = Instant::now();
        let got = drain(tokio::net::TcpStream::connect(src).await.unwrap(), bytes).await;
        assert_eq!(got, bytes);
        println!("| direct TCP | {:.0} |", rate(s.elapsed()));
        let url = srv
            .url_for(Request::PortForward {
                pod_id: "p".into(),
                ports: vec![src.port()],
            })
            .unwrap();
        let s = Instant::now();
        let pf = port_forward(&url).await.unwrap();
        let got = drain(pf.open(src.port()).await.unwrap(), bytes).await;
        assert_eq!(got, bytes);
        println!("| SPDY portforward.k8s.io | {:.0} |", rate(s.elapsed()));
        pf.close().await;
        let url = srv
            .url_for(Request::PortForward {
                pod_id: "p".into(),
                ports: vec![src.port()],
            })
            .unwrap();
        let s = Instant::now();
        let mut pf = port_forward_ws(&url, &[src.port()], &[protocol::PORT_FORWARD])
            .await
            .unwrap();
        let (_, data, _) = pf.ports.remove(0);
        let got = drain(data, bytes).await;
        assert_eq!(got, bytes);
        println!("| WebSocket port-forward | {:.0} |", rate(s.elapsed()));
        pf.close().await;
    });
}
