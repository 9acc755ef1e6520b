//! Unpacking one layer tar into its own directory, safely.
//!
//! Every file is created relative to a directory fd, one path component at
//! a time with `O_NOFOLLOW`: a symlink in the archive (or planted by an
//! earlier entry) is never followed, `..` and absolute paths are refused,
//! so nothing can be written outside the layer directory. Whiteouts become
//! overlayfs markers (a 0/0 character device; `trusted.overlay.opaque=y`
//! on opaque directories) because each layer is an overlay lower of its own.
//! The uncompressed stream is hashed as it is read: that is the diff_id.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    self as rfs, AtFlags, Dev, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use crate::digest::DigestReader;
use crate::{Digest, Error, Result};

/// Extended headers (PAX, GNU long names) before one entry may not exceed
/// this: the tar crate reads them into memory.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type announces; unknown ones are
    /// refused rather than guessed.
    pub fn from_media_type(mt: &str) -> Result<Compression> {
        let bad = || Error::invalid(format!("media type {mt:?}"), "unsupported layer media type");
        if mt == "application/vnd.docker.image.rootfs.diff.tar.gzip" {
            return Ok(Compression::Gzip);
        }
        let base = mt.split_once('+').map_or(mt, |(b, _)| b);
        if !base.starts_with("application/vnd.oci.image.layer.")
            && !base.starts_with("application/vnd.docker.image.rootfs.")
            || !base.ends_with(".tar")
        {
            return Err(bad());
        }
        match mt.split_once('+').map(|(_, c)| c) {
            None => Ok(Compression::None),
            Some("gzip") => Ok(Compression::Gzip),
            Some("zstd") => Ok(Compression::Zstd),
            Some(_) => Err(bad()),
        }
    }

    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Its length in bytes.
    pub size: u64,
}

/// Unpacks the (possibly compressed) layer read from `r` into `dest`, an
/// existing directory. Compression is detected from the magic bytes; a
/// `media_type`, if given, must name a known layer type (docker archives
/// label uncompressed layers `.tar.gzip`, so the bytes decide). With
/// `expected_diff_id`, a mismatch is an error (the caller discards `dest`).
pub fn unpack(
    r: impl Read,
    media_type: Option<&str>,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
) -> Result<Unpacked> {
    unpack_onto(r, media_type, dest, expected_diff_id, Vec::new)
}

/// [`unpack`] for a layer that will sit on the layers `lowers` returns
/// (their unpacked directories, top first; asked for only if needed): a directory the archive implies without an entry of
/// its own takes its mode and owner from them, as it would if the layer
/// were applied onto their merged view (what umoci and docker do).
pub fn unpack_onto(
    r: impl Read,
    media_type: Option<&str>,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
    lowers: impl FnOnce() -> Vec<PathBuf>,
) -> Result<Unpacked> {
    unpack_with(
        r,
        media_type,
        dest,
        expected_diff_id,
        Lowers::Later(Box::new(lowers)),
    )
    .map(|(u, _)| u)
}

/// Directories a layer's archive used without an entry of its own, for
/// the checks and fixes that need the layers below ([`unpack_deferred`]).
#[derive(Debug, Default)]
pub(crate) struct Implied {
    /// Still implied at the end (no later entry of their own): they take
    /// mode, owner and xattrs from the layers below ([`inherit_implied`]).
    pub dirs: Vec<Vec<OsString>>,
    /// Every directory implied, with the entry that first implied it: none
    /// may be a symlink in the layers below ([`check_through`]).
    pub first: Vec<(Vec<OsString>, String)>,
}

/// [`unpack`] for a layer whose lower layers may not be unpacked yet (a
/// pull unpacks layers in parallel): directories the archive implies are
/// made 0755 root and returned, for [`check_through`] and
/// [`inherit_implied`] once the lowers are in place.
pub(crate) fn unpack_deferred(
    r: impl Read,
    media_type: Option<&str>,
    dest: &Path,
    expected_diff_id: &Digest,
) -> Result<(Unpacked, Implied)> {
    unpack_with(
        r,
        media_type,
        dest,
        Some(expected_diff_id),
        Lowers::Deferred(Vec::new()),
    )
}

