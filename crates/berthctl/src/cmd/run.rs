//! `run POD.yaml`.

use crate::client::Cri;
use anyhow::Result;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A Kubernetes Pod manifest (YAML or JSON)
    pub manifest: std::path::PathBuf,
}

pub async fn run(_c: &mut Cri, _a: RunArgs) -> Result<i32> {
    anyhow::bail!("run: not yet")
}
