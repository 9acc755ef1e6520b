//! Exec round trip through berthd: ExecSync of `true` against a streaming
//! exec of `true` (SPDY v4 and WebSocket v5), and port-forward throughput
//! into a pod, in one run.
//!
//!   cargo bench -p berthd --bench exec [-- N]

#[path = "../tests/common/mod.rs"]
mod common;

use berth_cri_api::v1 as cri;
use berth_streaming::client::{self, ExecOptions, Transport};
use berth_streaming::protocol;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let b = common::Berthd::start();
    let mut c = b.rt().await;
    let sink = common::ctr_config("sink", &["sh", "-c", "busybox nc -lk -p 9000 >/dev/null"]);
    let (pod, ids) = common::run_pod(
        &mut c,
        common::pod_config("bench", &b.logs()),
        vec![common::ctr_config("s", &["sleep", "100000"]), sink],
    )
    .await;
    let id = ids[0].clone();
    let mut sync = Vec::new();
    let mut spdy = Vec::new();
    let mut ws = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = common::exec(&mut c, &id, &["true"]).await;
        assert_eq!(r.exit_code, 0);
        sync.push(t.elapsed());
        for (transport, protos, out) in [
            (Transport::Spdy, protocol::SPDY_REMOTECOMMAND, &mut spdy),
            (Transport::WebSocket, protocol::WS_REMOTECOMMAND, &mut ws),
        ] {
            let t = Instant::now();
            let url = c
                .exec(cri::ExecRequest {
                    container_id: id.clone(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .url;
            let mut rc = client::remote_command(
                &url,
                transport,
                protos,
                ExecOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let mut v = Vec::new();
            rc.stdout.take().unwrap().read_to_end(&mut v).await.unwrap();
            rc.stderr.take().unwrap().read_to_end(&mut v).await.unwrap();
            rc.wait().await.unwrap();
            out.push(t.elapsed());
        }
    }
    println!("exec of `true` in a running container, N={n}, p50 ms (CRI call to exit status):");
    let s = p50(sync);
    for (name, v) in [
        ("ExecSync", s),
        ("Exec, SPDY v4", p50(spdy)),
        ("Exec, WebSocket v5", p50(ws)),
    ] {
        println!("  {name:<22} {v:8.2}   x{:.2} of ExecSync", v / s);
    }
    // Port-forward throughput: 256 MiB into a sink in the pod.
    let url = c
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![9000],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let pf = client::port_forward(&url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = pf.open(9000).await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..256 {
        conn.data.write_all(&chunk).await.unwrap();
    }
    conn.data.shutdown().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "port-forward into the pod (SPDY): 256 MiB in {secs:.2} s = {:.0} MiB/s",
        256.0 / secs
    );
    pf.close().await;
}
