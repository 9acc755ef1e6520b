//! The child side of create and exec.
//!
//! berth forks (never re-executes) into two stages, as runc's nsexec does,
//! because namespaces must be entered in a fixed order:
//!
//! * stage 1 joins namespaces given by path (user first), creates a new user
//!   namespace and waits for the parent to write its id maps, unshares the
//!   remaining namespaces (pid and time only apply to children), then forks
//!   stage 2 and exits;
//! * stage 2 is the container's init (pid 1 in a new pid namespace): it
//!   builds the rootfs, switches root, sets up the process and waits on the
//!   exec fifo (create) or execs at once (exec).
//!
//! Both stages talk to the parent over a [`Channel`]; any error is sent back
//! as text and the stage exits, so the parent can clean up and report it.

use crate::caps::{self, Mask};
use crate::error::{last_os, Error, Result};
use crate::fsutil;
use crate::rootfs::{self, Rootfs};
use crate::sync::{Channel, Msg};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80, // CLONE_NEWTIME
    }
}

/// The name of a namespace under /proc/<pid>/ns/.
pub fn ns_proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// What stage 2 does once its namespaces exist.
pub enum Role<'a> {
    /// Build the container and wait on the exec fifo.
    Create {
        rootfs: &'a Path,
        fifo: RawFd,
        no_pivot: bool,
    },
    /// Run a process in a running container.
    Exec,
}

pub struct Launch<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    /// Namespaces to enter: `None` creates one, `Some(path)` joins it.
    pub namespaces: Vec<(LinuxNamespaceType, Option<PathBuf>)>,
    pub role: Role<'a>,
    /// Connected console socket, when the process has a terminal.
    pub console: Option<RawFd>,
    pub preserve_fds: i32,
    /// Runtime fds the child must not keep (e.g. the state lock: an flock
    /// lives as long as any copy of its fd).
    pub close_in_child: Vec<RawFd>,
    /// The cgroup stage 1 moves itself into before anything else, so
    /// stage 2 is born in it and a new cgroup namespace is rooted there.
    pub cgroup: Option<&'a berth_cgroups::Manager>,
    /// The compiled `linux.seccomp` filter, if any.
    pub seccomp: Option<&'a crate::seccomp::Compiled>,
    /// Idmapped mounts the runtime made (index in mounts, detached tree fd).
    pub idmapped: Vec<(usize, RawFd)>,
    /// Replacement stdio for the process (dup'd onto 0, 1, 2 first thing).
    pub stdio: Option<[RawFd; 3]>,
}

impl Launch<'_> {
    fn new_user_ns(&self) -> bool {
        self.namespaces
            .iter()
            .any(|(t, p)| *t == LinuxNamespaceType::User && p.is_none())
    }
    pub fn in_user_ns(&self) -> bool {
        self.namespaces
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::User)
    }
    fn has(&self, t: LinuxNamespaceType) -> bool {
        self.namespaces.iter().any(|(x, _)| *x == t)
    }
}

/// Runs stage 1 in a freshly forked child. Never returns.
pub fn stage1(l: &Launch, ch: &Channel) -> ! {
    stage1_run(l, ch, false)
}

/// Stage 1 for a child clone3 already created in the container's cgroup.
pub fn stage1_in_cgroup(l: &Launch, ch: &Channel) -> ! {
    stage1_run(l, ch, true)
}

fn stage1_run(l: &Launch, ch: &Channel, in_cgroup: bool) -> ! {
    if let Some(fds) = l.stdio {
        for (target, fd) in fds.into_iter().enumerate() {
            // SAFETY: dup2 on fds the caller owns; the target is a stdio slot.
            if fd >= 0 && fd != target as RawFd && unsafe { libc::dup2(fd, target as RawFd) } < 0 {
                let _ = ch.send(&Msg::Error(format!(
                    "stdio: dup2: {}",
                    std::io::Error::last_os_error()
                )));
                unreachable_exit(1)
            }
        }
    }
    match stage1_inner(l, ch, in_cgroup) {
        Ok(()) => unreachable_exit(0),
        Err(e) => {
            let _ = ch.send(&Msg::Error(e.to_string()));
            unreachable_exit(1)
        }
    }
}

fn unreachable_exit(code: i32) -> ! {
    // SAFETY: _exit never returns; skipping atexit handlers is intended in a
    // forked child.
    unsafe { libc::_exit(code) }
}

fn expect_go(ch: &Channel) -> Result<()> {
    match ch.recv()? {
        Some(Msg::Go) => Ok(()),
        Some(m) => Err(Error::Other(format!("sync: unexpected {m:?}"))),
        None => Err(Error::Other("sync: the runtime went away".into())),
    }
}

