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

/// The mode that cgroup2 at `root` (`root_v2`) and at `<root>/unified`
/// (`unified_v2`) mean: the one decision both detectors share.
fn classify(root_v2: bool, unified_v2: bool) -> Mode {
    if root_v2 {
        Mode::Unified
    } else if unified_v2 {
        Mode::Hybrid
    } else {
        Mode::Legacy
    }
}

/// Detects the host's cgroup mode from what is mounted under `root`
/// (normally `/sys/fs/cgroup`): the filesystem type the kernel reports for
/// the path itself (two statfs calls; this runs on every command).
pub fn detect_mode(root: &Path) -> Mode {
    classify(
        fs_magic(root) == Some(CGROUP2_SUPER_MAGIC),
        fs_magic(&root.join("unified")) == Some(CGROUP2_SUPER_MAGIC),
    )
}

/// The mode a `/proc/<pid>/mountinfo` text shows for `root`: what
/// [`detect_mode`] finds, for a mount table given as text. The mount seen at
/// a path is the last one listed there; a later mount on `root` or one of
/// its ancestors hides what was mounted below it.
pub fn mode_from_mountinfo(mountinfo: &str, root: &Path) -> Mode {
    let unified = root.join("unified");
    let (mut at_root, mut at_unified) = (None, None);
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(mp), Some(fstype)) = (f.get(4).filter(|_| sep > 4), f.get(sep + 1)) else {
            continue;
        };
        let mp = PathBuf::from(unescape_mountinfo(mp));
        if mp == unified {
            at_unified = Some(fstype.to_string());
        } else if root.starts_with(&mp) {
            at_unified = None;
            at_root = (mp == root).then(|| fstype.to_string());
        }
    }
    classify(
        at_root.as_deref() == Some("cgroup2"),
        at_unified.as_deref() == Some("cgroup2"),
    )
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        let code = octal.map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        if let (b'\\', Some(c @ 0..=255)) = (b[i], code) {
            out.push(c as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// Validates and cleans an OCI `cgroupsPath` (cgroupfs driver form). An
/// absolute path stays absolute (from the hierarchy roots); a relative one
/// stays relative and an empty one stays empty (the default): both are
/// resolved against the caller's cgroup by [`resolve_path`]. The systemd
/// form `slice:prefix:name` (which containerd sends for a parent ending in
/// `.slice` whatever the driver) is, as runc 1.1's cgroupfs driver takes
/// it, one relative directory of that literal name.
pub fn normalize_path(p: &str) -> Result<PathBuf> {
    let absolute = p.starts_with('/');
    let mut out = PathBuf::from(if absolute { "/" } else { "" });
    for comp in Path::new(p).components() {
        match comp {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            // runc cleans `..` lexically; refusing it is simpler to trust.
            std::path::Component::ParentDir => {
                return Err(Error::InvalidPath(p.to_string(), "'..' is not allowed"))
            }
            std::path::Component::Prefix(_) => {}
        }
    }
    if absolute && out == Path::new("/") {
        return Err(Error::InvalidPath(
            p.to_string(),
            "refusing to manage the root cgroup",
        ));
    }
    if !absolute && !p.is_empty() && out.as_os_str().is_empty() {
        return Err(Error::InvalidPath(
            p.to_string(),
            "names the caller's own cgroup",
        ));
    }
    Ok(out)
}

/// The cgroup path (from the hierarchy roots) for a container `id` whose
/// spec gives `cgroups_path`, as runc's cgroupfs driver chooses it: an
/// absolute path as is; a relative one under the caller's own cgroup; none
/// or an empty one is `<id>` there. The caller's cgroup is its v2 cgroup's
/// parent on a unified host (runc's fs2: the caller's own cgroup holds
/// processes, so its children could get no controllers), else its v1
/// cgroup. berth records one path for all v1 hierarchies, so where the
/// caller sits in different cgroups in different hierarchies it takes their
/// deepest common ancestor (runc would use each hierarchy's own).
pub fn resolve_path(root: &Path, cgroups_path: Option<&str>, id: &str) -> Result<PathBuf> {
    let p = normalize_path(cgroups_path.unwrap_or(""))?;
    if p.is_absolute() {
        return Ok(p);
    }
    let inner = if p.as_os_str().is_empty() {
        let n = normalize_path(id)?;
        if n.components().count() != 1 || n.is_absolute() {
            return Err(Error::InvalidPath(
                id.to_string(),
                "a container id must be one path component",
            ));
        }
        n
    } else {
        p
    };
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(io_err("read", Path::new("/proc/self/cgroup")))?;
    Ok(caller_base(root, detect_mode(root), &own).join(inner))
}

/// Where runc's cgroupfs driver puts relative paths for a caller whose
/// `/proc/self/cgroup` is `own` (see [`resolve_path`]).
fn caller_base(root: &Path, mode: Mode, own: &str) -> PathBuf {
    // "ID:CONTROLLERS:PATH" a line; v2 is "0::PATH".
    let lines = own.lines().filter_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        Some((ctrls, Path::new(path)))
    });
    let mut base: Option<PathBuf> = None;
    if mode == Mode::Unified {
        if let Some((_, p)) = lines.into_iter().find(|(c, _)| c.is_empty()) {
            base = Some(p.parent().unwrap_or(p).to_path_buf());
        }
    } else {
        let lines: Vec<_> = lines.collect();
        for name in v1_hierarchies(root) {
            let want: std::collections::BTreeSet<&str> = name.split(',').collect();
            let Some((_, p)) = lines.iter().find(|(c, _)| {
                !c.is_empty()
                    && c.split(',')
                        .map(|x| x.strip_prefix("name=").unwrap_or(x))
                        .collect::<std::collections::BTreeSet<_>>()
                        == want
            }) else {
                continue;
            };
            base = Some(match base {
                None => p.to_path_buf(),
                Some(b) => common_ancestor(&b, p),
            });
        }
    }
    match base {
        Some(b) if b.is_absolute() => b,
        _ => PathBuf::from("/"),
    }
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// The v1 hierarchies mounted under `root` that berth manages, by directory
/// name (a name that is a symlink to a co-mounted one is skipped).
fn v1_hierarchies(root: &Path) -> impl Iterator<Item = &'static str> + '_ {
    V1_CONTROLLERS
        .iter()
        .copied()
        .filter(move |c| fs::symlink_metadata(root.join(c)).is_ok_and(|m| m.is_dir()))
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
                for c in v1_hierarchies(root) {
                    let dir = root.join(c).join(rel);
                    if c == "freezer" {
                        freezer = Some(dir.clone());
                    }
                    if procs_dir.is_none() || c == "pids" {
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

    /// Process ids in the cgroup and in the sub-cgroups the container made
    /// (as runc's GetAllPids), so ps and kill --all see them.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        collect_pids(&self.procs_dir, &mut out, true)?;
        Ok(out)
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
                    if ev.lines().any(|l| l == want) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        // A freeze that did not complete is undone, so a
                        // failed pause leaves the container running.
                        if frozen {
                            let _ = write_file(&dir.join("cgroup.freeze"), "0");
                        }
                        let what = if frozen {
                            "did not freeze (thawed again)"
                        } else {
                            "did not thaw"
                        };
                        return Err(Error::Other(format!(
                            "cgroup {} {what}: no \"{want}\" in cgroup.events within {limit:?}",
                            dir.display()
                        )));
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

    /// Removes the cgroup in every hierarchy, killing what still runs in it,
    /// with the sub-cgroups the container made (depth first: a cgroup with
    /// children cannot be removed).
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first_err = None;
        for d in self.dirs.iter().rev() {
            if let Err(e) = self.remove_tree(d, deadline) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn remove_tree(&self, d: &Path, deadline: Instant) -> Result<()> {
        match fs::read_dir(d) {
            Ok(rd) => {
                for e in rd.flatten() {
                    // cgroupfs has no symlinks; file_type does not follow one.
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        self.remove_tree(&e.path(), deadline)?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", d)(e)),
        }
        let top = self.dirs.iter().any(|x| x == d);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    if self.mode == Mode::Unified {
                        let _ = write_file(&d.join("cgroup.kill"), "1");
                    }
                    if top {
                        let _ = self.signal_all(libc::SIGKILL);
                    } else {
                        kill_procs_of(d);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io_err("rmdir", d)(e)),
            }
        }
    }
}

fn collect_pids(d: &Path, out: &mut Vec<i32>, top: bool) -> Result<()> {
    let f = d.join("cgroup.procs");
    match fs::read_to_string(&f) {
        Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // A sub-cgroup may vanish while it is read.
        Err(_) if !top => return Ok(()),
        Err(e) => return Err(io_err("read", &f)(e)),
    }
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&e.path(), out, false)?;
        }
    }
    Ok(())
}

/// SIGKILL to every process of one sub-cgroup of a container, thawed first
/// on v1 (a frozen task cannot die; its own freezer.state may say FROZEN).
fn kill_procs_of(d: &Path) {
    let _ = write_file(&d.join("freezer.state"), "THAWED");
    let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
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
        assert!(normalize_path("a/../b").is_err());
        assert!(normalize_path("/").is_err());
        assert!(normalize_path(".").is_err());
        // The systemd form, under cgroupfs: one relative directory, as runc.
        assert_eq!(
            normalize_path("system.slice:berth:x").unwrap(),
            PathBuf::from("system.slice:berth:x")
        );
        // Relative stays relative (resolved against the caller's cgroup).
        assert_eq!(normalize_path("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalize_path("./a//b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalize_path("/a//b/").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(normalize_path("").unwrap(), PathBuf::new());
    }

    #[test]
    fn relative_paths_start_at_the_callers_cgroup() {
        let root = Path::new("/nonexistent-cgroup-root");
        // v2: the parent of the caller's cgroup, as runc's fs2 driver.
        let own = "0::/user.slice/session-1.scope\n";
        assert_eq!(
            caller_base(root, Mode::Unified, own),
            PathBuf::from("/user.slice")
        );
        assert_eq!(
            caller_base(root, Mode::Unified, "0::/\n"),
            PathBuf::from("/")
        );
        assert_eq!(caller_base(root, Mode::Unified, ""), PathBuf::from("/"));
        assert_eq!(
            common_ancestor(Path::new("/a/b/c"), Path::new("/a/b/d")),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            common_ancestor(Path::new("/a"), Path::new("/")),
            PathBuf::from("/")
        );
    }

    #[test]
    fn v1_relative_paths_use_the_common_ancestor_of_the_hierarchies() {
        let dir = std::env::temp_dir().join(format!("berth-cg-base-{}", std::process::id()));
        for h in ["memory", "pids", "systemd", "cpu,cpuacct"] {
            fs::create_dir_all(dir.join(h)).unwrap();
        }
        // A single name that is a co-mount's symlink is not a hierarchy.
        std::os::unix::fs::symlink("cpu,cpuacct", dir.join("cpu")).unwrap();
        let own = "12:pids:/x/y\n11:memory:/x/y\n3:name=systemd:/x/y\n2:cpu,cpuacct:/x/y\n1:net_cls:/elsewhere\n0::/u\n";
        assert_eq!(caller_base(&dir, Mode::Hybrid, own), PathBuf::from("/x/y"));
        let own = "12:pids:/x/y\n11:memory:/x/m\n3:name=systemd:/x\n2:cpu,cpuacct:/x/y\n";
        assert_eq!(caller_base(&dir, Mode::Legacy, own), PathBuf::from("/x"));
        let own = "12:pids:/\n11:memory:/process_api/abc\n";
        assert_eq!(caller_base(&dir, Mode::Legacy, own), PathBuf::from("/"));
        fs::remove_dir_all(&dir).unwrap();
    }

    const LEGACY: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,name=systemd
";
    const HYBRID_TAIL: &str =
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n";
    const UNIFIED: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mode_from_sample_mountinfo() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(mode_from_mountinfo(LEGACY, root), Mode::Legacy);
        let hybrid = format!("{LEGACY}{HYBRID_TAIL}");
        assert_eq!(mode_from_mountinfo(&hybrid, root), Mode::Hybrid);
        assert_eq!(mode_from_mountinfo(UNIFIED, root), Mode::Unified);
        assert_eq!(
            mode_from_mountinfo(UNIFIED, Path::new("/sys/fs/cgroup/")),
            Mode::Unified
        );
        // Nothing mounted at all.
        assert_eq!(mode_from_mountinfo("", root), Mode::Legacy);
        // A cgroup2 elsewhere is not the host's hierarchy.
        let other = format!("{LEGACY}50 22 0:40 / /mnt/cg2 rw - cgroup2 cgroup2 rw\n");
        assert_eq!(mode_from_mountinfo(&other, root), Mode::Legacy);
        // A later tmpfs over the root hides the unified mount below it; a
        // later cgroup2 over it makes the host unified.
        let covered = format!("{hybrid}60 31 0:50 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n");
        assert_eq!(mode_from_mountinfo(&covered, root), Mode::Legacy);
        let remounted = format!("{hybrid}{}", UNIFIED.lines().nth(1).unwrap());
        assert_eq!(mode_from_mountinfo(&remounted, root), Mode::Unified);
        // Mount points are octal-escaped; lines without a separator are skipped.
        let escaped = "1 0 0:1 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\ngarbage\n";
        assert_eq!(
            mode_from_mountinfo(escaped, Path::new("/sys/fs/cgroup x")),
            Mode::Unified
        );
        assert_eq!(mode_from_mountinfo(escaped, root), Mode::Legacy);
        assert_eq!(unescape_mountinfo("a\\134b\\777"), "a\\b\\777");
    }

    /// A v2 manager over a fake cgroup directory whose cgroup.events never
    /// reports the state asked for.
    #[test]
    fn a_v2_freeze_that_does_not_complete_fails_and_is_undone() {
        let dir = std::env::temp_dir().join(format!("berth-cg-freeze-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let m = Manager {
            mode: Mode::Unified,
            dirs: vec![dir.clone()],
            freezer: Some(dir.clone()),
            procs_dir: dir.clone(),
            rel: PathBuf::from("x"),
            names: vec![String::new()],
        };
        let e = m
            .set_frozen_within(true, Duration::from_millis(30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("did not freeze") && e.contains("frozen 1"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "0");
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        m.set_frozen_within(true, Duration::from_millis(30))
            .unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "1");
        fs::remove_dir_all(&dir).unwrap();
    }
}
