//! Import and export of OCI image layouts (a directory or its tar archive).
//!
//! Import copies the blobs an image needs into the [`Store`] (verified on
//! the way), then unpacks each layer once into the [`Snapshotter`]. The
//! image ID is the digest of its config, as with docker and containerd.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::snapshot::Staged;
use crate::{Digest, Error, Result, Snapshotter, Store};

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: ImageConfig,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<Digest>,
}

/// What the image says about how to run it (the config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// An imported image. Its identity is the config digest: the same image
/// imported or pulled under other names is one image with several names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The config digest.
    pub id: Digest,
    /// Names the user asked for (`repo:tag`).
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `repo@<manifest digest>` for each repository it was named in.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    pub manifest: Digest,
    /// Layer blobs (compressed), bottom first.
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    /// Chain ID of the top layer: what [`Snapshotter::create_view`] takes.
    pub chain_id: Digest,
    pub config: ImageConfig,
    /// Sum of the (compressed) layer blob sizes, as the manifest states them.
    #[serde(default)]
    pub size: u64,
    /// The config's `created` time (RFC 3339), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// The repository part of a reference: `reg:5000/a/b:tag` -> `reg:5000/a/b`,
/// `a@sha256:..` -> `a`.
pub fn repository(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(r, _)| r);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

impl Image {
    /// Names the image as `name`: a tag (`repo:tag`, recorded with its
    /// `repo@<digest>`, `digest` being what the name resolved to: the
    /// multi-platform index if there was one, as docker and containerd
    /// record it) or a digest reference (`repo@sha256:..`). An empty name
    /// leaves it unnamed (found by ID only).
    pub fn named(mut self, name: &str, digest: &Digest) -> Image {
        let add = |v: &mut Vec<String>, n: String| {
            if !v.contains(&n) {
                v.push(n)
            }
        };
        if name.contains('@') {
            add(&mut self.repo_digests, name.to_string());
        } else if !name.is_empty() {
            add(&mut self.repo_tags, name.to_string());
            let d = format!("{}@{digest}", repository(name));
            add(&mut self.repo_digests, d);
        }
        self
    }

    /// Every name it can be found by (besides its ID).
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(&self.repo_digests)
    }

    /// Every blob the image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.id, &self.manifest].into_iter().chain(&self.layers)
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e))
}

/// Imports the image tagged `tag` (or the only one) from the OCI layout
/// directory `dir`, naming it `name`.
pub fn import_layout(
    dir: &Path,
    tag: Option<&str>,
    name: &str,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Image> {
    let index_path = dir.join("index.json");
    let index = fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
    let fetch = |d: &Descriptor| -> Result<()> {
        let p = dir
            .join("blobs")
            .join(d.digest.algorithm())
            .join(d.digest.hex());
        let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
        store.ingest(&d.digest, Some(d.size), f)
    };
    import(&index, &fetch, tag, name, store, snaps)
}

/// Imports from an OCI layout tar archive (`oci-archive:`), read once: every
/// blob in it is stored (verified against its file name), then the image
/// is resolved from the store.
pub fn import_archive(
    r: impl Read,
    tag: Option<&str>,
    name: &str,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Image> {
    let mut archive = tar::Archive::new(r);
    let mut index = None;
    let what = "image archive";
    for e in archive.entries().map_err(|e| Error::invalid(what, e))? {
        let mut e = e.map_err(|e| Error::invalid(what, e))?;
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let clean = path.trim_start_matches("./");
        if clean == "index.json" {
            let mut v = Vec::new();
            e.read_to_end(&mut v)
                .map_err(|err| Error::entry(&path, err))?;
            index = Some(v);
        } else if let Some(hex) = clean.strip_prefix("blobs/sha256/") {
            if e.header().entry_type().is_file() {
                let d = Digest::parse(&format!("sha256:{hex}"))
                    .map_err(|err| Error::entry(&path, err))?;
                let size = e.header().size().ok();
                store.ingest(&d, size, &mut e)?;
            }
        }
    }
    let index = index.ok_or_else(|| Error::invalid(what, "no index.json"))?;
    let fetch = |d: &Descriptor| -> Result<()> {
        if store.contains(&d.digest) {
            Ok(())
        } else {
            Err(Error::NotFound(format!("blob {} in {what}", d.digest)))
        }
    };
    import(&index, &fetch, tag, name, store, snaps)
}

fn import(
    index: &[u8],
    fetch: &dyn Fn(&Descriptor) -> Result<()>,
    tag: Option<&str>,
    name: &str,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Image> {
    let index: Index = parse("index.json", index)?;
    let one = index
        .manifests
        .first()
        .filter(|m| index.manifests.iter().all(|n| n.digest == m.digest));
    let desc = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| Error::NotFound(format!("tag {t:?} in index.json")))?,
        // Several names of one manifest are still one image.
        None if one.is_some() => one.unwrap(),
        None => {
            return Err(Error::invalid(
                "index.json",
                format!("{} manifests: name a tag", index.manifests.len()),
            ))
        }
    }
    .clone();
    import_manifest(&desc, fetch, None, name, store, snaps)
}

/// A blob's body from a byte on (see [`Stream`]).
pub(crate) type OpenFrom<'a> = dyn Fn(&Descriptor, u64) -> Result<(Box<dyn Read>, u64)> + Sync + 'a;

/// How a pull gets the layers not unpacked yet: `open(d, from)` returns a
/// layer blob's bytes as they download (an HTTP body) from byte `from` if
/// it can (a Range request), else from its start, and the byte it starts
/// at; a body cut short is asked for again, up to `attempts` times in all.
pub(crate) struct Stream<'a> {
    pub open: &'a OpenFrom<'a>,
    pub attempts: u32,
}

