//! Layers unpacked once, keyed by chain ID, and per-container views.
//!
//! ```text
//! <root>/layers/<chain hex>/fs       the layer's own files (overlay markers for whiteouts)
//! <root>/layers/<chain hex>/parent   chain ID of the layer below (absent for a base layer)
//! <root>/layers/<chain hex>/diff_id
//! <root>/layers/<chain hex>/link     short name of the layer in l/
//! <root>/l/<n> -> ../layers/<chain hex>/fs
//! <root>/views/<id>/{upper,work,rootfs}, chain, mode ("overlay" or "copy")
//! <root>/tmp/                        layers being unpacked
//! ```
//! A view mounts overlayfs on `rootfs` with the layers as read-only lowers.
//! lowerdir is limited to one page, so lowers are named by their short
//! `l/<n>` links, relative to `l/` (the mount is made from a thread that
//! unshared its cwd and entered `l/`): 60 layers take ~200 bytes. Where
//! overlay cannot be mounted the view is a plain copy. Layers are
//! referenced by views and by layers above them; a referenced layer
//! cannot be removed.
//!
//! An idmapped view (for a pod in its own user namespace) gets each lower
//! as a detached idmapped clone the caller makes, handed to overlayfs by fd
//! (`lowerdir+`, Linux 6.13+), so the layers, owned by host root on disk,
//! appear owned by the container's root; its upper dir belongs to the
//! container's root on the host. There is no copy fallback for these.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timespec, Timestamps};

use crate::unpack::{check_through, inherit_implied, unpack_deferred, Implied};
use crate::{Digest, Error, Result};

#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
    /// Views' directory: `<root>/views` unless set elsewhere.
    views: PathBuf,
    overlay: bool,
}

/// A layer unpacked into a staging dir, verified against its diff_id but
/// not yet visible (see [`Snapshotter::stage`]); dropping it removes it.
#[derive(Debug)]
pub struct Staged {
    dir: tempfile::TempDir,
    diff_id: Digest,
    /// Directories the archive implied (see `unpack::unpack_deferred`).
    implied: Implied,
}

impl Staged {
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    fn fs(&self) -> PathBuf {
        self.dir.path().join("fs")
    }
}

/// How an idmapped view shows its layers.
pub struct Idmap<'a> {
    /// Turns a layer directory into a detached, idmapped mount of it.
    pub map_layer: &'a dyn Fn(&Path) -> io::Result<std::os::fd::OwnedFd>,
    /// The host uid and gid of the container's root: owner of the upper dir.
    pub root_owner: (u32, u32),
}

/// See [`Snapshotter::hold_views`].
#[derive(Debug)]
pub struct ViewsGuard {
    _lock: fs::File,
}

/// A container's root filesystem.
#[derive(Debug, Clone)]
pub struct View {
    pub id: String,
    pub chain_id: Digest,
    pub rootfs: PathBuf,
    /// false: a plain copy (overlay could not be mounted).
    pub overlay: bool,
}

fn ioe(p: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(p, e)
}

