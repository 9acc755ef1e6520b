//! A private berthd for tests: its own root, state, socket, CNI config
//! (a bridge with a random name and subnet, IPAM data in the temp dir) and
//! cgroup parent; a busybox image imported; a CRI client over the socket.
#![allow(dead_code)]

use berth_cri_api::v1 as cri;
use berth_cri_api::v1::image_service_client::ImageServiceClient;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use tonic::transport::Channel;

pub const IMAGE: &str = "localhost/berth-test/busybox:1";

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> -> target/debug/<name>
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Additions to a test berthd's setup (`Berthd::start` uses none).
#[derive(Default)]
pub struct Options {
    /// Appended to berth.toml after the harness's own tables, so only new
    /// tables fit here (e.g. `[metrics]`).
    pub extra_toml: String,
    /// More keys of the `[runtime]` table (e.g. `denied_sysctls = [..]`).
    pub runtime_toml: String,
    /// More top-level keys (before any table), e.g. `container_root = ".."`.
    pub top_toml: String,
    /// More images to import before berthd opens the store: (OCI layout
    /// directory holding one image, name).
    pub images: Vec<(PathBuf, String)>,
    /// A tmpfs of this size (`mount -o size=`, e.g. "8m") as the state
    /// directory, to run out of space on purpose; unmounted in Drop.
    pub state_tmpfs: Option<String>,
}

pub struct Berthd {
    pub tmp: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub subnet_prefix: String,
    pub cgroup_parent: String,
    /// The state directory is a tmpfs of the test's (not a leak).
    state_tmpfs: bool,
    child: Option<Child>,
    /// Stopped by `terminate` and not started again: Drop starts it once
    /// more, so a test that fails in between leaves no pods behind.
    terminated: bool,
}

impl Berthd {
    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    pub fn logs(&self) -> PathBuf {
        self.tmp.path().join("logs")
    }

    /// Configures and starts a berthd with the busybox image imported.
    pub fn start() -> Berthd {
        Self::start_with(Options::default())
    }

