//! The Container Device Interface (CDI): devices a container asks for by a
//! fully qualified name (`vendor.com/class=device`), in
//! `ContainerConfig.CDI_devices` or in `cdi.k8s.io/<key>` annotations
//! (comma-separated names), described by spec files (JSON or YAML) in a
//! few directories (`[cdi] spec_dirs`, default `/etc/cdi` and
//! `/var/run/cdi`).
//!
//! This follows the CDI library that containerd and CRI-O use
//! (tags.cncf.io/container-device-interface) and its published schema, spec
//! versions 0.3.0 to 1.1.0: a spec declares its `kind` (vendor/class),
//! spec-level `containerEdits` and `devices[]` with their own edits. A
//! container gets, for each device it asks for (once), the spec-level edits
//! of the device's spec (once per spec) and the device's edits: env
//! (replacing a variable of the same name), device nodes (type and numbers
//! filled from the host node when not given, with an allow rule in the
//! device cgroup), mounts (replacing one on the same destination, then
//! sorted parents first), hooks, additional gids, net devices.
//!
//! Spec files are read when a container asks for a device (no cache, no
//! watch: the directories are small and a kubelet's device plugin may have
//! written a file a moment ago). A later directory overrides an earlier
//! one for the same device; two files of one directory defining the same
//! device are a conflict, and the device is refused naming both. A file
//! that cannot be read or is invalid only matters to a device it could
//! have defined: asking for an unknown device names such files.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Annotations with this prefix name CDI devices (the kubelet's device
/// plugins' older way).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The CDI library's default spec directories, lowest priority first.
pub fn default_spec_dirs() -> Vec<PathBuf> {
    vec!["/etc/cdi".into(), "/var/run/cdi".into()]
}

/// Spec versions known here, oldest first. As in the CDI library, 0.1.0
/// and 0.2.0 are known but refused: every spec needs at least 0.3.0.
const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// Null (YAML `~`, JSON `null`) reads as the default, as Go's decoders do.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A file mode: a number, or in YAML an octal literal that YAML 1.2 reads
/// as a string ("0640", as Go's YAML 1.1 decoder reads it: octal).
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Num(u32),
        Str(String),
    }
    match Option::<Mode>::deserialize(d)? {
        None => Ok(None),
        Some(Mode::Num(n)) => Ok(Some(n)),
        Some(Mode::Str(s)) => {
            let digits = s.strip_prefix("0o").or_else(|| s.strip_prefix('0'));
            digits
                .and_then(|o| u32::from_str_radix(o, 8).ok())
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("fileMode {s:?} is not a number")))
        }
    }
}

