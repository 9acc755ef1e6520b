//! Pulling images from registries (OCI distribution spec).
//!
//! HTTP is done with `ureq`, a small blocking client: a blob's response
//! body is an `io::Read` that goes straight into the store's hashing
//! [`crate::store::Writer`], so nothing is buffered and digest and size are
//! verified on the way. (`oci-client` was considered; it is async on
//! tokio + reqwest and hands blobs to an `AsyncWrite`, which would need a
//! runtime and a bridge for no gain in a library whose callers block.)
//!
//! A pull resolves the reference to a manifest (OCI manifest or index,
//! Docker schema2 manifest or manifest list), picks the platform's
//! manifest from an index, then hands that manifest to the same import
//! path as OCI layouts ([`crate::layout`]), with a fetch function that
//! downloads each blob the import needs. Blobs already stored and layers
//! already unpacked are not downloaded again; two pulls of one blob at
//! once are serialised by the store's ingest lock, so the second finds it
//! stored.
//!
//! Auth: anonymous, basic, and the bearer-token challenge flow (the token
//! endpoint is asked with basic credentials, or an identity token as an
//! OAuth2 refresh token); a registry token is sent as is.
//!
//! Mirrors follow containerd's `hosts.toml` convention:
//! `<hosts_dir>/<host>/hosts.toml` with an optional `server` (the
//! upstream's URL) and `[host."<url>"]` tables, tried in file order before
//! the upstream. The image keeps the name the user gave, never a mirror's.
//!
//! ```toml
//! # <hosts_dir>/docker.io/hosts.toml
//! server = "https://registry-1.docker.io"
//!
//! [host."https://mirror.internal:5000"]
//!   capabilities = ["pull", "resolve"]   # without "resolve": digests only
//!   ca = "mirror-ca.pem"                 # relative to this directory
//!
//! [host."http://10.0.0.5:5000"]         # plain HTTP, said explicitly
//!   skip_verify = false
//! ```

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::layout::{Descriptor, Image, Platform};
use crate::reference::{Reference, DOCKER_HUB};
use crate::{Digest, Error, Result, Snapshotter, Store};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Manifests are small; a bigger one is a broken or hostile registry.
const MAX_MANIFEST: u64 = 4 << 20;

/// Credentials, as CRI's `AuthConfig` carries them.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// An OAuth2 refresh token for the token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl AuthConfig {
    fn basic(&self) -> Result<Option<(String, String)>> {
        if !self.username.is_empty() {
            return Ok(Some((self.username.clone(), self.password.clone())));
        }
        if self.auth.is_empty() {
            return Ok(None);
        }
        let bad = |m: &str| Error::invalid("auth config field \"auth\"", m);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .map_err(|e| bad(&e.to_string()))?;
        let s = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let (u, p) = s.split_once(':').ok_or_else(|| bad("not user:password"))?;
        Ok(Some((u.to_string(), p.to_string())))
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// containerd-style `certs.d` directory with `<host>/hosts.toml`.
    pub hosts_dir: Option<PathBuf>,
    /// Registries spoken to over plain HTTP (opt-in, per host[:port]).
    pub insecure: Vec<String>,
    pub auth: Option<AuthConfig>,
    /// A docker/podman `config.json` (`{"auths": {"<host>": {"auth": ..}}}`),
    /// looked up by the host each request goes to when `auth` is not given
    /// for it.
    pub auth_file: Option<PathBuf>,
    /// `os`, `architecture` and optional `variant` to pick from an index.
    pub platform: Platform,
    /// Attempts per request on network errors and 5xx/429 answers.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hosts_dir: None,
            insecure: Vec::new(),
            auth: None,
            auth_file: None,
            platform: Platform {
                os: "linux".into(),
                architecture: crate::layout::host_arch().into(),
                variant: None,
            },
            attempts: 3,
        }
    }
}

