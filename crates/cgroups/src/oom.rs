//! OOM notifications for a container's memory cgroup, without polling files
//! on a timer.
//!
//! - v1: an eventfd registered through `cgroup.event_control` against
//!   `memory.oom_control`. The kernel signals it when the cgroup (or an
//!   ancestor) hits OOM, and also when the cgroup is removed, so every wake is
//!   checked: the `oom_kill` counter of `memory.oom_control` (kernels >= 4.13)
//!   says how many processes were killed; a cgroup that no longer exists ends
//!   the watch.
//! - v2: inotify on `memory.events`, which the kernel marks modified whenever
//!   one of its counters moves; the `oom_kill` counter is compared with the
//!   last value seen. The v2 path is kept minimal: callers should also wake on
//!   a timeout and call [`OomWatcher::check`], since removal of a cgroup is
//!   not reliably reported through inotify.
//!
//! [`OomWatcher::fd`] lets a caller fold the watcher into its own poll loop
//! (the CRI daemon watches many containers from one thread).

use crate::{Error, Manager, Mode, Result};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a wake found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// OOM events since the last check (kills, or OOM conditions with the
    /// killer disabled).
    pub ooms: u64,
    /// The cgroup is gone: no further events will come.
    pub gone: bool,
}

pub struct OomWatcher {
    fd: OwnedFd,
    /// v1: the open memory.oom_control (kept open for the registration).
    _target: Option<fs::File>,
    mode: Mode,
    /// memory.oom_control (v1) or memory.events (v2).
    file: PathBuf,
    last: u64,
    /// Whether `file` has an oom_kill counter (v1 kernels before 4.13 do not).
    has_counter: bool,
    /// OOMs reported before their kill showed in the counter.
    credit: u64,
}

fn os_err(op: &'static str, path: &Path) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::last_os_error(),
    }
}

fn counter(file: &Path) -> Option<u64> {
    let s = fs::read_to_string(file).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}

impl OomWatcher {
    /// Starts watching `m`'s memory cgroup. Fails when no memory controller
    /// is available.
    pub fn new(m: &Manager) -> Result<OomWatcher> {
        let dir = m
            .controller_dir("memory")
            .ok_or_else(|| Error::Other("the memory cgroup controller is not mounted".into()))?;
        if m.mode() == Mode::Unified {
            Self::new_v2(dir)
        } else {
            Self::new_v1(dir)
        }
    }

    fn new_v1(dir: &Path) -> Result<OomWatcher> {
        let file = dir.join("memory.oom_control");
        let target = fs::File::open(&file).map_err(|source| Error::Io {
            op: "open",
            path: file.clone(),
            source,
        })?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(os_err("eventfd", &file));
        }
        // SAFETY: efd is a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(efd) };
        let ctl = dir.join("cgroup.event_control");
        let line = format!("{} {}", fd.as_raw_fd(), target.as_raw_fd());
        fs::write(&ctl, line).map_err(|source| Error::Io {
            op: "register",
            path: ctl,
            source,
        })?;
        let cur = counter(&file);
        Ok(OomWatcher {
            fd,
            _target: Some(target),
            mode: Mode::Legacy,
            has_counter: cur.is_some(),
            last: cur.unwrap_or(0),
            credit: 0,
            file,
        })
    }

    fn new_v2(dir: &Path) -> Result<OomWatcher> {
        let file = dir.join("memory.events");
        // SAFETY: inotify_init1 has no memory-safety preconditions.
        let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if ifd < 0 {
            return Err(os_err("inotify_init1", &file));
        }
        // SAFETY: ifd is a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(ifd) };
        let c = std::ffi::CString::new(file.as_os_str().as_bytes())
            .map_err(|_| Error::Other("path contains a NUL byte".into()))?;
        // SAFETY: valid fd and C string.
        if unsafe { libc::inotify_add_watch(ifd, c.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(os_err("inotify_add_watch", &file));
        }
        let cur = counter(&file);
        Ok(OomWatcher {
            fd,
            _target: None,
            mode: Mode::Unified,
            has_counter: true,
            last: cur.unwrap_or(0),
            credit: 0,
            file,
        })
    }

    /// Readable when there may be news; then call [`check`](Self::check).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes pending notifications and reports what changed. Never blocks.
    pub fn check(&mut self) -> Result<Wake> {
        let mut buf = [0u8; 4096];
        let mut notified = 0u64;
        loop {
            // SAFETY: buf is valid for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            notified += if self.mode == Mode::Unified {
                1
            } else {
                u64::from_ne_bytes(buf[..8].try_into().unwrap_or([0; 8]))
            };
        }
        let Some(cur) = counter(&self.file).or_else(|| {
            // Kernels without the counter still have the file.
            (!self.has_counter && self.file.exists()).then_some(self.last)
        }) else {
            return Ok(Wake {
                ooms: 0,
                gone: true,
            });
        };
        let kills = cur.saturating_sub(self.last);
        self.last = cur;
        // v1 notifies before the OOM killer picks a victim, so a wake may
        // come before the counter moves: report it now and let the kill
        // that follows settle the credit instead of counting twice.
        let ooms = if kills > 0 {
            let settled = kills.min(self.credit);
            self.credit -= settled;
            kills - settled
        } else if notified > 0 && self.mode != Mode::Unified {
            if self.has_counter {
                self.credit += 1;
                1
            } else {
                notified
            }
        } else {
            0
        };
        Ok(Wake { ooms, gone: false })
    }

    /// Waits up to `timeout` (forever with None) for news.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: p is a valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("poll", &self.file));
        }
        self.check()
    }
}