/// At most this many layers download and unpack at once.
const PARALLEL_LAYERS: usize = 4;

/// Downloads and unpacks `layers` (descriptor, diff_id) in one pass each,
/// several at once, each into its own staging dir; returns them in order.
/// A layer is returned only once both its diff_id and its blob's digest
/// and size are verified (the blob is then in `store`). On any error every
/// staging dir is removed and the first error in chain order returned.
fn stage_layers(
    layers: &[(&Descriptor, &Digest)],
    s: &Stream,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Vec<Staged>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<Staged>>>> =
        layers.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..layers.len().min(PARALLEL_LAYERS) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                // After a failure, start nothing new: the pull has failed.
                if i >= layers.len() || failed.load(Ordering::SeqCst) {
                    break;
                }
                let (d, diff_id) = layers[i];
                let r = stage_layer(d, diff_id, s, store, snaps);
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    let results: Vec<_> = results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let mut out = Vec::new();
    let mut first_err = None;
    for r in results.into_iter().flatten() {
        match r {
            Ok(st) => out.push(st),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None if out.len() == layers.len() => Ok(out),
        None => Err(Error::invalid("pull", "a layer was not unpacked")),
    }
}

/// Reads through, remembering whether the source itself failed (the
/// connection, as opposed to what its bytes are).
struct Watch<'a> {
    inner: Box<dyn Read>,
    cut: &'a std::cell::RefCell<Option<String>>,
}

impl Read for Watch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|e| *self.cut.borrow_mut() = Some(e.to_string()))
    }
}

