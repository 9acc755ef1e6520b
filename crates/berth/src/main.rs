//! `berth`: an OCI runtime with runc's command line, so containerd, CRI-O,
//! podman and conmon can use it in place of runc.

mod resources;

use anyhow::{anyhow, bail, Context as _, Result};
use berth_oci::container::{self, CreateOptions};
use berth_oci::exec::ExecOptions;
use berth_oci::state::{self, Root};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "berth", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: ", "1.2.1"),
          about = "berth: a runc-compatible OCI container runtime")]
struct Cli {
    /// Directory for container state (tmpfs recommended). Default: /run/berth
    /// for root; $XDG_RUNTIME_DIR/berth, else /tmp/berth-<uid>, for others.
    #[arg(long, global = true, default_value_os_t = default_root(), env = "BERTH_ROOT")]
    root: PathBuf,
    /// Also write errors to this file (one line each, in --log-format);
    /// --debug output goes to stderr only.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the --log file: text or json.
    #[arg(long = "log-format", global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Verbose logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd: not supported (refused with an error).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (auto, true, false).
    #[arg(long = "rootless", id = "global_rootless", num_args = 0..=1, default_missing_value = "true")]
    global_rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct CreateArgs {
    /// Container id.
    id: String,
    /// Path to the bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket path that receives the pty master when process.terminal is true.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Write the container's init pid to this file.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Do not create a new session keyring for the container.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass N extra fds (3..3+N) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container and leave it waiting for `start`.
    Create(CreateArgs),
    /// Run the program of a created container.
    Start { id: String },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait for the container; exit once it runs.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a stopped container (or any with --force).
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json (as `runc spec`).
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        rootless: bool,
    },
    /// Print the runtime features as JSON.
    Features,
    /// Print berth's default seccomp profile (linux.seccomp JSON) for a
    /// process with the given capabilities.
    #[command(hide = true)]
    SeccompDefault {
        /// A capability the process keeps (e.g. CAP_SYS_ADMIN); repeatable.
        #[arg(long = "cap")]
        caps: Vec<String>,
    },
    /// Run a process in a container.
    Exec(ExecArgs),
    /// List a container's processes.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Options passed to ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Update a container's resource limits.
    Update {
        id: String,
        #[command(flatten)]
        args: resources::UpdateArgs,
    },
    /// Stream a container's stats and OOM events (one JSON object a line).
    Events {
        id: String,
        /// Print the stats once and exit.
        #[arg(long)]
        stats: bool,
        /// How often to print stats (e.g. 5s, 250ms).
        #[arg(long, default_value = "5s")]
        interval: String,
    },
}

#[derive(Args)]
struct ExecArgs {
    id: String,
    /// Command and arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// A process.json to run instead of the command line.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    tty: bool,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Extra environment (KEY=value), may repeat.
    #[arg(short, long)]
    env: Vec<String>,
    /// uid[:gid] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Additional gids, may repeat.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Add a capability to every set, may repeat.
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Exec into a paused container too (the process waits frozen until
    /// the container is resumed).
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "process-label", hide = true)]
    process_label: Option<String>,
    #[arg(long = "apparmor", hide = true)]
    apparmor: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Some(path) = &cli.log {
        // runc opens --log before doing anything and fails when it cannot
        // (exit 1, nothing done): errors must not be lost silently.
        if let Err(e) = open_log(path) {
            eprintln!("berth: --log: open {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            log_error(&cli, &format!("{e:#}"));
            1
        }
    };
    std::process::exit(code);
}

fn log_error(cli: &Cli, msg: &str) {
    eprintln!("berth: {msg}");
    if let Some(path) = &cli.log {
        let line = if cli.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg, "time": state::rfc3339_now()})
                .to_string()
        } else {
            format!(
                "time=\"{}\" level=error msg={:?}",
                state::rfc3339_now(),
                msg
            )
        };
        if let Ok(mut f) = open_log(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The --log file, created 0644 if missing and appended to.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

fn create_opts(a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.as_ref().map(|p| absolute(p)),
        console_socket: a.console_socket.clone(),
        console_fd: None,
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds + listen_fds(),
        stdio: None,
    }
}

/// socket-activated fds (LISTEN_FDS) pass through, as with runc.
fn listen_fds() -> i32 {
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The state root when --root is not given (runc's choice for rootless).
fn default_root() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/berth");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("berth"),
        _ => PathBuf::from(format!("/tmp/berth-{uid}")),
    }
}

/// An unprivileged caller's state root must be its own directory: in a
/// shared /tmp another user could have made it first.
fn check_root_owner(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(root) {
        Ok(m) if uid != 0 && (!m.is_dir() || m.uid() != uid) => bail!(
            "state root {} is not a directory owned by uid {uid}",
            root.display()
        ),
        _ => Ok(()),
    }
}

