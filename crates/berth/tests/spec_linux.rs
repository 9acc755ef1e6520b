//! Runtime spec 1.2 (Linux): namespaces, checked from inside real busybox
//! containers and from the host. Mounts, process settings and hooks live in
//! spec_mounts.rs, spec_process.rs and spec_hooks.rs.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// Runs `sh -c script` in the foreground in a fresh bundle whose config
/// `edit` adjusted; panics unless the container exits 0; returns its stdout.
fn sh(script: &str, edit: impl FnOnce(&mut Value, &Bundle)) -> String {
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    let mut cfg = b.config.clone();
    edit(&mut cfg, &b);
    b.config = cfg;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("spec-{}", random_suffix());
    berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id])
}

/// `berth exec` output; exec'd processes exit, so pipes are fine here.
fn exec(berth: &Berth, id: &str, args: &[&str]) -> String {
    let mut v = vec!["exec", id];
    v.extend_from_slice(args);
    berth.ok(&v)
}

fn ns_link(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn add_ns(cfg: &mut Value, ns: Value) {
    cfg["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
}

#[test]
fn each_namespace_is_new() {
    let out = sh(
        "for n in pid net ipc uts mnt cgroup; do echo $n $(readlink /proc/self/ns/$n); done",
        |_, _| {},
    );
    let mut seen = 0;
    for line in out.lines() {
        let (ns, link) = line.split_once(' ').unwrap();
        assert_ne!(link, ns_link("self", ns), "{ns} namespace is the host's");
        seen += 1;
    }
    assert_eq!(seen, 6, "{out}");
}

#[test]
fn pid_namespace_makes_the_program_pid_1() {
    // echo and the glob run in the shell itself: it is the only process.
    let out = sh("echo $$ /proc/[0-9]*", |_, _| {});
    assert_eq!(out.trim(), "1 /proc/1");
}

#[test]
fn network_namespace_has_only_loopback() {
    let out = sh(
        "awk 'NR > 2 { print $1 }' /proc/net/dev; ls /sys/class/net",
        |_, _| {},
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["lo:", "lo"], "{out}");
}

#[test]
fn ipc_namespace_hides_host_message_queues() {
    // A System V queue made on the host is not visible inside.
    let key = 0x6274_0000 + (std::process::id() & 0xffff) as i32;
    // SAFETY: plain syscalls; the queue is removed below.
    let qid = unsafe { libc::msgget(key, libc::IPC_CREAT | 0o600) };
    assert!(qid >= 0, "msgget: {}", std::io::Error::last_os_error());
    let out = sh("cat /proc/sysvipc/msg | wc -l", |_, _| {});
    // SAFETY: removing the queue made above.
    unsafe { libc::msgctl(qid, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_eq!(out.trim(), "1", "only the header line: {out}");
}

#[test]
fn uts_namespace_sets_hostname_and_domainname() {
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = sh("hostname; cat /proc/sys/kernel/domainname", |c, _| {
        c["hostname"] = json!("spec-host");
        c["domainname"] = json!("spec.example");
    });
    assert_eq!(out, "spec-host\nspec.example\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "the host's hostname changed"
    );
}

#[test]
fn mount_namespace_keeps_container_mounts_private() {
    let b = Bundle::new(&["sleep", "1000"]).unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("mntns-{}", random_suffix());
    let pid = berth.run_detached(&b, &id);
    let inside = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(inside.contains(" /dev/mqueue "), "{inside}");
    // The host never sees the container's root or its mounts.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundle = b.path().to_str().unwrap();
    assert!(!host.contains(bundle), "{host}");
    berth.ok(&["delete", "--force", &id]);
}

#[test]
fn cgroup_namespace_is_rooted_at_the_container_cgroup() {
    let out = sh("cat /proc/self/cgroup", |_, _| {});
    assert!(!out.is_empty());
    for line in out.lines() {
        assert!(line.ends_with(":/"), "not at the namespace root: {line}");
    }
}

/// A user namespace mapping container root to host uid/gid 100000.
fn user_ns(cfg: &mut Value, b: &Bundle) {
    add_ns(cfg, json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["uidMappings"] = map.clone();
    cfg["linux"]["gidMappings"] = map;
    // Mapped root is an unprivileged user on the host: it must own the
    // rootfs and be able to reach it.
    let st = Command::new("chown")
        .args(["-R", "-h", "100000:100000"])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
}

#[test]
fn user_namespace_maps_root_to_the_host_id() {
    let mut b = Bundle::new(&["sleep", "1000"]).unwrap();
    let mut cfg = b.config.clone();
    user_ns(&mut cfg, &b);
    b.config = cfg;
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("userns-{}", random_suffix());
    let pid = berth.run_detached(&b, &id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), "100000", "{status}");
    assert_eq!(field("Gid:"), "100000", "{status}");
    assert_ne!(ns_link(&pid.to_string(), "user"), ns_link("self", "user"));
    let inside = exec(
        &berth,
        &id,
        &["sh", "-c", "id -u; id -g; cat /proc/self/uid_map"],
    );
    let words: Vec<&str> = inside.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "0", "100000", "65536"], "{inside}");
    berth.ok(&["delete", "--force", &id]);
}

#[test]
fn time_namespace_applies_offsets() {
    const OFF: f64 = 10.0 * 86400.0;
    let uptime = || -> f64 {
        let s = std::fs::read_to_string("/proc/uptime").unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    };
    let before = uptime();
    let out = sh("cat /proc/uptime; cat /proc/self/timens_offsets", |c, _| {
        add_ns(c, json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({
            "monotonic": {"secs": 86400, "nanosecs": 0},
            "boottime": {"secs": 864000, "nanosecs": 0}
        });
    });
    let after = uptime();
    let mut lines = out.lines();
    let inside: f64 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // /proc/uptime follows CLOCK_BOOTTIME; 0.01s rounding on both sides.
    assert!(
        inside >= before + OFF - 0.02 && inside <= after + OFF + 0.02,
        "uptime {inside} not within [{before}, {after}] + {OFF}"
    );
    // CLOCK_MONOTONIC has no reader in busybox: check the kernel's record.
    let offsets: Vec<String> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        offsets.contains(&"monotonic 86400 0".to_string()),
        "{offsets:?}"
    );
    assert!(
        offsets.contains(&"boottime 864000 0".to_string()),
        "{offsets:?}"
    );
}

#[test]
fn joining_namespaces_by_path() {
    let mut a = Bundle::new(&["sleep", "1000"]).unwrap();
    a.config["hostname"] = json!("ctr-a");
    a.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let ida = format!("join-a-{}", random_suffix());
    let pid = berth.run_detached(&a, &ida);

    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; for n in net ipc uts pid; do readlink /proc/self/ns/$n; done",
    ])
    .unwrap();
    // B must not set a hostname: it would rename A's uts namespace.
    b.config.as_object_mut().unwrap().remove("hostname");
    b.config["linux"]["namespaces"] = json!([
        {"type": "mount"},
        {"type": "cgroup"},
        {"type": "network", "path": format!("/proc/{pid}/ns/net")},
        {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
        {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
    ]);
    b.write().unwrap();
    let idb = format!("join-b-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &idb]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ctr-a", "{out}");
    assert_eq!(
        lines[1].trim(),
        "sleep 1000",
        "B sees A's init as pid 1: {out}"
    );
    let p = pid.to_string();
    assert_eq!(
        &lines[2..],
        [
            ns_link(&p, "net"),
            ns_link(&p, "ipc"),
            ns_link(&p, "uts"),
            ns_link(&p, "pid")
        ],
        "{out}"
    );
    berth.ok(&["delete", "--force", &ida]);
}

#[test]
fn namespace_paths_must_exist() {
    // A path that is not a namespace fails create and leaves nothing.
    let mut b = Bundle::new(&["true"]).unwrap();
    b.config["linux"]["namespaces"][1] = json!({"type": "network", "path": "/nonexistent/ns/net"});
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), "badns"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/ns/net"), "{err}");
    assert!(!Path::new(&berth.root.path().join("badns")).exists());
    assert!(
        b.cgroup_dirs().is_empty(),
        "cgroup left: {:?}",
        b.cgroup_dirs()
    );
}

/// user, cgroup and time namespaces joined by path: B enters A's user
/// namespace first (so it may join the namespaces A's user namespace owns),
/// becomes its root, and sees A's id maps, cgroup root and clock offsets.
#[test]
fn joining_user_cgroup_and_time_namespaces_by_path() {
    let mut a = Bundle::new(&["sleep", "1000"]).unwrap();
    let mut cfg = a.config.clone();
    user_ns(&mut cfg, &a);
    add_ns(&mut cfg, json!({"type": "time"}));
    cfg["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 7777, "nanosecs": 0}});
    a.config = cfg;
    a.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let ida = format!("join-ua-{}", random_suffix());
    let pid = berth.run_detached(&a, &ida).to_string();

    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "for n in user cgroup time mnt; do readlink /proc/self/ns/$n; done; \
         id -u; cat /proc/self/uid_map; grep monotonic /proc/self/timens_offsets",
    ])
    .unwrap();
    let mut cfg = b.config.clone();
    // A's root (host 100000) must own B's rootfs; no mappings of its own.
    user_ns(&mut cfg, &b);
    for k in ["uidMappings", "gidMappings"] {
        cfg["linux"].as_object_mut().unwrap().remove(k);
    }
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "user", "path": format!("/proc/{pid}/ns/user")},
        {"type": "cgroup", "path": format!("/proc/{pid}/ns/cgroup")},
        {"type": "time", "path": format!("/proc/{pid}/ns/time")},
    ]);
    b.config = cfg;
    b.write().unwrap();
    let idb = format!("join-ub-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &idb]);
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines[..3],
        [
            ns_link(&pid, "user"),
            ns_link(&pid, "cgroup"),
            ns_link(&pid, "time")
        ],
        "{out}"
    );
    // A mount namespace of its own (made inside A's user namespace).
    assert_ne!(lines[3], ns_link(&pid, "mnt"), "{out}");
    assert_ne!(lines[3], ns_link("self", "mnt"), "{out}");
    assert_eq!(
        lines[4..],
        ["0", "0 100000 65536", "monotonic 7777 0"],
        "{out}"
    );
    berth.ok(&["delete", "--force", &ida]);
}