/// One layer: body -> store's verifying writer (tee) -> decompress ->
/// unpack into a staging dir.
fn stage_layer(
    d: &Descriptor,
    diff_id: &Digest,
    s: &Stream,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Staged> {
    let mt = Some(d.media_type.as_str());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(w) = store.writer(&d.digest, Some(d.size))? else {
            // Stored already (an earlier pull, or another one meanwhile).
            return snaps.stage(diff_id, mt, store.open_blob(&d.digest)?);
        };
        // A resumed download: the ingest file holds the first bytes; the
        // body continues after them (a range) or repeats them, and those
        // are skipped, as `Writer::fill` does. The unpack reads them back.
        let have = w.offset();
        let written = w.written()?;
        let cut = std::cell::RefCell::new(None);
        let (inner, start) = (s.open)(d, have)?;
        let mut body = Watch { inner, cut: &cut };
        let skip = have.saturating_sub(start);
        let skipped = std::io::copy(&mut (&mut body).take(skip), &mut std::io::sink());
        let r = match skipped {
            Ok(n) if n == skip && start <= have => {
                let mut tee = w.tee(body);
                match snaps.stage(diff_id, mt, written.chain(&mut tee)) {
                    // Both checks passed: the diff_id (stage) and the
                    // blob's digest and size (commit, which stores it).
                    Ok(staged) => tee.commit().map(|()| staged),
                    // A wrong blob explains a failed unpack best; a right
                    // one is kept (as the store-then-import path would).
                    Err(e) if cut.borrow().is_none() => match tee.commit() {
                        Err(ce @ (Error::Mismatch { .. } | Error::Digest { .. })) => Err(ce),
                        _ => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            Ok(n) => Err(Error::Digest {
                digest: d.digest.to_string(),
                msg: format!("source ended after {} bytes", start + n),
            }),
            Err(e) => Err(Error::io(store.root(), e)),
        };
        let Some(why) = cut.take().filter(|_| r.is_err()) else {
            return r;
        };
        // The staging dir is gone; the ingest file keeps what arrived, and
        // the next attempt continues after it.
        if attempt >= s.attempts.max(1) {
            return Err(Error::invalid(
                format!("blob {}", d.digest),
                format!("download failed {attempt} times, last: {why}"),
            ));
        }
        crate::registry::backoff(attempt);
    }
}

/// Imports the image `desc` names (a manifest, or an index resolved to
/// this machine's platform), getting each blob it needs with `fetch`.
pub(crate) fn import_manifest(
    desc: &Descriptor,
    fetch: &dyn Fn(&Descriptor) -> Result<()>,
    stream: Option<&Stream>,
    name: &str,
    store: &Store,
    snaps: &Snapshotter,
) -> Result<Image> {
    let top = desc.digest.clone();
    let mut desc = desc.clone();
    // A multi-platform index: take the manifest for this machine.
    while desc.media_type == INDEX_TYPE || desc.media_type == DOCKER_LIST_TYPE {
        fetch(&desc)?;
        let nested: Index = parse(
            &format!("index {}", desc.digest),
            &store.read(&desc.digest)?,
        )?;
        desc = nested
            .manifests
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "linux/{} manifest in index {}",
                    host_arch(),
                    desc.digest
                ))
            })?;
    }
    fetch(&desc)?;
    let what = format!("manifest {}", desc.digest);
    let manifest: Manifest = parse(&what, &store.read(&desc.digest)?)?;
    fetch(&manifest.config)?;
    let cwhat = format!("config {}", manifest.config.digest);
    let config: ConfigFile = parse(&cwhat, &store.read(&manifest.config.digest)?)?;
    if config.rootfs.kind != "layers" {
        return Err(Error::invalid(
            &cwhat,
            format!("rootfs.type {:?}", config.rootfs.kind),
        ));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(
            &what,
            format!(
                "{} layers but the config lists {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    let mut chain: Option<Digest> = None;
    // The layers not unpacked yet (the top of the chain: a present layer's
    // parents are present), and the chain they go on.
    let mut missing = Vec::new();
    let mut base = None;
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let next = Digest::chain(chain.as_ref(), diff_id);
        // A layer already unpacked needs neither its blob nor another unpack.
        if !snaps.has_layer(&next) {
            if missing.is_empty() {
                base = chain.clone();
            }
            missing.push((layer, diff_id));
        }
        chain = Some(next);
    }
    if !missing.is_empty() {
        let staged = match stream {
            Some(s) => stage_layers(&missing, s, store, snaps)?,
            None => {
                let mut v = Vec::new();
                for (layer, diff_id) in &missing {
                    fetch(layer)?;
                    let blob = store.open_blob(&layer.digest)?;
                    v.push(snaps.stage(diff_id, Some(&layer.media_type), blob)?);
                }
                v
            }
        };
        // In chain order, all checked first: each layer's implied
        // directories look at the layers below (published just before).
        snaps.publish_all(base.as_ref(), staged)?;
    }
    let chain_id = chain.ok_or_else(|| Error::invalid(&what, "no layers"))?;
    Ok(Image {
        id: manifest.config.digest.clone(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        manifest: desc.digest.clone(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        diff_ids: config.rootfs.diff_ids,
        chain_id,
        config: config.config,
        size: manifest.layers.iter().map(|l| l.size).sum(),
        created: config.created,
    }
    .named(name, &top))
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes `img` as an OCI layout tar archive (`oci-archive:`): `oci-layout`,
/// `index.json` with one manifest entry per tag (`org.opencontainers.image.ref.name`
/// is the tag, `io.containerd.image.name` the full name), and the manifest,
/// config and layer blobs from `store`. Entries carry fixed metadata, so the
/// same image always gives the same archive.
pub fn export(img: &Image, store: &Store, w: impl Write) -> Result<()> {
    let what = format!("export of {}", img.id);
    let manifest = store.read(&img.manifest)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let desc = |annotations| Descriptor {
        media_type: media_type.clone(),
        digest: img.manifest.clone(),
        size: manifest.len() as u64,
        annotations,
        platform: None,
    };
    let mut manifests: Vec<Descriptor> = img
        .repo_tags
        .iter()
        .map(|t| {
            let tag = t.strip_prefix(repository(t)).unwrap_or("");
            let tag = tag.strip_prefix(':').unwrap_or("latest");
            desc(BTreeMap::from([
                (REF_NAME.to_string(), tag.to_string()),
                ("io.containerd.image.name".to_string(), t.clone()),
            ]))
        })
        .collect();
    if manifests.is_empty() {
        manifests.push(desc(BTreeMap::new()));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": manifests,
    });
    let index = serde_json::to_vec(&index).map_err(|e| Error::invalid(&what, e))?;
    let mut b = tar::Builder::new(w);
    let err = |e: std::io::Error| Error::invalid(&what, e);
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h
    };
    let file = |b: &mut tar::Builder<_>, path: &str, size: u64, r: &mut dyn Read| {
        let mut h = header(tar::EntryType::Regular, size, 0o644);
        b.append_data(&mut h, path, r).map_err(err)
    };
    file(
        &mut b,
        "oci-layout",
        30,
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    )?;
    file(&mut b, "index.json", index.len() as u64, &mut &index[..])?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, dir, std::io::empty()).map_err(err)?;
    }
    let mut seen = std::collections::HashSet::new();
    for d in img.blobs().filter(|d| seen.insert(*d)) {
        let size = store.size(d)?;
        let mut f = store.open_blob(d)?;
        file(&mut b, &format!("blobs/sha256/{}", d.hex()), size, &mut f)?;
    }
    b.into_inner().and_then(|mut w| w.flush()).map_err(err)
}
