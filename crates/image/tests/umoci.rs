//! The root filesystem berth unpacks equals, file by file, what umoci
//! (an independent OCI image implementation) unpacks from the same layout.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use berth_image::{Digest, ImageRoot};
use tar::EntryType;

mod common;
use common::Layer;

/// Extended attributes of `p` (not following a symlink), `name=hex`,
/// sorted; overlayfs' own `trusted.overlay.*` are not content.
fn xattrs(p: &Path) -> String {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap_or(0);
    let mut out: Vec<String> = names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !n.starts_with(b"trusted.overlay."))
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut v = vec![0u8; 64 * 1024];
            let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v).unwrap();
            let hex: String = v[..len].iter().map(|b| format!("{b:02x}")).collect();
            format!("{name}={hex}")
        })
        .collect();
    out.sort();
    out.join(",")
}

/// path -> (type, mode, uid, gid, size, content or link target, xattrs)
fn describe(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let (kind, extra) = if ft.is_dir() {
                ("dir", String::new())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&path).unwrap().display().to_string(),
                )
            } else if ft.is_file() {
                let data = fs::read(&path).unwrap();
                ("file", format!("sha256 {:x}", sha2_digest(&data)))
            } else if ft.is_char_device() || ft.is_block_device() {
                ("device", format!("rdev {}", m.rdev()))
            } else if ft.is_fifo() {
                ("fifo", String::new())
            } else {
                ("other", String::new())
            };
            let size = if ft.is_file() { m.len() } else { 0 };
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!(
                    "{kind} {:o} {}:{} {size} {extra} [{}]",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    xattrs(&path)
                ),
            );
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn sha2_digest(data: &[u8]) -> u128 {
    // Any strong-enough fingerprint will do for equality.
    let d = Digest::of(data);
    u128::from_str_radix(&d.hex()[..32], 16).unwrap()
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> BTreeMap<String, String> {
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .expect("umoci is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    describe(&bundle.join("rootfs"))
}

/// Writes an OCI layout whose image has `layers` (gzip'd tars), tagged "t".
fn write_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        serde_json::json!({"digest": d.to_string(), "size": b.len()})
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(Digest::of(tar).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar).unwrap();
        let mut d = put(&gz.finish().unwrap());
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        descs.push(d);
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let mut cd = put(&serde_json::to_vec(&config).unwrap());
    cd["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": descs});
    let mut md = put(&serde_json::to_vec(&manifest).unwrap());
    md["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    md["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [md]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
}

#[test]
fn rootfs_matches_umoci_unpack() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    berth_testutil::write_image_layout(&layout, "latest", &["sh"]).unwrap();

    let theirs = umoci_unpack(&layout, "latest", &t.path().join("bundle"));

    let mut root = ImageRoot::open(t.path().join("root")).unwrap();
    // Compare a plain copy (no mount to clean up) and the layer itself.
    root.snapshots.set_overlay(false);
    let img = root
        .import_layout(&layout, Some("latest"), "busybox")
        .unwrap();
    let view = root.snapshots.create_view("cmp", &img.chain_id).unwrap();

    assert!(theirs.len() > 50, "umoci unpacked {} files", theirs.len());
    assert_eq!(describe(&view.rootfs), theirs);
    assert_eq!(describe(&root.snapshots.layer_path(&img.chain_id)), theirs);
}

