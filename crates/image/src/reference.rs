//! Image references, normalised the way kubelet and containerd do:
//! `busybox` is `docker.io/library/busybox:latest`.
//!
//! The first path component is a registry host only if it contains a `.`
//! or a `:`, or is `localhost`; otherwise the image is on Docker Hub, where
//! single-component names live under `library/`. A reference without tag
//! or digest means `:latest`; with a digest the digest decides what is
//! pulled (a tag beside it is kept for the name only).

use std::fmt;

use crate::{Digest, Error, Result};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path in the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |msg: &str| Error::invalid(format!("image reference {s:?}"), msg);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(Digest::parse(d).map_err(|e| bad(&format!("digest: {e}")))?),
            ),
            None => (s, None),
        };
        // A tag is a ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad(&format!("invalid tag {t:?}")));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad(&format!("invalid registry host {registry:?}")));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for c in repository.split('/') {
            if !valid_component(c) {
                return Err(bad(&format!(
                    "invalid repository component {c:?} (lowercase letters, digits, separators . _ __ -)"
                )));
            }
        }
        if repository.len() > 255 {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest if
    /// there is one, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository at `digest` (a RepoDigest).
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if !b
        .iter()
        .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
    {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; never mixed.
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_kubelet_and_containerd() {
        let d = format!("sha256:{}", "ab".repeat(32));
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("library/busybox", "docker.io/library/busybox:latest".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/busybox:1.36",
                "docker.io/library/busybox:1.36".into(),
            ),
            (
                "docker.io/library/busybox:1",
                "docker.io/library/busybox:1".into(),
            ),
            ("user/app", "docker.io/user/app:latest".into()),
            ("localhost/x", "localhost/x:latest".into()),
            ("localhost:5000/x:tag", "localhost:5000/x:tag".into()),
            ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest".into()),
            (
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io/pause:3.9".into(),
            ),
            ("quay.io/ns/x", "quay.io/ns/x:latest".into()),
            (&format!("x@{d}"), format!("docker.io/library/x@{d}")),
            (
                &format!("host.io/ns/x:tag@{d}"),
                format!("host.io/ns/x:tag@{d}"),
            ),
            (
                "my_img__x.y-z---w",
                "docker.io/library/my_img__x.y-z---w:latest".into(),
            ),
        ] {
            assert_eq!(norm(input), want, "{input}");
        }
        let r = Reference::parse(&format!("host.io/ns/x:tag@{d}")).unwrap();
        assert_eq!(r.object(), d, "the digest decides what is pulled");
        assert_eq!(Reference::parse("busybox").unwrap().object(), "latest");
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "x")
        );
    }

    #[test]
    fn errors_name_the_reference() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:short",
            "busybox@md5:abcd",
            "a//b",
            "host.io/ns/x_.y",
            "a..b",
            "x___y",
        ] {
            let e = Reference::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
