//! Running one plugin binary: stdin in, bounded stdout and stderr out, killed at a deadline.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A plugin's result is a few KiB; more is a broken plugin.
pub(crate) const MAX_STDOUT: usize = 1 << 20;
/// Only kept for error messages.
const MAX_STDERR: usize = 64 << 10;

pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(io::Error),
    Io(io::Error),
    Timeout,
    TooLarge,
}

/// Runs `path` with `env` added to ours (plugins need `PATH` for iptables, tc...), writes `input`
/// to its stdin and collects its output; kills its whole process group on timeout or when
/// stdout exceeds [`MAX_STDOUT`].
pub(crate) fn run(
    path: &Path,
    env: &[(String, String)],
    input: &[u8],
    timeout: Duration,
) -> Result<Output, RunError> {
    let mut cmd = Command::new(path);
    for (k, _) in std::env::vars_os() {
        // A CNI_* variable of our own environment must not leak into the plugin's.
        if k.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it started too.
        .process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pid = child.id() as libc::pid_t;
    let kill = |child: &mut std::process::Child| {
        // SAFETY: kill(2) of the group we created; the leader is not reaped yet, so the id is ours.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    };
    // SAFETY: pidfd_open returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        kill(&mut child);
        return Err(RunError::Io(e));
    }
    // SAFETY: a fresh fd nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };

    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut written = 0;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + timeout;
    let mut exited = false;
    let mut result = || -> Result<(), RunError> {
        for fd in [
            stdin.as_ref().map(|f| f.as_raw_fd()),
            stdout.as_ref().map(|f| f.as_raw_fd()),
            stderr.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblock(fd).map_err(RunError::Io)?;
        }
        loop {
            if input.len() == written {
                stdin = None;
            }
            if exited {
                // A dead process writes no more: what it wrote sits in the pipes. (A grandchild
                // holding them open must not keep us waiting.)
                if let Some(s) = &mut stdout {
                    drain(s, &mut out, MAX_STDOUT + 1).map_err(RunError::Io)?;
                }
                if let Some(s) = &mut stderr {
                    drain(s, &mut err, MAX_STDERR).map_err(RunError::Io)?;
                }
                return if out.len() > MAX_STDOUT {
                    Err(RunError::TooLarge)
                } else {
                    Ok(())
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RunError::Timeout);
            }
            let mut fds = vec![libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut add = |fd: Option<RawFd>, events| {
                fds.push(libc::pollfd {
                    fd: fd.unwrap_or(-1),
                    events,
                    revents: 0,
                })
            };
            add(stdin.as_ref().map(|f| f.as_raw_fd()), libc::POLLOUT);
            add(stdout.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN);
            add(stderr.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN);
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: fds is a valid array of pollfd; negative fds are ignored by poll.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RunError::Io(e));
            }
            if fds[1].revents != 0 {
                if let Some(s) = &mut stdin {
                    match s.write(&input[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The plugin does not want (all of) its config: its exit status will tell.
                        Err(_) => written = input.len(),
                    }
                }
            }
            if fds[2].revents != 0 {
                if let Some(s) = &mut stdout {
                    let (eof, _) = drain(s, &mut out, MAX_STDOUT + 1).map_err(RunError::Io)?;
                    if out.len() > MAX_STDOUT {
                        return Err(RunError::TooLarge);
                    }
                    if eof {
                        stdout = None;
                    }
                }
            }
            if fds[3].revents != 0 {
                if let Some(s) = &mut stderr {
                    if drain(s, &mut err, MAX_STDERR).map_err(RunError::Io)?.0 {
                        stderr = None;
                    }
                }
            }
            if fds[0].revents != 0 {
                exited = true;
            }
        }
    };
    let result = result();
    if let Err(e) = result {
        kill(&mut child);
        return Err(e);
    }
    let status = child.wait().map_err(RunError::Io)?;
    Ok(Output {
        status,
        stdout: out,
        stderr: err,
    })
}

/// Reads what is available (non-blocking) into `buf`, keeping at most `cap` bytes (the rest is
/// dropped on later calls, so the writer never blocks). Returns (EOF reached, bytes read).
fn drain(r: &mut impl Read, buf: &mut Vec<u8>, cap: usize) -> io::Result<(bool, usize)> {
    let mut chunk = [0u8; 16 << 10];
    let mut total = 0;
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok((true, total)),
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if buf.len() >= cap {
                    return Ok((false, total));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn set_nonblock(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
