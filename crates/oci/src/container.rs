//! The runtime side of the container lifecycle: create, start, kill, delete.

use crate::config::{self, Bundle};
use crate::error::{last_os, Context, Error, Result};
use crate::init::{self, Launch, Role};
use crate::state::{self, Record, Root, Status, EXEC_FIFO};
use crate::sync::{Channel, Msg};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, LinuxResources, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (used by `run` in the foreground).
    pub console_fd: Option<OwnedFd>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
    /// fds that become the init's stdin/stdout/stderr (a monitor's pipes);
    /// None inherits the caller's.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
}

/// The container's cgroup, as runc's cgroupfs driver picks it: an absolute
/// cgroupsPath as is, a relative, empty or missing one under the caller's
/// cgroup (see `berth_cgroups::resolve_path`).
fn cgroup_path_for(spec: &Spec, id: &str) -> Result<PathBuf> {
    let given = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let given = given.as_ref().map(|p| p.to_string_lossy());
    Ok(berth_cgroups::resolve_path(
        Path::new(crate::CGROUP_ROOT),
        given.as_deref(),
        id,
    )?)
}

pub fn cgroup_manager(path: &Path) -> berth_cgroups::Manager {
    berth_cgroups::Manager::new(Path::new(crate::CGROUP_ROOT), path)
}

/// Undoes a failed create: whatever was recorded gets removed.
struct CreateGuard<'a> {
    root: &'a Root,
    id: String,
    pid: i32,
    cgroup: Option<berth_cgroups::Manager>,
    cgroup_created: Vec<PathBuf>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.pid > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.signal_all(libc::SIGKILL);
            let _ = cg.remove();
        }
        berth_cgroups::remove_dirs(&self.cgroup_created);
        let _ = std::fs::remove_dir_all(self.root.container_dir(&self.id));
    }
}

fn write_id_map(pid: i32, file: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    let mut s = String::new();
    for m in maps {
        s.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, s).ctx(|| format!("writing {path}"))
}

/// Writes `content` to `path` atomically (runc does the same for pid files,
/// which callers poll for).
pub fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, content).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("renaming to {}", path.display()))
}

