//! `run POD.yaml`: a Kubernetes Pod manifest end to end on a CRI runtime.
//! Images pulled (or taken from the runtime's store), a sandbox, init
//! containers one after another, then the containers; their logs printed
//! as `[name] line` as they come; restartPolicy applied. The pod is always
//! stopped and removed at the end, also on Ctrl-C or SIGTERM. Exit code:
//! 0 when every container succeeded, else the first failing container's
//! code; 130 when interrupted.

use crate::client::Cri;
use crate::manifest::{Container, Pod, PullPolicy, RestartPolicy};
use anyhow::{bail, Context, Result};
use berth_cri_api::v1 as cri;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A Kubernetes Pod manifest (YAML or JSON)
    pub manifest: PathBuf,
    /// The pod's cgroup parent (default: the runtime's choice)
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// Restarts per container before giving up (restartPolicy Always or OnFailure)
    #[arg(long, default_value_t = 5)]
    pub max_restarts: u32,
    /// Runtime handler for RunPodSandbox
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
}

/// Host side of the pod: log dir and emptyDir volumes, removed at the end.
struct Workdir {
    dir: tempfile::TempDir,
    tmpfs: Vec<PathBuf>,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        for m in &self.tmpfs {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
    }
}

/// What a pod volume is on the node.
enum VolumeSource {
    /// A host directory (emptyDir, hostPath).
    Dir(PathBuf),
    /// An image volume: the image reference.
    Image(String),
}

fn volume_paths(pod: &Pod, work: &mut Workdir) -> Result<Vec<(String, VolumeSource)>> {
    let mut out = Vec::new();
    for (i, v) in pod.spec.volumes.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if let Some(e) = &v.empty_dir {
            let d = work.dir.path().join("volumes").join(&v.name);
            std::fs::create_dir_all(&d)?;
            if e.medium == "Memory" {
                let mut opts = "mode=0777".to_string();
                if let Some(q) = &e.size_limit {
                    opts += &format!(",size={}", q.bytes(&format!("{at}.emptyDir.sizeLimit"))?);
                }
                let st = std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                    .arg(&d)
                    .status()?;
                if !st.success() {
                    bail!("{at}.emptyDir: mounting a tmpfs on {} failed", d.display());
                }
                work.tmpfs.push(d.clone());
            } else {
                // Any container user may write, as in Kubernetes.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))?;
            }
            out.push((v.name.clone(), VolumeSource::Dir(d)));
        } else if let Some(im) = &v.image {
            out.push((v.name.clone(), VolumeSource::Image(im.reference.clone())));
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.kind.as_str() {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                    .with_context(|| format!("{at}.hostPath: creating {}", p.display()))?,
                "Directory" if !p.is_dir() => {
                    bail!("{at}.hostPath: {} is not a directory", p.display())
                }
                "FileOrCreate" if !p.exists() => {
                    std::fs::File::create(&p)
                        .with_context(|| format!("{at}.hostPath: creating {}", p.display()))?;
                }
                "File" if !p.is_file() => bail!("{at}.hostPath: {} is not a file", p.display()),
                _ => {}
            }
            out.push((v.name.clone(), VolumeSource::Dir(p)));
        }
    }
    Ok(out)
}