    /// As `start`, with additions to the config and more images.
    pub fn start_with(opts: Options) -> Berthd {
        let tmp = tempfile::Builder::new()
            .prefix("berthd-test-")
            .tempdir()
            .unwrap();
        let sfx = berth_testutil::random_suffix();
        let bridge = format!("bt{}", &sfx[..6.min(sfx.len())]);
        let n = u32::from_str_radix(&sfx[..4.min(sfx.len())], 16).unwrap_or(7);
        let subnet_prefix = format!("10.{}.{}", 100 + (n % 100), (n >> 8) % 250 + 1);
        let cgroup_parent = format!("/berth-test-{sfx}");
        let conf_dir = tmp.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("berth-test-{sfx}"),
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet_prefix}.0/24"),
                           "rangeStart": format!("{subnet_prefix}.10"), "gateway": format!("{subnet_prefix}.1")}]],
                          "dataDir": tmp.path().join("ipam").display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            conf_dir.join("10-berth.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        if let Some(size) = &opts.state_tmpfs {
            let state = tmp.path().join("state");
            std::fs::create_dir_all(&state).unwrap();
            let o = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&state)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "mount tmpfs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let config = tmp.path().join("berth.toml");
        let toml = format!(
            "{top}\nroot = {root:?}\nstate = {state:?}\nsocket = {sock:?}\n[runtime]\ncgroup_parent = {cg:?}\nmonitor = {mon:?}\n{rt}\n[runtime.handlers.runc]\npath = \"/usr/sbin/runc\"\n[cni]\nconf_dir = {conf:?}\nbin_dirs = [\"/usr/lib/cni\"]\n",
            root = tmp.path().join("root"),
            state = tmp.path().join("state"),
            sock = tmp.path().join("berth.sock"),
            cg = cgroup_parent,
            mon = bin("berth-monitor"),
            conf = conf_dir,
            rt = opts.runtime_toml,
            top = opts.top_toml,
        );
        std::fs::write(&config, toml + &opts.extra_toml).unwrap();
        // The image is imported before berthd opens the store.
        {
            let images = berth_image::ImageRoot::open(tmp.path().join("root/images")).unwrap();
            let archive = tmp.path().join("busybox.tar");
            berth_testutil::write_image_archive(&archive, "1", &["sh"]).unwrap();
            images
                .import_archive(std::fs::File::open(&archive).unwrap(), Some("1"), IMAGE)
                .unwrap();
            for (layout, name) in &opts.images {
                images.import_layout(layout, None, name).unwrap();
            }
        }
        // The test's own bridge, with an address, made before the plugin
        // uses it: the host reaches pods (and mapped ports) without the
        // plugin's isGateway, which would switch on host-wide forwarding.
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{subnet_prefix}.1/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        let socket = tmp.path().join("berth.sock");
        let mut b = Berthd {
            tmp,
            socket,
            config,
            bridge,
            subnet_prefix,
            cgroup_parent,
            state_tmpfs: opts.state_tmpfs.is_some(),
            child: None,
            terminated: false,
        };
        b.spawn();
        b
    }

    pub fn spawn(&mut self) {
        self.spawn_env(None)
    }

    fn spawn_env(&mut self, fault: Option<&str>) {
        self.terminated = false;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("berthd.log"))
            .unwrap();
        let mut cmd = Command::new(bin("berthd"));
        if let Some(f) = fault {
            cmd.env("BERTHD_FAULT", f);
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("berthd did not come up: {}", self.log());
    }

    /// Starts berthd expecting it to refuse to start: waits for it to exit
    /// (up to 20 s) and returns its status; what it said is in `log()`.
    pub fn spawn_expecting_failure(&mut self) -> std::process::ExitStatus {
        // Drop starts it again to clean up, should the test fail later.
        self.terminated = true;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("berthd.log"))
            .unwrap();
        let mut c = Command::new(bin("berthd"))
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..2000 {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // It came up: keep it so Drop cleans up, and fail.
        self.child = Some(c);
        panic!("berthd did not refuse to start: {}", self.log());
    }

    /// `berthd repair` with this berthd's config (berthd must be stopped);
    /// returns its status and output.
    pub fn repair(&self) -> (std::process::ExitStatus, String) {
        let o = Command::new(bin("berthd"))
            .arg("--config")
            .arg(&self.config)
            .arg("repair")
            .output()
            .unwrap();
        let out =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        (o.status, out)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("berthd.log")).unwrap_or_default()
    }

    /// SIGTERM, as a clean shutdown (systemctl stop) does; waits up to 20 s
    /// for berthd to exit and returns how it exited (None: it did not).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        self.terminated = true;
        // No libc among the test's dependencies: kill(1) sends it.
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..2000 {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// As `spawn`, but never panics (it runs in Drop, maybe while a test
    /// panics); a berthd that refuses to start (a test damaged its store)
    /// gets its records rebuilt first, so its pods can still be removed.
    fn respawn_for_cleanup(&mut self) {
        self.respawn_once();
        if self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        {
            self.child = None;
            let _ = self.repair();
            self.respawn_once();
        }
    }

    fn respawn_once(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let Ok(log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("berthd.log"))
        else {
            return;
        };
        let Ok(err) = log.try_clone() else {
            return;
        };
        let Ok(child) = Command::new(bin("berthd"))
            .arg("--config")
            .arg(&self.config)
            .stdout(log)
            .stderr(err)
            .spawn()
        else {
            return;
        };
        self.child = Some(child);
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            // Refused to start.
            if self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn rt(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(channel(&self.socket).await)
    }

    pub async fn img(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(channel(&self.socket).await)
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if self.child.is_none() && self.terminated {
            self.respawn_for_cleanup();
        }
        // Remove whatever pods are left through the daemon itself, then stop it.
        if self.child.is_some() {
            let sock = self.socket.clone();
            // A thread of its own: Drop may run inside the test's runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut c = RuntimeServiceClient::new(channel(&sock).await);
                    if let Ok(r) = c
                        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                        .await
                    {
                        for p in r.into_inner().items {
                            let _ = c
                                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                                    pod_sandbox_id: p.id.clone(),
                                })
                                .await;
                            let _ = c
                                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                                    pod_sandbox_id: p.id,
                                })
                                .await;
                        }
                    }
                });
            })
            .join();
        }
        self.kill9();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // Unmount anything left under the temp dir (views, pinned namespaces).
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let base = self.tmp.path().to_string_lossy().to_string();
            let mut pts: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&base))
                .collect();
            pts.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in pts {
                let _ = Command::new("umount").args(["-l", p]).output();
            }
        }
        for d in ["/sys/fs/cgroup"] {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let p = e.path().join(self.cgroup_parent.trim_start_matches('/'));
                    let _ = remove_cgroup_tree(&p);
                }
            }
        }
    }
}

