//! Interoperability with the real Kubernetes client: kubectl (client-go's
//! SPDY and WebSocket executors, and its SPDY port-forwarder) talks to a fake
//! API server that, like the real one, proxies the upgraded request to the
//! streaming URL. Skipped (with a message) where kubectl is not installed.

mod common;

use std::net::SocketAddr;
use std::process::Stdio as PStdio;
use std::sync::Arc;
use std::time::Duration;

use berth_streaming::{Config, Request, ServerHandle};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn kubectl() -> Option<&'static str> {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: kubectl is not installed");
    }
    found.then_some("kubectl")
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
                );
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(target: &str) -> Vec<(String, String)> {
    target
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), unescape(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Mints the streaming URL for a kubectl request, as kubelet would from the CRI response.
fn mint(srv: &ServerHandle, path: &str, q: &[(String, String)]) -> Option<String> {
    let flag = |k: &str| q.iter().any(|(n, v)| n == k && (v == "true" || v == "1"));
    let req = if path.ends_with("/exec") {
        let cmd = q
            .iter()
            .filter(|(n, _)| n == "command")
            .map(|(_, v)| v.clone())
            .collect();
        Request::Exec {
            container_id: "c".into(),
            cmd,
            tty: flag("tty"),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
        }
    } else if path.ends_with("/attach") {
        Request::Attach {
            container_id: "ctr".into(),
            tty: flag("tty"),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
        }
    } else if path.ends_with("/portforward") {
        Request::PortForward {
            pod_id: "p1".into(),
            ports: vec![],
        }
    } else {
        return None;
    };
    srv.url_for(req).ok()
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1","namespace":"default"},"spec":{"containers":[{"name":"c","image":"x","stdin":true,"stdinOnce":true}]},"status":{"phase":"Running"}}"#;
const API: &str = r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#;
const APIS: &str = r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#;
const RESOURCES: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},
{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},
{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#;
const NOT_FOUND: &str =
    r#"{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404}"#;

/// Upgrade headers of the requests the fake API server proxied.
static UPGRADES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A fake API server: answers discovery and GET pod, proxies exec/portforward upgrades.
async fn apiserver(srv: ServerHandle) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let srv = srv.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut b = [0u8; 4096];
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let rest = buf[end..].to_vec();
                    let mut line = head.lines().next().unwrap_or("").split_whitespace();
                    let (method, target) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    let path = target.split('?').next().unwrap();
                    if let Some(url) = mint(&srv, path, &query(target)) {
                        let upgrade = head
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("upgrade:"))
                            .unwrap_or("")
                            .to_string();
                        UPGRADES.lock().unwrap().push(format!("{path} {upgrade}"));
                        // Proxy the upgrade: same headers, the streaming URL's path.
                        let (_, spath) = url.split_once(&srv.local_addr().to_string()).unwrap();
                        let mut up = TcpStream::connect(srv.local_addr()).await.unwrap();
                        let new_head = head.replacen(target, spath, 1);
                        up.write_all(new_head.as_bytes()).await.unwrap();
                        up.write_all(&rest).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                        return;
                    }
                    buf = rest;
                    // Just enough discovery for kubectl to find pods.
                    let (status, body) = match (method, path) {
                        ("GET", "/api/v1/namespaces/default/pods/p1") => ("200 OK", POD),
                        ("GET", "/api") => ("200 OK", API),
                        ("GET", "/apis") => ("200 OK", APIS),
                        ("GET", "/api/v1") => ("200 OK", RESOURCES),
                        _ => ("404 Not Found", NOT_FOUND),
                    };
                    let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if c.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    a
}

fn kubectl_cmd(api: SocketAddr, websockets: bool, args: &[&str]) -> tokio::process::Command {
    kubectl_cmd_pf(api, websockets, false, args)
}