fn setns_fd(fd: &OwnedFd, t: LinuxNamespaceType, path: &Path) -> Result<()> {
    // SAFETY: fd is an open namespace fd.
    if unsafe { libc::setns(fd.as_raw_fd(), ns_flag(t)) } != 0 {
        return Err(last_os(format!(
            "joining {} namespace {}",
            ns_proc_name(t),
            path.display()
        )));
    }
    Ok(())
}

fn stage1_inner(l: &Launch, ch: &Channel, in_cgroup: bool) -> Result<()> {
    for fd in &l.close_in_child {
        // SAFETY: closing fds the parent named as not ours to keep.
        unsafe { libc::close(*fd) };
    }
    expect_go(ch)?;
    if let Some(cg) = l.cgroup.filter(|_| !in_cgroup) {
        cg.join_self()?;
    }
    // Open every namespace before entering any: after joining a mount
    // namespace the paths would resolve in the container.
    let mut joins = Vec::new();
    for (t, p) in &l.namespaces {
        if let Some(p) = p {
            let fd = fsutil::open_path(p, libc::O_RDONLY)?;
            joins.push((*t, fd, p.clone()));
        }
    }
    joins.sort_by_key(|(t, _, _)| if *t == LinuxNamespaceType::User { 0 } else { 1 });
    for (t, fd, p) in &joins {
        setns_fd(fd, *t, p)?;
    }
    if l.new_user_ns() {
        // SAFETY: unshare with a flag constant.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(last_os("creating a user namespace"));
        }
        ch.send(&Msg::UsernsReady)?;
        expect_go(ch)?;
        // SAFETY: plain syscalls.
        unsafe {
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(last_os("becoming root in the user namespace"));
            }
        }
    } else if joins.iter().any(|(t, _, _)| *t == LinuxNamespaceType::User) {
        // A joined user namespace (a pod's) does not map the host ids we
        // still hold: files we made would fail with EOVERFLOW. Become its root.
        // SAFETY: plain syscalls.
        unsafe {
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(last_os("becoming root in the joined user namespace"));
            }
        }
    }
    let mut flags = 0;
    for (t, p) in &l.namespaces {
        if p.is_none() && *t != LinuxNamespaceType::User {
            flags |= ns_flag(*t);
        }
    }
    if flags != 0 {
        // SAFETY: unshare with flag constants.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(last_os(format!("unshare({flags:#x})")));
        }
    }
    if flags & 0x80 != 0 {
        // Becoming root of a new user namespace made this process
        // non-dumpable, which leaves its /proc files owned by host root:
        // be dumpable just for the write (runc's nsexec does the same).
        // SAFETY: prctl with constant arguments.
        let was = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
        let r = write_time_offsets(l.spec);
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, was.max(0) as libc::c_ulong) };
        r?;
    }
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_os("fork"));
    }
    if pid == 0 {
        stage2(l, ch);
    }
    ch.send(&Msg::Stage2Pid(pid))?;
    Ok(())
}

fn write_time_offsets(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let mut s = String::new();
    for (clock, off) in linux.time_offsets().iter().flatten() {
        s.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    if !s.is_empty() {
        // write_proc refuses symlinks, /proc/self included: name our pid
        // (stage 1 is still in the pid namespace /proc was mounted for).
        let rel = format!("{}/timens_offsets", std::process::id());
        fsutil::write_proc(&rel, &s)
            .map_err(|e| Error::Other(format!("linux.timeOffsets: {e}")))?;
    }
    Ok(())
}

fn stage2(l: &Launch, ch: &Channel) -> ! {
    match stage2_inner(l, ch) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = ch.send(&Msg::Error(e.to_string()));
            unreachable_exit(1)
        }
    }
}

enum Never {}

