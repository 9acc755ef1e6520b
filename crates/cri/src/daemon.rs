//! The state every CRI service shares, and the per-pod serialisation.

use crate::cni::{Cni, CniConfig};
use crate::config::Config;
use crate::error::{internal, Result};
use crate::model::{ContainerRecord, PodRecord};
use crate::store::{Kind, Store};
use berth_cri_api::v1::ContainerEventResponse;
use berth_image::ImageRoot;
use berth_oci::state::Root;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The copy of a pod's record in its directory.
pub const POD_RECORD: &str = "pod.json";
/// The copy of a container's record (as created) in its bundle.
pub const CONTAINER_RECORD: &str = "container.json";

pub type StreamUrlFn = Arc<dyn Fn(crate::StreamRequest) -> Option<String> + Send + Sync>;

pub struct Daemon {
    pub cfg: Config,
    pub store: Store,
    pub images: ImageRoot,
    pub cni: Cni,
    /// The berth runtime's state root for the built-in handler.
    pub oci: Root,
    pub monitor_bin: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub events: broadcast::Sender<ContainerEventResponse>,
    pub metrics: crate::metrics::Metrics,
    /// Mints streaming URLs (set by berthd once its streaming server runs).
    pub stream_url: Mutex<Option<StreamUrlFn>>,
    /// Writable-layer usage per container, measured at most every
    /// [`crate::views::USAGE_TTL`]: walking an upper dir is the one costly
    /// part of stats, and the kubelet asks every few seconds.
    pub usage_cache: Mutex<HashMap<String, (std::time::Instant, u64)>>,
}

impl Daemon {
    pub fn open(cfg: Config) -> Result<Arc<Daemon>> {
        for d in [&cfg.root, &cfg.state] {
            std::fs::create_dir_all(d).map_err(|e| internal(format!("{}: {e}", d.display())))?;
        }
        for sub in ["pods", "containers", "oci", "cni-cache"] {
            std::fs::create_dir_all(cfg.state.join(sub))?;
        }
        let store = Store::open(&crate::store::db_path(&cfg.root))?;
        let mut images = ImageRoot::open(cfg.root.join("images"))?;
        if !cfg.container_root.as_os_str().is_empty() {
            images
                .snapshots
                .set_views_dir(cfg.container_root.join("views"))?;
        }
        let cni = Cni::new(CniConfig {
            conf_dir: cfg.cni.conf_dir.clone(),
            bin_dirs: cfg.cni.bin_dirs.clone(),
            cache_dir: cfg.root.join("cni-cache"),
        });
        let monitor_bin = if cfg.runtime.monitor.as_os_str().is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("berth-monitor")))
                .unwrap_or_else(|| PathBuf::from("berth-monitor"))
        } else {
            cfg.runtime.monitor.clone()
        };
        let oci = Root::new(cfg.state.join("oci"));
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Daemon {
            cfg,
            store,
            images,
            cni,
            oci,
            monitor_bin,
            locks: Mutex::new(HashMap::new()),
            events,
            metrics: crate::metrics::Metrics::default(),
            stream_url: Mutex::new(None),
            usage_cache: Mutex::new(HashMap::new()),
        }))
    }

    /// The lock that serialises every operation on one pod (and its
    /// containers).
    pub fn pod_lock(&self, pod_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(pod_id.to_string()).or_default().clone()
    }

    pub fn forget_lock(&self, pod_id: &str) {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(pod_id);
    }

    pub fn pod(&self, id: &str) -> Result<Option<PodRecord>> {
        Ok(self.store.get(Kind::Pod, id)?)
    }

    pub fn pods(&self) -> Result<Vec<PodRecord>> {
        Ok(self.store.list(Kind::Pod)?)
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>> {
        Ok(self.store.get(Kind::Container, id)?)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        Ok(self.store.list(Kind::Container)?)
    }

    /// Records the pod; once it is past Creating, a copy goes next to it
    /// (`pod.json`) for `berthd repair`, should the store be lost. A pod
    /// is not ready without its copy; a later change of the copy (stopped)
    /// that fails (a full disk) must not fail the stop, so it is only
    /// warned of.
    pub fn save_pod(&self, p: &PodRecord) -> Result<()> {
        use crate::model::PodState;
        if p.state != PodState::Creating && p.dir.is_dir() {
            let r = serde_json::to_vec(p)
                .map_err(internal)
                .and_then(|json| Ok(crate::store::write_atomic(&p.dir.join(POD_RECORD), &json)?));
            match r {
                Err(e) if p.state == PodState::Ready => return Err(e),
                Err(e) => tracing::warn!(pod = %p.id, "the pod's record copy: {e}"),
                Ok(()) => {}
            }
        }
        Ok(self.store.put(Kind::Pod, &p.id, p)?)
    }

    pub fn save_container(&self, c: &ContainerRecord) -> Result<()> {
        Ok(self.store.put(Kind::Container, &c.id, c)?)
    }

    /// Resolves a full or unique-prefix pod id (crictl passes prefixes).
    pub fn resolve_pod(&self, id: &str) -> Result<Option<PodRecord>> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(p) = self.pod(id)? {
            return Ok(Some(p));
        }
        let mut m: Vec<PodRecord> = self
            .pods()?
            .into_iter()
            .filter(|p| p.id.starts_with(id))
            .collect();
        Ok(if m.len() == 1 { m.pop() } else { None })
    }

    pub fn resolve_container(&self, id: &str) -> Result<Option<ContainerRecord>> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(c) = self.container(id)? {
            return Ok(Some(c));
        }
        let mut m: Vec<ContainerRecord> = self
            .containers()?
            .into_iter()
            .filter(|c| c.id.starts_with(id))
            .collect();
        Ok(if m.len() == 1 { m.pop() } else { None })
    }

    /// Like `resolve_pod`, an unknown id being NOT_FOUND.
    pub fn find_pod(&self, id: &str) -> Result<PodRecord> {
        self.resolve_pod(id)?
            .ok_or_else(|| crate::error::CriError::NotFound(format!("pod sandbox {id:?}")))
    }

    /// Like `resolve_container`, an unknown id being NOT_FOUND.
    pub fn find_container(&self, id: &str) -> Result<ContainerRecord> {
        self.resolve_container(id)?
            .ok_or_else(|| crate::error::CriError::NotFound(format!("container {id:?}")))
    }

    pub fn emit(&self, ev: ContainerEventResponse) {
        let _ = self.events.send(ev);
    }
}
