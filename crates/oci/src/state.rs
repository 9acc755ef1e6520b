//! The on-disk record of a container, under `<root>/<id>/`.
//!
//! `state.json` is written before each step that creates something on the
//! host, so a runtime killed half-way leaves a record that `delete --force`
//! can clean up. The status itself is never stored: it is derived from the
//! process (alive, zombie, reused pid), the exec fifo and the freezer.

use crate::error::{Context, Error, Result};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What berth keeps about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Host pid of the container's init; 0 until it exists.
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot, to detect pid reuse.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    pub owner: String,
    /// cgroup path relative to the hierarchy roots, when berth made one.
    pub cgroup: Option<PathBuf>,
    /// cgroup directories this container's create made (parents included),
    /// removed on delete.
    #[serde(default)]
    pub cgroup_created: Vec<PathBuf>,
    /// The config as it was at create; hooks and namespaces come from here.
    pub spec: Spec,
}

impl Record {
    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }
}

/// `<root>` holds one directory per container.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root { path: path.into() }
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    pub fn ensure(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .ctx(|| format!("creating state root {}", self.path.display()))
    }

    /// Creates the container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf> {
        self.ensure()?;
        let dir = self.container_dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::AlreadyExists(id.to_string()))
            }
            Err(e) => Err(e).ctx(|| format!("creating {}", dir.display())),
        }
    }

    pub fn load(&self, id: &str) -> Result<Record> {
        crate::config::validate_id(id)?;
        let f = self.container_dir(id).join(STATE_FILE);
        let data = match fs::read(&f) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", f.display())),
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("{}: corrupt state: {e}", f.display())))
    }

    pub fn save(&self, rec: &Record) -> Result<()> {
        let dir = self.container_dir(&rec.id);
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(rec).map_err(|e| Error::Other(e.to_string()))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("writing {}", tmp.display()))?;
        f.write_all(&data)
            .ctx(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(STATE_FILE)).ctx(|| format!("renaming {}", tmp.display()))
    }

    /// Container ids with a directory under the root.
    pub fn ids(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx(|| format!("listing {}", self.path.display())),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// An exclusive lock on the container's directory, held while an
    /// operation mutates it, so `start` and `delete` cannot interleave.
    pub fn lock(&self, id: &str) -> Result<OwnedFd> {
        let dir = self.container_dir(id);
        let f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e).ctx(|| format!("opening {}", dir.display())),
        };
        // SAFETY: f is an open fd owned by this function.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(crate::error::last_os(format!("locking {}", dir.display())));
        }
        Ok(f.into())
    }
}

/// Start time (field 22 of /proc/<pid>/stat) and state letter of a process.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split(' ');
    let state = it.next()?.chars().next()?;
    // rest starts at field 3; starttime is field 22.
    let start = it.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// True if `pid` is still the process recorded (not exited, not a zombie,
/// not a reused pid).
pub fn process_alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((st, state)) => st == start && state != 'Z' && state != 'X',
        None => false,
    }
}

pub fn status_of(root: &Root, rec: &Record) -> Status {
    if rec.pid == 0 {
        return Status::Creating;
    }
    if !process_alive(rec.pid, rec.pid_start) {
        return Status::Stopped;
    }
    if root.container_dir(&rec.id).join(EXEC_FIFO).exists() {
        return Status::Created;
    }
    if let Some(cg) = &rec.cgroup {
        let m = berth_cgroups::Manager::new(Path::new(crate::CGROUP_ROOT), cg);
        if m.is_frozen() {
            return Status::Paused;
        }
    }
    Status::Running
}

/// The OCI state object (`berth state`), with runc's extra fields that
/// containerd and podman read.
pub fn oci_state(root: &Root, rec: &Record) -> serde_json::Value {
    let status = status_of(root, rec);
    let pid = if status == Status::Stopped {
        0
    } else {
        rec.pid
    };
    serde_json::json!({
        "ociVersion": crate::OCI_VERSION,
        "id": rec.id,
        "pid": pid,
        "status": status.to_string(),
        "bundle": rec.bundle,
        "rootfs": rec.rootfs,
        "created": rec.created,
        "owner": rec.owner,
        "annotations": rec.annotations(),
    })
}

/// RFC 3339 UTC time with nanoseconds, as runc prints it.
pub fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// The name of a uid from the host's /etc/passwd, or the number.
pub fn user_name(uid: u32) -> String {
    if let Ok(s) = fs::read_to_string("/etc/passwd") {
        for l in s.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 2 && f[2].parse() == Ok(uid) {
                return f[0].to_string();
            }
        }
    }
    uid.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_000_000, 0), "2026-11-18T11:06:40.000000000Z");
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i32;
        let (start, _) = proc_stat(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
    }
}
