//! `--debug`: timestamped progress lines on stderr, from the runtime and its
//! init stages, to see where a create spends its time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

pub fn enable() {
    START.get_or_init(Instant::now);
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Prints `msg` with the time since start and the pid, when enabled.
pub fn trace(msg: &str) {
    if enabled() {
        let t = START.get_or_init(Instant::now).elapsed();
        eprintln!(
            "berth[{}] +{:.3}ms {msg}",
            std::process::id(),
            t.as_secs_f64() * 1000.0
        );
    }
}
