//! berthctl: a CRI client for any runtime (crictl's commands), a pod
//! manifest runner (`run POD.yaml`) and a runtime benchmark (`bench`).
//!
//! Exit codes: 0 success; 1 an error; 2 bad usage or input; 3 the runtime
//! cannot be reached; 4 the object was not found; `run` exits with the
//! failing container's code.

mod client;
mod cmd;
mod config;
mod manifest;
mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CONNECT: i32 = 3;
pub const EXIT_NOT_FOUND: i32 = 4;

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Coded {
    pub code: i32,
    pub msg: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Coded {}

pub fn coded(code: i32, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        msg: msg.to_string(),
    })
}

#[derive(Parser)]
#[command(
    name = "berthctl",
    version,
    about = "CRI client, pod runner and runtime benchmark"
)]
pub struct Cli {
    /// CRI runtime endpoint (unix:///path.sock or a path) [env: CONTAINER_RUNTIME_ENDPOINT]
    #[arg(short = 'r', long, global = true)]
    pub runtime_endpoint: Option<String>,
    /// CRI image endpoint (defaults to the runtime endpoint) [env: IMAGE_SERVICE_ENDPOINT]
    #[arg(long, global = true)]
    pub image_endpoint: Option<String>,
    /// Config file like crictl's (runtime-endpoint, image-endpoint, timeout) [env: BERTHCTL_CONFIG; default /etc/berthctl.yaml]
    #[arg(short = 'c', long, global = true)]
    pub config: Option<PathBuf>,
    /// Connection timeout in seconds (`timeout` in the config file; default 10)
    #[arg(long, global = true, value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t)]
    pub output: output::Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Runtime name and versions
    Version,
    /// Runtime status and conditions
    Info(cmd::runtime::InfoArgs),
    /// List pod sandboxes
    Pods(cmd::pods::PodsArgs),
    /// Run a pod sandbox from a config file
    Runp(cmd::pods::RunpArgs),
    /// Stop pod sandboxes
    Stopp(cmd::pods::IdsArgs),
    /// Remove pod sandboxes
    Rmp(cmd::pods::RmpArgs),
    /// Status of pod sandboxes
    Inspectp(cmd::pods::IdsArgs),
    /// Pod sandbox resource usage
    Statsp(cmd::pods::StatspArgs),
    /// List containers
    Ps(cmd::containers::PsArgs),
    /// Create a container in a pod
    Create(cmd::containers::CreateArgs),
    /// Start created containers
    Start(cmd::containers::IdsArgs),
    /// Stop running containers
    Stop(cmd::containers::StopArgs),
    /// Remove containers
    Rm(cmd::containers::RmArgs),
    /// Status of containers
    Inspect(cmd::containers::IdsArgs),
    /// Container resource usage
    Stats(cmd::containers::StatsArgs),
    /// Run a command in a running container
    Exec(cmd::containers::ExecArgs),
    /// Attach to a running container
    Attach(cmd::containers::AttachArgs),
    /// Forward local ports to a pod
    PortForward(cmd::containers::PortForwardArgs),
    /// A container's log
    Logs(cmd::logs::LogsArgs),
    /// List images
    Images(cmd::images::ImagesArgs),
    /// Pull an image
    Pull(cmd::images::PullArgs),
    /// Remove images
    Rmi(cmd::images::RmiArgs),
    /// Status of images
    Inspecti(cmd::images::InspectiArgs),
    /// Container events as they happen
    Events(cmd::events::EventsArgs),
    /// Run a Kubernetes Pod manifest until it ends (Ctrl-C stops and removes it)
    Run(cmd::run::RunArgs),
    /// Runtime benchmarks (OCI, CRI, workload overhead)
    Bench(cmd::bench::BenchArgs),
}

fn exit_code(e: &anyhow::Error) -> i32 {
    for c in e.chain() {
        if let Some(c) = c.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(s) = c.downcast_ref::<tonic::Status>() {
            return match s.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::Unavailable => EXIT_CONNECT,
                tonic::Code::InvalidArgument => EXIT_USAGE,
                _ => EXIT_ERROR,
            };
        }
    }
    EXIT_ERROR
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: starting the async runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    match rt.block_on(cmd::dispatch(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berthctl: {}", cmd::describe(&e));
            std::process::exit(exit_code(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
