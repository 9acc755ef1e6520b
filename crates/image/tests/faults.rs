//! Pull faults against a real registry (Debian's `docker-registry`): a
//! fault-injecting HTTP proxy in front of it answers 500s or cuts blob
//! bodies, and hostile layers pushed with `skopeo` must be refused. Each
//! case ends in a clear error or a complete image, and the store stays
//! consistent: no unverified blob, no half-unpacked layer, no image record.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_image::registry::Options;
use berth_image::{Digest, ImageRoot};
use berth_testutil::registry::Registry;
use common::{tree, Layer};

/// What the proxy does to requests whose path contains a key.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answer 500 to the next `n` such requests.
    Error500(u32),
    /// Forward, but close the connection after half the body, `n` times.
    Cut(u32),
    /// Forward, but wait [`SLOW`] before the body, `n` times; logs
    /// "DONE <path>" once the body is sent.
    Slow(u32),
}

const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

/// A proxy between the client and the registry: one request per client
/// connection (it asks the registry to close, which tells the client not to
/// reuse the connection), faults injected by path.
struct Proxy {
    port: u16,
    /// "METHOD path" of every request, in order, with " range=<value>"
    /// when it has a Range header, then " -> <status>" once answered.
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: u16, faults: Vec<(String, Fault)>) -> Proxy {
        Proxy::start_with(upstream, faults, false)
    }

    /// With `strip_range`, Range headers are not passed on: a registry
    /// that ignores them.
    fn start_with(upstream: u16, faults: Vec<(String, Fault)>, strip_range: bool) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(faults));
        let log2 = log.clone();
        // Serves until the test process ends (the listener is its own).
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (log, faults) = (log2.clone(), faults.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &log, &faults, strip_range);
                });
            }
        });
        Proxy { port, log }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    log: &Mutex<Vec<String>>,
    faults: &Mutex<Vec<(String, Fault)>>,
    strip_range: bool,
) -> std::io::Result<()> {
    let mut r = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    r.read_line(&mut head)?;
    let mut headers = Vec::new();
    let mut range = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range:") {
            range = format!(" range={}", v.trim());
            if strip_range {
                continue;
            }
        }
        if !lower.starts_with("connection:") {
            headers.push(h);
        }
    }
    let mut parts = head.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let entry = {
        let mut l = log.lock().unwrap();
        l.push(format!("{method} {path}{range}"));
        l.len() - 1
    };
    let mut client = client;

    // Pick the fault, if any, and count it down.
    let mut fault = None;
    for (key, f) in faults.lock().unwrap().iter_mut() {
        if !path.contains(key.as_str()) {
            continue;
        }
        match f {
            Fault::Error500(n) | Fault::Cut(n) | Fault::Slow(n) if *n > 0 => {
                *n -= 1;
                fault = Some(*f);
            }
            _ => {}
        }
        break;
    }
    if let Some(Fault::Error500(_)) = fault {
        client.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }

    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut req = head.clone();
    for h in &headers {
        req += h;
    }
    req += "Connection: close\r\n\r\n";
    up.write_all(req.as_bytes())?;
    let mut ur = BufReader::new(up);
    let mut resp = String::new();
    let mut length = None;
    loop {
        let mut h = String::new();
        if ur.read_line(&mut h)? == 0 {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<u64>().ok();
        }
        resp += &h;
        if h.trim().is_empty() {
            break;
        }
    }
    let code = resp.split(' ').nth(1).unwrap_or("?").to_string();
    log.lock().unwrap()[entry] += &format!(" -> {code}");
    client.write_all(resp.as_bytes())?;
    match (fault, length) {
        (Some(Fault::Cut(_)), Some(len)) if method == "GET" && len > 1 => {
            std::io::copy(&mut (&mut ur).take(len / 2), &mut client)?;
            client.flush()?;
            // A reset, not a clean end: the body is short of its length.
            client.shutdown(Shutdown::Both)?;
        }
        (Some(Fault::Slow(_)), _) => {
            std::thread::sleep(SLOW);
            std::io::copy(&mut ur, &mut client)?;
            log.lock().unwrap().push(format!("DONE {path}"));
        }
        _ => {
            std::io::copy(&mut ur, &mut client)?;
        }
    }
    Ok(())
}

