//! `bench overhead`: the same work in a container and on the host.

use super::report::Report;
use super::Common;
use anyhow::Result;

#[derive(clap::Args)]
pub struct OverheadArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn run(_a: OverheadArgs) -> Result<Report> {
    anyhow::bail!("bench overhead: not yet")
}
