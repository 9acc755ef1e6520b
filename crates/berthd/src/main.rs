//! berthd: the berth CRI daemon.

use anyhow::Context;
use berth_cri::config::{Config, DEFAULT_PATH};
use clap::Parser;
use std::io::Write as _;
use std::path::{Path, PathBuf};
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
    /// Rebuild the metadata store's records from the state directory (pod
    /// and container directories, their record copies, monitors, exit
    /// records) after the store was lost or damaged; a damaged file is kept
    /// aside as `berthd.db.damaged-<time>`. Run it while berthd is stopped.
    Repair,
    /// Opens the store and reads every record; prints the pods' ids. berthd
    /// runs this in a child before using the store: redb panics on some
    /// damaged files, and a panic aborts.
    #[command(hide = true)]
    CheckStore,
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
    match a.cmd {
        Some(Cmd::CheckStore) => {
            // Store::open reports a caught panic itself; under panic =
            // "abort" nothing is caught and the message is all there is.
            std::panic::set_hook(Box::new(|info| {
                if cfg!(panic = "abort") {
                    let p = info.payload();
                    let msg = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("");
                    let _ = writeln!(std::io::stderr(), "redb failed an internal check: {msg}");
                }
            }));
            let ids = berth_cri::store::Store::open(&berth_cri::store::db_path(&cfg.root))
                .and_then(|s| s.check())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string(&ids)?);
            return Ok(());
        }
        Some(Cmd::Repair) => return repair(&a.config, cfg),
        _ => {}
    }
    preflight(&a.config, &cfg)?;
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

/// The store, opened and read in a child process: Ok(the pods it records),
/// or what is wrong with it.
fn check_store(config: &Path, root: &Path) -> Result<Vec<String>, String> {
    let db = &berth_cri::store::db_path(root);
    match std::fs::metadata(db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("is missing".into()),
        Err(e) => return Err(format!("cannot be read: {e}")),
        Ok(m) if m.len() == 0 => return Err("is empty".into()),
        Ok(_) => {}
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot be checked: {e}"))?;
    let o = std::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        // The root as resolved here (a --root override included).
        .arg("--root")
        .arg(root)
        .arg("check-store")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot be checked: {e}"))?;
    if o.status.success() {
        return serde_json::from_slice(&o.stdout)
            .map_err(|e| format!("cannot be checked (berthd check-store: {e})"));
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let err = err.trim().trim_start_matches("berthd: ");
    if err.is_empty() {
        return Err(format!("is damaged (berthd check-store: {})", o.status));
    }
    Err(format!("is damaged ({err})"))
}

/// berthd never takes a lost or damaged store for an empty one: it would
/// remove every pod it has no record of. It refuses to start, and says how
/// to rebuild the records.
fn preflight(config: &Path, cfg: &Config) -> anyhow::Result<()> {
    let db = berth_cri::store::db_path(&cfg.root);
    let on_disk = berth_cri::repair::pods_on_disk(&cfg.state);
    let pods_dir = cfg.state.join("pods");
    let problem = match check_store(config, &cfg.root) {
        Ok(ids) => {
            let unknown: Vec<&String> = on_disk.iter().filter(|p| !ids.contains(p)).collect();
            let has_copy = |p: &&&String| {
                pods_dir
                    .join(p)
                    .join(berth_cri::daemon::POD_RECORD)
                    .exists()
            };
            // Pods that were ready once and are not recorded: the store
            // lost them (a pod being created has no copy yet, and recovery
            // undoes those).
            let lost: Vec<&&String> = unknown.iter().filter(has_copy).collect();
            if lost.is_empty() {
                return Ok(());
            }
            format!(
                "has no record of {} pod(s) in {} ({})",
                lost.len(),
                pods_dir.display(),
                lost.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Err(p) if on_disk.is_empty() && (p == "is missing" || p == "is empty") => {
            // A new node (or one without pods): a fresh store is right.
            if p == "is empty" {
                std::fs::remove_file(&db).with_context(|| db.display().to_string())?;
            }
            return Ok(());
        }
        Err(p) if on_disk.is_empty() => p,
        Err(p) => format!(
            "{p}, but {} holds {} pod(s) ({})",
            pods_dir.display(),
            on_disk.len(),
            on_disk.join(", ")
        ),
    };
    let why = if on_disk.is_empty() {
        "berthd does not replace it on its own"
    } else {
        "starting would take the pods it does not record for unknown and remove them"
    };
    anyhow::bail!(
        "the metadata store {} {problem}: {why}. \
         With berthd stopped, run `berthd repair` (same --config) to rebuild the records from {}; a damaged store is kept aside. Then start berthd again.",
        db.display(),
        cfg.state.display()
    )
}

/// `berthd repair`: a damaged store is moved aside, then every pod and
/// container on disk that the store lacks is recorded again.
fn repair(config: &Path, cfg: Config) -> anyhow::Result<()> {
    let db = berth_cri::store::db_path(&cfg.root);
    match check_store(config, &cfg.root) {
        Ok(_) => {}
        Err(p) if p == "is missing" => {}
        Err(p) if p == "is empty" => {
            std::fs::remove_file(&db).with_context(|| db.display().to_string())?;
            println!("{}: was empty; made anew", db.display());
        }
        Err(p) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = db.with_file_name(format!("berthd.db.damaged-{secs}"));
            std::fs::rename(&db, &aside)
                .with_context(|| format!("moving {} aside", db.display()))?;
            println!("{}: {p}; moved to {}", db.display(), aside.display());
        }
    }
    let d = berth_cri::daemon::Daemon::open(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = d.repair().map_err(|e| anyhow::anyhow!("{e}"))?;
    for l in &report {
        println!("{l}");
    }
    println!(
        "repaired: {} record(s) rebuilt; start berthd now",
        report.len()
    );
    Ok(())
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
