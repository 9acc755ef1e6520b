//! `bench oci|cri|overhead`: the comparisons runtime talks and papers make,
//! on this machine, side by side. Each writes DIR/report.json and
//! DIR/report.html and prints a table; numbers are never asserted.

pub mod cri;
pub mod oci;
pub mod overhead;
pub mod report;
pub mod stats;

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: Kind,
}

#[derive(clap::Subcommand)]
pub enum Kind {
    /// OCI runtimes (berth, crun, runc, youki): create, start, kill+wait, delete, whole run
    Oci(oci::OciArgs),
    /// CRI endpoints (berthd, containerd): each CRI call, pod startup, concurrency, density
    Cri(cri::CriArgs),
    /// CPU- and IO-bound work in a container vs on the host
    Overhead(overhead::OverheadArgs),
}

/// Options every bench shares.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Measured iterations per target
    #[arg(short = 'n', long, default_value_t = 20)]
    pub iterations: usize,
    /// Uncounted warm-up iterations
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Directory for report.json and report.html
    #[arg(long, default_value = "bench-report")]
    pub out: PathBuf,
    /// Target name whose median is the ratios' denominator (default: the first)
    #[arg(long)]
    pub baseline: Option<String>,
}

pub async fn run(a: BenchArgs) -> Result<i32> {
    let report = match a.kind {
        Kind::Oci(o) => {
            // The OCI bench forks and waits on processes: plain threads.
            tokio::task::spawn_blocking(move || oci::run(o)).await??
        }
        Kind::Cri(c) => cri::run(c).await?,
        Kind::Overhead(o) => tokio::task::spawn_blocking(move || overhead::run(o)).await??,
    };
    report.print_table();
    let (json, html) = report.write()?;
    println!("\nreport: {} and {}", json.display(), html.display());
    Ok(0)
}

/// `NAME=VALUE` or just `VALUE` (the name then comes from `default_name`).
pub fn named(spec: &str, default_name: impl FnOnce(&str) -> String) -> (String, String) {
    match spec.split_once('=') {
        Some((n, v)) if !n.is_empty() && !n.contains('/') => (n.to_string(), v.to_string()),
        _ => (default_name(spec), spec.to_string()),
    }
}
