//! Importing the testutil busybox image (layout directory and archive).

use std::fs;
use std::os::unix::fs::MetadataExt;

use berth_image::{Digest, Error, ImageRoot};

mod common;

#[test]
fn import_layout_directory() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest =
        berth_testutil::write_image_layout(&layout, "v1", &["sh", "-c", "echo hi"]).unwrap();
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = root
        .import_layout(&layout, Some("v1"), "busybox:v1")
        .unwrap();

    assert_eq!(img.manifest.to_string(), manifest);
    let index: serde_json::Value =
        serde_json::from_slice(&root.store.read(&img.manifest).unwrap()).unwrap();
    assert_eq!(
        index["config"]["digest"],
        img.id.to_string(),
        "image id is the config digest"
    );
    assert_eq!(
        img.config.cmd.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "echo hi".into()][..])
    );
    assert!(img.config.env.as_ref().unwrap()[0].starts_with("PATH="));
    assert_eq!(img.config.working_dir.as_deref(), Some("/"));
    assert_eq!(
        img.chain_id, img.diff_ids[0],
        "one layer: chain id = diff id"
    );
    for b in img.blobs() {
        assert!(root.store.contains(b), "{b} stored");
    }

    // The index finds it by name, id and id prefix.
    assert_eq!(root.images.get("busybox:v1").unwrap(), img);
    assert_eq!(root.images.get(&img.id.to_string()).unwrap(), img);
    assert_eq!(root.images.get(&img.id.hex()[..12]).unwrap(), img);
    assert!(matches!(root.images.get("nope"), Err(Error::NotFound(_))));

    let v = root.snapshots.create_view("c1", &img.chain_id).unwrap();
    let bb = fs::metadata(v.rootfs.join("bin/busybox")).unwrap();
    assert_eq!(bb.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_link(v.rootfs.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );

    // Nothing is collected while the image exists; its view pins the layer
    // even after the image is gone; then everything goes.
    assert_eq!(root.gc().unwrap(), (vec![], vec![]));
    root.images.remove("busybox:v1", &|_| None).unwrap();
    let (blobs, layers) = root.gc().unwrap();
    assert_eq!(blobs.len(), 3);
    assert!(layers.is_empty());
    root.snapshots.remove_view("c1").unwrap();
    assert_eq!(root.gc().unwrap().1, vec![img.chain_id.clone()]);
    assert!(root.store.list().unwrap().is_empty());
}

#[test]
fn import_archive_and_reimport_shares_layers() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("image.tar");
    berth_testutil::write_image_archive(&archive, "latest", &["sh"]).unwrap();
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let a = root
        .import_archive(fs::File::open(&archive).unwrap(), None, "a")
        .unwrap();
    let b = root
        .import_archive(fs::File::open(&archive).unwrap(), Some("latest"), "b")
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(root.snapshots.layers().unwrap(), vec![a.chain_id.clone()]);
    // One image (same config digest) with both names.
    let all = root.images.list().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].repo_tags, ["a", "b"]);
    assert_eq!(b.repo_tags, ["a", "b"]);
    let e = root
        .import_archive(fs::File::open(&archive).unwrap(), Some("v9"), "c")
        .unwrap_err();
    assert!(e.to_string().contains("\"v9\""), "{e}");
}

#[test]
fn tampered_layout_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest = berth_testutil::write_image_layout(&layout, "latest", &["sh"]).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(&manifest["sha256:".len()..]),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = Digest::parse(m["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let p = layout.join("blobs/sha256").join(layer.hex());
    let mut bytes = fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let e = root
        .import_layout(&layout, None, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains(&layer.to_string()), "{e}");
    assert!(root.images.list().unwrap().is_empty());
    assert!(root.snapshots.layers().unwrap().is_empty());
}
