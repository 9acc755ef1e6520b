//! berthd: the CRI services (RuntimeService and ImageService) over the
//! berth runtime library, berth's image store, CNI plugins and a per-pod
//! monitor.

pub mod authority;
pub mod cdi;
pub mod cni;
pub mod config;
pub mod container;
pub mod daemon;
pub mod error;
pub mod exec_sync;
pub mod handler;
pub mod image_volume;
pub mod images;
pub mod list_stream;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod pod_metrics;
pub mod pod_resources;
pub mod recover;
pub mod repair;
pub mod resources;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod spec;
pub mod stop_signal;
pub mod store;
pub mod sysctl;
pub mod userns;
pub mod views;

/// What a streaming URL is minted for (served by the streaming server).
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        ports: Vec<u16>,
    },
}

/// Crash-consistency testing: when BERTHD_FAULT names this point, berthd
/// kills itself with SIGKILL right here, as a crash would.
pub fn fault_point(point: &str) {
    if std::env::var("BERTHD_FAULT").is_ok_and(|f| f == point) {
        eprintln!("berthd: fault injected at {point}");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