fn remove_cgroup_tree(p: &Path) -> std::io::Result<()> {
    if !p.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(p)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_cgroup_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(p)
}

pub async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

pub fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

/// A pod with hostUsers: false: its own user namespace mapping container
/// ids 0..65536 to host ids from `host_base`.
pub fn userns_pod_config(
    name: &str,
    logs: &Path,
    host_base: u32,
    pid: cri::NamespaceMode,
) -> cri::PodSandboxConfig {
    let map = vec![cri::IdMapping {
        host_id: host_base,
        container_id: 0,
        length: 65536,
    }];
    let mut cfg = pod_config(name, logs);
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: pid as i32,
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: map.clone(),
                    gids: map,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

pub fn ctr_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Runs a pod with the given containers started; returns (pod id, container ids).
pub async fn run_pod(
    c: &mut RuntimeServiceClient<Channel>,
    cfg: cri::PodSandboxConfig,
    ctrs: Vec<cri::ContainerConfig>,
) -> (String, Vec<String>) {
    let pod = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for ctr in ctrs {
        let id = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr),
                sandbox_config: Some(cfg.clone()),
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
        ids.push(id);
    }
    (pod, ids)
}

/// StopPodSandbox then RemovePodSandbox, both expected to succeed.
pub async fn stop_and_remove_pod(c: &mut RuntimeServiceClient<Channel>, pod: &str) {
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
}

pub async fn status(c: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    c.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// Polls until the container has exited.
pub async fn wait_exited(c: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    for _ in 0..1000 {
        let s = status(c, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("container {id} did not exit");
}

pub async fn exec(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> cri::ExecSyncResponse {
    c.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

impl Berthd {
    /// Everything berthd can leave behind, listed: mounts under its
    /// directories, IP allocations, veths on its bridge, monitors, cgroups,
    /// runtime state, pod and container directories.
    pub fn leaks(&self) -> Vec<String> {
        let mut v = Vec::new();
        let base = self.tmp.path().to_string_lossy().to_string();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let state = self.state().to_string_lossy().to_string();
            for p in m.lines().filter_map(|l| l.split(' ').nth(4)) {
                if p.starts_with(&base) && !(self.state_tmpfs && p == state) {
                    v.push(format!("mount {p}"));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.tmp.path().join("ipam")) {
            for net in rd.flatten() {
                for e in std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let n = e.file_name().to_string_lossy().to_string();
                    if n.parse::<std::net::IpAddr>().is_ok() {
                        v.push(format!("IP allocation {n}"));
                    }
                }
            }
        }
        if let Ok(o) = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
        {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                v.push(format!("veth {}", l.split(':').nth(1).unwrap_or("").trim()));
            }
        }
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains("berth-monitor") && cmd.contains(&base) {
                    v.push(format!("monitor {}", cmd.trim()));
                }
            }
        }
        for h in ["memory", "pids", "cpu,cpuacct", "unified"] {
            let p = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(self.cgroup_parent.trim_start_matches('/'));
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    v.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        for d in [
            "state/oci",
            "state/pods",
            "state/containers",
            "root/images/snapshots/views",
        ] {
            for e in std::fs::read_dir(self.tmp.path().join(d))
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = e.file_name().to_string_lossy().to_string();
                if !n.starts_with('.') && !n.ends_with(".lock") && !n.ends_with(".bpf") {
                    v.push(format!("{d}/{n}"));
                }
            }
        }
        v
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts berthd with BERTHD_FAULT set: it kills itself at that point.
    pub fn spawn_with_fault(&mut self, point: &str) {
        self.spawn_env(Some(point));
    }

    /// Waits for the berthd child to have exited (e.g. after a fault).
    pub fn wait_dead(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}