fn unpack_with(
    r: impl Read,
    media_type: Option<&str>,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
    lowers: Lowers<'_>,
) -> Result<(Unpacked, Implied)> {
    if let Some(mt) = media_type {
        Compression::from_media_type(mt)?;
    }
    let mut r = r;
    let mut magic = Vec::with_capacity(4);
    (&mut r)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| Error::io(dest, e))?;
    let kind = Compression::sniff(&magic);
    let stream = io::Cursor::new(magic).chain(r);
    let decoded: Box<dyn Read> = match kind {
        Compression::None => Box::new(stream),
        // Multi-member: parallel compressors (pigz) may emit several.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::Decoder::new(stream).map_err(|e| Error::io(dest, e))?),
    };
    let root = rfs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dest, e))?;
    let left = Rc::new(Cell::new(u64::MAX));
    let tripped = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(Budget {
        inner: DigestReader::new(decoded),
        left: left.clone(),
        tripped: tripped.clone(),
    });
    let mut u = Unpacker {
        root,
        dirs: Vec::new(),
        cache: None,
        lowers,
        current: String::new(),
        first: Vec::new(),
    };
    let mut prev = String::from("(start of archive)");
    {
        let mut entries = archive.entries().map_err(|e| Error::entry(&prev, e))?;
        loop {
            left.set(MAX_HEADER_BYTES);
            let next = entries.next();
            left.set(u64::MAX);
            let mut entry = match next {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(_)) if tripped.get() => {
                    return Err(Error::entry(
                        format!("after {prev}"),
                        format!("extended headers exceed {MAX_HEADER_BYTES} bytes"),
                    ))
                }
                Some(Err(e)) => return Err(Error::entry(format!("after {prev}"), e)),
            };
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            u.current.clone_from(&name);
            u.entry(&mut entry)
                .map_err(|msg| Error::entry(&name, msg))?;
            io::copy(&mut entry, &mut io::sink()).map_err(|e| Error::entry(&name, e))?;
            prev = name;
        }
    }
    u.finish_dirs().map_err(|(d, msg)| Error::entry(d, msg))?;
    // The tar stream's trailer and padding are part of the diff_id.
    let budget = archive.into_inner();
    let mut hashing = budget.inner;
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io(dest, e))?;
    let (diff_id, size, _) = hashing.finish();
    if let Some(want) = expected_diff_id.filter(|w| **w != diff_id) {
        return Err(Error::Mismatch {
            what: format!("diff_id of layer unpacked into {}", dest.display()),
            expected: want.to_string(),
            actual: diff_id.to_string(),
        });
    }
    let implied = Implied {
        dirs: match u.lowers {
            Lowers::Deferred(v) => v,
            _ => Vec::new(),
        },
        first: u.first,
    };
    Ok((Unpacked { diff_id, size }, implied))
}

/// Refuses a layer (in `dest`) that writes through a symlink of the
/// layers below (`lowers`, top first): a directory it implies, e.g. `lnk`
/// for an entry `lnk/file` without an entry `lnk/` before it, must not be
/// a symlink there. (Unpacked alone, such a layer would silently shadow
/// the symlink with a directory; applied onto the merged tree, as other
/// runtimes do, it would write where the symlink points.) A layer that
/// replaces the symlink by an entry of its own is fine.
pub(crate) fn check_through(
    dest: &Path,
    first: &[(Vec<OsString>, String)],
    lowers: &[PathBuf],
) -> Result<()> {
    if first.is_empty() || lowers.is_empty() {
        return Ok(());
    }
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rfs::open(dest, flags, Mode::empty()).map_err(|e| Error::io(dest, e))?;
    for (comps, entry) in first {
        if let Some(msg) = lower_symlink(root.as_fd(), lowers, comps) {
            return Err(Error::entry(entry, msg));
        }
    }
    Ok(())
}

