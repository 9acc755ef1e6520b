//! Image metadata in an embedded database (redb, one file).
//!
//! Tables:
//! - `images`: ID (config digest, `sha256:..`) -> the [`Image`] as JSON;
//! - `names`: every RepoTag and RepoDigest -> ID;
//! - `gone`: names and IDs removed in the last hour -> removal time, so that a
//!   second (or concurrent) removal of the same image succeeds
//!   ([`Removed::AlreadyRemoved`]) while a name that never existed is
//!   [`Error::NotFound`].
//!
//! Every change is one redb write transaction (serialised, atomic, fsync'd
//! on commit), so concurrent registrations and removals from several
//! threads see each other's results whole. redb allows one open handle per
//! file: handles are shared within the process; another process opening
//! the same root gets an error (the daemon owns the store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};

use crate::layout::Image;
use crate::{Digest, Error, Result};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
const GONE: TableDefinition<&str, u64> = TableDefinition::new("gone");
/// How long a removed name is remembered for idempotent removal.
const GONE_SECS: u64 = 3600;

/// Databases open in this process, by path: redb refuses a second handle.
static OPEN: Mutex<BTreeMap<PathBuf, Weak<Database>>> = Mutex::new(BTreeMap::new());

/// The image metadata store. Cheap to clone (one shared database handle).
#[derive(Clone)]
pub struct Images {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("path", &self.path).finish()
    }
}

/// What [`Images::remove`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Removed {
    /// The name was one of several: only it (and the image's RepoDigest of
    /// that repository, if no other tag of the repository is left) went.
    Untagged(Vec<String>),
    /// The image went with all its names; its blobs and layers are now
    /// garbage unless another image shares them.
    Deleted(Box<Image>),
    /// The name or ID was removed earlier (possibly by a concurrent call).
    AlreadyRemoved,
}