fn kubectl_cmd_pf(
    api: SocketAddr,
    websockets: bool,
    pf_websockets: bool,
    args: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("kubectl");
    c.env("KUBECONFIG", "/dev/null")
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if pf_websockets { "true" } else { "false" },
        )
        .arg(format!("--server=http://{api}"))
        .arg("--request-timeout=20s")
        .args(args)
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_over_spdy_and_websocket() {
    let Some(_) = kubectl() else { return };
    let (_b, srv) = start(Config::default()).await;
    let api = apiserver(srv).await;
    for ws in [false, true] {
        let out = kubectl_cmd(
            api,
            ws,
            &[
                "exec",
                "p1",
                "-c",
                "c",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        )
        .output()
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "out\n",
            "websockets={ws}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err\n"),
            "websockets={ws}"
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "websockets={ws}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // stdin through to the command and EOF at the end, like `kubectl cp`.
        let data = pseudo_random(4 << 20, 11);
        let mut child = kubectl_cmd(
            api,
            ws,
            &["exec", "-i", "p1", "-c", "c", "--", "sh", "-c", "cat"],
        )
        .stdin(PStdio::piped())
        .stdout(PStdio::piped())
        .stderr(PStdio::piped())
        .spawn()
        .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let d = Arc::new(data);
        let d2 = d.clone();
        let w = tokio::spawn(async move {
            // kubectl reports its own failures; the output check below shows them.
            let _ = stdin.write_all(&d2).await;
        });
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        w.await.unwrap();
        assert!(
            out.status.success(),
            "websockets={ws}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == *d,
            "websockets={ws}: {} bytes back; {}",
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// kubectl port-forward over SPDY, and (kubectl 1.31+) over SPDY tunnelled
/// in WebSocket messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward() {
    let Some(_) = kubectl() else { return };
    let (backend, srv) = start(Config::default()).await;
    let http = http_server("127.0.0.1:0", "pod").await;
    backend.pods.lock().unwrap().insert("p1".into(), http);
    let api = apiserver(srv).await;
    for tunnel in [false, true] {
        let local = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ports = format!("{local}:{}", http.port());
        let mut child = kubectl_cmd_pf(api, false, tunnel, &["port-forward", "pod/p1", &ports])
            .stdout(PStdio::piped())
            .stderr(PStdio::piped())
            .spawn()
            .unwrap();
        // kubectl prints "Forwarding from ..." once it listens.
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("Forwarding from") {
            let n = tokio::time::timeout(Duration::from_secs(30), stdout.read(&mut b))
                .await
                .expect("kubectl port-forward started")
                .unwrap();
            assert!(n > 0, "kubectl port-forward exited");
            seen.extend_from_slice(&b[..n]);
        }
        let mut tasks = Vec::new();
        for i in 0..50 {
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
                s.write_all(format!("GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut r = Vec::new();
                s.read_to_end(&mut r).await.unwrap();
                (i, String::from_utf8_lossy(&r).to_string())
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert!(
                r.ends_with(&format!("pod /k{i}")),
                "tunnel={tunnel} {i}: {r:?}"
            );
        }
        child.kill().await.unwrap();
        let last = UPGRADES
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|u| u.contains("/portforward"))
            .cloned()
            .unwrap_or_default();
        let want = if tunnel { "websocket" } else { "SPDY/3.1" };
        assert!(
            last.to_ascii_lowercase()
                .contains(&want.to_ascii_lowercase()),
            "tunnel={tunnel}: {last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach() {
    let Some(_) = kubectl() else { return };
    let (backend, srv) = start(Config::default()).await;
    let api = apiserver(srv).await;
    for ws in [false, true] {
        let mut ctr = backend.start_container("ctr", &["cat"]);
        let mut child = kubectl_cmd(api, ws, &["attach", "-i", "p1", "-c", "c"])
            .stdin(PStdio::piped())
            .stdout(PStdio::piped())
            .stderr(PStdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        // stdin_once: our EOF ends the container's input, so it exits and attach ends.
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "websockets={ws}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ping\n",
            "websockets={ws}"
        );
        assert!(ctr.wait().await.unwrap().success());
    }
}

/// `kubectl exec -it` on a terminal (from `script`): the terminal's size
/// travels on the resize stream to the backend's pty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_tty_resize() {
    let Some(_) = kubectl() else { return };
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: script is not installed");
        return;
    }
    let (backend, srv) = start(Config::default()).await;
    let api = apiserver(srv).await;
    for ws in [false, true] {
        backend.resizes.lock().unwrap().clear();
        let line = format!(
            "stty cols 100 rows 40; exec kubectl --server=http://{api} --request-timeout=20s exec -it p1 -c c -- sh -c 'read x; stty size'"
        );
        let mut child = tokio::process::Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("KUBECONFIG", "/dev/null")
            .env(
                "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
                if ws { "true" } else { "false" },
            )
            .stdin(PStdio::piped())
            .stdout(PStdio::piped())
            .stderr(PStdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut seen = false;
        for _ in 0..1000 {
            if backend
                .resizes
                .lock()
                .unwrap()
                .contains(&berth_streaming::TermSize {
                    width: 100,
                    height: 40,
                })
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "websockets={ws}: no resize reached the backend");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"\r").await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("40 100"),
            "websockets={ws}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(stdin);
    }
}