/// Writes an OCI layout whose image has `layers` (gzip'd tars), tagged "t".
/// Returns the layers' digests.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<Digest> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        (
            d.clone(),
            serde_json::json!({"digest": d.to_string(), "size": b.len()}),
        )
    };
    let (mut descs, mut diff_ids, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for tar in layers {
        diff_ids.push(Digest::of(tar).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let (d, mut desc) = put(&gz.finish().unwrap());
        desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        descs.push(desc);
        digests.push(d);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = serde_json::json!({"architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (_, mut cd) = put(&serde_json::to_vec(&config).unwrap());
    cd["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": descs});
    let (_, mut md) = put(&serde_json::to_vec(&manifest).unwrap());
    md["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    md["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [md]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    digests
}

/// Pseudo-random bytes (xorshift), so gzip keeps the blob big enough for
/// a cut in its middle to matter.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A registry holding a two-layer image at `fault/img`, and its layers.
fn two_layer_image(t: &Path) -> (Registry, Vec<Digest>) {
    let reg = Registry::start();
    let layout = t.join("layout");
    let l1 = Layer::new()
        .dir("data")
        .file("data/big", &noise(4 << 20, 1))
        .finish();
    let l2 = Layer::new().file("data/small", b"hello").finish();
    let layers = write_layout(&layout, &[l1, l2]);
    reg.push(&format!("oci:{}:t", layout.display()), "fault/img", &[]);
    (reg, layers)
}

fn opts(host: &str, attempts: u32) -> Options {
    Options {
        insecure: vec![host.to_string()],
        attempts,
        ..Default::default()
    }
}

/// Blobs in the store's `blobs/` (published, hence verified).
fn blobs(root: &ImageRoot) -> Vec<Digest> {
    root.store.list().unwrap()
}

/// The unpacked directory of the image's first layer (each layer's
/// directory holds only its own changes).
fn bottom(root: &ImageRoot, img: &berth_image::Image) -> PathBuf {
    let chain = root.snapshots.parent(&img.chain_id).unwrap().unwrap();
    root.snapshots.layer_path(&chain)
}

#[test]
fn errors_500_are_retried_until_the_registry_recovers() {
    let t = tempfile::tempdir().unwrap();
    let (reg, layers) = two_layer_image(t.path());
    let big = layers[0].to_string();
    let proxy = Proxy::start(
        reg.port(),
        vec![
            ("/manifests/".into(), Fault::Error500(2)),
            (big.clone(), Fault::Error500(2)),
        ],
    );
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = root
        .pull(
            &format!("{}/fault/img", proxy.host()),
            &opts(&proxy.host(), 3),
        )
        .unwrap();
    assert_eq!(img.layers, layers);
    for l in &layers {
        assert!(root.store.contains(l), "{l} not stored");
    }
    let top = root.snapshots.layer_path(&img.chain_id);
    assert_eq!(fs::read(top.join("data/small")).unwrap(), b"hello");
    assert_eq!(
        fs::read(bottom(&root, &img).join("data/big")).unwrap(),
        noise(4 << 20, 1)
    );
    // The two 500s and the answer that worked, for each.
    assert!(proxy.requests("/manifests/").len() >= 3, "{:?}", proxy.log);
    assert_eq!(proxy.requests(&big).len(), 3, "{:?}", proxy.log);
    assert_eq!(
        fs::read_dir(root.store.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

/// The byte a `range=bytes=N-` log entry asks from.
fn range_start(req: &str) -> Option<u64> {
    let (_, r) = req.split_once(" range=bytes=")?;
    r.split('-').next()?.parse().ok()
}

#[test]
fn a_blob_cut_once_is_resumed_or_restarted() {
    // A registry that honours Range: the second request asks for the rest
    // only (after the bytes the ingest file holds). One that ignores it:
    // the whole blob comes again and the held bytes are skipped.
    for strip_range in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (reg, layers) = two_layer_image(t.path());
        let big = layers[0].to_string();
        let proxy = Proxy::start_with(reg.port(), vec![(big.clone(), Fault::Cut(1))], strip_range);
        let root = ImageRoot::open(t.path().join("root")).unwrap();
        let img = root
            .pull(
                &format!("{}/fault/img", proxy.host()),
                &opts(&proxy.host(), 3),
            )
            .unwrap();
        assert_eq!(
            fs::read(bottom(&root, &img).join("data/big")).unwrap(),
            noise(4 << 20, 1)
        );
        assert!(root.store.contains(&layers[0]));
        let gets = proxy.requests(&format!("GET /v2/fault/img/blobs/{big}"));
        assert_eq!(gets.len(), 2, "{:?}", proxy.log);
        assert_eq!(range_start(&gets[0]), None, "{gets:?}");
        let from = range_start(&gets[1]).expect("the retry asks for a range");
        assert!(from > 0, "{gets:?}");
        let status = if strip_range { "-> 200" } else { "-> 206" };
        assert!(gets[1].ends_with(status), "{gets:?}");
        assert_eq!(
            fs::read_dir(root.store.root().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}

#[test]
fn a_config_blob_cut_once_is_resumed() {
    // Blobs that are stored before use (`Client::blob`: the config) resume
    // by range too.
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let layout = t.path().join("layout");
    write_layout(&layout, &[Layer::new().file("f", b"f").finish()]);
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    reg.push(&format!("oci:{}:t", layout.display()), "fault/cfg", &[]);
    let proxy = Proxy::start(reg.port(), vec![(config.clone(), Fault::Cut(1))]);
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = root
        .pull(
            &format!("{}/fault/cfg", proxy.host()),
            &opts(&proxy.host(), 3),
        )
        .unwrap();
    assert_eq!(img.id.to_string(), config);
    let gets = proxy.requests(&format!("GET /v2/fault/cfg/blobs/{config}"));
    assert_eq!(gets.len(), 2, "{:?}", proxy.log);
    assert!(range_start(&gets[1]).is_some_and(|n| n > 0), "{gets:?}");
    assert!(gets[1].ends_with("-> 206"), "{gets:?}");
}

#[test]
fn a_blob_cut_every_time_fails_naming_it_and_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (reg, layers) = two_layer_image(t.path());
    let big = layers[0].to_string();
    let proxy = Proxy::start(reg.port(), vec![(big.clone(), Fault::Cut(u32::MAX))]);
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let e = root
        .pull(
            &format!("{}/fault/img", proxy.host()),
            &opts(&proxy.host(), 3),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(&big), "error does not name the blob: {e}");
    assert!(!blobs(&root).contains(&layers[0]), "cut blob published");
    assert!(root.snapshots.layers().unwrap().is_empty());
    assert!(root.images.list().unwrap().is_empty());
    // Whatever is left in ingest/ is a partial download kept for resuming,
    // never a file in blobs/ (checked above); a later pull completes it.
    let fixed = Proxy::start(reg.port(), vec![]);
    let img = root
        .pull(
            &format!("{}/fault/img", fixed.host()),
            &opts(&fixed.host(), 3),
        )
        .unwrap();
    assert_eq!(img.layers, layers);
    assert_eq!(
        fs::read_dir(root.store.root().join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

/// Pushes an image made of `layers` (built knowing the outside
/// directory), pulls it, and expects an error naming `entry`, nothing
/// written outside, and nothing published (no layer, not even the
/// harmless ones below the hostile one; no staging dir).
fn assert_pull_rejected(reg: &Registry, t: &Path, name: &str, layers: Vec<Vec<u8>>, entry: &str) {
    let outside = t.join("outside");
    let layout = t.join(format!("layout-{name}"));
    write_layout(&layout, &layers);
    reg.push(
        &format!("oci:{}:t", layout.display()),
        &format!("mal/{name}"),
        &[],
    );
    let root = ImageRoot::open(t.join(format!("root-{name}"))).unwrap();
    let e = root
        .pull(&format!("{}/mal/{name}", reg.host()), &opts(&reg.host(), 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(entry),
        "{name}: error {e:?} does not name {entry:?}"
    );
    assert_eq!(tree(&outside), vec!["secret"], "{name}: wrote outside");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s");
    assert!(
        root.snapshots.layers().unwrap().is_empty(),
        "{name}: layer published"
    );
    assert!(
        root.images.list().unwrap().is_empty(),
        "{name}: image recorded"
    );
    // Nothing half-unpacked is left in the snapshots' layer directory.
    // (`layers/<chain>/fs` -> `layers`, then the snapshots root.)
    let fs_dir = root.snapshots.layer_path(&Digest::of(b"x"));
    let layers_dir = fs_dir.parent().unwrap().parent().unwrap();
    assert_eq!(tree(layers_dir), Vec::<String>::new(), "{name}");
    let staging = layers_dir.parent().unwrap().join("tmp");
    assert_eq!(tree(&staging), Vec::<String>::new(), "{name}: staging left");
}

#[test]
fn malicious_layers_from_a_registry_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside: PathBuf = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "s").unwrap();
    let out = outside.display().to_string();
    let reg = Registry::start();
    let one = |l: &mut Layer| vec![l.finish()];
    let planted = || Layer::new().dir("etc").symlink("evil", &out).finish();
    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "absolute",
            one(Layer::new().file(&format!("{out}/abs"), b"x")),
            format!("{out}/abs"),
        ),
        (
            "dotdot",
            one(Layer::new().dir("a").file("a/../../../../outside/dd", b"x")),
            "a/../../../../outside/dd".into(),
        ),
        (
            "symlink",
            one(Layer::new().symlink("link", &out).file("link/pwned", b"x")),
            "link/pwned".into(),
        ),
        (
            "hardlink",
            one(Layer::new().symlink("s", &out).hardlink("hl", "s/secret")),
            "hl".into(),
        ),
        (
            "pax",
            one(Layer::new()
                .file("first", b"1")
                .pax(&[("comment", &vec![b'a'; 2 << 20])])
                .file("second", b"2")),
            "after first".into(),
        ),
        (
            "hardlink-dotdot",
            one(Layer::new().hardlink("hl", "../outside/secret")),
            "hl".into(),
        ),
        (
            "hardlink-absolute",
            one(Layer::new().hardlink("hl", &format!("{out}/secret"))),
            "hl".into(),
        ),
        (
            "whiteout-symlink",
            one(Layer::new()
                .symlink("link", &out)
                .file("link/.wh.secret", b"")),
            "link/.wh.secret".into(),
        ),
        // A symlink planted by an earlier layer, written through by a later one.
        (
            "planted",
            vec![planted(), Layer::new().file("evil/pwned", b"x").finish()],
            "evil/pwned".into(),
        ),
        (
            "planted-whiteout",
            vec![
                planted(),
                Layer::new().file("evil/.wh.secret", b"").finish(),
            ],
            "evil/.wh.secret".into(),
        ),
        (
            "planted-deep",
            vec![
                planted(),
                Layer::new().file("etc/x", b"x").finish(),
                Layer::new().dir("etc").file("evil/a/b", b"x").finish(),
            ],
            "evil/a/b".into(),
        ),
    ];
    for (name, layers, entry) in cases {
        assert_pull_rejected(&reg, t.path(), name, layers, &entry);
    }
    // The planted symlink is named too.
    let root = ImageRoot::open(t.path().join("root-planted")).unwrap();
    let e = root
        .pull(
            &format!("{}/mal/planted", reg.host()),
            &opts(&reg.host(), 1),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("evil is a symlink (-> {out})")), "{e}");
}

/// Not a test on its own: the child process of
/// `pulls_from_several_processes_download_each_blob_once` (run with its
/// env set), pulling into a store other processes share.
#[test]
fn pull_child_process() {
    let (Ok(root), Ok(reference), Ok(host)) = (
        std::env::var("BERTH_PULL_CHILD_ROOT"),
        std::env::var("BERTH_PULL_CHILD_REF"),
        std::env::var("BERTH_PULL_CHILD_HOST"),
    ) else {
        return;
    };
    let root = Path::new(&root);
    // The metadata db allows one process; blobs and layers are shared.
    let store = berth_image::Store::open(root.join("content")).unwrap();
    let snaps = berth_image::Snapshotter::open(root.join("snapshots")).unwrap();
    let img = berth_image::registry::pull(&reference, &opts(&host, 3), &store, &snaps).unwrap();
    println!("pulled {}", img.id);
}

#[test]
fn pulls_from_several_processes_download_each_blob_once() {
    let t = tempfile::tempdir().unwrap();
    let (reg, layers) = two_layer_image(t.path());
    // The big layer is slow, so all the pulls want it at once.
    let big = layers[0].to_string();
    let proxy = Proxy::start(reg.port(), vec![(big.clone(), Fault::Slow(u32::MAX))]);
    let root = t.path().join("root");
    let reference = format!("{}/fault/img", proxy.host());
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "pull_child_process", "--nocapture"])
                .env("BERTH_PULL_CHILD_ROOT", &root)
                .env("BERTH_PULL_CHILD_REF", &reference)
                .env("BERTH_PULL_CHILD_HOST", proxy.host())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("pulled "))
            .unwrap_or_else(|| panic!("child did not pull: {text}"))
            .to_string();
        ids.push(id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // They overlapped: every pull had asked for the tag before the one
    // download of the big layer ended.
    let log = proxy.log.lock().unwrap().clone();
    let done = log
        .iter()
        .position(|l| l.starts_with("DONE ") && l.contains(&big));
    let tags: Vec<_> = (0..log.len())
        .filter(|&i| log[i].contains("/manifests/latest"))
        .collect();
    assert_eq!(tags.len(), 3, "{log:?}");
    assert!(tags.iter().all(|&i| Some(i) < done), "{log:?}");
    // Every blob (config and both layers) crossed the wire once in all:
    // the ingest lock makes the others wait and find it stored.
    let config = ids[0].clone();
    for d in layers.iter().map(|d| d.to_string()).chain([config]) {
        let gets = proxy.requests(&format!("GET /v2/fault/img/blobs/{d}"));
        assert_eq!(gets.len(), 1, "{d}: {:?}", proxy.log);
    }
    let snaps = berth_image::Snapshotter::open(root.join("snapshots")).unwrap();
    assert_eq!(snaps.layers().unwrap().len(), 2);
    for d in ["content/ingest", "snapshots/tmp"] {
        assert_eq!(tree(&root.join(d)), Vec::<String>::new(), "{d} left over");
    }
}