/// A mount namespace joined by path (one the test holds with a sleeping
/// process, as a pod would): the container's mounts are made in it, and
/// never in the host's.
#[test]
fn joining_a_mount_namespace_by_path() {
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "1000"])
            .spawn()
            .expect("unshare (util-linux)"),
    );
    let hpid = holder.0.id().to_string();
    // Wait until the holder sits in its own namespace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{hpid}/exe"))
        .map(|e| !e.ends_with("sleep"))
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_ne!(ns_link(&hpid, "mnt"), ns_link("self", "mnt"));
    let marker = format!("berth-joined-{}", random_suffix());
    let mut b = Bundle::new(&["readlink", "/proc/self/ns/mnt"]).unwrap();
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "mount" {
            *ns = json!({"type": "mount", "path": format!("/proc/{hpid}/ns/mnt")});
        }
    }
    add_ns_mount(&mut b.config, &marker);
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("join-mnt-{}", random_suffix());
    let out = berth.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.trim(), ns_link(&hpid, "mnt"), "{out}");
    // Checked while the bundle exists: removing its rootfs detaches the
    // mounts on it in every namespace.
    let held = std::fs::read_to_string(format!("/proc/{hpid}/mountinfo")).unwrap();
    assert!(
        held.contains(&marker),
        "not in the joined namespace:\n{held}"
    );
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&marker), "on the host:\n{host}");
    drop(holder);
}

