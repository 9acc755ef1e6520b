//! User namespaces beyond the basics in spec_linux.rs: idmapped bind mounts
//! (`mounts[].uidMappings`/`gidMappings`, `idmap`/`ridmap`) and rootless
//! operation (berth run by an unprivileged user).

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// The container's root is host uid/gid 100000 (65536 ids).
fn userns(c: &mut Value) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["linux"]["uidMappings"] = map.clone();
    c["linux"]["gidMappings"] = map;
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn idmapped_bind_shows_host_ids_as_container_ids() {
    // A host directory with files of host uid 0 and 1000.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.path().join("root_file"), "r").unwrap();
    std::fs::write(data.path().join("user_file"), "u").unwrap();
    std::os::unix::fs::chown(data.path().join("user_file"), Some(1000), Some(1000)).unwrap();
    let script = "stat -c '%n %u:%g' /root/root_file /root/user_file /home/user/root_file; \
                  echo x > /root/made_by_root; \
                  stat -c '%n %u:%g' /root/made_by_root";
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let mut c = b.config.clone();
    userns(&mut c);
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/root", "type": "bind", "source": data.path(),
               "options": ["rbind", "rw", "idmap"],
               "uidMappings": map, "gidMappings": map}),
        // The same directory without idmapping: host ids unmapped in the
        // container's user namespace show as the overflow id.
        json!({"destination": "/home/user", "type": "bind", "source": data.path(),
               "options": ["rbind", "ro"]}),
    ]);
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "/root/root_file 0:0",
            "/root/user_file 1000:1000",
            "/home/user/root_file 65534:65534",
            "/root/made_by_root 0:0",
        ],
        "{out}"
    );
    // Written through the idmapped mount by the container's root (host
    // 100000): owned by host root on disk.
    assert_eq!(owner(&data.path().join("made_by_root")), (0, 0));
    assert_eq!(owner(&data.path().join("user_file")), (1000, 1000));
}

#[test]
fn idmapped_rootfs_content_owned_by_container_root_without_chown() {
    // The bundle's rootfs belongs to host root. Bound over itself with
    // `ridmap` and no mappings of its own, /bin takes the container's
    // mappings (runtime-spec 1.2) and shows root-owned files as 0:0, while
    // the rest of the rootfs shows them as the overflow id.
    let script = "stat -c '%u:%g' /bin/busybox /etc/passwd; touch /bin/new; stat -c '%u' /bin/new";
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let rootfs = b.rootfs();
    assert_eq!(owner(&rootfs.join("bin/busybox")), (0, 0));
    let mut c = b.config.clone();
    userns(&mut c);
    c["root"]["readonly"] = json!(false);
    c["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/bin", "type": "bind", "source": rootfs.join("bin"),
        "options": ["rbind", "ridmap"]
    }));
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-root-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0:0", "65534:65534", "0"],
        "{out}"
    );
    assert_eq!(owner(&rootfs.join("bin/new")), (0, 0));
}

#[test]
fn idmap_without_any_mappings_names_the_field_and_leaves_nothing() {
    let mut b = Bundle::new(&["true"]).unwrap();
    let mut c = b.config.clone();
    c["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/mnt", "type": "bind", "source": "/tmp", "options": ["rbind", "idmap"]
    }));
    let n = c["mounts"].as_array().unwrap().len() - 1;
    b.config = c;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("idmap-bad-{}", random_suffix());
    let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("mounts[{n}].uidMappings")), "{err}");
    assert_eq!(std::fs::read_dir(berth.root.path()).unwrap().count(), 0);
    assert!(b.cgroup_dirs().is_empty(), "{:?}", b.cgroup_dirs());
}
