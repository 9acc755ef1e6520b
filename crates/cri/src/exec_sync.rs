//! ExecSync: a process in the container, its output collected up to one cap
//! shared by stdout and stderr, and on timeout everything the exec started
//! killed.

use crate::daemon::Daemon;
use crate::error::{internal, invalid, CriError, Result};
use crate::model::CtrState;
use berth_monitor::proto::{Client, Request, Response};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The kubelet's CRI client refuses messages above 16 MiB (`maxMsgSize` in
/// remote_runtime.go), so a response must fit that whole.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Room in `MAX_RESPONSE` for the protobuf framing (two tags and length
/// varints, the exit code).
const FRAMING: usize = 1024;

/// Put in the exec's environment: descendants inherit it even after their
/// parent exited or they left its session, so a timeout finds them.
pub const EXEC_MARKER: &str = "BERTH_EXEC_ID";

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The command ran past its timeout and was killed (gRPC DEADLINE_EXCEEDED,
/// what the kubelet's prober counts as a probe timeout).
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many output bytes an ExecSync response may carry, stdout and stderr
/// together: the configured cap, never more than fits the kubelet's limit.
pub fn output_cap(configured: usize) -> usize {
    configured.min(MAX_RESPONSE - FRAMING)
}

/// Reads stdout and stderr on one thread, keeping at most `cap` bytes of
/// both together; the rest is read and dropped so the process never
/// blocks on a full pipe (containerd's cappedWriter does the same).
struct Collector {
    /// Dropping it wakes the thread (POLLHUP), which then returns.
    stop: Option<OwnedFd>,
    thread: std::thread::JoinHandle<[Vec<u8>; 2]>,
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into p.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn collect(out: OwnedFd, err: OwnedFd, cap: usize) -> io::Result<Collector> {
    let (stop_r, stop_w) = cloexec_pipe()?;
    let thread = std::thread::Builder::new()
        .name("exec-sync-io".into())
        .spawn(move || {
            let mut src = [Some(out), Some(err)];
            let mut bufs = [Vec::new(), Vec::new()];
            let mut room = cap;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let open: Vec<usize> = (0..2).filter(|i| src[*i].is_some()).collect();
                if open.is_empty() {
                    break;
                }
                let mut pfds: Vec<libc::pollfd> = open
                    .iter()
                    .map(|i| libc::pollfd {
                        fd: src[*i].as_ref().map_or(-1, |f| f.as_raw_fd()),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                pfds.push(libc::pollfd {
                    fd: stop_r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: pfds is a valid array of pollfd.
                let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, -1) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                if pfds[open.len()].revents != 0 {
                    break;
                }
                for (k, i) in open.iter().enumerate() {
                    if pfds[k].revents == 0 {
                        continue;
                    }
                    let fd = src[*i].as_ref().map_or(-1, |f| f.as_raw_fd());
                    // SAFETY: reading into a buffer of chunk.len() bytes.
                    let r = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
                    if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if r <= 0 {
                        src[*i] = None;
                        continue;
                    }
                    let take = (r as usize).min(room);
                    bufs[*i].extend_from_slice(&chunk[..take]);
                    room -= take;
                }
            }
            bufs
        })?;
    Ok(Collector {
        stop: Some(stop_w),
        thread,
    })
}

impl Collector {
    /// The output once both pipes closed; pipes a background process keeps
    /// open are given up on after `grace` (what it writes later is lost).
    /// The thread always ends: no reader is left blocked on such a pipe.
    fn finish(mut self, grace: Duration) -> (Vec<u8>, Vec<u8>) {
        let start = Instant::now();
        while !self.thread.is_finished() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(self.stop.take());
        let [out, err] = self.thread.join().unwrap_or_default();
        (out, err)
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a new fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_signal(fd: &OwnedFd, sig: i32) {
    // SAFETY: a valid pidfd; a null siginfo is allowed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Whether the process behind a pidfd has exited.
fn pidfd_exited(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// (ppid, state) of a process from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The processes of the host: pid → (ppid, state).
fn processes() -> HashMap<i32, (i32, char)> {
    let mut m = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() {
            if let Some(s) = stat(p) {
                m.insert(p, s);
            }
        }
    }
    m
}

fn cgroup_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

fn has_marker(pid: i32, marker: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker))
        .unwrap_or(false)
}

/// What an exec started, wherever it went: the root, every process below
/// it (by parent links) and every process of the container's cgroup that
/// carries the exec's marker (daemons whose parent exited were reparented
/// to the container's init and left the tree; setsid does not drop the
/// marker). Only a process that both left the tree and cleared its
/// environment escapes.
pub struct ExecTree {
    pub root: i32,
    /// `EXEC_MARKER=<random>`, as it appears in /proc/PID/environ.
    pub marker: Vec<u8>,
    /// The exec's /proc/PID/cgroup (the container's); None: not known, the
    /// marker is looked for in every process.
    pub cgroup: Option<String>,
}

impl ExecTree {
    fn members(&self, procs: &HashMap<i32, (i32, char)>, known: &HashSet<i32>) -> HashSet<i32> {
        let mut m: HashSet<i32> = known.iter().copied().collect();
        m.insert(self.root);
        for p in procs.keys() {
            if m.contains(p) {
                continue;
            }
            let in_cgroup = match &self.cgroup {
                Some(c) => cgroup_of(*p).as_deref() == Some(c.as_str()),
                None => true,
            };
            if in_cgroup && has_marker(*p, &self.marker) {
                m.insert(*p);
            }
        }
        // Children of members, to any depth (they may have cleared the
        // marker but are still below a member).
        loop {
            let more: Vec<i32> = procs
                .iter()
                .filter(|(p, (pp, _))| m.contains(pp) && !m.contains(p))
                .map(|(p, _)| *p)
                .collect();
            if more.is_empty() {
                return m;
            }
            m.extend(more);
        }
    }

    /// Stops every member (a stopped process cannot fork or exit, so the
    /// tree holds still), repeating until a walk finds nobody new, then
    /// SIGKILLs them all and waits (bounded) for them to be gone. Signals
    /// go through pidfds opened and re-checked first, never to a pid that
    /// was recycled meanwhile.
    pub fn kill(&self, root_fd: Option<&OwnedFd>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut caught: HashMap<i32, OwnedFd> = HashMap::new();
        if let Some(fd) = root_fd.and_then(|f| f.try_clone().ok()) {
            pidfd_signal(&fd, libc::SIGSTOP);
            caught.insert(self.root, fd);
        }
        loop {
            let procs = processes();
            let known: HashSet<i32> = caught.keys().copied().collect();
            let members = self.members(&procs, &known);
            let mut new = 0;
            for p in &members {
                if caught.contains_key(p) || matches!(procs.get(p), None | Some((_, 'Z' | 'X'))) {
                    continue;
                }
                let Some(fd) = pidfd_open(*p) else { continue };
                // The pid is pinned now: is it still the process we found?
                let still = *p == self.root
                    || stat(*p).is_some_and(|(pp, _)| members.contains(&pp))
                    || has_marker(*p, &self.marker);
                if still {
                    pidfd_signal(&fd, libc::SIGSTOP);
                    caught.insert(*p, fd);
                    new += 1;
                }
            }
            if new == 0 || Instant::now() > deadline {
                break;
            }
        }
        for fd in caught.values() {
            pidfd_signal(fd, libc::SIGKILL);
        }
        while Instant::now() < deadline && !caught.values().all(pidfd_exited) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The CRI's rules for the streams of an Exec or Attach: at least one, and
/// no separate stderr with a tty (the terminal carries both outputs).
pub fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            "stdin",
            "one of stdin, stdout or stderr must be requested",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "must be false with tty (the terminal carries stderr)",
        ));
    }
    Ok(())
}

impl Daemon {
    /// Runs `cmd` in the container. Ok(Err(TimedOut)) when it ran past
    /// `timeout` seconds (0: no limit) and was killed with all it started.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<std::result::Result<ExecOutput, TimedOut>> {
        if cmd.is_empty() {
            return Err(invalid("cmd", "is required"));
        }
        if timeout < 0 {
            return Err(invalid("timeout", "must not be negative"));
        }
        let rec = self.find_container(id)?;
        let rec = self.refresh(&rec)?;
        if rec.state != CtrState::Running {
            return Err(CriError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.find_pod(&rec.pod_id)?;
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(rec.bundle.join("config.json"))
                .map_err(|e| internal(format!("container spec: {e}")))?,
        )
        .map_err(internal)?;
        // The exec inherits the container's user, env, cwd and confinement.
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let marker = format!("{EXEC_MARKER}={}", crate::model::new_id());
        match process["env"].as_array_mut() {
            Some(env) => env.push(serde_json::json!(marker)),
            None => process["env"] = serde_json::json!([marker]),
        }
        let client = Client::new(&pod.dir);
        let (resp, fds) = client
            .call(&Request::Exec {
                id: rec.id.clone(),
                process,
                stdin: false,
                runtime: self.handler(&pod.runtime_handler).external(),
            })
            .map_err(|e| CriError::Internal(format!("exec: {e}")))?;
        let Response::ExecStarted { pid } = resp else {
            return Err(internal(format!("exec: unexpected reply {resp:?}")));
        };
        // Taken now, while the process surely is the exec (it is the
        // monitor's child: its pid stays ours until the monitor reaps it).
        let root_fd = pidfd_open(pid);
        let tree = ExecTree {
            root: pid,
            marker: marker.into_bytes(),
            cgroup: cgroup_of(pid),
        };
        let mut it = fds.into_iter();
        let (Some(out), Some(err)) = (it.next(), it.next()) else {
            tree.kill(root_fd.as_ref());
            return Err(internal("exec: the monitor sent no stdio"));
        };
        let io = match collect(out, err, output_cap(self.cfg.logs.max_exec_output)) {
            Ok(c) => c,
            Err(e) => {
                tree.kill(root_fd.as_ref());
                return Err(internal(format!("exec: output reader: {e}")));
            }
        };
        let wait_for = (timeout > 0).then(|| Duration::from_secs(timeout as u64));
        let waited = client.call_timeout(&Request::WaitExec { pid }, wait_for);
        let exit_code = match waited {
            Ok((Response::Exited(x), _)) => x.code,
            other => {
                tree.kill(root_fd.as_ref());
                // The monitor records the exit; then its pipes are closed.
                let _ =
                    client.call_timeout(&Request::WaitExec { pid }, Some(Duration::from_secs(5)));
                drop(io.finish(Duration::from_millis(500)));
                return match other {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        Ok(Err(TimedOut(format!(
                            "command {cmd:?} timed out after {timeout}s and was killed"
                        ))))
                    }
                    Err(e) => Err(internal(format!("exec: waiting for the process: {e}"))),
                    Ok((r, _)) => Err(internal(format!("exec: unexpected reply {r:?}"))),
                };
            }
        };
        // Output pipes may be held open by a background child of the exec:
        // give them a moment, then stop waiting (their data is dropped).
        let (stdout, stderr) = io.finish(Duration::from_secs(2));
        Ok(Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_kubelets_message_limit() {
        assert_eq!(output_cap(1000), 1000);
        assert!(output_cap(usize::MAX) + FRAMING <= MAX_RESPONSE);
    }
}
