//! The monitor's event loop: one thread, poll(2) over the listening socket,
//! a signalfd for SIGCHLD and the containers' output pipes. It is the
//! subreaper of the pod's containers and exec processes, so their exit
//! statuses come to it and nowhere else.

use crate::logs::{LogWriter, Stream};
use crate::proto::{self, ContainerInfo, ExitInfo, ExternalRuntime, Request, Response};
use berth_oci::state::Root;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Options {
    pub dir: PathBuf,
    pub oci_root: PathBuf,
    pub max_line: usize,
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
}

struct Container {
    pid: i32,
    outputs: Vec<Output>,
    log: Option<LogWriter>,
    /// The write end of the container's stdin, held so stdin stays open
    /// until an attach closes it (stdin_once) or the container is removed.
    stdin: Option<OwnedFd>,
    stdin_once: bool,
    tty: bool,
    /// Attach sessions: where output is copied (stdout, stderr).
    attached: Vec<[OwnedFd; 2]>,
    runtime: Option<ExternalRuntime>,
    /// The container's cgroup (from its spec), for the OOM verdict.
    cgroup: Option<PathBuf>,
    started: bool,
    exit: Option<ExitInfo>,
    /// The exit is known but its record is not on disk yet (no space):
    /// retried until it lands, answered from memory meanwhile.
    exit_unsaved: bool,
    waiters: Vec<OwnedFd>,
}

/// How a container's stdio is set up.
struct IoOpts {
    tty: bool,
    stdin: bool,
    stdin_once: bool,
}

struct ExecProcess {
    exit: Option<ExitInfo>,
    waiters: Vec<OwnedFd>,
    since: Instant,
}

/// Exec exits nobody asked for are dropped after this long.
const EXEC_RETENTION: Duration = Duration::from_secs(600);

pub struct Monitor {
    opts: Options,
    root: Root,
    listener: OwnedFd,
    sigchld: OwnedFd,
    containers: BTreeMap<String, Container>,
    execs: HashMap<i32, ExecProcess>,
    shutdown: bool,
    /// When unsaved exit records were last retried.
    last_retry: Instant,
}

