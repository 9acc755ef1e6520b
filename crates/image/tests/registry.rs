//! Pulls from a real registry: Debian's `docker-registry` on 127.0.0.1,
//! holding the test busybox image pushed there by `skopeo`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use berth_image::registry::Options;
use berth_image::{Digest, ImageRoot};
use berth_testutil::registry::{self, free_port, Registry};

/// `user:s3cret`, bcrypt with the lowest cost (fast to check).
const HTPASSWD: &str = "user:$2b$04$9QjjQnrrsATREz69CGUwxeSphOswPxlBz1njK4.ZM5bMK40uKAOey\n";

#[derive(Default)]
struct Config {
    /// Basic auth with [`HTPASSWD`].
    basic_auth: bool,
    /// HTTPS with a self-signed certificate for 127.0.0.1 (`reg.cert()`).
    tls: bool,
    /// HTTPS with a certificate signed by a test CA (`reg.ca()`).
    tls_ca: bool,
}

fn start_with(cfg: Config) -> Registry {
    Registry::with(registry::Config {
        htpasswd: cfg.basic_auth.then(|| HTPASSWD.to_string()),
        tls: cfg.tls,
        tls_ca: cfg.tls_ca,
        ..Default::default()
    })
}

/// Pushes the test image (an `oci-archive`) as `repo:latest`.
fn push(reg: &Registry, archive: &Path, repo: &str, extra: &[&str]) {
    let mut args = extra.to_vec();
    if reg.has_htpasswd() {
        args.extend(["--dest-creds", "user:s3cret"]);
    }
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        repo,
        &args,
    );
}

fn blob_data(reg: &Registry, d: &Digest) -> PathBuf {
    reg.blob_path(d.hex())
}

struct Fixture {
    t: tempfile::TempDir,
    archive: PathBuf,
    /// The image as importing the archive directly gives it.
    expected: berth_image::Image,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("image.tar");
    berth_testutil::write_image_archive(&archive, "latest", &["sh"]).unwrap();
    let root = ImageRoot::open(t.path().join("reference")).unwrap();
    let expected = root
        .import_archive(fs::File::open(&archive).unwrap(), None, "x")
        .unwrap();
    Fixture {
        t,
        archive,
        expected,
    }
}

fn opts(insecure: &[String]) -> Options {
    Options {
        insecure: insecure.to_vec(),
        attempts: 1,
        ..Default::default()
    }
}

#[test]
fn pull_by_tag_and_digest() {
    let f = fixture();
    let reg = Registry::start();
    push(&reg, &f.archive, "test/busybox", &[]);
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let name = format!("{}/test/busybox", reg.host());
    let img = root.pull(&name, &opts(&[reg.host()])).unwrap();
    assert_eq!(img.id, f.expected.id, "image ID is the config digest");
    assert_eq!(img.repo_tags, vec![format!("{name}:latest")]);
    assert!(root
        .snapshots
        .layer_path(&img.chain_id)
        .join("bin/busybox")
        .is_file());
    assert_eq!(
        root.images.get(&format!("{name}:latest")).unwrap().id,
        img.id
    );

    let by_digest = format!("{name}@{}", img.manifest);
    let again = root.pull(&by_digest, &opts(&[reg.host()])).unwrap();
    assert_eq!(again.id, img.id);
    assert_eq!(again.repo_digests, vec![by_digest.clone()]);

    // `name:tag@digest`: the digest decides what is pulled; the record
    // gets the tag `name:tag` and the RepoDigest `name@digest`, never the
    // whole string (as containerd records it for the kubelet).
    let fresh = ImageRoot::open(f.t.path().join("pinned")).unwrap();
    let pinned = format!("{name}:pinned@{}", img.manifest);
    let p = fresh.pull(&pinned, &opts(&[reg.host()])).unwrap();
    assert_eq!(p.id, img.id);
    assert_eq!(p.repo_tags, vec![format!("{name}:pinned")]);
    assert_eq!(p.repo_digests, vec![by_digest.clone()]);
    let rec = fresh.images.get(&format!("{name}:pinned")).unwrap();
    assert_eq!(rec.repo_digests, vec![by_digest.clone()]);
    assert_eq!(fresh.images.get(&by_digest).unwrap().id, img.id);
    assert!(
        fresh.images.get(&pinned).is_err(),
        "the whole string is no name"
    );

    // Without the insecure opt-in the registry is spoken to over HTTPS,
    // which a plain-HTTP one cannot answer.
    let other = ImageRoot::open(f.t.path().join("other")).unwrap();
    let e = other.pull(&name, &opts(&[])).unwrap_err().to_string();
    assert!(e.contains(&format!("https://{}", reg.host())), "{e}");
}

