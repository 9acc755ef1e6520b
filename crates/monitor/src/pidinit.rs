//! The one process a pod keeps besides its monitor, and only when its
//! containers share a PID namespace: a tiny init, PID 1 of that namespace,
//! that reaps orphans and otherwise sleeps. Its pid goes to `pidinit.pid`;
//! berthd pins `/proc/<pid>/ns/pid` and containers join it.

use std::io;
use std::path::Path;

/// Forks the init (via an intermediate child that unshares the PID
/// namespace) and waits until its pid is recorded. With `userns` (a pod in
/// its own user namespace) the child joins it first, so that namespace owns
/// the PID namespace and the pod's root may mount its /proc.
pub fn start(dir: &Path, userns: Option<&Path>) -> io::Result<()> {
    let userns = userns
        .map(|p| {
            std::fs::File::open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .transpose()?;
    let (r, w) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: the monitor is single-threaded here; the children only call
    // async-signal-safe functions before looping or exiting.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(r);
            // SAFETY: as above.
            unsafe {
                use std::os::fd::AsRawFd;
                if let Some(u) = &userns {
                    if libc::setns(u.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                        libc::_exit(1);
                    }
                }
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    libc::_exit(1);
                }
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => init_loop(),
                    pid => {
                        let b = pid.to_ne_bytes();
                        libc::write(w.as_raw_fd(), b.as_ptr().cast(), b.len());
                        libc::_exit(0)
                    }
                }
            }
        }
        child => {
            drop(w);
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut st, 0) };
            let mut b = [0u8; 4];
            use std::io::Read;
            (&r).read_exact(&mut b)?;
            let pid = i32::from_ne_bytes(b);
            std::fs::write(dir.join("pidinit.pid"), pid.to_string())?;
            Ok(())
        }
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {}

fn init_loop() -> ! {
    // SAFETY: plain signal and wait calls; PID 1 ignores what it does not
    // handle, so only SIGKILL from outside ends it. A SIGCHLD handler (not
    // the default "ignore") makes pause() return when an orphan arrives.
    unsafe {
        libc::signal(libc::SIGCHLD, on_sigchld as *const () as libc::sighandler_t);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::setsid();
        for fd in 0..1024 {
            libc::close(fd);
        }
        loop {
            let mut st = 0;
            if libc::waitpid(-1, &mut st, 0) < 0 {
                libc::pause();
            }
        }
    }
}