fn stage2_inner(l: &Launch, ch: &Channel) -> Result<Never> {
    expect_go(ch)?;
    let terminal = l.process.terminal() == Some(true);
    // SAFETY: plain syscall. Every process, init or exec'd, leads a new
    // session and process group of its own, as runc's nsexec makes it:
    // detached from the caller's tty and job control.
    if unsafe { libc::setsid() } < 0 {
        return Err(last_os("setsid"));
    }
    if let Role::Create {
        rootfs,
        fifo,
        no_pivot,
    } = l.role
    {
        let hook_state = build_container(l, ch, rootfs, no_pivot)?;
        let prog = prepare_process(l, ch)?;
        ch.send(&Msg::Ready)?;
        wait_fifo(fifo)?;
        // The fifo stays open (O_CLOEXEC) until execve: `start` waits for
        // its last reader to go, so poststart hooks follow the exec.
        if let Some(h) = l
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
        {
            // Nobody reads the channel after the fifo: the error goes to the
            // container's stderr, as runc's does.
            // The runtime's state said "creating" to createContainer hooks;
            // by now `start` was called on a created container (runc's too).
            let st = with_status(&hook_state, "created");
            crate::hooks::run_all("startContainer", &h, &st).inspect_err(|e| {
                eprintln!("berth: {e}");
            })?;
        }
        load_seccomp_late(l)?;
        exec(l.process, &prog)
    } else {
        if terminal {
            setup_console(l)?;
        }
        let prog = prepare_process(l, ch)?;
        load_seccomp_late(l)?;
        exec(l.process, &prog)
    }
}

/// The hook state JSON `state` with its status replaced.
fn with_status(state: &str, status: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(state) {
        Ok(mut v) => {
            v["status"] = status.into();
            v.to_string()
        }
        Err(_) => state.to_string(),
    }
}

fn nnp(l: &Launch) -> bool {
    l.process.no_new_privileges() == Some(true)
}

/// With no_new_privs the filter goes on last, right before execve, so it
/// constrains only the container's program. Without it, loading needs
/// CAP_SYS_ADMIN, so it happens in [`prepare_process`] before privileges drop.
/// A notifying filter must reach its agent before the init reports Ready, so
/// it is loaded at the end of [`prepare_process`] instead.
fn load_seccomp_late(l: &Launch) -> Result<()> {
    match l.seccomp {
        Some(s) if nnp(l) && s.listener.is_none() => crate::seccomp::load(s).map(|_| ()),
        _ => Ok(()),
    }
}

/// Builds the container's filesystem and kernel settings; returns the state
/// JSON the parent gave for the container-side hooks.
fn build_container(l: &Launch, ch: &Channel, rootfs_path: &Path, no_pivot: bool) -> Result<String> {
    let spec = l.spec;
    let has_mnt = l.has(LinuxNamespaceType::Mount);
    let root = if has_mnt {
        Some(
            Rootfs {
                spec,
                rootfs: rootfs_path,
                in_userns: l.in_user_ns(),
                cgroup_ns: l.has(LinuxNamespaceType::Cgroup),
                cgroup_rel: l.cgroup.map(|c| c.relative_path().to_path_buf()),
                idmapped: &l.idmapped,
            }
            .prepare()?,
        )
    } else {
        None
    };
    crate::debug::trace("rootfs prepared");
    ch.send(&Msg::CreateRuntimeHooks)?;
    let state = match ch.recv()? {
        Some(Msg::HookState(s)) => s,
        Some(m) => return Err(Error::Other(format!("sync: unexpected {m:?}"))),
        None => return Err(Error::Other("sync: the runtime went away".into())),
    };
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
    {
        crate::hooks::run_all("createContainer", &h, &state)?;
    }
    match &root {
        Some(fd) => rootfs::enter_root(fd, no_pivot)?,
        None => {
            let c = fsutil::cstr(rootfs_path)?;
            // SAFETY: valid C strings.
            unsafe {
                if libc::chdir(c.as_ptr()) != 0
                    || libc::chroot(c".".as_ptr()) != 0
                    || libc::chdir(c"/".as_ptr()) != 0
                {
                    return Err(last_os("chroot into the rootfs"));
                }
            }
        }
    }
    // runc creates a missing process.cwd (0755, as root, before the root
    // may turn read-only); resolved inside the root like every mount target.
    let root_fd = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    fsutil::resolve_create(&root_fd, l.process.cwd(), fsutil::Kind::Dir, 0)
        .map_err(|e| Error::Other(format!("process.cwd {}: {e}", l.process.cwd().display())))?;
    drop(root_fd);
    let linux = spec.linux().clone().unwrap_or_default();
    for (k, v) in linux.sysctl().iter().flatten() {
        let rel = format!("sys/{}", k.replace('.', "/"));
        fsutil::write_proc(&rel, v).map_err(|e| Error::Other(format!("linux.sysctl.{k}: {e}")))?;
    }
    if let Some(h) = spec.hostname() {
        // SAFETY: h is a valid buffer.
        if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
            return Err(last_os("sethostname"));
        }
    }
    if let Some(d) = spec.domainname() {
        // SAFETY: d is a valid buffer.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(last_os("setdomainname"));
        }
    }
    if has_mnt {
        rootfs::root_propagation(spec)?;
        for p in linux.readonly_paths().iter().flatten() {
            rootfs::readonly_path(p)
                .map_err(|e| Error::Other(format!("linux.readonlyPaths {p}: {e}")))?;
        }
        for p in linux.masked_paths().iter().flatten() {
            rootfs::mask_path(p)
                .map_err(|e| Error::Other(format!("linux.maskedPaths {p}: {e}")))?;
        }
    }
    if l.process.terminal() == Some(true) {
        let slave = setup_console(l)?;
        if has_mnt {
            rootfs::bind_console(&slave)?;
        }
    }
    if has_mnt && spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        rootfs::readonly_root()?;
    }
    if has_mnt {
        rootfs::root_unbindable(spec)?;
    }
    Ok(state)
}

