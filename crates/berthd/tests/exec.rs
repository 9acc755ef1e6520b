//! ExecSync's output cap and timeout, Exec/Attach request checks and
//! UpdateContainerResources, against a real berthd over its CRI socket.

mod common;
use berth_cri_api::v1 as cri;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use common::*;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The kubelet's CRI client limit (remote_runtime.go maxMsgSize): a
/// response larger than this never reaches it.
const KUBELET_MAX_MSG: usize = 16 << 20;

async fn kubelet_client(b: &Berthd) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel(&b.socket).await).max_decoding_message_size(KUBELET_MAX_MSG)
}

/// A KiB figure from /proc/PID/status.
fn proc_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in {s}"))
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

async fn exec_sync(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: Vec<String>,
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    c.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd,
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// A shell that reaps what is reparented to it (as a real init does), so
/// killed orphans do not linger as zombies.
const INIT: &[&str] = &["sh", "-c", "while true; do sleep 1; done"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_is_capped_for_both_streams_together() {
    let b = Berthd::start();
    let mut c = kubelet_client(&b).await;
    let (_pod, ids) = run_pod(
        &mut c,
        pod_config("cap", &b.logs()),
        vec![ctr_config("c", INIT)],
    )
    .await;
    let r = exec_sync(&mut c, &ids[0], sh("echo warm"), 10)
        .await
        .unwrap();
    assert_eq!(r.stdout, b"warm\n");
    let pid = b.pid().unwrap();
    let before = proc_kib(pid, "VmHWM:");
    // 200 MiB on stdout and 50 MiB on stderr at the same time: far more
    // than the cap, and than berthd could hold if it kept it all.
    let t = Instant::now();
    let r = exec_sync(
        &mut c,
        &ids[0],
        sh("(yes e | head -c 52428800 >&2) & dd if=/dev/zero bs=65536 count=3200 2>/dev/null; wait; exit 3"),
        120,
    )
    .await
    .expect("a capped response reaches a client with the kubelet's limit");
    // Past the cap the output is read and dropped: the command ran to its end.
    assert_eq!(r.exit_code, 3);
    let total = r.stdout.len() + r.stderr.len();
    assert!(total <= KUBELET_MAX_MSG, "{total}");
    assert!(total >= KUBELET_MAX_MSG - (64 << 10), "{total}");
    assert!(r.stdout.iter().all(|b| *b == 0));
    assert!(r.stderr.iter().all(|b| *b == b'e' || *b == b'\n'));
    assert!(r.stderr.starts_with(b"e\ne\n") || r.stderr.is_empty());
    let grown = proc_kib(pid, "VmHWM:").saturating_sub(before);
    eprintln!("berthd peak RSS: {before} KiB before, +{grown} KiB after");
    // The kept 16 MiB, its encoding and buffers; not the 250 MiB written.
    assert!(
        grown < 64 << 10,
        "berthd's peak RSS grew by {grown} KiB in {:?}",
        t.elapsed()
    );
    // A small exec afterwards still works and sees its own output only.
    let r = exec_sync(&mut c, &ids[0], sh("echo out; echo err >&2"), 10)
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}

/// Threads of `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_ends_with_its_command_though_a_background_child_holds_the_output() {
    let b = Berthd::start();
    let mut c = kubelet_client(&b).await;
    let (_pod, ids) = run_pod(
        &mut c,
        pod_config("bg", &b.logs()),
        vec![ctr_config("c", INIT)],
    )
    .await;
    for _ in 0..3 {
        let t = Instant::now();
        let r = exec_sync(&mut c, &ids[0], sh("sleep 30 & echo hi"), 20)
            .await
            .unwrap();
        assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"hi\n"[..], 0));
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    }
    // No output reader is left blocked on the pipes the sleeps still hold.
    assert_eq!(threads_named(b.pid().unwrap(), "exec-sync-io"), 0);
}