/// One place to pull from: a mirror or the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub url: String,
    /// Extra CA certificates (PEM) trusted for this endpoint.
    pub ca: Vec<PathBuf>,
    /// Skip TLS verification (hosts.toml `skip_verify`): explicit opt-in.
    pub skip_verify: bool,
    /// The reference's own registry (the caller's credentials go only here).
    pub upstream: bool,
    /// hosts.toml `capabilities`: may serve content / resolve tags.
    pub pull: bool,
    pub resolve: bool,
}

#[derive(Deserialize, Default)]
struct HostSettings {
    #[serde(default)]
    ca: Option<OneOrMany>,
    #[serde(default)]
    skip_verify: bool,
    capabilities: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct HostsToml {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostSettings,
    #[serde(default)]
    host: toml::Table,
}

/// Where to pull images of `registry` from, mirrors first, upstream last.
pub fn endpoints(registry: &str, opts: &Options) -> Result<Vec<Endpoint>> {
    let scheme = if opts.insecure.iter().any(|h| h == registry) {
        "http"
    } else {
        "https"
    };
    let api_host = if registry == DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    };
    let mut upstream = Endpoint {
        url: format!("{scheme}://{api_host}"),
        ca: Vec::new(),
        skip_verify: false,
        upstream: true,
        pull: true,
        resolve: true,
    };
    let mut out = Vec::new();
    if let Some(dir) = &opts.hosts_dir {
        let path = dir.join(registry).join("hosts.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let what = path.display().to_string();
                let h: HostsToml = toml::from_str(&text).map_err(|e| Error::invalid(&what, e))?;
                // Relative CA paths are relative to the host's directory.
                let base = path.parent().unwrap_or(dir);
                let settings = |s: HostSettings, url: String, upstream: bool| Endpoint {
                    url,
                    ca: match s.ca {
                        None => Vec::new(),
                        Some(OneOrMany::One(c)) => vec![base.join(c)],
                        Some(OneOrMany::Many(v)) => v.into_iter().map(|c| base.join(c)).collect(),
                    },
                    skip_verify: s.skip_verify,
                    upstream,
                    pull: s
                        .capabilities
                        .as_ref()
                        .is_none_or(|c| c.iter().any(|x| x == "pull")),
                    resolve: s
                        .capabilities
                        .as_ref()
                        .is_none_or(|c| c.iter().any(|x| x == "resolve")),
                };
                let url = match h.server {
                    Some(s) => check_url(&what, "server", &s)?,
                    None => upstream.url.clone(),
                };
                upstream = settings(h.settings, url, true);
                for (url, table) in h.host {
                    let field = format!("host.{url:?}");
                    let s: HostSettings = table
                        .try_into()
                        .map_err(|e| Error::invalid(&what, format!("{field}: {e}")))?;
                    out.push(settings(s, check_url(&what, &field, &url)?, false));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    out.push(upstream);
    Ok(out)
}

fn check_url(file: &str, field: &str, url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/v2").unwrap_or(url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::invalid(
            file,
            format!("{field}: {url:?} is not an http:// or https:// URL"),
        ));
    }
    Ok(url.to_string())
}