/// If the directory `comps`, which the layer at `layer` implied, is a
/// symlink in the merged view of `lowers` (top first): the refusal.
/// Only the last component is looked at: an implied parent is checked on
/// its own, and a parent the layer made itself replaced whatever was
/// below. A parent the layer made opaque hides the layers below.
fn lower_symlink(layer: BorrowedFd<'_>, lowers: &[PathBuf], comps: &[OsString]) -> Option<Msg> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (_, parents) = comps.split_last()?;
    let mut cur = layer.try_clone_to_owned().ok()?;
    for c in parents {
        cur = rfs::openat(&cur, c, flags, Mode::empty()).ok()?;
        if is_opaque(cur.as_fd()) {
            return None;
        }
    }
    // The directories that merge at each level, top first: an entry's
    // topmost occurrence decides its type; directories below it merge
    // until an opaque one, a non-directory hides the rest.
    let mut dirs: Vec<OwnedFd> = lowers
        .iter()
        .filter_map(|l| rfs::open(l, flags, Mode::empty()).ok())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let mut next = Vec::new();
        for d in &dirs {
            let st = match rfs::statat(d, c, AtFlags::SYMLINK_NOFOLLOW) {
                Err(_) => continue,
                Ok(st) => st,
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let Ok(fd) = rfs::openat(d, c, flags, Mode::empty()) else {
                        break;
                    };
                    let opaque = is_opaque(fd.as_fd());
                    next.push(fd);
                    if opaque {
                        break;
                    }
                }
                FileType::Symlink if next.is_empty() && i == comps.len() - 1 => {
                    let target = rfs::readlinkat(d, c, Vec::new())
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Some(format!(
                        "{} is a symlink (-> {target}) in a layer below: refusing to write through it",
                        show(comps)
                    ));
                }
                _ => break,
            }
        }
        if next.is_empty() {
            return None;
        }
        dirs = next;
    }
    None
}

/// Gives the directories `implied` (from [`unpack_deferred`]) of the
/// layer in `dest` the mode, owner and xattrs they have in `lowers` (top first),
/// as [`unpack_onto`] would have at creation. One the archive replaced
/// since (no longer a directory) is skipped.
pub(crate) fn inherit_implied(
    dest: &Path,
    implied: &[Vec<OsString>],
    lowers: &[PathBuf],
) -> Result<()> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rfs::open(dest, flags, Mode::empty()).map_err(|e| Error::io(dest, e))?;
    'dirs: for comps in implied {
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        let (mode, owner, xattrs) = inherited(lowers, comps);
        let Some((uid, gid)) = owner else { continue };
        let mut dir = root.try_clone().map_err(|e| Error::io(dest, e))?;
        for c in parents {
            match rfs::openat(&dir, c, flags, Mode::empty()) {
                Ok(fd) => dir = fd,
                Err(_) => continue 'dirs,
            }
        }
        // Checked to be a directory (not a symlink) before chmodat, which
        // follows; nothing else writes to a layer being unpacked.
        let is_dir = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if !is_dir {
            continue;
        }
        let e = |e: Errno| Error::entry(show(comps), err(e));
        rfs::chownat(&dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(e)?;
        rfs::chmodat(&dir, name, mode, AtFlags::empty()).map_err(e)?;
        set_xattrs(dir.as_fd(), name, &xattrs).map_err(|m| Error::entry(show(comps), m))?;
    }
    Ok(())
}

/// Caps how much the tar parser may read between two entries.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            self.tripped.set(true);
            return Err(io::Error::other("extended headers too large"));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if left != u64::MAX {
            self.left.set(left - n as u64);
        }
        Ok(n)
    }
}

