//! berthd: the berth CRI daemon.

use anyhow::Context;
use berth_cri::config::{Config, DEFAULT_PATH};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

mod stream;

#[derive(Parser)]
#[command(name = "berthd", version, about = "The berth CRI runtime daemon")]
struct Args {
    /// The TOML configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Print the effective configuration (defaults merged with the file) and exit.
    #[arg(long)]
    print_config: bool,
    /// Override the CRI socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Override the persistent root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Override the runtime state directory.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level filter (e.g. info, debug).
    #[arg(long, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Import an OCI image archive (docker/podman/skopeo `oci-archive`) into
    /// berthd's image store, for nodes without a registry. Run it while
    /// berthd is stopped (the store is locked while it runs).
    Import {
        /// The archive (a tar of an OCI image layout).
        archive: PathBuf,
        /// The image's name, e.g. localhost/app:1.
        name: String,
        /// Which tag of the archive's index to take (its only image if omitted).
        #[arg(long)]
        tag: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let a = Args::parse();
    let must_exist = a.config.as_os_str() != DEFAULT_PATH;
    let mut cfg = Config::load(&a.config, must_exist).map_err(anyhow::Error::msg)?;
    if let Some(s) = a.socket {
        cfg.socket = s;
    }
    if let Some(r) = a.root {
        cfg.root = r;
    }
    if let Some(s) = a.state {
        cfg.state = s;
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    if a.print_config {
        print!("{}", cfg.print());
        return Ok(());
    }
    if let Some(Cmd::Import { archive, name, tag }) = a.cmd {
        let images = berth_image::ImageRoot::open(cfg.root.join("images"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let f = std::fs::File::open(&archive).with_context(|| archive.display().to_string())?;
        let img = images
            .import_archive(f, tag.as_deref(), &name)
            .map_err(|e| anyhow::anyhow!("{}: {e}", archive.display()))?;
        println!("{} {}", img.id, name);
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level).context("--log-level")?;
    if cfg.logs.format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        // Colours only for a terminal: a log file must stay plain text.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let d = berth_cri::daemon::Daemon::open(cfg.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    {
        let d = d.clone();
        tokio::task::spawn_blocking(move || d.recover()).await?;
    }
    {
        // Exits the monitors record are folded in as they happen, so their
        // events reach GetContainerEvents without anyone polling a status.
        let d = d.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.fold_recorded_exits()).await;
            }
        });
    }
    let listener = berth_cri::server::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    if !cfg.metrics.address.is_empty() {
        let d = d.clone();
        let addr = cfg.metrics.address.clone();
        tokio::spawn(async move {
            if let Err(e) = berth_cri::server::serve_metrics(d, addr).await {
                tracing::error!("metrics: {e}");
            }
        });
    }
    // The streaming server for Exec/Attach/PortForward URLs.
    let scfg = berth_streaming::Config {
        addr: cfg
            .stream
            .address
            .parse()
            .with_context(|| format!("stream.address {:?}", cfg.stream.address))?,
        token_ttl: std::time::Duration::from_secs(cfg.stream.token_ttl_seconds.max(1)),
        ..Default::default()
    };
    let backend = Arc::new(stream::StreamBackend { d: d.clone() });
    let server = berth_streaming::Server::bind(scfg, backend)
        .await
        .context("streaming server")?;
    tracing::info!(address = %server.local_addr(), "streaming server");
    let (handle, _task) = server.spawn();
    *d.stream_url.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(move |r| {
        handle
            .url_for(stream::to_request(r))
            .map_err(|e| tracing::warn!("streaming: {e}"))
            .ok()
    }));
    tracing::info!(socket = %cfg.socket.display(), "berthd serving CRI");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down; pods and their monitors keep running");
    };
    berth_cri::server::serve(d, listener, shutdown).await?;
    Ok(())
}