/// An HTTP agent for `ep`: webpki roots plus its extra CAs, or no
/// verification at all when `skip_verify` says so.
fn agent(ep: &Endpoint) -> Result<ureq::Agent> {
    let b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60));
    if ep.ca.is_empty() && !ep.skip_verify {
        return Ok(b.build());
    }
    use rustls_pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(&ep.url, e))?;
    let config = if ep.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for p in &ep.ca {
            let what = format!("CA file {} for {}", p.display(), ep.url);
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(p)
                .map_err(|e| Error::invalid(&what, e))?;
            let mut n = 0;
            for c in certs {
                roots
                    .add(c.map_err(|e| Error::invalid(&what, e))?)
                    .map_err(|e| Error::invalid(&what, e))?;
                n += 1;
            }
            if n == 0 {
                return Err(Error::invalid(&what, "no PEM certificate in it"));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(b.tls_config(std::sync::Arc::new(config)).build())
}

/// Accepts any server certificate (signatures are still checked, so the
/// handshake is sound; only the identity is not).
#[derive(Debug)]
struct NoVerify(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Credentials for `ep`: the caller's for the upstream, else the auth
/// file's entry for the endpoint's host.
fn credentials(ep: &Endpoint, opts: &Options) -> Result<AuthConfig> {
    if ep.upstream {
        if let Some(a) = &opts.auth {
            return Ok(a.clone());
        }
    }
    let Some(path) = &opts.auth_file else {
        return Ok(AuthConfig::default());
    };
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(Deserialize, Default)]
    struct Entry {
        #[serde(default)]
        auth: String,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default, rename = "identitytoken")]
        identity_token: String,
        #[serde(default, rename = "registrytoken")]
        registry_token: String,
    }
    let what = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthConfig::default()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let f: File = serde_json::from_slice(&text).map_err(|e| Error::invalid(&what, e))?;
    let host = ep.url.split_once("://").map_or(ep.url.as_str(), |(_, h)| h);
    // Keys may be bare hosts or URLs; Docker Hub's is its old index URL.
    let key_host = |k: &str| {
        let k = k.split_once("://").map_or(k, |(_, h)| h);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let hub = ["registry-1.docker.io", "index.docker.io", "docker.io"];
    let entry = f.auths.into_iter().find(|(k, _)| {
        let k = key_host(k);
        k == host || (hub.contains(&host) && hub.contains(&k.as_str()))
    });
    Ok(match entry {
        Some((_, e)) => AuthConfig {
            username: e.username,
            password: e.password,
            auth: e.auth,
            identity_token: e.identity_token,
            registry_token: e.registry_token,
        },
        None => AuthConfig::default(),
    })
}

/// One registry endpoint and the token it granted.
struct Client<'a> {
    agent: ureq::Agent,
    base: String,
    repo: String,
    opts: &'a Options,
    auth: AuthConfig,
    /// Cached answer to the last challenge; behind a lock because layers
    /// download from several threads, inside the import's `Fn` callbacks.
    authorization: std::sync::Mutex<Option<String>>,
}

enum Fail {
    /// Try the next endpoint (unreachable, not found there, server error).
    Next(Error),
    /// Give up (bad content, bad credentials, local I/O).
    Stop(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Stop(e)
    }
}

