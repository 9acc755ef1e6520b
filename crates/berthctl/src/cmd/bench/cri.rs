//! `bench cri`.

use super::report::Report;
use super::Common;
use anyhow::Result;

#[derive(clap::Args)]
pub struct CriArgs {
    #[command(flatten)]
    pub common: Common,
}

pub async fn run(_a: CriArgs) -> Result<Report> {
    anyhow::bail!("bench cri: not yet")
}
