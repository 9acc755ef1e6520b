//! Connecting to a CRI endpoint: flags, then environment, then a config
//! file (crictl's format), then the first socket that exists.

use anyhow::{bail, Context, Result};
use berth_cri_api::v1::image_service_client::ImageServiceClient;
use berth_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// Tried in order when nothing names an endpoint: berthd's default socket
/// first (a test keeps it equal to berthd's), then containerd's and CRI-O's.
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "unix:///run/berth/berth.sock",
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
];

pub const DEFAULT_CONFIG: &str = "/etc/berthctl.yaml";

/// Where to connect, after resolving flags, env and config.
#[derive(Debug, Clone)]
pub struct Target {
    pub runtime: String,
    pub image: String,
    pub timeout: Duration,
}

/// crictl-style config file: `runtime-endpoint`, `image-endpoint`,
/// `timeout` (seconds).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
// crictl's other keys are accepted (so its file works) and ignored.
#[allow(dead_code)]
struct ConfigFile {
    runtime_endpoint: Option<String>,
    image_endpoint: Option<String>,
    timeout: Option<u64>,
    debug: Option<bool>,
    pull_image_on_create: Option<bool>,
    disable_pull_on_run: Option<bool>,
}

pub fn resolve(
    runtime_flag: Option<&str>,
    image_flag: Option<&str>,
    config: Option<&Path>,
    timeout_flag: Option<u64>,
) -> Result<Target> {
    let cfg_path: Option<PathBuf> = match config {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("BERTHCTL_CONFIG")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists())),
    };
    let cfg = match &cfg_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            if text.trim().is_empty() {
                ConfigFile::default()
            } else {
                serde_yaml_ng::from_str::<ConfigFile>(&text)
                    .with_context(|| format!("config file {}", p.display()))?
            }
        }
        None => ConfigFile::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let runtime = runtime_flag
        .map(str::to_string)
        .or_else(|| env("CONTAINER_RUNTIME_ENDPOINT"))
        .or(cfg.runtime_endpoint)
        .or_else(|| {
            DEFAULT_ENDPOINTS
                .iter()
                .find(|e| Path::new(socket_path(e).unwrap_or_default()).exists())
                .map(|e| e.to_string())
        });
    let Some(runtime) = runtime else {
        bail!(
            "no CRI endpoint: none of {} exists; pass --runtime-endpoint unix:///path/to.sock \
             (or set CONTAINER_RUNTIME_ENDPOINT, or runtime-endpoint in {DEFAULT_CONFIG})",
            DEFAULT_ENDPOINTS.join(", ")
        );
    };
    let image = image_flag
        .map(str::to_string)
        .or_else(|| env("IMAGE_SERVICE_ENDPOINT"))
        .or(cfg.image_endpoint)
        .unwrap_or_else(|| runtime.clone());
    Ok(Target {
        runtime,
        image,
        timeout: Duration::from_secs(timeout_flag.or(cfg.timeout).unwrap_or(10)),
    })
}

/// The socket path of `unix:///p` or a plain `/p`; None for other schemes.
pub fn socket_path(endpoint: &str) -> Option<&str> {
    if let Some(p) = endpoint.strip_prefix("unix://") {
        return Some(p);
    }
    if endpoint.starts_with('/') {
        return Some(endpoint);
    }
    None
}

/// A channel to `endpoint` (unix socket, or http(s)://host:port).
pub async fn channel(endpoint: &str, timeout: Duration) -> Result<Channel> {
    let connect = async {
        if let Some(path) = socket_path(endpoint) {
            let path = path.to_string();
            if !Path::new(&path).exists() {
                bail!("cannot connect to {endpoint}: {path} does not exist (is the runtime running? pass --runtime-endpoint)");
            }
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .with_context(|| format!("cannot connect to {endpoint} (is the runtime running?)"))
        } else if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            Endpoint::from_shared(endpoint.to_string())?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))
        } else {
            bail!("endpoint {endpoint:?}: use unix:///path/to.sock, /path/to.sock or http://host:port")
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r.map_err(|e| crate::coded(crate::EXIT_CONNECT, format!("{e:#}"))),
        Err(_) => Err(crate::coded(
            crate::EXIT_CONNECT,
            format!("cannot connect to {endpoint} within {timeout:?} (is the runtime running?)"),
        )),
    }
}

/// Both CRI services.
pub struct Cri {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(target: &Target) -> Result<Cri> {
        let rch = channel(&target.runtime, target.timeout).await?;
        let ich = if target.image == target.runtime {
            rch.clone()
        } else {
            channel(&target.image, target.timeout).await?
        };
        Ok(Cri {
            rt: RuntimeServiceClient::new(rch).max_decoding_message_size(64 << 20),
            img: ImageServiceClient::new(ich).max_decoding_message_size(64 << 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `berthd & berthctl ps` works with no flags: the first endpoint tried
    /// is where berthd serves by default.
    #[test]
    fn first_default_endpoint_is_berthds_default_socket() {
        let berthd = berth_cri::config::Config::default().socket;
        assert_eq!(DEFAULT_ENDPOINTS[0], format!("unix://{}", berthd.display()));
    }
}
