//! Debian's `docker-registry` on a free 127.0.0.1 port, for pull tests and
//! benchmarks: one harness instead of a copy per test file.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A port free right now (the registry binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start a [`Registry`]; `Default` is plain HTTP, no auth, in a
/// temp dir of its own, logging nothing.
#[derive(Default)]
pub struct Config {
    /// Where `config.yml` and the storage (`data/`) go; a temp dir if `None`.
    pub dir: Option<PathBuf>,
    /// `log: level:`; "error" if `None`.
    pub log_level: Option<&'static str>,
    /// Contents of an htpasswd file (`<dir>/htpasswd`) for basic auth.
    pub htpasswd: Option<String>,
    /// HTTPS with a self-signed certificate for 127.0.0.1, made with
    /// `openssl` into `<dir>/cert.pem` and `<dir>/key.pem`.
    pub tls: bool,
    /// HTTPS with a certificate for 127.0.0.1 signed by a CA made for the
    /// test (`<dir>/ca.pem`, see [`Registry::ca`]), not a self-signed leaf:
    /// clients must build the chain. Implies `tls`.
    pub tls_ca: bool,
    /// A YAML `auth:` block (the whole block, `auth:` line included).
    pub auth: Option<String>,
    /// A file for the registry's stderr (its log); discarded if `None`.
    pub log: Option<PathBuf>,
}

/// A running `docker-registry`; killed and reaped on drop.
pub struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: Option<PathBuf>,
    _temp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Plain HTTP, no auth, in its own temp dir.
    pub fn start() -> Registry {
        Self::with(Config::default())
    }

    pub fn with(cfg: Config) -> Registry {
        assert!(
            Path::new(DOCKER_REGISTRY).exists(),
            "{DOCKER_REGISTRY} is missing: install Debian's docker-registry package (scripts/setup.sh)"
        );
        let temp = match cfg.dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().unwrap()),
        };
        let dir = match (&cfg.dir, &temp) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!(),
        };
        fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            cfg.log_level.unwrap_or("error"),
            dir.join("data").display()
        );
        if cfg.tls || cfg.tls_ca {
            if cfg.tls_ca {
                ca_signed_cert(&dir);
            } else {
                self_signed_cert(&dir);
            }
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        if let Some(h) = &cfg.htpasswd {
            fs::write(dir.join("htpasswd"), h).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        if let Some(a) = &cfg.auth {
            yaml += a;
        }
        let config = dir.join("config.yml");
        fs::write(&config, yaml).unwrap();
        let stderr = match &cfg.log {
            Some(l) => Stdio::from(fs::File::create(l).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut r = Registry {
            child,
            port,
            dir,
            log: cfg.log,
            _temp: temp,
        };
        // Wait until it listens (or report why it exited).
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = r.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited before listening: {st}{}",
                    r.log_suffix()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry host in image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory holding `config.yml`, the storage and any certificate.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The self-signed certificate when started with `tls`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The CA that signed [`Registry::cert`] when started with `tls_ca`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Whether it was started with basic auth.
    pub fn has_htpasswd(&self) -> bool {
        self.dir.join("htpasswd").exists()
    }

    /// The stored blob file for a sha256 digest given as hex (tests corrupt
    /// or cut it).
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far ("" when it is not kept).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    fn log_suffix(&self) -> String {
        match self.log {
            Some(_) => format!(": {}", self.log_text()),
            None => String::new(),
        }
    }

    /// Pushes `src` (a skopeo source such as `oci:DIR:t` or
    /// `oci-archive:FILE:latest`) as `repo:latest`, `extra` being more
    /// `skopeo copy` options (credentials, format).
    pub fn push(&self, src: &str, repo: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(src)
            .arg(format!("docker://{}/{repo}:latest", self.host()))
            .output()
            .expect("skopeo is missing: install Debian's skopeo package (scripts/setup.sh)");
        let log = match self.log {
            Some(_) => format!("\nregistry log:\n{}", self.log_text()),
            None => String::new(),
        };
        assert!(
            out.status.success(),
            "skopeo copy: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed P-256 leaf certificate for 127.0.0.1 in `dir/cert.pem`,
/// its key in `dir/key.pem`.
fn self_signed_cert(dir: &Path) {
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
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl is missing: install Debian's openssl package (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is missing: install Debian's openssl package (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`dir/ca.pem`, key `dir/ca-key.pem`) and a P-256 leaf for
/// 127.0.0.1 it signs (`dir/cert.pem`, key `dir/key.pem`).
fn ca_signed_cert(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=berth test CA"];
    ca.extend(ec);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
    openssl(&csr, dir);
    fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        dir,
    );
}