fn reap(pid: i32) -> Option<i32> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return Some(st);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Creates a container from a bundle and leaves its init waiting for
/// `start`. Returns the init's pid.
pub fn create(root: &Root, o: CreateOptions) -> Result<i32> {
    config::validate_id(&o.id)?;
    let bundle = config::load_bundle(&o.bundle)?;
    let process = bundle.spec.process().clone().expect("validated");
    let terminal = process.terminal() == Some(true);
    if terminal && o.console_socket.is_none() && o.console_fd.is_none() {
        return Err(Error::config(
            "config.json",
            "process.terminal",
            "a terminal needs --console-socket (the caller must receive the pty master)",
        ));
    }
    if !terminal && (o.console_socket.is_some()) {
        return Err(Error::Other(
            "--console-socket given but process.terminal is false".into(),
        ));
    }
    // Connect before anything is made so a bad socket leaves nothing behind.
    let console = match (&o.console_fd, &o.console_socket) {
        (Some(_), _) => None,
        (None, Some(p)) if terminal => Some(crate::console::connect(p)?),
        _ => None,
    };
    let console_raw = o
        .console_fd
        .as_ref()
        .map(|f| f.as_raw_fd())
        .or(console.as_ref().map(|f| f.as_raw_fd()));

    // Compile before creating anything: a bad profile leaves nothing behind.
    let seccomp = compile_seccomp_cached(&bundle.spec, &root.path)?;
    // Idmapped mounts need the host's privileges: made here, attached by the init.
    let idmapped = crate::idmap::prepare(&bundle.spec)?;
    crate::debug::trace("config loaded and validated");
    let dir = root.create_dir(&o.id)?;
    let mut guard = CreateGuard {
        root,
        id: o.id.clone(),
        pid: 0,
        cgroup: None,
        cgroup_created: Vec::new(),
        armed: true,
    };
    let lock = root.lock(&o.id)?;
    let cg_path = cgroup_path_for(&bundle.spec, &o.id)?;
    let mut rec = Record {
        id: o.id.clone(),
        pid: 0,
        pid_start: 0,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: state::rfc3339_now(),
        // SAFETY: getuid cannot fail.
        owner: state::user_name(unsafe { libc::getuid() }),
        cgroup: Some(cg_path.clone()),
        cgroup_created: Vec::new(),
        spec: bundle.spec.clone(),
    };
    // Persist before acting: a crash from here on leaves a record to delete.
    root.save(&rec)?;
    let mgr = cgroup_manager(&cg_path);
    guard.cgroup = Some(mgr.clone());
    let mgr = match mgr.create() {
        Ok(created) => {
            crate::debug::trace("cgroup created");
            guard.cgroup_created = created.clone();
            rec.cgroup_created = created;
            Some(mgr)
        }
        Err(e) if rootless_cgroup_denied(&e) => {
            // An unprivileged caller without a delegated cgroup: the
            // container stays in the caller's (never silently for root).
            eprintln!(
                "warning: rootless: no cgroup for the container, linux.resources not applied ({e})"
            );
            guard.cgroup = None;
            rec.cgroup = None;
            None
        }
        Err(e) => return Err(e.into()),
    };
    root.save(&rec)?;
    // Limits hold before the init exists, from its first instruction.
    if let Some(mgr) = &mgr {
        apply_resources(mgr, &bundle.spec)?;
    }

    let fifo_path = dir.join(EXEC_FIFO);
    let cpath = crate::fsutil::cstr(&fifo_path)?;
    // SAFETY: valid C string.
    if unsafe { libc::mkfifo(cpath.as_ptr(), 0o622) } != 0 {
        return Err(last_os(format!("mkfifo {}", fifo_path.display())));
    }
    // O_RDWR never blocks on a fifo; the init keeps this fd and blocks in
    // read() until `start` writes a byte.
    let fifo = crate::fsutil::open_path(&fifo_path, libc::O_RDWR)?;

    let namespaces = spec_namespaces(&bundle.spec);
    let launch = Launch {
        spec: &bundle.spec,
        process: &process,
        namespaces,
        role: Role::Create {
            rootfs: &bundle.rootfs,
            fifo: fifo.as_raw_fd(),
            no_pivot: o.no_pivot,
        },
        console: console_raw,
        preserve_fds: o.preserve_fds,
        close_in_child: vec![lock.as_raw_fd()],
        seccomp: seccomp.as_ref(),
        cgroup: mgr.as_ref(),
        stdio: o.stdio,
        idmapped: idmapped
            .iter()
            .map(|(i, fd)| (*i, fd.as_raw_fd()))
            .collect(),
    };
    let pid = spawn(
        &launch,
        &bundle,
        &mut guard,
        &mut rec,
        root,
        !o.no_new_keyring,
    )?;
    drop(fifo);
    if let Some(pf) = &o.pid_file {
        write_atomic(pf, &pid.to_string())?;
    }
    guard.armed = false;
    Ok(pid)
}

/// True when an unprivileged caller may not create the cgroup.
fn rootless_cgroup_denied(e: &berth_cgroups::Error) -> bool {
    // SAFETY: geteuid cannot fail.
    let unprivileged = unsafe { libc::geteuid() } != 0;
    let denied = matches!(e, berth_cgroups::Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)));
    unprivileged && denied
}

/// Writes `linux.resources` to a new cgroup. Device rules always apply (the
/// spec's, then the default allow list), as with runc; an absent or empty
/// resources object costs only those writes.
fn apply_resources(mgr: &berth_cgroups::Manager, spec: &Spec) -> Result<()> {
    let mut r = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mut rules = r.devices().clone().unwrap_or_default();
    // Nodes the spec asks berth to create in /dev are usable, as with runc:
    // each gets an allow rule after the spec's own rules.
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let typ = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => oci_spec::runtime::LinuxDeviceType::B,
            oci_spec::runtime::LinuxDeviceType::P => continue,
            _ => oci_spec::runtime::LinuxDeviceType::C,
        };
        let mut rule = oci_spec::runtime::LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(Some(d.major()));
        rule.set_minor(Some(d.minor()));
        rule.set_access(Some("rwm".into()));
        rules.push(rule);
    }
    r.set_devices(Some(rules));
    mgr.apply(&r)?;
    crate::debug::trace("resources applied");
    Ok(())
}

pub fn compile_seccomp(spec: &Spec) -> Result<Option<crate::seccomp::Compiled>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => crate::seccomp::compile(s).map(Some),
        None => Ok(None),
    }
}

