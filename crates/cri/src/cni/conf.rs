//! Network configs: finding the one in the conf dir, parsing `.conf`/`.conflist`, and the JSON each
//! plugin reads on stdin.

use serde_json::{Map, Value};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Config files bigger than this are refused (a config is a few hundred bytes).
const MAX_CONF_SIZE: u64 = 1 << 20;

/// The versions whose results we can read (0.1/0.2 `ip4`/`ip6`, 0.3+ `ips`).
const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// A network config in list form (a `.conf` is one plugin wrapped as a list).
#[derive(Debug, Clone)]
pub(crate) struct NetworkList {
    /// The file it came from (for error messages).
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each an object with a valid `type`.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    /// Parses a config file's bytes; a JSON object with `plugins` is a list whatever the extension
    /// (a `.json` may hold either), else a single plugin config.
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<NetworkList, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        Self::from_value(file, v)
    }

    pub fn from_value(file: &Path, v: Value) -> Result<NetworkList, String> {
        let Value::Object(obj) = v else {
            return Err("not a JSON object".into());
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err("name: must be a non-empty string".into()),
            None => return Err("name: missing".into()),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) if SUPPORTED_VERSIONS.contains(&s.as_str()) => s.clone(),
            Some(Value::String(s)) => {
                return Err(format!(
                    "cniVersion: {s:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ))
            }
            Some(_) => return Err("cniVersion: must be a string".into()),
            None => return Err("cniVersion: missing".into()),
        };
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // libcni accepts the string form too.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(_) => return Err("disableCheck: must be a boolean".into()),
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err("plugins: empty".into());
                }
                let mut plugins = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    let Value::Object(p) = p else {
                        return Err(format!("plugins[{i}]: not a JSON object"));
                    };
                    check_type(p).map_err(|e| format!("plugins[{i}].{e}"))?;
                    plugins.push(p.clone());
                }
                plugins
            }
            Some(_) => return Err("plugins: must be an array".into()),
            None => {
                check_type(&obj)?;
                vec![obj.clone()]
            }
        };
        Ok(NetworkList {
            file: file.to_path_buf(),
            name,
            cni_version,
            disable_check,
            plugins,
        })
    }

    /// The list form, as cached with a pod (so DEL runs the config ADD used).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), self.cni_version.clone().into());
        m.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            m.insert("disableCheck".into(), true.into());
        }
        m.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(m)
    }

    /// `cniVersion` >= `major.minor` (prevResult on DEL and CHECK exist from 0.4.0 on).
    pub fn version_at_least(&self, major: u32, minor: u32) -> bool {
        let mut it = self
            .cni_version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }

    /// The JSON plugin `i` reads on stdin: its own config with the list's name and version, the
    /// runtime config for the capabilities it declares, and the previous result.
    pub fn plugin_stdin(
        &self,
        i: usize,
        runtime: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Vec<u8> {
        let mut obj = self.plugins[i].clone();
        obj.insert("name".into(), self.name.clone().into());
        obj.insert("cniVersion".into(), self.cni_version.clone().into());
        let mut rc = Map::new();
        if let Some(Value::Object(caps)) = obj.get("capabilities") {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = runtime.get(cap) {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(rc));
        }
        match prev {
            Some(p) => {
                obj.insert("prevResult".into(), p.clone());
            }
            None => {
                obj.remove("prevResult");
            }
        }
        serde_json::to_vec(&Value::Object(obj)).expect("JSON values serialize")
    }

    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]["type"].as_str().unwrap_or_default()
    }
}

fn check_type(p: &Map<String, Value>) -> Result<(), String> {
    match p.get("type") {
        Some(Value::String(t)) if t.is_empty() => Err("type: empty".into()),
        // The type names a binary in the plugin dirs; it must not walk out of them.
        Some(Value::String(t)) if t.contains('/') || t == "." || t == ".." => {
            Err(format!("type: {t:?} is not a plugin name"))
        }
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err("type: must be a string".into()),
        None => Err("type: missing".into()),
    }
}

/// What identifies the conf dir's contents: the config files' names and inodes, sizes and
/// timestamps. Writers replace configs by rename (new inode) or rewrite them (new mtime/ctime).
type Fingerprint = Vec<(OsString, u64, u64, u64, i64, i64, i64, i64)>;

/// The conf dir, re-read only when its file list changed.
#[derive(Default)]
pub(crate) struct ConfCache {
    last: Option<(Fingerprint, Result<Arc<NetworkList>, String>)>,
}

impl ConfCache {
    /// The lexically first valid config in `dir` (the kubelet's rule: invalid files are skipped,
    /// and named in the error when none is valid).
    pub fn load(&mut self, dir: &Path) -> Result<Arc<NetworkList>, String> {
        let files = match config_files(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.last = None;
                return Err(format!("no network config found in {}", dir.display()));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        let fp: Fingerprint = files
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
            .collect();
        if let Some((last_fp, res)) = &self.last {
            if *last_fp == fp {
                return res.clone();
            }
        }
        let res = parse_first(dir, &files);
        self.last = Some((fp, res.clone()));
        res
    }
}

fn config_files(dir: &Path) -> std::io::Result<Vec<(OsString, fs::Metadata)>> {
    let mut files = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let ext = Path::new(&name).extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("conf" | "conflist" | "json")) {
            continue;
        }
        // Follow symlinks (ConfigMap volumes are links into a versioned dir).
        match fs::metadata(ent.path()) {
            Ok(m) if m.is_file() => files.push((name, m)),
            _ => continue,
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn parse_first(dir: &Path, files: &[(OsString, fs::Metadata)]) -> Result<Arc<NetworkList>, String> {
    if files.is_empty() {
        return Err(format!("no network config found in {}", dir.display()));
    }
    let mut skipped = Vec::new();
    for (name, m) in files {
        let path = dir.join(name);
        let res = if m.len() > MAX_CONF_SIZE {
            Err(format!("larger than {MAX_CONF_SIZE} bytes"))
        } else {
            fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| NetworkList::parse(&path, &b))
        };
        match res {
            Ok(list) => {
                for s in &skipped {
                    tracing::warn!("skipping network config {s}");
                }
                return Ok(Arc::new(list));
            }
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Err(format!(
        "no valid network config in {}: {}",
        dir.display(),
        skipped.join("; ")
    ))
}

/// The first executable file named `name` in `dirs`.
pub(crate) fn find_plugin(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}
