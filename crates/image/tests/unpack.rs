//! Layer unpacking: every tar feature layers use, and hostile archives.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_image::{unpack, Digest};
use common::{mode, tree, Layer};
use tar::EntryType;

/// Unpacks `tar` into `<tmp>/layer` next to `<tmp>/outside`, expects an
/// error naming `entry`, and checks nothing was written outside.
fn assert_rejected(build: impl FnOnce(&Path) -> Vec<u8>, entry: &str, why: &str) {
    let t = tempfile::tempdir().unwrap();
    let (layer, outside) = (t.path().join("layer"), t.path().join("outside"));
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "s").unwrap();
    let tar = build(&outside);
    let err = unpack(&tar[..], None, &layer, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(entry), "error {err:?} does not name {entry:?}");
    assert!(err.contains(why), "error {err:?} does not say {why:?}");
    assert_eq!(tree(&outside), vec!["secret"], "wrote outside the layer");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s");
    let mut top: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["layer", "outside"]);
}

#[test]
fn absolute_path_is_rejected() {
    assert_rejected(
        |out| {
            let p = format!("{}/abs", out.display());
            Layer::new().file(&p, b"x").finish()
        },
        "/abs",
        "absolute path",
    );
}

#[test]
fn dotdot_is_rejected() {
    assert_rejected(
        |_| Layer::new().file("../outside/dd", b"x").finish(),
        "../outside/dd",
        "\"..\"",
    );
    assert_rejected(
        |_| {
            Layer::new()
                .dir("a")
                .file("a/../../outside/dd", b"x")
                .finish()
        },
        "a/../../outside/dd",
        "\"..\"",
    );
}

#[test]
fn write_through_absolute_symlink_is_rejected() {
    assert_rejected(
        |out| {
            let target = out.display().to_string();
            Layer::new()
                .symlink("link", &target)
                .file("link/pwned", b"x")
                .finish()
        },
        "link/pwned",
        "symlink",
    );
}

#[test]
fn write_through_relative_symlink_is_rejected() {
    assert_rejected(
        |_| {
            Layer::new()
                .dir("d")
                .symlink("d/up", "../../outside")
                .file("d/up/pwned", b"x")
                .finish()
        },
        "d/up/pwned",
        "d/up is a symlink",
    );
    // A directory entry through a symlink is refused the same way.
    assert_rejected(
        |_| {
            Layer::new()
                .symlink("up", "../outside")
                .dir("up/sub")
                .finish()
        },
        "up/sub",
        "symlink",
    );
    // And a whiteout.
    assert_rejected(
        |_| {
            Layer::new()
                .symlink("up", "../outside")
                .file("up/.wh.secret", b"")
                .finish()
        },
        "up/.wh.secret",
        "symlink",
    );
}

#[test]
fn hardlinks_out_of_the_layer_are_rejected() {
    assert_rejected(
        |_| Layer::new().hardlink("hl", "../outside/secret").finish(),
        "hl",
        "\"..\"",
    );
    assert_rejected(
        |out| {
            let p = format!("{}/secret", out.display());
            Layer::new().hardlink("hl", &p).finish()
        },
        "hl",
        "absolute path",
    );
    assert_rejected(
        |out| {
            let target = out.display().to_string();
            Layer::new()
                .symlink("s", &target)
                .hardlink("hl", "s/secret")
                .finish()
        },
        "hl",
        "s is a symlink",
    );
    assert_rejected(
        |_| Layer::new().hardlink("hl", "missing").finish(),
        "hl",
        "must be in this layer",
    );
}

#[test]
fn huge_pax_header_is_rejected() {
    assert_rejected(
        |_| {
            let big = vec![b'a'; 2 << 20];
            Layer::new()
                .file("first", b"1")
                .pax(&[("comment", &big)])
                .file("second", b"2")
                .finish()
        },
        "after first",
        "extended headers exceed",
    );
}

#[test]
fn bad_whiteout_is_rejected() {
    assert_rejected(
        |_| Layer::new().file("d/.wh...", b"").finish(),
        "d/.wh...",
        "invalid whiteout",
    );
}

#[test]
fn a_file_replaces_a_symlink_instead_of_following_it() {
    let t = tempfile::tempdir().unwrap();
    let (layer, outside) = (t.path().join("layer"), t.path().join("outside"));
    fs::create_dir_all(&layer).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let target = outside.join("victim").display().to_string();
    let tar = Layer::new()
        .symlink("f", &target)
        .file("f", b"content")
        .finish();
    unpack(&tar[..], None, &layer, None).unwrap();
    assert!(!outside.join("victim").exists());
    assert_eq!(fs::read(layer.join("f")).unwrap(), b"content");
    assert!(fs::symlink_metadata(layer.join("f")).unwrap().is_file());
}