/// [`compile_seccomp`] through the BPF cache in the state root.
pub fn compile_seccomp_cached(
    spec: &Spec,
    root: &Path,
) -> Result<Option<crate::seccomp::Compiled>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => crate::seccomp::compile_cached(s, root).map(Some),
        None => Ok(None),
    }
}

/// Namespaces in spec order as (type, path).
pub fn spec_namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

/// Forks the init stages and drives them until the container is ready.
fn spawn(
    launch: &Launch,
    bundle: &Bundle,
    guard: &mut CreateGuard,
    rec: &mut Record,
    root: &Root,
    new_keyring: bool,
) -> Result<i32> {
    let (parent_ch, child_ch) = Channel::pair()?;
    let (pid1, in_cgroup) = fork_stage1(launch.cgroup)?;
    if pid1 == 0 {
        drop(parent_ch);
        if new_keyring {
            join_session_keyring(&rec.id);
        }
        if in_cgroup {
            init::stage1_in_cgroup(launch, &child_ch);
        }
        init::stage1(launch, &child_ch);
    }
    drop(child_ch);
    guard.pid = pid1;
    let res = drive(launch, bundle, rec, root, &parent_ch, pid1);
    if let Err(e) = res {
        // Reap stage 1 if it is still ours; stage 2 is killed by the guard.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid1, libc::SIGKILL) };
        reap(pid1);
        if rec.pid > 0 {
            guard.pid = rec.pid;
        }
        return Err(e);
    }
    Ok(rec.pid)
}

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks stage 1 and returns (pid or 0 in the child, born in its cgroup).
/// On a unified host the child is created directly in the container's
/// cgroup with clone3(CLONE_INTO_CGROUP): no migration afterwards, and
/// nothing of the container ever runs outside its limits. Kernels or
/// sandboxes without clone3 get a plain fork, and stage 1 joins itself.
pub(crate) fn fork_stage1(cg: Option<&berth_cgroups::Manager>) -> Result<(i32, bool)> {
    let dir = cg
        .filter(|m| m.mode() == berth_cgroups::Mode::Unified)
        .and_then(|m| m.dirs().first())
        .and_then(|d| crate::fsutil::open_path(d, libc::O_RDONLY | libc::O_DIRECTORY).ok());
    if let Some(dir) = dir {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: like fork (no stack given: the child continues on a copy
        // of ours); berth is single-threaded here and the child only runs
        // our code.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r == 0 {
            // The container must not inherit a handle on its cgroup dir.
            drop(dir);
            return Ok((0, true));
        }
        if r > 0 {
            crate::debug::trace("stage 1 cloned into its cgroup");
            return Ok((r as i32, true));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM) => {}
            _ => return Err(last_os("clone3 into the container's cgroup")),
        }
    }
    // SAFETY: berth is single-threaded here; the child only runs our code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_os("fork"));
    }
    Ok((pid, false))
}

