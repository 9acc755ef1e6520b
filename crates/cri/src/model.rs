//! What berthd records about pods and containers.

use berth_cri_api::v1::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Recorded before anything was made: a crash leaves this for recovery.
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: PodState,
    /// state/pods/<id>: the monitor's socket, pinned namespaces, etc files.
    pub dir: PathBuf,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// The pod's shared PID namespace, when its containers share one.
    #[serde(default)]
    pub pidns: Option<PathBuf>,
    /// The pod's own user namespace (hostUsers: false).
    #[serde(default)]
    pub userns: Option<PodUserNs>,
    pub ips: Vec<String>,
    pub cgroup_parent: String,
    /// The cgroup parent was berthd's choice (removed with the pod).
    pub own_cgroup: bool,
}

/// A pod's user namespace: pinned at `path`, with the mappings the kubelet
/// chose, each (container id, host id, size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUserNs {
    pub path: PathBuf,
    pub uid_map: Vec<(u32, u32, u32)>,
    pub gid_map: Vec<(u32, u32, u32)>,
}

impl PodUserNs {
    /// The host ids of the container's root.
    pub fn root_owner(&self) -> (u32, u32) {
        let host0 = |m: &[(u32, u32, u32)]| {
            m.iter()
                .find(|&&(c, _, s)| c == 0 && s > 0)
                .map_or(0, |&(_, h, _)| h)
        };
        (host0(&self.uid_map), host0(&self.gid_map))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrState {
    Creating,
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as the request named it, and its config digest.
    pub image_ref: String,
    pub image_id: String,
    /// `repo@digest` when the image has one.
    pub image_digest_ref: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub state: CtrState,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub log_path: Option<PathBuf>,
    pub bundle: PathBuf,
    pub stop_signal: i32,
    /// The process's ids as the spec set them (reported in ContainerStatus).
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The ids of the images mounted as image volumes (they cannot be
    /// removed while the container exists).
    #[serde(default)]
    pub image_volumes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

pub fn now_ns() -> i64 {
    berth_monitor::proto::now_ns()
}

/// A random 64-hex-digit id, like the ids other CRI runtimes hand out.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    // SAFETY: getrandom into a valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Extremely unlikely; fall back to time and pid mixing.
        let t = now_ns() as u64 ^ ((std::process::id() as u64) << 32);
        b[..8].copy_from_slice(&t.to_le_bytes());
    }
    hex::encode(b)
}
