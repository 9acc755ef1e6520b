//! The per-pod monitor binary (see `berth_monitor::cli`).
fn main() {
    berth_monitor::run_main()
}
