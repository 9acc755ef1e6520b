//! ImageService against a real registry on 127.0.0.1, and the runtime's
//! Status / RuntimeConfig / events.

mod common;
use berth_cri_api::v1 as cri;
use berth_testutil::registry::Registry;
use common::*;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_status_list_run_remove() {
    let b = Berthd::start();
    let reg = Registry::start();
    let archive = b.tmp.path().join("app.tar");
    berth_testutil::write_image_archive(&archive, "latest", &["echo", "pulled image runs"])
        .unwrap();
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        "test/app",
        &[],
    );
    // The registry speaks plain HTTP: say so in berthd's hosts directory.
    let hosts = b.tmp.path().join("certs.d").join(reg.host());
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"http://{}\"\n", reg.host()),
    )
    .unwrap();
    let mut b = b;
    b.kill9();
    let cfg = std::fs::read_to_string(&b.config).unwrap();
    let cfg = format!(
        "{cfg}[registry]\nconfig_path = {:?}\n",
        b.tmp.path().join("certs.d")
    );
    std::fs::write(&b.config, cfg).unwrap();
    b.spawn();

    let mut im = b.img().await;
    let name = format!("{}/test/app:latest", reg.host());
    let e = im
        .pull_image(cri::PullImageRequest {
            image: spec("bad ref!"),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let r = im
        .pull_image(cri::PullImageRequest {
            image: spec(&name),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.image_ref.starts_with("sha256:"), "{}", r.image_ref);
    let st = im
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let img = st.image.unwrap();
    assert_eq!(img.id, r.image_ref);
    assert!(img.repo_tags.contains(&name));
    assert!(img.repo_digests.iter().any(|d| d.contains("@sha256:")));
    assert!(st.info.contains_key("info"));
    let missing = im
        .image_status(cri::ImageStatusRequest {
            image: spec("nope/none:1"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.image.is_none());
    let list = im
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(list.len(), 2, "{list:?}");
    let fs = im
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.unwrap().value > 0);

    // The pulled image runs; ContainerStatus names it by digest.
    let mut c = b.rt().await;
    let mut ctr = ctr_config("app", &[]);
    ctr.command.clear();
    ctr.image = spec(&name);
    let (pod, ids) = run_pod(&mut c, pod_config("pulled", &b.logs()), vec![ctr]).await;
    let s = wait_exited(&mut c, &ids[0]).await;
    assert_eq!(s.exit_code, 0);
    assert!(s.image_ref.contains("@sha256:"), "{}", s.image_ref);
    let log = std::fs::read_to_string(b.logs().join("pulled/app.log")).unwrap();
    assert!(log.contains("stdout F pulled image runs"), "{log}");
    // In use: not removable; after the pod goes, removable (twice: idempotent).
    let e = im
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    for _ in 0..2 {
        im.remove_image(cri::RemoveImageRequest { image: spec(&name) })
            .await
            .unwrap();
    }
    let list = im
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(list.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_network_and_runtime_features() {
    let b = Berthd::start();
    let mut c = b.rt().await;
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(conds.iter().all(|c| c.status), "{conds:?}");
    assert!(st.features.unwrap().supplemental_groups_policy);
    assert!(st.info["unsupported"].contains("apparmor"), "{:?}", st.info);
    assert!(st
        .runtime_handlers
        .iter()
        .any(|h| h.name == "berth" && h.features.unwrap().recursive_read_only_mounts));
    // Without a network config: NetworkReady=false with a reason; a config
    // written later is picked up without restart.
    let conf = b.tmp.path().join("net.d/10-berth.conflist");
    let saved = b.tmp.path().join("saved.conflist");
    std::fs::rename(&conf, &saved).unwrap();
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(
        !net.status && !net.reason.is_empty() && !net.message.is_empty(),
        "{net:?}"
    );
    std::fs::rename(&saved, &conf).unwrap();
    let st = c
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(st.status.unwrap().conditions.iter().all(|c| c.status));
    let rc = c
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    // Container events stream as containers come and go.
    let mut events = c
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("ev", &b.logs()),
        vec![ctr_config("e", &["true"])],
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = events.message().await.unwrap().unwrap();
        assert_eq!(e.container_id, ids[0]);
        seen.push(e.container_event_type);
    }
    assert_eq!(
        seen,
        [
            cri::ContainerEventType::ContainerCreatedEvent as i32,
            cri::ContainerEventType::ContainerStartedEvent as i32
        ]
    );
    // ReopenContainerLog: the new file exists when the call returns.
    let (_p2, ids2) = run_pod(
        &mut c,
        pod_config("rl", &b.logs()),
        vec![ctr_config("r", &["sleep", "1000"])],
    )
    .await;
    let log = b.logs().join("rl/r.log");
    std::fs::rename(&log, b.logs().join("rl/r.log.1")).unwrap();
    c.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: ids2[0].clone(),
    })
    .await
    .unwrap();
    assert!(log.exists());
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// ImageFsInfo counts blobs, layers and the containers' own writes once
/// each: a running container's mounted rootfs (its layers again, and its
/// upper dir again) is not walked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_counts_layers_and_writes_once() {
    const BIG: u64 = 32 << 20;
    let b = Berthd::start();
    let mut im = b.img().await;
    let info = |r: cri::ImageFsInfoResponse| {
        let fs = &r.image_filesystems[0];
        (
            fs.used_bytes.unwrap().value,
            fs.inodes_used.expect("inodes_used").value,
        )
    };
    let (before, inodes) = info(
        im.image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    let images = b.root().join("images");
    let layers = berth_image::snapshot::disk_usage(&images.join("snapshots/layers")).unwrap();
    let blobs = berth_image::snapshot::disk_usage(&images.join("content")).unwrap();
    assert!(before >= layers + blobs, "{before} < {layers} + {blobs}");
    assert!(inodes > 0);

    let mut c = b.rt().await;
    let (pod, ids) = run_pod(
        &mut c,
        pod_config("du", &b.logs()),
        vec![ctr_config(
            "w",
            &[
                "sh",
                "-c",
                &format!(
                    "dd if=/dev/zero of=/big bs=1048576 count={} && touch /done && sleep 1000",
                    BIG >> 20
                ),
            ],
        )],
    )
    .await;
    let mut done = false;
    for _ in 0..500 {
        if exec(&mut c, &ids[0], &["test", "-f", "/done"])
            .await
            .exit_code
            == 0
        {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(done, "the container did not write its file");
    let (after, _) = info(
        im.image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    let grown = after - before;
    // The file once (in the upper dir), plus small bookkeeping; walking the
    // mounted rootfs would add the file again and every layer below it.
    assert!(grown >= BIG, "grew {grown} for a {BIG}-byte file");
    assert!(
        grown < BIG + BIG / 4,
        "grew {grown} for a {BIG}-byte file: counted twice (layers {layers})"
    );
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    let (gone, _) = info(
        im.image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        gone < before + BIG / 4,
        "{gone} after the pod went, {before} before"
    );
}

/// A registry that wants `Authorization: Bearer tok123` (its challenge
/// names a token endpoint nobody listens on) in front of a real one.
/// Returns its port and the "path auth" of every request.
fn bearer_proxy(upstream: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    // Serves until the test process ends (the listener is its own).
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let log = log2.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut r = BufReader::new(conn.try_clone()?);
                let mut head = String::new();
                r.read_line(&mut head)?;
                let mut auth = String::new();
                let mut req = head.clone();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("authorization:") {
                        auth = h[h.len() - v.len()..].trim().to_string();
                    } else if !lower.starts_with("connection:") {
                        req += &h;
                    }
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(format!("{path} {auth}"));
                if auth != "Bearer tok123" {
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#;
                    write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                         WWW-Authenticate: Bearer realm=\"http://127.0.0.1:1/token\",service=\"t\"\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )?;
                    return Ok(());
                }
                let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
                up.write_all(format!("{req}Connection: close\r\n\r\n").as_bytes())?;
                std::io::copy(&mut up, &mut conn)?;
                Ok(())
            });
        }
    });
    (port, log)
}

/// CRI PullImage with `auth.registry_token`: the token goes to the
/// registry as the bearer token, never to a token endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_a_cri_registry_token() {
    let mut b = Berthd::start();
    let reg = Registry::start();
    let archive = b.tmp.path().join("app.tar");
    berth_testutil::write_image_archive(&archive, "latest", &["true"]).unwrap();
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        "test/tok",
        &[],
    );
    let (port, log) = bearer_proxy(reg.port());
    let host = format!("127.0.0.1:{port}");
    let hosts = b.tmp.path().join("certs.d").join(&host);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"http://{host}\"\n"),
    )
    .unwrap();
    b.kill9();
    let cfg = std::fs::read_to_string(&b.config).unwrap();
    let cfg = format!(
        "{cfg}[registry]\nconfig_path = {:?}\n",
        b.tmp.path().join("certs.d")
    );
    std::fs::write(&b.config, cfg).unwrap();
    b.spawn();

    let mut im = b.img().await;
    let name = format!("{host}/test/tok:latest");
    let pull = |token: &str| cri::PullImageRequest {
        image: spec(&name),
        auth: Some(cri::AuthConfig {
            registry_token: token.into(),
            ..Default::default()
        }),
        sandbox_config: None,
    };
    let e = im.pull_image(pull("wrong")).await.unwrap_err();
    assert!(e.message().contains("HTTP 401"), "{e:?}");
    let r = im.pull_image(pull("tok123")).await.unwrap().into_inner();
    assert!(r.image_ref.starts_with("sha256:"), "{}", r.image_ref);
    let st = im
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.image.unwrap().id, r.image_ref);
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("/manifests/latest Bearer tok123")),
        "{log:?}"
    );
    assert!(log.iter().all(|l| !l.starts_with("/token")), "{log:?}");
}
