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

/// The files left in the snapshotter's staging dir.
fn staging(root: &Path) -> Vec<String> {
    tree(&root.join("tmp"))
}

#[test]
fn a_layer_writing_through_a_lower_layers_symlink_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "s").unwrap();
    let out = outside.display().to_string();
    let root = t.path().join("snaps");
    let s = Snapshotter::open(&root).unwrap();
    let base = Layer::new()
        .symlink("evil", &out)
        .dir("d")
        .symlink("d/rel", "../evil")
        .finish();
    let base_chain = apply_all(&s, std::slice::from_ref(&base))[0].clone();
    // (top layer, entry the error names, symlink it names)
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            Layer::new().file("evil/pwned", b"x").finish(),
            "evil/pwned",
            "evil",
        ),
        (
            Layer::new().file("evil/.wh.secret", b"").finish(),
            "evil/.wh.secret",
            "evil",
        ),
        (
            Layer::new().file("evil/.wh..wh..opq", b"").finish(),
            "evil/.wh..wh..opq",
            "evil",
        ),
        (
            Layer::new().file("evil/a/b", b"x").finish(),
            "evil/a/b",
            "evil",
        ),
        // A parent the layer lists itself does not hide a symlink in it.
        (
            Layer::new().dir("d").file("d/rel/x", b"x").finish(),
            "d/rel/x",
            "d/rel",
        ),
        // The directory entry comes too late: the file went through first.
        (
            Layer::new().file("evil/late", b"x").dir("evil").finish(),
            "evil/late",
            "evil",
        ),
        (
            Layer::new()
                .file("x", b"x")
                .hardlink("evil/hl", "x")
                .finish(),
            "evil/hl",
            "evil",
        ),
    ];
    for (top, entry, link) in cases {
        let e = s
            .apply(Some(&base_chain), &Digest::of(&top), None, &top[..])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{entry:?}")), "{entry}: {e}");
        assert!(
            e.contains(&format!("{link} is a symlink (-> ")),
            "{entry}: does not name the symlink {link}: {e}"
        );
        assert_eq!(s.layers().unwrap(), vec![base_chain.clone()], "{entry}");
        assert!(staging(&root).is_empty(), "{entry}: {:?}", staging(&root));
        assert_eq!(tree(&outside), ["secret"], "{entry}: wrote outside");
    }

    // Replacing the symlink with a directory (its own entry first) or a
    // file is fine, and the view shows the replacement.
    let replaced = Layer::new()
        .dir("evil")
        .file("evil/ok", b"ok")
        .file("d/rel", b"file")
        .finish();
    let top = s
        .apply(
            Some(&base_chain),
            &Digest::of(&replaced),
            None,
            &replaced[..],
        )
        .unwrap();
    let _c = Cleanup(&s);
    let v = s.create_view("v", &top).unwrap();
    assert_eq!(fs::read(v.rootfs.join("evil/ok")).unwrap(), b"ok");
    assert_eq!(fs::read(v.rootfs.join("d/rel")).unwrap(), b"file");
    assert_eq!(tree(&outside), ["secret"]);
    s.remove_view("v").unwrap();

    // Staged together (as a pull stages an image's layers), a hostile top
    // layer publishes none of them.
    let fresh = Snapshotter::open(t.path().join("fresh")).unwrap();
    let bad = Layer::new().file("evil/pwned", b"x").finish();
    let staged = vec![
        fresh.stage(&Digest::of(&base), None, &base[..]).unwrap(),
        fresh.stage(&Digest::of(&bad), None, &bad[..]).unwrap(),
    ];
    let e = fresh.publish_all(None, staged).unwrap_err().to_string();
    assert!(
        e.contains("\"evil/pwned\"") && e.contains("evil is a symlink"),
        "{e}"
    );
    assert!(fresh.layers().unwrap().is_empty());
    assert!(staging(&t.path().join("fresh")).is_empty());
    assert_eq!(tree(&outside), ["secret"]);
}

#[test]
fn gc_waits_for_a_view_being_created() {
    let t = tempfile::tempdir().unwrap();
    let s = Snapshotter::open(t.path()).unwrap();
    let chains = apply_all(&s, &two_layers());
    // A caller between reading the chain's layers and recording its view
    // (as `create_view` is) holds the guard; gc, which sees no view and no
    // image keeping the layers, must not run meanwhile.
    let guard = s.hold_views().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let removed = s.gc(&HashSet::new()).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            removed
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!done.load(std::sync::atomic::Ordering::SeqCst), "gc ran");
        // The view is recorded, then the guard goes: gc keeps its layers.
        let _c = Cleanup(&s);
        let mut copy = s.clone();
        copy.set_overlay(false);
        let v = copy.create_view_with("held", &chains[1], None).unwrap();
        drop(guard);
        assert!(
            h.join().unwrap().is_empty(),
            "the view's layers were removed"
        );
        assert_eq!(s.layers().unwrap().len(), 2);
        check_merged(&v.rootfs);
        s.remove_view("held").unwrap();
    });
    assert_eq!(s.gc(&HashSet::new()).unwrap().len(), 2);
}
