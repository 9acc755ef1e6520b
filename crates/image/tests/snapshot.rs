//! Snapshots: layers by chain ID, overlay and copy views, whiteouts,
//! long chains, references and disk usage.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::Path;

use berth_image::{Digest, Error, Snapshotter};
use common::{tree, Cleanup, Layer};

/// Applies `tars` bottom-up, returning the chain IDs.
fn apply_all(s: &Snapshotter, tars: &[Vec<u8>]) -> Vec<Digest> {
    let mut chain: Option<Digest> = None;
    let mut out = Vec::new();
    for t in tars {
        let c = s
            .apply(chain.as_ref(), &Digest::of(t), None, &t[..])
            .unwrap();
        out.push(c.clone());
        chain = Some(c);
    }
    out
}

fn two_layers() -> Vec<Vec<u8>> {
    let base = Layer::new()
        .dir("a")
        .file("a/file", b"old")
        .file("a/keep", b"keep")
        .dir("c")
        .file("c/x", b"x")
        .symlink("lnk", "/a")
        .finish();
    let top = Layer::new()
        .file("a/.wh.file", b"")
        .dir("c")
        .file("c/.wh..wh..opq", b"")
        .file("c/new", b"new")
        .dir("lnk") // a directory hides the symlink below, never follows it
        .file("lnk/inside", b"i")
        .file("d", b"d")
        .finish();
    vec![base, top]
}

fn check_merged(root: &Path) {
    assert_eq!(
        tree(root),
        ["a", "a/keep", "c", "c/new", "d", "lnk", "lnk/inside"],
        "whiteouts, opaque dir and dir-over-symlink"
    );
    assert_eq!(fs::read(root.join("c/new")).unwrap(), b"new");
}

#[test]
fn overlay_view_applies_whiteouts_and_is_removable() {
    let t = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(t.path()).unwrap();
    let _c = Cleanup(&s);
    let chains = apply_all(&s, &two_layers());
    let v = s.create_view("ctr1", &chains[1]).unwrap();
    assert!(v.overlay, "overlay mounts work here (root, kernel 6)");
    check_merged(&v.rootfs);
    // The container's writes land in its own upper dir, not in the layers.
    let before = s.view_usage("ctr1").unwrap();
    fs::write(v.rootfs.join("a/keep"), vec![b'z'; 64 * 1024]).unwrap();
    assert!(s.view_usage("ctr1").unwrap() >= before + 64 * 1024);
    assert_eq!(
        fs::read(s.layer_path(&chains[0]).join("a/keep")).unwrap(),
        b"keep"
    );
    // A second view of the same image starts clean.
    let v2 = s.create_view("ctr2", &chains[1]).unwrap();
    assert_eq!(fs::read(v2.rootfs.join("a/keep")).unwrap(), b"keep");

    match s.remove_layer(&chains[0]) {
        Err(Error::InUse { by, .. }) => {
            assert!(by.contains("view ctr1") && by.contains("layer"), "{by}")
        }
        r => panic!("removing a used layer: {r:?}"),
    }
    s.remove_view("ctr1").unwrap();
    s.remove_view("ctr2").unwrap();
    assert!(s.views().unwrap().is_empty());
    assert!(matches!(s.remove_view("ctr1"), Err(Error::NotFound(_))));
    s.remove_layer(&chains[1]).unwrap();
    s.remove_layer(&chains[0]).unwrap();
    assert!(s.layers().unwrap().is_empty());
    assert!(fs::read_dir(t.path().join("l")).unwrap().next().is_none());
}

#[test]
fn copy_view_matches_overlay_view() {
    let t = tempfile::tempdir().unwrap();
    let mut s = Snapshotter::open(t.path()).unwrap();
    s.set_overlay(false);
    let chains = apply_all(&s, &two_layers());
    let v = s.create_view("copy", &chains[1]).unwrap();
    assert!(!v.overlay);
    check_merged(&v.rootfs);
    assert!(s.view_usage("copy").unwrap() > 0);
    s.remove_view("copy").unwrap();
}