/// Three layers exercising owners, modes, links, devices, xattrs and
/// whiteouts.
fn layered() -> Vec<Vec<u8>> {
    let owned = |mode: u32, uid: u64| {
        move |h: &mut tar::Header| {
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid + 1);
        }
    };
    // A file capability (vfs_cap_data v2, effective, cap_net_raw permitted).
    let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
    cap.resize(20, 0);
    let base = Layer::new()
        .pax(&[("SCHILY.xattr.user.berth.dir", b"d")])
        .raw_with(EntryType::Directory, "etc", None, b"", owned(0o750, 10))
        .pax(&[
            ("SCHILY.xattr.user.berth.note", b"hello"),
            ("SCHILY.xattr.user.berth.bin", &[0, 1, 2, 255]),
        ])
        .file("etc/noted", b"n")
        .pax(&[("SCHILY.xattr.security.capability", &cap)])
        .raw_with(
            EntryType::Regular,
            "bin/ping",
            None,
            b"ping",
            owned(0o755, 0),
        )
        .raw_with(
            EntryType::Regular,
            "etc/shadow",
            None,
            b"secret",
            owned(0o640, 0),
        )
        .raw_with(
            EntryType::Regular,
            "bin/tool",
            None,
            b"elf",
            owned(0o4755, 0),
        )
        .hardlink("bin/tool2", "bin/tool")
        .symlink("lib", "usr/lib")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/a.so", b"a")
        .file("usr/lib/b.so", b"b")
        .raw_with(EntryType::Char, "dev/null", None, b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
        })
        .raw_with(EntryType::Fifo, "run/fifo", None, b"", owned(0o600, 5))
        .dir("var")
        .dir("var/cache")
        .file("var/cache/old", b"o")
        .finish();
    let middle = Layer::new()
        .file("usr/lib/.wh.a.so", b"")
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", b"")
        .raw_with(
            EntryType::Regular,
            "var/cache/new",
            None,
            b"n",
            owned(0o600, 1000),
        )
        .raw_with(
            EntryType::Regular,
            "etc/shadow",
            None,
            b"changed",
            owned(0o600, 0),
        )
        .finish();
    let top = Layer::new()
        .file(".wh.run", b"")
        .symlink("bin/tool", "tool2")
        .dir("home")
        .raw_with(
            EntryType::Directory,
            "home/user",
            None,
            b"",
            owned(0o700, 1000),
        )
        .file("home/user/.profile", b"p")
        .finish();
    vec![base, middle, top]
}

#[test]
fn layered_rootfs_matches_umoci_unpack() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_layout(&layout, &layered());
    let theirs = umoci_unpack(&layout, "t", &t.path().join("bundle"));
    assert!(theirs.contains_key("var/cache/new") && !theirs.contains_key("run"));
    // The xattrs are there to compare (umoci set them too).
    assert!(
        theirs["etc/noted"].contains("user.berth.bin=000102ff,user.berth.note=68656c6c6f"),
        "{}",
        theirs["etc/noted"]
    );
    assert!(
        theirs["etc"].contains("user.berth.dir=64"),
        "{}",
        theirs["etc"]
    );
    assert!(
        theirs["bin/ping"].contains("security.capability=01000002"),
        "{}",
        theirs["bin/ping"]
    );

    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = root.import_layout(&layout, Some("t"), "layered").unwrap();
    let _c = common::Cleanup(&root.snapshots);
    let view = root.snapshots.create_view("ov", &img.chain_id).unwrap();
    let ours = describe(&view.rootfs);
    root.snapshots.remove_view("ov").unwrap();
    assert!(view.overlay);
    assert_eq!(ours, theirs, "overlay view");

    let mut copy = root.snapshots.clone();
    copy.set_overlay(false);
    let view = copy.create_view("cp", &img.chain_id).unwrap();
    assert_eq!(describe(&view.rootfs), theirs, "copy view");
}

/// The same image pushed to a registry and pulled (layers unpacked while
/// they download, in parallel) equals umoci's unpack of the layout.
#[test]
fn pulled_layered_rootfs_matches_umoci_unpack() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    write_layout(&layout, &layered());
    let theirs = umoci_unpack(&layout, "t", &t.path().join("bundle"));
    let reg = berth_testutil::registry::Registry::start();
    reg.push(&format!("oci:{}:t", layout.display()), "umoci/layered", &[]);
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let opts = berth_image::registry::Options {
        insecure: vec![reg.host()],
        ..Default::default()
    };
    let img = root
        .pull(&format!("{}/umoci/layered", reg.host()), &opts)
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    let _c = common::Cleanup(&root.snapshots);
    let view = root.snapshots.create_view("pulled", &img.chain_id).unwrap();
    let ours = describe(&view.rootfs);
    root.snapshots.remove_view("pulled").unwrap();
    assert_eq!(ours, theirs, "pulled overlay view");
}
