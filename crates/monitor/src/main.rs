//! The per-pod monitor binary (see `berth_monitor::cli`).

fn main() {
    protect_binary();
    berth_monitor::run_main()
}

/// The monitor forks every container's init and exec'd process, so until
/// they execve, /proc/<pid>/exe of a process inside the container is this
/// binary (CVE-2019-5736 class). Before serving anything it re-executes
/// itself from a read-only view of its binary, as `berth` does: a detached
/// read-only bind (no copy, so no extra memory per pod), or a sealed memfd
/// where mounting is refused. It refuses to run unprotected.
fn protect_binary() {
    // The bind's scratch file goes in the OCI state root: only root may
    // write there. Without --oci-root, run_main prints the usage.
    let mut args = std::env::args_os().skip(1);
    let mut scratch = None;
    while let Some(a) = args.next() {
        if a == "--oci-root" {
            scratch = args.next().map(std::path::PathBuf::from);
        }
    }
    let Some(scratch) = scratch else { return };
    if let Err(e) = berth_oci::selfclone::ensure_cloned(&scratch) {
        berth_monitor::note!(
            "berth-monitor: re-executing from a read-only copy of /proc/self/exe (scratch dir {}): {e}",
            scratch.display()
        );
        std::process::exit(1);
    }
    // execveat(AT_EMPTY_PATH) names the process after the scratch file or
    // memfd; berthd and ps find monitors by this name.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"berth-monitor".as_ptr()) };
}