/// Splits an archive path into components, refusing absolute paths and
/// `..` (`.` and empty components are dropped).
fn components(p: &[u8]) -> std::result::Result<Vec<OsString>, String> {
    if p.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    // Bounds the depth of the tree (recursive removal and copies).
    if p.len() >= libc::PATH_MAX as usize {
        return Err(format!("path longer than {} bytes", libc::PATH_MAX));
    }
    let mut out = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains \"..\"".into()),
            _ => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn show(comps: &[OsString]) -> String {
    let v: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    v.join("/")
}

type Msg = String;

struct Unpacker<'a> {
    root: OwnedFd,
    /// Directories whose mtime is set last (creating children changes it).
    dirs: Vec<(Vec<OsString>, Timestamps)>,
    /// The last parent directory resolved (entries come grouped by dir).
    cache: Option<(Vec<OsString>, OwnedFd)>,
    /// The layers below, top first (for directories the archive implies).
    lowers: Lowers<'a>,
    /// The entry being unpacked (its name, for errors found later).
    current: String,
    /// See [`Implied::first`].
    first: Vec<(Vec<OsString>, String)>,
}

enum Lowers<'a> {
    Later(Box<dyn FnOnce() -> Vec<PathBuf> + 'a>),
    Known(Vec<PathBuf>),
    /// Not there yet: the directories that need them, in order.
    Deferred(Vec<Vec<OsString>>),
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> std::result::Result<(), Msg> {
        let comps = components(&e.path_bytes())?;
        let h = e.header().clone();
        let kind = h.entry_type();
        let mode = Mode::from_bits_truncate(h.mode().map_err(|e| e.to_string())? & 0o7777);
        let uid = u32::try_from(h.uid().map_err(|e| e.to_string())?).map_err(|_| "uid overflow")?;
        let gid = u32::try_from(h.gid().map_err(|e| e.to_string())?).map_err(|_| "gid overflow")?;
        let mut xattrs = Vec::new();
        let mut mtime = Timespec {
            tv_sec: h.mtime().map_err(|e| e.to_string())? as i64,
            tv_nsec: 0,
        };
        if let Some(pax) = e.pax_extensions().map_err(|e| e.to_string())? {
            for ext in pax {
                let ext = ext.map_err(|e| e.to_string())?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((
                        OsString::from_vec(name.to_vec()),
                        ext.value_bytes().to_vec(),
                    ));
                } else if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes()).ok_or("bad PAX mtime")?;
                }
            }
        }
        let times = Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };

        let Some((name, parent_comps)) = comps.split_last() else {
            // "./": the layer root itself.
            if !kind.is_dir() {
                return Err("the layer root must be a directory".into());
            }
            let fd = rfs::openat(
                &self.root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(err)?;
            rfs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))).map_err(err)?;
            rfs::fchmod(&fd, mode).map_err(err)?;
            self.dirs.push((Vec::new(), times));
            return Ok(());
        };
        let name_s = name.as_bytes();
        if name_s == OPAQUE.as_bytes() {
            let dir = self.parent(parent_comps, true)?;
            let proc = proc_path(dir.as_fd(), None);
            rfs::setxattr(&proc, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(err)?;
            return Ok(());
        }
        if name_s.starts_with(b".wh..wh.") {
            return Ok(()); // aufs bookkeeping (e.g. .wh..wh.plnk): not content
        }
        if let Some(target) = name_s.strip_prefix(WHITEOUT.as_bytes()) {
            if matches!(target, b"" | b"." | b"..") {
                return Err("invalid whiteout".into());
            }
            let dir = self.parent(parent_comps, true)?;
            let target = OsStr::from_bytes(target);
            self.remove(dir.as_fd(), target, false)?;
            rfs::mknodat(
                &dir,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                rfs::makedev(0, 0),
            )
            .map_err(err)?;
            return Ok(());
        }

        let dir = self.parent(parent_comps, true)?;
        let name = name.as_os_str();
        let keep_dir = kind.is_dir();
        self.remove(dir.as_fd(), name, keep_dir)?;
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        match kind {
            tar::EntryType::Directory => {
                match rfs::mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                let fd = rfs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err)?;
                rfs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(gid))).map_err(err)?;
                rfs::fchmod(&fd, mode).map_err(err)?;
                set_xattrs(dir.as_fd(), name, &xattrs)?;
                let mut path = parent_comps.to_vec();
                path.push(name.to_owned());
                // Listed after all: its own mode and owner stand.
                if let Lowers::Deferred(v) = &mut self.lowers {
                    v.retain(|p| *p != path);
                }
                self.dirs.push((path, times));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rfs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(err)?;
                let mut f = std::fs::File::from(fd);
                io::copy(e, &mut f).map_err(|e| e.to_string())?;
                rfs::fchown(&f, Some(uid_of(uid)), Some(gid_of(gid))).map_err(err)?;
                // After chown, which clears setuid/setgid bits.
                rfs::fchmod(&f, mode).map_err(err)?;
                set_xattrs(dir.as_fd(), name, &xattrs)?;
                rfs::futimens(&f, &times).map_err(err)?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name_bytes().ok_or("symlink without a target")?;
                rfs::symlinkat(OsStr::from_bytes(&target), &dir, name).map_err(err)?;
                rfs::chownat(&dir, name, Some(uid_of(uid)), Some(gid_of(gid)), nofollow)
                    .map_err(err)?;
                rfs::utimensat(&dir, name, &times, nofollow).map_err(err)?;
            }
            tar::EntryType::Link => {
                let target = e.link_name_bytes().ok_or("hardlink without a target")?;
                let tcomps = components(&target).map_err(|m| format!("hardlink target: {m}"))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err("hardlink to the layer root".into());
                };
                let tdir = self
                    .parent(tparent, false)
                    .map_err(|m| format!("hardlink target {}: {m}", show(&tcomps)))?;
                // Flags 0: link the entry itself, never what a symlink names.
                rfs::linkat(&tdir, tname, &dir, name, AtFlags::empty()).map_err(|e| {
                    format!(
                        "hardlink target {} (must be in this layer): {e}",
                        show(&tcomps)
                    )
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                // A fifo has no device number (writers leave the fields blank).
                let dev: Dev = if ft == FileType::Fifo {
                    0
                } else {
                    let major = h.device_major().map_err(|e| e.to_string())?.unwrap_or(0);
                    let minor = h.device_minor().map_err(|e| e.to_string())?.unwrap_or(0);
                    rfs::makedev(major, minor)
                };
                rfs::mknodat(&dir, name, ft, Mode::from_bits_truncate(0o600), dev).map_err(err)?;
                rfs::chownat(&dir, name, Some(uid_of(uid)), Some(gid_of(gid)), nofollow)
                    .map_err(err)?;
                // mknodat made `name` just now: chmodat cannot meet a symlink.
                rfs::chmodat(&dir, name, mode, AtFlags::empty()).map_err(err)?;
                set_xattrs(dir.as_fd(), name, &xattrs)?;
                rfs::utimensat(&dir, name, &times, nofollow).map_err(err)?;
            }
            tar::EntryType::XGlobalHeader => {}
            other => return Err(format!("unsupported entry type {other:?}")),
        }
        Ok(())
    }

    /// Opens the directory `comps` below the root without following any
    /// symlink; with `create`, missing directories are made (0755, root).
    fn parent(&mut self, comps: &[OsString], create: bool) -> std::result::Result<OwnedFd, Msg> {
        if let Some((p, fd)) = &self.cache {
            if p.as_slice() == comps {
                return fd.try_clone().map_err(|e| e.to_string());
            }
        }
        let mut cur = self.root.try_clone().map_err(|e| e.to_string())?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rfs::openat(&cur, c, flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    let (mode, owner, xattrs) = self.implicit_dir(&comps[..=i])?;
                    match rfs::mkdirat(&cur, c, mode) {
                        Ok(()) => {
                            if let Some((uid, gid)) = owner {
                                rfs::chownat(
                                    &cur,
                                    c,
                                    Some(uid),
                                    Some(gid),
                                    AtFlags::SYMLINK_NOFOLLOW,
                                )
                                .map_err(err)?;
                                rfs::chmodat(&cur, c, mode, AtFlags::empty()).map_err(err)?;
                                set_xattrs(cur.as_fd(), c, &xattrs)?;
                            }
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(err(e)),
                    }
                    rfs::openat(&cur, c, flags, Mode::empty())
                }
                r => r,
            };
            cur = match next {
                Ok(fd) => fd,
                Err(e) => {
                    let at = show(&comps[..=i]);
                    let is_link = rfs::statat(&cur, c, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(if is_link {
                        format!("{at} is a symlink: refusing to write through it")
                    } else if e == Errno::NOTDIR {
                        format!("{at} is not a directory")
                    } else {
                        format!("{at}: {e}")
                    });
                }
            };
        }
        let keep = cur.try_clone().map_err(|e| e.to_string())?;
        self.cache = Some((comps.to_vec(), keep));
        Ok(cur)
    }

    /// Removes whatever `name` is, unless it is a directory and `keep_dir`
    /// (a later directory entry only updates an earlier one's metadata).
    fn remove(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        keep_dir: bool,
    ) -> std::result::Result<(), Msg> {
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(()),
            r => r.map_err(err)?,
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(());
            }
            self.cache = None;
            remove_tree(dir, name).map_err(err)
        } else {
            rfs::unlinkat(dir, name, AtFlags::empty()).map_err(err)
        }
    }

    /// Mode and owner for a directory the archive uses without listing it:
    /// those of the same directory in the layers below (as it would look
    /// through the overlay), else 0755 root. Looked up through fds, never
    /// following a symlink; a whiteout, non-directory or opaque directory
    /// on the way hides the layers further down. A symlink there is refused
    /// (see [`check_through`]; checked later for a deferred unpack).
    fn implicit_dir(&mut self, comps: &[OsString]) -> std::result::Result<Inherited, Msg> {
        // Only a missing directory is implied, so repeats are rare (one
        // removed and implied again) and harmless: no dedup scan.
        self.first.push((comps.to_vec(), self.current.clone()));
        if let Lowers::Deferred(v) = &mut self.lowers {
            if !v.iter().any(|p| p.as_slice() == comps) {
                v.push(comps.to_vec());
            }
            return Ok((Mode::from_bits_truncate(0o755), None, Vec::new()));
        }
        if let Lowers::Later(_) = self.lowers {
            let Lowers::Later(f) = std::mem::replace(&mut self.lowers, Lowers::Known(Vec::new()))
            else {
                unreachable!()
            };
            self.lowers = Lowers::Known(f());
        }
        let Lowers::Known(lowers) = &self.lowers else {
            unreachable!()
        };
        if let Some(msg) = lower_symlink(self.root.as_fd(), lowers, comps) {
            return Err(msg);
        }
        Ok(inherited(lowers, comps))
    }

    fn finish_dirs(&mut self) -> std::result::Result<(), (String, Msg)> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, times) in dirs.iter().rev() {
            let r = match comps.split_last() {
                None => rfs::openat(
                    &self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .and_then(|fd| rfs::futimens(&fd, times))
                .map_err(err),
                Some((name, parent)) => self.parent(parent, false).and_then(|d| {
                    rfs::utimensat(&d, name, times, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
                }),
            };
            r.map_err(|m| (show(comps), m))?;
        }
        Ok(())
    }
}

