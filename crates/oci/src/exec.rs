//! `berth exec`: a new process in a running container's namespaces and
//! cgroup, with the same two-stage fork as create.

use crate::container::{cgroup_manager, write_atomic};
use crate::error::{Error, Result};
use crate::init::{self, ns_proc_name, Launch, Role};
use crate::state::{self, Root, Status};
use crate::sync::{Channel, Msg};
use oci_spec::runtime::Process;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

pub struct ExecOptions {
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub console_fd: Option<OwnedFd>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
    /// fds that become the process's stdio; None inherits the caller's.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
}

/// Starts the process; returns its pid once it has exec'd.
pub fn exec(root: &Root, o: ExecOptions) -> Result<i32> {
    exec_with(root, o, false)
}

/// [`exec`], and with `ignore_paused` (runc's `--ignore-paused`) into a
/// paused container too: the process joins the frozen cgroup and this call
/// returns once the container is resumed and the program exec'd.
pub fn exec_with(root: &Root, o: ExecOptions, ignore_paused: bool) -> Result<i32> {
    let rec = root.load(&o.id)?;
    let st = state::status_of(root, &rec);
    if st == Status::Paused && !ignore_paused {
        // runc's wording.
        return Err(Error::BadState {
            id: o.id.clone(),
            status: st.to_string(),
            msg: "cannot exec in a paused container (use --ignore-paused to override)".into(),
        });
    }
    if st != Status::Running && st != Status::Created && st != Status::Paused {
        return Err(Error::BadState {
            id: o.id.clone(),
            status: st.to_string(),
            msg: "can only exec in a created or running container".into(),
        });
    }
    crate::config::validate_process("process.json", "process", &o.process)?;
    let terminal = o.process.terminal() == Some(true);
    let console = match (&o.console_fd, &o.console_socket) {
        (Some(_), _) => None,
        (None, Some(p)) if terminal => Some(crate::console::connect(p)?),
        (None, None) if terminal => {
            return Err(Error::Other("a terminal needs --console-socket".into()));
        }
        _ => None,
    };
    let console_raw = o
        .console_fd
        .as_ref()
        .map(|f| f.as_raw_fd())
        .or(console.as_ref().map(|f| f.as_raw_fd()));
    let namespaces = crate::container::spec_namespaces(&rec.spec)
        .into_iter()
        .map(|(t, _)| {
            (
                t,
                Some(PathBuf::from(format!(
                    "/proc/{}/ns/{}",
                    rec.pid,
                    ns_proc_name(t)
                ))),
            )
        })
        .collect();
    let seccomp = crate::container::compile_seccomp_cached(&rec.spec, &root.path)?;
    let mgr = rec.cgroup.as_ref().map(|p| cgroup_manager(p));
    let launch = Launch {
        spec: &rec.spec,
        process: &o.process,
        namespaces,
        role: Role::Exec,
        console: console_raw,
        preserve_fds: o.preserve_fds,
        close_in_child: Vec::new(),
        seccomp: seccomp.as_ref(),
        cgroup: mgr.as_ref(),
        idmapped: Vec::new(),
        stdio: o.stdio,
    };
    let (parent_ch, child_ch) = Channel::pair()?;
    let (pid1, in_cgroup) = crate::container::fork_stage1(launch.cgroup)?;
    if pid1 == 0 {
        drop(parent_ch);
        if in_cgroup {
            init::stage1_in_cgroup(&launch, &child_ch);
        }
        init::stage1(&launch, &child_ch);
    }
    drop(child_ch);
    let mut pid2 = 0;
    // Held so a failed exec can wait for stage 2 to have left the
    // container's cgroup (and not signal a recycled pid).
    let mut pid2_fd: Option<OwnedFd> = None;
    let res = (|| -> Result<()> {
        parent_ch.send(&Msg::Go)?;
        loop {
            match parent_ch.recv()? {
                Some(Msg::Stage2Pid(p)) => {
                    let mut s = 0;
                    // SAFETY: s is a valid out-pointer.
                    unsafe { libc::waitpid(pid1, &mut s, 0) };
                    pid2 = p;
                    pid2_fd = pidfd_open(p);
                    parent_ch.send(&Msg::Go)?;
                }
                Some(Msg::SeccompListener) => {
                    let fd = crate::seccomp::recv_listener(&parent_ch)?;
                    if let Some(l) = seccomp.as_ref().and_then(|s| s.listener.as_ref()) {
                        let st = state::oci_state(root, &rec);
                        crate::seccomp::send_to_agent(l, &fd, pid2, st)?;
                    }
                }
                Some(Msg::Error(m)) => return Err(Error::Init(m)),
                Some(m) => return Err(Error::Other(format!("sync: unexpected {m:?}"))),
                // The channel is close-on-exec: EOF after stage 2 exists
                // means the program was exec'd.
                None if pid2 > 0 => return Ok(()),
                None => return Err(Error::Init("exec process exited before it started".into())),
            }
        }
    })();
    if let Err(e) = res {
        // SAFETY: kill/waitpid have no memory-safety preconditions.
        unsafe {
            libc::kill(pid1, libc::SIGKILL);
            libc::waitpid(pid1, std::ptr::null_mut(), 0);
        }
        if let Some(fd) = &pid2_fd {
            kill_and_wait_exit(fd);
        }
        return Err(e);
    }
    if let Some(pf) = &o.pid_file {
        write_atomic(pf, &pid2.to_string())?;
    }
    Ok(pid2)
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Kills the process behind `fd` and waits (bounded) until it has exited:
/// by then the kernel has taken it out of its cgroup, so `ps` no longer
/// lists it when the failed exec returns.
fn kill_and_wait_exit(fd: &OwnedFd) {
    // SAFETY: the pidfd is valid; the siginfo pointer may be null.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 5000) };
}
