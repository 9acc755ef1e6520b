//! The image metadata store: identity by config digest, names, config
//! fields, removal semantics (untag, in use, idempotent and concurrent) and
//! OCI archive export.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use berth_image::{Digest, Error, Image, ImageRoot, Removed};

fn archive(dir: &Path) -> std::path::PathBuf {
    let a = dir.join("image.tar");
    berth_testutil::write_image_archive(&a, "latest", &["sh"]).unwrap();
    a
}

fn import(root: &ImageRoot, archive: &Path, name: &str) -> Image {
    root.import_archive(fs::File::open(archive).unwrap(), None, name)
        .unwrap()
}

const UNUSED: &dyn Fn(&Image) -> Option<String> = &|_| None;

#[test]
fn one_image_many_names() {
    let t = tempfile::tempdir().unwrap();
    let a = archive(t.path());
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let first = import(&root, &a, "busybox:v1");
    let m = first.manifest.to_string();
    let again = import(&root, &a, "reg.example:5000/lib/busybox:v2");
    let by_digest = import(&root, &a, &format!("busybox@{m}"));
    assert_eq!(first.id, again.id);
    assert_eq!(by_digest.id, first.id);
    let all = root.images.list().unwrap();
    assert_eq!(all.len(), 1, "one image: {all:?}");
    let img = &all[0];
    assert_eq!(
        img.repo_tags,
        ["busybox:v1", "reg.example:5000/lib/busybox:v2"]
    );
    assert_eq!(
        img.repo_digests,
        [
            format!("busybox@{m}"),
            format!("reg.example:5000/lib/busybox@{m}")
        ]
    );
    assert_eq!(&by_digest, img, "import returns the merged record");
    for key in [
        "busybox:v1".to_string(),
        "reg.example:5000/lib/busybox:v2".into(),
        format!("busybox@{m}"),
        img.id.to_string(),
        img.id.hex().to_string(),
        img.id.hex()[..6].to_string(),
        format!("sha256:{}", &img.id.hex()[..8]),
    ] {
        assert_eq!(&root.images.get(&key).unwrap(), img, "{key}");
    }
    for key in ["busybox", "busybox:v3", "abc", "zzzz"] {
        assert!(
            matches!(root.images.get(key), Err(Error::NotFound(_))),
            "{key}"
        );
    }
    // `name` alone means `name:latest`.
    import(&root, &a, "busybox:latest");
    assert_eq!(root.images.get("busybox").unwrap().id, img.id);

    // A second handle in this process shares the database.
    let other = ImageRoot::open(t.path().join("root")).unwrap();
    assert_eq!(other.images.get("busybox").unwrap().id, img.id);
    drop(other);

    // Records survive reopening.
    drop(root);
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    assert_eq!(root.images.get("busybox:v1").unwrap().repo_tags.len(), 3);
}

#[test]
fn a_tag_moves_to_the_newer_image() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.tar"), t.path().join("b.tar"));
    berth_testutil::write_image_archive(&a, "latest", &["true"]).unwrap();
    berth_testutil::write_image_archive(&b, "latest", &["false"]).unwrap();
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let old = import(&root, &a, "app:1");
    let new = import(&root, &b, "app:1");
    assert_ne!(old.id, new.id);
    assert_eq!(root.images.get("app:1").unwrap().id, new.id);
    let old = root.images.get(&old.id.to_string()).unwrap();
    assert!(old.repo_tags.is_empty(), "{old:?}");
}

/// A config with every field the metadata records.
fn rich_layout(dir: &Path) -> Digest {
    berth_testutil::write_image_layout(dir, "rich", &["sh"]).unwrap();
    let blob = |d: &str| dir.join("blobs/sha256").join(&d["sha256:".len()..]);
    let put = |bytes: &[u8]| -> serde_json::Value {
        let d = Digest::of(bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        serde_json::json!({"digest": d.to_string(), "size": bytes.len()})
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&md)).unwrap()).unwrap();
    let cd = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&cd)).unwrap()).unwrap();
    config["created"] = "2024-05-01T10:00:00Z".into();
    config["config"] = serde_json::json!({
        "User": "1000:1000",
        "Env": ["PATH=/bin", "A=b"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "WorkingDir": "/srv",
        "Volumes": {"/data": {}},
        "ExposedPorts": {"8080/tcp": {}},
        "StopSignal": "SIGQUIT",
        "Labels": {"org.example": "yes"}
    });
    let c = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = c["digest"].clone();
    manifest["config"]["size"] = c["size"].clone();
    let m = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = m["digest"].clone();
    index["manifests"][0]["size"] = m["size"].clone();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Digest::parse(c["digest"].as_str().unwrap()).unwrap()
}