/// A CDI spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub devices: Vec<Device>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, deserialize_with = "nullable")]
    pub net_devices: Vec<NetDevice>,
    #[serde(default, deserialize_with = "nullable")]
    pub hooks: Vec<Hook>,
    #[serde(default, deserialize_with = "nullable")]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub intel_rdt: Option<IntelRdt>,
    #[serde(default, deserialize_with = "nullable")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, deserialize_with = "nullable")]
    pub host_path: String,
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub typ: String,
    #[serde(default, deserialize_with = "nullable")]
    pub major: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub minor: i64,
    #[serde(default, deserialize_with = "file_mode")]
    pub file_mode: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub permissions: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, deserialize_with = "nullable")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default, deserialize_with = "nullable")]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntelRdt {
    #[serde(default, rename = "closID")]
    pub clos_id: String,
    #[serde(default)]
    pub l3_cache_schema: String,
    #[serde(default)]
    pub mem_bw_schema: String,
    #[serde(default)]
    pub schemata: Option<Vec<String>>,
    #[serde(default)]
    pub enable_monitoring: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetDevice {
    pub host_interface_name: String,
    pub name: String,
}

const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A vendor or class name: a letter first, a letter or digit last,
/// letters, digits, `_`, `-` and `.` between.
fn check_vendor_or_class(what: &str, s: &str) -> Result<(), String> {
    let Some(first) = s.chars().next() else {
        return Err(format!("empty {what}"));
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!("{what} {s:?} should start with a letter"));
    }
    if !s.chars().last().is_some_and(is_alnum) {
        return Err(format!("{what} {s:?} should end with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(is_alnum(c) || c == '_' || c == '-' || c == '.'))
    {
        return Err(format!("invalid character {c:?} in {what} {s:?}"));
    }
    Ok(())
}

/// A device name: a letter or digit first and last, letters, digits, `_`,
/// `-`, `.` and `:` between.
fn check_device_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty device name".into());
    }
    if !s.starts_with(is_alnum) || !s.ends_with(is_alnum) {
        return Err(format!(
            "device name {s:?} should start and end with a letter or digit"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(is_alnum(c) || c == '_' || c == '-' || c == '.' || c == ':'))
    {
        return Err(format!("invalid character {c:?} in device name {s:?}"));
    }
    Ok(())
}

/// `vendor/class` of a spec's kind.
pub fn parse_kind(kind: &str) -> Result<(&str, &str), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind {kind:?} is not vendor/class"))?;
    check_vendor_or_class("vendor", vendor)?;
    check_vendor_or_class("class", class)?;
    Ok((vendor, class))
}

/// (vendor, class, name) of a fully qualified device name
/// (`vendor.com/class=name`).
pub fn parse_qualified(device: &str) -> Result<(&str, &str, &str), String> {
    let Some((kind, name)) = device.split_once('=') else {
        return Err(format!(
            "{device:?} is not a fully qualified CDI device name (vendor.com/class=name)"
        ));
    };
    let (vendor, class) =
        parse_kind(kind).map_err(|e| format!("{device:?} is not a valid CDI device name: {e}"))?;
    check_device_name(name)
        .map_err(|e| format!("{device:?} is not a valid CDI device name: {e}"))?;
    Ok((vendor, class, name))
}

fn check_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|e| e.find('=').is_none_or(|i| i == 0)) {
        Some(e) => Err(format!(
            "invalid environment variable {e:?} (not NAME=value)"
        )),
        None => Ok(()),
    }
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        self == &ContainerEdits::default()
    }

    /// The CDI library's checks of container edits.
    pub fn validate(&self) -> Result<(), String> {
        check_env(&self.env)?;
        for d in &self.device_nodes {
            if d.path.is_empty() {
                return Err("a device node has an empty path".into());
            }
            if !["", "b", "c", "u", "p"].contains(&d.typ.as_str()) {
                return Err(format!(
                    "device node {:?}: invalid type {:?}",
                    d.path, d.typ
                ));
            }
            if d.permissions != "none" && d.permissions.chars().any(|c| !"rwm".contains(c)) {
                return Err(format!(
                    "device node {:?}: invalid permissions {:?}",
                    d.path, d.permissions
                ));
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(format!("invalid hook name {:?}", h.hook_name));
            }
            if h.path.is_empty() {
                return Err(format!("hook {:?} has an empty path", h.hook_name));
            }
            check_env(&h.env).map_err(|e| format!("hook {:?}: {e}", h.hook_name))?;
        }
        for m in &self.mounts {
            if m.host_path.is_empty() {
                return Err("a mount has an empty hostPath".into());
            }
            if m.container_path.is_empty() {
                return Err("a mount has an empty containerPath".into());
            }
        }
        if let Some(r) = &self.intel_rdt {
            let c = &r.clos_id;
            if c != "/" && (c.len() >= 4096 || c == "." || c == ".." || c.contains(['/', '\n'])) {
                return Err(format!("intelRdt: invalid closID {c:?}"));
            }
        }
        let mut hosts = HashMap::new();
        let mut names = HashMap::new();
        for n in &self.net_devices {
            if n.host_interface_name.is_empty() || n.name.is_empty() {
                return Err("a net device needs hostInterfaceName and name".into());
            }
            if hosts.insert(&n.host_interface_name, ()).is_some() {
                return Err(format!(
                    "net device {:?} is given twice",
                    n.host_interface_name
                ));
            }
            if names.insert(&n.name, ()).is_some() {
                return Err(format!("net device name {:?} is given twice", n.name));
            }
        }
        Ok(())
    }

    /// Appends `o` (the CDI library's `Append`: lists concatenated, a
    /// later intelRdt replaces an earlier one).
    pub fn append(&mut self, o: &ContainerEdits) {
        self.env.extend(o.env.iter().cloned());
        self.device_nodes.extend(o.device_nodes.iter().cloned());
        self.net_devices.extend(o.net_devices.iter().cloned());
        self.hooks.extend(o.hooks.iter().cloned());
        self.mounts.extend(o.mounts.iter().cloned());
        if o.intel_rdt.is_some() {
            self.intel_rdt.clone_from(&o.intel_rdt);
        }
        self.additional_gids
            .extend(o.additional_gids.iter().copied());
    }
}

