//! `berthctl run POD.yaml` against a private containerd: init containers,
//! volumes, env, resources, restart policies, failures, Ctrl-C.

use berth_testutil::containerd_cri::{ContainerdCri, BUSYBOX_IMAGE};
use berth_testutil::output_text;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn berthctl(ctd: &ContainerdCri) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berthctl"));
    c.arg("-r").arg(ctd.endpoint());
    c.env("BERTHCTL_CONFIG", "/dev/null");
    c
}

fn run(ctd: &ContainerdCri, dir: &Path, yaml: &str) -> Output {
    let m = dir.join("pod.yaml");
    std::fs::write(&m, yaml).unwrap();
    berthctl(ctd)
        .args([
            "run",
            "--max-restarts",
            "3",
            "--cgroup-parent",
            &ctd.cgroup_parent,
        ])
        .arg(&m)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn no_pods_left(ctd: &ContainerdCri) {
    let o = berthctl(ctd).args(["pods", "-q"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "pods left behind"
    );
    let o = berthctl(ctd).args(["ps", "-a", "-q"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "containers left behind"
    );
}

#[test]
fn init_containers_volumes_env_and_resources() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let host = t.path().join("host");
    // The container runs as uid 1000 and writes here.
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: demo
spec:
  restartPolicy: Never
  volumes:
  - name: scratch
    emptyDir: {{}}
  - name: out
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
  initContainers:
  - name: first
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, "echo one > /scratch/order"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: second
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, "echo two >> /scratch/order; echo init done"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  containers:
  - name: main
    image: {BUSYBOX_IMAGE}
    command: [sh, -c]
    args: ["cat /scratch/order; echo $GREETING; id -u; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; echo done > /out/result"]
    env: [{{name: GREETING, value: hello}}]
    resources: {{limits: {{memory: 64Mi, cpu: 500m}}}}
    securityContext: {{runAsUser: 1000}}
    volumeMounts:
    - {{name: scratch, mountPath: /scratch, readOnly: true}}
    - {{name: out, mountPath: /out}}
"#,
        host = host.display()
    );
    let o = run(&ctd, t.path(), &yaml);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[second] init done"), "{out}");
    let main: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("[main] "))
        .collect();
    assert_eq!(main, ["one", "two", "hello", "1000", "67108864"], "{out}");
    assert_eq!(
        std::fs::read_to_string(host.join("result")).unwrap(),
        "done\n"
    );
    no_pods_left(&ctd);
}

#[test]
fn failing_container_reports_its_exit_code() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: fails}}
spec:
  restartPolicy: Never
  containers:
  - name: ok
    image: {BUSYBOX_IMAGE}
    command: ["true"]
  - name: bad
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'echo about to fail >&2; exit 7']
"#
    );
    let o = run(&ctd, t.path(), &yaml);
    assert_eq!(o.status.code(), Some(7), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[bad] about to fail"), "{err}");
    assert!(err.contains("container bad exited with code 7"), "{err}");
    no_pods_left(&ctd);
}

#[test]
fn on_failure_restarts_until_success() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    // Fails on its first run, succeeds on the second (a counter on the host).
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: retry}}
spec:
  restartPolicy: OnFailure
  volumes: [{{name: s, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]
  containers:
  - name: flaky
    image: {BUSYBOX_IMAGE}
    volumeMounts: [{{name: s, mountPath: /s}}]
    command: [sh, -c, 'echo x >> /s/runs; test $(wc -l < /s/runs) -ge 2']
"#,
        state.display()
    );
    let o = run(&ctd, t.path(), &yaml);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        std::fs::read_to_string(state.join("runs")).unwrap(),
        "x\nx\n"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("restarting"));
    no_pods_left(&ctd);
}

#[test]
fn bad_manifest_names_the_field_and_creates_nothing() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bad}}\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    resources: {{limits: {{memory: lots}}}}\n"
    );
    let o = run(&ctd, t.path(), &yaml);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("spec.containers[0].resources.limits.memory")
    );
    let o = run(
        &ctd,
        t.path(),
        &yaml.replace("resources: {limits: {memory: lots}}", "livenessProbe: {}"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("livenessProbe"));
    no_pods_left(&ctd);
}

#[test]
fn ctrl_c_stops_and_removes_the_pod() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("pod.yaml");
    std::fs::write(
        &m,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: forever}}\nspec:\n  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'echo up; exec sleep 1000']\n"
        ),
    )
    .unwrap();
    let child = berthctl(&ctd)
        .args(["run", "--cgroup-parent", &ctd.cgroup_parent])
        .arg(&m)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let o = berthctl(&ctd).args(["ps", "-q"]).output().unwrap();
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the container never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SIGINT"));
    no_pods_left(&ctd);
}

#[test]
fn the_readme_example_runs() {
    let ctd = ContainerdCri::start().unwrap();
    let t = tempfile::tempdir().unwrap();
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pod.yaml")).unwrap();
    let o = run(&ctd, t.path(), &yaml);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "[app] hello from an init container\n[app] running as 1000 with 64Mi of memory\n"
    );
    no_pods_left(&ctd);
}
