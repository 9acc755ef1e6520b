//! The monitor forks every container process of its pod, so its binary must
//! not be writable through /proc/<pid>/exe (CVE-2019-5736 class), just as
//! for `berth`: a container that opens the exe link of a process that is
//! still the monitor, and reopens it for writing once that process is gone,
//! must not reach the host binary.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A private copy of `bin` in `dir`, so a successful attack could only
/// damage the copy (and no other process runs it, which would make writes
/// fail with ETXTBSY and hide a missing defence).
fn private_copy(bin: &Path, dir: &Path) -> PathBuf {
    let p = dir.join(bin.file_name().unwrap());
    fs::copy(bin, &p).unwrap();
    p
}

fn open_path(path: &str) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap_or_else(|e| panic!("O_PATH {path}: {e}"))
}

/// SIGKILLs `pid` and waits until it is gone (it is not our child).
fn kill_and_wait(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let end = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < end, "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs the monitor if the test fails before it does so itself.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The CVE-2019-5736 move: reopen a held O_PATH fd of the exe for writing
/// once its process has exited (no ETXTBSY any more).
fn reopen_for_write(held: &fs::File) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", held.as_raw_fd()))
}

#[test]
fn monitor_exe_cannot_be_opened_for_writing() {
    let bins = tempfile::Builder::new()
        .prefix("berth-monbin-")
        .tempdir()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let oci = tempfile::tempdir().unwrap();

    // Control: the same attack on an unprotected private binary works on
    // this kernel, so the check below means something.
    let sleep = private_copy(Path::new("/bin/sleep"), bins.path());
    let mut child = Command::new(&sleep).arg("600").spawn().unwrap();
    let held = open_path(&format!("/proc/{}/exe", child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    reopen_for_write(&held).expect("control: the unprotected binary must be writable");

    let bin = private_copy(Path::new(env!("CARGO_BIN_EXE_berth-monitor")), bins.path());
    let sha = sha256(&bin);
    let st = Command::new(&bin)
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--oci-root", oci.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    // The detached monitor writes its pid file after the starter exits.
    let end = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let s = fs::read_to_string(dir.path().join("monitor.pid")).unwrap_or_default();
        if let Ok(p) = s.parse() {
            break p;
        }
        assert!(Instant::now() < end, "no monitor.pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut guard = KillOnDrop(Some(pid));
    let exe = format!("/proc/{pid}/exe");

    // berthd finds monitors by name: the re-exec keeps it.
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "berth-monitor"
    );
    // The exe is not the host binary but a read-only (or sealed) view.
    let link = fs::read_link(&exe).unwrap();
    assert_ne!(link, bin, "the monitor runs from its on-disk binary");
    let ro = fs::File::open(&exe).unwrap();
    // SAFETY: fstatvfs/fcntl on an open fd into a local.
    let (rdonly, sealed) = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::fstatvfs(ro.as_raw_fd(), &mut s), 0);
        let seals = libc::fcntl(ro.as_raw_fd(), libc::F_GET_SEALS);
        (
            s.f_flag & libc::ST_RDONLY != 0,
            seals >= 0 && seals & libc::F_SEAL_WRITE != 0,
        )
    };
    assert!(rdonly || sealed, "{exe} is on a writable mount, unsealed");
    // No scratch file or bind mount is left behind.
    assert_eq!(fs::read_dir(oci.path()).unwrap().count(), 0);
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&*oci.path().to_string_lossy()));

    // While it runs, opening for writing fails...
    for write in [true, false] {
        let r = fs::OpenOptions::new().write(true).read(!write).open(&exe);
        assert!(r.is_err(), "{exe} opened for writing");
    }
    // ...and after it is gone, reopening the held exe fails with EROFS (a
    // sealed memfd may open, but takes no write).
    let held = open_path(&exe);
    guard.0 = None;
    kill_and_wait(pid);
    match reopen_for_write(&held) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}"),
        Ok(mut f) => {
            use std::io::Write;
            assert!(sealed, "the monitor's exe reopened for writing");
            assert!(f.write_all(b"#!/bin/sh\n").is_err(), "wrote to the exe");
        }
    }
    assert_eq!(sha256(&bin), sha, "the monitor binary changed");
}