#[test]
fn layers_are_unpacked_once_and_garbage_collected() {
    let t = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(t.path()).unwrap();
    let tars = two_layers();
    let chains = apply_all(&s, &tars);
    assert_eq!(chains[0], Digest::of(&tars[0]));
    assert_eq!(
        chains[1],
        Digest::chain(Some(&chains[0]), &Digest::of(&tars[1]))
    );
    // Present already: the stream is not even read.
    struct Unread;
    impl Read for Unread {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("read a layer that was already unpacked")
        }
    }
    let again = s
        .apply(Some(&chains[0]), &Digest::of(&tars[1]), None, Unread)
        .unwrap();
    assert_eq!(again, chains[1]);
    assert!(s.layer_usage(&chains[0]).unwrap() > 0);
    // A wrong diff_id leaves nothing behind.
    let bad = s.apply(None, &Digest::of(b"nope"), None, &tars[1][..]);
    assert!(matches!(bad, Err(Error::Mismatch { .. })), "{bad:?}");
    assert_eq!(s.layers().unwrap().len(), 2);
    assert!(fs::read_dir(t.path().join("tmp")).unwrap().next().is_none());

    assert!(s
        .gc(&HashSet::from([chains[1].clone()]))
        .unwrap()
        .is_empty());
    let removed = s.gc(&HashSet::new()).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(s.layers().unwrap().is_empty());
}

#[test]
fn sixty_layer_chain_mounts_from_a_long_root() {
    let t = tempfile::tempdir().unwrap();
    // Absolute lowerdirs this deep would overflow the mount data page.
    let root = t.path().join("x".repeat(100)).join("y".repeat(100));
    let s = Snapshotter::open(&root).unwrap();
    let _c = Cleanup(&s);
    let tars: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            Layer::new()
                .file(&format!("f{i:02}"), format!("{i}").as_bytes())
                .file("top", format!("{i}").as_bytes())
                .finish()
        })
        .collect();
    let chains = apply_all(&s, &tars);
    let v = s.create_view("deep", chains.last().unwrap()).unwrap();
    assert!(v.overlay);
    let files = tree(&v.rootfs);
    assert_eq!(files.len(), 61);
    assert_eq!(fs::read_to_string(v.rootfs.join("top")).unwrap(), "59");
    assert_eq!(fs::read_to_string(v.rootfs.join("f00")).unwrap(), "0");
    s.remove_view("deep").unwrap();
}

#[test]
fn bad_view_ids_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(t.path()).unwrap();
    let chains = apply_all(&s, &two_layers());
    for id in ["", "../x", ".hidden", "a/b"] {
        let e = s.create_view(id, &chains[1]).unwrap_err().to_string();
        assert!(e.contains("view id"), "{e}");
    }
    assert!(matches!(
        s.create_view("v", &Digest::of(b"missing")),
        Err(Error::NotFound(_))
    ));
    assert!(fs::read_dir(t.path().join("views"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn falls_back_to_a_copy_when_overlay_refuses_the_mount() {
    // 501 layers: on tmpfs, where metadata operations are cheap.
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    let s = Snapshotter::open(t.path()).unwrap();
    let _c = Cleanup(&s);
    // overlayfs stacks at most 500 lower layers.
    let tars: Vec<Vec<u8>> = (0..501)
        .map(|i| {
            Layer::new()
                .dir("d")
                .file(&format!("d/f{i:03}"), b"x")
                .finish()
        })
        .collect();
    let chains = apply_all(&s, &tars);
    let v = s.create_view("tall", chains.last().unwrap()).unwrap();
    assert!(!v.overlay, "overlay accepted 501 lowers?");
    assert_eq!(fs::read_dir(v.rootfs.join("d")).unwrap().count(), 501);
    assert!(!t.path().join("views/tall/upper").exists());
    s.remove_view("tall").unwrap();
}

#[test]
fn a_download_is_unpacked_and_stored_in_one_pass() {
    let t = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(t.path().join("snap")).unwrap();
    let store = berth_image::Store::open(t.path().join("content")).unwrap();
    let tar = two_layers().remove(0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let blob = gz.finish().unwrap();
    let digest = Digest::of(&blob);

    // `&blob[..]` stands for the HTTP body.
    let w = store
        .writer(&digest, Some(blob.len() as u64))
        .unwrap()
        .unwrap();
    let mut tee = w.tee(&blob[..]);
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip";
    let chain = s
        .apply(None, &Digest::of(&tar), Some(mt), &mut tee)
        .unwrap();
    tee.commit().unwrap();
    assert!(store.contains(&digest));
    assert_eq!(
        fs::read(s.layer_path(&chain).join("a/keep")).unwrap(),
        b"keep"
    );
}