fn cvt(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    cvt(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    // SAFETY: pipe2 returned two new fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblock(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// Binds the monitor's socket (before the monitor detaches, so that whoever
/// started it can connect as soon as it returns).
pub fn bind(dir: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let path = proto::socket_path(dir);
    let _ = fs::remove_file(&path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let (addr, _dir) = proto::socket_addr(&path)?;
    bind(fd.as_raw_fd(), &addr)?;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Writes `data` to `path` so that a crash leaves either the old file or the
/// whole new one.
fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        // No empty or partial file left for a reader to trip on.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(d) = path.parent() {
        File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Records a container's exit; false if it could not be written (it is
/// kept in memory and retried).
fn save_exit(dir: &Path, id: &str, exit: &ExitInfo) -> bool {
    let data = serde_json::to_vec(exit).unwrap_or_default();
    match write_durable(&proto::exit_path(dir, id), &data) {
        Ok(()) => true,
        Err(e) => {
            crate::note!(
                "berth-monitor: recording the exit of {id} (kept in memory, retried): {e}"
            );
            false
        }
    }
}

fn reply(conn: &OwnedFd, resp: &Response, fds: &[RawFd]) {
    let buf = serde_json::to_vec(resp).unwrap_or_default();
    let _ = proto::send(conn.as_raw_fd(), &buf, fds);
}

impl Monitor {
    pub fn new(opts: Options, listener: OwnedFd) -> io::Result<Monitor> {
        fs::create_dir_all(opts.dir.join("exits"))?;
        // SAFETY: plain signal-mask and signalfd calls on valid sets.
        let sigchld = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = cvt(
                libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK),
                "signalfd",
            )?;
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: prctl with integer arguments.
        cvt(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            "PR_SET_CHILD_SUBREAPER",
        )?;
        let root = Root::new(&opts.oci_root);
        Ok(Monitor {
            opts,
            root,
            listener,
            sigchld,
            containers: BTreeMap::new(),
            execs: HashMap::new(),
            shutdown: false,
            last_retry: Instant::now(),
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.shutdown {
            let mut pfds = vec![
                libc::pollfd {
                    fd: self.sigchld.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let mut owners = Vec::new();
            for (id, c) in &self.containers {
                for (i, o) in c.outputs.iter().enumerate() {
                    pfds.push(libc::pollfd {
                        fd: o.fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    owners.push((id.clone(), i));
                }
            }
            // SAFETY: pfds is a valid array of pollfds.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 1000) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Output first: a container's last words reach its log before
            // its exit is recorded.
            let mut closed = Vec::new();
            for (k, (id, i)) in owners.iter().enumerate() {
                if pfds[k + 2].revents != 0 {
                    let c = self.containers.get_mut(id).expect("owner exists");
                    if !drain(c, *i, &mut buf) {
                        closed.push((id.clone(), *i));
                    }
                }
            }
            for (id, i) in closed.into_iter().rev() {
                if let Some(c) = self.containers.get_mut(&id) {
                    c.outputs.remove(i);
                    if c.outputs.is_empty() {
                        c.attached.clear();
                        if let Some(l) = c.log.as_mut() {
                            let _ = l.flush_partial();
                        }
                    }
                }
            }
            if pfds[0].revents != 0 {
                // SAFETY: reading signalfd_siginfo records into a buffer.
                unsafe {
                    let mut si = [0u8; 128 * 8];
                    while libc::read(self.sigchld.as_raw_fd(), si.as_mut_ptr().cast(), si.len()) > 0
                    {
                    }
                }
            }
            self.reap(&mut buf);
            self.retry_unsaved_exits();
            if pfds[1].revents != 0 {
                self.accept_all();
            }
            let now = Instant::now();
            self.execs
                .retain(|_, e| e.exit.is_none() || now.duration_since(e.since) < EXEC_RETENTION);
        }
        let _ = fs::remove_file(proto::socket_path(&self.opts.dir));
        Ok(())
    }

    /// Writes the exit records a full disk refused, at most every half
    /// second (poll wakes at least every second).
    fn retry_unsaved_exits(&mut self) {
        if self.last_retry.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_retry = Instant::now();
        for (id, c) in self.containers.iter_mut().filter(|(_, c)| c.exit_unsaved) {
            if let Some(x) = &c.exit {
                if write_durable(
                    &proto::exit_path(&self.opts.dir, id),
                    &serde_json::to_vec(x).unwrap_or_default(),
                )
                .is_ok()
                {
                    crate::note!("berth-monitor: the exit of {id} is recorded now");
                    c.exit_unsaved = false;
                }
            }
        }
    }

    fn reap(&mut self, buf: &mut [u8]) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let (code, signal) = if libc::WIFSIGNALED(status) {
                (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
            } else {
                (libc::WEXITSTATUS(status), None)
            };
            let finished_at = proto::now_ns();
            if let Some((id, c)) = self
                .containers
                .iter_mut()
                .find(|(_, c)| c.pid == pid && c.exit.is_none())
            {
                // What is still in the pipes belongs to the log first.
                for i in (0..c.outputs.len()).rev() {
                    set_nonblock(c.outputs[i].fd.as_raw_fd());
                    if !drain(c, i, buf) {
                        c.outputs.remove(i);
                    }
                }
                if let Some(l) = c.log.as_mut() {
                    let _ = l.flush_partial();
                }
                // Attachers see the end of the output.
                c.attached.clear();
                let oom_killed = c
                    .cgroup
                    .as_ref()
                    .and_then(|p| berth_oci::container::cgroup_manager(p).stats().ok())
                    .is_some_and(|s| s.memory.oom_kill_count > 0);
                let exit = ExitInfo {
                    code,
                    signal,
                    finished_at,
                    oom_killed,
                };
                c.exit_unsaved = !save_exit(&self.opts.dir, id, &exit);
                for w in c.waiters.drain(..) {
                    reply(&w, &Response::Exited(exit.clone()), &[]);
                }
                c.exit = Some(exit);
            } else if let Some(e) = self.execs.get_mut(&pid) {
                let exit = ExitInfo {
                    code,
                    signal,
                    finished_at,
                    oom_killed: false,
                };
                for w in e.waiters.drain(..) {
                    reply(&w, &Response::Exited(exit.clone()), &[]);
                }
                e.exit = Some(exit);
                e.since = Instant::now();
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: accept4 with null address pointers.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a new fd we own.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            // A client that connects and says nothing must not stall the pod.
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: setsockopt with a valid timeval.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as _,
                )
            };
            let req = match proto::recv(fd) {
                Ok((b, _)) if b.is_empty() => continue,
                Ok((b, _)) => serde_json::from_slice::<Request>(&b),
                Err(e) => {
                    reply(&conn, &Response::Error { msg: e.to_string() }, &[]);
                    continue;
                }
            };
            match req {
                Ok(r) => self.handle(r, conn),
                Err(e) => reply(
                    &conn,
                    &Response::Error {
                        msg: format!("bad request: {e}"),
                    },
                    &[],
                ),
            }
        }
    }

    fn handle(&mut self, req: Request, conn: OwnedFd) {
        let r = match req {
            Request::Create {
                id,
                bundle,
                log_path,
                tty,
                stdin,
                stdin_once,
                runtime,
            } => self
                .create(
                    &id,
                    bundle,
                    log_path.as_deref(),
                    IoOpts {
                        tty,
                        stdin,
                        stdin_once,
                    },
                    runtime.as_ref(),
                )
                .map(|pid| Response::Created { pid }),
            Request::Start { id } => self.start(&id).map(|()| Response::Ok),
            Request::Exec {
                id,
                process,
                stdin,
                runtime,
            } => {
                return match self.exec(&id, process, stdin, runtime.as_ref()) {
                    Ok((pid, fds)) => {
                        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                        reply(&conn, &Response::ExecStarted { pid }, &raw);
                    }
                    Err(e) => reply(&conn, &Response::Error { msg: e.to_string() }, &[]),
                };
            }
            Request::WaitExec { pid } => match self.execs.get_mut(&pid) {
                Some(e) => match &e.exit {
                    Some(x) => Ok(Response::Exited(x.clone())),
                    None => {
                        e.waiters.push(conn);
                        return;
                    }
                },
                None => Err(io::Error::other(format!("no exec process {pid}"))),
            },
            Request::Wait { id } => match self.containers.get_mut(&id) {
                Some(c) => match &c.exit {
                    Some(x) => Ok(Response::Exited(x.clone())),
                    None => {
                        c.waiters.push(conn);
                        return;
                    }
                },
                None => match proto::read_exit(&self.opts.dir, &id) {
                    Some(x) => Ok(Response::Exited(x)),
                    None => Err(io::Error::other(format!("no container {id}"))),
                },
            },
            Request::Attach { id } => {
                return match self.attach(&id) {
                    Ok((resp, fds)) => {
                        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                        reply(&conn, &resp, &raw);
                    }
                    Err(e) => reply(&conn, &Response::Error { msg: e.to_string() }, &[]),
                };
            }
            Request::Status => Ok(Response::Containers {
                containers: self
                    .containers
                    .iter()
                    .map(|(id, c)| ContainerInfo {
                        id: id.clone(),
                        pid: c.pid,
                        started: c.started,
                        exit: c.exit.clone(),
                    })
                    .collect(),
            }),
            Request::ReopenLog { id } => match self.containers.get_mut(&id) {
                Some(Container { log: Some(l), .. }) => l.reopen().map(|()| Response::Ok),
                Some(_) => Err(io::Error::other(format!("container {id} has no log"))),
                None => Err(io::Error::other(format!("no container {id}"))),
            },
            Request::Forget { id } => match self.containers.get(&id) {
                Some(c) if c.exit.is_none() && c.started => {
                    Err(io::Error::other(format!("container {id} is still running")))
                }
                _ => {
                    self.containers.remove(&id);
                    let _ = fs::remove_file(proto::exit_path(&self.opts.dir, &id));
                    Ok(Response::Ok)
                }
            },
            Request::Shutdown => {
                if let Some((id, _)) = self
                    .containers
                    .iter()
                    .find(|(_, c)| c.exit.is_none() && c.started)
                {
                    Err(io::Error::other(format!("container {id} is still running")))
                } else {
                    self.shutdown = true;
                    Ok(Response::Ok)
                }
            }
        };
        match r {
            Ok(resp) => reply(&conn, &resp, &[]),
            Err(e) => reply(&conn, &Response::Error { msg: e.to_string() }, &[]),
        }
    }

    fn create(
        &mut self,
        id: &str,
        bundle: PathBuf,
        log_path: Option<&Path>,
        io_opts: IoOpts,
        runtime: Option<&ExternalRuntime>,
    ) -> io::Result<i32> {
        let IoOpts {
            tty,
            stdin,
            stdin_once,
        } = io_opts;
        if self.containers.contains_key(id) {
            return Err(io::Error::other(format!("container {id} exists")));
        }
        let log = match log_path {
            Some(p) => Some(LogWriter::open(p, self.opts.max_line)?),
            None => None,
        };
        let null = dev_null()?;
        let mut outputs = Vec::new();
        let mut keep_stdin = None;
        let (stdio, console_fd, console_peer);
        // The child's ends live in `child` until create returns.
        let mut child: Vec<OwnedFd> = Vec::new();
        if tty {
            let (a, b) = std::os::unix::net::UnixStream::pair()?;
            console_fd = Some(OwnedFd::from(a));
            console_peer = Some(b);
            stdio = None;
        } else {
            let in_fd = if stdin {
                let (r, w) = pipe()?;
                keep_stdin = Some(w);
                let raw = r.as_raw_fd();
                child.push(r);
                raw
            } else {
                null.as_raw_fd()
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            stdio = Some([in_fd, out_w.as_raw_fd(), err_w.as_raw_fd()]);
            child.push(out_w);
            child.push(err_w);
            set_nonblock(out_r.as_raw_fd());
            set_nonblock(err_r.as_raw_fd());
            outputs.push(Output {
                fd: out_r,
                stream: Stream::Stdout,
            });
            outputs.push(Output {
                fd: err_r,
                stream: Stream::Stderr,
            });
            console_fd = None;
            console_peer = None;
        }
        let cgroup = fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(PathBuf::from));
        let (pid, console_peer) = match runtime {
            None => {
                let pid = berth_oci::container::create(
                    &self.root,
                    berth_oci::container::CreateOptions {
                        id: id.to_string(),
                        bundle,
                        pid_file: None,
                        console_socket: None,
                        console_fd,
                        no_pivot: false,
                        no_new_keyring: false,
                        preserve_fds: 0,
                        stdio,
                    },
                )
                .map_err(|e| io::Error::other(e.to_string()))?;
                (pid, console_peer)
            }
            Some(rt) => {
                let mut cmd = rt.command();
                cmd.arg("create").arg("--bundle").arg(&bundle);
                external(rt, cmd, id, stdio, tty, &self.opts.dir)?
            }
        };
        drop(child);
        if let Some(peer) = console_peer {
            let master = berth_oci::console::recv_fd(peer.as_raw_fd())
                .map_err(|e| io::Error::other(format!("console: {e}")))?;
            set_nonblock(master.as_raw_fd());
            if stdin {
                // SAFETY: dup of an fd we own; the copy is ours.
                let w = cvt(
                    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) },
                    "dup",
                )?;
                // SAFETY: fcntl returned a new fd.
                keep_stdin = Some(unsafe { OwnedFd::from_raw_fd(w) });
            }
            outputs.push(Output {
                fd: master,
                stream: Stream::Stdout,
            });
        }
        self.containers.insert(
            id.to_string(),
            Container {
                pid,
                outputs,
                log,
                stdin: keep_stdin,
                stdin_once,
                tty,
                attached: Vec::new(),
                runtime: runtime.cloned(),
                cgroup,
                started: false,
                exit: None,
                exit_unsaved: false,
                waiters: Vec::new(),
            },
        );
        Ok(pid)
    }

    fn attach(&mut self, id: &str) -> io::Result<(Response, Vec<OwnedFd>)> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| io::Error::other(format!("no container {id}")))?;
        if c.exit.is_some() {
            return Err(io::Error::other(format!("container {id} is not running")));
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        // The attacher being slow must never block the container or its log.
        set_nonblock(out_w.as_raw_fd());
        set_nonblock(err_w.as_raw_fd());
        c.attached.push([out_w, err_w]);
        let mut fds = vec![out_r];
        if !c.tty {
            fds.push(err_r);
        }
        let stdin = if c.stdin_once {
            c.stdin.take()
        } else {
            match &c.stdin {
                Some(f) => Some(f.try_clone()?),
                None => None,
            }
        };
        let has_stdin = stdin.is_some();
        fds.extend(stdin);
        Ok((
            Response::Attached {
                tty: c.tty,
                stdin: has_stdin,
            },
            fds,
        ))
    }

    fn start(&mut self, id: &str) -> io::Result<()> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| io::Error::other(format!("no container {id}")))?;
        match &c.runtime {
            None => berth_oci::container::start(&self.root, id)
                .map_err(|e| io::Error::other(e.to_string()))?,
            Some(rt) => {
                let o = rt.command().arg("start").arg(id).output()?;
                if !o.status.success() {
                    return Err(io::Error::other(format!(
                        "{} start: {}",
                        rt.path.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    )));
                }
            }
        }
        c.started = true;
        Ok(())
    }

    fn exec(
        &mut self,
        id: &str,
        process: serde_json::Value,
        stdin: bool,
        runtime: Option<&ExternalRuntime>,
    ) -> io::Result<(i32, Vec<OwnedFd>)> {
        let process: oci_spec::runtime::Process = serde_json::from_value(process)
            .map_err(|e| io::Error::other(format!("process: {e}")))?;
        let tty = process.terminal() == Some(true);
        let null = dev_null()?;
        let mut ours = Vec::new();
        let mut child = Vec::new();
        let (stdio, console_fd, console_peer) = if tty {
            let (a, b) = std::os::unix::net::UnixStream::pair()?;
            (None, Some(OwnedFd::from(a)), Some(b))
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let in_fd = if stdin {
                let (r, w) = pipe()?;
                let raw = r.as_raw_fd();
                child.push(r);
                ours.push(out_r);
                ours.push(err_r);
                ours.push(w);
                raw
            } else {
                ours.push(out_r);
                ours.push(err_r);
                null.as_raw_fd()
            };
            let s = [in_fd, out_w.as_raw_fd(), err_w.as_raw_fd()];
            child.push(out_w);
            child.push(err_w);
            (Some(s), None, None)
        };
        let (pid, console_peer) = match runtime {
            None => {
                let pid = berth_oci::exec::exec(
                    &self.root,
                    berth_oci::exec::ExecOptions {
                        id: id.to_string(),
                        process,
                        console_socket: None,
                        console_fd,
                        pid_file: None,
                        preserve_fds: 0,
                        stdio,
                    },
                )
                .map_err(|e| io::Error::other(e.to_string()))?;
                (pid, console_peer)
            }
            Some(rt) => {
                let pf = self
                    .opts
                    .dir
                    .join(format!("exec-{}.json", std::process::id()));
                fs::write(&pf, serde_json::to_vec(&process).map_err(io::Error::other)?)?;
                let mut cmd = rt.command();
                cmd.arg("exec").arg("--detach").arg("--process").arg(&pf);
                let r = external(rt, cmd, id, stdio, tty, &self.opts.dir);
                let _ = fs::remove_file(&pf);
                r?
            }
        };
        drop(child);
        if let Some(peer) = console_peer {
            let master = berth_oci::console::recv_fd(peer.as_raw_fd())
                .map_err(|e| io::Error::other(format!("console: {e}")))?;
            ours.push(master);
        }
        self.execs.insert(
            pid,
            ExecProcess {
                exit: None,
                waiters: Vec::new(),
                since: Instant::now(),
            },
        );
        Ok((pid, ours))
    }
}

/// Runs a runc-compatible `create` or `exec --detach` for `id` with the
/// given stdio (or a console socket for a terminal); returns the pid it
/// wrote and the console master's socket. The process it starts is
/// reparented to the monitor (the subreaper) when the runtime exits.
fn external(
    _rt: &ExternalRuntime,
    mut cmd: std::process::Command,
    id: &str,
    stdio: Option<[RawFd; 3]>,
    tty: bool,
    dir: &Path,
) -> io::Result<(i32, Option<std::os::unix::net::UnixStream>)> {
    use std::process::Stdio;
    let pid_file = dir.join(format!("{id}.{}.pid", std::process::id()));
    let _ = fs::remove_file(&pid_file);
    cmd.arg("--pid-file").arg(&pid_file);
    // The console socket path must fit sun_path for the runtime: a short one.
    let console = if tty {
        let p = std::env::temp_dir().join(format!(
            "berth-con-{}-{}.sock",
            std::process::id(),
            proto::now_ns()
        ));
        let l = std::os::unix::net::UnixListener::bind(&p)?;
        cmd.arg("--console-socket").arg(&p);
        Some((p, l))
    } else {
        None
    };
    cmd.arg(id);
    let dup = |fd: RawFd| -> io::Result<Stdio> {
        // SAFETY: dup of a valid fd; the copy is handed to the child.
        let d = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }, "dup")?;
        // SAFETY: fcntl returned a new fd.
        Ok(Stdio::from(unsafe { OwnedFd::from_raw_fd(d) }))
    };
    match stdio {
        Some([i, o, e]) => {
            cmd.stdin(dup(i)?).stdout(dup(o)?);
            cmd.stderr(dup(e)?);
        }
        None => {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
    }
    // Errors come back on stderr only when the container does not own it.
    let errfile = dir.join(format!("{id}.{}.err", std::process::id()));
    if stdio.is_none() {
        cmd.stderr(File::create(&errfile)?);
    }
    let mut child = cmd.spawn()?;
    let mut master = None;
    if let Some((p, l)) = &console {
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    master = Some(s);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if child.try_wait()?.is_some() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
        let _ = fs::remove_file(p);
    }
    let st = child.wait()?;
    let err = fs::read_to_string(&errfile).unwrap_or_default();
    let _ = fs::remove_file(&errfile);
    if !st.success() {
        return Err(io::Error::other(format!(
            "{}: {st}: {}",
            _rt.path.display(),
            err.trim()
        )));
    }
    let pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| io::Error::other("the runtime wrote no pid file"))?;
    let _ = fs::remove_file(&pid_file);
    Ok((pid, master))
}

/// Reads what output is there; false at end of stream.
fn drain(c: &mut Container, i: usize, buf: &mut [u8]) -> bool {
    let o = &c.outputs[i];
    // Bounded so one chatty container cannot starve the others.
    for _ in 0..64 {
        // SAFETY: reading into a valid buffer from an fd we own.
        let n = unsafe { libc::read(o.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let data = &buf[..n as usize];
            if let Some(l) = c.log.as_mut() {
                // A failed write drops this output, never the monitor.
                if let Err(e) = l.write(o.stream, data) {
                    crate::note!("berth-monitor: log: {e}");
                }
            }
            let slot = if o.stream == Stream::Stderr { 1 } else { 0 };
            // Best effort: what a full attach pipe cannot take is dropped
            // for that attacher (the log has it); a closed one is removed.
            c.attached.retain(|a| {
                // SAFETY: writing a valid buffer to an fd we own.
                let w =
                    unsafe { libc::write(a[slot].as_raw_fd(), data.as_ptr().cast(), data.len()) };
                w >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EPIPE)
            });
            continue;
        }
        if n == 0 {
            return false;
        }
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => true,
            Some(libc::EINTR) => continue,
            // A pty whose other side has closed reads EIO.
            _ => false,
        };
    }
    true
}
