//! cgroup management for berth: one [`Manager`] over cgroup v1 (one directory
//! per controller hierarchy) and v2 (one directory in the unified hierarchy).
//!
//! This crate places processes into cgroups, lists and kills them, freezes and
//! removes cgroups. Resource limits and accounting build on the same paths.

pub mod devices_bpf;
pub mod oom;
pub mod resources;
pub mod stats;
pub mod v1;
pub mod v2;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `linux.resources` value that is invalid or cannot be applied; the
    /// field is its path in config.json (`linux.resources.cpu.quota`).
    #[error("{field}: {msg}")]
    Resource { field: String, msg: String },
    #[error("invalid cgroupsPath {0:?}: {1}")]
    InvalidPath(String, &'static str),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Controllers on v1 hierarchies, no usable unified hierarchy.
    Legacy,
    /// Controllers on v1, a bare cgroup2 at `<root>/unified`.
    Hybrid,
    /// Everything on cgroup2 at the root.
    Unified,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// Detects the host's cgroup mode from what is mounted under `root`
/// (normally `/sys/fs/cgroup`).
pub fn detect_mode(root: &Path) -> Mode {
    if fs_magic(root) == Some(CGROUP2_SUPER_MAGIC) {
        Mode::Unified
    } else if fs_magic(&root.join("unified")) == Some(CGROUP2_SUPER_MAGIC) {
        Mode::Hybrid
    } else {
        Mode::Legacy
    }
}

/// The v1 hierarchies berth manages, by their mount directory name.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "hugetlb",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
    "systemd",
    // Co-mounted hierarchies (systemd hosts), whose single names above are
    // symlinks and skipped.
    "cpu,cpuacct",
    "net_cls,net_prio",
];

/// Validates and normalises an OCI `cgroupsPath` (cgroupfs driver form):
/// absolute paths are relative to the hierarchy root, relative ones to the
/// caller's own cgroup parent (here: also the root, as runc does for cgroupfs).
pub fn normalize_path(p: &str) -> Result<PathBuf> {
    if p.contains(':') {
        return Err(Error::InvalidPath(
            p.to_string(),
            "the systemd form slice:prefix:name needs the systemd cgroup driver",
        ));
    }
    let mut out = PathBuf::from("/");
    for comp in Path::new(p).components() {
        match comp {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                return Err(Error::InvalidPath(p.to_string(), "'..' is not allowed"))
            }
            std::path::Component::Prefix(_) => {}
        }
    }
    if out == Path::new("/") {
        return Err(Error::InvalidPath(
            p.to_string(),
            "refusing to manage the root cgroup",
        ));
    }
    Ok(out)
}

/// A container's cgroup: the directories it owns in each hierarchy.
#[derive(Debug, Clone)]
pub struct Manager {
    mode: Mode,
    /// Absolute directories, one per hierarchy (v1) or a single one (v2).
    dirs: Vec<PathBuf>,
    /// The directory whose cgroup.procs lists the container's processes and
    /// that carries the freezer.
    freezer: Option<PathBuf>,
    procs_dir: PathBuf,
    /// The cgroup path relative to each hierarchy's root.
    rel: PathBuf,
    /// v1: the hierarchy name of each entry of `dirs`.
    names: Vec<String>,
}