impl Client<'_> {
    fn what(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repo)
    }

    /// GET with auth challenges answered and transient errors retried.
    fn get(&self, path: &str, accept: Option<&str>) -> std::result::Result<ureq::Response, Fail> {
        self.get_from(path, accept, 0)
    }

    /// [`Client::get`] asking for the bytes from `from` on (a Range
    /// request, when not 0); the answer may be 206 or the whole body.
    fn get_from(
        &self,
        path: &str,
        accept: Option<&str>,
        from: u64,
    ) -> std::result::Result<ureq::Response, Fail> {
        let url = self.what(path);
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if from > 0 {
                req = req.set("Range", &format!("bytes={from}-"));
            }
            let auth = self.authorization.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = auth.as_deref() {
                req = req.set("Authorization", a);
            }
            drop(auth);
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if !challenged => {
                    challenged = true;
                    let c = r.header("www-authenticate").unwrap_or("").to_string();
                    let a = self.answer(&url, &c)?;
                    *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    let e = Error::invalid(&url, format!("HTTP {code}: {}", body.trim()));
                    if (code >= 500 || code == 429) && attempt < self.opts.attempts.max(1) {
                        backoff(attempt);
                        continue;
                    }
                    return Err(match code {
                        401 | 403 => Fail::Stop(e),
                        _ => Fail::Next(e),
                    });
                }
                Err(e) => {
                    if attempt < self.opts.attempts.max(1) {
                        backoff(attempt);
                        continue;
                    }
                    return Err(Fail::Next(Error::invalid(&url, e)));
                }
            }
        }
    }

    /// The Authorization header that answers a `WWW-Authenticate` challenge.
    fn answer(&self, url: &str, challenge: &str) -> std::result::Result<String, Fail> {
        let auth = &self.auth;
        let basic = auth.basic()?;
        let denied = |m: &str| Fail::Stop(Error::invalid(url, format!("unauthorized: {m}")));
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let (u, p) = basic.ok_or_else(|| denied("the registry wants credentials"))?;
            return Ok(basic_header(&u, &p));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(&format!("unknown challenge {challenge:?}")));
        }
        if !auth.registry_token.is_empty() {
            return Ok(format!("Bearer {}", auth.registry_token));
        }
        let params = parse_challenge(params);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let realm = get("realm").ok_or_else(|| denied("bearer challenge without realm"))?;
        let service = get("service").unwrap_or("");
        let scope = get("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let resp = if !auth.identity_token.is_empty() {
            self.agent.post(realm).send_form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &auth.identity_token),
                ("service", service),
                ("scope", &scope),
                ("client_id", "berth"),
            ])
        } else {
            let mut req = self
                .agent
                .get(realm)
                .query("service", service)
                .query("scope", &scope);
            if let Some((u, p)) = &basic {
                req = req.set("Authorization", &basic_header(u, p));
            }
            req.call()
        };
        let resp = resp.map_err(|e| denied(&format!("token endpoint {realm}: {e}")))?;
        let t: Token = serde_json::from_reader(resp.into_reader())
            .map_err(|e| denied(&format!("token endpoint {realm}: {e}")))?;
        let t = t
            .token
            .or(t.access_token)
            .ok_or_else(|| denied(&format!("token endpoint {realm} sent no token")))?;
        Ok(format!("Bearer {t}"))
    }

    /// The manifest `object` (tag or digest): its bytes, media type, digest.
    fn manifest(&self, object: &str) -> std::result::Result<(Vec<u8>, String, Digest), Fail> {
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let r = self.get(&format!("manifests/{object}"), Some(&accept))?;
        let url = self.what(&format!("manifests/{object}"));
        let ctype = r.header("content-type").unwrap_or("").to_string();
        let announced = r.header("docker-content-digest").map(str::to_string);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(r.into_reader(), MAX_MANIFEST + 1),
            &mut bytes,
        )
        .map_err(|e| Fail::Next(Error::invalid(&url, e)))?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(Fail::Stop(Error::invalid(
                &url,
                "manifest larger than 4 MiB",
            )));
        }
        let digest = Digest::of(&bytes);
        // By digest, the bytes must match it; by tag, what the registry
        // says it sent (when it says so, in sha256).
        let expected = Digest::parse(object)
            .ok()
            .or_else(|| announced.and_then(|a| Digest::parse(&a).ok()));
        if let Some(want) = expected {
            if want != digest {
                return Err(Fail::Stop(Error::Mismatch {
                    what: format!("digest of manifest {url}"),
                    expected: want.to_string(),
                    actual: digest.to_string(),
                }));
            }
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: String,
            #[serde(default)]
            schema_version: u32,
            manifests: Option<serde_json::Value>,
        }
        let p: Probe = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(&url, e))?;
        let mt = [
            ctype.split(';').next().unwrap_or("").trim(),
            p.media_type.as_str(),
        ]
        .into_iter()
        .find(|m| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(m))
        .map(str::to_string)
        .or_else(|| {
            (p.schema_version == 2).then(|| {
                if p.manifests.is_some() {
                    OCI_INDEX
                } else {
                    OCI_MANIFEST
                }
                .to_string()
            })
        })
        .ok_or_else(|| {
            Error::invalid(
                &url,
                format!(
                    "unsupported manifest (content type {ctype:?}, schemaVersion {})",
                    p.schema_version
                ),
            )
        })?;
        Ok((bytes, mt, digest))
    }

    fn blob(&self, d: &Descriptor, store: &Store) -> std::result::Result<(), Fail> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(w) = store.writer(&d.digest, Some(d.size))? else {
                return Ok(());
            };
            // The store hashes while writing and commits only a blob of the
            // right digest and size; a bad one is deleted, not kept. A
            // connection lost mid-body leaves the ingest file, which the
            // next attempt continues after the bytes it already has.
            let (body, start) = self.blob_body(d, w.offset())?;
            match w.fill(start, body) {
                Err(Error::Io { .. }) if attempt < self.opts.attempts.max(1) => backoff(attempt),
                other => return Ok(other?),
            }
        }
    }

    /// The body of blob `d` and the byte it starts at: `from` if the
    /// registry honoured the Range request (206), else 0 (it sent the whole
    /// blob, and the caller skips what it has).
    fn blob_body(
        &self,
        d: &Descriptor,
        from: u64,
    ) -> std::result::Result<(Box<dyn std::io::Read + Send>, u64), Fail> {
        // All of it held (not yet committed): nothing to ask a range for.
        let from = if from < d.size { from } else { 0 };
        let path = format!("blobs/{}", d.digest);
        let r = self.get_from(&path, None, from)?;
        if from == 0 || r.status() != 206 {
            return Ok((Box::new(r.into_reader()), 0));
        }
        let range = r.header("content-range").unwrap_or("").to_string();
        if !range.starts_with(&format!("bytes {from}-")) {
            return Err(Fail::Next(Error::invalid(
                self.what(&path),
                format!("asked for bytes {from}-, got Content-Range {range:?}"),
            )));
        }
        Ok((Box::new(r.into_reader()), from))
    }
}