fn add_ns_mount(cfg: &mut Value, name: &str) {
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": format!("/{name}"), "type": "tmpfs", "source": "tmpfs"}));
}

/// Runtime spec 1.3 `linux.memoryPolicy`: the program starts under it. On
/// a one-node VM the policy itself is visible: /proc/self/numa_maps shows
/// each mapping's policy ("interleave=static:0", "bind:0", "default").
#[test]
fn memory_policy_is_applied_before_exec() {
    if !Path::new("/proc/self/numa_maps").exists() {
        eprintln!("SKIP: no /proc/self/numa_maps (kernel without CONFIG_NUMA)");
        return;
    }
    for (policy, want) in [
        (
            json!({"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}),
            " interleave=static:0 ",
        ),
        (json!({"mode": "MPOL_BIND", "nodes": "0"}), " bind:0 "),
        (
            json!({"mode": "MPOL_PREFERRED", "nodes": "0"}),
            " prefer:0 ",
        ),
        (json!({"mode": "MPOL_LOCAL"}), " local "),
        (json!({"mode": "MPOL_DEFAULT"}), " default "),
    ] {
        let out = sh("grep -m1 . /proc/self/numa_maps", |c, _| {
            c["linux"]["memoryPolicy"] = policy.clone();
        });
        assert!(out.contains(want), "{policy}: {out}");
    }
    // exec'd processes get it too.
    let mut b = Bundle::new(&["sleep", "1011"]).unwrap();
    b.config["linux"]["memoryPolicy"] = json!({"mode": "MPOL_INTERLEAVE", "nodes": "0"});
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("mpol-{}", random_suffix());
    berth.run_detached(&b, &id);
    let out = exec(&berth, &id, &["grep", "-m1", ".", "/proc/self/numa_maps"]);
    assert!(out.contains(" interleave:0 "), "{out}");
    berth.ok(&["delete", "--force", &id]);
}

#[test]
fn bad_memory_policy_fails_create_naming_the_field() {
    for (policy, field) in [
        (json!({"mode": "MPOL_NOPE"}), "linux.memoryPolicy.mode"),
        (json!({"mode": "MPOL_BIND"}), "linux.memoryPolicy.nodes"),
        (
            json!({"mode": "MPOL_BIND", "nodes": "1-0"}),
            "linux.memoryPolicy.nodes",
        ),
        (
            json!({"mode": "MPOL_BIND", "nodes": "zero"}),
            "linux.memoryPolicy.nodes",
        ),
        (
            json!({"mode": "MPOL_DEFAULT", "nodes": "0"}),
            "linux.memoryPolicy.nodes",
        ),
        (
            json!({"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_NOPE"]}),
            "linux.memoryPolicy.flags",
        ),
        (
            json!({"mode": "MPOL_BIND", "nodes": "0",
                   "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"]}),
            "linux.memoryPolicy.flags",
        ),
    ] {
        let mut b = Bundle::new(&["true"]).unwrap();
        b.config["linux"]["memoryPolicy"] = policy.clone();
        b.write().unwrap();
        let berth = Berth::new(BIN).unwrap();
        let id = format!("mpol-bad-{}", random_suffix());
        let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{policy}");
        assert!(err.contains(field), "{policy}: {err}");
        assert!(
            !berth.root.path().join(&id).exists(),
            "{policy}: state left"
        );
        assert!(b.cgroup_dirs().is_empty(), "{policy}: cgroup left");
    }
}