/// A running pod of one container on `handler` ("" for the built-in one).
async fn run_one(
    c: &mut RuntimeServiceClient<Channel>,
    b: &Berthd,
    name: &str,
    handler: &str,
    cmd: &[&str],
) -> String {
    let cfg = pod_config(name, &b.logs());
    let pod = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(ctr_config("c", cmd)),
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
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_is_deadline_exceeded_and_kills_all_the_exec_started() {
    let b = Berthd::start();
    let mut c = kubelet_client(&b).await;
    // The built-in runtime and runc (whose exec is reparented to the monitor).
    for handler in ["", "runc"] {
        // The container's own background process must survive the exec's kill.
        let own = ["sh", "-c", "sleep 2000 & while true; do sleep 1; done"];
        let id = run_one(&mut c, &b, &format!("tmo{handler}"), handler, &own).await;
        // Children, a child that cleared its environment, a grandchild in its
        // own session whose parent exited, an orphaned grandchild, and the
        // exec's own process: all of them sleep far past the timeout.
        let script =
            "sleep 1001 & env -i sleep 1002 & (setsid sleep 1003 &); (sleep 1004 &); sleep 1005";
        let t = Instant::now();
        let e = exec_sync(&mut c, &id, sh(script), 2).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{handler}: {e:?}");
        assert!(e.message().contains("timed out"), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // Seen from inside the container: none of the exec's processes is left.
        let mut ps = String::new();
        for _ in 0..50 {
            let r = exec_sync(&mut c, &id, vec!["ps".into()], 10).await.unwrap();
            ps = String::from_utf8_lossy(&r.stdout).to_string();
            if !ps.contains("sleep 100") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!ps.contains("sleep 100"), "{handler}: {ps}");
        assert!(ps.contains("sleep 2000"), "{handler}: {ps}");
        assert_eq!(
            status(&mut c, &id).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
        // Nor on the host, among this test's own processes: those in its
        // berthd's cgroup parent (other tests run sleeps of their own; a
        // zombie has no command line).
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cgroups = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if !cgroups.contains(&format!("{}/", b.cgroup_parent)) {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!cmd.starts_with("sleep 100"), "{handler}: left {cmd}");
        }
        // An exec that ends in time is unaffected.
        let r = exec_sync(&mut c, &id, sh("sleep 0.2; echo done"), 5)
            .await
            .unwrap();
        assert_eq!(r.stdout, b"done\n");
    }
}

fn exec_req(
    id: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

fn attach_req(id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: id.into(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
    assert!(
        e.message().starts_with(&format!("{field}:")),
        "{field}: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_requests_are_checked_field_by_field() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut with_stdin = ctr_config("in", &["cat"]);
    with_stdin.stdin = true;
    let (_pod, ids) = run_pod(
        &mut c,
        pod_config("val", &b.logs()),
        vec![ctr_config("plain", INIT), with_stdin],
    )
    .await;
    let (plain, with_stdin) = (ids[0].as_str(), ids[1].as_str());
    // Exec: stderr with a tty, no stream, no command.
    assert_invalid(
        c.exec(exec_req(plain, &["sh"], true, true, true, true))
            .await,
        "stderr",
    );
    assert_invalid(
        c.exec(exec_req(plain, &["sh"], false, false, false, false))
            .await,
        "stdin",
    );
    assert_invalid(
        c.exec(exec_req(plain, &[], false, false, true, true)).await,
        "cmd",
    );
    // ExecSync: no command, a negative timeout.
    assert_invalid(exec_sync(&mut c, plain, vec![], 1).await, "cmd");
    assert_invalid(exec_sync(&mut c, plain, sh("true"), -1).await, "timeout");
    // Attach: no stream, stderr with a tty, stdin the container never had.
    assert_invalid(
        c.attach(attach_req(plain, false, false, false, false))
            .await,
        "stdin",
    );
    assert_invalid(
        c.attach(attach_req(plain, true, false, true, true)).await,
        "stderr",
    );
    assert_invalid(
        c.attach(attach_req(plain, false, true, true, true)).await,
        "stdin",
    );
    // Valid requests get their URL.
    c.exec(exec_req(plain, &["sh"], true, true, true, false))
        .await
        .unwrap();
    c.exec(exec_req(plain, &["true"], false, false, true, true))
        .await
        .unwrap();
    c.attach(attach_req(with_stdin, false, true, true, true))
        .await
        .unwrap();
    c.attach(attach_req(plain, false, false, true, true))
        .await
        .unwrap();
    // Unknown containers.
    let nf = |e: tonic::Status| assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    nf(exec_sync(&mut c, "nope", sh("true"), 1).await.unwrap_err());
    nf(
        c.exec(exec_req("nope", &["true"], false, false, true, true))
            .await
            .unwrap_err(),
    );
    nf(c.attach(attach_req("nope", false, false, true, true))
        .await
        .unwrap_err());
    nf(
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "nope".into(),
            linux: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
}

/// The host path of `ctrl`'s v1 cgroup of the container whose init is `pid`.
fn cgroup_file(pid: u32, ctrl: &str, file: &str) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == ctrl)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {ctrl} cgroup in {cg}"));
    let p = std::path::Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(path.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources_changes_live_limits_and_refuses_bad_values() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let mut ctr = ctr_config("r", INIT);
    ctr.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_pod, ids) = run_pod(&mut c, pod_config("upd", &b.logs()), vec![ctr]).await;
    let info = c
        .container_status(cri::ContainerStatusRequest {
            container_id: ids[0].clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let pid = v["pid"].as_u64().unwrap() as u32;
    let mem = || cgroup_file(pid, "memory", "memory.limit_in_bytes");
    let cpu = |f: &str| cgroup_file(pid, "cpu", f);
    assert_eq!(mem(), (64u64 << 20).to_string());
    assert_eq!(cpu("cpu.shares"), "512");
    let update = |c: &mut RuntimeServiceClient<Channel>, r: cri::LinuxContainerResources| {
        let mut c = c.clone();
        let id = ids[0].clone();
        async move {
            c.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id,
                linux: Some(r),
                ..Default::default()
            })
            .await
        }
    };
    // A live change of memory, quota, period and shares.
    update(
        &mut c,
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 256,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(mem(), (96u64 << 20).to_string());
    assert_eq!(cpu("cpu.cfs_period_us"), "100000");
    assert_eq!(cpu("cpu.cfs_quota_us"), "50000");
    assert_eq!(cpu("cpu.shares"), "256");
    // Bad values, each next to a good memory change that must not happen.
    let d = || cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    };
    let huge = |size: &str| {
        vec![cri::HugepageLimit {
            page_size: size.into(),
            limit: 1 << 21,
        }]
    };
    for (r, field) in [
        (
            cri::LinuxContainerResources {
                cpu_quota: -5,
                ..d()
            },
            "linux.cpu_quota",
        ),
        (
            cri::LinuxContainerResources {
                cpu_quota: 10,
                ..d()
            },
            "linux.cpu_quota",
        ),
        (
            cri::LinuxContainerResources {
                cpu_period: -1,
                ..d()
            },
            "linux.cpu_period",
        ),
        (
            cri::LinuxContainerResources {
                cpu_period: 10,
                ..d()
            },
            "linux.cpu_period",
        ),
        (
            cri::LinuxContainerResources {
                cpu_period: 2_000_000,
                ..d()
            },
            "linux.cpu_period",
        ),
        (
            cri::LinuxContainerResources {
                cpu_shares: -1,
                ..d()
            },
            "linux.cpu_shares",
        ),
        (
            cri::LinuxContainerResources {
                cpu_shares: 1 << 20,
                ..d()
            },
            "linux.cpu_shares",
        ),
        (
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..d()
            },
            "linux.memory_limit_in_bytes",
        ),
        (
            cri::LinuxContainerResources {
                memory_swap_limit_in_bytes: 16 << 20,
                ..d()
            },
            "linux.memory_swap_limit_in_bytes",
        ),
        (
            cri::LinuxContainerResources {
                oom_score_adj: 1001,
                ..d()
            },
            "linux.oom_score_adj",
        ),
        (
            cri::LinuxContainerResources {
                oom_score_adj: -1001,
                ..d()
            },
            "linux.oom_score_adj",
        ),
        (
            cri::LinuxContainerResources {
                cpuset_cpus: "1-0".into(),
                ..d()
            },
            "linux.cpuset_cpus",
        ),
        (
            cri::LinuxContainerResources {
                cpuset_mems: "x".into(),
                ..d()
            },
            "linux.cpuset_mems",
        ),
        (
            cri::LinuxContainerResources {
                hugepage_limits: huge("3MB"),
                ..d()
            },
            "linux.hugepage_limits[0].page_size",
        ),
        (
            cri::LinuxContainerResources {
                hugepage_limits: huge("2XB"),
                ..d()
            },
            "linux.hugepage_limits[0].page_size",
        ),
        (
            cri::LinuxContainerResources {
                unified: [("memory.max".to_string(), "1".to_string())].into(),
                ..d()
            },
            "linux.unified[memory.max]",
        ),
    ] {
        assert_invalid(update(&mut c, r).await, field);
        assert_eq!(mem(), (96u64 << 20).to_string(), "after {field}");
        assert_eq!(cpu("cpu.cfs_quota_us"), "50000", "after {field}");
    }
    let e = c
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: ids[0].clone(),
            linux: None,
            ..Default::default()
        })
        .await;
    assert_invalid(e, "linux");
    // Unlimited again, and what the status reports is the merged record.
    update(
        &mut c,
        cri::LinuxContainerResources {
            cpu_quota: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cpu("cpu.cfs_quota_us"), "-1");
    let s = status(&mut c, &ids[0]).await;
    let r = s.resources.unwrap().linux.unwrap();
    assert_eq!(
        (
            r.memory_limit_in_bytes,
            r.cpu_shares,
            r.cpu_period,
            r.cpu_quota
        ),
        (96 << 20, 256, 100_000, -1)
    );
}