#[test]
fn pull_docker_schema2() {
    let f = fixture();
    let reg = Registry::start();
    push(&reg, &f.archive, "test/docker", &["--format", "v2s2"]);
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let name = format!("{}/test/docker:latest", reg.host());
    let img = root.pull(&name, &opts(&[reg.host()])).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&root.store.read(&img.manifest).unwrap()).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(img.diff_ids, f.expected.diff_ids);
    assert!(root
        .snapshots
        .layer_path(&img.chain_id)
        .join("bin/busybox")
        .is_file());
}

#[test]
fn mirrors_are_tried_in_order_and_names_stay_upstream() {
    let f = fixture();
    let reg = Registry::start();
    push(&reg, &f.archive, "test/busybox", &[]);
    let dead = format!("127.0.0.1:{}", free_port());
    let hosts = f.t.path().join("certs.d");

    // The upstream is down; its mirror has the image.
    fs::create_dir_all(hosts.join(&dead)).unwrap();
    fs::write(
        hosts.join(&dead).join("hosts.toml"),
        format!(
            "server = \"http://{dead}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            reg.host()
        ),
    )
    .unwrap();
    let o = Options {
        hosts_dir: Some(hosts.clone()),
        ..opts(&[])
    };
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let img = root.pull(&format!("{dead}/test/busybox"), &o).unwrap();
    assert_eq!(img.id, f.expected.id);
    assert_eq!(img.repo_tags, vec![format!("{dead}/test/busybox:latest")]);
    assert!(img.names().all(|n| !n.contains(&reg.host())), "{img:?}");

    // The mirror is down: the upstream serves it.
    let up = reg.host();
    fs::create_dir_all(hosts.join(&up)).unwrap();
    fs::write(
        hosts.join(&up).join("hosts.toml"),
        format!("server = \"http://{up}\"\n[host.\"http://{dead}\"]\n"),
    )
    .unwrap();
    let root2 = ImageRoot::open(f.t.path().join("root2")).unwrap();
    let img = root2.pull(&format!("{up}/test/busybox"), &o).unwrap();
    assert_eq!(img.id, f.expected.id);

    // A pull-only mirror (no "resolve") is not asked for tags, only for
    // digests: with the upstream down, the tag fails and the digest works.
    fs::write(
        hosts.join(&dead).join("hosts.toml"),
        format!(
            "server = \"http://{dead}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
            reg.host()
        ),
    )
    .unwrap();
    let root3 = ImageRoot::open(f.t.path().join("root3")).unwrap();
    let e = root3
        .pull(&format!("{dead}/test/busybox"), &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("http://{dead}/v2/")), "{e}");
    let by_digest = format!("{dead}/test/busybox@{}", img.manifest);
    assert_eq!(root3.pull(&by_digest, &o).unwrap().id, f.expected.id);
}

