//! `events`: GetContainerEvents, one line per event until interrupted.

use crate::client::Cri;
use crate::output::{short, Format};
use anyhow::Result;
use berth_cri_api::v1 as cri;

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Exit after this many events
    #[arg(short = 'n', long)]
    pub count: Option<usize>,
}

pub fn event_type(t: i32) -> &'static str {
    match cri::ContainerEventType::try_from(t) {
        Ok(cri::ContainerEventType::ContainerCreatedEvent) => "created",
        Ok(cri::ContainerEventType::ContainerStartedEvent) => "started",
        Ok(cri::ContainerEventType::ContainerStoppedEvent) => "stopped",
        Ok(cri::ContainerEventType::ContainerDeletedEvent) => "deleted",
        Err(_) => "unknown",
    }
}

pub async fn events(c: &mut Cri, o: Format, a: EventsArgs) -> Result<()> {
    let mut s =
        c.rt.get_container_events(cri::GetEventsRequest {})
            .await?
            .into_inner();
    let mut seen = 0;
    if a.count == Some(0) {
        return Ok(());
    }
    while let Some(ev) = s.message().await? {
        match o {
            Format::Table => {
                let pod = ev
                    .pod_sandbox_status
                    .as_ref()
                    .and_then(|p| p.metadata.as_ref())
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                println!(
                    "{}  {:<8} {}  pod={}",
                    crate::cmd::logs::format_ts(ev.created_at),
                    event_type(ev.container_event_type),
                    short(&ev.container_id),
                    pod
                );
            }
            // One document per line (JSON) or per `---` (YAML), so a
            // script can read them as they come.
            Format::Json => println!("{}", serde_json::to_string(&ev)?),
            Format::Yaml => print!("---\n{}", serde_yaml_ng::to_string(&ev)?),
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
