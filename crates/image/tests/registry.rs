//! Pulls from a real registry: Debian's `docker-registry` on 127.0.0.1,
//! holding the test busybox image pushed there by `skopeo`.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth_image::registry::Options;
use berth_image::{Digest, ImageRoot};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry process serving from a temp dir; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `user:s3cret`, bcrypt with the lowest cost (fast to check).
const HTPASSWD: &str = "user:$2b$04$9QjjQnrrsATREz69CGUwxeSphOswPxlBz1njK4.ZM5bMK40uKAOey\n";

#[derive(Default)]
struct Config {
    /// Basic auth with [`HTPASSWD`].
    basic_auth: bool,
    /// HTTPS with a self-signed certificate for 127.0.0.1 (`<dir>/cert.pem`).
    tls: bool,
}

impl Registry {
    fn start() -> Registry {
        Self::with(Config::default())
    }

    fn with(cfg: Config) -> Registry {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: install Debian's docker-registry package (scripts/setup.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut extra = String::new();
        if cfg.tls {
            let out = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "2"])
                // A leaf, not a CA: webpki refuses a CA as the server's certificate.
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(dir.path().join("key.pem"))
                .arg("-out")
                .arg(dir.path().join("cert.pem"))
                .output()
                .expect("openssl is missing: install Debian's openssl package (scripts/setup.sh)");
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            extra += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            );
        }
        if cfg.basic_auth {
            fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
            extra += &format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let mut f = fs::OpenOptions::new().append(true).open(&config).unwrap();
        std::io::Write::write_all(&mut f, extra.as_bytes()).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = Registry { child, port, dir };
        // Wait until it listens (or report why it exited).
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = r.child.try_wait().unwrap() {
                panic!("docker-registry exited before listening: {st}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the test image (an `oci-archive`) as `repo:latest`.
    fn push(&self, archive: &Path, repo: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .args(if fs::metadata(self.dir.path().join("htpasswd")).is_ok() {
                &["--dest-creds", "user:s3cret"][..]
            } else {
                &[]
            })
            .arg(format!("oci-archive:{}:latest", archive.display()))
            .arg(format!("docker://{}/{repo}:latest", self.host()))
            .output()
            .expect("skopeo is missing: install Debian's skopeo package (scripts/setup.sh)");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn blob_data(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    reg.push(&f.archive, "test/busybox", &[]);
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
    reg.push(&f.archive, "test/docker", &["--format", "v2s2"]);
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
    reg.push(&f.archive, "test/busybox", &[]);
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
    reg.push(&f.archive, "test/busybox", &[]);
    let layer = &f.expected.layers[0];
    let data = reg.blob_data(layer);
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
    let reg = Registry::with(Config {
        basic_auth: true,
        ..Default::default()
    });
    reg.push(&f.archive, "test/busybox", &[]);
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
    let reg = Registry::with(Config {
        tls: true,
        ..Default::default()
    });
    reg.push(&f.archive, "test/busybox", &[]);
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

    fs::copy(
        reg.dir.path().join("cert.pem"),
        toml.with_file_name("ca.pem"),
    )
    .unwrap();
    fs::write(&toml, "ca = \"ca.pem\"\n").unwrap();
    assert_eq!(root.pull(&name, &o).unwrap().id, f.expected.id);

    fs::write(&toml, "skip_verify = true\n").unwrap();
    let root2 = ImageRoot::open(f.t.path().join("root2")).unwrap();
    assert_eq!(root2.pull(&name, &o).unwrap().id, f.expected.id);
}

#[test]
fn concurrent_pulls_of_one_image_agree() {
    let f = fixture();
    let reg = Registry::start();
    reg.push(&f.archive, "test/busybox", &[]);
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
                    (
                        "200 OK",
                        "application/vnd.oci.image.index.v1+json",
                        index.clone(),
                        String::new(),
                    )
                } else if let Some(d) = path.strip_prefix("/v2/test/busybox/manifests/") {
                    match blob(d) {
                        Ok(b) => (
                            "200 OK",
                            "application/vnd.oci.image.manifest.v1+json",
                            b,
                            String::new(),
                        ),
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
