//! RuntimeClass handlers behind one interface: the built-in berth runtime
//! (a library call) or any runc-compatible binary (its CLI), each with its
//! own state root.

use crate::daemon::Daemon;
use berth_monitor::proto::ExternalRuntime;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub enum Handler {
    Builtin,
    External(ExternalRuntime),
}

impl Daemon {
    /// The handler a pod runs with (unknown names fall back to built-in:
    /// they were refused when the pod was created).
    pub fn handler(&self, name: &str) -> Handler {
        match self.cfg.runtime.handlers.get(name) {
            Some(h) => Handler::External(ExternalRuntime {
                path: h.path.clone(),
                root: self.cfg.state.join("runtimes").join(name),
            }),
            None => Handler::Builtin,
        }
    }

    pub fn handler_of_pod(&self, pod_id: &str) -> Handler {
        match self.pod(pod_id) {
            Ok(Some(p)) => self.handler(&p.runtime_handler),
            _ => Handler::Builtin,
        }
    }
}

impl Handler {
    /// Pods in their own user namespace need idmapped mounts made by the
    /// runtime, which only the built-in one is known to do.
    pub fn user_namespaces(&self) -> bool {
        matches!(self, Handler::Builtin) && idmapped_layers_supported()
    }

    /// What Status advertises for this handler.
    pub fn features(&self) -> berth_cri_api::v1::RuntimeHandlerFeatures {
        match self {
            Handler::Builtin => berth_cri_api::v1::RuntimeHandlerFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: self.user_namespaces(),
            },
            // What an external runtime implements is not known here.
            Handler::External(_) => Default::default(),
        }
    }

    pub fn external(&self) -> Option<ExternalRuntime> {
        match self {
            Handler::Builtin => None,
            Handler::External(rt) => Some(rt.clone()),
        }
    }

    pub fn kill(&self, d: &Daemon, id: &str, sig: i32, all: bool) -> Result<(), String> {
        match self {
            Handler::Builtin => {
                berth_oci::container::kill(&d.oci, id, sig, all).map_err(|e| e.to_string())
            }
            Handler::External(rt) => {
                let mut c = rt.command();
                c.arg("kill");
                if all {
                    c.arg("--all");
                }
                run(c.arg(id).arg(sig.to_string()))
            }
        }
    }

    /// Force-deletes the container's runtime state; a missing one is fine.
    pub fn delete(&self, d: &Daemon, id: &str) -> Result<(), String> {
        match self {
            Handler::Builtin => match berth_oci::container::delete(&d.oci, id, true) {
                Err(berth_oci::error::Error::NotFound(_)) | Ok(()) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Handler::External(rt) => {
                if !rt.root.join(id).exists() {
                    return Ok(());
                }
                run(rt.command().arg("delete").arg("--force").arg(id))
            }
        }
    }

    /// The pid of the container's init while it is alive.
    pub fn init_pid(&self, d: &Daemon, id: &str) -> Option<i32> {
        match self {
            Handler::Builtin => d
                .oci
                .load(id)
                .ok()
                .filter(|st| berth_oci::state::process_alive(st.pid, st.pid_start))
                .map(|st| st.pid),
            Handler::External(rt) => rt
                .command()
                .arg("state")
                .arg(id)
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .filter(|v| v["status"] == "running" || v["status"] == "created")
                .and_then(|v| v["pid"].as_i64())
                .and_then(|p| i32::try_from(p).ok())
                .filter(|&p| p > 0),
        }
    }

    /// Whether the container's init process is alive.
    pub fn alive(&self, d: &Daemon, id: &str) -> bool {
        self.init_pid(d, id).is_some()
    }

    pub fn update(
        &self,
        d: &Daemon,
        id: &str,
        res: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), String> {
        match self {
            Handler::Builtin => {
                berth_oci::container::update(&d.oci, id, "linux", res).map_err(|e| e.to_string())
            }
            Handler::External(rt) => {
                let f = d
                    .cfg
                    .state
                    .join("containers")
                    .join(id)
                    .join("resources.json");
                std::fs::write(&f, serde_json::to_vec(res).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                run(rt
                    .command()
                    .arg("update")
                    .arg("--resources")
                    .arg(&f)
                    .arg(id))
            }
        }
    }
}

fn run(c: &mut std::process::Command) -> Result<(), String> {
    let o = c.output().map_err(|e| e.to_string())?;
    if o.status.success() {
        return Ok(());
    }
    Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
}

/// Idmapped image layers are handed to overlayfs by fd (`lowerdir+`),
/// which Linux supports from 6.13.
fn idmapped_layers_supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: uname fills a zeroed struct; release is NUL-terminated.
        let release = unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            if libc::uname(&mut u) != 0 {
                return false;
            }
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        kernel_at_least(&release, (6, 13))
    })
}

/// Whether a kernel release ("6.18.44-fc", "5.10.0-28-amd64") is at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= want
}

/// The cgroup of a container, from its bundle's spec.
pub fn container_cgroup(bundle: &std::path::Path) -> Option<PathBuf> {
    let b = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["linux"]["cgroupsPath"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_releases_compare() {
        use super::kernel_at_least;
        assert!(kernel_at_least("6.18.44-fc-v669", (6, 13)));
        assert!(kernel_at_least("6.13.0", (6, 13)));
        assert!(!kernel_at_least("6.12.9-amd64", (6, 13)));
        assert!(!kernel_at_least("5.19.0", (6, 13)));
        assert!(!kernel_at_least("garbage", (6, 13)));
    }
}
