//! One module per command group; `dispatch` connects when a command needs
//! the runtime.

pub mod bench;
pub mod containers;
pub mod events;
pub mod images;
pub mod logs;
pub mod pods;
pub mod run;
pub mod runtime;
pub mod stream;

use crate::client::{self, Cri};
use crate::{Cli, Cmd};
use anyhow::Result;
use berth_cri_api::v1 as cri;

/// Runs the command; returns the process exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    if let Cmd::Bench(a) = cli.cmd {
        return bench::run(a).await;
    }
    let target = client::resolve(
        cli.runtime_endpoint.as_deref(),
        cli.image_endpoint.as_deref(),
        cli.config.as_deref(),
        cli.connect_timeout,
    )?;
    let mut c = Cri::connect(&target).await?;
    let o = cli.output;
    match cli.cmd {
        Cmd::Version => runtime::version(&mut c, o).await?,
        Cmd::Info(a) => runtime::info(&mut c, o, a).await?,
        Cmd::Pods(a) => pods::list(&mut c, o, a).await?,
        Cmd::Runp(a) => pods::runp(&mut c, a).await?,
        Cmd::Stopp(a) => pods::stopp(&mut c, a).await?,
        Cmd::Rmp(a) => pods::rmp(&mut c, a).await?,
        Cmd::Inspectp(a) => pods::inspectp(&mut c, o, a).await?,
        Cmd::Statsp(a) => pods::statsp(&mut c, o, a).await?,
        Cmd::Ps(a) => containers::list(&mut c, o, a).await?,
        Cmd::Create(a) => containers::create(&mut c, a).await?,
        Cmd::Start(a) => containers::start(&mut c, a).await?,
        Cmd::Stop(a) => containers::stop(&mut c, a).await?,
        Cmd::Rm(a) => containers::rm(&mut c, a).await?,
        Cmd::Inspect(a) => containers::inspect(&mut c, o, a).await?,
        Cmd::Stats(a) => containers::stats(&mut c, o, a).await?,
        Cmd::Exec(a) => return containers::exec(&mut c, a).await,
        Cmd::Attach(a) => return containers::attach(&mut c, a).await,
        Cmd::PortForward(a) => containers::port_forward(&mut c, a).await?,
        Cmd::Logs(a) => logs::logs(&mut c, a).await?,
        Cmd::Images(a) => images::list(&mut c, o, a).await?,
        Cmd::Pull(a) => images::pull(&mut c, a).await?,
        Cmd::Rmi(a) => images::rmi(&mut c, a).await?,
        Cmd::Inspecti(a) => images::inspecti(&mut c, o, a).await?,
        Cmd::Events(a) => events::events(&mut c, o, a).await?,
        Cmd::Run(a) => return run::run(&mut c, a).await,
        Cmd::Bench(_) => unreachable!("handled above"),
    }
    Ok(0)
}

/// The error chain in one line; a gRPC status shows its code and message
/// instead of tonic's debug dump.
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for c in e.chain() {
        if let Some(s) = c.downcast_ref::<tonic::Status>() {
            parts.push(format!("runtime replied {:?}: {}", s.code(), s.message()));
            if s.code() == tonic::Code::Unimplemented {
                parts.push("the runtime does not implement this CRI call".into());
            }
        } else {
            parts.push(c.to_string());
        }
    }
    parts.dedup();
    parts.join(": ")
}

/// The one container whose id starts with `prefix` (or whose name is it).
pub async fn container_id(c: &mut Cri, prefix: &str) -> Result<String> {
    let items =
        c.rt.list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
    pick(
        "container",
        prefix,
        items.iter().map(|x| {
            (
                x.id.as_str(),
                x.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
            )
        }),
    )
}

/// The one pod sandbox whose id starts with `prefix` (or whose name is it).
pub async fn pod_id(c: &mut Cri, prefix: &str) -> Result<String> {
    let items =
        c.rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
    pick(
        "pod",
        prefix,
        items.iter().map(|x| {
            (
                x.id.as_str(),
                x.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
            )
        }),
    )
}

fn pick<'a>(
    kind: &str,
    prefix: &str,
    items: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<String> {
    if prefix.is_empty() {
        return Err(crate::coded(crate::EXIT_USAGE, format!("empty {kind} id")));
    }
    let items: Vec<_> = items.collect();
    if let Some((id, _)) = items.iter().find(|(id, _)| *id == prefix) {
        return Ok(id.to_string());
    }
    let by_prefix: Vec<&str> = items
        .iter()
        .filter(|(id, _)| id.starts_with(prefix))
        .map(|(id, _)| *id)
        .collect();
    let matches = if by_prefix.is_empty() {
        items
            .iter()
            .filter(|(_, name)| *name == prefix)
            .map(|(id, _)| *id)
            .collect()
    } else {
        by_prefix
    };
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(crate::coded(
            crate::EXIT_NOT_FOUND,
            format!(
                "no {kind} with id or name {prefix:?} (list them with `berthctl {}`)",
                if kind == "pod" { "pods" } else { "ps -a" }
            ),
        )),
        many => Err(crate::coded(
            crate::EXIT_USAGE,
            format!(
                "{kind} id {prefix:?} is ambiguous ({} match); give more characters",
                many.len()
            ),
        )),
    }
}

pub fn labels_arg(v: &[String]) -> Result<std::collections::HashMap<String, String>> {
    v.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    crate::coded(crate::EXIT_USAGE, format!("--label {l:?}: use KEY=VALUE"))
                })
        })
        .collect()
}

/// A status's verbose info map: values that are JSON shown as JSON.
pub fn runtime_info(
    info: &std::collections::HashMap<String, String>,
) -> serde_json::Map<String, serde_json::Value> {
    info.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone())),
            )
        })
        .collect()
}
