//! One JSON file per pod under the cache dir: the network config ADD used, the plugins' inputs,
//! and (once ADD finished) the result. Written before the first plugin runs, so a crash in the
//! middle of ADD still leaves an entry to tear down.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub id: String,
    /// The config file the network came from (informational).
    pub conf_file: PathBuf,
    /// The network config, list form.
    pub network: Value,
    pub if_name: String,
    pub netns: PathBuf,
    /// CNI_ARGS, in order.
    pub args: Vec<(String, String)>,
    /// Capability name -> value (portMappings, bandwidth).
    pub runtime_config: Map<String, Value>,
    /// The chain's result; None while ADD runs (or if it was interrupted).
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

pub(crate) fn read(dir: &Path, id: &str) -> io::Result<Option<Entry>> {
    let p = path(dir, id);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Atomic: a reader (or a crash) sees the old entry or the new one, never a torn file.
pub(crate) fn write(dir: &Path, e: &Entry) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        e.id,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(e).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path(dir, &e.id))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

pub(crate) fn remove(dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(path(dir, id)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn ids(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            remove_stale_tmp(dir, &name);
            let id = name.strip_suffix(".json")?;
            (!id.starts_with('.') && valid_id(id)).then(|| id.to_string())
        })
        .collect();
    ids.sort();
    ids
}

/// A temp file another (dead) process left mid-write; ours may be in use by another thread.
fn remove_stale_tmp(dir: &Path, name: &str) {
    let Some((_, rest)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) else {
        return;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    if pid.is_some_and(|p| p != std::process::id()) {
        let _ = fs::remove_file(dir.join(name));
    }
}

/// Ids become file names: no separators, no dot files, bounded length.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
