//! Content-addressed blob store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   committed blobs, verified, read-only
//! <root>/ingest/<hex>         writes in progress (flock'd by their writer)
//! ```
//! A blob appears under `blobs/` only by `rename` of a fully written, fsync'd
//! and verified ingest file, so readers never see partial content. An
//! interrupted write leaves its ingest file, which the next writer of the
//! same digest re-hashes and continues (or restarts if it is too long).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::digest::DigestWriter;
use crate::{Digest, Error, Result};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        for d in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn ingest_path(&self, d: &Digest) -> PathBuf {
        self.root.join("ingest").join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => Error::io(&p, e),
        })
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut v)
            .map_err(|e| Error::io(self.blob_path(d), e))?;
        Ok(v)
    }

    pub fn size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        Ok(self
            .open_blob(d)?
            .metadata()
            .map_err(|e| Error::io(&p, e))?
            .len())
    }

    /// Starts (or resumes) writing blob `d`; `None` if it is already stored.
    /// Concurrent writers of one digest are serialised by a lock on the
    /// ingest file.
    pub fn writer(&self, d: &Digest, size: Option<u64>) -> Result<Option<Writer>> {
        if self.contains(d) {
            return Ok(None);
        }
        let path = self.ingest_path(d);
        let io_err = |e: io::Error| Error::io(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| io_err(e.into()))?;
        // Another writer may have committed while we waited for the lock.
        if self.contains(d) {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        let len = file.metadata().map_err(io_err)?.len();
        let mut w = DigestWriter::new(file.try_clone().map_err(io_err)?);
        if size.is_some_and(|s| len > s) {
            file.set_len(0).map_err(io_err)?;
        } else if len > 0 {
            // Resume: the bytes already there count towards the digest.
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                w.absorb(&buf[..n]);
            }
        }
        w.inner.seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok(Some(Writer {
            digest: d.clone(),
            size,
            ingest: path,
            blob: self.blob_path(d),
            w,
            too_big: false,
        }))
    }

    /// Stores the blob read from `r`, which yields the blob from its start;
    /// bytes a previous interrupted write already holds are skipped.
    pub fn ingest(&self, d: &Digest, size: Option<u64>, r: impl Read) -> Result<()> {
        match self.writer(d, size)? {
            Some(w) => w.fill(0, r),
            None => Ok(()),
        }
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        self.ingest(&d, Some(bytes.len() as u64), bytes)?;
        Ok(d)
    }

    pub fn list(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            if let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every blob not in `referenced`, and abandoned ingest files
    /// (those no writer holds locked). Returns the removed blobs.
    pub fn gc(&self, referenced: &HashSet<Digest>) -> Result<Vec<Digest>> {
        let mut removed = Vec::new();
        for d in self.list()? {
            if !referenced.contains(&d) {
                let p = self.blob_path(&d);
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                removed.push(d);
            }
        }
        let dir = self.root.join("ingest");
        for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            if let Ok(f) = File::open(&p) {
                if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(removed)
    }
}

/// A blob being written: hashes as bytes arrive, refuses more than the
/// expected size, and commits only if digest and size match.
pub struct Writer {
    digest: Digest,
    size: Option<u64>,
    ingest: PathBuf,
    blob: PathBuf,
    w: DigestWriter<File>,
    too_big: bool,
}

impl Writer {
    /// Bytes already written (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.w.count()
    }

    /// Writes the rest of the blob from `r`, which yields it from byte
    /// `start` (at most [`Writer::offset`]: an HTTP range, or 0) on,
    /// skipping the bytes already held, then commits it.
    pub fn fill(self, start: u64, mut r: impl Read) -> Result<()> {
        let Some(skip) = self.offset().checked_sub(start) else {
            return Err(Error::invalid(
                format!("blob {}", self.digest),
                format!(
                    "source starts at byte {start}, after the {} held",
                    self.offset()
                ),
            ));
        };
        let ingest = self.ingest.clone();
        let err = |e: io::Error| Error::io(&ingest, e);
        let skipped = io::copy(&mut (&mut r).take(skip), &mut io::sink()).map_err(err)?;
        if skipped < skip {
            return Err(self.fail(format!("source ended after {} bytes", start + skipped)));
        }
        let mut w = self;
        if let Err(e) = io::copy(&mut r, &mut w) {
            // Too much data is wrong content; a failed read can be resumed.
            return Err(if w.too_big {
                w.fail(e.to_string())
            } else {
                err(e)
            });
        }
        w.commit()
    }

    /// The bytes already written, [`Writer::offset`] of them: with a
    /// [`Tee`] over the rest, a consumer reads the blob from its start.
    pub fn written(&self) -> Result<impl Read> {
        let f = File::open(&self.ingest).map_err(|e| Error::io(&self.ingest, e))?;
        Ok(f.take(self.offset()))
    }

    fn fail(self, msg: String) -> Error {
        // A wrong ingest file must not be resumed: start over next time.
        let _ = fs::remove_file(&self.ingest);
        Error::Digest {
            digest: self.digest.to_string(),
            msg,
        }
    }

    pub fn commit(self) -> Result<()> {
        let (actual, count, file) = self.w.finish();
        if let Some(size) = self.size.filter(|s| *s != count) {
            let _ = fs::remove_file(&self.ingest);
            return Err(Error::Mismatch {
                what: format!("size of blob {}", self.digest),
                expected: size.to_string(),
                actual: count.to_string(),
            });
        }
        if actual != self.digest {
            let _ = fs::remove_file(&self.ingest);
            return Err(Error::Mismatch {
                what: format!("digest of blob written to {}", self.ingest.display()),
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        file.sync_all().map_err(|e| Error::io(&self.ingest, e))?;
        fs::set_permissions(
            &self.ingest,
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        )
        .map_err(|e| Error::io(&self.ingest, e))?;
        fs::rename(&self.ingest, &self.blob).map_err(|e| Error::io(&self.blob, e))?;
        if let Some(dir) = self.blob.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }
}

/// A reader that stores what passes through it: a download is unpacked
/// and stored in one pass, with both its digest and its diff_id verified.
pub struct Tee<R> {
    inner: R,
    writer: Writer,
}

impl Writer {
    /// Wraps `r`, which yields the blob from [`Writer::offset`] on.
    pub fn tee<R: Read>(self, r: R) -> Tee<R> {
        Tee {
            inner: r,
            writer: self,
        }
    }
}

impl<R: Read> Tee<R> {
    /// Stores the rest of the stream (what the consumer did not read, such
    /// as compression trailers) and commits the blob.
    pub fn commit(mut self) -> Result<()> {
        let ingest = self.writer.ingest.clone();
        io::copy(&mut self.inner, &mut self.writer).map_err(|e| Error::io(&ingest, e))?;
        self.writer.commit()
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.writer.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(size) = self.size {
            if self.w.count() + buf.len() as u64 > size {
                self.too_big = true;
                return Err(io::Error::other(format!(
                    "blob {} is larger than its expected {size} bytes",
                    self.digest
                )));
            }
        }
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_gc() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = s.put(b"alpha").unwrap();
        let b = s.put(b"beta").unwrap();
        assert_eq!(s.read(&a).unwrap(), b"alpha");
        assert_eq!(s.put(b"alpha").unwrap(), a, "idempotent");
        let removed = s.gc(&HashSet::from([a.clone()])).unwrap();
        assert_eq!(removed, vec![b.clone()]);
        assert!(s.contains(&a) && !s.contains(&b));
    }

    #[test]
    fn wrong_content_is_rejected_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"right");
        let e = s.ingest(&d, None, &b"wrong"[..]).unwrap_err().to_string();
        assert!(e.contains(&d.to_string()), "{e}");
        let e = s
            .ingest(&d, Some(3), &b"right"[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        assert!(!s.contains(&d));
        assert_eq!(fs::read_dir(t.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn tee_stores_while_another_consumer_reads() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data = b"layer bytes, as they arrive from a registry".to_vec();
        let d = Digest::of(&data);
        let w = s.writer(&d, Some(data.len() as u64)).unwrap().unwrap();
        let mut tee = w.tee(&data[..]);
        let mut head = [0u8; 5];
        tee.read_exact(&mut head).unwrap();
        tee.commit().unwrap();
        assert_eq!(s.read(&d).unwrap(), data);
    }

    #[test]
    fn interrupted_write_resumes() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        {
            let mut w = s.writer(&d, Some(data.len() as u64)).unwrap().unwrap();
            w.write_all(&data[..70_000]).unwrap();
            // dropped without commit: a crash mid-download
        }
        assert!(!s.contains(&d));
        let mut w = s.writer(&d, Some(data.len() as u64)).unwrap().unwrap();
        assert_eq!(w.offset(), 70_000);
        w.write_all(&data[70_000..]).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read(&d).unwrap(), data);
        assert!(s.writer(&d, None).unwrap().is_none());

        // A corrupt leftover is detected at commit and removed, so the next
        // attempt starts clean.
        let d2 = Digest::of(b"0123456789");
        fs::write(t.path().join("ingest").join(d2.hex()), b"01234XX").unwrap();
        assert!(s.ingest(&d2, Some(10), &b"0123456789"[..]).is_err());
        s.ingest(&d2, Some(10), &b"0123456789"[..]).unwrap();
        assert_eq!(s.read(&d2).unwrap(), b"0123456789");
    }
}
