//! berthd driven through its CRI socket: pods, containers, logs, exec,
//! stats, networking — real containers, real CNI plugins.

mod common;
use common::*;
use k8s_cri::v1 as cri;

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
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
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
