//! `bench`.

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub async fn run(_a: BenchArgs) -> Result<i32> {
    anyhow::bail!("bench: not yet")
}