/// What a directory a layer implies takes from the same directory below.
type Inherited = (Mode, Option<(rfs::Uid, rfs::Gid)>, Vec<(OsString, Vec<u8>)>);

/// Mode, owner and xattrs (those of overlay aside: an opaque marker
/// below says nothing about this layer) of directory `comps` in `lowers`
/// (top first): the topmost directory shows through an overlay, so an
/// implied one must carry what it carries.
fn inherited(lowers: &[PathBuf], comps: &[OsString]) -> Inherited {
    let default = (Mode::from_bits_truncate(0o755), None, Vec::new());
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    'lowers: for lower in lowers {
        let Ok(mut cur) = rfs::open(lower, flags, Mode::empty()) else {
            return default;
        };
        for (i, c) in comps.iter().enumerate() {
            match rfs::openat(&cur, c, flags, Mode::empty()) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    if i > 0 && is_opaque(cur.as_fd()) {
                        return default;
                    }
                    continue 'lowers;
                }
                Err(_) => return default,
            }
        }
        return match rfs::fstat(&cur) {
            Ok(st) => (
                Mode::from_bits_truncate(st.st_mode & 0o7777),
                Some((rfs::Uid::from_raw(st.st_uid), rfs::Gid::from_raw(st.st_gid))),
                dir_xattrs(cur.as_fd()),
            ),
            Err(_) => default,
        };
    }
    default
}

