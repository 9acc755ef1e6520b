//! Crash consistency: berthd killed with SIGKILL — while idle, and at every
//! step of RunPodSandbox, CreateContainer, StartContainer and
//! RemovePodSandbox — comes back with correct states and leaves nothing
//! behind once the pods are removed.

mod common;
use berth_cri_api::v1 as cri;
use common::*;
use std::time::Duration;

fn log_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_and_log_while_berthd_is_down_and_are_found_after() {
    let mut b = Berthd::start();
    let mut c = b.rt().await;
    let cfg = pod_config("survivor", &b.logs());
    let (pod, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config(
                "logger",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done",
                ],
            ),
            ctr_config("quitter", &["sh", "-c", "sleep 1; exit 5"]),
        ],
    )
    .await;
    b.kill9();
    let log = b.logs().join("survivor/logger.log");
    let before = log_len(&log);
    // berthd is down: the logger keeps logging, the quitter exits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(log_len(&log) > before, "logs stopped while berthd was down");
    b.spawn();
    let mut c = b.rt().await;
    let pods = c
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(
        status(&mut c, &ids[0]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let q = wait_exited(&mut c, &ids[1]).await;
    assert_eq!((q.exit_code, q.reason.as_str()), (5, "Error"));
    // It is still fully manageable.
    let r = exec(&mut c, &ids[0], &["echo", "still here"]).await;
    assert_eq!(r.stdout, b"still here\n");
    // The leak check sees a live pod's resources (so it would see leaks).
    let live = b.leaks().join("\n");
    for what in [
        "mount ",
        "IP allocation",
        "veth ",
        "monitor ",
        "cgroup ",
        "state/oci/",
        "state/pods/",
        "views/",
    ] {
        assert!(live.contains(what), "{what} missing from:\n{live}");
    }
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_is_recovered_without_leaks() {
    let mut b = Berthd::start();
    let points = [
        "run_pod:recorded",
        "run_pod:namespaces",
        "run_pod:monitor",
        "run_pod:network",
        "create:recorded",
        "create:view",
        "create:created",
        "start:started",
        "remove_pod:containers",
        "remove_pod:torn_down",
    ];
    // Pods in their own user namespace pin one more namespace and mount
    // idmapped views: the steps that make or undo those, again for them.
    let userns_points = ["run_pod:namespaces", "create:view", "remove_pod:containers"];
    let runs = points
        .iter()
        .map(|p| (*p, false))
        .chain(userns_points.iter().map(|p| (*p, true)));
    for (point, userns) in runs {
        b.kill9();
        b.spawn_with_fault(point);
        let mut c = b.rt().await;
        let name = format!(
            "f-{}{}",
            point.replace([':', '_'], "-"),
            if userns { "-u" } else { "" }
        );
        let cfg = if userns {
            userns_pod_config(&name, &b.logs(), 300_000, cri::NamespaceMode::Container)
        } else {
            pod_config(&name, &b.logs())
        };
        // Drive the workload until berthd dies at the fault point.
        let r = async {
            let pod = c
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            let id = c
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(ctr_config("app", &["sleep", "1000"])),
                    sandbox_config: Some(cfg.clone()),
                })
                .await?
                .into_inner()
                .container_id;
            c.start_container(cri::StartContainerRequest { container_id: id })
                .await?;
            c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await?;
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
            Ok::<(), tonic::Status>(())
        }
        .await;
        assert!(r.is_err(), "{point}: berthd did not crash");
        b.wait_dead();
        // Restarted: whatever is listed can be stopped and removed, and then
        // nothing is left.
        b.spawn();
        let mut c = b.rt().await;
        if point == "start:started" {
            // Started by the monitor, not yet recorded: reported running.
            let ctrs = c
                .list_containers(cri::ListContainersRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .containers;
            let states: Vec<i32> = ctrs.iter().map(|c| c.state).collect();
            assert_eq!(
                states,
                vec![cri::ContainerState::ContainerRunning as i32],
                "{point} (userns {userns})"
            );
        }
        let pods = c
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        for p in pods {
            stop_and_remove_pod(&mut c, &p.id).await;
        }
        let ctrs = c
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner();
        assert!(ctrs.containers.is_empty(), "{point}: {:?}", ctrs.containers);
        assert_eq!(b.leaks(), Vec::<String>::new(), "after a crash at {point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_monitor_died_is_reported_when_it_ends() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("orphan", &b.logs()),
        vec![ctr_config("s", &["sleep", "1000"])],
    )
    .await;
    // The monitor is killed; the container lives on (reparented).
    let dir = b.state().join("pods").join(&pod);
    let mon: i32 = std::fs::read_to_string(dir.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(mon, libc::SIGKILL) };
    assert_eq!(
        status(&mut c, &ids[0]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // A berthd restart starts a new monitor for the ready pod; the old
    // container then dies with nobody left to record its exit.
    let mut b = b;
    b.kill9();
    b.spawn();
    let mut c = b.rt().await;
    let st = std::fs::read_to_string(b.state().join("oci").join(&ids[0]).join("state.json"))
        .unwrap_or_default();
    let pid = serde_json::from_str::<serde_json::Value>(&st)
        .ok()
        .and_then(|v| v["pid"].as_i64())
        .unwrap_or(0) as i32;
    assert!(pid > 0, "{st}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!(s.reason, "Error");
    assert!(s.message.contains("exit status unknown"), "{s:?}");
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_namespaces_are_gone_is_not_ready_after_a_restart() {
    let mut b = Berthd::start();
    let mut c = b.rt().await;
    let (pod, _) = run_pod(&mut c, pod_config("rebooted", &b.logs()), vec![]).await;
    // What a reboot does to a pod: berthd and the monitor gone, the pinned
    // namespaces (bind mounts) gone; the records remain.
    b.kill9();
    let dir = b.state().join("pods").join(&pod);
    let monitor: i32 = std::fs::read_to_string(dir.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: our own pod's monitor, named by its pid file.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    for ns in ["net", "ipc", "uts"] {
        let p = std::ffi::CString::new(
            dir.join("ns")
                .join(ns)
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a valid path; only our pod's own pin is unmounted.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    b.spawn();
    let mut c = b.rt().await;
    let st = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}
