//! Images: `images`, `pull`, `rmi`, `inspecti`.

use crate::client::Cri;
use crate::output::{human_size, print_data, short, Format, Table};
use anyhow::Result;
use berth_cri_api::v1 as cri;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Only this image (a reference)
    pub image: Option<String>,
    /// Only print ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Full ids
    #[arg(long)]
    pub no_trunc: bool,
}

fn split_tag(r: &str) -> (String, String) {
    // The tag is after the last ':' that follows the last '/'.
    let slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[slash..].rfind(':') {
        Some(i) => (r[..slash + i].to_string(), r[slash + i + 1..].to_string()),
        None => (r.to_string(), "latest".into()),
    }
}

pub async fn list(c: &mut Cri, o: Format, a: ImagesArgs) -> Result<()> {
    let images = c
        .img
        .list_images(cri::ListImagesRequest {
            filter: a.image.as_ref().map(|i| cri::ImageFilter {
                image: Some(cri::ImageSpec {
                    image: i.clone(),
                    ..Default::default()
                }),
            }),
        })
        .await?
        .into_inner()
        .images;
    if a.quiet {
        for i in &images {
            println!("{}", i.id);
        }
        return Ok(());
    }
    if o != Format::Table {
        return print_data(o, &serde_json::json!({ "images": images }));
    }
    let mut head = vec!["IMAGE", "TAG"];
    if a.digests {
        head.push("DIGEST");
    }
    head.extend(["IMAGE ID", "SIZE"]);
    let mut t = Table::new(&head);
    for i in &images {
        let digest = i
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let tags: Vec<(String, String)> = if i.repo_tags.is_empty() {
            let repo = i
                .repo_digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map(|(r, _)| r.to_string())
                .unwrap_or_else(|| "<none>".into());
            vec![(repo, "<none>".into())]
        } else {
            i.repo_tags.iter().map(|r| split_tag(r)).collect()
        };
        for (repo, tag) in tags {
            let mut row = vec![repo, tag];
            if a.digests {
                row.push(if a.no_trunc {
                    digest.clone()
                } else {
                    short(&digest)
                });
            }
            row.push(if a.no_trunc {
                i.id.clone()
            } else {
                short(&i.id)
            });
            row.push(human_size(i.size));
            t.row(row);
        }
    }
    t.print();
    Ok(())
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image reference
    pub image: String,
    /// USER:PASSWORD for the registry
    #[arg(long)]
    pub creds: Option<String>,
    /// Pod sandbox config to pull for (JSON or YAML)
    #[arg(long)]
    pub pod_config: Option<std::path::PathBuf>,
    /// No progress display
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn pull(c: &mut Cri, a: PullArgs) -> Result<()> {
    let pcfg = match &a.pod_config {
        Some(p) => Some(
            crate::config::load::<crate::config::PodConfig>(p)
                .and_then(|x| x.into_cri())
                .map_err(|e| crate::coded(crate::EXIT_USAGE, format!("{e:#}")))?,
        ),
        None => None,
    };
    let auth = match &a.creds {
        Some(cr) => {
            let (u, p) = cr
                .split_once(':')
                .ok_or_else(|| crate::coded(crate::EXIT_USAGE, "--creds: use USER:PASSWORD"))?;
            Some(cri::AuthConfig {
                username: u.into(),
                password: p.into(),
                ..Default::default()
            })
        }
        None => None,
    };
    let r = pull_image(c, &a.image, auth, pcfg, !a.quiet).await?;
    println!("Image is up to date for {r}");
    Ok(())
}

/// PullImage with a progress line on a terminal's stderr. CRI's pull is
/// one call with no progress events, so it shows the elapsed time and, at
/// the end, the size.
pub async fn pull_image(
    c: &mut Cri,
    image: &str,
    auth: Option<cri::AuthConfig>,
    pcfg: Option<cri::PodSandboxConfig>,
    progress: bool,
) -> Result<String> {
    let show = progress && std::io::stderr().is_terminal();
    let name = image.to_string();
    let ticker = show.then(|| {
        tokio::spawn(async move {
            let t0 = Instant::now();
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            loop {
                eprint!(
                    "\r{} pulling {name} ... {:.1}s",
                    frames[i % 4],
                    t0.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let t0 = Instant::now();
    let r = c
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth,
            sandbox_config: pcfg,
        })
        .await;
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[2K");
    }
    let r = r
        .map_err(|s| {
            anyhow::Error::new(s).context(format!(
                "pulling {image} (check the name, the registry's reachability and --creds)"
            ))
        })?
        .into_inner()
        .image_ref;
    if show {
        let size = image_status(c, image)
            .await
            .ok()
            .flatten()
            .map(|i| human_size(i.size))
            .unwrap_or_default();
        eprintln!(
            "pulled {image} ({size}) in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(r)
}

pub async fn image_status(c: &mut Cri, image: &str) -> Result<Option<cri::Image>> {
    Ok(c.img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

/// Pulls `image` unless it is present (or always, if `always`).
pub async fn ensure_image(
    c: &mut Cri,
    image: &str,
    pcfg: &cri::PodSandboxConfig,
    always: bool,
) -> Result<()> {
    if !always && image_status(c, image).await?.is_some() {
        return Ok(());
    }
    pull_image(c, image, None, Some(pcfg.clone()), true).await?;
    Ok(())
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Image references or ids
    pub images: Vec<String>,
    /// Remove every image
    #[arg(short, long)]
    pub all: bool,
}

pub async fn rmi(c: &mut Cri, a: RmiArgs) -> Result<()> {
    let mut refs = a.images.clone();
    if a.all {
        let images = c
            .img
            .list_images(cri::ListImagesRequest::default())
            .await?
            .into_inner()
            .images;
        refs.extend(images.into_iter().map(|i| i.id));
    } else if refs.is_empty() {
        return Err(crate::coded(
            crate::EXIT_USAGE,
            "rmi needs image references, or --all",
        ));
    }
    for r in refs {
        let Some(img) = image_status(c, &r).await? else {
            return Err(crate::coded(
                crate::EXIT_NOT_FOUND,
                format!("no image {r:?} (list them with `berthctl images`)"),
            ));
        };
        c.img
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: img.id.clone(),
                    ..Default::default()
                }),
            })
            .await?;
        for t in img.repo_tags.iter().chain(&img.repo_digests) {
            println!("Deleted: {t}");
        }
        if img.repo_tags.is_empty() && img.repo_digests.is_empty() {
            println!("Deleted: {}", img.id);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct InspectiArgs {
    /// Image references or ids
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn inspecti(c: &mut Cri, o: Format, a: InspectiArgs) -> Result<()> {
    let mut out = Vec::new();
    for r in &a.images {
        let resp = c
            .img
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: r.clone(),
                    ..Default::default()
                }),
                verbose: true,
            })
            .await?
            .into_inner();
        if resp.image.is_none() {
            return Err(crate::coded(
                crate::EXIT_NOT_FOUND,
                format!("no image {r:?} (list them with `berthctl images`)"),
            ));
        }
        out.push(serde_json::json!({
            "status": resp.image,
            "info": super::runtime_info(&resp.info),
        }));
    }
    let v = if out.len() == 1 {
        out.pop().unwrap_or_default()
    } else {
        serde_json::Value::Array(out)
    };
    print_data(o, &v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags() {
        assert_eq!(
            super::split_tag("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            super::split_tag("localhost:5000/a"),
            ("localhost:5000/a".into(), "latest".into())
        );
    }
}