#[test]
fn corrupt_blob_fails_naming_it_and_leaves_nothing() {
    let f = fixture();
    let reg = Registry::start();
    push(&reg, &f.archive, "test/busybox", &[]);
    let layer = &f.expected.layers[0];
    let data = blob_data(&reg, layer);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let e = root
        .pull(
            &format!("{}/test/busybox", reg.host()),
            &opts(&[reg.host()]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(&layer.to_string()), "{e}");
    assert!(!root.store.contains(layer));
    let ingest = root.store.root().join("ingest");
    assert_eq!(
        fs::read_dir(&ingest).unwrap().count(),
        0,
        "ingest left over"
    );
    assert!(root.snapshots.layers().unwrap().is_empty());
    assert!(root.images.list().unwrap().is_empty());
}

#[test]
fn basic_auth_from_the_caller_or_an_auth_file() {
    use berth_image::registry::AuthConfig;
    let f = fixture();
    let reg = start_with(Config {
        basic_auth: true,
        ..Default::default()
    });
    push(&reg, &f.archive, "test/busybox", &[]);
    let name = format!("{}/test/busybox", reg.host());
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();

    let e = root
        .pull(&name, &opts(&[reg.host()]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unauthorized") && e.contains(&name.replace(&reg.host(), "")),
        "{e}"
    );
    let wrong = Options {
        auth: Some(AuthConfig {
            username: "user".into(),
            password: "wrong".into(),
            ..Default::default()
        }),
        ..opts(&[reg.host()])
    };
    let e = root.pull(&name, &wrong).unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");
    assert!(root.images.list().unwrap().is_empty());

    let right = Options {
        auth: Some(AuthConfig {
            username: "user".into(),
            password: "s3cret".into(),
            ..Default::default()
        }),
        ..opts(&[reg.host()])
    };
    assert_eq!(root.pull(&name, &right).unwrap().id, f.expected.id);

    // A docker config.json, keyed by the host the request goes to.
    let auth_file = f.t.path().join("config.json");
    fs::write(
        &auth_file,
        format!(
            r#"{{"auths": {{"http://{}": {{"auth": "dXNlcjpzM2NyZXQ="}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let o = Options {
        auth_file: Some(auth_file),
        ..opts(&[reg.host()])
    };
    let root2 = ImageRoot::open(f.t.path().join("root2")).unwrap();
    assert_eq!(root2.pull(&name, &o).unwrap().id, f.expected.id);
}

#[test]
fn https_with_an_extra_ca_or_explicitly_unverified() {
    let f = fixture();
    let reg = start_with(Config {
        tls: true,
        ..Default::default()
    });
    push(&reg, &f.archive, "test/busybox", &[]);
    let name = format!("{}/test/busybox", reg.host());
    let hosts = f.t.path().join("certs.d");
    let toml = hosts.join(reg.host()).join("hosts.toml");
    fs::create_dir_all(toml.parent().unwrap()).unwrap();
    let o = Options {
        hosts_dir: Some(hosts),
        ..opts(&[])
    };

    // Self-signed: refused unless trusted.
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let e = root.pull(&name, &o).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    fs::copy(reg.cert(), toml.with_file_name("ca.pem")).unwrap();
    fs::write(&toml, "ca = \"ca.pem\"\n").unwrap();
    assert_eq!(root.pull(&name, &o).unwrap().id, f.expected.id);

    fs::write(&toml, "skip_verify = true\n").unwrap();
    let root2 = ImageRoot::open(f.t.path().join("root2")).unwrap();
    assert_eq!(root2.pull(&name, &o).unwrap().id, f.expected.id);
}

#[test]
fn https_with_a_test_ca_signing_the_server_certificate() {
    let f = fixture();
    let reg = start_with(Config {
        tls_ca: true,
        ..Default::default()
    });
    push(&reg, &f.archive, "test/busybox", &[]);
    let name = format!("{}/test/busybox", reg.host());
    let hosts = f.t.path().join("certs.d");
    let toml = hosts.join(reg.host()).join("hosts.toml");
    fs::create_dir_all(toml.parent().unwrap()).unwrap();
    let o = Options {
        hosts_dir: Some(hosts),
        ..opts(&[])
    };
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let e = root.pull(&name, &o).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // The CA alone is trusted: the client builds the chain to the leaf.
    fs::copy(reg.ca(), toml.with_file_name("ca.pem")).unwrap();
    fs::write(&toml, "ca = \"ca.pem\"\n").unwrap();
    assert_eq!(root.pull(&name, &o).unwrap().id, f.expected.id);
    // Another CA does not do.
    let reg2 = start_with(Config {
        tls_ca: true,
        ..Default::default()
    });
    fs::copy(reg2.ca(), toml.with_file_name("ca.pem")).unwrap();
    let root2 = ImageRoot::open(f.t.path().join("root2")).unwrap();
    let e = root2.pull(&name, &o).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn concurrent_pulls_of_one_image_agree() {
    let f = fixture();
    let reg = Registry::start();
    push(&reg, &f.archive, "test/busybox", &[]);
    let root = ImageRoot::open(f.t.path().join("root")).unwrap();
    let name = format!("{}/test/busybox", reg.host());
    let o = opts(&[reg.host()]);
    let ids: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| root.pull(&name, &o).unwrap().id))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == f.expected.id), "{ids:?}");
    assert_eq!(root.images.list().unwrap().len(), 1);
    assert_eq!(root.snapshots.layers().unwrap().len(), 1);
    let ingest = root.store.root().join("ingest");
    assert_eq!(fs::read_dir(&ingest).unwrap().count(), 0);
}

