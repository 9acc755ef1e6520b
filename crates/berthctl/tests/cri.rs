//! berthctl's CRI commands against a private containerd (its CRI plugin),
//! run as a user would: the built binary, its output and exit codes.

use berth_testutil::berthctl::{wait_for, write, Ctl};
use berth_testutil::containerd_cri::{ContainerdCri, BUSYBOX_IMAGE};
use berth_testutil::output_text;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ctl(ctd: &ContainerdCri) -> Ctl {
    Ctl {
        bin: env!("CARGO_BIN_EXE_berthctl").into(),
        endpoint: ctd.endpoint(),
    }
}

fn pod_yaml(ctd: &ContainerdCri, dir: &Path, name: &str) -> String {
    let logs = dir.join(format!("{name}-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    write(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "metadata:\n  name: {name}\n  namespace: test\n  uid: {name}-uid\nlog_directory: {}\nlinux:\n  cgroup_parent: {}\n",
            logs.display(),
            ctd.cgroup_parent
        ),
    )
}

#[test]
fn pod_and_container_lifecycle() {
    let ctd = ContainerdCri::start().unwrap();
    let ctl = ctl(&ctd);
    let t = tempfile::tempdir().unwrap();

    let v = ctl.ok(&["version"]);
    assert!(v.contains("RuntimeName:  containerd"), "{v}");
    let v = ctl.json(&["version"]);
    assert_eq!(v["runtime_api_version"], "v1", "{v}");
    let info = ctl.json(&["info"]);
    let conds = info["status"]["conditions"].as_array().unwrap();
    assert!(
        conds.iter().all(|c| c["status"] == true),
        "runtime not ready: {info}"
    );

    let images = ctl.ok(&["images"]);
    assert!(images.contains("localhost/berth/busybox"), "{images}");

    // containerd 1.6 has no GetContainerEvents (1.7 added it): the error
    // says so rather than dumping a gRPC status.
    let o = ctl.run(&["events", "-n", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not implement"),
        "{}",
        output_text(&o)
    );

    let pod_cfg = pod_yaml(&ctd, t.path(), "web");
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();
    assert_eq!(pod.len(), 64, "{pod}");
    let pods = ctl.ok(&["pods"]);
    assert!(pods.contains("web") && pods.contains("Ready"), "{pods}");
    assert_eq!(ctl.ok(&["pods", "-q", "--name", "web"]).trim(), pod);
    let p = ctl.json(&["inspectp", &pod[..8]]);
    assert_eq!(p["status"]["state"], 0, "{p}");
    let ip = p["status"]["network"]["ip"].as_str().unwrap().to_string();
    let prefix = ctd.subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod ip {ip} not in {}", ctd.subnet);

    let ctr_cfg = write(
        t.path(),
        "ctr.yaml",
        &format!(
            "metadata: {{name: app}}\nimage: {{image: {BUSYBOX_IMAGE}}}\ncommand: [sh, -c]\n\
             args: ['echo hello $GREETING; echo oops >&2; exec sleep 1000']\n\
             envs: [{{key: GREETING, value: world}}]\nlog_path: app.log\n"
        ),
    );
    let ctr = ctl
        .ok(&["create", &pod, &ctr_cfg, &pod_cfg])
        .trim()
        .to_string();
    assert_eq!(
        ctl.ok(&["ps", "-a", "-q", "--state", "created"]).trim(),
        ctr
    );
    ctl.ok(&["start", &ctr[..12]]);
    let ps = ctl.ok(&["ps"]);
    assert!(ps.contains("app") && ps.contains("Running"), "{ps}");

    wait_for("the log", || {
        ctl.ok(&["logs", "app"]).contains("hello world")
    });
    let o = ctl.run(&["logs", "app"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello world\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
    // The two lines may reach the log in either order (two pipes): the
    // last two are both of them.
    let o = ctl.run(&["logs", "--tail", "2", "--timestamps", "app"]);
    let line = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        line.ends_with(" oops\n") && line.starts_with("20"),
        "{line:?}"
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.ends_with(" hello world\n") && out.starts_with("20"),
        "{out:?}"
    );
    let o = ctl.run(&["logs", "--tail", "1", "app"]);
    let lines = [&o.stdout, &o.stderr]
        .iter()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .sum::<usize>();
    assert_eq!(lines, 1, "{}", output_text(&o));
    let o = ctl.run(&["logs", "--since", "2000-01-01T00:00:00Z", "app"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello world\n");

    assert_eq!(
        ctl.ok(&["exec", "app", "sh", "-c", "echo $GREETING"]),
        "world\n"
    );
    let o = ctl.run(&["exec", &ctr, "sh", "-c", "echo out; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    let s = ctl.json(&["inspect", &ctr]);
    assert_eq!(s["status"]["state"], 1, "{s}");
    assert_eq!(s["status"]["metadata"]["name"], "app");
    let st = ctl.json(&["stats", &ctr]);
    assert_eq!(st["stats"][0]["attributes"]["id"], ctr.as_str(), "{st}");
    assert!(ctl.ok(&["stats"]).contains("app"));
    let sp = ctl.json(&["statsp", &pod]);
    assert_eq!(sp["stats"][0]["attributes"]["id"], pod.as_str(), "{sp}");
    assert!(ctl.ok(&["statsp"]).contains("web"));

    // A follower started while the container runs returns once it stops.
    let follow = ctl
        .cmd()
        .args(["logs", "-f", "--tail", "2", "app"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ctl.ok(&["stop", "--timeout", "1", &ctr]);
    let f = follow.wait_with_output().unwrap();
    assert!(f.status.success(), "{}", output_text(&f));
    assert_eq!(String::from_utf8_lossy(&f.stderr), "oops\n");
    assert_eq!(String::from_utf8_lossy(&f.stdout), "hello world\n");
    let s = ctl.json(&["inspect", &ctr]);
    assert_eq!(s["status"]["state"], 2, "{s}");
    // Follow on an exited container prints everything and returns.
    assert_eq!(ctl.ok(&["logs", "-f", "app"]), "hello world\n");
    ctl.ok(&["rm", &ctr]);
    assert_eq!(ctl.ok(&["ps", "-a", "-q"]).trim(), "");
    ctl.ok(&["stopp", &pod]);
    let pods = ctl.ok(&["pods"]);
    assert!(pods.contains("NotReady"), "{pods}");
    ctl.ok(&["rmp", &pod]);
    assert_eq!(ctl.ok(&["pods", "-q"]).trim(), "");
}

#[test]
fn images_inspect_and_remove() {
    let ctd = ContainerdCri::start().unwrap();
    ctd.import_busybox("localhost/berth/extra:v1", &["true"])
        .unwrap();
    let ctl = ctl(&ctd);
    let i = ctl.json(&["inspecti", "localhost/berth/extra:v1"]);
    assert!(
        i["status"]["repo_tags"].to_string().contains("extra:v1"),
        "{i}"
    );
    let yaml = ctl.ok(&["inspecti", "-o", "yaml", "localhost/berth/extra:v1"]);
    assert!(yaml.contains("repo_tags:"), "{yaml}");
    let list = ctl.ok(&["images", "--digests"]);
    assert!(
        list.contains("localhost/berth/extra") && list.contains("v1"),
        "{list}"
    );
    ctl.ok(&["rmi", "localhost/berth/extra:v1"]);
    let o = ctl.run(&["inspecti", "localhost/berth/extra:v1"]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    // Pulling from a registry that is not there fails with advice.
    let o = ctl.run(&["pull", "127.0.0.1:1/none:v1"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pulling 127.0.0.1:1/none:v1"));
}

#[test]
fn errors_say_what_to_do() {
    let ctd = ContainerdCri::start().unwrap();
    let ctl = ctl(&ctd);
    let t = tempfile::tempdir().unwrap();

    let o = ctl.run(&["inspect", "nosuchcontainer"]);
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ps -a"));

    let bad = write(t.path(), "bad.yaml", "metadata:\n  name: x\n  nmae: y\n");
    let o = ctl.run(&["runp", &bad]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("metadata") && err.contains("nmae"), "{err}");
    assert_eq!(ctl.ok(&["pods", "-q"]).trim(), "");

    let o = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(["-r", "unix:///nonexistent/x.sock", "version"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));

    // The endpoint from the environment and from a crictl-style file.
    let o = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .arg("version")
        .env("CONTAINER_RUNTIME_ENDPOINT", ctd.endpoint())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let cfg = write(
        t.path(),
        "crictl.yaml",
        &format!("runtime-endpoint: {}\ntimeout: 5\n", ctd.endpoint()),
    );
    let o = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(["--config", &cfg, "version"])
        .env_remove("CONTAINER_RUNTIME_ENDPOINT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
}

#[test]
fn pull_from_a_local_registry() {
    let ctd = ContainerdCri::start().unwrap();
    let reg = berth_testutil::registry::Registry::start();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    berth_testutil::write_image_layout(&layout, "t", &["echo", "from the registry"]).unwrap();
    reg.push(&format!("oci:{}:t", layout.display()), "pulled", &[]);
    ctd.allow_plain_http(&reg.host()).unwrap();
    let ctl = ctl(&ctd);
    let image = format!("{}/pulled:latest", reg.host());
    let out = ctl.ok(&["pull", &image]);
    assert!(out.contains("Image is up to date for sha256:"), "{out}");
    assert!(ctl
        .ok(&["images"])
        .contains(&format!("{}/pulled", reg.host())));
    let i = ctl.json(&["inspecti", &image]);
    assert!(i["status"]["size"].as_u64().unwrap() > 0, "{i}");
    ctl.ok(&["rmi", &image]);
    assert!(!ctl.ok(&["images"]).contains("pulled"));
}

/// Runs `berthctl args` with `input` on its stdin.
#[test]
fn port_forward_to_a_pod() {
    let ctd = ContainerdCri::start().unwrap();
    let ctl = ctl(&ctd);
    let t = tempfile::tempdir().unwrap();
    let pod_cfg = pod_yaml(&ctd, t.path(), "streams");
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();
    // A web server in the pod.
    let web = write(
        t.path(),
        "web.yaml",
        &format!(
            "metadata: {{name: web}}\nimage: {{image: {BUSYBOX_IMAGE}}}\n\
             command: [sh, -c, 'mkdir /www; echo served > /www/index.html; exec httpd -f -p 8080 -h /www']\n"
        ),
    );
    let web_id = ctl.ok(&["create", &pod, &web, &pod_cfg]).trim().to_string();
    ctl.ok(&["start", &web_id]);

    // port-forward to the web server.
    let mut pf = ctl
        .cmd()
        .args(["port-forward", "streams", "0:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(pf.stdout.as_mut().unwrap());
        r.read_line(&mut first).unwrap();
    }
    let addr = first
        .strip_prefix("Forwarding from ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_string();
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    };
    assert!(
        body.starts_with("HTTP/1.") && body.ends_with("served\n"),
        "{body}"
    );
    let _ = Command::new("kill")
        .args(["-INT", &pf.id().to_string()])
        .status();
    let o = pf.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", output_text(&o));

    ctl.ok(&["rmp", "-f", &pod]);
}

#[test]
fn streaming_exec_and_attach() {
    let ctd = ContainerdCri::start().unwrap();
    let ctl = ctl(&ctd);
    let t = tempfile::tempdir().unwrap();
    let pod_cfg = pod_yaml(&ctd, t.path(), "codes");
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();
    let cfg = write(
        t.path(),
        "c.yaml",
        &format!(
            "metadata: {{name: c}}\nimage: {{image: {BUSYBOX_IMAGE}}}\ncommand: [sleep, '1000']\n"
        ),
    );
    let id = ctl.ok(&["create", &pod, &cfg, &pod_cfg]).trim().to_string();
    ctl.ok(&["start", &id]);
    // exec -i: stdin reaches the command; -t gives it a terminal (stdout
    // and stderr merged). Exit codes: see streaming_exec_exit_codes.
    let o = ctl.with_stdin(
        &["exec", "-i", "c", "sh", "-c", "cat; echo err >&2"],
        "piped in\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "piped in\n",
        "{}",
        output_text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("err\n"),
        "{}",
        output_text(&o)
    );
    let o = ctl.with_stdin(
        &["exec", "-t", "c", "sh", "-c", "readlink /proc/self/fd/0"],
        "",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "{}",
        output_text(&o)
    );

    let o = ctl.with_stdin(
        &["exec", "-i", "c", "sh", "-c", "cat >/dev/null; exit 3"],
        "x",
    );
    assert_eq!(o.status.code(), Some(3), "{}", output_text(&o));
    let o = ctl.with_stdin(&["exec", "-t", "c", "sh", "-c", "exit 4"], "");
    assert_eq!(o.status.code(), Some(4), "{}", output_text(&o));
    let cat = write(
        t.path(),
        "cat.yaml",
        &format!(
            "metadata: {{name: cat}}\nimage: {{image: {BUSYBOX_IMAGE}}}\ncommand: [cat]\n\
             stdin: true\nstdin_once: true\nlog_path: cat.log\n"
        ),
    );
    // attach -i to `cat`: what we send comes back; closing stdin ends it.
    let cat_id = ctl.ok(&["create", &pod, &cat, &pod_cfg]).trim().to_string();
    ctl.ok(&["start", &cat_id]);
    let o = ctl.with_stdin(&["attach", "-i", "cat"], "echo me\n");
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "echo me\n");
    wait_for("cat to exit", || {
        ctl.json(&["inspect", "cat"])["status"]["state"] == 2
    });

    ctl.ok(&["rmp", "-f", &pod]);
}
