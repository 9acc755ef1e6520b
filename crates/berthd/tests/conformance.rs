//! What the kubelet and the CRI suite expect of a runtime, where berth once
//! chose its own policy: ephemeral containers targeting another container's
//! processes (`kubectl debug --target`), port-forward into host-network
//! pods, and stop signals that are never lost to a program that has not
//! installed its handler yet.

mod common;
use berth_cri_api::v1 as cri;
use berth_streaming::client;
use berth_streaming::protocol;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_pid_mode(
    mut c: cri::ContainerConfig,
    pid: cri::NamespaceMode,
    target: &str,
) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: pid as i32,
                target_id: target.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

async fn create(
    c: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    pod: &str,
    cfg: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_container_joins_its_targets_pid_namespace() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    // Containers of this pod each have a PID namespace of their own.
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("dbg", &b.logs()),
        vec![
            ctr_config("app", &["sh", "-c", "sleep 4242; exit 7"]),
            ctr_config("other", &["sleep", "4343"]),
        ],
    )
    .await;
    let (app, other) = (&ids[0], &ids[1]);
    let dbg_cfg = with_pid_mode(
        ctr_config("debugger", &["sleep", "4444"]),
        cri::NamespaceMode::Target,
        app,
    );
    let dbg = create(&mut c, &pod, dbg_cfg).await.unwrap();
    c.start_container(cri::StartContainerRequest {
        container_id: dbg.clone(),
    })
    .await
    .unwrap();
    // It sees the target's processes (and only those), and can signal them.
    let ps = exec(&mut c, &dbg, &["ps", "-o", "pid,args"]).await;
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(ps.contains("sleep 4242"), "{ps}");
    assert!(ps.contains("sleep 4444"), "{ps}");
    assert!(!ps.contains("sleep 4343"), "{ps}");
    // The target's init is PID 1 there; its own view shows the debugger.
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some("1") && l.contains("sleep 4242; exit 7")),
        "{ps}"
    );
    let own = exec(&mut c, app, &["ps", "-o", "pid,args"]).await;
    let own = String::from_utf8_lossy(&own.stdout).to_string();
    assert!(own.contains("sleep 4444"), "{own}");
    // And it can signal them: the target's sleep ends, and so does the target.
    let sleep_pid = ps
        .lines()
        .find(|l| l.trim_end().ends_with("sleep 4242"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{ps}"))
        .to_string();
    let k = exec(&mut c, &dbg, &["kill", &sleep_pid]).await;
    assert_eq!(k.exit_code, 0, "{}", String::from_utf8_lossy(&k.stderr));
    let st = wait_exited(&mut c, app).await;
    assert_eq!(st.exit_code, 7, "{st:?}");

    // Refused, naming the field, and leaving nothing behind: no target, a
    // target that does not exist or is another pod's, one not running.
    let field = "config.linux.security_context.namespace_options.target_id";
    let (pod2, ids2) = run_pod(
        &mut c,
        pod_config("dbg2", &b.logs()),
        vec![ctr_config("elsewhere", &["sleep", "4545"])],
    )
    .await;
    for (name, target) in [
        ("t1", ""),
        ("t2", "0123456789abcdef"),
        ("t3", ids2[0].as_str()),
        // The target has exited by now.
        ("t4", app.as_str()),
    ] {
        let cfg = with_pid_mode(
            ctr_config(name, &["true"]),
            cri::NamespaceMode::Target,
            target,
        );
        let e = create(&mut c, &pod, cfg).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().starts_with(field), "{name}: {}", e.message());
    }
    let listed = c
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 4, "{listed:?}");
    // The other container was never visible to the debugger, and runs on.
    assert_eq!(
        status(&mut c, other).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    stop_and_remove_pod(&mut c, &pod).await;
    stop_and_remove_pod(&mut c, &pod2).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_a_host_network_pod_reaches_the_nodes_ports() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let port = berth_testutil::registry::free_port();
    let mut cfg = pod_config("hostpf", &b.logs());
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let serve = format!(
        "mkdir -p /www && echo host-network > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let (pod, _ids) = run_pod(&mut c, cfg, vec![ctr_config("web", &["sh", "-c", &serve])]).await;
    // The server is on the node's loopback.
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "httpd did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = || async {
        let mut c = b.rt().await;
        c.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![port as i32],
        })
        .await
        .unwrap()
        .into_inner()
        .url
    };
    let request = "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n";
    // SPDY.
    let pf = client::port_forward(&url().await).await.unwrap();
    let mut conn = pf.open(port).await.unwrap();
    conn.data.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    conn.data.read_to_string(&mut resp).await.unwrap();
    assert!(resp.ends_with("host-network\n"), "SPDY: {resp}");
    pf.close().await;
    // WebSocket.
    let mut pf = client::port_forward_ws(&url().await, &[port], &[protocol::PORT_FORWARD])
        .await
        .unwrap();
    let (_, data, _) = &mut pf.ports[0];
    data.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.unwrap();
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.ends_with("host-network\n"), "WebSocket: {got}");
    pf.close().await;
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

