//! `berth-monitor --dir DIR --oci-root ROOT [--max-line N]`: started by
//! berthd once per pod. Exits 0 as soon as its socket accepts connections
//! (the monitor itself carries on detached).

use crate::server::{bind, Monitor, Options};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

fn usage() -> ! {
    crate::note!("usage: berth-monitor --dir DIR --oci-root ROOT [--max-line BYTES] [--pid-init [--pid-init-userns PATH]]");
    std::process::exit(2)
}

pub fn run_main() {
    let mut dir = None;
    let mut oci_root = None;
    let mut max_line = 16 * 1024;
    let mut pid_init = false;
    let mut pid_init_userns = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(val())),
            "--oci-root" => oci_root = Some(PathBuf::from(val())),
            "--max-line" => max_line = val().parse().unwrap_or_else(|_| usage()),
            "--pid-init" => pid_init = true,
            "--pid-init-userns" => pid_init_userns = Some(PathBuf::from(val())),
            _ => usage(),
        }
    }
    let (Some(dir), Some(oci_root)) = (dir, oci_root) else {
        usage()
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        crate::note!("berth-monitor: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let listener = match bind(&dir) {
        Ok(l) => l,
        Err(e) => {
            crate::note!("berth-monitor: binding in {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    // Made before the monitor detaches, so its pid file exists when whoever
    // started the monitor sees it ready.
    if pid_init {
        if let Err(e) = crate::pidinit::start(&dir, pid_init_userns.as_deref()) {
            crate::note!("berth-monitor: the pod's pid namespace: {e}");
            std::process::exit(1);
        }
    }
    // SAFETY: single-threaded here; the child only continues this program.
    match unsafe { libc::fork() } {
        -1 => {
            crate::note!("berth-monitor: fork: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: setsid has no preconditions; the fds dup'd are ours.
    unsafe {
        libc::setsid();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("monitor.log"));
        if let Ok(f) = log {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
        if let Ok(n) = std::fs::File::open("/dev/null") {
            libc::dup2(n.as_raw_fd(), 0);
        }
    }
    let _ = std::fs::write(dir.join("monitor.pid"), std::process::id().to_string());

    let opts = Options {
        dir,
        oci_root,
        max_line,
    };
    let r = Monitor::new(opts, listener).and_then(|mut m| m.run());
    if let Err(e) = r {
        crate::note!("berth-monitor: {e}");
        std::process::exit(1);
    }
}