impl Spec {
    /// Parses a spec file's text: YAML unless `json` (the CDI library
    /// reads both with one YAML decoder; JSON is decoded as JSON here, for
    /// exact error positions). Unknown fields are errors, as there.
    pub fn parse(text: &str, json: bool) -> Result<Spec, String> {
        let spec: Spec = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The oldest spec version that has every feature this spec uses.
    pub fn required_version(&self) -> &'static str {
        let all_edits = || {
            std::iter::once(&self.container_edits)
                .chain(self.devices.iter().map(|d| &d.container_edits))
        };
        let v110 = all_edits().any(|e| {
            !e.net_devices.is_empty()
                || e.intel_rdt
                    .as_ref()
                    .is_some_and(|r| r.schemata.is_some() || r.enable_monitoring)
        });
        if v110 {
            return "1.1.0";
        }
        if all_edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
            return "0.7.0";
        }
        let class_dot = self
            .kind
            .split_once('/')
            .is_some_and(|(_, c)| c.contains('.'));
        if !self.annotations.is_empty()
            || self.devices.iter().any(|d| !d.annotations.is_empty())
            || class_dot
        {
            return "0.6.0";
        }
        if self
            .devices
            .iter()
            .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
            || all_edits().any(|e| e.device_nodes.iter().any(|n| !n.host_path.is_empty()))
        {
            return "0.5.0";
        }
        if all_edits().any(|e| e.mounts.iter().any(|m| !m.typ.is_empty())) {
            return "0.4.0";
        }
        "0.3.0"
    }

    /// The CDI library's checks: a known version that has the features the
    /// spec uses, a valid kind, valid edits, at least one device, device
    /// names valid and unique, each device with some edits.
    pub fn validate(&self) -> Result<(), String> {
        let v = self
            .cdi_version
            .strip_prefix('v')
            .unwrap_or(&self.cdi_version);
        let Some(have) = VERSIONS.iter().position(|k| *k == v) else {
            return Err(format!(
                "cdiVersion {:?} is not a known CDI spec version (known: {})",
                self.cdi_version,
                VERSIONS.join(", ")
            ));
        };
        let need = self.required_version();
        let need_i = VERSIONS.iter().position(|k| *k == need).unwrap_or(0);
        if have < need_i {
            return Err(format!(
                "cdiVersion {:?}: the features this spec uses need at least {need}",
                self.cdi_version
            ));
        }
        parse_kind(&self.kind)?;
        self.container_edits
            .validate()
            .map_err(|e| format!("containerEdits: {e}"))?;
        if self.devices.is_empty() {
            return Err("the spec defines no devices".into());
        }
        let mut seen = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            check_device_name(&d.name).map_err(|e| format!("devices[{i}]: {e}"))?;
            if let Some(j) = seen.insert(d.name.as_str(), i) {
                return Err(format!(
                    "devices[{j}] and devices[{i}] are both named {:?}",
                    d.name
                ));
            }
            if d.container_edits.is_empty() {
                return Err(format!("device {:?} has no containerEdits", d.name));
            }
            d.container_edits
                .validate()
                .map_err(|e| format!("device {:?}: {e}", d.name))?;
        }
        Ok(())
    }
}

/// A spec file read from a spec directory.
#[derive(Debug)]
pub struct SpecFile {
    pub path: PathBuf,
    /// The index of its directory: later directories win.
    pub priority: usize,
    pub spec: Spec,
}

/// What the spec directories define, read in one pass.
#[derive(Debug, Default)]
pub struct Registry {
    pub specs: Vec<SpecFile>,
    /// Qualified device name -> (spec index, device index).
    devices: HashMap<String, (usize, usize)>,
    /// Qualified device name -> the files of one directory that all define
    /// it (and no later directory does).
    conflicts: HashMap<String, Vec<PathBuf>>,
    /// Files (or directories) that could not be read or are invalid, with
    /// the kind they declare when that much could be read.
    pub errors: Vec<(PathBuf, Option<String>, String)>,
}

/// The `kind` a spec file declares, read loosely from a file that is
/// otherwise invalid.
fn loose_kind(text: &str, json: bool) -> Option<String> {
    let v: Value = if json {
        serde_json::from_str(text).ok()?
    } else {
        serde_yaml_ng::from_str(text).ok()?
    };
    v.get("kind")?.as_str().map(str::to_owned)
}