async fn stop(
    c: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    timeout: i64,
) -> Duration {
    let t = Instant::now();
    c.stop_container(cri::StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .unwrap();
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_start_is_never_lost() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let pod = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("stops", &b.logs())),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // `top` installs its SIGTERM handler a moment after it starts; a
    // StopContainer in between must still stop it quickly (the grace period
    // is the CRI suite's 60 s).
    let mut slowest = Duration::ZERO;
    let mut total = Duration::ZERO;
    const CYCLES: u32 = 200;
    for i in 0..CYCLES {
        let id = create(&mut c, &pod, ctr_config(&format!("top{i}"), &["top"]))
            .await
            .unwrap();
        c.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        let took = stop(&mut c, &id, 60).await;
        let st = status(&mut c, &id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert!(
            took < Duration::from_secs(1),
            "cycle {i}: the stop took {took:?}"
        );
        slowest = slowest.max(took);
        total += took;
        c.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    eprintln!(
        "{CYCLES} create/start/stop cycles of top: stop mean {:?}, slowest {slowest:?}",
        total / CYCLES
    );

    // A program that ignores SIGTERM still gets SIGKILL at the deadline.
    let id = create(
        &mut c,
        &pod,
        ctr_config(
            "stubborn",
            &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        ),
    )
    .await
    .unwrap();
    c.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    // Let the shell set its disposition first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = stop(&mut c, &id, 2).await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let st = status(&mut c, &id).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

/// The kubelet decides which sysctls a pod may have; an operator who wants
/// to deny more says so in berth.toml, and the refusal names the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deny_list_refuses_sysctls_by_name() {
    let b = Berthd::start_with(Options {
        runtime_toml: "denied_sysctls = [\"net.core.*\", \"kernel.msgmax\"]".into(),
        ..Default::default()
    });
    let mut c = b.rt().await;
    for key in ["net.core.somaxconn", "kernel.msgmax"] {
        let mut cfg = pod_config("denied", &b.logs());
        cfg.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [(key.to_string(), "100".to_string())].into(),
            ..Default::default()
        });
        let e = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{key}: {e:?}");
        assert!(
            e.message()
                .starts_with(&format!("config.linux.sysctls[{key}]"))
                && e.message().contains("denied_sysctls"),
            "{key}: {}",
            e.message()
        );
    }
    // What the list does not name is applied.
    let mut cfg = pod_config("allowed", &b.logs());
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("kernel.msgmnb".to_string(), "65536".to_string())].into(),
        ..Default::default()
    });
    let (pod, ids) = run_pod(&mut c, cfg, vec![ctr_config("s", &["sleep", "4646"])]).await;
    let r = exec(&mut c, &ids[0], &["cat", "/proc/sys/kernel/msgmnb"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "65536");
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}
