//! berth's OCI runtime: turns a bundle (config.json + rootfs) into a running
//! container, following the OCI runtime specification on Linux.
//!
//! The `berth` binary is a thin command line over this library; the CRI
//! daemon's monitor links it directly.

pub mod caps;
pub mod config;
pub mod console;
pub mod container;
pub mod debug;
pub mod error;
pub mod exec;
pub mod fdpass;
pub mod features;
pub mod foreground;
pub mod fsutil;
pub mod home;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod mempolicy;
pub mod mount_opts;
pub mod netdev;
pub mod rootfs;
pub mod seccomp;
pub mod seccomp_default;
pub mod selfclone;
pub mod spec_default;
pub mod state;
pub mod sync;

pub use error::{Error, Result};

/// The runtime-spec version berth implements.
pub const OCI_VERSION: &str = "1.2.1";

/// Where the host's cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The seccomp part of `berth features`.
pub fn seccomp_features() -> serde_json::Value {
    seccomp::features()
}