/// The xattrs of the directory `dir` (an O_PATH fd), overlay's aside.
fn dir_xattrs(dir: BorrowedFd<'_>) -> Vec<(OsString, Vec<u8>)> {
    let p = proc_path(dir, None);
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rfs::listxattr(&p, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0) {
        if name.is_empty() || name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let mut v = vec![0u8; 64 * 1024];
        if let Ok(len) = rfs::getxattr(&p, name, &mut v) {
            v.truncate(len);
            out.push((name.to_owned(), v));
        }
    }
    out
}

fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut v = [0u8; 2];
    matches!(rfs::getxattr(proc_path(dir, None), "trusted.overlay.opaque", &mut v), Ok(1) if v[0] == b'y')
}

fn err(e: Errno) -> Msg {
    io::Error::from(e).to_string()
}

fn uid_of(u: u32) -> rfs::Uid {
    rfs::Uid::from_raw(u)
}

fn gid_of(g: u32) -> rfs::Gid {
    rfs::Gid::from_raw(g)
}

/// A path to `name` in the directory `dir` that goes through the fd: for
/// calls without an *at variant (l*xattr), which do not follow `name`.
fn proc_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(n) = name {
        p.push(n);
    }
    p
}

fn set_xattrs(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattrs: &[(OsString, Vec<u8>)],
) -> std::result::Result<(), Msg> {
    for (k, v) in xattrs {
        match rfs::lsetxattr(proc_path(dir, Some(name)), k, v, XattrFlags::empty()) {
            // A namespace this filesystem or kernel lacks (e.g. security.selinux).
            Ok(()) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(format!("xattr {}: {}", k.to_string_lossy(), err(e))),
        }
    }
    Ok(())
}

/// Removes `name` in `dir` recursively, through fds only.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        r => return r,
    }
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for ent in rfs::Dir::read_from(&fd)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    for n in names {
        remove_tree(fd.as_fd(), &n)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let tv_nsec = digits.parse().ok()?;
    Some(Timespec { tv_sec, tv_nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert_eq!(
            components(b"./a//b/").unwrap(),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components("a/".repeat(3000).as_bytes()).is_err());
    }

    #[test]
    fn media_types() {
        use Compression::*;
        let oci = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(Compression::from_media_type(oci).unwrap(), None);
        assert_eq!(
            Compression::from_media_type(&format!("{oci}+gzip")).unwrap(),
            Gzip
        );
        assert_eq!(
            Compression::from_media_type(&format!("{oci}+zstd")).unwrap(),
            Zstd
        );
        assert!(Compression::from_media_type(&format!("{oci}+bzip2")).is_err());
        assert!(Compression::from_media_type("application/json").is_err());
    }

    #[test]
    fn pax_time() {
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
    }
}
