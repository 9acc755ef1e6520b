//! Pods with `hostUsers: false`: their own user namespace with the
//! kubelet's mappings, idmapped image layers and volumes.

mod common;
use berth_cri_api::v1 as cri;
use common::*;
use std::os::unix::fs::MetadataExt;

const HOST_BASE: u32 = 200_000;

fn userns_pod(name: &str, b: &Berthd, pid: cri::NamespaceMode) -> cri::PodSandboxConfig {
    userns_pod_config(name, &b.logs(), HOST_BASE, pid)
}

async fn sh(c: &mut RuntimeServiceClient, id: &str, script: &str) -> String {
    let r = exec(c, id, &["sh", "-c", script]).await;
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

type RuntimeServiceClient =
    berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_host_users_runs_in_its_own_user_namespace_with_idmapped_mounts() {
    let b = Berthd::start();
    let mut c = b.rt().await;

    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let builtin = st
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .unwrap();
    assert!(builtin.features.unwrap().user_namespaces, "{st:?}");
    let runc = st
        .runtime_handlers
        .iter()
        .find(|h| h.name == "runc")
        .unwrap();
    assert!(!runc.features.unwrap().user_namespaces);

    // A volume owned by host root, as kubelet's emptyDir and hostPath are.
    let vol = b.tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "hi\n").unwrap();

    // The shared PID namespace needs the pod's init inside the user namespace too.
    let cfg = userns_pod("userns", &b, cri::NamespaceMode::Pod);
    let mut ctr = ctr_config("a", &["sleep", "1000"]);
    ctr.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    }];
    let (pod, ids) = run_pod(&mut c, cfg, vec![ctr]).await;
    let id = &ids[0];

    // The kernel's view of the container's identity: root inside, 200000 outside.
    let maps = sh(&mut c, id, "cat /proc/self/uid_map /proc/self/gid_map").await;
    let maps: Vec<Vec<&str>> = maps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps, vec![vec!["0", "200000", "65536"]; 2]);
    assert_eq!(sh(&mut c, id, "id -u; id -g").await, "0\n0");
    // ContainerStatus reports the ids inside the container.
    let user = status(&mut c, id).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (0, 0));

    // Image files (host root on disk), the pod's /etc files and the volume
    // all appear owned by the container's root, not by nobody.
    let owners = sh(
        &mut c,
        id,
        "stat -c '%u:%g' / /bin/busybox /etc /etc/hosts /etc/resolv.conf /data /data/from-host",
    )
    .await;
    assert!(owners.lines().all(|l| l == "0:0"), "{owners}");

    // The container's root can write where root can, and the bytes land on
    // the host as the mapped ids: 200000 in the rootfs, 0 through the volume.
    sh(
        &mut c,
        id,
        "echo new > /etc/made-inside && echo v > /data/written",
    )
    .await;
    let upper = b
        .root()
        .join("images/snapshots/views")
        .join(id)
        .join("upper/etc/made-inside");
    let m = std::fs::metadata(&upper).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (HOST_BASE, HOST_BASE),
        "{}",
        upper.display()
    );
    let m = std::fs::metadata(vol.join("written")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));

    // Namespaces the pod owns: the container's root may use them, and the
    // pod network is still configured by CNI.
    assert_eq!(sh(&mut c, id, "hostname").await, "userns");
    let ps = sh(&mut c, id, "ps -o pid,args").await;
    assert!(ps.contains("sleep 1000"), "{ps}");
    let s = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip = s.network.unwrap().ip;
    assert!(ip.starts_with(&b.subnet_prefix), "{ip}");
    assert_eq!(
        sh(&mut c, id, "ip -4 -o addr show eth0 | grep -c inet").await,
        "1"
    );

    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_namespace_requests_name_the_field_and_leave_nothing() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    fn opts(cfg: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
        cfg.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap()
    }
    type Edit = fn(&mut cri::NamespaceOption);
    let cases: Vec<(&str, Edit)> = vec![
        ("userns_options.mode", |o| {
            o.userns_options.as_mut().unwrap().mode = cri::NamespaceMode::Target as i32
        }),
        ("userns_options.uids", |o| {
            o.userns_options.as_mut().unwrap().uids.clear()
        }),
        ("userns_options.gids[0].host_id", |o| {
            o.userns_options.as_mut().unwrap().gids[0].host_id = 0
        }),
        ("userns_options.uids[0].length", |o| {
            o.userns_options.as_mut().unwrap().uids[0].length = 0
        }),
        ("userns_options.uids[0]", |o| {
            o.userns_options.as_mut().unwrap().uids[0].host_id = u32::MAX - 10
        }),
        ("userns_options.uids[1]", |o| {
            let u = o.userns_options.as_mut().unwrap();
            u.uids.push(cri::IdMapping {
                host_id: 700_000,
                container_id: 1000,
                length: 10,
            })
        }),
        ("namespace_options.network", |o| {
            o.network = cri::NamespaceMode::Node as i32
        }),
    ];
    for (field, edit) in cases {
        let mut cfg = userns_pod("bad", &b, cri::NamespaceMode::Container);
        edit(opts(&mut cfg));
        let e = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    // A handler that cannot idmap is refused too.
    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(userns_pod("bad", &b, cri::NamespaceMode::Container)),
            runtime_handler: "runc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("userns_options"), "{}", e.message());
    let pods = c
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert_eq!(b.leaks(), Vec::<String>::new());
}
