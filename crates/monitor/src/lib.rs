//! The per-pod monitor: a small process that is the parent (subreaper) of a
//! pod's containers, holds their stdio, writes their CRI logs and records
//! their exit codes durably, so containers keep running and logging while
//! berthd is down or restarting.

/// Writes a line to stderr (the pod's `monitor.log` once detached) and
/// ignores failure: `eprintln!` panics when the write fails (a full disk),
/// and the monitor must never die while it parents the pod's containers.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod cli;
pub mod logs;
pub mod pidinit;
pub mod proto;
pub mod server;

pub use cli::run_main;