impl Registry {
    /// Reads every `*.json` and `*.yaml` file of `dirs` (a missing
    /// directory is skipped), in name order within a directory.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut r = Registry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    r.errors.push((dir.clone(), None, e.to_string()));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml")
                    )
                })
                .collect();
            files.sort();
            for path in files {
                let json = path.extension().is_some_and(|e| e == "json");
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        r.errors.push((path, None, e.to_string()));
                        continue;
                    }
                };
                match Spec::parse(&text, json) {
                    Ok(spec) => r.add(SpecFile {
                        path,
                        priority,
                        spec,
                    }),
                    Err(e) => r.errors.push((path, loose_kind(&text, json), e)),
                }
            }
        }
        r
    }

    fn add(&mut self, f: SpecFile) {
        let si = self.specs.len();
        let kind = f.spec.kind.clone();
        for (di, d) in f.spec.devices.iter().enumerate() {
            let q = format!("{kind}={}", d.name);
            match self.devices.get(&q).map(|&(s, _)| &self.specs[s]) {
                Some(old) if old.priority == f.priority => {
                    self.conflicts
                        .entry(q)
                        .or_insert_with(|| vec![old.path.clone()])
                        .push(f.path.clone());
                }
                _ => {
                    self.conflicts.remove(&q);
                    self.devices.insert(q, (si, di));
                }
            }
        }
        self.specs.push(f);
    }

    /// The spec file and device named `qualified`, or why there is none.
    pub fn find(&self, qualified: &str) -> Result<(&SpecFile, &Device), String> {
        let (vendor, class, _) = parse_qualified(qualified)?;
        if let Some(files) = self.conflicts.get(qualified) {
            let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "CDI device {qualified:?} is defined by more than one spec file of one directory: {}",
                names.join(", ")
            ));
        }
        if let Some(&(s, d)) = self.devices.get(qualified) {
            let f = &self.specs[s];
            return Ok((f, &f.spec.devices[d]));
        }
        let kind = format!("{vendor}/{class}");
        let broken: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, k, _)| k.as_ref().is_none_or(|k| *k == kind))
            .map(|(p, _, e)| format!("{}: {e}", p.display()))
            .collect();
        let mut msg = format!("unknown CDI device {qualified:?}");
        if !broken.is_empty() {
            msg.push_str(&format!(
                "; spec files that could not be read: {}",
                broken.join("; ")
            ));
        }
        Err(msg)
    }

    /// The merged edits for `requested` ((CRI field, qualified name),
    /// deduplicated by the caller): per device its spec's edits (once per
    /// spec) then its own, device nodes completed from the host. Errors
    /// are (field, message).
    pub fn resolve(
        &self,
        requested: &[(String, String)],
    ) -> Result<ContainerEdits, (String, String)> {
        let mut out = ContainerEdits::default();
        let mut specs_done: Vec<&Path> = Vec::new();
        for (field, name) in requested {
            let (f, d) = self.find(name).map_err(|e| (field.clone(), e))?;
            let mut e = ContainerEdits::default();
            if !specs_done.contains(&f.path.as_path()) {
                specs_done.push(&f.path);
                e.append(&f.spec.container_edits);
            }
            e.append(&d.container_edits);
            if e.intel_rdt.is_some() {
                return Err((
                    field.clone(),
                    format!(
                        "CDI device {name:?} ({}) asks for intelRdt, which berth does not support",
                        f.path.display()
                    ),
                ));
            }
            for n in &mut e.device_nodes {
                fill_missing(n).map_err(|m| {
                    (
                        field.clone(),
                        format!("CDI device {name:?} ({}): {m}", f.path.display()),
                    )
                })?;
            }
            out.append(&e);
        }
        Ok(out)
    }
}

/// (type, major, minor, mode) of a host node (not following symlinks).
fn host_node(path: &str) -> Result<(&'static str, i64, i64, u32), String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("host device {path:?}: {e}"))?;
    let t = m.file_type();
    let typ = if t.is_block_device() {
        "b"
    } else if t.is_char_device() {
        "c"
    } else if t.is_fifo() {
        "p"
    } else {
        return Err(format!("host device {path:?} is not a device node"));
    };
    let rdev = m.rdev();
    Ok((
        typ,
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
        m.mode() & 0o7777,
    ))
}

/// The CDI library's `fillMissingInfo`: the host path defaults to the
/// container path; type, major and minor come from the host node unless
/// the spec gives them (then a missing host node is fine), and so does the
/// file mode.
pub fn fill_missing(n: &mut DeviceNode) -> Result<(), String> {
    let minimal = !n.typ.is_empty() && (n.major != 0 || n.typ == "p");
    if n.host_path.is_empty() {
        n.host_path = n.path.clone();
    }
    let (typ, major, minor, mode) = match host_node(&n.host_path) {
        Ok(v) => v,
        Err(_) if minimal => return Ok(()),
        Err(e) => return Err(e),
    };
    if n.file_mode.is_none() {
        n.file_mode = Some(mode);
    }
    if minimal {
        return Ok(());
    }
    if n.typ.is_empty() {
        n.typ = typ.into();
    }
    if n.typ != typ {
        return Err(format!(
            "device node {:?}: type {:?}, but the host's {:?} is {typ:?}",
            n.path, n.typ, n.host_path
        ));
    }
    if n.typ != "p" && n.major == 0 {
        n.major = major;
        n.minor = minor;
    }
    Ok(())
}

/// The devices a container asks for, as (CRI field, name), first
/// `config.CDI_devices` then the `cdi.k8s.io/` annotations (by key),
/// each name once. A malformed name is an error naming its field.
pub fn requested(
    cfg: &berth_cri_api::v1::ContainerConfig,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |field: String, name: &str| -> Result<(), (String, String)> {
        parse_qualified(name).map_err(|e| (field.clone(), e))?;
        if !out.iter().any(|(_, n)| n == name) {
            out.push((field, name.to_owned()));
        }
        Ok(())
    };
    for (i, d) in cfg.cdi_devices.iter().enumerate() {
        push(format!("config.CDI_devices[{i}]"), &d.name)?;
    }
    let mut keys: Vec<&String> = cfg
        .annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for k in keys {
        for name in cfg.annotations[k].split(',') {
            push(format!("config.annotations[{k}]"), name)?;
        }
    }
    Ok(out)
}

