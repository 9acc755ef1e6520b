//! Foreground `run` and `exec`: berth stays the process's (sub)reaper,
//! forwards signals to it, proxies its terminal, and exits with its status.

use crate::error::{last_os, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
    libc::SIGALRM,
    libc::SIGPIPE,
];

fn mask() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Call before forking the container: makes this process the reaper of its
/// descendants and holds the signals it will forward, so none is lost
/// between fork and the wait loop.
pub fn prepare() -> Result<()> {
    let set = mask();
    // SAFETY: plain syscalls.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(last_os("PR_SET_CHILD_SUBREAPER"));
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring saved terminal attributes.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

fn raw_mode(fd: i32) -> Option<RawMode> {
    // SAFETY: termios calls on a local struct.
    unsafe {
        if libc::isatty(fd) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        Some(RawMode { fd, saved })
    }
}

fn copy_winsize(from: i32, to: i32) {
    // SAFETY: ioctl into a local winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

fn pump(from: i32, to: i32) -> bool {
    let mut buf = [0u8; 32 * 1024];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    let mut off = 0;
    while off < n as usize {
        // SAFETY: writing the bytes just read.
        let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
        if w <= 0 {
            return false;
        }
        off += w as usize;
    }
    true
}

/// Waits for `pid`, forwarding signals and proxying `pty` to our stdio.
/// Returns the exit code in shell convention (128+N for signal N).
pub fn wait(pid: i32, pty: Option<OwnedFd>) -> Result<i32> {
    let set = mask();
    // SAFETY: signalfd over the blocked set.
    let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        return Err(last_os("signalfd"));
    }
    // SAFETY: signalfd returned a new fd.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let _raw = pty.as_ref().and_then(|_| raw_mode(0));
    if let Some(p) = &pty {
        copy_winsize(0, p.as_raw_fd());
    }
    let mut stdin_open = pty.is_some();
    let mut status = None;
    while status.is_none() {
        let mut fds = vec![libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(p) = &pty {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            if stdin_open {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        // SAFETY: fds is a valid array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(last_os("poll"));
        }
        if let Some(p) = &pty {
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 && !pump(p.as_raw_fd(), 1) {
                // EIO once the last slave fd closed; keep waiting for the exit.
            }
            if stdin_open
                && fds.len() > 2
                && fds[2].revents & (libc::POLLIN | libc::POLLHUP) != 0
                && !pump(0, p.as_raw_fd())
            {
                stdin_open = false;
            }
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reading one siginfo into a local.
        let r = unsafe {
            libc::read(
                sfd.as_raw_fd(),
                (&mut si as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        if r <= 0 {
            continue;
        }
        let sig = si.ssi_signo as i32;
        if sig == libc::SIGCHLD {
            loop {
                let mut st = 0;
                // SAFETY: st is a valid out-pointer.
                let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if r <= 0 {
                    break;
                }
                if r == pid {
                    status = Some(st);
                }
            }
        } else if sig == libc::SIGWINCH {
            if let Some(p) = &pty {
                copy_winsize(0, p.as_raw_fd());
            }
        } else {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    }
    if let Some(p) = &pty {
        // Drain what the process wrote before it exited.
        // SAFETY: fcntl on our fd.
        unsafe { libc::fcntl(p.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        while pump(p.as_raw_fd(), 1) {}
    }
    let st = status.unwrap_or(0);
    Ok(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        1
    })
}

/// A connected socketpair standing in for a caller's console socket.
pub fn console_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(last_os("socketpair"));
    }
    // SAFETY: two new fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