fn drive(
    launch: &Launch,
    bundle: &Bundle,
    rec: &mut Record,
    root: &Root,
    ch: &Channel,
    pid1: i32,
) -> Result<()> {
    crate::debug::trace("stage 1 forked");
    ch.send(&Msg::Go)?;
    let linux = bundle.spec.linux().clone().unwrap_or_default();
    loop {
        match ch.recv()? {
            Some(Msg::UsernsReady) => {
                // Without CAP_SETGID over the parent namespace setgroups must
                // be denied before gid_map can be written; as root it is not.
                write_id_map(
                    pid1,
                    "uid_map",
                    linux.uid_mappings().as_deref().unwrap_or(&[]),
                )?;
                // SAFETY: geteuid cannot fail.
                if unsafe { libc::geteuid() } != 0 {
                    let p = format!("/proc/{pid1}/setgroups");
                    std::fs::write(&p, "deny").ctx(|| format!("writing {p}"))?;
                }
                write_id_map(
                    pid1,
                    "gid_map",
                    linux.gid_mappings().as_deref().unwrap_or(&[]),
                )?;
                ch.send(&Msg::Go)?;
            }
            Some(Msg::Stage2Pid(p)) => {
                reap(pid1);
                rec.pid = p;
                rec.pid_start = state::proc_stat(p).map(|s| s.0).unwrap_or(0);
                root.save(rec)?;
                if let Some(adj) = launch.process.oom_score_adj() {
                    std::fs::write(format!("/proc/{p}/oom_score_adj"), adj.to_string())
                        .ctx(|| format!("process.oomScoreAdj {adj}"))?;
                }
                // The init's network namespace exists (stage 1 made it):
                // the devices are in it, named and up, before the init
                // goes on.
                if let Some(devs) = linux.net_devices() {
                    crate::netdev::move_all(devs, p)?;
                }
                ch.send(&Msg::Go)?;
            }
            Some(Msg::CreateRuntimeHooks) => {
                let st = hook_state(rec, "creating");
                if let Some(h) = bundle.spec.hooks() {
                    #[allow(deprecated)]
                    if let Some(pre) = h.prestart() {
                        crate::hooks::run_all("prestart", pre, &st)?;
                    }
                    if let Some(cr) = h.create_runtime() {
                        crate::hooks::run_all("createRuntime", cr, &st)?;
                    }
                }
                // createContainer runs during create: "creating", as with
                // runc; the init says "created" to startContainer hooks.
                ch.send(&Msg::HookState(hook_state(rec, "creating")))?;
            }
            Some(Msg::SeccompListener) => {
                let fd = crate::seccomp::recv_listener(ch)?;
                if let Some(l) = launch.seccomp.and_then(|s| s.listener.as_ref()) {
                    let st = serde_json::from_str(&hook_state(rec, "creating")).unwrap_or_default();
                    crate::seccomp::send_to_agent(l, &fd, rec.pid, st)?;
                }
            }
            Some(Msg::Ready) => {
                crate::debug::trace("init ready");
                return Ok(());
            }
            Some(Msg::Error(m)) => return Err(Error::Init(m)),
            Some(m) => return Err(Error::Other(format!("sync: unexpected {m:?}"))),
            None => {
                return Err(Error::Init(
                    "the container's init exited before it was ready".into(),
                ))
            }
        }
    }
}

/// Joins a new session keyring named after the container, so containers do
/// not share the caller's keys. Kernels without keyrings are fine.
fn join_session_keyring(id: &str) {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    if let Ok(name) = std::ffi::CString::new(format!("_ses.{id}")) {
        // SAFETY: valid C string; failure is ignored on purpose.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    }
}

/// The state JSON handed to hooks.
pub fn hook_state(rec: &Record, status: &str) -> String {
    serde_json::json!({
        "ociVersion": crate::OCI_VERSION,
        "id": rec.id,
        "status": status,
        "pid": rec.pid,
        "bundle": rec.bundle,
        "annotations": rec.annotations(),
    })
    .to_string()
}

/// Lets a created container run its program.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let _lock = root.lock(id)?;
    let rec = root.load(id)?;
    match state::status_of(root, &rec) {
        Status::Created => {}
        s => {
            return Err(Error::BadState {
                id: id.into(),
                status: s.to_string(),
                msg: "only a created container can be started".into(),
            })
        }
    }
    let fifo = root.container_dir(id).join(EXEC_FIFO);
    let c = crate::fsutil::cstr(&fifo)?;
    // Non-blocking: with no reader (init died) this fails instead of hanging.
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_os(
            "opening the exec fifo: the container's init is gone",
        ));
    }
    // SAFETY: writing one byte from a static buffer to our fd.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n != 1 {
        let e = last_os("writing the exec fifo");
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // The init holds the only read end until execve closes it: POLLERR
    // (no readers left) means the program runs (or the init died), so the
    // poststart hooks below come after it, as the spec requires. A frozen
    // init would never get there: do not wait for it.
    let frozen = rec
        .cgroup
        .as_ref()
        .is_some_and(|cg| cgroup_manager(cg).is_frozen());
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd; EINTR retries.
    while !frozen && unsafe { libc::poll(&mut p, 1, -1) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(&fifo);
    if let Some(h) = rec
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().clone())
    {
        if let Err(e) = crate::hooks::run_all("poststart", &h, &hook_state(&rec, "running")) {
            // runc fails (and kills the container) when a poststart hook
            // fails, and the runtime spec now says the same: "generate an
            // error, stop the container". It stays, stopped, until delete
            // (which runs the poststop hooks).
            stop_now(&rec);
            return Err(e);
        }
    }
    Ok(())
}

/// Kills every process of the container and waits (bounded) for the init.
fn stop_now(rec: &Record) {
    if let Some(m) = rec.cgroup.as_ref().map(|p| cgroup_manager(p)) {
        let _ = m.signal_all(libc::SIGKILL);
        let _ = m.set_frozen(false);
    }
    if state::process_alive(rec.pid, rec.pid_start) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(rec.pid, libc::SIGKILL) };
    }
    wait_gone(rec, Duration::from_secs(10));
}

