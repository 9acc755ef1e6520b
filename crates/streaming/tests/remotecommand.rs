//! Exec and attach through every protocol version, against host processes.

mod common;

use std::time::Duration;

use berth_streaming::client::{remote_command, ExecOptions, Transport};
use berth_streaming::status::Outcome;
use berth_streaming::{protocol, Config, Request, TermSize};
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn exec(cmd: Vec<String>, stdin: bool, tty: bool) -> Request {
    Request::Exec {
        container_id: "c1".into(),
        cmd,
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

const ALL: &[(Transport, &str)] = &[
    (Transport::Spdy, protocol::V1),
    (Transport::Spdy, protocol::V2),
    (Transport::Spdy, protocol::V3),
    (Transport::Spdy, protocol::V4),
    (Transport::Spdy, protocol::V5),
    (Transport::WebSocket, protocol::V1),
    (Transport::WebSocket, protocol::BASE64),
    (Transport::WebSocket, protocol::V4),
    (Transport::WebSocket, protocol::V4_BASE64),
    (Transport::WebSocket, protocol::V5),
];

fn json_status(p: &str) -> bool {
    matches!(p, protocol::V4 | protocol::V4_BASE64 | protocol::V5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_and_exit_codes_on_every_protocol() {
    let (_b, srv) = start(Config::default()).await;
    for &(t, p) in ALL {
        for code in [0, 3] {
            let url = srv
                .url_for(exec(
                    sh(&format!("echo out; echo err >&2; exit {code}")),
                    false,
                    false,
                ))
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
            .unwrap_or_else(|e| panic!("{t:?} {p}: {e}"));
            assert_eq!(rc.protocol, p);
            let (out, err) = tokio::join!(read_all(rc.stdout.take()), read_all(rc.stderr.take()));
            assert_eq!(String::from_utf8_lossy(&out), "out\n", "{t:?} {p}");
            assert_eq!(String::from_utf8_lossy(&err), "err\n", "{t:?} {p}");
            let outcome = rc.wait().await.unwrap();
            match (code, json_status(p)) {
                (0, _) => assert_eq!(outcome, Outcome::Success, "{t:?} {p}"),
                (_, true) => assert_eq!(outcome, Outcome::ExitCode(3), "{t:?} {p}"),
                (_, false) => {
                    assert!(
                        matches!(&outcome, Outcome::Failure(m) if m.contains("exit code 3")),
                        "{t:?} {p}: {outcome:?}"
                    )
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failure_is_reported() {
    let (_b, srv) = start(Config::default()).await;
    let url = srv
        .url_for(exec(vec!["/nonexistent/program".into()], false, false))
        .unwrap();
    let rc = remote_command(
        &url,
        Transport::Spdy,
        &[protocol::V4],
        ExecOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match rc.wait().await.unwrap() {
        Outcome::Failure(m) => assert!(m.contains("/nonexistent/program"), "{m}"),
        o => panic!("{o:?}"),
    }
}

/// `kubectl cp`-sized binary data through stdin and back out of stdout.
async fn big_transfer(t: Transport, p: &str) {
    let (_b, srv) = start(Config::default()).await;
    let data = pseudo_random(32 << 20, 0x5eed);
    let want = Sha256::digest(&data);
    let url = srv.url_for(exec(vec!["cat".into()], true, false)).unwrap();
    let mut rc = remote_command(
        &url,
        t,
        &[p],
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
    let mut stdout = rc.stdout.take().unwrap();
    let writer = tokio::spawn(async move {
        for c in data.chunks(100_000) {
            stdin.write_all(c).await.unwrap();
        }
        stdin.shutdown().await.unwrap();
        stdin
    });
    let mut h = Sha256::new();
    let mut n = 0usize;
    let mut b = vec![0u8; 64 << 10];
    loop {
        let k = stdout.read(&mut b).await.unwrap();
        if k == 0 {
            break;
        }
        h.update(&b[..k]);
        n += k;
    }
    let _stdin = writer.await.unwrap();
    assert_eq!(n, 32 << 20);
    assert_eq!(h.finalize(), want, "{t:?} {p}: checksum");
    assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_binary_transfer_spdy() {
    big_transfer(Transport::Spdy, protocol::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_binary_transfer_websocket_v5() {
    big_transfer(Transport::WebSocket, protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_reaches_the_process() {
    let (_b, srv) = start(Config::default()).await;
    // base64 WebSocket has no way to close stdin; v5 and SPDY do.
    for (t, p) in [
        (Transport::Spdy, protocol::V2),
        (Transport::Spdy, protocol::V4),
        (Transport::WebSocket, protocol::V5),
    ] {
        let url = srv.url_for(exec(sh("wc -c"), true, false)).unwrap();
        let mut rc = remote_command(
            &url,
            t,
            &[p],
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
        stdin.write_all(b"hello world").await.unwrap();
        stdin.shutdown().await.unwrap();
        let out = read_all(rc.stdout.take()).await;
        assert_eq!(String::from_utf8_lossy(&out).trim(), "11", "{t:?} {p}");
        assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_resize_reaches_the_terminal() {
    let (backend, srv) = start(Config::default()).await;
    for (t, p) in [
        (Transport::Spdy, protocol::V3),
        (Transport::Spdy, protocol::V4),
        (Transport::WebSocket, protocol::V5),
    ] {
        backend.resizes.lock().unwrap().clear();
        let url = srv
            .url_for(exec(sh("read x; stty size; exit 7"), true, true))
            .unwrap();
        let mut rc = remote_command(
            &url,
            t,
            &[p],
            ExecOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true,
            },
        )
        .await
        .unwrap();
        assert!(rc.stderr.is_none());
        rc.resize(TermSize {
            width: 123,
            height: 45,
        })
        .await
        .unwrap();
        // Wait until the size was applied before the program asks for it.
        for _ in 0..500 {
            if !backend.resizes.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            backend.resizes.lock().unwrap().as_slice(),
            &[TermSize {
                width: 123,
                height: 45
            }]
        );
        let mut stdin = rc.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        let out = read_all(rc.stdout.take()).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("45 123"), "{t:?} {p}: {text:?}");
        let outcome = rc.wait().await.unwrap();
        if json_status(p) {
            assert_eq!(outcome, Outcome::ExitCode(7), "{t:?} {p}");
        } else {
            assert!(
                matches!(&outcome, Outcome::Failure(m) if m.contains("exit code 7")),
                "{t:?} {p}: {outcome:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_running_process() {
    let (backend, srv) = start(Config::default()).await;
    for (i, (t, p)) in [
        (Transport::Spdy, protocol::V4),
        (Transport::WebSocket, protocol::V5),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("ctr{i}");
        let mut child = backend.start_container(&id, &["cat"]);
        let url = srv
            .url_for(Request::Attach {
                container_id: id,
                tty: false,
                stdin: true,
                stdout: true,
                stderr: false,
            })
            .unwrap();
        let mut rc = remote_command(
            &url,
            t,
            &[p],
            ExecOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            },
        )
        .await
        .unwrap();
        let mut stdin = rc.stdin.take().unwrap();
        let mut stdout = rc.stdout.take().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        let mut b = [0u8; 5];
        stdout.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping\n");
        // stdin_once: closing stdin ends the container's input, so it exits.
        stdin.shutdown().await.unwrap();
        let rest = read_all(Some(stdout)).await;
        assert!(rest.is_empty());
        assert_eq!(rc.wait().await.unwrap(), Outcome::Success);
        assert!(child.wait().await.unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_missing_container_fails() {
    let (_b, srv) = start(Config::default()).await;
    let url = srv
        .url_for(Request::Attach {
            container_id: "nope".into(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .unwrap();
    let rc = remote_command(
        &url,
        Transport::Spdy,
        &[protocol::V4],
        ExecOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(rc.wait().await.unwrap(), Outcome::Failure(m) if m.contains("nope")));
}

/// A client that goes away cancels its exec: the backend's future is
/// dropped, which here kills the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_exec() {
    let (_b, srv) = start(Config::default()).await;
    for (t, p) in [
        (Transport::Spdy, protocol::V4),
        (Transport::WebSocket, protocol::V5),
    ] {
        let url = srv
            .url_for(exec(sh("echo $$; exec sleep 60"), true, false))
            .unwrap();
        let mut rc = remote_command(
            &url,
            t,
            &[p],
            ExecOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            },
        )
        .await
        .unwrap();
        let mut stdout = rc.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            assert_eq!(stdout.read(&mut b).await.unwrap(), 1);
            line.push(b[0]);
        }
        let pid: u32 = String::from_utf8_lossy(&line).trim().parse().unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(stdout);
        drop(rc);
        let mut gone = false;
        for _ in 0..1000 {
            // Gone, or a zombie about to be reaped.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            gone,
            "{t:?}: process {pid} still runs after the client left"
        );
    }
}
