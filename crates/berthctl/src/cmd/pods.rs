//! Pod sandboxes: `pods`, `runp`, `stopp`, `rmp`, `inspectp`, `statsp`.

use super::{labels_arg, pod_id};
use crate::client::Cri;
use crate::output::{ago, print_data, short, Format, Table};
use anyhow::Result;
use berth_cri_api::v1 as cri;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PodsArgs {
    /// Only pods whose id starts with this
    #[arg(long)]
    pub id: Option<String>,
    /// Only pods with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Only pods in this namespace
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only pods in this state (ready, notready)
    #[arg(short, long)]
    pub state: Option<String>,
    /// Only pods with this label (KEY=VALUE; repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Only print ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Full ids
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn pod_state(s: i32) -> &'static str {
    match cri::PodSandboxState::try_from(s) {
        Ok(cri::PodSandboxState::SandboxReady) => "Ready",
        Ok(cri::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

pub async fn list(c: &mut Cri, o: Format, a: PodsArgs) -> Result<()> {
    let state = match a.state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("ready") => Some(cri::PodSandboxState::SandboxReady as i32),
        Some("notready") => Some(cri::PodSandboxState::SandboxNotready as i32),
        Some(s) => {
            return Err(crate::coded(
                crate::EXIT_USAGE,
                format!("--state {s:?}: use ready or notready"),
            ))
        }
    };
    let filter = cri::PodSandboxFilter {
        state: state.map(|state| cri::PodSandboxStateValue { state }),
        label_selector: labels_arg(&a.label)?,
        ..Default::default()
    };
    let mut items =
        c.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items;
    items.retain(|p| {
        let m = p.metadata.clone().unwrap_or_default();
        a.id.as_ref().is_none_or(|i| p.id.starts_with(i.as_str()))
            && a.name.as_ref().is_none_or(|n| &m.name == n)
            && a.namespace.as_ref().is_none_or(|n| &m.namespace == n)
    });
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    if a.quiet {
        for p in &items {
            println!("{}", p.id);
        }
        return Ok(());
    }
    if o != Format::Table {
        return print_data(o, &serde_json::json!({ "items": items }));
    }
    let mut t = Table::new(&[
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ]);
    for p in &items {
        let m = p.metadata.clone().unwrap_or_default();
        t.row(vec![
            if a.no_trunc {
                p.id.clone()
            } else {
                short(&p.id)
            },
            ago(p.created_at),
            pod_state(p.state).into(),
            m.name,
            m.namespace,
            m.attempt.to_string(),
            if p.runtime_handler.is_empty() {
                "(default)".into()
            } else {
                p.runtime_handler.clone()
            },
        ]);
    }
    t.print();
    Ok(())
}

#[derive(clap::Args)]
pub struct RunpArgs {
    /// Pod sandbox config (JSON or YAML, crictl's format)
    #[arg(value_name = "POD_CONFIG")]
    pub pod_config: PathBuf,
    /// Runtime handler
    #[arg(long, default_value = "")]
    pub runtime: String,
}

pub async fn runp(c: &mut Cri, a: RunpArgs) -> Result<()> {
    let cfg = crate::config::load::<crate::config::PodConfig>(&a.pod_config)
        .and_then(|p| p.into_cri())
        .map_err(|e| crate::coded(crate::EXIT_USAGE, format!("{e:#}")))?;
    let id =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: a.runtime,
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    println!("{id}");
    Ok(())
}

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Pod ids (unique prefixes) or names
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub async fn stopp(c: &mut Cri, a: IdsArgs) -> Result<()> {
    for p in &a.ids {
        let id = pod_id(c, p).await?;
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        println!("Stopped sandbox {id}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct RmpArgs {
    /// Pod ids (unique prefixes) or names
    pub ids: Vec<String>,
    /// Stop running pods first
    #[arg(short, long)]
    pub force: bool,
    /// Remove every pod
    #[arg(short, long)]
    pub all: bool,
}

pub async fn rmp(c: &mut Cri, a: RmpArgs) -> Result<()> {
    let mut ids = Vec::new();
    if a.all {
        let items =
            c.rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
        ids.extend(items.into_iter().map(|p| p.id));
    } else if a.ids.is_empty() {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "rmp needs pod ids, or --all",
        ));
    }
    for p in &a.ids {
        ids.push(pod_id(c, p).await?);
    }
    for id in ids {
        if a.force {
            c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        }
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        println!("Removed sandbox {id}");
    }
    Ok(())
}

pub async fn inspectp(c: &mut Cri, o: Format, a: IdsArgs) -> Result<()> {
    let mut out = Vec::new();
    for p in &a.ids {
        let id = pod_id(c, p).await?;
        let r =
            c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await?
            .into_inner();
        out.push(serde_json::json!({
            "status": r.status,
            "info": super::runtime_info(&r.info),
        }));
    }
    // Tables make no sense for a nested status: JSON unless YAML is asked.
    let v = if out.len() == 1 {
        out.pop().unwrap_or_default()
    } else {
        serde_json::Value::Array(out)
    };
    print_data(o, &v)
}

#[derive(clap::Args)]
pub struct StatspArgs {
    /// Only this pod (id prefix or name)
    pub id: Option<String>,
    /// Only pods with this label (KEY=VALUE; repeatable)
    #[arg(long)]
    pub label: Vec<String>,
}

pub async fn statsp(c: &mut Cri, o: Format, a: StatspArgs) -> Result<()> {
    let id = match &a.id {
        Some(p) => pod_id(c, p).await?,
        None => String::new(),
    };
    let stats =
        c.rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id,
                label_selector: labels_arg(&a.label)?,
            }),
        })
        .await?
        .into_inner()
        .stats;
    if o != Format::Table {
        return print_data(o, &serde_json::json!({ "stats": stats }));
    }
    let mut t = Table::new(&["POD", "POD ID", "CPU %", "MEM", "CONTAINERS"]);
    for s in &stats {
        let attr = s.attributes.clone().unwrap_or_default();
        let l = s.linux.clone().unwrap_or_default();
        let mem = l
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| crate::output::human_size(v.value))
            .unwrap_or_else(|| "-".into());
        let cpu = l
            .cpu
            .and_then(|c| c.usage_nano_cores)
            .map(|v| format!("{:.2}", v.value as f64 / 1e7))
            .unwrap_or_else(|| "-".into());
        t.row(vec![
            attr.metadata.map(|m| m.name).unwrap_or_default(),
            short(&attr.id),
            cpu,
            mem,
            l.containers.len().to_string(),
        ]);
    }
    t.print();
    Ok(())
}