fn dispatch(cli: &Cli) -> Result<i32> {
    if cli.systemd_cgroup {
        // Say what holds on this host, checked, not assumed.
        let here = if Path::new("/run/systemd/system").is_dir() {
            "systemd is running on this host, but berth cannot delegate cgroups to it"
        } else {
            "and none runs on this host: /run/systemd/system is missing"
        };
        bail!("--systemd-cgroup: berth has no systemd cgroup driver ({here}); leave the flag out to use the cgroupfs driver");
    }
    if cli.debug {
        berth_oci::debug::enable();
        berth_oci::debug::trace("start");
    }
    let root = Root::new(&cli.root);
    if matches!(cli.cmd, Cmd::Create(_) | Cmd::Run { .. }) {
        // Made here with mode 0700 before anything else creates it, then
        // checked: it may have existed already.
        root.ensure()?;
    }
    check_root_owner(&cli.root)?;
    match &cli.cmd {
        Cmd::Create(a) => {
            berth_oci::selfclone::ensure_cloned(&cli.root)?;
            container::create(&root, create_opts(a))?;
            Ok(0)
        }
        Cmd::Start { id } => {
            container::start(&root, id)?;
            Ok(0)
        }
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            berth_oci::selfclone::ensure_cloned(&cli.root)?;
            run(&root, create, *detach, *keep)
        }
        Cmd::State { id } => {
            let rec = root.load(id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&state::oci_state(&root, &rec))?
            );
            Ok(0)
        }
        Cmd::Kill { id, signal, all } => {
            let sig = container::parse_signal(signal)?;
            container::kill(&root, id, sig, *all)?;
            Ok(0)
        }
        Cmd::Delete { id, force } => {
            match container::delete(&root, id, *force) {
                // runc: deleting a missing container with --force succeeds.
                Err(berth_oci::Error::NotFound(_)) if *force => {}
                r => r?,
            }
            Ok(0)
        }
        Cmd::List { format, quiet } => list(&root, format, *quiet),
        Cmd::Spec { bundle, rootless } => {
            let dir = bundle.clone().unwrap_or_else(|| PathBuf::from("."));
            let path = dir.join("config.json");
            if path.exists() {
                bail!("{}: file already exists", path.display());
            }
            let spec = berth_oci::spec_default::default_spec(*rootless);
            std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(0)
        }
        Cmd::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&berth_oci::features::features())?
            );
            Ok(0)
        }
        Cmd::SeccompDefault { caps } => {
            let p = berth_oci::seccomp_default::profile(caps);
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(0)
        }
        Cmd::Exec(a) => {
            berth_oci::selfclone::ensure_cloned(&cli.root)?;
            exec(&root, a)
        }
        Cmd::Ps {
            id,
            format,
            ps_args,
        } => ps(&root, id, format, ps_args),
        Cmd::Pause { id } => {
            container::pause(&root, id, true)?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            container::pause(&root, id, false)?;
            Ok(0)
        }
        Cmd::Update { id, args } => resources::update(&root, id, args),
        Cmd::Events {
            id,
            stats,
            interval,
        } => {
            root.load(id)?;
            resources::events(&root, id, *stats, interval)
        }
    }
}