#[test]
fn config_fields_and_size_are_recorded() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let config = rich_layout(&layout);
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    root.import_layout(&layout, None, "rich:1").unwrap();
    let img = root.images.get("rich:1").unwrap();
    assert_eq!(img.id, config);
    let c = &img.config;
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.env.as_ref().unwrap(), &["PATH=/bin", "A=b"]);
    assert_eq!(c.entrypoint.as_ref().unwrap(), &["/bin/sh", "-c"]);
    assert_eq!(c.cmd.as_ref().unwrap(), &["echo hi"]);
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
    assert!(c.exposed_ports.as_ref().unwrap().contains_key("8080/tcp"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.labels.as_ref().unwrap()["org.example"], "yes");
    assert_eq!(img.created.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert_eq!(img.size, root.store.size(&img.layers[0]).unwrap());
}

#[test]
fn remove_by_tag_digest_and_id() {
    let t = tempfile::tempdir().unwrap();
    let a = archive(t.path());
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = import(&root, &a, "x:1");
    import(&root, &a, "y:1");
    let m = &img.manifest;

    // One of two tags: only that tag (and its repository's digest) goes,
    // even while a container uses the image.
    let in_use: &dyn Fn(&Image) -> Option<String> = &|_| Some("container c1".into());
    assert_eq!(
        root.remove("x:1", in_use).unwrap(),
        Removed::Untagged(vec!["x:1".into(), format!("x@{m}")])
    );
    assert!(matches!(root.images.get("x:1"), Err(Error::NotFound(_))));
    assert_eq!(root.remove("x:1", UNUSED).unwrap(), Removed::AlreadyRemoved);

    // The last tag removes the image, which a user prevents.
    let e = root.remove("y:1", in_use).unwrap_err();
    assert!(
        matches!(&e, Error::InUse { by, .. } if by == "container c1"),
        "{e}"
    );
    assert_eq!(root.images.get("y:1").unwrap().repo_tags, ["y:1"]);
    assert!(root.store.contains(m));
    match root.remove("y:1", UNUSED).unwrap() {
        Removed::Deleted(i) => assert_eq!(i.id, img.id),
        r => panic!("{r:?}"),
    }
    // Its blobs and layer were collected.
    assert!(root.images.list().unwrap().is_empty());
    assert!(root.store.list().unwrap().is_empty());
    assert!(root.snapshots.layers().unwrap().is_empty());
    for key in ["y:1", &img.id.to_string(), &img.id.hex()[..12]] {
        assert_eq!(
            root.remove(key, UNUSED).unwrap(),
            Removed::AlreadyRemoved,
            "{key}"
        );
    }
    assert!(matches!(
        root.remove("never:1", UNUSED),
        Err(Error::NotFound(_))
    ));

    // By digest or ID: the image with all its names.
    for key in [format!("y@{m}"), img.id.hex()[..10].to_string()] {
        import(&root, &a, "x:1");
        import(&root, &a, "y:1");
        assert!(
            matches!(root.remove(&key, UNUSED).unwrap(), Removed::Deleted(_)),
            "{key}"
        );
        assert!(root.images.list().unwrap().is_empty(), "{key}");
        assert_eq!(root.remove("x:1", UNUSED).unwrap(), Removed::AlreadyRemoved);
    }
}

#[test]
fn concurrent_removals_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let a = archive(t.path());
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = import(&root, &a, "busybox:1");
    let keys = [
        "busybox:1".to_string(),
        img.id.to_string(),
        img.id.hex()[..12].to_string(),
        format!("busybox@{}", img.manifest),
    ];
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (root, barrier, key) = (root.clone(), barrier.clone(), keys[i % 4].clone());
            std::thread::spawn(move || {
                barrier.wait();
                root.remove(&key, UNUSED)
            })
        })
        .collect();
    let results: Vec<Removed> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let deleted = results
        .iter()
        .filter(|r| matches!(r, Removed::Deleted(_)))
        .count();
    assert_eq!(deleted, 1, "{results:?}");
    assert!(root.images.list().unwrap().is_empty());
    assert!(root.store.list().unwrap().is_empty());
}

#[test]
fn export_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let a = archive(t.path());
    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = import(&root, &a, "example.org/busybox:v1");
    let out = t.path().join("out.tar");
    root.export("example.org/busybox:v1", fs::File::create(&out).unwrap())
        .unwrap();

    let fresh = ImageRoot::open(t.path().join("fresh")).unwrap();
    let back = fresh
        .import_archive(fs::File::open(&out).unwrap(), Some("v1"), "b:1")
        .unwrap();
    assert_eq!(back.id, img.id);
    assert_eq!(back.manifest, img.manifest);
    assert_eq!(back.chain_id, img.chain_id);

    // Same image, same bytes.
    let again = t.path().join("again.tar");
    root.export(&img.id.to_string(), fs::File::create(&again).unwrap())
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());

    // An independent reader agrees.
    let o = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", out.display()))
        .output()
        .expect("skopeo (scripts/setup.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], img.manifest.to_string());
    // umoci reads layout directories: unpack the archive and stat the tag.
    let dir = t.path().join("exported");
    tar::Archive::new(fs::File::open(&out).unwrap())
        .unpack(&dir)
        .unwrap();
    let o = Command::new("umoci")
        .arg("stat")
        .arg("--json")
        .arg("--image")
        .arg(format!("{}:v1", dir.display()))
        .output()
        .expect("umoci (scripts/setup.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Several tags: one index entry each, importable without naming one.
    import(&root, &a, "example.org/busybox:v2");
    root.export("example.org/busybox:v2", fs::File::create(&out).unwrap())
        .unwrap();
    let fresh2 = ImageRoot::open(t.path().join("fresh2")).unwrap();
    let back = fresh2
        .import_archive(fs::File::open(&out).unwrap(), None, "c:1")
        .unwrap();
    assert_eq!(back.id, img.id);
}

#[test]
fn repo_digest_of_a_multi_platform_image_is_the_index() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest = berth_testutil::write_image_layout(&layout, "latest", &["sh"]).unwrap();
    // Wrap the (linux/amd64) manifest entry in a nested index.
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": top["manifests"],
    }))
    .unwrap();
    let nd = Digest::of(&nested);
    fs::write(layout.join("blobs/sha256").join(nd.hex()), &nested).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nd.to_string(), "size": nested.len()}]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let root = ImageRoot::open(t.path().join("root")).unwrap();
    let img = root.import_layout(&layout, None, "multi:1").unwrap();
    assert_eq!(img.manifest.to_string(), manifest);
    assert_eq!(img.repo_digests, [format!("multi@{nd}")]);
    assert_eq!(root.images.get(&format!("multi@{nd}")).unwrap().id, img.id);
}