/// Creates the pty, hands the master to the caller, makes the slave our
/// stdio. Returns the slave's path.
fn setup_console(l: &Launch) -> Result<String> {
    let sock = l.console.ok_or_else(|| {
        Error::Other("process.terminal is true but no console socket was given".into())
    })?;
    let (master, slave, path) = crate::console::open_pty()?;
    if let Some(sz) = l.process.console_size() {
        crate::console::set_size(&master, sz.height() as u16, sz.width() as u16);
    }
    crate::console::send_fd(sock, &path, master.as_raw_fd())?;
    drop(master);
    crate::console::become_stdio(&slave)?;
    Ok(path)
}

/// Blocks until `berth start` writes to the exec fifo.
fn wait_fifo(fd: RawFd) -> Result<()> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: b is a valid 1-byte buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return Ok(());
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(last_os("waiting on the exec fifo"));
    }
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn mask_of(set: &Option<oci_spec::runtime::Capabilities>) -> Mask {
    match set {
        Some(s) => {
            let names: Vec<String> = s.iter().map(|c| c.to_string()).collect();
            Mask::from_names(names.iter().map(|n| n.as_str()))
        }
        None => Mask(0),
    }
}

/// What execve gets: the resolved program and the environment.
struct Program {
    path: CString,
    env: Vec<CString>,
}

/// Everything about the process short of execve: rlimits, personality, cwd,
/// user and groups, capabilities, no_new_privs, fds. Returns the resolved
/// executable path and the environment.
fn prepare_process(l: &Launch, ch: &Channel) -> Result<Program> {
    let p = l.process;
    for r in p.rlimits().iter().flatten() {
        let name = r.typ().to_string();
        let res =
            rlimit_resource(&name).ok_or_else(|| Error::Other(format!("unknown rlimit {name}")))?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: lim is valid.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(last_os(format!("setrlimit {name}")));
        }
    }
    if let Some(mp) = l
        .spec
        .linux()
        .as_ref()
        .and_then(|x| x.memory_policy().as_ref())
    {
        // Validated with the config; set here so only the container's
        // program (and what it forks) allocates under it.
        crate::mempolicy::apply(&crate::mempolicy::compile("config.json", mp)?)?;
    }
    if let Some(pers) = l
        .spec
        .linux()
        .as_ref()
        .and_then(|x| x.personality().clone())
    {
        let dom = match pers.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0x0000,
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
        };
        // SAFETY: plain syscall.
        if unsafe { libc::personality(dom) } < 0 {
            return Err(last_os("personality"));
        }
    }
    if p.apparmor_profile().as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(Error::Other(
            "process.apparmorProfile: AppArmor is not enabled on this host".into(),
        ));
    }
    // cwd before dropping privileges (the user may not be able to search the
    // path), without following magic links, and verified to be inside the
    // root: a leaked fd via /proc/self/fd/N must not become the cwd.
    chdir_inside_root(p.cwd())?;
    if let Some(s) = l.seccomp {
        if !nnp(l) {
            crate::seccomp::load_and_hand_over(s, ch)?;
        }
    }
    let caps = p.capabilities().clone().unwrap_or_default();
    let sets = caps::Sets {
        bounding: mask_of(caps.bounding()),
        effective: mask_of(caps.effective()),
        permitted: mask_of(caps.permitted()),
        inheritable: mask_of(caps.inheritable()),
        ambient: mask_of(caps.ambient()),
    };
    caps::drop_bounding(sets.bounding)?;
    let u = p.user();
    // Read while still root: /etc/passwd may not be readable by the user.
    let env = crate::home::with_home(p.env().as_deref().unwrap_or(&[]), u.uid())
        .into_iter()
        .map(|e| {
            CString::new(e).map_err(|_| Error::Other("process.env contains a NUL byte".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(last_os("PR_SET_KEEPCAPS"));
        }
        let groups: Vec<libc::gid_t> = u.additional_gids().clone().unwrap_or_default();
        let setgroups_allowed = !l.in_user_ns()
            || std::fs::read_to_string("/proc/self/setgroups")
                .map(|s| s.trim() != "deny")
                .unwrap_or(true);
        if setgroups_allowed && libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(last_os("setgroups (process.user.additionalGids)"));
        }
        if libc::setresgid(u.gid(), u.gid(), u.gid()) != 0 {
            return Err(last_os(format!(
                "setresgid({}) (process.user.gid)",
                u.gid()
            )));
        }
        if libc::setresuid(u.uid(), u.uid(), u.uid()) != 0 {
            return Err(last_os(format!(
                "setresuid({}) (process.user.uid)",
                u.uid()
            )));
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
            return Err(last_os("PR_SET_KEEPCAPS"));
        }
    }
    caps::apply(&sets)?;
    // SAFETY: plain syscalls.
    unsafe {
        libc::umask(u.umask().unwrap_or(0o022));
        if p.no_new_privileges() == Some(true)
            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return Err(last_os("PR_SET_NO_NEW_PRIVS"));
        }
    }
    if let Some(s) = l.seccomp.filter(|s| nnp(l) && s.listener.is_some()) {
        crate::seccomp::load_and_hand_over(s, ch)?;
    }
    crate::debug::trace("process prepared");
    let path = lookup(p)?;
    close_fds_on_exec(3 + l.preserve_fds.max(0))?;
    Ok(Program { path, env })
}