impl Manager {
    /// A manager for `path` (already normalised) under `root`.
    pub fn new(root: &Path, path: &Path) -> Self {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let mode = detect_mode(root);
        match mode {
            Mode::Unified => {
                let dir = root.join(rel);
                Manager {
                    mode,
                    dirs: vec![dir.clone()],
                    freezer: Some(dir.clone()),
                    procs_dir: dir,
                    rel: rel.to_path_buf(),
                    names: vec![String::new()],
                }
            }
            Mode::Legacy | Mode::Hybrid => {
                let mut dirs = Vec::new();
                let mut names = Vec::new();
                let mut freezer = None;
                let mut procs_dir = None;
                for c in V1_CONTROLLERS {
                    let base = root.join(c);
                    // Skip names that are symlinks (cpu,cpuacct) or not mounted.
                    match fs::symlink_metadata(&base) {
                        Ok(m) if m.is_dir() => {}
                        _ => continue,
                    }
                    let dir = base.join(rel);
                    if *c == "freezer" {
                        freezer = Some(dir.clone());
                    }
                    if procs_dir.is_none() || *c == "pids" {
                        procs_dir = Some(dir.clone());
                    }
                    dirs.push(dir);
                    names.push(c.to_string());
                }
                let procs_dir = procs_dir.unwrap_or_else(|| root.join(rel));
                Manager {
                    mode,
                    dirs,
                    freezer,
                    procs_dir,
                    rel: rel.to_path_buf(),
                    names,
                }
            }
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cgroup path relative to each hierarchy's root.
    pub fn relative_path(&self) -> &Path {
        &self.rel
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Creates the directories (and parents) in every hierarchy. Returns the
    /// directories this call created, so a failed create can remove exactly them.
    pub fn create(&self) -> Result<Vec<PathBuf>> {
        let mut created = Vec::new();
        for d in &self.dirs {
            // Record each new ancestor so cleanup never removes one that existed.
            let mut missing = Vec::new();
            let mut cur = d.as_path();
            while !cur.exists() {
                missing.push(cur.to_path_buf());
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            for m in missing.iter().rev() {
                match fs::create_dir(m) {
                    Ok(()) => created.push(m.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        remove_dirs(&created);
                        return Err(io_err("mkdir", m)(e));
                    }
                }
                if self.mode != Mode::Unified && m.starts_with(cpuset_root(d)) {
                    // A new v1 cpuset cgroup starts empty; inherit the parent's.
                    if let Err(e) = inherit_cpuset(m) {
                        remove_dirs(&created);
                        return Err(e);
                    }
                }
            }
        }
        if self.mode == Mode::Unified {
            self.enable_controllers();
        }
        Ok(created)
    }

    /// v2: a cgroup only gets the controllers its parent lists in
    /// `cgroup.subtree_control`, so enable every available one on each
    /// ancestor below the root (the root is the host's to configure). Errors
    /// are ignored per controller: a parent holding processes refuses domain
    /// controllers, and the limit that needs one then fails naming its field.
    fn enable_controllers(&self) {
        let Some(d) = self.dirs.first() else { return };
        let depth = self.rel.components().count();
        for up in (1..depth).rev() {
            let Some(p) = d.ancestors().nth(up) else {
                continue;
            };
            let avail = fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
            let on = fs::read_to_string(p.join("cgroup.subtree_control")).unwrap_or_default();
            for c in avail.split_whitespace() {
                if !on.split_whitespace().any(|x| x == c) {
                    let _ = write_file(&p.join("cgroup.subtree_control"), &format!("+{c}"));
                }
            }
        }
    }

    /// Moves `pid` (and, for v1, its thread group) into the cgroup everywhere.
    pub fn add(&self, pid: i32) -> Result<()> {
        let s = pid.to_string();
        for d in &self.dirs {
            let f = d.join("cgroup.procs");
            write_file(&f, &s)?;
        }
        Ok(())
    }

    /// Moves the calling process (which must be single-threaded) into the
    /// cgroup. On v1 it writes "0" to `tasks`: a thread moving itself does
    /// not take the kernel's global threadgroup lock, whose RCU grace period
    /// otherwise costs 10-20 ms per container.
    pub fn join_self(&self) -> Result<()> {
        let file = if self.mode == Mode::Unified {
            "cgroup.procs"
        } else {
            "tasks"
        };
        for d in &self.dirs {
            write_file(&d.join(file), "0")?;
        }
        Ok(())
    }

    /// Applies `linux.resources` (limits, weights, device rules).
    pub fn apply(&self, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
        match self.mode {
            Mode::Unified => v2::apply(self, r),
            _ => v1::apply(self, r),
        }
    }

    /// Reads the cgroup's accounting.
    pub fn stats(&self) -> Result<stats::Stats> {
        match self.mode {
            Mode::Unified => v2::stats(self),
            _ => v1::stats(self),
        }
    }

    /// The container's directory in the v1 hierarchy mounted as `name`
    /// (e.g. "memory"), or the v2 directory for any name on a unified host.
    pub fn controller_dir(&self, name: &str) -> Option<&Path> {
        if self.mode == Mode::Unified {
            return self.dirs.first().map(|d| d.as_path());
        }
        // "cpu" is found in a co-mounted "cpu,cpuacct" too.
        self.names
            .iter()
            .position(|n| n.split(',').any(|part| part == name))
            .map(|i| self.dirs[i].as_path())
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let f = self.procs_dir.join("cgroup.procs");
        let s = match fs::read_to_string(&f) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &f)(e)),
        };
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `sig` to every process in the cgroup.
    pub fn signal_all(&self, sig: i32) -> Result<()> {
        // v2 (Linux 5.14+): the kernel kills the whole subtree at once, with
        // no window for a fork to escape.
        if sig == libc::SIGKILL
            && self.mode == Mode::Unified
            && write_file(&self.procs_dir.join("cgroup.kill"), "1").is_ok()
        {
            return Ok(());
        }
        // Freeze first so no process can fork out of the sweep. Briefly: a
        // task the freezer cannot stop (one waiting at a v1 memory limit
        // with the OOM killer disabled) keeps the cgroup FREEZING forever.
        let tried = sig == libc::SIGKILL && self.freezer.is_some();
        if tried {
            let _ = self.set_frozen_within(true, Duration::from_millis(100));
        }
        for pid in self.pids()? {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
        // Thaw even after a partial freeze: frozen tasks cannot die.
        if tried {
            let _ = self.set_frozen(false);
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws the cgroup and waits until the kernel agrees.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.set_frozen_within(frozen, Duration::from_secs(10))
    }

    fn set_frozen_within(&self, frozen: bool, limit: Duration) -> Result<()> {
        let dir = self
            .freezer
            .as_ref()
            .ok_or_else(|| Error::Other("no freezer hierarchy is mounted".into()))?;
        let deadline = Instant::now() + limit;
        match self.mode {
            Mode::Unified => {
                write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                loop {
                    let ev = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
                    if ev.lines().any(|l| l == want) || Instant::now() > deadline {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            _ => {
                let (val, want) = if frozen {
                    ("FROZEN", "FROZEN")
                } else {
                    ("THAWED", "THAWED")
                };
                let f = dir.join("freezer.state");
                loop {
                    write_file(&f, val)?;
                    let st = fs::read_to_string(&f).map_err(io_err("read", &f))?;
                    if st.trim() == want {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(Error::Other(format!(
                            "{}: stuck in {} while asking for {}",
                            f.display(),
                            st.trim(),
                            want
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        let Some(dir) = &self.freezer else {
            return false;
        };
        match self.mode {
            Mode::Unified => fs::read_to_string(dir.join("cgroup.freeze"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false),
            _ => fs::read_to_string(dir.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN" || s.trim() == "FREEZING")
                .unwrap_or(false),
        }
    }

    /// Removes the cgroup in every hierarchy, killing what still runs in it.
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first_err = None;
        for d in self.dirs.iter().rev() {
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        if self.mode == Mode::Unified {
                            let _ = write_file(&d.join("cgroup.kill"), "1");
                        }
                        let _ = self.signal_all(libc::SIGKILL);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        first_err.get_or_insert(io_err("rmdir", d)(e));
                        break;
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn cpuset_root(d: &Path) -> PathBuf {
    // /sys/fs/cgroup/cpuset/<rel> → /sys/fs/cgroup/cpuset
    let mut p = PathBuf::new();
    for c in d.components() {
        p.push(c);
        if c.as_os_str() == "cpuset" {
            return p;
        }
    }
    PathBuf::from("/nonexistent-cpuset")
}

fn inherit_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let p = fs::read_to_string(parent.join(f)).map_err(io_err("read", &parent.join(f)))?;
            write_file(&dir.join(f), p.trim())?;
        }
    }
    Ok(())
}

/// Removes directories in reverse creation order, ignoring errors: used to
/// undo a partial create.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

fn write_file(path: &Path, val: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(val.as_bytes()).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rejects_dotdot_and_root() {
        assert!(normalize_path("/a/../b").is_err());
        assert!(normalize_path("/").is_err());
        assert!(normalize_path("system.slice:berth:x").is_err());
        assert_eq!(normalize_path("a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(normalize_path("/a//b/").unwrap(), PathBuf::from("/a/b"));
    }
}