/// Parses a signal given as a name ("KILL", "SIGKILL") or a number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Other(format!("invalid signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN+") {
                let k: i32 = rest
                    .parse()
                    .map_err(|_| Error::Other(format!("invalid signal {s:?}")))?;
                libc::SIGRTMIN() + k
            } else if name == "RTMIN" {
                libc::SIGRTMIN()
            } else if name == "RTMAX" {
                libc::SIGRTMAX()
            } else {
                return Err(Error::Other(format!("unknown signal {s:?}")));
            }
        }
    };
    Ok(n)
}

pub fn kill(root: &Root, id: &str, sig: i32, all: bool) -> Result<()> {
    let rec = root.load(id)?;
    let st = state::status_of(root, &rec);
    let mgr = rec.cgroup.as_ref().map(|p| cgroup_manager(p));
    if all && st == Status::Stopped {
        // runc 1.1: --all signals whatever is left in the cgroup (children
        // can outlive an init without a pid namespace) and succeeds.
        if let Some(m) = mgr.as_ref().filter(|m| m.dirs().iter().any(|d| d.exists())) {
            m.signal_all(sig)?;
        }
        return Ok(());
    }
    if st == Status::Stopped || st == Status::Creating {
        return Err(Error::BadState {
            id: id.into(),
            status: st.to_string(),
            msg: "container not running".into(),
        });
    }
    // Without a cgroup (rootless) --all can only reach the init.
    let all = all && mgr.is_some();
    if all {
        if let Some(m) = &mgr {
            m.signal_all(sig)?;
        }
    }
    // SAFETY: kill has no memory-safety preconditions.
    if !all && unsafe { libc::kill(rec.pid, sig) } != 0 {
        return Err(last_os(format!("kill {} {sig}", rec.pid)));
    }
    if st == Status::Paused && sig == libc::SIGKILL {
        // A frozen process cannot die; thaw so the kill lands.
        if let Some(m) = &mgr {
            let _ = m.set_frozen(false);
        }
    }
    Ok(())
}

/// Waits (bounded) until the recorded init is gone.
fn wait_gone(rec: &Record, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(50);
    while state::process_alive(rec.pid, rec.pid_start) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    true
}

pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    config::validate_id(id)?;
    let dir = root.container_dir(id);
    if !dir.exists() {
        return Err(Error::NotFound(id.into()));
    }
    let _lock = root.lock(id)?;
    let rec = match root.load(id) {
        Ok(r) => r,
        // A create killed before its first save: nothing but the dir exists.
        Err(Error::NotFound(_)) => {
            return std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()));
        }
        Err(e) => return Err(e),
    };
    let st = state::status_of(root, &rec);
    match st {
        Status::Stopped | Status::Created | Status::Creating => {}
        Status::Running | Status::Paused if force => {}
        _ => {
            return Err(Error::BadState {
                id: id.into(),
                status: st.to_string(),
                msg: "cannot delete a container that is not stopped (use --force)".into(),
            })
        }
    }
    let mgr = rec.cgroup.as_ref().map(|p| cgroup_manager(p));
    if st != Status::Stopped {
        if let Some(m) = &mgr {
            let _ = m.signal_all(libc::SIGKILL);
            let _ = m.set_frozen(false);
        }
        if rec.pid > 0 && state::process_alive(rec.pid, rec.pid_start) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(rec.pid, libc::SIGKILL) };
        }
        if !wait_gone(&rec, Duration::from_secs(10)) {
            return Err(Error::Other(format!(
                "container {id:?}: init {} did not die after SIGKILL",
                rec.pid
            )));
        }
    }
    if let Some(m) = &mgr {
        m.remove()?;
    }
    // Parents this container's create made, if now empty.
    berth_cgroups::remove_dirs(&rec.cgroup_created);
    std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
    if let Some(h) = rec.spec.hooks().as_ref().and_then(|h| h.poststop().clone()) {
        // Failures are logged and the delete still succeeds (the spec's
        // MUST, and runc 1.1's exit status).
        crate::hooks::run_all_logged("poststop", &h, &hook_state(&rec, "stopped"));
    }
    Ok(())
}

