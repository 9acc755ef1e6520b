//! Container logs in the CRI format the kubelet reads:
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <content>\n`, one line per
//! output line; lines longer than the maximum are split into partial (P)
//! records and closed by a full (F) one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub struct LogWriter {
    path: PathBuf,
    file: File,
    max_line: usize,
    /// An unterminated line per stream, kept until its newline arrives or
    /// it reaches `max_line`.
    pending: [Vec<u8>; 2],
    /// Records dropped since writes started failing (a full disk): output
    /// is lost then, never the monitor; reported once writes succeed again.
    dropped: u64,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl LogWriter {
    pub fn open(path: &Path, max_line: usize) -> io::Result<LogWriter> {
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: open(path)?,
            max_line: max_line.max(1),
            pending: [Vec::new(), Vec::new()],
            dropped: 0,
        })
    }

    /// Starts a new file at the same path (after the kubelet rotated the old
    /// one away); the file exists when this returns.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }

    /// Appends output; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let ts = berth_oci::state::rfc3339_now();
        let slot = stream as usize;
        while !data.is_empty() {
            let room = self.max_line - self.pending[slot].len();
            match data.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => {
                    self.pending[slot].extend_from_slice(&data[..i]);
                    record(&mut out, &ts, stream, false, &self.pending[slot]);
                    self.pending[slot].clear();
                    data = &data[i + 1..];
                }
                _ if data.len() >= room => {
                    self.pending[slot].extend_from_slice(&data[..room]);
                    record(&mut out, &ts, stream, true, &self.pending[slot]);
                    self.pending[slot].clear();
                    data = &data[room..];
                }
                _ => {
                    self.pending[slot].extend_from_slice(data);
                    data = &[];
                }
            }
        }
        self.append(&out)
    }

    /// Appends whole records or nothing: a write that fails part way (no
    /// space) is cut back, so the kubelet never reads half a record and
    /// logging resumes with whole lines once there is room again.
    fn append(&mut self, out: &[u8]) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let len = self.file.metadata().map(|m| m.len());
        match self.file.write_all(out) {
            Ok(()) => {
                if self.dropped > 0 {
                    crate::note!(
                        "berth-monitor: {}: writing again; {} records were dropped",
                        self.path.display(),
                        self.dropped
                    );
                    self.dropped = 0;
                }
                Ok(())
            }
            Err(e) => {
                if let Ok(len) = len {
                    let _ = self.file.set_len(len);
                }
                let first = self.dropped == 0;
                self.dropped += out.iter().filter(|&&b| b == b'\n').count() as u64;
                if first {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{}: {e}; dropping output until writes succeed",
                            self.path.display()
                        ),
                    ));
                }
                // Reported once per outage.
                Ok(())
            }
        }
    }

    /// Writes what is left of unterminated lines (the stream ended).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        let ts = berth_oci::state::rfc3339_now();
        let mut out = Vec::new();
        for (slot, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if !self.pending[slot].is_empty() {
                record(&mut out, &ts, stream, false, &self.pending[slot]);
                self.pending[slot].clear();
            }
        }
        self.append(&out)
    }
}

fn record(out: &mut Vec<u8>, ts: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().unwrap();
                assert!(ts.ends_with('Z') && ts.contains('T'), "{l}");
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_streams() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 8).unwrap();
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"ld\n0123456789abc\n\n").unwrap();
        w.write(Stream::Stdout, b"tail").unwrap();
        w.flush_partial().unwrap();
        let got = lines(&p);
        let want: Vec<(&str, &str, &str)> = vec![
            ("stdout", "F", "hello"),
            ("stderr", "F", "oops"),
            ("stdout", "F", "world"),
            ("stdout", "P", "01234567"),
            ("stdout", "F", "89abc"),
            ("stdout", "F", ""),
            ("stdout", "F", "tail"),
        ];
        let got: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reopen_creates_a_new_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut w = LogWriter::open(&p, 100).unwrap();
        w.write(Stream::Stdout, b"one\n").unwrap();
        std::fs::rename(&p, d.path().join("0.log.1")).unwrap();
        w.reopen().unwrap();
        assert!(p.exists());
        w.write(Stream::Stdout, b"two\n").unwrap();
        assert_eq!(lines(&p)[0].2, "two");
    }

    #[test]
    fn a_failing_write_drops_output_and_reports_once() {
        // /dev/full fails every write with ENOSPC.
        let mut w = LogWriter::open(Path::new("/dev/full"), 100).unwrap();
        let e = w.write(Stream::Stdout, b"one\n").unwrap_err();
        assert!(e.to_string().contains("/dev/full"), "{e}");
        w.write(Stream::Stdout, b"two\n").unwrap();
        w.flush_partial().unwrap();
        assert_eq!(w.dropped, 2);
    }

    #[test]
    fn a_symlinked_log_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(LogWriter::open(&p, 100).is_err());
    }
}