fn full_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.raw_with(EntryType::Directory, "./", None, b"", |h| h.set_mode(0o755))
        .raw_with(EntryType::Directory, "etc/", None, b"", |h| {
            h.set_mode(0o750);
            h.set_uid(12);
            h.set_gid(34);
            h.set_mtime(1_500_000_000);
        })
        .raw_with(EntryType::Regular, "etc/suid", None, b"#!/bin/sh\n", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(1_234_567_890);
        })
        .pax(&[
            ("SCHILY.xattr.user.comment", b"hello"),
            ("mtime", b"1234567890.25"),
        ])
        .file("etc/xattr", b"x")
        .symlink("etc/link", "/nonexistent/target")
        .hardlink("etc/hard", "etc/suid")
        .raw_with(EntryType::Char, "dev/null", None, b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
        })
        .raw_with(EntryType::Fifo, "run/fifo", None, b"", |h| {
            h.set_mode(0o620)
        })
        .file("gone/.wh.old", b"")
        .dir("opq")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"n")
        .file("implicit/parent/file", b"p");
    l.finish()
}

#[test]
fn unpacks_every_entry_type_with_metadata() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tar = full_layer();
    let u = unpack(
        &tar[..],
        Some("application/vnd.oci.image.layer.v1.tar"),
        d,
        None,
    )
    .unwrap();
    assert_eq!(u.diff_id, Digest::of(&tar));
    assert_eq!(u.size, tar.len() as u64);

    let etc = fs::metadata(d.join("etc")).unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 12, 34));
    assert_eq!(
        etc.mtime(),
        1_500_000_000,
        "directory mtime set after its children"
    );
    let suid = fs::metadata(d.join("etc/suid")).unwrap();
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid()),
        (0o4755, 1000, 1000)
    );
    assert_eq!(suid.mtime(), 1_234_567_890);
    assert_eq!(suid.nlink(), 2);
    assert_eq!(fs::metadata(d.join("etc/hard")).unwrap().ino(), suid.ino());
    let x = fs::metadata(d.join("etc/xattr")).unwrap();
    assert_eq!((x.mtime(), x.mtime_nsec()), (1_234_567_890, 250_000_000));
    let mut v = [0u8; 16];
    let n = rustix::fs::getxattr(d.join("etc/xattr"), "user.comment", &mut v).unwrap();
    assert_eq!(&v[..n], b"hello");
    assert_eq!(
        fs::read_link(d.join("etc/link")).unwrap(),
        Path::new("/nonexistent/target")
    );
    let null = fs::symlink_metadata(d.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let fifo = fs::symlink_metadata(d.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    // Whiteouts become overlayfs markers.
    let wh = fs::symlink_metadata(d.join("gone/old")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let n = rustix::fs::getxattr(d.join("opq"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
    assert!(!d.join("opq/.wh..wh..opq").exists());
    assert_eq!(mode(&d.join("implicit/parent")) & 0o7777, 0o755);
    assert_eq!(fs::read(d.join("implicit/parent/file")).unwrap(), b"p");
}

#[test]
fn gzip_and_zstd_layers_have_the_same_diff_id() {
    let tar = full_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let want = Digest::of(&tar);
    for (blob, mt) in [
        (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let t = tempfile::tempdir().unwrap();
        let u = unpack(&blob[..], Some(mt), t.path(), Some(&want)).unwrap();
        assert_eq!(u.diff_id, want);
        assert_eq!(fs::read(t.path().join("opq/new")).unwrap(), b"n");
    }
}

#[test]
fn wrong_diff_id_and_media_type_are_errors() {
    let tar = Layer::new().file("a", b"a").finish();
    let t = tempfile::tempdir().unwrap();
    let wrong = Digest::of(b"other");
    let e = unpack(&tar[..], None, t.path(), Some(&wrong))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("diff_id") && e.contains(&wrong.to_string()),
        "{e}"
    );
    let e = unpack(
        &tar[..],
        Some("application/vnd.oci.image.layer.v1.tar+bzip2"),
        t.path(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("+bzip2"), "{e}");
}

#[test]
fn writing_through_a_symlink_of_the_layers_below_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (lower, layer, outside) = (
        t.path().join("lower"),
        t.path().join("layer"),
        t.path().join("outside"),
    );
    for d in [&lower, &layer, &outside] {
        fs::create_dir(d).unwrap();
    }
    fs::write(outside.join("secret"), "s").unwrap();
    let base = Layer::new()
        .symlink("evil", &outside.display().to_string())
        .finish();
    unpack(&base[..], None, &lower, None).unwrap();
    let top = Layer::new().file("evil/pwned", b"x").finish();
    let e = berth_image::unpack_onto(&top[..], None, &layer, None, || vec![lower.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"evil/pwned\""), "{e}");
    assert!(
        e.contains(&format!("evil is a symlink (-> {})", outside.display())),
        "{e}"
    );
    assert_eq!(tree(&outside), ["secret"]);
    // An explicit directory replaces the symlink instead.
    let fixed = t.path().join("fixed");
    fs::create_dir(&fixed).unwrap();
    let top = Layer::new().dir("evil").file("evil/ok", b"x").finish();
    berth_image::unpack_onto(&top[..], None, &fixed, None, || vec![lower.clone()]).unwrap();
    assert_eq!(tree(&fixed), ["evil", "evil/ok"]);
}