fn pod_config(pod: &Pod, a: &RunArgs, logs: &Path) -> Result<cri::PodSandboxConfig> {
    let m = &pod.metadata;
    let mut ports = Vec::new();
    for c in &pod.spec.containers {
        for p in c.ports.iter().filter(|p| p.host_port != 0) {
            ports.push(cri::PortMapping {
                protocol: crate::config::protocol(&p.protocol)?,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            });
        }
    }
    let sc = pod.spec.security_context.as_ref();
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone(),
            namespace: if m.namespace.is_empty() {
                "default".into()
            } else {
                m.namespace.clone()
            },
            uid: if m.uid.is_empty() {
                format!("{}-{}", m.name, berth_testutil::random_suffix())
            } else {
                m.uid.clone()
            },
            attempt: 0,
        }),
        hostname: if pod.spec.hostname.is_empty() {
            m.name.clone()
        } else {
            pod.spec.hostname.clone()
        },
        log_directory: logs.display().to_string(),
        port_mappings: ports,
        labels: m.labels.clone().into_iter().collect(),
        annotations: m.annotations.clone().into_iter().collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: a.cgroup_parent.clone().unwrap_or_default(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                run_as_user: sc
                    .and_then(|s| s.run_as_user)
                    .map(|value| cri::Int64Value { value }),
                run_as_group: sc
                    .and_then(|s| s.run_as_group)
                    .map(|value| cri::Int64Value { value }),
                ..Default::default()
            }),
            sysctls: sc
                .map(|s| {
                    s.sysctls
                        .iter()
                        .map(|n| (n.name.clone(), n.value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    vols: &[(String, VolumeSource)],
) -> Result<cri::ContainerConfig> {
    let mut res = cri::LinuxContainerResources::default();
    if let Some(q) = c.resources.limits.get("cpu") {
        res.cpu_period = 100_000;
        res.cpu_quota = (q.millicpu("cpu")? * 100).max(1000);
    }
    if let Some(q) = c
        .resources
        .requests
        .get("cpu")
        .or(c.resources.limits.get("cpu"))
    {
        res.cpu_shares = (q.millicpu("cpu")? * 1024 / 1000).max(2);
    }
    if let Some(q) = c.resources.limits.get("memory") {
        res.memory_limit_in_bytes = q.bytes("memory")?;
    }
    let psc = pod.spec.security_context.as_ref();
    let sc = c.security_context.clone().unwrap_or_default();
    let user = sc.run_as_user.or(psc.and_then(|s| s.run_as_user));
    let group = sc.run_as_group.or(psc.and_then(|s| s.run_as_group));
    let mounts = c
        .volume_mounts
        .iter()
        .map(|m| {
            let source = vols.iter().find(|(n, _)| *n == m.name).map(|(_, s)| s);
            match source {
                Some(VolumeSource::Image(r)) => cri::Mount {
                    container_path: m.mount_path.clone(),
                    image: Some(cri::ImageSpec {
                        image: r.clone(),
                        ..Default::default()
                    }),
                    image_sub_path: m.sub_path.clone(),
                    readonly: true,
                    ..Default::default()
                },
                Some(VolumeSource::Dir(p)) => cri::Mount {
                    container_path: m.mount_path.clone(),
                    host_path: p.display().to_string(),
                    readonly: m.read_only,
                    ..Default::default()
                },
                None => cri::Mount::default(),
            }
        })
        .collect();
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .env
            .iter()
            .map(|e| cri::KeyValue {
                key: e.name.clone(),
                value: e.value.clone().into_bytes(),
            })
            .collect(),
        mounts,
        labels: [("io.kubernetes.container.name".to_string(), c.name.clone())].into(),
        log_path: format!("{}_{attempt}.log", c.name),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(res),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: sc.capabilities.as_ref().map(|k| cri::Capability {
                    add_capabilities: k.add.clone(),
                    drop_capabilities: k.drop.clone(),
                    ..Default::default()
                }),
                privileged: sc.privileged,
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                run_as_user: user.map(|value| cri::Int64Value { value }),
                run_as_group: group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem,
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// Prints a container's CRI log file as it grows, lines prefixed.
struct Follower {
    name: String,
    path: PathBuf,
    pos: u64,
    rest: String,
}

impl Follower {
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut more = String::new();
        if f.read_to_string(&mut more).is_err() {
            return;
        }
        self.pos += more.len() as u64;
        self.rest.push_str(&more);
        let Some(i) = self.rest.rfind('\n') else {
            return;
        };
        let done: String = self.rest.drain(..=i).collect();
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for l in done.lines() {
            let Some(p) = super::logs::parse_line(l) else {
                continue;
            };
            let w: &mut dyn Write = if p.stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            let _ = write!(w, "[{}] {}", self.name, p.text);
            if !p.partial {
                let _ = w.write_all(b"\n");
            }
        }
        let _ = out.flush();
    }
}

struct Slot {
    spec: Container,
    id: String,
    attempt: u32,
    follower: Follower,
    exit: Option<i32>,
}

struct Runner<'a> {
    c: &'a mut Cri,
    pod: &'a Pod,
    pod_id: String,
    pcfg: cri::PodSandboxConfig,
    vols: Vec<(String, VolumeSource)>,
    logs: PathBuf,
    max_restarts: u32,
}

impl Runner<'_> {
    async fn start(&mut self, spec: &Container, attempt: u32) -> Result<Slot> {
        let cfg = container_config(self.pod, spec, attempt, &self.vols)?;
        let log = self.logs.join(&cfg.log_path);
        let id = super::containers::create_in(self.c, &self.pod_id, cfg, self.pcfg.clone())
            .await
            .with_context(|| format!("creating container {}", spec.name))?;
        self.c
            .rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("starting container {}", spec.name))?;
        Ok(Slot {
            spec: spec.clone(),
            id,
            attempt,
            follower: Follower {
                name: spec.name.clone(),
                path: log,
                pos: 0,
                rest: String::new(),
            },
            exit: None,
        })
    }

    /// The exit code once the container has exited.
    async fn exited(&mut self, id: &str) -> Result<Option<i32>> {
        let st = super::containers::status(self.c, id)
            .await?
            .status
            .unwrap_or_default();
        Ok((st.state == cri::ContainerState::ContainerExited as i32).then_some(st.exit_code))
    }

    /// Whether a container that exited with `code` runs again.
    fn restarts(&self, code: i32) -> bool {
        match self.pod.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }

    async fn remove(&mut self, id: &str) {
        let _ = self
            .c
            .rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await;
    }

    async fn drive(&mut self) -> Result<i32> {
        for spec in self.pod.spec.init_containers.clone() {
            let mut attempt = 0;
            loop {
                let mut s = self.start(&spec, attempt).await?;
                let code = loop {
                    s.follower.poll();
                    if let Some(code) = self.exited(&s.id).await? {
                        s.follower.poll();
                        break code;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if code == 0 {
                    break;
                }
                eprintln!(
                    "berthctl: init container {} exited with code {code}",
                    spec.name
                );
                // Init containers are retried unless the policy is Never.
                if self.pod.spec.restart_policy == RestartPolicy::Never
                    || attempt >= self.max_restarts
                {
                    return Ok(code);
                }
                self.remove(&s.id).await;
                attempt += 1;
            }
        }
        let mut slots = Vec::new();
        for spec in self.pod.spec.containers.clone() {
            slots.push(self.start(&spec, 0).await?);
        }
        let mut first_failure = None;
        loop {
            let mut running = false;
            for slot in slots.iter_mut() {
                if slot.exit.is_some() {
                    continue;
                }
                slot.follower.poll();
                let id = slot.id.clone();
                let Some(code) = self.exited(&id).await? else {
                    running = true;
                    continue;
                };
                slot.follower.poll();
                let name = slot.spec.name.clone();
                if self.restarts(code) && slot.attempt < self.max_restarts {
                    eprintln!(
                        "berthctl: container {name} exited with code {code}; restarting ({:?})",
                        self.pod.spec.restart_policy
                    );
                    self.remove(&id).await;
                    let spec = slot.spec.clone();
                    let attempt = slot.attempt + 1;
                    *slot = self.start(&spec, attempt).await?;
                    running = true;
                    continue;
                }
                if self.restarts(code) {
                    eprintln!(
                        "berthctl: container {name} restarted {} times; giving up",
                        self.max_restarts
                    );
                }
                if code != 0 {
                    eprintln!("berthctl: container {name} exited with code {code}");
                    first_failure.get_or_insert(code);
                }
                slot.exit = Some(code);
            }
            if !running {
                return Ok(first_failure.unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn ensure_images(c: &mut Cri, pod: &Pod, pcfg: &cri::PodSandboxConfig) -> Result<()> {
    // Containers' images and image volumes', each with its pull policy.
    let all = pod
        .spec
        .init_containers
        .iter()
        .chain(&pod.spec.containers)
        .map(|ct| {
            (
                format!("container {}", ct.name),
                &ct.image,
                ct.image_pull_policy,
            )
        })
        .chain(pod.spec.volumes.iter().filter_map(|v| {
            v.image
                .as_ref()
                .map(|im| (format!("volume {}", v.name), &im.reference, im.pull_policy))
        }));
    for (who, image, policy) in all {
        let present = super::images::image_status(c, image).await?.is_some();
        match policy {
            PullPolicy::Never if !present => {
                return Err(crate::coded(
                    crate::EXIT_NOT_FOUND,
                    format!(
                        "{who}: image {image} is not in the runtime's store and the pull policy is Never"
                    ),
                ))
            }
            PullPolicy::Always => super::images::ensure_image(c, image, pcfg, true).await?,
            PullPolicy::IfNotPresent if !present => {
                super::images::ensure_image(c, image, pcfg, false).await?
            }
            _ => {}
        }
    }
    Ok(())
}

async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

pub async fn run(c: &mut Cri, a: RunArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.manifest)
        .with_context(|| format!("reading {}", a.manifest.display()))
        .map_err(|e| crate::coded(crate::EXIT_USAGE, format!("{e:#}")))?;
    let pod = Pod::parse(&text, &a.manifest.display().to_string())
        .map_err(|e| crate::coded(crate::EXIT_USAGE, format!("{e:#}")))?;
    let mut work = Workdir {
        dir: tempfile::Builder::new()
            .prefix(&format!("berthctl-run-{}-", pod.metadata.name))
            .tempdir()?,
        tmpfs: Vec::new(),
    };
    let logs = work.dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let pcfg = pod_config(&pod, &a, &logs)?;
    let vols = volume_paths(&pod, &mut work)?;
    ensure_images(c, &pod, &pcfg).await?;
    // An interrupt while the sandbox starts still waits for it, so that it
    // can be removed rather than left behind.
    let (started, early) = {
        let start = c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pcfg.clone()),
            runtime_handler: a.runtime_handler.clone(),
        });
        tokio::pin!(start);
        tokio::select! {
            r = &mut start => (r, None),
            sig = interrupted() => (start.await, Some(sig)),
        }
    };
    let pod_id = started
        .context("starting the pod sandbox")?
        .into_inner()
        .pod_sandbox_id;
    let mut cleanup_client = Cri {
        rt: c.rt.clone(),
        img: c.img.clone(),
    };
    let mut runner = Runner {
        c,
        pod: &pod,
        pod_id: pod_id.clone(),
        pcfg,
        vols,
        logs,
        max_restarts: a.max_restarts,
    };
    let r = if let Some(sig) = early {
        eprintln!("berthctl: {sig}: stopping pod {}", pod.metadata.name);
        Ok(130)
    } else {
        tokio::select! {
        r = runner.drive() => r,
        sig = interrupted() => {
            eprintln!("berthctl: {sig}: stopping pod {}", pod.metadata.name);
            Ok(130)
        }
        }
    };
    // Stop then remove, whatever happened (RemovePodSandbox removes the
    // containers too).
    let stop = cleanup_client
        .rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    let rm = cleanup_client
        .rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    drop(work);
    let code = r?;
    stop.context("stopping the pod")?;
    rm.context("removing the pod")?;
    if code != 0 && code != 130 {
        eprintln!(
            "berthctl: pod {} failed (exit code {code})",
            pod.metadata.name
        );
    }
    Ok(code)
}
