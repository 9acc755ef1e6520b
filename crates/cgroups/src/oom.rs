//! OOM notifications for a container's memory cgroup, without polling files
//! on a timer.
//!
//! - v1: an eventfd registered through `cgroup.event_control` against
//!   `memory.oom_control`. The kernel signals it when the cgroup or any of
//!   its ancestors hits OOM (it notifies the whole subtree of the cgroup at
//!   its limit), and also when the cgroup is removed. So a wake alone proves
//!   nothing: an OOM is the container's when its own `oom_kill` counter
//!   (kernels >= 4.13; it counts kills of the cgroup's own processes) rose,
//!   or, with the OOM killer disabled there (nothing is ever killed), when it
//!   is `under_oom`. A cgroup that no longer exists ends the watch.
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
use std::time::{Duration, Instant};

/// How long after a v1 wake the counter is re-read for a kill that the
/// killer had not yet made when the wake came (the kernel notifies first).
const KILL_GRACE: Duration = Duration::from_secs(1);
/// How often, in that window, [`OomWatcher::wait`] re-reads it.
const KILL_POLL: Duration = Duration::from_millis(10);

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
    /// v1: a wake came that no counter explained yet; re-read until then.
    recheck_until: Option<Instant>,
}

fn os_err(op: &'static str, path: &Path) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::last_os_error(),
    }
}

/// The value of `key` in a "key value" file's text.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn counter(file: &Path) -> Option<u64> {
    field(&fs::read_to_string(file).ok()?, "oom_kill")
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
            recheck_until: None,
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
            recheck_until: None,
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
        let text = fs::read_to_string(&self.file).ok();
        let Some(cur) = text
            .as_deref()
            .and_then(|t| field(t, "oom_kill"))
            .or_else(|| {
                // Kernels without the counter still have the file.
                (!self.has_counter && text.is_some()).then_some(self.last)
            })
        else {
            return Ok(Wake {
                ooms: 0,
                gone: true,
            });
        };
        let kills = cur.saturating_sub(self.last);
        self.last = cur;
        let v1 = self.mode != Mode::Unified;
        let ooms = if kills > 0 {
            self.recheck_until = None;
            kills
        } else if notified > 0 && v1 && !self.has_counter {
            // Nothing to tell the container's OOMs from its ancestors'.
            notified
        } else if notified > 0 && v1 {
            let t = text.as_deref().unwrap_or_default();
            if field(t, "oom_kill_disable") == Some(1) && field(t, "under_oom") == Some(1) {
                // No kill will come: a task waits at the container's limit.
                1
            } else {
                // The kill of an OOM here may be counted just after the
                // wake; an ancestor's OOM elsewhere never is.
                self.recheck_until = Some(Instant::now() + KILL_GRACE);
                0
            }
        } else {
            0
        };
        if self.recheck_until.is_some_and(|t| Instant::now() > t) {
            self.recheck_until = None;
        }
        Ok(Wake { ooms, gone: false })
    }

    /// Waits up to `timeout` (forever with None) for news; returns early,
    /// possibly with nothing, while a v1 wake awaits its kill.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake> {
        let timeout = match (timeout, self.recheck_until) {
            (Some(t), Some(_)) => Some(t.min(KILL_POLL)),
            (None, Some(_)) => Some(KILL_POLL),
            (t, None) => t,
        };
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
