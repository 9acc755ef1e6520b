//! ImageService on berth's image store.

use crate::daemon::Daemon;
use crate::error::{invalid, CriError, Result};
use crate::model::now_ns;
use berth_cri_api::v1 as cri;
use berth_image::registry::{AuthConfig, Options};
use std::collections::HashMap;

fn to_cri(img: &berth_image::Image) -> cri::Image {
    let (uid, username) = match img
        .config
        .user
        .as_deref()
        .map(|u| u.split(':').next().unwrap_or(""))
    {
        Some(u) if !u.is_empty() => match u.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, u.to_string()),
        },
        _ => (None, String::new()),
    };
    cri::Image {
        id: img.id.to_string(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: img.repo_digests.clone(),
        size: img.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: img.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

impl Daemon {
    pub fn list_images(&self, f: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let want = f.and_then(|f| f.image).map(|s| s.image).unwrap_or_default();
        if !want.is_empty() {
            return Ok(self
                .images
                .images
                .get(&want)
                .ok()
                .iter()
                .map(to_cri)
                .collect());
        }
        Ok(self.images.images.list()?.iter().map(to_cri).collect())
    }

    pub fn image_status(
        &self,
        spec: Option<cri::ImageSpec>,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse> {
        let key = spec.map(|s| s.image).unwrap_or_default();
        if key.is_empty() {
            return Err(invalid("image.image", "is required"));
        }
        let Ok(img) = self.images.images.get(&key) else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "id": img.id.to_string(),
                "manifest": img.manifest.to_string(),
                "chainID": img.chain_id.to_string(),
                "config": img.config,
                "created": img.created,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::ImageStatusResponse {
            image: Some(to_cri(&img)),
            info,
        })
    }

    pub fn pull_image(
        &self,
        spec: Option<cri::ImageSpec>,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(invalid("image.image", "is required"));
        }
        berth_image::reference::Reference::parse(&reference)
            .map_err(|e| invalid("image.image", e.to_string()))?;
        let mut opts = Options {
            hosts_dir: Some(self.cfg.registry.config_path.clone()),
            ..Default::default()
        };
        if let Some(a) = auth {
            opts.auth = Some(AuthConfig {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            });
        }
        let img = self
            .images
            .pull(&reference, &opts)
            .map_err(|e| CriError::Internal(format!("pulling {reference}: {e}")))?;
        Ok(img.id.to_string())
    }

    pub fn remove_image(&self, spec: Option<cri::ImageSpec>) -> Result<()> {
        let key = spec.map(|s| s.image).unwrap_or_default();
        if key.is_empty() {
            return Err(invalid("image.image", "is required"));
        }
        // A container uses its own image and those it mounts as volumes.
        let users: Vec<(String, String)> = self
            .containers()?
            .into_iter()
            .flat_map(|c| {
                std::iter::once(c.image_id.clone())
                    .chain(c.image_volumes.clone())
                    .map(move |i| (i, c.id.clone()))
            })
            .collect();
        let in_use = |img: &berth_image::Image| {
            let id = img.id.to_string();
            users
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, c)| format!("container {c}"))
        };
        match self.images.remove(&key, &in_use) {
            Ok(_) => Ok(()),
            // Removing an image that is not there is success for the kubelet.
            Err(berth_image::Error::NotFound(_)) => Ok(()),
            Err(berth_image::Error::InUse { what, by }) => {
                Err(CriError::Precondition(format!("{what} is in use by {by}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let ts = now_ns();
        let dir = self.cfg.root.join("images");
        // Blobs, layers and the containers' own writes (upper dirs), as
        // containerd reports its snapshotter's usage; never through a
        // mounted rootfs, which would count its layers again.
        let fs = |at: &std::path::Path, used: berth_image::Usage| cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: at.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: used.bytes }),
            inodes_used: Some(cri::UInt64Value { value: used.inodes }),
        };
        let images = fs(&dir, self.images.usage().unwrap_or_default());
        if self.cfg.container_root.as_os_str().is_empty() {
            // One filesystem: the kubelet sees the same numbers for both.
            return Ok(cri::ImageFsInfoResponse {
                image_filesystems: vec![images.clone()],
                container_filesystems: vec![images],
            });
        }
        // Split (KEP-4191): images here, the containers' writes there.
        let containers = fs(
            &self.cfg.container_root,
            self.images.views_usage().unwrap_or_default(),
        );
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![images],
            container_filesystems: vec![containers],
        })
    }
}