pub(crate) fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
}

fn basic_header(u: &str, p: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    format!("Basic {b}")
}

/// `realm="x",service="y"` -> pairs (quoted values may contain commas).
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(i) => (&v[..i], &v[i..]),
                None => (v, ""),
            }
        };
        out.push((k, val.to_string()));
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

fn pick_platform(index: &[u8], what: &str, want: &Platform) -> Result<Descriptor> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let idx: Index = serde_json::from_slice(index).map_err(|e| Error::invalid(what, e))?;
    let fits = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && want.variant.as_deref().is_none_or(|v| {
                    // arm64's only variant is v8; containerd treats it as none.
                    let norm = |x: Option<&str>| match (p.architecture.as_str(), x) {
                        ("arm64", Some("v8")) => None,
                        (_, x) => x.map(str::to_string),
                    };
                    norm(p.variant.as_deref()) == norm(Some(v))
                })
        })
    };
    idx.manifests.iter().find(fits).cloned().ok_or_else(|| {
        let v = want
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        Error::NotFound(format!(
            "{}/{}{v} manifest in {what}",
            want.os, want.architecture
        ))
    })
}

type Gates = std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>;
static IN_FLIGHT: std::sync::LazyLock<std::sync::Mutex<Gates>> =
    std::sync::LazyLock::new(Default::default);

/// Pulls `reference` into `store` and `snaps`; the caller records the
/// returned image (see [`crate::ImageRoot::pull`]).
pub fn pull(reference: &str, opts: &Options, store: &Store, snaps: &Snapshotter) -> Result<Image> {
    let r = Reference::parse(reference)?;
    // Pulls of one image into one store in this process run one after
    // another: the later ones find every blob and layer in place and only
    // resolve the manifest again. (Across processes, the store's ingest
    // locks keep one download per blob.)
    let key = format!("{}\0{r}", store.root().display());
    let gate = {
        let mut m = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, g| std::sync::Arc::strong_count(g) > 1);
        m.entry(key).or_default().clone()
    };
    let _turn = gate.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = None;
    for ep in endpoints(&r.registry, opts)? {
        // A mirror that may not resolve tags serves pulls by digest only.
        if !ep.pull || (r.digest.is_none() && !ep.resolve) {
            continue;
        }
        let c = Client {
            agent: agent(&ep)?,
            base: ep.url.clone(),
            repo: r.repository.clone(),
            opts,
            auth: credentials(&ep, opts)?,
            authorization: Default::default(),
        };
        match pull_from(&c, &r, store, snaps) {
            Ok(img) => return Ok(img),
            Err(Fail::Next(e)) => last = Some(e),
            Err(Fail::Stop(e)) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("image {r}"))))
}

