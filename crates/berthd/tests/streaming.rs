//! Exec, Attach and PortForward through berthd's streaming server, with
//! the project's SPDY and WebSocket clients, against real containers.

mod common;
use berth_cri_api::v1 as cri;
use berth_streaming::client::{self, ExecOptions, Transport};
use berth_streaming::protocol;
use berth_streaming::status::Outcome;
use common::*;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn exec_url(
    c: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
) -> String {
    c.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_and_websocket_with_exit_codes_and_a_binary_round_trip() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let (_pod, ids) = run_pod(
        &mut c,
        pod_config("stream", &b.logs()),
        vec![ctr_config("s", &["sleep", "1000"])],
    )
    .await;
    for (transport, protos) in [
        (Transport::Spdy, protocol::SPDY_REMOTECOMMAND),
        (Transport::WebSocket, protocol::WS_REMOTECOMMAND),
    ] {
        // Output, stderr and a non-zero exit code.
        let url = exec_url(
            &mut c,
            &ids[0],
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            false,
        )
        .await;
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
        let mut out = String::new();
        rc.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        rc.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(rc.wait().await.unwrap(), Outcome::ExitCode(7));
        // 8 MiB through stdin and back out (kubectl cp style), checksummed.
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let url = exec_url(&mut c, &ids[0], &["cat"], false, true).await;
        let mut rc = client::remote_command(
            &url,
            transport,
            protos,
            ExecOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut stdin = rc.stdin.take().unwrap();
        let d2 = data.clone();
        let w = tokio::spawn(async move {
            stdin.write_all(&d2).await.unwrap();
            stdin.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        rc.stdout
            .take()
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        w.await.unwrap();
        assert_eq!(sha2::Sha256::digest(&back), sha2::Sha256::digest(&data));
        assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
    }
    // A tty exec sees a terminal.
    let url = exec_url(
        &mut c,
        &ids[0],
        &["sh", "-c", "test -t 1 && echo tty"],
        true,
        false,
    )
    .await;
    let mut rc = client::remote_command(
        &url,
        Transport::Spdy,
        protocol::SPDY_REMOTECOMMAND,
        ExecOptions {
            stdout: true,
            tty: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut out = String::new();
    rc.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out.trim(), "tty");
    assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
    // A URL is good once.
    let url = exec_url(&mut c, &ids[0], &["true"], false, false).await;
    // (The streams opened match what the CRI request asked for.)
    let opts = ExecOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut rc = client::remote_command(&url, Transport::Spdy, protocol::SPDY_REMOTECOMMAND, opts)
        .await
        .unwrap();
    let mut sink = Vec::new();
    rc.stdout
        .take()
        .unwrap()
        .read_to_end(&mut sink)
        .await
        .unwrap();
    rc.stderr
        .take()
        .unwrap()
        .read_to_end(&mut sink)
        .await
        .unwrap();
    assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
    assert!(
        client::remote_command(&url, Transport::Spdy, protocol::SPDY_REMOTECOMMAND, opts)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_once_and_port_forward_into_the_pod() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut sh = ctr_config("sh", &["sh", "-c", "read line; echo got $line"]);
    sh.stdin = true;
    sh.stdin_once = true;
    let web = ctr_config(
        "web",
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:8080",
            "-h",
            "/etc",
        ],
    );
    let (pod, ids) = run_pod(&mut c, pod_config("att", &b.logs()), vec![sh, web]).await;
    // The shell waits on stdin: still running.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        status(&mut c, &ids[0]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let url = c
        .attach(cri::AttachRequest {
            container_id: ids[0].clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut rc = client::remote_command(
        &url,
        Transport::Spdy,
        protocol::SPDY_REMOTECOMMAND,
        ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        },
    )
    .await
    .unwrap();
    let mut stdin = rc.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut out = String::new();
    rc.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "got hello\n");
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!(s.exit_code, 0);

    // Port-forward to a server listening on the pod's loopback only.
    let url = c
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let pf = client::port_forward(&url).await.unwrap();
    let mut got = String::new();
    for _ in 0..50 {
        let mut conn = pf.open(8080).await.unwrap();
        conn.data
            .write_all(b"GET /hostname HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        let _ = conn.data.read_to_string(&mut resp).await;
        if resp.contains("200 OK") {
            got = resp;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(got.ends_with("att\n"), "{got}");
    // 50 requests in parallel over the one port-forward connection.
    let pf = std::sync::Arc::new(pf);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pf.open(8080).await.unwrap();
            conn.data
                .write_all(b"GET /hostname HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut resp = String::new();
            conn.data.read_to_string(&mut resp).await.unwrap();
            resp
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.contains("200 OK") && r.ends_with("att\n"), "{r}");
    }
    match std::sync::Arc::try_unwrap(pf) {
        Ok(pf) => pf.close().await,
        Err(_) => panic!("port-forward still shared"),
    }
}