/// A minimal registry serving one OCI layout, with the bearer-token flow
/// docker.io uses (`docker-registry` needs a signing setup for that): a
/// `/v2/` request without the token gets a challenge naming the token
/// endpoint, which wants basic credentials. The tag resolves to a
/// multi-platform index; the first authorised request answers 503.
struct TokenRegistry {
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A manifest's own `mediaType` (what a registry sends as Content-Type).
fn media_type(manifest: &[u8]) -> &'static str {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap_or_default();
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
    .into_iter()
    .find(|m| v["mediaType"] == *m)
    .unwrap_or("application/vnd.oci.image.manifest.v1+json")
}

impl TokenRegistry {
    fn start(layout: PathBuf, index: Vec<u8>) -> TokenRegistry {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        let failed_once = AtomicBool::new(false);
        // Serves until the test process ends (the listener is its own).
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Ok(c2) = conn.try_clone() else { continue };
                let mut r = BufReader::new(c2);
                let mut line = String::new();
                // A client that went away is no reason to stop serving.
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut auth = String::new();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() {
                        break;
                    }
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h
                        .strip_prefix("Authorization: ")
                        .or(h.strip_prefix("authorization: "))
                    {
                        auth = v.trim().to_string();
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length: ") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                    continue;
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                log2.lock().unwrap().push(format!("{path} {auth}"));
                let blob = |d: &str| {
                    fs::read(
                        layout
                            .join("blobs/sha256")
                            .join(d.trim_start_matches("sha256:")),
                    )
                };
                let (status, ctype, body, extra) = if path == "/token" {
                    // OAuth2 with an identity (refresh) token.
                    if body.contains("grant_type=refresh_token")
                        && body.contains("refresh_token=idtok")
                        && body.contains("scope=repository%3Atest%2Fbusybox%3Apull")
                    {
                        (
                            "200 OK",
                            "application/json",
                            br#"{"access_token":"tok123"}"#.to_vec(),
                            String::new(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            "text/plain",
                            b"bad token".to_vec(),
                            String::new(),
                        )
                    }
                } else if let Some(q) = path.strip_prefix("/token?") {
                    if auth == "Basic dXNlcjpzM2NyZXQ="
                        && q.contains("scope=repository%3Atest%2Fbusybox%3Apull")
                    {
                        (
                            "200 OK",
                            "application/json",
                            br#"{"token":"tok123"}"#.to_vec(),
                            String::new(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            "text/plain",
                            b"bad credentials".to_vec(),
                            String::new(),
                        )
                    }
                } else if auth != "Bearer tok123" {
                    let c = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:test/busybox:pull\"\r\n"
                    );
                    ("401 Unauthorized", "application/json", b"{}".to_vec(), c)
                } else if !failed_once.swap(true, Ordering::SeqCst) {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        b"busy".to_vec(),
                        String::new(),
                    )
                } else if path == "/v2/test/busybox/manifests/latest" {
                    ("200 OK", media_type(&index), index.clone(), String::new())
                } else if let Some(d) = path.strip_prefix("/v2/test/busybox/manifests/") {
                    match blob(d) {
                        Ok(b) => ("200 OK", media_type(&b), b, String::new()),
                        Err(_) => ("404 Not Found", "text/plain", b"no".to_vec(), String::new()),
                    }
                } else if let Some(d) = path.strip_prefix("/v2/test/busybox/blobs/") {
                    match blob(d) {
                        Ok(b) => ("200 OK", "application/octet-stream", b, String::new()),
                        Err(_) => ("404 Not Found", "text/plain", b"no".to_vec(), String::new()),
                    }
                } else {
                    ("404 Not Found", "text/plain", b"no".to_vec(), String::new())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        TokenRegistry { port, log }
    }
}

#[test]
fn bearer_token_flow_multi_platform_index_and_retry() {
    use berth_image::registry::AuthConfig;
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest = berth_testutil::write_image_layout(&layout, "latest", &["sh"]).unwrap();
    let manifest = Digest::parse(&manifest).unwrap();
    let size = fs::metadata(layout.join("blobs/sha256").join(manifest.hex()))
        .unwrap()
        .len();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let other = Digest::of(b"another platform");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(),
             "size": 10, "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.to_string(),
             "size": size, "platform": {"os": "linux", "architecture": arch}},
        ]
    }))
    .unwrap();
    let index_digest = Digest::of(&index);
    let reg = TokenRegistry::start(layout, index);
    let host = format!("127.0.0.1:{}", reg.port);
    let name = format!("{host}/test/busybox");
    let root = ImageRoot::open(t.path().join("root")).unwrap();

    let e = root
        .pull(&name, &opts(std::slice::from_ref(&host)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("token endpoint") && e.contains("401"), "{e}");

    let o = Options {
        auth: Some(AuthConfig {
            username: "user".into(),
            password: "s3cret".into(),
            ..Default::default()
        }),
        attempts: 3,
        ..opts(std::slice::from_ref(&host))
    };
    let img = root.pull(&name, &o).unwrap();
    assert_eq!(img.manifest, manifest, "the platform's manifest");
    assert_eq!(img.repo_tags, vec![format!("{name}:latest")]);
    assert_eq!(img.repo_digests, vec![format!("{name}@{index_digest}")]);
    assert!(root
        .snapshots
        .layer_path(&img.chain_id)
        .join("bin/busybox")
        .is_file());
    let log = reg.log.lock().unwrap();
    assert!(log.iter().any(|l| l.starts_with("/token?")), "{log:?}");
    // The 503 was retried: the tag was asked for again with the token.
    let tagged = log
        .iter()
        .filter(|l| l.starts_with("/v2/test/busybox/manifests/latest Bearer tok123"))
        .count();
    assert_eq!(tagged, 2, "{log:?}");
    drop(log);

    // Concurrent pulls of the image into a fresh root: each blob is
    // downloaded once.
    let fresh = ImageRoot::open(t.path().join("fresh")).unwrap();
    let before = reg.log.lock().unwrap().len();
    let ids: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fresh.pull(&name, &o).unwrap().id))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == img.id));
    let log = reg.log.lock().unwrap();
    let blobs: Vec<_> = log[before..]
        .iter()
        .filter(|l| l.contains("/blobs/") && l.contains("Bearer"))
        .collect();
    assert_eq!(blobs.len(), 2, "config and layer once each: {blobs:?}");
    drop(log);

    // An identity token is exchanged at the token endpoint (OAuth2).
    let o = Options {
        auth: Some(AuthConfig {
            identity_token: "idtok".into(),
            ..Default::default()
        }),
        ..opts(std::slice::from_ref(&host))
    };
    let root3 = ImageRoot::open(t.path().join("root3")).unwrap();
    assert_eq!(root3.pull(&name, &o).unwrap().id, img.id);
}

