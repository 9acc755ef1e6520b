//! berthd driven through its CRI socket: pods, containers, logs, exec,
//! stats, networking — real containers, real CNI plugins.

mod common;
use berth_cri_api::v1 as cri;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_two_containers_shares_localhost_and_logs() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let v = c
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );
    let cfg = pod_config("two", &b.logs());
    let server = ctr_config(
        "server",
        &[
            "sh",
            "-c",
            "echo serving; busybox httpd -f -p 127.0.0.1:8080 -h /etc",
        ],
    );
    let client = ctr_config("client", &["sh", "-c", "sleep 1000"]);
    let (pod, ids) = run_pod(&mut c, cfg, vec![server, client]).await;
    // The client reaches the server's loopback-only port: one network namespace.
    let mut got = String::new();
    for _ in 0..100 {
        let r = exec(
            &mut c,
            &ids[1],
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/hostname"],
        )
        .await;
        got = String::from_utf8_lossy(&r.stdout).to_string();
        if r.exit_code == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(got.trim(), "two");
    // The pod has an IP from the bridge's subnet, and the container sees it.
    let ps = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let ip = ps.status.unwrap().network.unwrap().ip;
    assert!(ip.starts_with(&b.subnet_prefix), "{ip}");
    let r = exec(&mut c, &ids[1], &["ip", "-4", "addr", "show", "eth0"]).await;
    assert!(String::from_utf8_lossy(&r.stdout).contains(&ip));
    // The server's stdout is in its CRI log.
    let log = std::fs::read_to_string(b.logs().join("two/server.log")).unwrap();
    let first = log.lines().next().unwrap();
    let parts: Vec<&str> = first.splitn(4, ' ').collect();
    assert_eq!(&parts[1..], &["stdout", "F", "serving"], "{log}");
    // Stop and remove, twice (idempotent), and the pod's IP is released.
    for _ in 0..2 {
        stop_and_remove_pod(&mut c, &pod).await;
    }
    let left = c
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(left.containers.is_empty());
    let ipam = b.tmp.path().join("ipam");
    let allocated: Vec<_> = std::fs::read_dir(&ipam)
        .map(|rd| {
            rd.flatten()
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !allocated.iter().any(|n| n.to_string_lossy() == ip),
        "{allocated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_reasons_and_exec_sync() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let cfg = pod_config("codes", &b.logs());
    let (_pod, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config("ok", &["true"]),
            ctr_config("fail", &["sh", "-c", "exit 3"]),
            ctr_config(
                "sleeper",
                &["sh", "-c", "trap 'exit 42' TERM; sleep 1000 & wait"],
            ),
        ],
    )
    .await;
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    let s = wait_exited(&mut c, &ids[1]).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    assert!(
        s.image_ref.starts_with("sha256:") || s.image_ref.contains('@'),
        "{}",
        s.image_ref
    );
    assert!(!s.image_id.is_empty());
    // ExecSync: output, exit code, stderr.
    let r = exec(
        &mut c,
        &ids[2],
        &["sh", "-c", "echo hi; echo err >&2; exit 4"],
    )
    .await;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"err\n"[..], 4)
    );
    // A timeout kills the exec's whole process tree.
    let e = c
        .exec_sync(cri::ExecSyncRequest {
            container_id: ids[2].clone(),
            cmd: vec!["sh".into(), "-c".into(), "sleep 600 & sleep 601".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("timed out"), "{e:?}");
    let r = exec(&mut c, &ids[2], &["ps"]).await;
    let ps = String::from_utf8_lossy(&r.stdout);
    assert!(!ps.contains("sleep 60"), "{ps}");
    // StopContainer sends SIGTERM first (the shell's trap answers it).
    c.stop_container(cri::StopContainerRequest {
        container_id: ids[2].clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let s = status(&mut c, &ids[2]).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 42);
    // Idempotent stop/remove, and unknown ids succeed.
    c.stop_container(cri::StopContainerRequest {
        container_id: ids[2].clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    c.remove_container(cri::RemoveContainerRequest {
        container_id: ids[2].clone(),
    })
    .await
    .unwrap();
    c.remove_container(cri::RemoveContainerRequest {
        container_id: ids[2].clone(),
    })
    .await
    .unwrap();
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    let e = c
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

async fn pod_ip(
    c: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    pod: &str,
) -> String {
    c.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
    .ip
}

async fn retry_exec(
    c: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    cmd: &[&str],
) -> cri::ExecSyncResponse {
    let mut r = exec(c, id, cmd).await;
    for _ in 0..100 {
        if r.exit_code == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r = exec(c, id, cmd).await;
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_talk_over_the_bridge_and_a_host_port_reaches_a_pod() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut server_cfg = pod_config("web", &b.logs());
    server_cfg.port_mappings.push(cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    });
    let host_port = server_cfg.port_mappings[0].host_port;
    let (web, _) = run_pod(
        &mut c,
        server_cfg,
        vec![ctr_config(
            "httpd",
            &["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
        )],
    )
    .await;
    let (_cl, cids) = run_pod(
        &mut c,
        pod_config("client", &b.logs()),
        vec![ctr_config("c", &["sleep", "1000"])],
    )
    .await;
    let web_ip = pod_ip(&mut c, &web).await;
    let r = retry_exec(
        &mut c,
        &cids[0],
        &[
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{web_ip}/hostname"),
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "web", "{r:?}");
    // From the host, through the port mapping on the bridge's address.
    let url = format!("http://{}.1:{host_port}/hostname", b.subnet_prefix);
    let mut body = String::new();
    for _ in 0..100 {
        let o = std::process::Command::new("busybox")
            .args(["wget", "-q", "-O", "-", &url])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(body.trim(), "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_are_reported_and_stats_are_filled() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut hog = ctr_config(
        "hog",
        &[
            "sh",
            "-c",
            "exec dd if=/dev/zero of=/dev/null bs=256M count=1",
        ],
    );
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut busy = ctr_config("busy", &["sh", "-c", "while true; do :; done"]);
    // The kubelet's value for guaranteed pods; berthd lacks CAP_SYS_RESOURCE
    // here, so it is clamped (with a warning) instead of failing the pod.
    busy.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            oom_score_adj: -997,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (pod, ids) = run_pod(&mut c, pod_config("oom", &b.logs()), vec![hog, busy]).await;
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!(
        (s.reason.as_str(), s.exit_code),
        ("OOMKilled", 137),
        "{s:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let st = c
        .container_stats(cri::ContainerStatsRequest {
            container_id: ids[1].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(st.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(st.memory.unwrap().working_set_bytes.is_some());
    assert!(st.writable_layer.unwrap().used_bytes.is_some());
    let all = c
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.stats.len(), 1, "only running containers");
    let ps = c
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = ps.linux.unwrap();
    assert_eq!(
        linux.network.unwrap().default_interface.unwrap().name,
        "eth0"
    );
    assert_eq!(linux.containers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_leave_nothing() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut bad = pod_config("bad", &b.logs());
    bad.metadata.as_mut().unwrap().uid.clear();
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("config.metadata.uid"),
        "{}",
        e.message()
    );
    let mut inj = pod_config("inj", &b.logs());
    inj.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [(
            "net.ipv4.ip_forward".to_string(),
            "0\nkernel.panic=1".to_string(),
        )]
        .into(),
        ..Default::default()
    });
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(inj),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("config.linux.sysctls[net.ipv4.ip_forward]"),
        "{}",
        e.message()
    );
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("h", &b.logs())),
            runtime_handler: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("runtime_handler"), "{}", e.message());
    assert_eq!(b.leaks(), Vec::<String>::new());
    // A container whose mount is bad: rejected, nothing of it left.
    let (pod, _) = run_pod(&mut c, pod_config("ok", &b.logs()), vec![]).await;
    let mut cfg = ctr_config("m", &["true"]);
    cfg.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: "relative/path".into(),
        ..Default::default()
    });
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("config.mounts[0].host_path"),
        "{}",
        e.message()
    );
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                image: None,
                ..ctr_config("x", &["true"])
            }),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("config.image.image"),
        "{}",
        e.message()
    );
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                image: Some(cri::ImageSpec {
                    image: "no/such:image".into(),
                    ..Default::default()
                }),
                ..ctr_config("y", &["true"])
            }),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(c
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .is_empty());
    let leaks = b.leaks();
    let of_containers = |l: &&String| {
        [
            "state/containers/",
            "state/oci/",
            "root/images/snapshots/views/",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    assert!(!leaks.iter().any(|l| of_containers(&l)), "{leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_pods_at_once() {
    let b = Berthd::start();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let sock = b.socket.clone();
        let logs = b.logs();
        tasks.push(tokio::spawn(async move {
            let mut c = berth_cri_api::v1::runtime_service_client::RuntimeServiceClient::new(
                channel(&sock).await,
            );
            run_pod(
                &mut c,
                pod_config(&format!("p{i}"), &logs),
                vec![ctr_config("s", &["sleep", "1000"])],
            )
            .await
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.unwrap().0);
    }
    let mut c = b.rt().await;
    let ready = c
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(ready.len(), 50);
    let running = c
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(running.len(), 50);
    let mut tasks = Vec::new();
    for p in pods {
        let sock = b.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = berth_cri_api::v1::runtime_service_client::RuntimeServiceClient::new(
                channel(&sock).await,
            );
            c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .unwrap();
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_class_handler_runs_the_pod_with_runc() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(st.runtime_handlers.iter().any(|h| h.name == "runc"));
    let cfg = pod_config("viarunc", &b.logs());
    let pod = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: "runc".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for ctr in [
        ctr_config("say", &["sh", "-c", "echo via runc; exit 4"]),
        ctr_config("s", &["sleep", "1000"]),
    ] {
        let id = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        c.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    // runc holds the state: the container is runc's, not berth's.
    let runc_list = std::process::Command::new("runc")
        .args([
            "--root",
            b.state().join("runtimes/runc").to_str().unwrap(),
            "list",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&runc_list.stdout).contains(&ids[1]));
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!(s.exit_code, 4);
    let log = std::fs::read_to_string(b.logs().join("viarunc/say.log")).unwrap();
    assert!(log.contains("stdout F via runc"), "{log}");
    let r = exec(&mut c, &ids[1], &["sh", "-c", "echo exec via runc; exit 2"]).await;
    assert_eq!(
        (r.stdout.as_slice(), r.exit_code),
        (&b"exec via runc\n"[..], 2)
    );
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&mut c, &ids[1]).await.state,
        cri::ContainerState::ContainerExited as i32
    );
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sharing_its_pid_namespace_keeps_one_tiny_init() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut cfg = pod_config("sharepid", &b.logs());
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (pod, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config("a", &["sleep", "4242"]),
            ctr_config("b", &["sleep", "1000"]),
        ],
    )
    .await;
    // b sees a's process; PID 1 is the pod's init, not a container.
    let r = exec(&mut c, &ids[1], &["ps", "-o", "pid,args"]).await;
    let ps = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(ps.contains("sleep 4242"), "{ps}");
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default()
        .to_string();
    assert!(!pid1.contains("sleep"), "{ps}");
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_ends_on_its_own_is_reported_by_an_event() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut events = c
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("ends", &b.logs()),
        vec![ctr_config("e", &["sh", "-c", "exit 3"])],
    )
    .await;
    // Nobody asks for a status: the stopped event must come anyway, with
    // the statuses the kubelet's evented PLEG reads.
    let stopped = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = events.message().await.unwrap().unwrap();
            if e.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32 {
                return e;
            }
        }
    })
    .await
    .expect("no stopped event");
    assert_eq!(stopped.container_id, ids[0]);
    assert_eq!(stopped.pod_sandbox_status.unwrap().id, pod);
    let st = &stopped.containers_statuses[0];
    assert_eq!(st.id, ids[0]);
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 3);
    // One stopped event only, even once statuses are asked for.
    let _ = status(&mut c, &ids[0]).await;
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(2), async {
        let mut v = Vec::new();
        while let Ok(Some(e)) = events.message().await {
            v.push(e.container_event_type);
            if e.container_event_type == cri::ContainerEventType::ContainerDeletedEvent as i32 {
                break;
            }
        }
        v
    })
    .await
    .unwrap_or_default();
    assert_eq!(
        rest,
        vec![cri::ContainerEventType::ContainerDeletedEvent as i32],
        "{rest:?}"
    );
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_requests_are_checked_before_anything_is_made() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let run = |cfg: cri::PodSandboxConfig| cri::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    };
    type Edit = fn(&mut cri::PodSandboxConfig);
    let cases: Vec<(&str, Edit)> = vec![
        ("config.metadata.name", |p| {
            p.metadata.as_mut().unwrap().name = "a;K8S_POD_NAME=b".into()
        }),
        ("config.port_mappings[0].host_ip", |p| {
            p.port_mappings = vec![cri::PortMapping {
                container_port: 80,
                host_port: 8080,
                host_ip: "not-an-ip".into(),
                ..Default::default()
            }]
        }),
        ("config.port_mappings[0].protocol", |p| {
            p.port_mappings = vec![cri::PortMapping {
                container_port: 80,
                protocol: 9,
                ..Default::default()
            }]
        }),
        ("config.linux.sysctls[net.core.somaxconn]", |p| {
            p.linux = Some(cri::LinuxPodSandboxConfig {
                sysctls: [("net.core.somaxconn".to_string(), "1024".to_string())].into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }),
        ("config.linux.sysctls[kernel.hostname]", |p| {
            p.linux = Some(cri::LinuxPodSandboxConfig {
                sysctls: [("kernel.hostname".to_string(), "x".to_string())].into(),
                ..Default::default()
            })
        }),
    ];
    let cases: Vec<(&str, Edit)> = cases
        .into_iter()
        .chain([
            // Not namespaced: it would change the node, whatever the kubelet allows.
            (
                "config.linux.sysctls[kernel.panic]",
                (|p: &mut cri::PodSandboxConfig| {
                    p.linux = Some(cri::LinuxPodSandboxConfig {
                        sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
                        ..Default::default()
                    })
                }) as Edit,
            ),
            (
                "config.linux.sysctls[kernel.domainname]",
                (|p: &mut cri::PodSandboxConfig| {
                    p.linux = Some(cri::LinuxPodSandboxConfig {
                        sysctls: [("kernel.domainname".to_string(), "x".to_string())].into(),
                        ..Default::default()
                    })
                }) as Edit,
            ),
        ])
        .collect();
    for (field, edit) in cases {
        let mut cfg = pod_config("chk", &b.logs());
        edit(&mut cfg);
        let e = c.run_pod_sandbox(run(cfg)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    assert_eq!(b.leaks(), Vec::<String>::new());

    // A retried RunPodSandbox (same name and attempt) gets no second pod.
    // A safe sysctl is set in the pod's network namespace.
    let mut cfg = pod_config("once", &b.logs());
    // Safe or not is the kubelet's call: every namespaced sysctl is applied.
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
            ("net.core.somaxconn".to_string(), "1234".to_string()),
            ("kernel.msgmax".to_string(), "12345".to_string()),
        ]
        .into(),
        ..Default::default()
    });
    let mut reader = ctr_config("r", &["sleep", "1000"]);
    reader.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 1001 }),
            supplemental_groups: vec![4242],
            ..Default::default()
        }),
        ..Default::default()
    });
    let (pod, ids) = run_pod(
        &mut c,
        cfg.clone(),
        vec![
            ctr_config("w", &["sh", "-c", "echo shared > /dev/shm/x; sleep 1000"]),
            reader,
        ],
    )
    .await;
    // ContainerStatus reports the process's ids as the kernel has them.
    let user = status(&mut c, &ids[1]).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1001));
    assert!(user.supplemental_groups.contains(&4242), "{user:?}");
    let id = exec(&mut c, &ids[1], &["id"]).await;
    let id = String::from_utf8_lossy(&id.stdout).to_string();
    assert!(
        id.contains("uid=1000") && id.contains("gid=1001") && id.contains("4242"),
        "{id}"
    );
    let e = c.run_pod_sandbox(run(cfg)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&pod), "{}", e.message());

    // The pod's containers share one /dev/shm (64 MiB, as containerd's).
    let mut got = String::new();
    for _ in 0..100 {
        let r = exec(&mut c, &ids[1], &["cat", "/dev/shm/x"]).await;
        got = String::from_utf8_lossy(&r.stdout).to_string();
        if got.trim() == "shared" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.trim(), "shared");
    let r = exec(
        &mut c,
        &ids[1],
        &["cat", "/proc/sys/net/ipv4/ping_group_range"],
    )
    .await;
    let range = String::from_utf8_lossy(&r.stdout).to_string();
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
    for (file, want) in [
        ("/proc/sys/net/core/somaxconn", "1234"),
        ("/proc/sys/kernel/msgmax", "12345"),
    ] {
        let r = exec(&mut c, &ids[1], &["cat", file]).await;
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), want, "{file}");
    }
    let df = exec(&mut c, &ids[1], &["df", "-k", "/dev/shm"]).await;
    let df = String::from_utf8_lossy(&df.stdout).to_string();
    assert!(df.contains("65536"), "{df}");
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sandbox_metrics_follow_their_descriptors() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("metrics", &b.logs()),
        vec![ctr_config("m", &["sleep", "1000"])],
    )
    .await;
    let descriptors = c
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
    assert!(
        names.contains(&"container_memory_working_set_bytes"),
        "{names:?}"
    );
    let pods = c
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let m = pods.iter().find(|p| p.pod_sandbox_id == pod).unwrap();
    let ctr = &m.container_metrics[0];
    assert_eq!(ctr.container_id, ids[0]);
    let get = |ms: &[cri::Metric], name: &str| {
        ms.iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name} missing: {ms:?}"))
            .clone()
    };
    assert!(
        get(&ctr.metrics, "container_memory_working_set_bytes")
            .value
            .unwrap()
            .value
            > 0
    );
    // Every metric is described, with as many labels as its descriptor has keys.
    for x in m.metrics.iter().chain(&ctr.metrics) {
        let d = descriptors.iter().find(|d| d.name == x.name).unwrap();
        assert_eq!(d.label_keys.len(), x.label_values.len(), "{x:?}");
    }
    let rx = get(&m.metrics, "container_network_receive_bytes_total");
    assert_eq!(rx.label_values, ["eth0"]);
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(b.leaks(), Vec::<String>::new());
}