/// A veth pair this test made (`btv<random>` / `btp<random>`), deleted on
/// drop if it is still there (deleting one end removes both).
struct Veth {
    host: String,
    peer: String,
}

impl Veth {
    fn new() -> Option<Veth> {
        let r = &random_suffix()[..8];
        let v = Veth {
            host: format!("btv{r}"),
            peer: format!("btp{r}"),
        };
        let st = Command::new("ip")
            .args([
                "link", "add", &v.host, "type", "veth", "peer", "name", &v.peer,
            ])
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("SKIP: cannot create a veth pair with ip(8): {st:?}");
            return None;
        }
        Some(v)
    }

    fn on_host(name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for n in [&self.host, &self.peer] {
            if Veth::on_host(n) {
                let _ = Command::new("ip").args(["link", "del", n]).status();
            }
        }
    }
}

/// Runtime spec 1.3 `linux.netDevices`: the host interface moves into the
/// container's new network namespace, renamed, up, with its permanent
/// address; it is gone from the host meanwhile. Nothing moves it back on
/// delete (the spec forbids it): the namespace dies and the kernel
/// destroys the veth, so its host peer goes too.
#[test]
fn net_devices_move_rename_and_keep_addresses() {
    let Some(v) = Veth::new() else { return };
    let st = Command::new("ip")
        .args(["addr", "add", "10.251.77.1/24", "dev", &v.host])
        .status()
        .unwrap();
    assert!(st.success());
    let mut b = Bundle::new(&["sleep", "1012"]).unwrap();
    b.config["linux"]["netDevices"] = json!({ &v.host: {"name": "ctr0"} });
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("netdev-{}", random_suffix());
    berth.run_detached(&b, &id);
    assert!(!Veth::on_host(&v.host), "{} still on the host", v.host);
    let out = exec(&berth, &id, &["ip", "addr", "show", "ctr0"]);
    assert!(out.contains(",UP"), "not up: {out}");
    assert!(out.contains("inet 10.251.77.1/24"), "address lost: {out}");
    let all = exec(&berth, &id, &["ip", "link"]);
    assert!(!all.contains(&v.host), "old name inside: {all}");
    berth.ok(&["delete", "--force", &id]);
    // Namespace teardown is asynchronous in the kernel.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Veth::on_host(&v.peer) {
        assert!(
            std::time::Instant::now() < deadline,
            "veth peer left behind"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!Veth::on_host(&v.host), "moved back to the host");

    // Without a name the device keeps the host's.
    let Some(v) = Veth::new() else { return };
    let out = sh(&format!("ip link show {}", v.host), |c, _| {
        c["linux"]["netDevices"] = json!({ &v.host: {} });
    });
    assert!(out.contains(&v.host), "{out}");
}

