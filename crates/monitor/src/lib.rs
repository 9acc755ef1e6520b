//! The per-pod monitor.