/// Where mounts sort: by the number of path components of the
/// destination, parents first (stable).
fn mount_depth(m: &Value) -> usize {
    m["destination"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .count()
}

/// Applies merged edits to an OCI spec being built (JSON), as the CDI
/// library's `ContainerEdits.Apply` does.
pub fn apply(spec: &mut Value, e: &ContainerEdits) {
    if !e.env.is_empty() {
        let env = &mut spec["process"]["env"];
        if !env.is_array() {
            *env = json!([]);
        }
        let list = env.as_array_mut().expect("an array");
        for kv in &e.env {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            let same =
                |v: &Value| v.as_str().and_then(|s| s.split_once('=')).map(|(k, _)| k) == Some(key);
            match list.iter_mut().find(|v| same(v)) {
                Some(v) => *v = json!(kv),
                None => list.push(json!(kv)),
            }
        }
    }

    let uid = spec["process"]["user"]["uid"].as_u64().unwrap_or(0);
    let gid = spec["process"]["user"]["gid"].as_u64().unwrap_or(0);
    for n in &e.device_nodes {
        let mut d = json!({"path": n.path, "type": n.typ, "major": n.major, "minor": n.minor});
        if let Some(m) = n.file_mode {
            d["fileMode"] = json!(m & 0o7777);
        }
        match (n.uid, uid) {
            (Some(u), _) => d["uid"] = json!(u),
            (None, u) if u > 0 => d["uid"] = json!(u),
            _ => {}
        }
        match (n.gid, gid) {
            (Some(g), _) => d["gid"] = json!(g),
            (None, g) if g > 0 => d["gid"] = json!(g),
            _ => {}
        }
        let devs = &mut spec["linux"]["devices"];
        if !devs.is_array() {
            *devs = json!([]);
        }
        let list = devs.as_array_mut().expect("an array");
        list.retain(|o| o["path"] != d["path"]);
        list.push(d);
        if (n.typ == "b" || n.typ == "c") && n.permissions != "none" {
            let access = if n.permissions.is_empty() {
                "rwm"
            } else {
                n.permissions.as_str()
            };
            let rules = &mut spec["linux"]["resources"]["devices"];
            if !rules.is_array() {
                *rules = json!([]);
            }
            rules.as_array_mut().expect("an array").push(json!({
                "allow": true, "type": n.typ, "major": n.major, "minor": n.minor, "access": access
            }));
        }
    }

    for n in &e.net_devices {
        spec["linux"]["netDevices"][&n.host_interface_name] = json!({"name": n.name});
    }

    if !e.mounts.is_empty() {
        let userns = spec["linux"]["namespaces"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n["type"] == "user"));
        let mounts = &mut spec["mounts"];
        if !mounts.is_array() {
            *mounts = json!([]);
        }
        let list = mounts.as_array_mut().expect("an array");
        for m in &e.mounts {
            list.retain(|o| o["destination"] != json!(m.container_path));
            let is_bind = m.typ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
            let mut v = json!({
                "destination": m.container_path,
                "source": m.host_path,
                "options": m.options,
            });
            let typ = if m.typ.is_empty() && is_bind {
                "bind"
            } else {
                m.typ.as_str()
            };
            if !typ.is_empty() {
                v["type"] = json!(typ);
            }
            if userns && is_bind {
                // Host files seen through the pod's user namespace, as the
                // CDI library asks for (an idmap without mappings takes the
                // container's).
                v["options"]
                    .as_array_mut()
                    .expect("an array")
                    .push(json!("idmap"));
            }
            list.push(v);
        }
        list.sort_by_key(mount_depth);
    }

    for h in &e.hooks {
        let mut v = json!({"path": h.path});
        if !h.args.is_empty() {
            v["args"] = json!(h.args);
        }
        if !h.env.is_empty() {
            v["env"] = json!(h.env);
        }
        if let Some(t) = h.timeout {
            v["timeout"] = json!(t);
        }
        let list = &mut spec["hooks"][&h.hook_name];
        if !list.is_array() {
            *list = json!([]);
        }
        list.as_array_mut().expect("an array").push(v);
    }

    for &g in &e.additional_gids {
        if g == 0 {
            continue;
        }
        let gids = &mut spec["process"]["user"]["additionalGids"];
        if !gids.is_array() {
            *gids = json!([]);
        }
        let list = gids.as_array_mut().expect("an array");
        if !list.iter().any(|v| v.as_u64() == Some(u64::from(g))) {
            list.push(json!(g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri_api::v1::{CdiDevice, ContainerConfig};

    const JSON: &str = r#"{
      "cdiVersion": "0.6.0",
      "kind": "vendor.com/gpu",
      "annotations": {"a": "b"},
      "containerEdits": {"env": ["SPEC=1"], "hooks": [{"hookName": "createContainer", "path": "/bin/hook", "args": ["hook", "x"], "timeout": 5}]},
      "devices": [
        {"name": "0", "containerEdits": {"env": ["GPU=0"], "deviceNodes": [{"path": "/dev/gpu0", "hostPath": "/dev/null"}]}},
        {"name": "all", "containerEdits": {"env": ["GPU=all"], "mounts": [{"hostPath": "/opt/lib", "containerPath": "/usr/lib/gpu", "options": ["ro", "rbind"]}]}}
      ]
    }"#;

    const YAML: &str = r#"---
cdiVersion: 1.1.0
kind: vendor.com/nic
containerEdits:
  additionalGids: [44]
devices:
- name: eth-1
  annotations: {x: y}
  containerEdits:
    netDevices:
    - hostInterfaceName: veth9
      name: eth1
    env: ~
    deviceNodes:
    - path: /dev/fake
      type: c
      major: 240
      minor: 7
      permissions: rw
      fileMode: 0o640
      uid: 0
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_json_and_yaml() {
        let s = Spec::parse(JSON, true).unwrap();
        assert_eq!(s.kind, "vendor.com/gpu");
        assert_eq!(s.devices.len(), 2);
        assert_eq!(
            s.devices[0].container_edits.device_nodes[0].host_path,
            "/dev/null"
        );
        assert_eq!(s.container_edits.hooks[0].timeout, Some(5));
        let y = Spec::parse(YAML, false).unwrap();
        let d = &y.devices[0].container_edits;
        assert_eq!(d.net_devices[0].host_interface_name, "veth9");
        assert!(d.env.is_empty());
        assert_eq!(d.device_nodes[0].file_mode, Some(0o640));
        // Go's YAML reads a leading 0 as octal.
        let n: DeviceNode = serde_yaml_ng::from_str("path: /x\nfileMode: 0640\n").unwrap();
        assert_eq!(n.file_mode, Some(0o640));
        let n: DeviceNode = serde_json::from_str(r#"{"path": "/x", "fileMode": 420}"#).unwrap();
        assert_eq!(n.file_mode, Some(0o644));
        assert!(serde_yaml_ng::from_str::<DeviceNode>("path: /x\nfileMode: rw\n").is_err());
        assert_eq!(d.device_nodes[0].uid, Some(0));
        assert_eq!(y.container_edits.additional_gids, vec![44]);
        // The same spec as JSON (JSON is YAML too).
        let as_yaml = Spec::parse(JSON, false).unwrap();
        assert_eq!(
            as_yaml.devices[1].container_edits,
            s.devices[1].container_edits
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let e = Spec::parse(
            &JSON.replace("\"hostPath\": \"/dev/null\"", "\"hostpath\": \"/dev/null\""),
            true,
        )
        .unwrap_err();
        assert!(e.contains("hostpath"), "{e}");
        for (from, to, want) in [
            ("\"0.6.0\"", "\"9.9.9\"", "not a known CDI spec version"),
            ("\"0.6.0\"", "\"0.2.0\"", "need at least 0.6.0"),
            // annotations and a device name starting with a digit need 0.6.0/0.5.0
            ("\"0.6.0\"", "\"0.5.0\"", "need at least 0.6.0"),
            ("vendor.com/gpu", "vendor.com", "not vendor/class"),
            (
                "vendor.com/gpu",
                "1vendor.com/gpu",
                "should start with a letter",
            ),
            (
                "vendor.com/gpu",
                "vendor.com/gpu-",
                "should end with a letter or digit",
            ),
            ("\"name\": \"all\"", "\"name\": \"0\"", "both named \"0\""),
            (
                "\"name\": \"all\"",
                "\"name\": \"a/l\"",
                "invalid character '/'",
            ),
            ("\"GPU=0\"", "\"=0\"", "invalid environment variable"),
            ("\"createContainer\"", "\"preStart\"", "invalid hook name"),
            (
                "\"hostPath\": \"/opt/lib\"",
                "\"hostPath\": \"\"",
                "empty hostPath",
            ),
        ] {
            let text = JSON.replacen(from, to, 1);
            assert_ne!(text, JSON, "{from}");
            let e = Spec::parse(&text, true).unwrap_err();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        // v0.5.0 is enough without the 0.6.0 features; 0.4.0 is not (a
        // device name starting with a digit, a hostPath).
        let older = JSON
            .replace("\"annotations\": {\"a\": \"b\"},", "")
            .replace("\"0.6.0\"", "\"0.5.0\"");
        Spec::parse(&older, true).unwrap();
        let e = Spec::parse(&older.replace("\"0.5.0\"", "\"v0.4.0\""), true).unwrap_err();
        assert!(e.contains("need at least 0.5.0"), "{e}");
        // netDevices need 1.1.0; additionalGids 0.7.0.
        let e = Spec::parse(&YAML.replace("1.1.0", "1.0.0"), false).unwrap_err();
        assert!(e.contains("need at least 1.1.0"), "{e}");
        let e = Spec::parse("cdiVersion: 0.6.0\nkind: a.b/c\ndevices: []\n", false).unwrap_err();
        assert!(e.contains("no devices"), "{e}");
        let e = Spec::parse(
            "cdiVersion: 0.6.0\nkind: a.b/c\ndevices: [{name: x}]\n",
            false,
        )
        .unwrap_err();
        assert!(e.contains("no containerEdits"), "{e}");
        let e = Spec::parse(
            "cdiVersion: 0.6.0\nkind: a.b/c\ndevices: [{name: x, containerEdits: {deviceNodes: [{path: /dev/x, permissions: rwx}]}}]\n",
            false,
        )
        .unwrap_err();
        assert!(e.contains("invalid permissions"), "{e}");
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            parse_qualified("nvidia.com/gpu=0").unwrap(),
            ("nvidia.com", "gpu", "0")
        );
        assert_eq!(
            parse_qualified("a.b/c.d=GPU-1:2_x").unwrap(),
            ("a.b", "c.d", "GPU-1:2_x")
        );
        for bad in [
            "",
            "gpu0",
            "/dev/null",
            "nvidia.com/gpu",
            "nvidia.com=0",
            "nvidia.com/gpu=",
            "nvidia.com/=0",
            "/gpu=0",
            "nvidia.com/gpu=-0",
            "nvidia.com/gpu=a b",
            "9vendor/gpu=0",
        ] {
            assert!(parse_qualified(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requested_devices_name_their_fields_and_are_deduplicated() {
        let mut cfg = ContainerConfig {
            cdi_devices: vec![
                CdiDevice {
                    name: "v.com/c=a".into(),
                },
                CdiDevice {
                    name: "v.com/c=b".into(),
                },
                CdiDevice {
                    name: "v.com/c=a".into(),
                },
            ],
            ..Default::default()
        };
        cfg.annotations
            .insert("cdi.k8s.io/plugin_x".into(), "v.com/c=b,v.com/c=c".into());
        cfg.annotations.insert("other".into(), "v.com/c=z".into());
        let r = requested(&cfg).unwrap();
        assert_eq!(
            r,
            vec![
                ("config.CDI_devices[0]".into(), "v.com/c=a".into()),
                ("config.CDI_devices[1]".into(), "v.com/c=b".into()),
                (
                    "config.annotations[cdi.k8s.io/plugin_x]".into(),
                    "v.com/c=c".into()
                ),
            ]
        );
        cfg.cdi_devices[1].name = "gpu1".into();
        assert_eq!(requested(&cfg).unwrap_err().0, "config.CDI_devices[1]");
        cfg.cdi_devices.clear();
        cfg.annotations
            .insert("cdi.k8s.io/y".into(), "v.com/c=a,".into());
        assert_eq!(
            requested(&cfg).unwrap_err().0,
            "config.annotations[cdi.k8s.io/y]"
        );
    }

    #[test]
    fn later_dirs_override_and_same_dir_conflicts_name_both_files() {
        let t = tempfile::tempdir().unwrap();
        let (d1, d2) = (t.path().join("etc"), t.path().join("run"));
        let spec = |env: &str, names: &[&str]| {
            let devs: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "containerEdits": {"env": [env]}}))
                .collect();
            json!({"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": devs}).to_string()
        };
        write(&d1, "a.json", &spec("FROM=a", &["x", "y", "z"]));
        write(&d1, "b.yaml", &spec("FROM=b", &["y"]));
        write(&d2, "c.json", &spec("FROM=c", &["z"]));
        // Neither a spec file nor a directory's: ignored.
        write(&d1, "notes.txt", "hello");
        std::fs::create_dir_all(d1.join("sub.json")).unwrap();
        let r = Registry::load(&[d1.clone(), d2.clone(), t.path().join("missing")]);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let env = |name: &str| {
            let (f, d) = r.find(name).unwrap();
            (f.path.clone(), d.container_edits.env.clone())
        };
        assert_eq!(env("v.com/c=x"), (d1.join("a.json"), vec!["FROM=a".into()]));
        assert_eq!(env("v.com/c=z"), (d2.join("c.json"), vec!["FROM=c".into()]));
        let e = r.find("v.com/c=y").unwrap_err();
        assert!(
            e.contains("a.json") && e.contains("b.yaml") && e.contains("more than one"),
            "{e}"
        );
        let e = r.find("v.com/c=nope").unwrap_err();
        assert!(e.contains("unknown CDI device"), "{e}");

        // A broken file of the same kind is named when the device is not
        // found; one of another kind is not.
        write(
            &d2,
            "broken.json",
            r#"{"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": 3}"#,
        );
        write(
            &d2,
            "other.yaml",
            "cdiVersion: 0.6.0\nkind: o.com/c\ndevices: [{name: q}]\n",
        );
        let r = Registry::load(&[d1.clone(), d2.clone()]);
        let e = r.find("v.com/c=nope").unwrap_err();
        assert!(
            e.contains("broken.json") && !e.contains("other.yaml"),
            "{e}"
        );
        let e = r.find("o.com/c=q").unwrap_err();
        assert!(
            e.contains("other.yaml") && e.contains("no containerEdits"),
            "{e}"
        );
        // Found devices do not care.
        r.find("v.com/c=x").unwrap();
    }

    #[test]
    fn edits_merge_once_per_spec_and_apply_like_the_cdi_library() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "gpu.json", JSON);
        let r = Registry::load(&[t.path().to_path_buf()]);
        let want = vec![
            (
                "config.CDI_devices[0]".to_string(),
                "vendor.com/gpu=0".to_string(),
            ),
            (
                "config.CDI_devices[1]".to_string(),
                "vendor.com/gpu=all".to_string(),
            ),
        ];
        let e = r.resolve(&want).unwrap();
        // The spec's edits once, then each device's.
        assert_eq!(e.env, vec!["SPEC=1", "GPU=0", "GPU=all"]);
        assert_eq!(e.hooks.len(), 1);
        // The node was completed from the host's /dev/null.
        let n = &e.device_nodes[0];
        assert_eq!((n.typ.as_str(), n.major, n.minor), ("c", 1, 3));
        assert_eq!(n.file_mode, Some(0o666));

        let mut spec = json!({
            "process": {"env": ["PATH=/bin", "GPU=none"], "user": {"uid": 1000, "gid": 1000, "additionalGids": [44]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/usr/lib/gpu", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {"devices": [{"path": "/dev/gpu0", "type": "c", "major": 9, "minor": 9}],
                      "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                      "namespaces": [{"type": "mount"}]}
        });
        let mut more = e.clone();
        more.additional_gids = vec![0, 44, 45];
        more.append(&Spec::parse(YAML, false).unwrap().devices[0].container_edits);
        apply(&mut spec, &more);
        // The CDI env replaced GPU in place (the last one wins).
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "GPU=all", "SPEC=1"])
        );
        // /dev/gpu0 replaced, owned by the process's user, an allow rule.
        assert_eq!(
            spec["linux"]["devices"],
            json!([
                {"path": "/dev/gpu0", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 1000, "gid": 1000},
                {"path": "/dev/fake", "type": "c", "major": 240, "minor": 7, "fileMode": 0o640, "uid": 0, "gid": 1000}
            ])
        );
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 240, "minor": 7, "access": "rw"}
            ])
        );
        // The CDI mount replaced the tmpfs on its destination; parents first.
        let dests: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["/proc", "/dev", "/usr/lib/gpu"]);
        assert_eq!(
            spec["mounts"][2],
            json!({"destination": "/usr/lib/gpu", "source": "/opt/lib", "type": "bind", "options": ["ro", "rbind"]})
        );
        assert_eq!(
            spec["hooks"]["createContainer"],
            json!([{"path": "/bin/hook", "args": ["hook", "x"], "timeout": 5}])
        );
        assert_eq!(
            spec["linux"]["netDevices"],
            json!({"veth9": {"name": "eth1"}})
        );
        // gid 0 skipped, 44 not repeated.
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([44, 45]));

        // In a user namespace, bind mounts are idmapped.
        let mut spec = json!({"linux": {"namespaces": [{"type": "user"}]}});
        apply(&mut spec, &e);
        assert_eq!(
            spec["mounts"][0]["options"],
            json!(["ro", "rbind", "idmap"])
        );
    }

    #[test]
    fn device_nodes_are_completed_from_the_host() {
        let mut n = DeviceNode {
            path: "/dev/null".into(),
            ..Default::default()
        };
        fill_missing(&mut n).unwrap();
        assert_eq!(
            (n.host_path.as_str(), n.typ.as_str(), n.major, n.minor),
            ("/dev/null", "c", 1, 3)
        );
        // Fully given: the host node need not exist, its numbers are kept.
        let mut n = DeviceNode {
            path: "/dev/x".into(),
            host_path: "/nonexistent/x".into(),
            typ: "c".into(),
            major: 240,
            ..Default::default()
        };
        fill_missing(&mut n).unwrap();
        assert_eq!((n.major, n.file_mode), (240, None));
        // Not given and missing, or not a device, or the wrong type.
        for (host, typ, want) in [
            ("/nonexistent/x", "", "nonexistent"),
            ("/proc/self/status", "", "not a device node"),
            ("/dev/null", "b", "type \"b\""),
        ] {
            let mut n = DeviceNode {
                path: "/dev/x".into(),
                host_path: host.into(),
                typ: typ.into(),
                ..Default::default()
            };
            let e = fill_missing(&mut n).unwrap_err();
            assert!(e.contains(want), "{host}: {e}");
        }
    }
}