/// How a name resolved.
enum Found {
    Tag,
    Other,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Images {
    /// Opens (creating) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Images> {
        let path = path.as_ref();
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let path = dir.join(path.file_name().unwrap_or_default());
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(db) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(Images { db, path });
        }
        let db = Database::create(&path).map_err(|e| Error::invalid(path.display(), e))?;
        let images = Images {
            db: Arc::new(db),
            path: path.clone(),
        };
        // Create the tables so that readers never meet a missing one.
        images.write(|tx| {
            tx.open_table(IMAGES)?;
            tx.open_table(NAMES)?;
            tx.open_table(GONE)?;
            Ok(())
        })?;
        open.insert(path, Arc::downgrade(&images.db));
        Ok(images)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::invalid(self.path.display(), e.into())
    }

    /// Runs `f` in one write transaction, committed if it returns Ok.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, Txn>,
    ) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        match f(&tx) {
            Ok(v) => {
                tx.commit().map_err(|e| self.err(e))?;
                Ok(v)
            }
            Err(Txn::Db(e)) => Err(self.err(*e)),
            Err(Txn::Image(e)) => Err(e),
        }
    }

    fn read(&self) -> Result<redb::ReadTransaction> {
        self.db.begin_read().map_err(|e| self.err(e))
    }

    /// Registers `image` (what an import or pull produced): a new image is
    /// added; an image with the same ID gains the new names. A tag already
    /// naming another image moves to this one (the other keeps its other
    /// names, or stays unnamed, found by ID). Returns the stored image.
    pub fn put(&self, image: &Image) -> Result<Image> {
        self.write(|tx| {
            let mut images = tx.open_table(IMAGES)?;
            let mut names = tx.open_table(NAMES)?;
            let mut gone = tx.open_table(GONE)?;
            let id = image.id.to_string();
            let mut img = match images.get(id.as_str())? {
                Some(v) => {
                    let old: Image = decode(&id, v.value())?;
                    let mut new = image.clone();
                    new.repo_tags = old.repo_tags;
                    new.repo_digests = old.repo_digests;
                    for n in &image.repo_tags {
                        if !new.repo_tags.contains(n) {
                            new.repo_tags.push(n.clone());
                        }
                    }
                    for n in &image.repo_digests {
                        if !new.repo_digests.contains(n) {
                            new.repo_digests.push(n.clone());
                        }
                    }
                    new
                }
                None => image.clone(),
            };
            img.repo_tags.sort();
            img.repo_digests.sort();
            for n in img.names() {
                let prev = names
                    .insert(n.as_str(), id.as_str())?
                    .map(|v| v.value().to_string());
                if let Some(other) = prev.filter(|o| *o != id) {
                    // The name moves: drop it from the image it named.
                    let o = images.get(other.as_str())?.map(|v| v.value().to_vec());
                    if let Some(bytes) = o {
                        let mut o: Image = decode(&other, &bytes)?;
                        o.repo_tags.retain(|t| t != n);
                        o.repo_digests.retain(|t| t != n);
                        images.insert(other.as_str(), encode(&o)?.as_slice())?;
                    }
                }
                gone.remove(n.as_str())?;
            }
            gone.remove(id.as_str())?;
            images.insert(id.as_str(), encode(&img)?.as_slice())?;
            Ok(img)
        })
    }

    fn lookup(
        &self,
        images: &impl ReadableTable<&'static str, &'static [u8]>,
        names: &impl ReadableTable<&'static str, &'static str>,
        key: &str,
    ) -> std::result::Result<Option<(Image, Found)>, Txn> {
        let get = |id: &str| -> std::result::Result<Option<Image>, Txn> {
            match images.get(id)? {
                Some(v) => Ok(Some(decode(id, v.value())?)),
                None => Ok(None),
            }
        };
        let by_name = |n: &str| -> std::result::Result<Option<Image>, Txn> {
            match names.get(n)?.map(|v| v.value().to_string()) {
                Some(id) => get(&id),
                None => Ok(None),
            }
        };
        if let Some(i) = by_name(key)? {
            let how = if key.contains('@') {
                Found::Other
            } else {
                Found::Tag
            };
            return Ok(Some((i, how)));
        }
        // `busybox` means `busybox:latest`.
        if !key.contains('@') && crate::layout::repository(key) == key {
            if let Some(i) = by_name(&format!("{key}:latest"))? {
                return Ok(Some((i, Found::Tag)));
            }
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let start = format!("sha256:{}", hex.to_ascii_lowercase());
        let mut hits = Vec::new();
        for r in images.range(start.as_str()..)? {
            let (k, v) = r?;
            if !k.value().starts_with(&start) || hits.len() > 1 {
                break;
            }
            hits.push(decode::<Image>(k.value(), v.value())?);
        }
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.pop().map(|i| (i, Found::Other))),
            _ => Err(Txn::Image(Error::invalid(
                format!("image {key}"),
                "ID prefix names several images",
            ))),
        }
    }

    /// By tag, RepoDigest, full ID (`sha256:..` or bare hex) or a unique
    /// ID prefix (at least 4 hex digits); a name without tag means `:latest`.
    pub fn get(&self, key: &str) -> Result<Image> {
        let tx = self.read()?;
        let r = (|| {
            let images = tx.open_table(IMAGES)?;
            let names = tx.open_table(NAMES)?;
            self.lookup(&images, &names, key)
        })();
        match r {
            Ok(Some((i, _))) => Ok(i),
            Ok(None) => Err(Error::NotFound(format!("image {key}"))),
            Err(Txn::Db(e)) => Err(self.err(*e)),
            Err(Txn::Image(e)) => Err(e),
        }
    }

    /// Every image, by ID.
    pub fn list(&self) -> Result<Vec<Image>> {
        let tx = self.read()?;
        let r = (|| {
            let images = tx.open_table(IMAGES)?;
            let mut all = Vec::new();
            for r in images.iter()? {
                let (k, v) = r?;
                all.push(decode(k.value(), v.value())?);
            }
            Ok(all)
        })();
        r.map_err(|e| match e {
            Txn::Db(e) => self.err(*e),
            Txn::Image(e) => e,
        })
    }

    /// Removes by tag, RepoDigest, ID or unique ID prefix.
    ///
    /// A tag of an image with other tags only untags. A digest, an ID, or the
    /// image's last tag removes the image with all its names — unless
    /// `in_use(&image)` names a user (a container), which gives
    /// [`Error::InUse`] and changes nothing. `in_use` runs inside the write
    /// transaction (so no registration or removal interleaves) and must not
    /// call back into this store. Removing again what was already removed
    /// (by this or a concurrent call) gives [`Removed::AlreadyRemoved`]; a
    /// key that names nothing and never did is [`Error::NotFound`] (a CRI
    /// server maps both to success, as kubelet expects).
    pub fn remove(&self, key: &str, in_use: &dyn Fn(&Image) -> Option<String>) -> Result<Removed> {
        self.write(|tx| {
            let mut images = tx.open_table(IMAGES)?;
            let mut names = tx.open_table(NAMES)?;
            let mut gone = tx.open_table(GONE)?;
            let now = now();
            let Some((mut img, how)) = self.lookup(&images, &names, key)? else {
                if gone.get(key)?.is_some() || gone_id_prefix(&gone, key)? {
                    return Ok(Removed::AlreadyRemoved);
                }
                return Err(Txn::Image(Error::NotFound(format!("image {key}"))));
            };
            let id = img.id.to_string();
            let tag = match how {
                // `busybox` may have resolved as `busybox:latest`.
                Found::Tag if img.repo_tags.iter().any(|t| t == key) => key.to_string(),
                Found::Tag => format!("{key}:latest"),
                Found::Other => String::new(),
            };
            let mut untagged = Vec::new();
            if !tag.is_empty() && img.repo_tags.len() > 1 {
                img.repo_tags.retain(|t| *t != tag);
                untagged.push(tag.clone());
                let repo = crate::layout::repository(&tag);
                if !img
                    .repo_tags
                    .iter()
                    .any(|t| crate::layout::repository(t) == repo)
                {
                    img.repo_digests.retain(|d| {
                        let keep = crate::layout::repository(d) != repo;
                        if !keep {
                            untagged.push(d.clone());
                        }
                        keep
                    });
                }
                for n in &untagged {
                    names.remove(n.as_str())?;
                    gone.insert(n.as_str(), now)?;
                }
                images.insert(id.as_str(), encode(&img)?.as_slice())?;
                return Ok(Removed::Untagged(untagged));
            }
            if let Some(by) = in_use(&img) {
                return Err(Txn::Image(Error::InUse {
                    what: format!("image {key} ({id})"),
                    by,
                }));
            }
            images.remove(id.as_str())?;
            for n in img.names() {
                names.remove(n.as_str())?;
                gone.insert(n.as_str(), now)?;
            }
            gone.insert(id.as_str(), now)?;
            gone.insert(key, now)?;
            // Forget old removals so the table stays small.
            let old: Vec<String> = gone
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, t)| t.value() + GONE_SECS < now)
                .map(|(k, _)| k.value().to_string())
                .collect();
            for k in old {
                gone.remove(k.as_str())?;
            }
            Ok(Removed::Deleted(Box::new(img)))
        })
    }

    /// Blobs and top layers of every image (what garbage collection keeps).
    pub fn referenced(
        &self,
    ) -> Result<(
        std::collections::HashSet<Digest>,
        std::collections::HashSet<Digest>,
    )> {
        let all = self.list()?;
        let blobs = all.iter().flat_map(|i| i.blobs().cloned()).collect();
        let chains = all.iter().map(|i| i.chain_id.clone()).collect();
        Ok((blobs, chains))
    }
}

/// Whether `key` is a prefix (4+ hex digits) of a removed image's ID.
fn gone_id_prefix(
    gone: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> std::result::Result<bool, Txn> {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    if hex.len() < 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let start = format!("sha256:{}", hex.to_ascii_lowercase());
    Ok(match gone.range(start.as_str()..)?.next() {
        Some(r) => r?.0.value().starts_with(&start),
        None => false,
    })
}

/// A transaction's error: the database's, or ours (aborts the transaction).
enum Txn {
    Db(Box<redb::Error>),
    Image(Error),
}

impl<E: Into<redb::Error>> From<E> for Txn {
    fn from(e: E) -> Self {
        Txn::Db(Box::new(e.into()))
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> std::result::Result<T, Txn> {
    serde_json::from_slice(v)
        .map_err(|e| Txn::Image(Error::invalid(format!("image record {key}"), e)))
}

fn encode(img: &Image) -> std::result::Result<Vec<u8>, Txn> {
    serde_json::to_vec(img).map_err(|e| Txn::Image(Error::invalid(format!("image {}", img.id), e)))
}
