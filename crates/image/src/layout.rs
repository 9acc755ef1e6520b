//! Import of OCI image layouts (a directory or its tar archive) and a small
//! index of images by name and ID.
//!
//! Import copies the blobs an image needs into the [`Store`] (verified on
//! the way), then unpacks each layer once into the [`Snapshotter`]. The
//! image ID is the digest of its config, as with docker and containerd.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

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

/// An imported image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// The config digest.
    pub id: Digest,
    pub manifest: Digest,
    /// Layer blobs (compressed), bottom first.
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    /// Chain ID of the top layer: what [`Snapshotter::create_view`] takes.
    pub chain_id: Digest,
    pub config: ImageConfig,
}

impl Image {
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
    let mut desc = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| Error::NotFound(format!("tag {t:?} in index.json")))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(Error::invalid(
                "index.json",
                format!("{} manifests: name a tag", index.manifests.len()),
            ))
        }
    }
    .clone();
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
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let next = Digest::chain(chain.as_ref(), diff_id);
        // A layer already unpacked needs neither its blob nor another unpack.
        if !snaps.has_layer(&next) {
            fetch(layer)?;
            let blob = store.open_blob(&layer.digest)?;
            snaps.apply(chain.as_ref(), diff_id, Some(&layer.media_type), blob)?;
        }
        chain = Some(next);
    }
    let chain_id = chain.ok_or_else(|| Error::invalid(&what, "no layers"))?;
    Ok(Image {
        name: name.to_string(),
        id: manifest.config.digest.clone(),
        manifest: desc.digest.clone(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        diff_ids: config.rootfs.diff_ids,
        chain_id,
        config: config.config,
    })
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Images by name, in one JSON file replaced atomically; read-modify-write
/// cycles are serialised by an flock on a sibling lock file.
#[derive(Debug, Clone)]
pub struct Images {
    path: PathBuf,
}

impl Images {
    pub fn open(path: impl AsRef<Path>) -> Images {
        Images {
            path: path.as_ref().to_path_buf(),
        }
    }

    fn lock(&self) -> Result<File> {
        let p = self.path.with_extension("lock");
        let f = File::create(&p).map_err(|e| Error::io(&p, e))?;
        flock(&f, FlockOperation::LockExclusive).map_err(|e| Error::io(&p, e))?;
        Ok(f)
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        match fs::read(&self.path) {
            Ok(b) => parse(&self.path.display().to_string(), &b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    fn save(&self, images: &[Image]) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let bytes =
            serde_json::to_vec_pretty(images).map_err(|e| Error::invalid(tmp.display(), e))?;
        let write = || -> io::Result<()> {
            let f = File::create(&tmp)?;
            io::Write::write_all(&mut &f, &bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| Error::io(&self.path, e))
    }

    /// Adds or replaces (by name) an image.
    pub fn put(&self, image: &Image) -> Result<()> {
        let _l = self.lock()?;
        let mut all = self.list()?;
        all.retain(|i| i.name != image.name);
        all.push(image.clone());
        self.save(&all)
    }

    /// By name, full ID (`sha256:...`) or a unique ID prefix.
    pub fn get(&self, key: &str) -> Result<Image> {
        let all = self.list()?;
        if let Some(i) = all
            .iter()
            .find(|i| i.name == key || i.id.to_string() == key)
        {
            return Ok(i.clone());
        }
        let hits: Vec<_> = all
            .iter()
            .filter(|i| key.len() >= 4 && i.id.hex().starts_with(key))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Error::NotFound(format!("image {key}"))),
        }
    }

    pub fn remove(&self, name: &str) -> Result<Image> {
        let _l = self.lock()?;
        let mut all = self.list()?;
        let pos = all
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| Error::NotFound(format!("image {name}")))?;
        let img = all.remove(pos);
        self.save(&all)?;
        Ok(img)
    }

    /// Blobs and top layers of every image (what garbage collection keeps).
    pub fn referenced(&self) -> Result<(HashSet<Digest>, HashSet<Digest>)> {
        let all = self.list()?;
        let blobs = all.iter().flat_map(|i| i.blobs().cloned()).collect();
        let chains = all.iter().map(|i| i.chain_id.clone()).collect();
        Ok((blobs, chains))
    }
}
