//! The bearer-token flow against a real registry: Debian's `docker-registry`
//! with `auth: token`, trusting a certificate made here, and a small token
//! server of the test's own that signs RS256 JWTs with `openssl`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use berth_image::registry::{AuthConfig, Options};
use berth_image::ImageRoot;
use berth_testutil::registry::{self, Registry};

const SERVICE: &str = "berth-test-registry";
const ISSUER: &str = "berth-test-issuer";
const USER: &str = "user";
const SECRET: &str = "secret";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Signs tokens with `key.pem`; the registry trusts `cert.pem`.
struct Signer {
    key: PathBuf,
    /// base64 of the certificate's DER, for the JWT's `x5c` header (so the
    /// registry needs no libtrust key id).
    x5c: String,
}

impl Signer {
    fn new(dir: &Path) -> Signer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=berth-test-token", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        // A PEM body is the base64 of the DER.
        let x5c = fs::read_to_string(&cert)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        Signer { key, x5c }
    }

    fn cert(&self) -> PathBuf {
        self.key.with_file_name("token-cert.pem")
    }

    /// A JWT granting `access` (`[(repo, actions)]`) to [`USER`].
    fn token(&self, access: &[(String, Vec<String>)]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": USER, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", rand_suffix()), "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `GET /token?service=..&scope=repository:<name>:<actions>` with basic
/// credentials [`USER`]:[`SECRET`] -> a token for the asked scopes; anything
/// else -> 401. Serves until the test process exits.
fn token_server(signer: Signer) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = serve_token(&signer, conn);
        }
    });
    port
}

fn serve_token(signer: &Signer, mut conn: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let target = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut authorized = false;
    let good = format!("Basic {}", STANDARD.encode(format!("{USER}:{SECRET}")));
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") && v.trim() == good {
                authorized = true;
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut service_ok = false;
    let mut access = Vec::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "service" => service_ok = v == SERVICE,
            // repository:<name>:<actions>, the name may hold no ':' here.
            "scope" => {
                let mut p = v.splitn(3, ':');
                if let (Some("repository"), Some(name), Some(actions)) =
                    (p.next(), p.next(), p.next())
                {
                    let actions = actions.split(',').map(str::to_string).collect();
                    access.push((name.to_string(), actions));
                }
            }
            _ => {}
        }
    }
    let (status, body) = if path == "/token" && service_ok && authorized {
        let t = signer.token(&access);
        (
            "200 OK",
            serde_json::json!({"token": t, "access_token": t}).to_string(),
        )
    } else {
        ("401 Unauthorized", r#"{"error":"bad credentials"}"#.into())
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `docker-registry` with token auth, its log in `dir` (the log says why
/// a token is refused); killed on drop.
fn start_registry(dir: &Path, cert: &Path, token_port: u16) -> Registry {
    Registry::with(registry::Config {
        dir: Some(dir.to_path_buf()),
        log_level: Some("info"),
        auth: Some(format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    \
             service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            cert.display()
        )),
        log: Some(dir.join("registry.log")),
        ..Default::default()
    })
}

fn creds(host: &str, password: &str) -> Options {
    Options {
        insecure: vec![host.to_string()],
        attempts: 1,
        auth: Some(AuthConfig {
            username: USER.into(),
            password: password.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn pull_with_a_token_from_the_token_server() {
    let t = tempfile::tempdir().unwrap();
    let signer = Signer::new(t.path());
    let cert = signer.cert();
    let reg = start_registry(t.path(), &cert, token_server(signer));

    let archive = t.path().join("image.tar");
    berth_testutil::write_image_archive(&archive, "latest", &["sh"]).unwrap();
    let expected = ImageRoot::open(t.path().join("reference"))
        .unwrap()
        .import_archive(fs::File::open(&archive).unwrap(), None, "x")
        .unwrap();

    // skopeo speaks the token flow too: the push asks for pull,push.
    let name = format!("{}/test/busybox", reg.host());
    reg.push(
        &format!("oci-archive:{}:latest", archive.display()),
        "test/busybox",
        &["--dest-creds", &format!("{USER}:{SECRET}")],
    );

    let root = ImageRoot::open(t.path().join("root")).unwrap();
    // The token endpoint refuses wrong credentials: the pull fails naming it
    // and stores nothing.
    let e = root
        .pull(&name, &creds(&reg.host(), "wrong"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unauthorized") && e.contains("token endpoint") && e.contains("401"),
        "{e}"
    );
    assert!(root.images.list().unwrap().is_empty());

    let img = root
        .pull(&name, &creds(&reg.host(), SECRET))
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log_text()));
    assert_eq!(img.id, expected.id, "image ID is the config digest");
    assert!(root
        .snapshots
        .layer_path(&img.chain_id)
        .join("bin/busybox")
        .is_file());
    assert_eq!(root.images.list().unwrap().len(), 1);
}
