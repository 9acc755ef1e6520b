//! Containers: `ps`, `create`, `start`, `stop`, `rm`, `inspect`, `stats`,
//! `exec`, `attach`, `port-forward`.

use super::{container_id, labels_arg, pod_id};
use crate::client::Cri;
use crate::output::{ago, print_data, short, Format, Table};
use anyhow::Result;
use berth_cri_api::v1 as cri;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PsArgs {
    /// All containers, not only running ones
    #[arg(short, long)]
    pub all: bool,
    /// Only containers of this pod (id prefix or name)
    #[arg(short, long)]
    pub pod: Option<String>,
    /// Only containers with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Only containers whose id starts with this
    #[arg(long)]
    pub id: Option<String>,
    /// Only containers in this state (created, running, exited, unknown)
    #[arg(short, long)]
    pub state: Option<String>,
    /// Only containers with this label (KEY=VALUE; repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Only print ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Full ids
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn ctr_state(s: i32) -> &'static str {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

fn parse_state(s: &str) -> Result<i32> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "created" => cri::ContainerState::ContainerCreated as i32,
        "running" => cri::ContainerState::ContainerRunning as i32,
        "exited" => cri::ContainerState::ContainerExited as i32,
        "unknown" => cri::ContainerState::ContainerUnknown as i32,
        other => {
            return Err(crate::coded(
                crate::EXIT_USAGE,
                format!("--state {other:?}: use created, running, exited or unknown"),
            ))
        }
    })
}

pub async fn list(c: &mut Cri, o: Format, a: PsArgs) -> Result<()> {
    let pod = match &a.pod {
        Some(p) => pod_id(c, p).await?,
        None => String::new(),
    };
    let state = match &a.state {
        Some(s) => Some(parse_state(s)?),
        None if a.all => None,
        None => Some(cri::ContainerState::ContainerRunning as i32),
    };
    let mut items =
        c.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod,
                state: state.map(|state| cri::ContainerStateValue { state }),
                label_selector: labels_arg(&a.label)?,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    items.retain(|x| {
        let name = x.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        a.id.as_ref().is_none_or(|i| x.id.starts_with(i.as_str()))
            && a.name.as_ref().is_none_or(|n| name == n)
    });
    items.sort_by_key(|x| std::cmp::Reverse(x.created_at));
    if a.quiet {
        for x in &items {
            println!("{}", x.id);
        }
        return Ok(());
    }
    if o != Format::Table {
        return print_data(o, &serde_json::json!({ "containers": items }));
    }
    let mut t = Table::new(&[
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
    ]);
    for x in &items {
        let m = x.metadata.clone().unwrap_or_default();
        let img = x
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        t.row(vec![
            if a.no_trunc {
                x.id.clone()
            } else {
                short(&x.id)
            },
            if a.no_trunc || !img.starts_with("sha256:") {
                img
            } else {
                short(&img)
            },
            ago(x.created_at),
            ctr_state(x.state).into(),
            m.name,
            m.attempt.to_string(),
            if a.no_trunc {
                x.pod_sandbox_id.clone()
            } else {
                short(&x.pod_sandbox_id)
            },
        ]);
    }
    t.print();
    Ok(())
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The pod (id prefix or name)
    pub pod: String,
    /// Container config (JSON or YAML, crictl's format)
    pub container_config: PathBuf,
    /// The pod's sandbox config, as given to runp
    pub pod_config: PathBuf,
    /// Do not pull the image when it is missing
    #[arg(long)]
    pub no_pull: bool,
}

pub async fn create(c: &mut Cri, a: CreateArgs) -> Result<()> {
    let usage = |e: anyhow::Error| crate::coded(crate::EXIT_USAGE, format!("{e:#}"));
    let cfg = crate::config::load::<crate::config::ContainerConfig>(&a.container_config)
        .and_then(|x| x.into_cri())
        .map_err(usage)?;
    let pcfg = crate::config::load::<crate::config::PodConfig>(&a.pod_config)
        .and_then(|x| x.into_cri())
        .map_err(usage)?;
    let pod = pod_id(c, &a.pod).await?;
    let image = cfg.image.clone().unwrap_or_default();
    if !a.no_pull {
        super::images::ensure_image(c, &image.image, &pcfg, false).await?;
    }
    let id = create_in(c, &pod, cfg, pcfg).await?;
    println!("{id}");
    Ok(())
}

