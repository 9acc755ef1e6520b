//! berthctl, the built binary, against the real berthd: every command a
//! user reaches for, their output and exit codes.

mod common;
use berth_testutil::berthctl::{wait_for, write, Ctl};
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn ctl(b: &Berthd) -> Ctl {
    Ctl {
        bin: bin("berthctl"),
        endpoint: format!("unix://{}", b.socket.display()),
    }
}

#[test]
fn every_command_against_berthd() {
    let b = Berthd::start();
    let ctl = ctl(&b);
    let t = tempfile::tempdir().unwrap();
    assert!(ctl.ok(&["version"]).contains("RuntimeName:  berth"));
    let info = ctl.json(&["info"]);
    assert!(
        info["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == true),
        "{info}"
    );
    assert!(ctl.ok(&["images"]).contains("localhost/berth-test/busybox"));
    assert_eq!(
        ctl.json(&["inspecti", IMAGE])["status"]["repo_tags"][0],
        IMAGE
    );

    let logs = t.path().join("logs");
    let pod_cfg = write(
        t.path(),
        "pod.yaml",
        &format!(
            "metadata:\n  name: web\n  namespace: test\n  uid: web-uid\nlog_directory: {}\n",
            logs.display()
        ),
    );
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();
    assert!(ctl.ok(&["pods"]).contains("Ready"));
    assert_eq!(ctl.json(&["inspectp", &pod[..10]])["status"]["state"], 0);
    let ctr_cfg = write(
        t.path(),
        "ctr.yaml",
        &format!("metadata: {{name: app}}\nimage: {{image: {IMAGE}}}\ncommand: [sh, -c]\nargs: ['echo hello $G; echo oops >&2; exec busybox httpd -f -p 127.0.0.1:8080 -h /etc']\nenvs: [{{key: G, value: world}}]\nlog_path: app.log\n"),
    );
    // Events seen while the container is created and started.
    let ev = ctl
        .cmd()
        .args(["events", "-n", "2", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ctr = ctl
        .ok(&["create", &pod, &ctr_cfg, &pod_cfg])
        .trim()
        .to_string();
    ctl.ok(&["start", &ctr[..12]]);
    let ev = ev.wait_with_output_timeout();
    assert!(ev.contains(&ctr), "{ev}");
    assert!(ctl.ok(&["ps"]).contains("Running"));
    wait_for("the container", || {
        ctl.ok(&["logs", "app"]).contains("hello world")
    });
    let o = ctl.run(&["logs", "app"]);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
    assert_eq!(ctl.ok(&["exec", "app", "sh", "-c", "echo $G"]), "world\n");
    let o = ctl.run(&["exec", &ctr, "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    // Interactive exec (streaming): stdin in, output and exit code out.
    let mut child = ctl
        .cmd()
        .args(["exec", "-i", "app", "sh", "-c", "cat; exit 5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "through stdin\n");
    assert_eq!(o.status.code(), Some(5));
    // Port-forward to the pod's loopback-only server.
    let port = berth_testutil::registry::free_port();
    let mut pf = ctl
        .cmd()
        .args(["port-forward", &pod, &format!("{port}:8080")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    wait_for("the container", || {
        let o = Command::new("busybox")
            .args([
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://127.0.0.1:{port}/hostname"),
            ])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&o.stdout).to_string();
        o.status.success()
    });
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(body.trim(), "web");
    // exec -t: a terminal, and the exit code.
    let o = ctl.with_stdin(
        &["exec", "-t", "app", "sh", "-c", "test -t 0 && exit 4"],
        "",
    );
    assert_eq!(o.status.code(), Some(4));
    // attach -i to a stdin_once `cat`: what is sent comes back; EOF ends it.
    let cat = write(t.path(), "cat.yaml", &format!("metadata: {{name: cat}}\nimage: {{image: {IMAGE}}}\ncommand: [cat]\nstdin: true\nstdin_once: true\nlog_path: cat.log\n"));
    let cat_id = ctl.ok(&["create", &pod, &cat, &pod_cfg]).trim().to_string();
    ctl.ok(&["start", &cat_id]);
    let o = ctl.with_stdin(&["attach", "-i", "cat"], "echo me\n");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "echo me\n");
    wait_for("the container", || {
        ctl.json(&["inspect", "cat"])["status"]["state"] == 2
    });
    // logs -f of an exited container prints all and returns.
    assert_eq!(ctl.ok(&["logs", "-f", "cat"]), "echo me\n");
    assert_eq!(
        ctl.json(&["stats", &ctr])["stats"][0]["attributes"]["id"],
        ctr.as_str()
    );
    assert_eq!(
        ctl.json(&["statsp", &pod])["stats"][0]["attributes"]["id"],
        pod.as_str()
    );
    ctl.ok(&["stop", "--timeout", "1", &ctr]);
    assert_eq!(ctl.json(&["inspect", &ctr])["status"]["state"], 2);
    ctl.ok(&["rm", &ctr]);
    ctl.ok(&["rm", &cat_id]);
    ctl.ok(&["stopp", &pod]);
    ctl.ok(&["rmp", &pod]);
    assert_eq!(ctl.ok(&["pods", "-q"]).trim(), "");
    // Unknown ids: a scriptable exit code.
    assert_eq!(ctl.run(&["inspect", "nope"]).status.code(), Some(4));
    assert_eq!(b.leaks(), Vec::<String>::new());
}

#[test]
fn run_a_pod_manifest_with_init_containers_volumes_and_a_failure() {
    let b = Berthd::start();
    let ctl = ctl(&b);
    let t = tempfile::tempdir().unwrap();
    let ok = write(
        t.path(),
        "ok.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hello}}\nspec:\n  restartPolicy: Never\n  volumes: [{{name: data, emptyDir: {{}}}}]\n  initContainers:\n  - {{name: prep, image: {IMAGE}, command: [sh, -c, 'echo from init > /data/g'], volumeMounts: [{{name: data, mountPath: /data}}]}}\n  containers:\n  - {{name: app, image: {IMAGE}, command: [sh, -c, 'cat /data/g; id -u'], securityContext: {{runAsUser: 1000}}, volumeMounts: [{{name: data, mountPath: /data}}]}}\n"
        ),
    );
    let o = ctl.run(&["run", &ok]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("from init") && out.contains("1000"), "{out}");
    let bad = write(
        t.path(),
        "bad.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: failing}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: app, image: {IMAGE}, command: [sh, -c, 'exit 7']}}\n"),
    );
    let o = ctl.run(&["run", &bad]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(ctl.ok(&["pods", "-q"]).trim(), "", "the pod is removed");
    assert_eq!(b.leaks(), Vec::<String>::new());
}

/// A private registry serving the test image as `test/<repo>:latest`, and
/// a berthd whose hosts.toml points at it.
fn berthd_with_registry(repo: &str) -> (Berthd, berth_testutil::registry::Registry) {
    let b = Berthd::start();
    let reg = berth_testutil::registry::Registry::start();
    let archive = b.tmp.path().join(format!("{repo}.tar"));
    berth_testutil::write_image_archive(&archive, "latest", &["true"]).unwrap();
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        &format!("test/{repo}"),
        &[],
    );
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
    std::fs::write(
        &b.config,
        format!(
            "{cfg}[registry]\nconfig_path = {:?}\n",
            b.tmp.path().join("certs.d")
        ),
    )
    .unwrap();
    b.spawn();
    (b, reg)
}

#[test]
fn pull_and_rmi_through_berthd() {
    let (b, reg) = berthd_with_registry("app");
    let ctl = ctl(&b);
    let name = format!("{}/test/app:latest", reg.host());
    let out = ctl.ok(&["pull", &name]);
    assert!(out.contains("sha256:"), "{out}");
    assert!(ctl
        .ok(&["images"])
        .contains(&format!("{}/test/app", reg.host())));
    ctl.ok(&["rmi", &name]);
    assert!(!ctl.ok(&["images"]).contains("test/app"));
    // A reference that cannot be pulled: a clear error, a failing exit code.
    let o = ctl.run(&["pull", &format!("{}/no/such:1", reg.host())]);
    assert!(!o.status.success());
}

/// `berthctl run` of a Pod with an image volume (Kubernetes 1.36): the image
/// is pulled from a registry like a container's, then mounted read-only,
/// whole and by subPath.
#[test]
fn run_a_pod_with_an_image_volume_from_a_registry() {
    let (b, reg) = berthd_with_registry("volume");
    let ctl = ctl(&b);
    let t = tempfile::tempdir().unwrap();
    let vol = format!("{}/test/volume:latest", reg.host());
    let pod = write(
        t.path(),
        "vol.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: withvol}}\nspec:\n  restartPolicy: Never\n  volumes: [{{name: tools, image: {{reference: {vol}, pullPolicy: IfNotPresent}}}}]\n  containers:\n  - {{name: app, image: {IMAGE}, command: [sh, -c, 'cat /etc-from-image/hostname; ls /tools/bin/busybox; touch /tools/x || echo read-only'], volumeMounts: [{{name: tools, mountPath: /tools}}, {{name: tools, mountPath: /etc-from-image, subPath: etc}}]}}\n"
        ),
    );
    let o = ctl.run(&["run", &pod]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("busybox") && out.contains("/tools/bin/busybox") && out.contains("read-only"),
        "{out}"
    );
    // The volume's image was pulled into the store.
    assert!(ctl.ok(&["images"]).contains("test/volume"));
    assert_eq!(ctl.ok(&["pods", "-q"]).trim(), "", "the pod is removed");
    assert_eq!(b.leaks(), Vec::<String>::new());
}

trait WaitTimeout {
    fn wait_with_output_timeout(self) -> String;
}

impl WaitTimeout for std::process::Child {
    fn wait_with_output_timeout(mut self) -> String {
        for _ in 0..100 {
            if self.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.kill();
        let o = self.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}