/// Pseudo-random bytes (incompressible, like real layer content).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A four-layer image as an OCI layout at `dir`, tagged `latest`: the
/// testutil busybox rootfs (with `etc` 0750 owned by 10:11), then layers
/// that imply directories of the ones below without listing them (so
/// they must inherit mode and owner), a whiteout, an opaque directory,
/// and some data each. Returns the layer tars.
fn write_layered_layout(dir: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = tempfile::tempdir().unwrap();
    berth_testutil::build_rootfs(rootfs.path()).unwrap();
    let etc = rootfs.path().join("etc");
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&etc, Some(10), Some(11)).unwrap();
    fs::write(rootfs.path().join("var/run/old"), b"old").unwrap();
    let mut base = tar::Builder::new(Vec::new());
    base.follow_symlinks(false);
    base.append_dir_all(".", rootfs.path()).unwrap();
    let base = base.into_inner().unwrap();
    let layer = |entries: &[(&str, Vec<u8>)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
            } else {
                h.set_mode(0o644);
            }
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, path, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    let layers = vec![
        base,
        // etc/ and home/user/ are implied: they keep 0750 10:11 and 1000's.
        layer(&[
            ("etc/extra", b"x".to_vec()),
            ("home/user/data", noise(1 << 20, 1)),
        ]),
        layer(&[
            ("bin/.wh.ls", Vec::new()),
            ("usr/lib/big", noise(1 << 20, 2)),
        ]),
        layer(&[
            ("var/run/", Vec::new()),
            ("var/run/.wh..wh..opq", Vec::new()),
            ("var/run/new", b"n".to_vec()),
            ("etc/more/deep", noise(1 << 19, 3)),
        ]),
    ];
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8], mt: &str| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()})
    };
    let mut descs = Vec::new();
    for tar in &layers {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar).unwrap();
        descs.push(put(
            &gz.finish().unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ));
    }
    let diff_ids: Vec<_> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let cd = put(
        &serde_json::to_vec(&config).unwrap(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": descs});
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let mut md = put(&serde_json::to_vec(&manifest).unwrap(), mt);
    md["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [md]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    layers
}

/// Pushes an OCI layout directory as `repo:latest`.
fn push_layout(reg: &Registry, layout: &Path, repo: &str) {
    reg.push(&format!("oci:{}:latest", layout.display()), repo, &[]);
}

/// Every path under `root` with its type, mode, owner, size, content
/// hash or link target, mtime and overlay xattrs.
fn describe(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let what = if ft.is_file() {
                format!("file {}", Digest::of(&fs::read(&path).unwrap()))
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_char_device() {
                format!("char {}", m.rdev())
            } else if ft.is_dir() {
                let mut v = [0u8; 4];
                let opaque = rustix::fs::lgetxattr(&path, "trusted.overlay.opaque", &mut v).ok();
                format!("dir opaque={opaque:?}")
            } else {
                "other".into()
            };
            let rel = path.strip_prefix(root).unwrap().display();
            out.push(format!(
                "{rel} {what} {:o} {}:{} mtime={}",
                m.mode(),
                m.uid(),
                m.gid(),
                // Whiteouts are made at unpack time; directories change.
                if ft.is_dir() || ft.is_char_device() {
                    0
                } else {
                    m.mtime()
                }
            ));
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn layered_pull_unpacks_while_downloading_like_a_layout_import() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_layered_layout(&layout);
    let reference = ImageRoot::open(t.path().join("reference")).unwrap();
    let expected = reference.import_layout(&layout, None, "x").unwrap();
    let reg = Registry::start();
    push_layout(&reg, &layout, "test/layered");

    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let name = format!("{}/test/layered", reg.host());
    let img = root.pull(&name, &opts(&[reg.host()])).unwrap();
    assert_eq!(img.id, expected.id);
    assert_eq!(img.chain_id, expected.chain_id);
    assert_eq!(img.layers, expected.layers);
    let chains = root.snapshots.ancestry(&img.chain_id).unwrap();
    assert_eq!(chains.len(), 4);
    for c in &chains {
        assert_eq!(
            describe(&root.snapshots.layer_path(c)),
            describe(&reference.snapshots.layer_path(c)),
            "layer {c}"
        );
    }
    // Implied directories took mode and owner from the layers below,
    // though those were unpacked at the same time.
    use std::os::unix::fs::MetadataExt;
    let second = root.snapshots.layer_path(&chains[2]);
    let etc = fs::metadata(second.join("etc")).unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 10, 11));
    let top = root.snapshots.layer_path(&chains[0]);
    assert_eq!(
        fs::metadata(top.join("etc")).unwrap().mode() & 0o7777,
        0o750
    );
    for l in &img.layers {
        assert!(root.store.contains(l), "blob {l} stored");
    }
    let staging = t.path().join("root/snapshots/tmp");
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(root.store.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_tampered_layer_blob_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let tars = write_layered_layout(&layout);
    let reg = Registry::start();
    push_layout(&reg, &layout, "test/layered");
    let reference = ImageRoot::open(t.path().join("reference")).unwrap();
    let expected = reference.import_layout(&layout, None, "x").unwrap();
    let name = format!("{}/test/layered", reg.host());
    let check_nothing_left = |root: &ImageRoot, layer: &Digest, what: &str| {
        let staging = root.store.root().join("../snapshots/tmp");
        let e = root
            .pull(&name, &opts(&[reg.host()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&layer.to_string()), "{what}: {e}");
        assert!(!root.store.contains(layer), "{what}: blob stored");
        assert!(
            root.snapshots.layers().unwrap().is_empty(),
            "{what}: layer published"
        );
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0, "{what}");
        let ingest = root.store.root().join("ingest").join(layer.hex());
        assert!(!ingest.exists(), "{what}: wrong ingest file kept");
        assert!(root.images.list().unwrap().is_empty(), "{what}");
    };

    // Re-compressed: the same uncompressed content (its diff_id checks
    // out) under other compressed bytes than the digest names.
    let layer = &expected.layers[2];
    let data = blob_data(&reg, layer);
    let good = fs::read(&data).unwrap();
    // Another gzip header OS byte: same size, same content once inflated.
    let mut other = good.clone();
    other[9] ^= 0x01;
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&other[..]), &mut inflated)
        .unwrap();
    assert_eq!(inflated, tars[2]);
    fs::write(&data, &other).unwrap();
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    check_nothing_left(&root, layer, "re-compressed");

    // Corrupted: a flipped byte in the compressed stream. (Into another
    // store: the first kept the other layers' blobs, verified.)
    fs::write(&data, &good).unwrap();
    let layer = &expected.layers[1];
    let data = blob_data(&reg, layer);
    let mut bad = fs::read(&data).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&data, &bad).unwrap();
    let root2 = ImageRoot::open(t.path().join("root2")).unwrap();
    check_nothing_left(&root2, layer, "corrupted");

    // Fixed: the pulls complete (a wrong ingest file was not kept).
    fs::write(&data, good_of(&layout, layer)).unwrap();
    let img = root2.pull(&name, &opts(&[reg.host()])).unwrap();
    assert_eq!(img.chain_id, expected.chain_id);
    let img = root.pull(&name, &opts(&[reg.host()])).unwrap();
    assert_eq!(img.chain_id, expected.chain_id);
    assert_eq!(
        fs::read_dir(root.store.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

fn good_of(layout: &Path, d: &Digest) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap()
}

/// A Docker schema2 manifest list (multi-platform) resolves to this
/// platform's schema2 manifest; its digest is the RepoDigest. The pull
/// uses a registry token, sent as is: the token endpoint is never asked.
#[test]
fn pull_docker_manifest_list_with_a_registry_token() {
    use berth_image::registry::AuthConfig;
    let t = tempfile::tempdir().unwrap();
    let oci = t.path().join("oci");
    berth_testutil::write_image_layout(&oci, "latest", &["sh"]).unwrap();
    // skopeo converts the image to schema2 (`dir:` keeps the blobs by hex
    // and the manifest as manifest.json); serve it as a layout would.
    let dir = t.path().join("v2s2");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--format", "v2s2"])
        .arg(format!("oci:{}:latest", oci.display()))
        .arg(format!("dir:{}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = t.path().join("served");
    let blobs = served.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 64 {
            fs::copy(e.path(), blobs.join(&n)).unwrap();
        }
    }
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(
        media_type(&manifest),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let digest = Digest::of(&manifest);
    fs::write(blobs.join(digest.hex()), &manifest).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": v2, "digest": Digest::of(b"arm").to_string(), "size": 10,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"mediaType": v2, "digest": digest.to_string(), "size": manifest.len(),
             "platform": {"os": "linux", "architecture": arch}},
        ]
    }))
    .unwrap();
    let list_digest = Digest::of(&list);
    let reg = TokenRegistry::start(served, list);
    let host = format!("127.0.0.1:{}", reg.port);
    let name = format!("{host}/test/busybox");
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let o = Options {
        auth: Some(AuthConfig {
            registry_token: "tok123".into(),
            ..Default::default()
        }),
        attempts: 3,
        ..opts(std::slice::from_ref(&host))
    };
    let img = root.pull(&name, &o).unwrap();
    assert_eq!(img.manifest, digest, "the platform's schema2 manifest");
    assert_eq!(media_type(&root.store.read(&img.manifest).unwrap()), v2);
    assert_eq!(img.repo_tags, vec![format!("{name}:latest")]);
    assert_eq!(img.repo_digests, vec![format!("{name}@{list_digest}")]);
    assert!(root
        .snapshots
        .layer_path(&img.chain_id)
        .join("bin/busybox")
        .is_file());
    let log = reg.log.lock().unwrap();
    assert!(
        log.iter().all(|l| !l.starts_with("/token")),
        "the token endpoint was asked: {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.ends_with("/manifests/latest Bearer tok123")),
        "{log:?}"
    );
    drop(log);

    // A wrong registry token is refused, not exchanged for another.
    let o = Options {
        auth: Some(AuthConfig {
            registry_token: "wrong".into(),
            ..Default::default()
        }),
        ..o
    };
    let other = ImageRoot::open(t.path().join("other")).unwrap();
    let e = other.pull(&name, &o).unwrap_err().to_string();
    assert!(e.contains("401") || e.contains("unauthorized"), "{e}");
}