fn run(root: &Root, a: &CreateArgs, detach: bool, keep: bool) -> Result<i32> {
    let mut o = create_opts(a);
    let bundle = berth_oci::config::load_bundle(&a.bundle)?;
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let mut our_end = None;
    if terminal && a.console_socket.is_none() {
        if detach {
            bail!("a detached container with a terminal needs --console-socket");
        }
        let (ours, theirs) = berth_oci::foreground::console_pair()?;
        o.console_fd = Some(theirs);
        our_end = Some(ours);
    }
    if !detach {
        berth_oci::foreground::prepare()?;
    }
    let pid = container::create(root, o)?;
    let pty = match &our_end {
        Some(s) => Some(berth_oci::console::recv_fd(s.as_raw_fd())?),
        None => None,
    };
    if let Err(e) = container::start(root, &a.id) {
        let _ = container::delete(root, &a.id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = berth_oci::foreground::wait(pid, pty)?;
    if !keep {
        container::delete(root, &a.id, true)?;
    }
    Ok(code)
}

fn exec(root: &Root, a: &ExecArgs) -> Result<i32> {
    let rec = root.load(&a.id)?;
    let process = match &a.process {
        Some(file) => {
            let data =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let name = file.display().to_string();
            let p = berth_oci::config::parse_json(&name, &data)?;
            // Name the user's file in errors, not a generic "process.json".
            berth_oci::config::validate_process(&name, "process", &p)?;
            p
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: give a command or --process");
            }
            let mut p = rec
                .spec
                .process()
                .clone()
                .ok_or_else(|| anyhow!("container config has no process"))?;
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            p.set_console_size(None);
            let mut env = p.env().clone().unwrap_or_default();
            for kv in &a.env {
                let key = kv.split('=').next().unwrap_or("");
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(kv.clone());
            }
            p.set_env(Some(env));
            if let Some(c) = &a.cwd {
                p.set_cwd(c.clone());
            }
            if let Some(u) = &a.user {
                // runc: without ":gid" the process keeps the config's gid.
                let (uid, gid) = match u.split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (u.as_str(), None),
                };
                let user = p.user_mut();
                user.set_uid(
                    uid.parse()
                        .map_err(|_| anyhow!("--user {u}: uid {uid:?} is not a number"))?,
                );
                if let Some(g) = gid {
                    user.set_gid(
                        g.parse()
                            .map_err(|_| anyhow!("--user {u}: gid {g:?} is not a number"))?,
                    );
                }
            }
            if !a.additional_gids.is_empty() {
                // runc appends them to the config's.
                let user = p.user_mut();
                let mut gids = user.additional_gids().clone().unwrap_or_default();
                gids.extend(&a.additional_gids);
                user.set_additional_gids(Some(gids));
            }
            if !a.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                let add: Vec<oci_spec::runtime::Capability> = a
                    .cap
                    .iter()
                    .map(|c| {
                        let n = if c.to_ascii_uppercase().starts_with("CAP_") {
                            c.to_ascii_uppercase()
                        } else {
                            format!("CAP_{}", c.to_ascii_uppercase())
                        };
                        serde_json::from_value(serde_json::Value::String(n.clone()))
                            .map_err(|_| anyhow!("--cap: unknown capability {n}"))
                    })
                    .collect::<Result<_>>()?;
                // runc's sets: not inheritable, so the ambient entry only
                // takes where the config already made it inheritable (a
                // non-root --user gains nothing from --cap, as with runc).
                let with = |set: &Option<oci_spec::runtime::Capabilities>| {
                    let mut s = set.clone().unwrap_or_default();
                    s.extend(add.iter().cloned());
                    Some(s)
                };
                let (b, e, pm, am) = (
                    with(caps.bounding()),
                    with(caps.effective()),
                    with(caps.permitted()),
                    with(caps.ambient()),
                );
                caps.set_bounding(b)
                    .set_effective(e)
                    .set_permitted(pm)
                    .set_ambient(am);
                p.set_capabilities(Some(caps));
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            p
        }
    };
    let terminal = process.terminal() == Some(true);
    let mut our_end = None;
    let mut console_fd = None;
    if terminal && a.console_socket.is_none() {
        if a.detach {
            bail!("a detached exec with a terminal needs --console-socket");
        }
        let (ours, theirs) = berth_oci::foreground::console_pair()?;
        console_fd = Some(theirs);
        our_end = Some(ours);
    }
    if !a.detach {
        berth_oci::foreground::prepare()?;
    }
    let pid = berth_oci::exec::exec_with(
        root,
        ExecOptions {
            id: a.id.clone(),
            process,
            console_socket: a.console_socket.clone(),
            console_fd,
            pid_file: a.pid_file.as_ref().map(|p| absolute(p)),
            preserve_fds: a.preserve_fds + listen_fds(),
            stdio: None,
        },
        a.ignore_paused,
    )?;
    if a.detach {
        return Ok(0);
    }
    let pty = match &our_end {
        Some(s) => Some(berth_oci::console::recv_fd(s.as_raw_fd())?),
        None => None,
    };
    Ok(berth_oci::foreground::wait(pid, pty)?)
}

fn list(root: &Root, format: &str, quiet: bool) -> Result<i32> {
    let mut rows = Vec::new();
    for id in root.ids()? {
        if let Ok(rec) = root.load(&id) {
            rows.push(state::oci_state(root, &rec));
        }
    }
    if quiet {
        for r in &rows {
            println!("{}", r["id"].as_str().unwrap_or(""));
        }
    } else if format == "json" {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for r in &rows {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
                r["id"].as_str().unwrap_or(""),
                r["pid"],
                r["status"].as_str().unwrap_or(""),
                r["bundle"].as_str().unwrap_or(""),
                r["created"].as_str().unwrap_or(""),
                r["owner"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

fn ps(root: &Root, id: &str, format: &str, args: &[String]) -> Result<i32> {
    let pids = container::pids(root, id)?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for l in lines {
        if let Some(p) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&p) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}
