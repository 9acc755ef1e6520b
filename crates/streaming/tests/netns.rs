//! `netns::dial` reaches servers inside another network namespace, on IPv4
//! and (falling back) on IPv6 loopback. Needs root, unshare, ip, python3.

use std::time::Duration;

use berth_streaming::netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python HTTP server alone in a new network namespace.
fn server_in_netns(bind: &str) -> Child {
    let script = format!("ip link set lo up && exec python3 -m http.server --bind {bind} 8080");
    Child(
        std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("unshare"),
    )
}

#[tokio::test]
async fn dial_into_a_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to create a network namespace");
        return;
    }
    for bind in ["127.0.0.1", "::1"] {
        let child = server_in_netns(bind);
        let ns = format!("/proc/{}/ns/net", child.0.id());
        // Nothing listens on 8080 in this test's own namespace; wait for python there.
        let mut conn = None;
        for _ in 0..500 {
            match netns::dial(
                Some(std::path::Path::new(&ns)),
                8080,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let mut c = conn.unwrap_or_else(|| panic!("no server in {ns} on {bind}"));
        assert_eq!(c.peer_addr().unwrap().ip().to_string(), bind);
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut b = Vec::new();
        c.read_to_end(&mut b).await.unwrap();
        assert!(
            b.starts_with(b"HTTP/1.0 200"),
            "{}",
            String::from_utf8_lossy(&b[..b.len().min(80)])
        );
    }
    let e = netns::dial(
        Some(std::path::Path::new("/nonexistent/ns")),
        1,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
}
