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

impl Registry {
    fn start() -> Registry {
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