fn chdir_inside_root(cwd: &Path) -> Result<()> {
    let root = fsutil::open_path(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
    let fd = fsutil::openat2(
        root.as_raw_fd(),
        &fsutil::relative(cwd),
        libc::O_PATH | libc::O_DIRECTORY,
        fsutil::RESOLVE_IN_ROOT | fsutil::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| Error::Os {
        ctx: format!("process.cwd {}", cwd.display()),
        err: std::io::Error::from_raw_os_error(e),
    })?;
    // SAFETY: fd is an open directory.
    if unsafe { libc::fchdir(fd.as_raw_fd()) } != 0 {
        return Err(last_os(format!("process.cwd {}", cwd.display())));
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: raw getcwd syscall into buf.
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 || buf[0] != b'/' {
        return Err(Error::Other(format!(
            "process.cwd {}: outside the container's root",
            cwd.display()
        )));
    }
    Ok(())
}

/// Marks every fd from `from` up close-on-exec, so nothing of the runtime
/// or its caller leaks into the container beyond stdio and preserved fds.
fn close_fds_on_exec(from: i32) -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: plain syscall.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as u32,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::Os {
            ctx: "listing /proc/self/fd".into(),
            err: e,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= from {
            // SAFETY: setting a flag on an fd; a stale number just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

fn env_path(p: &Process) -> String {
    p.env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH=").map(|s| s.to_string()))
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

/// Resolves args[0] through the container's PATH, as execvp would, but
/// before the fifo wait so a missing binary fails `create`.
fn lookup(p: &Process) -> Result<CString> {
    let a0 = &p.args().as_ref().expect("validated")[0];
    let candidates: Vec<PathBuf> = if a0.contains('/') {
        vec![PathBuf::from(a0)]
    } else {
        env_path(p)
            .split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(a0))
            .collect()
    };
    let mut last = libc::ENOENT;
    for c in &candidates {
        let cs = fsutil::cstr(c)?;
        // SAFETY: valid C string.
        if unsafe { libc::access(cs.as_ptr(), libc::X_OK) } == 0 {
            if std::fs::metadata(c).map(|m| m.is_file()).unwrap_or(false) {
                return Ok(cs);
            }
            last = libc::EACCES;
        } else {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOENT);
            if e != libc::ENOENT && e != libc::ENOTDIR {
                last = e;
            }
        }
    }
    Err(Error::Os {
        ctx: format!("process.args[0] {a0:?}: executable not found in $PATH"),
        err: std::io::Error::from_raw_os_error(last),
    })
}

fn exec(p: &Process, prog: &Program) -> Result<Never> {
    let path = &prog.path;
    let args: Vec<CString> = p
        .args()
        .iter()
        .flatten()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| Error::Other("process.args contains a NUL byte".into()))
        })
        .collect::<Result<_>>()?;
    let env = &prog.env;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // Signals the runtime blocked for forwarding must not stay blocked.
    // SAFETY: valid sigset and pointer arrays.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Ignored signals survive execve (Rust ignores SIGPIPE): reset them.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    Err(last_os(format!("exec {:?}", path)))
}
