//! OCI images on disk: a content-addressed blob store, safe layer
//! unpacking, overlay snapshots keyed by chain ID, and import of OCI image
//! layouts. Every error names the digest, file or archive entry at fault.

pub mod digest;
pub mod layout;
pub mod metadata;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use digest::Digest;
pub use layout::{import_archive, import_layout, Image, ImageConfig};
pub use metadata::{Images, Removed};
pub use snapshot::{Idmap, Snapshotter, Usage, View};
pub use store::Store;
pub use unpack::{unpack, unpack_onto, Compression, Unpacked};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("digest {digest:?}: {msg}")]
    Digest { digest: String, msg: String },
    #[error("{what}: expected {expected}, got {actual}")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer entry {entry:?}: {msg}")]
    Entry { entry: String, msg: String },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{what} is in use by {by}")]
    InUse { what: String, by: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The three parts under one directory:
/// `<dir>/content` ([`Store`]), `<dir>/snapshots` ([`Snapshotter`]),
/// `<dir>/images.db` ([`Images`]).
#[derive(Debug, Clone)]
pub struct ImageRoot {
    pub store: Store,
    pub snapshots: Snapshotter,
    pub images: Images,
    dir: PathBuf,
}

impl ImageRoot {
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageRoot> {
        let dir = dir.as_ref();
        Ok(ImageRoot {
            store: Store::open(dir.join("content"))?,
            snapshots: Snapshotter::open(dir.join("snapshots"))?,
            images: Images::open(dir.join("images.db"))?,
            dir: dir.to_path_buf(),
        })
    }

    /// Imports hold it shared, gc exclusive: gc must not collect the blobs
    /// and layers of an import not yet recorded in the index.
    fn lock(&self, op: rustix::fs::FlockOperation) -> Result<std::fs::File> {
        let p = self.dir.join("gc.lock");
        let f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
        rustix::fs::flock(&f, op).map_err(|e| Error::io(&p, e))?;
        Ok(f)
    }

    /// Imports image `tag` (or the only one) of an OCI layout directory as `name`.
    pub fn import_layout(&self, layout: &Path, tag: Option<&str>, name: &str) -> Result<Image> {
        let _l = self.lock(rustix::fs::FlockOperation::LockShared)?;
        let img = layout::import_layout(layout, tag, name, &self.store, &self.snapshots)?;
        self.images.put(&img)
    }

    /// Imports from an OCI layout tar archive.
    pub fn import_archive(
        &self,
        r: impl std::io::Read,
        tag: Option<&str>,
        name: &str,
    ) -> Result<Image> {
        let _l = self.lock(rustix::fs::FlockOperation::LockShared)?;
        let img = layout::import_archive(r, tag, name, &self.store, &self.snapshots)?;
        self.images.put(&img)
    }

    /// Writes image `key` (tag, digest or ID) as an OCI layout tar archive.
    pub fn export(&self, key: &str, w: impl std::io::Write) -> Result<()> {
        layout::export(&self.images.get(key)?, &self.store, w)
    }

    /// [`Images::remove`], then, when the image went, [`ImageRoot::gc`] to
    /// free its blobs and layers (those no other image or view uses).
    pub fn remove(&self, key: &str, in_use: &dyn Fn(&Image) -> Option<String>) -> Result<Removed> {
        let r = self.images.remove(key, in_use)?;
        if matches!(r, Removed::Deleted(_)) {
            self.gc()?;
        }
        Ok(r)
    }

    /// Pulls `reference` from its registry (or a mirror) and records it
    /// under its normalised name, e.g. `docker.io/library/busybox:latest`.
    pub fn pull(&self, reference: &str, opts: &registry::Options) -> Result<Image> {
        let _l = self.lock(rustix::fs::FlockOperation::LockShared)?;
        let img = registry::pull(reference, opts, &self.store, &self.snapshots)?;
        self.images.put(&img)
    }

    /// Space the image filesystem uses: blobs (and ingests), layers, and
    /// views' own files (overlay upper dirs, copies), as containerd's CRI
    /// reports its snapshotter's usage. Mounted views are not entered, so
    /// their layers count once.
    pub fn usage(&self) -> Result<snapshot::Usage> {
        snapshot::usage(&self.dir)
    }

    /// Containers' writable layers, when views live outside this root
    /// ([`Snapshotter::set_views_dir`]); [`ImageRoot::usage`] then counts
    /// images alone.
    pub fn views_usage(&self) -> Result<snapshot::Usage> {
        snapshot::usage(self.snapshots.views_dir())
    }

    /// Removes blobs and layers no image (and no view) uses; returns them.
    pub fn gc(&self) -> Result<(Vec<Digest>, Vec<Digest>)> {
        let _l = self.lock(rustix::fs::FlockOperation::LockExclusive)?;
        let (blobs, chains) = self.images.referenced()?;
        let layers = self.snapshots.gc(&chains)?;
        Ok((self.store.gc(&blobs)?, layers))
    }
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source: source.into(),
        }
    }
    pub(crate) fn entry(entry: impl std::fmt::Display, msg: impl std::fmt::Display) -> Self {
        Error::Entry {
            entry: entry.to_string(),
            msg: msg.to_string(),
        }
    }
    pub(crate) fn invalid(file: impl std::fmt::Display, msg: impl std::fmt::Display) -> Self {
        Error::Invalid {
            file: file.to_string(),
            msg: msg.to_string(),
        }
    }
}