impl Snapshotter {
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for d in ["layers", "l", "views", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ioe(&p))?;
        }
        Ok(Snapshotter {
            views: root.join("views"),
            root,
            overlay: true,
        })
    }

    /// Keeps views (containers' root filesystems and their writes) in `dir`
    /// instead of `<root>/views`: on a filesystem of their own, so image
    /// and container usage can be told apart (a split image filesystem).
    pub fn set_views_dir(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(ioe(&dir))?;
        self.views = dir;
        Ok(())
    }

    /// Where views live.
    pub fn views_dir(&self) -> &Path {
        &self.views
    }

    /// Whether views try overlayfs first (default) or always copy.
    pub fn set_overlay(&mut self, on: bool) {
        self.overlay = on;
    }

    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// The unpacked files of a layer (its own, not the layers below).
    pub fn layer_path(&self, chain: &Digest) -> PathBuf {
        self.layer_dir(chain).join("fs")
    }

    pub fn has_layer(&self, chain: &Digest) -> bool {
        self.layer_dir(chain).join("diff_id").is_file()
    }

    pub fn parent(&self, chain: &Digest) -> Result<Option<Digest>> {
        if !self.has_layer(chain) {
            return Err(Error::NotFound(format!("layer {chain}")));
        }
        let p = self.layer_dir(chain).join("parent");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(Digest::parse(s.trim())?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// The chain IDs from `chain` down to the base layer.
    pub fn ancestry(&self, chain: &Digest) -> Result<Vec<Digest>> {
        let mut out = vec![chain.clone()];
        while let Some(p) = self.parent(out.last().unwrap())? {
            out.push(p);
        }
        Ok(out)
    }

    /// Unpacks the layer read from `r` (compressed or not) on top of
    /// `parent`, unless that chain is already present, and returns its chain
    /// ID. The stream is verified against `diff_id`; on any error nothing is
    /// left behind. ([`Snapshotter::stage`] then [`Snapshotter::publish`].)
    pub fn apply(
        &self,
        parent: Option<&Digest>,
        diff_id: &Digest,
        media_type: Option<&str>,
        r: impl Read,
    ) -> Result<Digest> {
        let chain = Digest::chain(parent, diff_id);
        if self.has_layer(&chain) {
            return Ok(chain);
        }
        if let Some(p) = parent.filter(|p| !self.has_layer(p)) {
            return Err(Error::NotFound(format!("parent layer {p}")));
        }
        let staged = self.stage(diff_id, media_type, r)?;
        self.publish(parent, staged)
    }

    /// Unpacks the layer read from `r` into a staging dir under `tmp/`,
    /// checking the stream against `diff_id`. Needs no lower layer, so
    /// layers of one image can be staged in parallel, while they download.
    /// Nothing uses the result until [`Snapshotter::publish`]; dropping
    /// it (on any error, for example the download's own digest being
    /// wrong) removes the staging dir.
    pub fn stage(
        &self,
        diff_id: &Digest,
        media_type: Option<&str>,
        r: impl Read,
    ) -> Result<Staged> {
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(ioe(&self.root.join("tmp")))?;
        let fs_dir = tmp.path().join("fs");
        fs::create_dir(&fs_dir).map_err(ioe(&fs_dir))?;
        let (_, implied) = unpack_deferred(r, media_type, &fs_dir, diff_id)?;
        Ok(Staged {
            dir: tmp,
            diff_id: diff_id.clone(),
            implied,
        })
    }

    /// Puts a staged layer in place on top of `parent` (which must be
    /// present) under its chain ID and returns that. Directories the layer
    /// implied take mode and owner from the layers below only now, as
    /// those may have been staged alongside it: publishing in chain order
    /// gives what a sequential unpack gives. A layer writing through a
    /// symlink of the layers below (an implied directory that is a symlink
    /// there) is refused, naming the entry and the symlink, and removed.
    pub fn publish(&self, parent: Option<&Digest>, staged: Staged) -> Result<Digest> {
        let chain = Digest::chain(parent, &staged.diff_id);
        if self.has_layer(&chain) {
            return Ok(chain);
        }
        if let Some(p) = parent.filter(|p| !self.has_layer(p)) {
            return Err(Error::NotFound(format!("parent layer {p}")));
        }
        if !staged.implied.first.is_empty() {
            let lowers = self.lower_paths(parent)?;
            check_through(&staged.fs(), &staged.implied.first, &lowers)?;
            inherit_implied(&staged.fs(), &staged.implied.dirs, &lowers)?;
        }
        let tmp = staged.dir;
        let write = |name: &str, s: String| {
            let p = tmp.path().join(name);
            fs::write(&p, s).map_err(ioe(&p))
        };
        write("diff_id", staged.diff_id.to_string())?;
        if let Some(p) = parent {
            write("parent", p.to_string())?;
        }
        let link = self.new_link(&chain)?;
        write("link", link.clone())?;
        let dest = self.layer_dir(&chain);
        if let Err(e) = fs::rename(tmp.path(), &dest) {
            let _ = fs::remove_file(self.root.join("l").join(&link));
            // Someone else unpacked the same chain meanwhile: theirs wins.
            if self.has_layer(&chain) {
                return Ok(chain);
            }
            return Err(Error::io(&dest, e));
        }
        let _ = tmp.keep();
        Ok(chain)
    }

    /// Publishes `staged` (bottom first) on top of `base`, each on the one
    /// before, and returns the top chain ID (`base` if none). Every layer
    /// is checked against the ones below it (see [`Snapshotter::publish`])
    /// before any is published, so a hostile layer high in the chain
    /// leaves none of the image's new layers behind.
    pub fn publish_all(
        &self,
        base: Option<&Digest>,
        staged: Vec<Staged>,
    ) -> Result<Option<Digest>> {
        let below = self.lower_paths(base)?;
        for (k, st) in staged.iter().enumerate() {
            let mut lowers: Vec<PathBuf> = staged[..k].iter().rev().map(Staged::fs).collect();
            lowers.extend(below.iter().cloned());
            check_through(&st.fs(), &st.implied.first, &lowers)?;
        }
        let mut top = base.cloned();
        for st in staged {
            top = Some(self.publish(top.as_ref(), st)?);
        }
        Ok(top)
    }

    /// The `fs` dirs of `top` and the layers below it, top first.
    fn lower_paths(&self, top: Option<&Digest>) -> Result<Vec<PathBuf>> {
        Ok(match top {
            Some(p) => self
                .ancestry(p)?
                .iter()
                .map(|c| self.layer_path(c))
                .collect(),
            None => Vec::new(),
        })
    }

    /// Allocates `l/<n>` pointing at the layer's `fs`.
    fn new_link(&self, chain: &Digest) -> Result<String> {
        let l = self.root.join("l");
        let mut n = fs::read_dir(&l).map_err(ioe(&l))?.count() + 1;
        loop {
            let name = n.to_string();
            let target = format!("../layers/{}/fs", chain.hex());
            match symlink(&target, l.join(&name)) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(Error::io(l.join(&name), e)),
            }
        }
    }

    fn link_of(&self, chain: &Digest) -> Result<String> {
        let p = self.layer_dir(chain).join("link");
        Ok(fs::read_to_string(&p).map_err(ioe(&p))?.trim().to_string())
    }

    fn view_dir(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(Error::invalid(
                format!("view id {id:?}"),
                "must be a plain name",
            ));
        }
        Ok(self.views.join(id))
    }

    /// Creates view `id` of the image whose top layer is `chain`: an overlay
    /// mount with its own upper and work dirs, or a copy if overlay fails.
    pub fn create_view(&self, id: &str, chain: &Digest) -> Result<View> {
        self.create_view_with(id, chain, None)
    }

    /// A shared lock that [`Snapshotter::gc`] waits for (it takes it
    /// exclusively): hold it from reading a chain's layers until the view
    /// using them is recorded (its `chain` file written). Across
    /// processes too (a `flock` on `<root>/views.lock`); released on drop.
    pub fn hold_views(&self) -> Result<ViewsGuard> {
        self.views_lock(rfs::FlockOperation::LockShared)
    }

    fn views_lock(&self, op: rfs::FlockOperation) -> Result<ViewsGuard> {
        let p = self.root.join("views.lock");
        let f = fs::File::create(&p).map_err(ioe(&p))?;
        rfs::flock(&f, op).map_err(|e| Error::io(&p, e))?;
        Ok(ViewsGuard { _lock: f })
    }

    /// [`Snapshotter::create_view`], idmapped when `idmap` is given. Holds
    /// [`Snapshotter::hold_views`] meanwhile, so a concurrent `gc` cannot
    /// remove its layers before the view is recorded.
    pub fn create_view_with(
        &self,
        id: &str,
        chain: &Digest,
        idmap: Option<&Idmap>,
    ) -> Result<View> {
        let _g = self.hold_views()?;
        let lowers = self.ancestry(chain)?;
        let dir = self.view_dir(id)?;
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::invalid(format!("view {id}"), "already exists"),
            _ => Error::io(&dir, e),
        })?;
        let r = match idmap {
            Some(m) => self
                .populate_idmapped(&dir, chain, &lowers, m)
                .map(|()| true),
            None => self.populate_view(&dir, chain, &lowers),
        };
        match r {
            Ok(overlay) => Ok(View {
                id: id.to_string(),
                chain_id: chain.clone(),
                rootfs: dir.join("rootfs"),
                overlay,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn populate_view(&self, dir: &Path, chain: &Digest, lowers: &[Digest]) -> Result<bool> {
        fs::write(dir.join("chain"), chain.to_string()).map_err(ioe(dir))?;
        let rootfs = dir.join("rootfs");
        fs::create_dir(&rootfs).map_err(ioe(&rootfs))?;
        if self.overlay {
            for d in ["upper", "work"] {
                fs::create_dir(dir.join(d)).map_err(ioe(dir))?;
            }
            let links = lowers
                .iter()
                .map(|c| self.link_of(c))
                .collect::<Result<Vec<_>>>()?;
            if self.mount_overlay(dir, &links).is_ok() {
                fs::write(dir.join("mode"), "overlay").map_err(ioe(dir))?;
                return Ok(true);
            }
            let _ = fs::remove_dir_all(dir.join("upper"));
            let _ = fs::remove_dir_all(dir.join("work"));
        }
        for c in lowers.iter().rev() {
            copy_layer(&self.layer_path(c), &rootfs)?;
        }
        fs::write(dir.join("mode"), "copy").map_err(ioe(dir))?;
        Ok(false)
    }

    fn populate_idmapped(
        &self,
        dir: &Path,
        chain: &Digest,
        lowers: &[Digest],
        m: &Idmap,
    ) -> Result<()> {
        use rustix::mount::{self as rm, FsMountFlags, FsOpenFlags, MountAttrFlags};
        fs::write(dir.join("chain"), chain.to_string()).map_err(ioe(dir))?;
        let rootfs = dir.join("rootfs");
        let upper = dir.join("upper");
        for d in [&rootfs, &upper, &dir.join("work")] {
            fs::create_dir(d).map_err(ioe(d))?;
        }
        // The merged root takes the upper dir's owner and mode.
        let top = self.layer_path(&lowers[0]);
        let mode = fs::metadata(&top).map_err(ioe(&top))?.mode() & 0o7777;
        let (uid, gid) = m.root_owner;
        std::os::unix::fs::chown(&upper, Some(uid), Some(gid)).map_err(ioe(&upper))?;
        fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(ioe(&upper))?;
        let err = |what: &str, e: io::Error| {
            Error::io(
                &rootfs,
                io::Error::new(e.kind(), format!("idmapped overlay: {what}: {e}")),
            )
        };
        let fsfd = rm::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| err("fsopen", e.into()))?;
        // Top layer first, as in a lowerdir list. The detached trees must
        // stay open until the mount is created: closing one dissolves it.
        let mut trees = Vec::with_capacity(lowers.len());
        for c in lowers {
            let p = self.layer_path(c);
            let tree = (m.map_layer)(&p).map_err(|e| err(&p.display().to_string(), e))?;
            rm::fsconfig_set_fd(&fsfd, "lowerdir+", &tree).map_err(|e| {
                err(
                    "lowerdir+ (layers by fd need Linux 6.13 or later)",
                    e.into(),
                )
            })?;
            trees.push(tree);
        }
        for (key, p) in [("upperdir", &upper), ("workdir", &dir.join("work"))] {
            rm::fsconfig_set_string(&fsfd, key, p.as_os_str()).map_err(|e| err(key, e.into()))?;
        }
        rm::fsconfig_create(&fsfd).map_err(|e| err("create", e.into()))?;
        drop(trees);
        let mnt = rm::fsmount(
            &fsfd,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::empty(),
        )
        .map_err(|e| err("fsmount", e.into()))?;
        rm::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            &rootfs,
            rm::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| err("move_mount", e.into()))?;
        fs::write(dir.join("mode"), "overlay").map_err(ioe(dir))?;
        Ok(())
    }

    fn mount_overlay(&self, dir: &Path, links: &[String]) -> Result<()> {
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            links.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let target = dir.join("rootfs");
        let l = self.root.join("l");
        let c =
            |s: &[u8]| CString::new(s).map_err(|_| Error::invalid(target.display(), "NUL in path"));
        let (ctarget, cdata, cl) = (
            c(target.as_os_str().as_bytes())?,
            c(data.as_bytes())?,
            c(l.as_os_str().as_bytes())?,
        );
        // Relative lowerdirs resolve against the cwd: change it only in a
        // thread that no longer shares its cwd with the rest of the process.
        let r = std::thread::spawn(move || -> io::Result<()> {
            unsafe {
                if libc::unshare(libc::CLONE_FS) != 0 || libc::chdir(cl.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let ov = c"overlay";
                if libc::mount(
                    ov.as_ptr(),
                    ctarget.as_ptr(),
                    ov.as_ptr(),
                    0,
                    cdata.as_ptr().cast(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| Error::invalid(target.display(), "mount thread panicked"))?;
        r.map_err(|e| Error::io(&target, e))
    }

    pub fn view(&self, id: &str) -> Result<View> {
        let dir = self.view_dir(id)?;
        let chain = fs::read_to_string(dir.join("chain")).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("view {id}")),
            _ => Error::io(&dir, e),
        })?;
        let mode = fs::read_to_string(dir.join("mode")).unwrap_or_default();
        Ok(View {
            id: id.to_string(),
            chain_id: Digest::parse(chain.trim())?,
            rootfs: dir.join("rootfs"),
            overlay: mode == "overlay",
        })
    }

    pub fn views(&self) -> Result<Vec<View>> {
        let d = &self.views;
        let mut out = Vec::new();
        for e in fs::read_dir(d).map_err(ioe(d))? {
            let name = e.map_err(ioe(d))?.file_name();
            if let Ok(v) = self.view(&name.to_string_lossy()) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Unmounts and deletes a view (its upper dir: the container's writes).
    pub fn remove_view(&self, id: &str) -> Result<()> {
        let dir = self.view_dir(id)?;
        if !dir.exists() {
            return Err(Error::NotFound(format!("view {id}")));
        }
        let rootfs = dir.join("rootfs");
        // Whatever "mode" says (a crash may have come between mount and
        // writing it). EINVAL: not a mount point; ENOENT: no rootfs yet.
        let c = CString::new(rootfs.as_os_str().as_bytes()).unwrap_or_default();
        if unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) } != 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                return Err(Error::io(&rootfs, e));
            }
        }
        // Never delete through a mount we failed to remove.
        let (dm, rm) = (fs::metadata(&dir), fs::symlink_metadata(&rootfs));
        if let (Ok(dm), Ok(rm)) = (dm, rm) {
            if dm.dev() != rm.dev() {
                return Err(Error::InUse {
                    what: rootfs.display().to_string(),
                    by: "a mount".into(),
                });
            }
        }
        fs::remove_dir_all(&dir).map_err(ioe(&dir))
    }

    /// Layers and views using layer `chain`.
    pub fn users(&self, chain: &Digest) -> Result<Vec<String>> {
        let mut users = Vec::new();
        for v in self.views()? {
            if self.ancestry(&v.chain_id)?.contains(chain) {
                users.push(format!("view {}", v.id));
            }
        }
        for c in self.layers()? {
            if self.parent(&c)?.as_ref() == Some(chain) {
                users.push(format!("layer {c}"));
            }
        }
        Ok(users)
    }

    pub fn layers(&self) -> Result<Vec<Digest>> {
        let d = self.root.join("layers");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(ioe(&d))? {
            let name = e.map_err(ioe(&d))?.file_name();
            if let Ok(c) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) {
                if self.has_layer(&c) {
                    out.push(c);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a layer nothing uses.
    pub fn remove_layer(&self, chain: &Digest) -> Result<()> {
        let users = self.users(chain)?;
        if !users.is_empty() {
            return Err(Error::InUse {
                what: format!("layer {chain}"),
                by: users.join(", "),
            });
        }
        let dir = self.layer_dir(chain);
        let link = self.link_of(chain)?;
        // Move it out of sight first so a half-deleted layer is never used.
        let doomed = self.root.join("tmp").join(format!("rm-{}", chain.hex()));
        fs::rename(&dir, &doomed).map_err(ioe(&dir))?;
        let _ = fs::remove_file(self.root.join("l").join(link));
        fs::remove_dir_all(&doomed).map_err(ioe(&doomed))
    }

    /// Removes every layer that neither `keep` (image top layers) nor a view
    /// needs, and leftovers of interrupted unpacks. Returns removed layers.
    /// Waits for views being created (see [`Snapshotter::hold_views`]).
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<Vec<Digest>> {
        let _g = self.views_lock(rfs::FlockOperation::LockExclusive)?;
        let mut needed = HashSet::new();
        let tops = keep
            .iter()
            .filter(|c| self.has_layer(c))
            .cloned()
            .chain(self.views()?.into_iter().map(|v| v.chain_id));
        for top in tops {
            needed.extend(self.ancestry(&top)?);
        }
        let mut removed = Vec::new();
        // Children before parents: keep removing until nothing changes.
        loop {
            let mut progress = false;
            for c in self.layers()? {
                if !needed.contains(&c) && self.users(&c)?.is_empty() {
                    self.remove_layer(&c)?;
                    removed.push(c);
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(ioe(&tmp))? {
            let _ = fs::remove_dir_all(e.map_err(ioe(&tmp))?.path());
        }
        Ok(removed)
    }

    /// Bytes on disk of a layer's own files.
    pub fn layer_usage(&self, chain: &Digest) -> Result<u64> {
        if !self.has_layer(chain) {
            return Err(Error::NotFound(format!("layer {chain}")));
        }
        disk_usage(&self.layer_path(chain))
    }

    /// Bytes on disk of what a view adds to its layers (the overlay upper,
    /// or the whole copy).
    pub fn view_usage(&self, id: &str) -> Result<u64> {
        let v = self.view(id)?;
        let dir = self.view_dir(id)?;
        disk_usage(&dir.join(if v.overlay { "upper" } else { "rootfs" }))
    }
}

/// Space used under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes.
    pub bytes: u64,
    pub inodes: u64,
}

/// Allocated bytes under `p`, each inode counted once (see [`usage`]).
pub fn disk_usage(p: &Path) -> Result<u64> {
    usage(p).map(|u| u.bytes)
}

/// Allocated bytes and inodes under `p`, each inode counted once. The walk
/// stays on `p`'s filesystem: a mount below it (a view's overlay rootfs
/// shows its layers, counted where they are stored) is not entered, and
/// files that vanish meanwhile (a gc, a view removed) are skipped.
pub fn usage(p: &Path) -> Result<Usage> {
    fn walk(p: &Path, dev: u64, seen: &mut HashSet<u64>, u: &mut Usage) -> Result<()> {
        let m = match fs::symlink_metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            r => r.map_err(ioe(p))?,
        };
        if m.dev() != dev || (m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino())) {
            return Ok(());
        }
        u.bytes += m.blocks() * 512;
        u.inodes += 1;
        if m.is_dir() {
            let entries = match fs::read_dir(p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                r => r.map_err(ioe(p))?,
            };
            for e in entries {
                match e {
                    Ok(e) => walk(&e.path(), dev, seen, u)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(p, e)),
                }
            }
        }
        Ok(())
    }
    let dev = fs::symlink_metadata(p).map_err(ioe(p))?.dev();
    let mut u = Usage::default();
    walk(p, dev, &mut HashSet::new(), &mut u)?;
    Ok(u)
}

/// Copies one unpacked layer onto `dest` as overlayfs would show it:
/// whiteout devices delete, opaque directories hide what was below, a
/// directory replaces a non-directory (never followed if a symlink).
/// Hardlinks within the layer stay hardlinks.
pub(crate) fn copy_layer(src: &Path, dest: &Path) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_dir(src, dest, &mut links)?;
    copy_meta(src, dest, &fs::symlink_metadata(src).map_err(ioe(src))?)
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    FileType::from_raw_mode(m.mode()) == FileType::CharacterDevice && m.rdev() == 0
}

fn copy_dir(src: &Path, dest: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    for e in fs::read_dir(src).map_err(ioe(src))? {
        let e = e.map_err(ioe(src))?;
        let (s, d) = (e.path(), dest.join(e.file_name()));
        let m = fs::symlink_metadata(&s).map_err(ioe(&s))?;
        let existing = fs::symlink_metadata(&d).ok();
        if is_whiteout(&m) {
            remove_any(&d, existing.as_ref())?;
            continue;
        }
        if m.is_dir() {
            let opaque = matches!(xattr(&s, "trusted.overlay.opaque"), Some(v) if v == b"y");
            match &existing {
                Some(x) if x.is_dir() && !opaque => {}
                _ => {
                    remove_any(&d, existing.as_ref())?;
                    fs::create_dir(&d).map_err(ioe(&d))?;
                }
            }
            copy_dir(&s, &d, links)?;
            copy_meta(&s, &d, &m)?;
            continue;
        }
        remove_any(&d, existing.as_ref())?;
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &d).map_err(ioe(&d))?;
                continue;
            }
            links.insert((m.dev(), m.ino()), d.clone());
        }
        let ft = FileType::from_raw_mode(m.mode());
        match ft {
            FileType::RegularFile => {
                // `d` was removed above: create_new cannot follow a symlink.
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&d)
                    .map_err(ioe(&d))?;
                io::copy(&mut fs::File::open(&s).map_err(ioe(&s))?, &mut out).map_err(ioe(&d))?;
            }
            FileType::Symlink => {
                symlink(fs::read_link(&s).map_err(ioe(&s))?, &d).map_err(ioe(&d))?;
            }
            _ => {
                rfs::mknodat(rfs::CWD, &d, ft, Mode::from_bits_truncate(0o600), m.rdev())
                    .map_err(|e| Error::io(&d, e))?;
            }
        }
        copy_meta(&s, &d, &m)?;
    }
    Ok(())
}