fn pull_from(
    c: &Client,
    r: &Reference,
    store: &Store,
    snaps: &Snapshotter,
) -> std::result::Result<Image, Fail> {
    let (mut bytes, mut mt, mut digest) = c.manifest(&r.object())?;
    // What the name resolved to (an index, if multi-platform) is the
    // RepoDigest, as with docker and containerd.
    let top = digest.clone();
    let mut hops = 0;
    while mt == OCI_INDEX || mt == DOCKER_LIST {
        hops += 1;
        if hops > 2 {
            return Err(Fail::Stop(Error::invalid(
                r.to_string(),
                "indexes nested too deep",
            )));
        }
        let desc = pick_platform(&bytes, &format!("index {digest} of {r}"), &c.opts.platform)?;
        (bytes, mt, digest) = c.manifest(&desc.digest.to_string())?;
    }
    store.put(&bytes)?;
    let desc = Descriptor {
        media_type: mt,
        digest,
        size: bytes.len() as u64,
        annotations: Default::default(),
        platform: None,
    };
    // The same import as an OCI layout's, with blobs fetched from here.
    // A blob this endpoint cannot serve sends the pull to the next one.
    let unavailable = std::sync::atomic::AtomicBool::new(false);
    let fail = |f: Fail| match f {
        Fail::Next(e) => {
            unavailable.store(true, std::sync::atomic::Ordering::SeqCst);
            e
        }
        Fail::Stop(e) => e,
    };
    let fetch = |d: &Descriptor| -> Result<()> { c.blob(d, store).map_err(fail) };
    // Layers not unpacked yet are unpacked as they download, several at
    // once (see `layout::Stream`).
    let open = |d: &Descriptor, from: u64| -> Result<(Box<dyn std::io::Read>, u64)> {
        let (body, start) = c.blob_body(d, from).map_err(fail)?;
        Ok((body, start))
    };
    let stream = crate::layout::Stream {
        open: &open,
        attempts: c.opts.attempts.max(1),
    };
    match crate::layout::import_manifest(&desc, &fetch, Some(&stream), "", store, snaps) {
        // `name:tag@digest` is the tag `name:tag` (pinned to the digest,
        // which decided what was pulled) and the RepoDigest `name@digest`.
        Ok(img) => Ok(match &r.tag {
            Some(t) => img.named(&format!("{}:{t}", r.name()), &top),
            None => img.named(&r.with_digest(&top), &top),
        }),
        Err(e) if unavailable.load(std::sync::atomic::Ordering::SeqCst) => Err(Fail::Next(e)),
        Err(e) => Err(Fail::Stop(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1].1, "registry.docker.io");
        assert_eq!(p[2].1, "repository:library/busybox:pull,push");
    }

    #[test]
    fn hosts_toml_mirrors_in_order_then_upstream() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("docker.io")).unwrap();
        std::fs::write(
            t.path().join("docker.io/hosts.toml"),
            "server = \"https://registry-1.docker.io\"\n\
             [host.\"https://z-mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://a-mirror.example:5000/v2\"]\n",
        )
        .unwrap();
        let opts = Options {
            hosts_dir: Some(t.path().to_path_buf()),
            ..Default::default()
        };
        let urls = |r: &str| -> Vec<String> {
            endpoints(r, &opts)
                .unwrap()
                .into_iter()
                .map(|e| e.url)
                .collect()
        };
        assert_eq!(
            urls("docker.io"),
            [
                "https://z-mirror.example",
                "http://a-mirror.example:5000",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(urls("quay.io"), ["https://quay.io"]);
        std::fs::create_dir(t.path().join("tls.io")).unwrap();
        std::fs::write(
            t.path().join("tls.io/hosts.toml"),
            "ca = \"up.pem\"\n[host.\"https://m.example\"]\nca = [\"/etc/a.pem\", \"b.pem\"]\nskip_verify = true\n",
        )
        .unwrap();
        let eps = endpoints("tls.io", &opts).unwrap();
        assert!(eps[0].skip_verify && !eps[0].upstream);
        assert_eq!(
            eps[0].ca,
            [PathBuf::from("/etc/a.pem"), t.path().join("tls.io/b.pem")]
        );
        assert!(!eps[1].skip_verify && eps[1].upstream);
        assert_eq!(eps[1].ca, [t.path().join("tls.io/up.pem")]);
        assert!(eps[0].pull && eps[0].resolve);
        let eps = endpoints("docker.io", &opts).unwrap();
        assert!(eps[0].pull && eps[0].resolve, "capabilities pull, resolve");
        std::fs::create_dir(t.path().join("bad.io")).unwrap();
        std::fs::write(t.path().join("bad.io/hosts.toml"), "[host.\"mirror\"]\n").unwrap();
        let e = endpoints("bad.io", &opts).unwrap_err().to_string();
        assert!(e.contains("hosts.toml") && e.contains("\"mirror\""), "{e}");
    }

    #[test]
    fn auth_file_is_looked_up_by_host() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                          "quay.io": {"identitytoken": "tok"}}}"#,
        )
        .unwrap();
        let opts = Options {
            auth_file: Some(file),
            auth: Some(AuthConfig {
                username: "caller".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ep = |url: &str, upstream| Endpoint {
            url: url.into(),
            ca: vec![],
            skip_verify: false,
            upstream,
            pull: true,
            resolve: true,
        };
        let hub = credentials(&ep("https://registry-1.docker.io", false), &opts).unwrap();
        assert_eq!(hub.basic().unwrap(), Some(("hub".into(), "pw".into())));
        let quay = credentials(&ep("https://quay.io", false), &opts).unwrap();
        assert_eq!(quay.identity_token, "tok");
        // The caller's credentials go to the upstream only, never a mirror.
        let up = credentials(&ep("https://quay.io", true), &opts).unwrap();
        assert_eq!(up.username, "caller");
        let other = credentials(&ep("https://mirror.example", false), &opts).unwrap();
        assert_eq!(other.basic().unwrap(), None);
    }

    #[test]
    fn auth_field_decodes() {
        let a = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("me:secret"),
            ..Default::default()
        };
        assert_eq!(a.basic().unwrap(), Some(("me".into(), "secret".into())));
        let bad = AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(bad.basic().unwrap_err().to_string().contains("auth"));
    }

    #[test]
    fn platform_selection_honours_variant() {
        let idx = serde_json::json!({"manifests": [
            {"mediaType": OCI_MANIFEST, "digest": Digest::of(b"a").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"mediaType": OCI_MANIFEST, "digest": Digest::of(b"b").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"mediaType": OCI_MANIFEST, "digest": Digest::of(b"c").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let bytes = serde_json::to_vec(&idx).unwrap();
        let want = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(Into::into),
        };
        assert_eq!(
            pick_platform(&bytes, "i", &want("arm", Some("v7")))
                .unwrap()
                .digest,
            Digest::of(b"b")
        );
        assert_eq!(
            pick_platform(&bytes, "i", &want("amd64", None))
                .unwrap()
                .digest,
            Digest::of(b"c")
        );
        let arm64 = serde_json::to_vec(&serde_json::json!({"manifests": [
            {"mediaType": OCI_MANIFEST, "digest": Digest::of(b"d").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}}]}))
        .unwrap();
        assert!(pick_platform(&arm64, "i", &want("arm64", Some("v8"))).is_ok());
        assert!(pick_platform(&bytes, "i", &want("arm", Some("v8"))).is_err());
        let e = pick_platform(&bytes, "i", &want("s390x", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/s390x"), "{e}");
    }
}