#[test]
fn bad_net_devices_fail_create_naming_the_field() {
    let long = "x".repeat(16);
    let cases = [
        (json!({"": {}}), "linux.netDevices."),
        (json!({"eth/0": {}}), "linux.netDevices.eth/0"),
        (json!({"eth0": {"name": ""}}), "linux.netDevices.eth0.name"),
        (
            json!({"eth0": {"name": long}}),
            "linux.netDevices.eth0.name",
        ),
        (
            json!({"eth0": {"name": "a:b"}}),
            "linux.netDevices.eth0.name",
        ),
        (
            json!({"eth0": {"name": "a b"}}),
            "linux.netDevices.eth0.name",
        ),
        (json!({"eth0": {"name": "."}}), "linux.netDevices.eth0.name"),
        (
            json!({"eth0": {"name": ".."}}),
            "linux.netDevices.eth0.name",
        ),
        (
            json!({"eth0": {"name": "a/b"}}),
            "linux.netDevices.eth0.name",
        ),
        // A device that does not exist fails the create too.
        (
            json!({"btvnosuchdev0": {}}),
            "linux.netDevices.btvnosuchdev0",
        ),
    ];
    for (devs, field) in cases {
        let mut b = Bundle::new(&["true"]).unwrap();
        b.config["linux"]["netDevices"] = devs.clone();
        b.write().unwrap();
        let berth = Berth::new(BIN).unwrap();
        let id = format!("netdev-bad-{}", random_suffix());
        let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{devs}");
        assert!(err.contains(field), "{devs}: {err}");
        assert!(!berth.root.path().join(&id).exists(), "{devs}: state left");
        assert!(b.cgroup_dirs().is_empty(), "{devs}: cgroup left");
    }
    // Without a new network namespace there is nowhere to move them.
    let mut b = Bundle::new(&["true"]).unwrap();
    b.config["linux"]["netDevices"] = json!({"eth0": {}});
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let o = berth.run(&["run", "--bundle", b.path().to_str().unwrap(), "netdev-nons"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("linux.netDevices"),
        "{err}"
    );
}