fn remove_any(p: &Path, m: Option<&fs::Metadata>) -> Result<()> {
    match m {
        None => Ok(()),
        Some(m) if m.is_dir() => fs::remove_dir_all(p).map_err(ioe(p)),
        Some(_) => fs::remove_file(p).map_err(ioe(p)),
    }
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rfs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn copy_meta(src: &Path, d: &Path, m: &fs::Metadata) -> Result<()> {
    let e = |err: rustix::io::Errno| Error::io(d, err);
    let nofollow = AtFlags::SYMLINK_NOFOLLOW;
    rfs::chownat(
        rfs::CWD,
        d,
        Some(rfs::Uid::from_raw(m.uid())),
        Some(rfs::Gid::from_raw(m.gid())),
        nofollow,
    )
    .map_err(e)?;
    let symlink = m.file_type().is_symlink();
    if !symlink {
        rfs::chmodat(
            rfs::CWD,
            d,
            Mode::from_bits_truncate(m.mode() & 0o7777),
            AtFlags::empty(),
        )
        .map_err(e)?;
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rfs::llistxattr(src, &mut names) {
            for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                if name.starts_with(b"trusted.overlay.") {
                    continue; // overlay markers, already applied
                }
                let name = std::ffi::OsStr::from_bytes(name);
                let mut v = vec![0u8; 64 * 1024];
                if let Ok(len) = rfs::lgetxattr(src, name, &mut v) {
                    rfs::lsetxattr(d, name, &v[..len], rfs::XattrFlags::empty()).map_err(e)?;
                }
            }
        }
    }
    let ts = |s: i64, ns: i64| Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = Timestamps {
        last_access: ts(m.atime(), m.atime_nsec()),
        last_modification: ts(m.mtime(), m.mtime_nsec()),
    };
    rfs::utimensat(rfs::CWD, d, &times, nofollow).map_err(e)
}