pub async fn create_in(
    c: &mut Cri,
    pod: &str,
    cfg: cri::ContainerConfig,
    pcfg: cri::PodSandboxConfig,
) -> Result<String> {
    Ok(c.rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(cfg),
            sandbox_config: Some(pcfg),
        })
        .await?
        .into_inner()
        .container_id)
}

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Container ids (unique prefixes) or names
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub async fn start(c: &mut Cri, a: IdsArgs) -> Result<()> {
    for x in &a.ids {
        let id = container_id(c, x).await?;
        c.rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        println!("{id}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Container ids (unique prefixes) or names
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Seconds to wait after SIGTERM before killing
    #[arg(long, default_value_t = 10)]
    pub timeout: i64,
}

pub async fn stop(c: &mut Cri, a: StopArgs) -> Result<()> {
    for x in &a.ids {
        let id = container_id(c, x).await?;
        c.rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: a.timeout,
        })
        .await?;
        println!("{id}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Container ids (unique prefixes) or names
    pub ids: Vec<String>,
    /// Stop running containers first
    #[arg(short, long)]
    pub force: bool,
    /// Remove every container
    #[arg(short, long)]
    pub all: bool,
}

pub async fn rm(c: &mut Cri, a: RmArgs) -> Result<()> {
    let mut ids = Vec::new();
    if a.all {
        let items =
            c.rt.list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner()
                .containers;
        ids.extend(items.into_iter().map(|x| x.id));
    } else if a.ids.is_empty() {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "rm needs container ids, or --all",
        ));
    }
    for x in &a.ids {
        ids.push(container_id(c, x).await?);
    }
    for id in ids {
        if a.force {
            c.rt.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await?;
        }
        c.rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        println!("{id}");
    }
    Ok(())
}

pub async fn status(c: &mut Cri, id: &str) -> Result<cri::ContainerStatusResponse> {
    Ok(c.rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await?
        .into_inner())
}

pub async fn inspect(c: &mut Cri, o: Format, a: IdsArgs) -> Result<()> {
    let mut out = Vec::new();
    for x in &a.ids {
        let id = container_id(c, x).await?;
        let r = status(c, &id).await?;
        out.push(serde_json::json!({
            "status": r.status,
            "info": super::runtime_info(&r.info),
        }));
    }
    let v = if out.len() == 1 {
        out.pop().unwrap_or_default()
    } else {
        serde_json::Value::Array(out)
    };
    print_data(o, &v)
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Only this container (id prefix or name)
    pub id: Option<String>,
    /// Only containers of this pod (id prefix or name)
    #[arg(short, long)]
    pub pod: Option<String>,
    /// Only containers with this label (KEY=VALUE; repeatable)
    #[arg(long)]
    pub label: Vec<String>,
}

pub async fn stats(c: &mut Cri, o: Format, a: StatsArgs) -> Result<()> {
    let id = match &a.id {
        Some(x) => container_id(c, x).await?,
        None => String::new(),
    };
    let pod = match &a.pod {
        Some(p) => pod_id(c, p).await?,
        None => String::new(),
    };
    let stats =
        c.rt.list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                id,
                pod_sandbox_id: pod,
                label_selector: labels_arg(&a.label)?,
            }),
        })
        .await?
        .into_inner()
        .stats;
    if o != Format::Table {
        return print_data(o, &serde_json::json!({ "stats": stats }));
    }
    let mut t = Table::new(&["CONTAINER", "NAME", "CPU NS", "MEM", "DISK"]);
    for s in &stats {
        let attr = s.attributes.clone().unwrap_or_default();
        t.row(vec![
            short(&attr.id),
            attr.metadata.map(|m| m.name).unwrap_or_default(),
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds)
                .map(|v| v.value.to_string())
                .unwrap_or_else(|| "-".into()),
            s.memory
                .as_ref()
                .and_then(|m| m.working_set_bytes)
                .map(|v| crate::output::human_size(v.value))
                .unwrap_or_else(|| "-".into()),
            s.writable_layer
                .as_ref()
                .and_then(|w| w.used_bytes)
                .map(|v| crate::output::human_size(v.value))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print();
    Ok(())
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the command
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Seconds before the command is killed (0: no limit)
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    /// Container id (unique prefix) or name
    pub id: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// Returns the command's exit code as berthctl's.
pub async fn exec(c: &mut Cri, a: ExecArgs) -> Result<i32> {
    let id = container_id(c, &a.id).await?;
    if a.interactive || a.tty {
        return super::stream::exec(c, &id, a.cmd, a.interactive, a.tty).await;
    }
    let r =
        c.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id,
            cmd: a.cmd,
            timeout: a.timeout,
        })
        .await?
        .into_inner();
    std::io::stdout().write_all(&r.stdout)?;
    std::io::stderr().write_all(&r.stderr)?;
    std::io::stdout().flush()?;
    Ok(r.exit_code)
}

#[derive(clap::Args)]
pub struct AttachArgs {
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    /// Container id (unique prefix) or name
    pub id: String,
}

/// Returns the container's exit code once it ends.
pub async fn attach(c: &mut Cri, a: AttachArgs) -> Result<i32> {
    let id = container_id(c, &a.id).await?;
    super::stream::attach(c, &id, a.interactive, a.tty).await
}

#[derive(clap::Args)]
pub struct PortForwardArgs {
    /// Pod id (unique prefix) or name
    pub pod: String,
    /// LOCAL:REMOTE port pairs
    #[arg(required = true)]
    pub ports: Vec<String>,
}

pub async fn port_forward(c: &mut Cri, a: PortForwardArgs) -> Result<()> {
    let pod = pod_id(c, &a.pod).await?;
    super::stream::port_forward(c, &pod, &a.ports).await
}