/// Pids of the container's processes (from its cgroup, else its init).
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>> {
    let rec = root.load(id)?;
    if let Some(p) = &rec.cgroup {
        let v = cgroup_manager(p).pids()?;
        if !v.is_empty() {
            return Ok(v);
        }
    }
    if state::process_alive(rec.pid, rec.pid_start) {
        return Ok(vec![rec.pid]);
    }
    Ok(Vec::new())
}

pub fn pause(root: &Root, id: &str, frozen: bool) -> Result<()> {
    let _lock = root.lock(id)?;
    let rec = root.load(id)?;
    let st = state::status_of(root, &rec);
    let ok = if frozen {
        st == Status::Running || st == Status::Created
    } else {
        st == Status::Paused
    };
    if !ok {
        return Err(Error::BadState {
            id: id.into(),
            status: st.to_string(),
            msg: if frozen {
                "only a running container can be paused".into()
            } else {
                "container not paused".into()
            },
        });
    }
    let p = rec
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Other("container has no cgroup".into()))?;
    cgroup_manager(p).set_frozen(frozen)?;
    Ok(())
}

/// The cgroup of a container that has one.
pub fn cgroup_of(root: &Root, id: &str) -> Result<berth_cgroups::Manager> {
    let rec = root.load(id)?;
    rec.cgroup
        .as_ref()
        .map(|p| cgroup_manager(p))
        .ok_or_else(|| Error::Other(format!("container {id:?} has no cgroup")))
}

/// The container's accounting (CPU, memory, pids, io, OOM kills).
pub fn stats(root: &Root, id: &str) -> Result<berth_cgroups::stats::Stats> {
    Ok(cgroup_of(root, id)?.stats()?)
}

/// Changes a live container's limits. Only the values `r` sets change; they
/// are merged into the recorded resources, which must stay consistent
/// (validated as a whole), then written to the cgroup and recorded. Device
/// rules are fixed at create: rewriting them on a live cgroup would deny
/// every device for a moment.
pub fn update(root: &Root, id: &str, file: &str, r: &LinuxResources) -> Result<()> {
    let _lock = root.lock(id)?;
    let mut rec = root.load(id)?;
    let st = state::status_of(root, &rec);
    if st == Status::Stopped {
        return Err(Error::BadState {
            id: id.into(),
            status: st.to_string(),
            msg: "cannot update a stopped container".into(),
        });
    }
    // Device rules are ignored, as runc does (callers such as containerd
    // pass the whole resources object).
    let mut delta = r.clone();
    delta.set_devices(None);
    let mut linux = rec.spec.linux().clone().unwrap_or_default();
    // Validated merged: a new swap limit is checked against the recorded
    // memory limit. The merge holds every value `delta` sets.
    let merged = merge_resources(linux.resources().as_ref(), &delta)?;
    config::validate_resources(file, &merged)?;
    // Values written together go out whole: v2's memory.swap.max is
    // swap - limit and cpu.max is "quota period", so a swap or a period
    // alone would otherwise be computed against nothing (runc merges too).
    if let (Some(mut d), Some(m)) = (*delta.memory(), merged.memory()) {
        if d.limit().is_some() || d.swap().is_some() {
            d.set_limit(d.limit().or(m.limit()));
            d.set_swap(d.swap().or(m.swap()));
        }
        delta.set_memory(Some(d));
    }
    if let (Some(mut d), Some(m)) = (delta.cpu().clone(), merged.cpu()) {
        if d.quota().is_some() || d.period().is_some() {
            d.set_quota(d.quota().or(m.quota()));
            d.set_period(d.period().or(m.period()));
        }
        delta.set_cpu(Some(d));
    }
    let mgr = cgroup_of(root, id)?;
    mgr.apply(&delta)?;
    linux.set_resources(Some(merged));
    rec.spec.set_linux(Some(linux));
    root.save(&rec)
}

/// `base` with every value `over` sets replacing it (objects merge key by
/// key, lists are replaced whole).
fn merge_resources(base: Option<&LinuxResources>, over: &LinuxResources) -> Result<LinuxResources> {
    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
    let to_json = |r: &LinuxResources| {
        serde_json::to_value(r).map_err(|e| Error::Other(format!("resources: {e}")))
    };
    let mut v = match base {
        Some(b) => to_json(b)?,
        None => serde_json::json!({}),
    };
    merge(&mut v, to_json(over)?);
    serde_json::from_value(v).map_err(|e| Error::Other(format!("resources: {e}")))
}
