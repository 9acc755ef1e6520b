//! Image volumes (KEP-4639, GA in Kubernetes 1.36): `Mount.image` names an
//! image the kubelet pulled; its files are mounted read-only (and never
//! executable from) at the container path, all of it or the directory
//! `image_sub_path` names. Each is a rootfs view of its own (`<ctr>-m<i>`),
//! so the image's layers stay referenced while the container exists, and is
//! removed with the container.

use crate::daemon::Daemon;
use crate::error::{invalid, Result};
use crate::model::PodRecord;
use berth_cri_api::v1::ContainerConfig;
use berth_oci::fsutil::{openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

/// The view of container `ctr`'s image volume at `config.mounts[i]`.
pub fn view_id(ctr: &str, i: usize) -> String {
    format!("{ctr}-m{i}")
}

/// The container a view belongs to: its own rootfs view or an image volume's.
pub fn owner_of(view: &str) -> &str {
    view.split_once("-m").map_or(view, |(c, _)| c)
}

/// An image volume asked for by the config: (mount index, image reference).
fn wanted(cfg: &ContainerConfig) -> impl Iterator<Item = (usize, &str)> {
    cfg.mounts.iter().enumerate().filter_map(|(i, m)| {
        m.image
            .as_ref()
            .map(|im| im.image.as_str())
            .filter(|r| !r.is_empty())
            .map(|r| (i, r))
    })
}

impl Daemon {
    /// The images the config's image volumes name, resolved in the store
    /// (ids, in mount order); one the kubelet did not pull is refused,
    /// naming the mount.
    pub fn image_volume_images(
        &self,
        cfg: &ContainerConfig,
    ) -> Result<Vec<(usize, berth_image::Image)>> {
        wanted(cfg)
            .map(|(i, r)| {
                self.images.images.get(r).map(|img| (i, img)).map_err(|_| {
                    invalid(
                        format!("config.mounts[{i}].image"),
                        format!("image {r:?} is not present (pull it first)"),
                    )
                })
            })
            .collect()
    }

    /// Makes the read-only view of each image volume and returns (mount
    /// index, host directory to bind). Views made before an error are
    /// removed by the caller's cleanup (they carry the container's id).
    pub fn prepare_image_volumes(
        &self,
        ctr: &str,
        cfg: &ContainerConfig,
        pod: &PodRecord,
        images: &[(usize, berth_image::Image)],
    ) -> Result<Vec<(usize, PathBuf)>> {
        let mut out = Vec::new();
        for (i, img) in images {
            let vid = view_id(ctr, *i);
            let view = match &pod.userns {
                None => self.images.snapshots.create_view(&vid, &img.chain_id)?,
                Some(u) => self.idmapped_view(&vid, &img.chain_id, u)?,
            };
            let sub = &cfg.mounts[*i].image_sub_path;
            let field = format!("config.mounts[{i}].image_sub_path");
            out.push((*i, sub_path(&view.rootfs, sub, &field)?));
        }
        Ok(out)
    }

    /// Removes the image-volume views of container `ctr`.
    pub fn remove_image_volumes(&self, ctr: &str) {
        for v in self.images.snapshots.views().unwrap_or_default() {
            if v.id != ctr && owner_of(&v.id) == ctr {
                if let Err(e) = self.images.snapshots.remove_view(&v.id) {
                    tracing::warn!(container = %ctr, view = %v.id, "removing an image volume: {e}");
                }
            }
        }
    }
}

/// The directory `sub` inside the image's view `root` (the whole view when
/// empty): relative, existing, a directory, and reached without leaving
/// the image (no `..`, no symlink pointing out).
fn sub_path(root: &Path, sub: &str, field: &str) -> Result<PathBuf> {
    if sub.is_empty() {
        return Ok(root.to_path_buf());
    }
    let p = Path::new(sub);
    if p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            field,
            format!("{sub:?} must be a relative path inside the image"),
        ));
    }
    let dir = berth_oci::fsutil::open_path(root, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| invalid(field, format!("the image's view: {e}")))?;
    let fd = openat2(
        dir.as_raw_fd(),
        p,
        libc::O_PATH | libc::O_DIRECTORY,
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| {
        let why = match e {
            libc::ENOENT => "does not exist in the image".to_string(),
            libc::ENOTDIR => "is not a directory".to_string(),
            libc::EXDEV => "leads out of the image".to_string(),
            e => std::io::Error::from_raw_os_error(e).to_string(),
        };
        invalid(field, format!("{sub:?} {why}"))
    })?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| invalid(field, format!("{sub:?}: {e}")))?;
    if !real.starts_with(root) {
        return Err(invalid(field, format!("{sub:?} leads out of the image")));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_ids_name_their_container() {
        let c = "a".repeat(64);
        assert_eq!(owner_of(&view_id(&c, 3)), c);
        assert_eq!(owner_of(&c), c);
    }

    #[test]
    fn sub_paths_stay_inside_the_image() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        std::fs::create_dir_all(root.join("data/inner")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("data/inner", root.join("rel")).unwrap();
        let f = "config.mounts[0].image_sub_path";
        assert_eq!(sub_path(&root, "", f).unwrap(), root);
        assert_eq!(
            sub_path(&root, "data/inner", f).unwrap(),
            root.join("data/inner")
        );
        assert_eq!(sub_path(&root, "rel", f).unwrap(), root.join("data/inner"));
        for (sub, why) in [
            ("/data", "relative"),
            ("data/../..", "relative"),
            ("nope", "does not exist"),
            ("file", "not a directory"),
            ("abs", "out of the image"),
            ("up", "out of the image"),
        ] {
            let e = sub_path(&root, sub, f).unwrap_err().to_string();
            assert!(e.starts_with(f) && e.contains(why), "{sub}: {e}");
        }
    }
}
