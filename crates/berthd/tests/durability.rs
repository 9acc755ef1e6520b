//! A full state disk is survived (the monitor stays, exits are kept in
//! memory until they can be written, logging resumes), berthd's default
//! cgroup parent goes with the last pod, and berthd's own failures are
//! logged at WARN.

mod common;
use berth_cri_api::v1 as cri;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fills the filesystem of `dir` with one file until not a byte more fits.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    p
}

fn monitor_alive(pod_dir: &Path) -> bool {
    let pid = std::fs::read_to_string(pod_dir.join("monitor.pid")).unwrap();
    std::fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
        .is_ok_and(|c| c.trim() == "berth-monitor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_is_survived_and_the_pod_recovers_by_itself() {
    let b = Berthd::start_with(Options {
        state_tmpfs: Some("8m".into()),
        ..Default::default()
    });
    let mut c = b.rt().await;
    // The containers' logs on the full disk too.
    let mut cfg = pod_config("full", &b.state().join("podlogs"));
    let flag = b.tmp.path().join("flag");
    std::fs::create_dir_all(&flag).unwrap();
    let mut quitter = ctr_config(
        "quitter",
        &[
            "sh",
            "-c",
            "until [ -e /flag/go ]; do sleep 0.05; done; echo last words; exit 7",
        ],
    );
    quitter.mounts = vec![cri::Mount {
        container_path: "/flag".into(),
        host_path: flag.display().to_string(),
        ..Default::default()
    }];
    let logger = ctr_config(
        "logger",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    cfg.log_directory = b.state().join("podlogs/full").display().to_string();
    let (pod, ids) = run_pod(&mut c, cfg.clone(), vec![quitter, logger]).await;
    let pod_dir = b.state().join("pods").join(&pod);
    let log = b.state().join("podlogs/full/logger.log");

    let filler = fill(&b.state());
    // berthd's own failure (no space for a pod) is an Internal error.
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("nospace", &b.logs())),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    std::fs::write(flag.join("go"), "").unwrap();
    // The container exits while nothing can be written: its monitor stays,
    // and the exit code is the real one, from the monitor's memory.
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{s:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(monitor_alive(&pod_dir), "the monitor died on a full disk");
    let exits = pod_dir.join("exits");
    let exit_file = exits.join(format!("{}.json", ids[0]));
    assert!(!exit_file.exists(), "the disk was not full");
    assert_eq!(
        status(&mut c, &ids[1]).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // Space returns: the exit lands, logging resumes, the pod works, all
    // without a berthd restart.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..100 {
        if exit_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&exit_file).expect("exit record")).unwrap();
    assert_eq!(rec["code"], 7);
    let left: Vec<_> = std::fs::read_dir(&exits)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let len = std::fs::metadata(&log).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() as u64 > len, "logging did not resume");
    // Whole records only: a write cut short by the full disk was undone.
    for l in text.lines() {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        assert!(
            f.len() == 4 && f[1] == "stdout" && f[2] == "F" && f[3].starts_with("tick"),
            "{l:?}"
        );
    }
    let r = exec(&mut c, &ids[1], &["echo", "ok"]).await;
    assert_eq!(r.stdout, b"ok\n");
    let id = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr_config("after", &["sh", "-c", "exit 3"])),
            sandbox_config: Some(cfg),
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
    assert_eq!(wait_exited(&mut c, &id).await.exit_code, 3);
    assert_eq!(wait_exited(&mut c, &ids[0]).await.exit_code, 7);
    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
    // The full disk's failures were berthd's own: logged as warnings.
    let l = b.log();
    assert!(
        l.lines()
            .any(|l| l.contains("WARN") && l.contains("RunPodSandbox")),
        "{l}"
    );
}

fn parent_dirs(b: &Berthd) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(b.cgroup_parent.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_cgroup_parent_goes_with_the_last_pod() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    assert!(parent_dirs(&b).is_empty());
    for round in 0..2 {
        let (p1, _) = run_pod(
            &mut c,
            pod_config(&format!("cg1-{round}"), &b.logs()),
            vec![ctr_config("a", &["sleep", "1000"])],
        )
        .await;
        let (p2, _) = run_pod(
            &mut c,
            pod_config(&format!("cg2-{round}"), &b.logs()),
            vec![ctr_config("a", &["sleep", "1000"])],
        )
        .await;
        assert!(!parent_dirs(&b).is_empty(), "no parent made");
        stop_and_remove_pod(&mut c, &p1).await;
        assert!(!parent_dirs(&b).is_empty(), "removed under a pod");
        stop_and_remove_pod(&mut c, &p2).await;
        let left = parent_dirs(&b);
        assert!(left.is_empty(), "left with the last pod: {left:?}");
    }
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_info_and_berthds_own_are_warnings() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let e = c
        .start_container(cri::StartContainerRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // berthd's own failure: the pod's monitor is gone (killed here), so a
    // container cannot be created in it.
    let cfg = pod_config("gone", &b.logs());
    let (pod, _) = run_pod(&mut c, cfg.clone(), vec![]).await;
    let pid =
        std::fs::read_to_string(b.state().join("pods").join(&pod).join("monitor.pid")).unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr_config("a", &["true"])),
            sandbox_config: Some(cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    stop_and_remove_pod(&mut c, &pod).await;
    let log = b.log();
    let line = |op: &str| {
        log.lines()
            .find(|l| l.contains(op) && l.contains("error:"))
            .unwrap_or_else(|| panic!("no {op} error in:\n{log}"))
            .to_string()
    };
    let start = line("StartContainer");
    assert!(start.contains(" INFO "), "{start}");
    let create = line("CreateContainer");
    assert!(create.contains(" WARN "), "{create}");
    assert_eq!(b.leaks(), Vec::<String>::new());
}
