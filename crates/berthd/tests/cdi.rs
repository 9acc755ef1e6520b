//! CDI devices through the CRI: a spec file in the test berthd's
//! `[cdi] spec_dirs` exposes `berth.test/null=n0` (the host's /dev/null as
//! /dev/berth-null0, an env var, a bind-mounted file); containers ask for it
//! by `CDI_devices` and by a `cdi.k8s.io/` annotation; an unknown device
//! fails naming its field and leaves nothing behind.

mod common;
use berth_cri_api::v1 as cri;
use common::*;

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    !n.starts_with('.') && !n.ends_with(".lock")
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_devices_from_the_field_and_the_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let spec_dir = tmp.path().join("cdi");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let data = tmp.path().join("data.txt");
    std::fs::write(&data, "hello from cdi\n").unwrap();
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "berth.test/null",
        "containerEdits": {"env": ["BERTH_CDI_SPEC=yes"]},
        "devices": [{
            "name": "n0",
            "containerEdits": {
                "env": ["BERTH_CDI=n0"],
                "deviceNodes": [{"path": "/dev/berth-null0", "hostPath": "/dev/null"}],
                "mounts": [{"hostPath": data, "containerPath": "/cdi/data.txt", "options": ["ro", "nosuid", "nodev", "bind"]}]
            }
        }, {
            // A node outside the default device allow list.
            "name": "loop",
            "containerEdits": {"deviceNodes": [{"path": "/dev/berth-loopctl", "hostPath": "/dev/loop-control"}]}
        }]
    });
    std::fs::write(
        spec_dir.join("berth-null.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    // A YAML file in the same directory, of another kind.
    std::fs::write(
        spec_dir.join("other.yaml"),
        "cdiVersion: 0.6.0\nkind: berth.test/other\ndevices:\n- name: x\n  containerEdits:\n    env: [OTHER=1]\n",
    )
    .unwrap();

    let b = Berthd::start_with(Options {
        extra_toml: format!("[cdi]\nspec_dirs = [{:?}]\n", spec_dir),
        ..Default::default()
    });
    let mut c = b.rt().await;
    let cmd = ["sleep", "3600"];
    let loop_ctl = std::path::Path::new("/dev/loop-control").exists();
    let mut by_field = ctr_config("by-field", &cmd);
    by_field.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/null=n0".into(),
    }];
    let mut by_annotation = ctr_config("by-annotation", &cmd);
    by_annotation.annotations.insert(
        "cdi.k8s.io/berth-test_n0".into(),
        "berth.test/null=n0".into(),
    );
    if loop_ctl {
        by_field.cdi_devices.push(cri::CdiDevice {
            name: "berth.test/null=loop".into(),
        });
        by_annotation.annotations.insert(
            "cdi.k8s.io/berth-test_n0".into(),
            "berth.test/null=n0,berth.test/null=loop".into(),
        );
    }
    let pod_cfg = pod_config("cdi", &b.logs());
    let (pod, ids) = run_pod(&mut c, pod_cfg.clone(), vec![by_field, by_annotation]).await;

    let check = "test -c /dev/berth-null0 && stat -c '%t:%T' /dev/berth-null0 \
                 && echo x > /dev/berth-null0 && echo \"$BERTH_CDI $BERTH_CDI_SPEC\" \
                 && cat /cdi/data.txt && ! echo y 2>/dev/null > /cdi/data.txt";
    for id in &ids {
        let r = exec(&mut c, id, &["sh", "-c", check]).await;
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert_eq!(r.exit_code, 0, "{id}: {out}\n{err}");
        assert_eq!(out, "1:3\nn0 yes\nhello from cdi\n", "{id}: {err}");
    }
    if loop_ctl {
        for id in &ids {
            let r = exec(
                &mut c,
                id,
                &[
                    "sh",
                    "-c",
                    "stat -c '%t:%T' /dev/berth-loopctl && : < /dev/berth-loopctl",
                ],
            )
            .await;
            let out = String::from_utf8_lossy(&r.stdout).to_string();
            let err = String::from_utf8_lossy(&r.stderr).to_string();
            assert_eq!((r.exit_code, out.as_str()), (0, "a:ed\n"), "{err}");
        }
    }

    // Unknown devices and malformed names fail naming the field, and leave
    // no container, view or bundle behind.
    let views = b.root().join("images/snapshots/views");
    let bundles = b.state().join("containers");
    let (nviews, nbundles) = (count(&views), count(&bundles));
    assert_eq!(nviews, 2);
    let mut unknown = ctr_config("unknown", &cmd);
    unknown.cdi_devices = vec![
        cri::CdiDevice {
            name: "berth.test/null=n0".into(),
        },
        cri::CdiDevice {
            name: "berth.test/null=n9".into(),
        },
    ];
    let mut malformed = ctr_config("malformed", &cmd);
    malformed
        .annotations
        .insert("cdi.k8s.io/x".into(), "berth.test/null=n0,n1".into());
    for (cfg, field, what) in [
        (unknown, "config.CDI_devices[1]", "unknown CDI device"),
        (
            malformed,
            "config.annotations[cdi.k8s.io/x]",
            "not a fully qualified CDI device name",
        ),
    ] {
        let e = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(field) && e.message().contains(what),
            "{}",
            e.message()
        );
    }
    let listed = c
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    assert_eq!((count(&views), count(&bundles)), (nviews, nbundles));

    stop_and_remove_pod(&mut c, &pod).await;
    assert_eq!(b.leaks(), Vec::<String>::new());
}
