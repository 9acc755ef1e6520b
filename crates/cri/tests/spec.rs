//! CRI CreateContainer config -> OCI spec: field by field over many configs,
//! every refusal naming its CRI field, and real containers run by the
//! `berth` binary from generated specs.
//!
//! The real-container tests need root and the `berth` binary: `$BERTH_BIN`,
//! else `<target>/debug/berth` next to this test executable
//! (`<target>/debug/deps/spec-*`), which is built with
//! `cargo build -p berth --target-dir <target>` when missing.

use berth_cri::spec::{
    container_spec, stop_signal, ContainerInput, SandboxInfo, SpecError, UserNs,
};
use berth_cri_api::v1::*;
use berth_image::ImageConfig;
use berth_testutil::{output_text, unique_id, Berth, Bundle};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const SC: &str = "config.linux.security_context";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
other:x:1001:1001::/home/other:/bin/sh\n";
const GROUP: &str =
    "root:x:0:\napp:x:1000:\naudio:x:29:app,other\nvideo:x:44:other,app\nwheel:x:10:other\n";

/// A temp dir with a rootfs (just /etc/passwd and /etc/group) and a
/// seccomp profile directory.
struct Fx {
    tmp: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("rootfs/etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("passwd"), PASSWD).unwrap();
        fs::write(etc.join("group"), GROUP).unwrap();
        fs::create_dir_all(tmp.path().join("seccomp")).unwrap();
        Fx { tmp }
    }
    fn rootfs(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }
    fn seccomp(&self) -> PathBuf {
        self.tmp.path().join("seccomp")
    }
}

fn pod() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "pod-host".into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod with its own network, IPC and UTS namespaces, a new pid
/// namespace per container.
fn sandbox(pod: &PodSandboxConfig) -> SandboxInfo<'_> {
    SandboxInfo {
        id: "sb1",
        config: pod,
        netns: Some("/run/netns/cni-1".into()),
        ipcns: Some("/proc/100/ns/ipc".into()),
        utsns: Some("/proc/100/ns/uts".into()),
        pidns: None,
        userns: None,
        etc_files: vec![],
        shm: None,
        cgroup_parent: "/kubepods/burstable/pod123".into(),
    }
}

fn ctr() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        }),
        command: vec!["sh".into()],
        ..Default::default()
    }
}

fn sc(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn res(c: &mut ContainerConfig) -> &mut LinuxContainerResources {
    c.linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

fn gen_with(
    fx: &Fx,
    sb: &SandboxInfo,
    c: &ContainerConfig,
    image: &ImageConfig,
) -> Result<Value, SpecError> {
    let rootfs = fx.rootfs();
    let seccomp = fx.seccomp();
    let input = ContainerInput {
        id: "c1",
        config: c,
        image,
        rootfs: &rootfs,
        seccomp_localhost_root: &seccomp,
        target_pidns: None,
        image_volumes: vec![],
        cdi_spec_dirs: &[],
    };
    container_spec(sb, &input).map(|s| serde_json::to_value(s).unwrap())
}

/// The spec as JSON for container config `c` in the default pod.
fn gen(c: &ContainerConfig) -> Result<Value, SpecError> {
    let fx = Fx::new();
    let p = pod();
    gen_with(&fx, &sandbox(&p), c, &ImageConfig::default())
}

fn ok(c: &ContainerConfig) -> Value {
    gen(c).unwrap_or_else(|e| panic!("spec failed: {e}"))
}

/// Asserts the generation fails naming `field`.
fn fails<T>(r: Result<T, SpecError>, field: &str) -> String {
    match r {
        Ok(_) => panic!("expected an error naming {field}"),
        Err(e) => {
            assert_eq!(e.field, field, "wrong field in: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
            e.msg
        }
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn mount<'a>(spec: &'a Value, dest: &str) -> Option<&'a Value> {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dest)
}

fn ns_types(spec: &Value) -> Vec<(String, Option<String>)> {
    spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_string(),
                n["path"].as_str().map(String::from),
            )
        })
        .collect()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

fn image(user: Option<&str>) -> ImageConfig {
    ImageConfig {
        user: user.map(String::from),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- process

#[test]
fn args_follow_kubelet_semantics() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let img = ImageConfig {
        entrypoint: Some(vec!["/ep".into(), "-x".into()]),
        cmd: Some(vec!["default-arg".into()]),
        ..Default::default()
    };
    let args = |command: &[&str], a: &[&str]| {
        let mut c = ctr();
        c.command = command.iter().map(|s| s.to_string()).collect();
        c.args = a.iter().map(|s| s.to_string()).collect();
        strs(&gen_with(&fx, &sb, &c, &img).unwrap()["process"]["args"])
    };
    // command replaces ENTRYPOINT, and CMD is dropped with it.
    assert_eq!(args(&["/bin/cmd"], &[]), ["/bin/cmd"]);
    assert_eq!(args(&["/bin/cmd"], &["a"]), ["/bin/cmd", "a"]);
    // no command: ENTRYPOINT + args, else ENTRYPOINT + CMD.
    assert_eq!(args(&[], &["a", "b"]), ["/ep", "-x", "a", "b"]);
    assert_eq!(args(&[], &[]), ["/ep", "-x", "default-arg"]);

    let mut c = ctr();
    c.command.clear();
    fails(
        gen_with(&fx, &sb, &c, &ImageConfig::default()),
        "config.command",
    );
    let mut c = ctr();
    c.args = vec!["ok".into(), "nul\0".into()];
    fails(gen(&c), "config.args[1]");
}

#[test]
fn env_merges_image_and_cri_with_path_and_hostname() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let img = ImageConfig {
        env: Some(vec![
            "PATH=/img/bin".into(),
            "FOO=image".into(),
            "BROKEN".into(),
            "=nokey".into(),
            "KEEP=1".into(),
        ]),
        ..Default::default()
    };
    let mut c = ctr();
    c.envs = vec![kv("FOO", "cri"), kv("BAR", "a=b")];
    let s = gen_with(&fx, &sb, &c, &img).unwrap();
    assert_eq!(
        strs(&s["process"]["env"]),
        [
            "PATH=/img/bin",
            "HOSTNAME=pod-host",
            "FOO=cri",
            "KEEP=1",
            "BAR=a=b"
        ]
    );
    // Without PATH anywhere, the default one.
    let s = ok(&ctr());
    assert_eq!(
        strs(&s["process"]["env"]),
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=pod-host"
        ]
    );
    // The CRI may override HOSTNAME.
    let mut c = ctr();
    c.envs = vec![kv("HOSTNAME", "mine")];
    assert!(strs(&ok(&c)["process"]["env"]).contains(&"HOSTNAME=mine".to_string()));

    for (bad, field) in [("", "config.envs[1].key"), ("A=B", "config.envs[1].key")] {
        let mut c = ctr();
        c.envs = vec![kv("X", "1"), kv(bad, "v")];
        fails(gen(&c), field);
    }
    let mut c = ctr();
    c.envs = vec![kv("X", "a\0b")];
    fails(gen(&c), "config.envs[0].value");
}

#[test]
fn cwd_terminal_rootfs_cgroups_and_oom() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let img = ImageConfig {
        working_dir: Some("/srv".into()),
        ..Default::default()
    };
    let mut c = ctr();
    assert_eq!(
        gen_with(&fx, &sb, &c, &img).unwrap()["process"]["cwd"],
        "/srv"
    );
    assert_eq!(ok(&c)["process"]["cwd"], "/");
    c.working_dir = "/work".into();
    assert_eq!(
        gen_with(&fx, &sb, &c, &img).unwrap()["process"]["cwd"],
        "/work"
    );
    c.working_dir = "rel".into();
    fails(gen(&c), "config.working_dir");

    let mut c = ctr();
    c.tty = true;
    sc(&mut c).readonly_rootfs = true;
    sc(&mut c).no_new_privs = true;
    res(&mut c).oom_score_adj = 999;
    let s = gen_with(&fx, &sb, &c, &img).unwrap();
    assert_eq!(s["process"]["terminal"], true);
    assert_eq!(s["process"]["noNewPrivileges"], true);
    assert_eq!(s["process"]["oomScoreAdj"], 999);
    assert_eq!(s["root"]["readonly"], true);
    assert_eq!(s["root"]["path"], fx.rootfs().to_str().unwrap());
    assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/burstable/pod123/c1");
    // runc's spec default for open files stays.
    assert_eq!(s["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(s["process"]["rlimits"][0]["hard"], 1024);
    let s = ok(&ctr());
    assert_eq!(s["process"]["terminal"], false);
    assert_eq!(s["process"]["noNewPrivileges"], false);
    assert_eq!(s["root"]["readonly"], false);

    let mut c = ctr();
    res(&mut c).oom_score_adj = 1001;
    fails(gen(&c), "config.linux.resources.oom_score_adj");
    let mut c = ctr();
    c.metadata = None;
    fails(gen(&c), "config.metadata.name");
}

#[test]
fn stop_signal_from_the_image() {
    let sig = |s: Option<&str>| {
        stop_signal(&ImageConfig {
            stop_signal: s.map(String::from),
            ..Default::default()
        })
    };
    assert_eq!(sig(None).unwrap(), libc::SIGTERM);
    assert_eq!(sig(Some("")).unwrap(), libc::SIGTERM);
    assert_eq!(sig(Some("SIGQUIT")).unwrap(), libc::SIGQUIT);
    assert_eq!(sig(Some("INT")).unwrap(), libc::SIGINT);
    assert_eq!(sig(Some("9")).unwrap(), 9);
    assert_eq!(sig(Some("SIGRTMIN+3")).unwrap(), libc::SIGRTMIN() + 3);
    for bad in ["SIGBOGUS", "0", "99"] {
        let e = sig(Some(bad)).unwrap_err();
        assert_eq!(e.field, "image.config.StopSignal", "{e}");
    }
}

// ---------------------------------------------------------------- users

/// (uid, gid, additionalGids) of the spec.
fn ids(s: &Value) -> (u64, u64, Vec<u64>) {
    let u = &s["process"]["user"];
    (
        u["uid"].as_u64().unwrap(),
        u["gid"].as_u64().unwrap(),
        u["additionalGids"]
            .as_array()
            .map(|a| a.iter().map(|g| g.as_u64().unwrap()).collect())
            .unwrap_or_default(),
    )
}

#[test]
fn user_from_the_security_context() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let img = image(Some("other")); // ignored when the CRI names a user
    let run = |f: &dyn Fn(&mut LinuxContainerSecurityContext)| {
        let mut c = ctr();
        f(sc(&mut c));
        gen_with(&fx, &sb, &c, &img)
    };
    // A name: uid and primary gid from passwd, groups listing it, then
    // supplemental_groups.
    let s = run(&|s| {
        s.run_as_username = "app".into();
        s.supplemental_groups = vec![5000, 29];
    })
    .unwrap();
    assert_eq!(ids(&s), (1000, 1000, vec![1000, 29, 44, 5000]));
    // Strict: only the primary group and supplemental_groups.
    let s = run(&|s| {
        s.run_as_username = "app".into();
        s.supplemental_groups = vec![5000];
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    })
    .unwrap();
    assert_eq!(ids(&s), (1000, 1000, vec![1000, 5000]));
    // A uid known to passwd: its gid and its name's groups.
    let s = run(&|s| s.run_as_user = Some(Int64Value { value: 1001 })).unwrap();
    assert_eq!(ids(&s), (1001, 1001, vec![1001, 29, 44, 10]));
    // run_as_group replaces the primary group.
    let s = run(&|s| {
        s.run_as_user = Some(Int64Value { value: 1000 });
        s.run_as_group = Some(Int64Value { value: 7 });
    })
    .unwrap();
    assert_eq!(ids(&s), (1000, 7, vec![7, 29, 44]));
    // An unknown uid: gid 0, no groups from the image.
    let s = run(&|s| s.run_as_user = Some(Int64Value { value: 4242 })).unwrap();
    assert_eq!(ids(&s), (4242, 0, vec![0]));

    let f = |n: &str| format!("{SC}.{n}");
    fails(
        run(&|s| s.run_as_username = "nobody-here".into()),
        &f("run_as_username"),
    );
    fails(
        run(&|s| s.run_as_group = Some(Int64Value { value: 1 })),
        &f("run_as_group"),
    );
    fails(
        run(&|s| s.run_as_user = Some(Int64Value { value: -1 })),
        &f("run_as_user"),
    );
    fails(
        run(&|s| {
            s.run_as_user = Some(Int64Value { value: 1 });
            s.run_as_username = "app".into();
        }),
        &f("run_as_username"),
    );
    fails(
        run(&|s| {
            s.run_as_user = Some(Int64Value { value: 1 });
            s.run_as_group = Some(Int64Value { value: 1 << 40 });
        }),
        &f("run_as_group"),
    );
    fails(
        run(&|s| {
            s.run_as_user = Some(Int64Value { value: 1 });
            s.supplemental_groups = vec![1, -5];
        }),
        &f("supplemental_groups[1]"),
    );
    fails(
        run(&|s| s.supplemental_groups_policy = 7),
        &f("supplemental_groups_policy"),
    );
}

#[test]
fn user_from_the_image() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let user = |u: Option<&str>| gen_with(&fx, &sb, &ctr(), &image(u)).map(|s| ids(&s));
    assert_eq!(user(None).unwrap(), (0, 0, vec![0]));
    assert_eq!(user(Some("")).unwrap(), (0, 0, vec![0]));
    assert_eq!(user(Some("app")).unwrap(), (1000, 1000, vec![1000, 29, 44]));
    assert_eq!(
        user(Some("1000")).unwrap(),
        (1000, 1000, vec![1000, 29, 44])
    );
    assert_eq!(user(Some("1000:44")).unwrap(), (1000, 44, vec![44, 29]));
    assert_eq!(
        user(Some("app:wheel")).unwrap(),
        (1000, 10, vec![10, 29, 44])
    );
    assert_eq!(
        user(Some("other:1234")).unwrap(),
        (1001, 1234, vec![1234, 29, 44, 10])
    );
    assert_eq!(user(Some("5555:6666")).unwrap(), (5555, 6666, vec![6666]));
    for bad in ["ghost", "app:ghosts", ":10", "app:"] {
        fails(user(Some(bad)), "image.config.User");
    }
}

#[test]
fn passwd_is_read_inside_the_rootfs_only() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    // A passwd outside the rootfs naming a user the rootfs does not have.
    let outside = fx.tmp.path().join("outside-passwd");
    fs::write(&outside, "escape:x:4242:4242::/:/bin/sh\n").unwrap();
    let etc = fx.rootfs().join("etc");
    let by_name = |name: &str| {
        let mut c = ctr();
        sc(&mut c).run_as_username = name.into();
        gen_with(&fx, &sb, &c, &ImageConfig::default())
    };

    // Absolute symlink to the outside file: resolved inside the rootfs,
    // where it does not exist.
    fs::remove_file(etc.join("passwd")).unwrap();
    symlink(&outside, etc.join("passwd")).unwrap();
    let msg = fails(by_name("escape"), &format!("{SC}.run_as_username"));
    assert!(msg.contains("/etc/passwd"), "{msg}");
    // A relative one climbing out with ..: clamped at the rootfs root.
    fs::remove_file(etc.join("passwd")).unwrap();
    let up = "../".repeat(fx.rootfs().components().count() + 2);
    symlink(
        format!("{up}{}", outside.to_str().unwrap().trim_start_matches('/')),
        etc.join("passwd"),
    )
    .unwrap();
    fails(by_name("escape"), &format!("{SC}.run_as_username"));
    // Pointing at the node's own /etc/passwd: never read, so root (which
    // the node has) is unknown too.
    fs::remove_file(etc.join("passwd")).unwrap();
    symlink("/etc/passwd", etc.join("passwd")).unwrap();
    fails(by_name("root"), &format!("{SC}.run_as_username"));
    // An absolute symlink that stays inside the rootfs is fine.
    fs::remove_file(etc.join("passwd")).unwrap();
    fs::create_dir_all(fx.rootfs().join("data")).unwrap();
    fs::write(
        fx.rootfs().join("data/passwd"),
        "inside:x:77:78::/:/bin/sh\n",
    )
    .unwrap();
    symlink("/data/passwd", etc.join("passwd")).unwrap();
    assert_eq!(ids(&by_name("inside").unwrap()), (77, 78, vec![78]));
    // Not a regular file (a FIFO would block a reader): refused.
    fs::remove_file(etc.join("passwd")).unwrap();
    nix::unistd::mkfifo(
        &etc.join("passwd"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let msg = fails(by_name("app"), &format!("{SC}.run_as_username"));
    assert!(msg.contains("regular file"), "{msg}");
    // Numeric ids do not need the file (but get no name, so no groups).
    let mut c = ctr();
    sc(&mut c).run_as_user = Some(Int64Value { value: 1000 });
    assert_eq!(
        ids(&gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap()),
        (1000, 0, vec![0])
    );
}

// ---------------------------------------------------------------- namespaces

#[test]
fn namespaces_follow_the_sandbox() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let s = gen_with(&fx, &sb, &ctr(), &ImageConfig::default()).unwrap();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        ns_types(&s),
        [
            ("network".into(), some("/run/netns/cni-1")),
            ("ipc".into(), some("/proc/100/ns/ipc")),
            ("uts".into(), some("/proc/100/ns/uts")),
            ("pid".into(), None),
            ("mount".into(), None),
            ("cgroup".into(), None),
        ]
    );
    assert_eq!(s["hostname"], "pod-host");

    // Host network, IPC and UTS: no such namespaces, no hostname; a shared
    // pod pid namespace is joined.
    let mut hp = pod();
    hp.hostname = String::new();
    let sb = SandboxInfo {
        netns: None,
        ipcns: None,
        utsns: None,
        pidns: Some("/proc/200/ns/pid".into()),
        ..sandbox(&hp)
    };
    let s = gen_with(&fx, &sb, &ctr(), &ImageConfig::default()).unwrap();
    assert_eq!(
        ns_types(&s),
        [
            ("pid".into(), some("/proc/200/ns/pid")),
            ("mount".into(), None),
            ("cgroup".into(), None),
        ]
    );
    assert!(s.get("hostname").is_none(), "{}", s["hostname"]);
    // On the host network HOSTNAME is the node's.
    let node = nix::unistd::gethostname().unwrap();
    assert!(strs(&s["process"]["env"]).contains(&format!("HOSTNAME={}", node.to_string_lossy())));

    // Host pid (NODE): no pid namespace.
    let mut np = pod();
    np.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let s = gen_with(&fx, &sandbox(&np), &ctr(), &ImageConfig::default()).unwrap();
    assert!(!ns_types(&s).iter().any(|(t, _)| t == "pid"));

    // TARGET joins the target's namespace (berthd resolves it from a running
    // container of the pod); without it, refused.
    let mut c = ctr();
    sc(&mut c).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: "other".into(),
        ..Default::default()
    });
    fails(gen(&c), &format!("{SC}.namespace_options.target_id"));
    let rootfs = fx.rootfs();
    let seccomp = fx.seccomp();
    let s = container_spec(
        &sandbox(&pod()),
        &ContainerInput {
            id: "c1",
            config: &c,
            image: &ImageConfig::default(),
            rootfs: &rootfs,
            seccomp_localhost_root: &seccomp,
            target_pidns: Some("/proc/4242/ns/pid".into()),
            image_volumes: vec![],
            cdi_spec_dirs: &[],
        },
    )
    .map(|s| serde_json::to_value(s).unwrap())
    .unwrap();
    assert!(
        ns_types(&s).contains(&("pid".to_string(), Some("/proc/4242/ns/pid".to_string()))),
        "{:?}",
        ns_types(&s)
    );

    // User namespaces: new with mappings, or joined.
    let p = pod();
    let sb = SandboxInfo {
        userns: Some(UserNs {
            path: None,
            uid_map: vec![(0, 100000, 65536)],
            gid_map: vec![(0, 200000, 65536)],
        }),
        ..sandbox(&p)
    };
    let s = gen_with(&fx, &sb, &ctr(), &ImageConfig::default()).unwrap();
    assert!(ns_types(&s).contains(&("user".into(), None)));
    assert_eq!(s["linux"]["uidMappings"][0]["hostID"], 100000);
    assert_eq!(s["linux"]["uidMappings"][0]["size"], 65536);
    assert_eq!(s["linux"]["gidMappings"][0]["hostID"], 200000);
    let sb = SandboxInfo {
        userns: Some(UserNs {
            path: Some("/proc/300/ns/user".into()),
            uid_map: vec![(0, 100000, 65536)],
            gid_map: vec![(0, 100000, 65536)],
        }),
        ..sandbox(&p)
    };
    let s = gen_with(&fx, &sb, &ctr(), &ImageConfig::default()).unwrap();
    assert!(ns_types(&s).contains(&("user".into(), some("/proc/300/ns/user"))));
    let sb = SandboxInfo {
        userns: Some(UserNs {
            path: None,
            uid_map: vec![],
            gid_map: vec![],
        }),
        ..sandbox(&p)
    };
    fails(
        gen_with(&fx, &sb, &ctr(), &ImageConfig::default()),
        "sandbox.userns.uid_map",
    );
}

#[test]
fn pod_sysctls_are_checked_and_copied() {
    let fx = Fx::new();
    let with = |kv: &[(&str, &str)], host_net: bool, host_ipc: bool| {
        let mut p = pod();
        p.linux.as_mut().unwrap().sysctls = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>();
        let mut sb = sandbox(&p);
        if host_net {
            sb.netns = None;
        }
        if host_ipc {
            sb.ipcns = None;
        }
        gen_with(&fx, &sb, &ctr(), &ImageConfig::default())
    };
    let s = with(
        &[
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.msgmax", "8192"),
            ("kernel.sem", "250 32000 100 128"),
            ("fs.mqueue.msg_max", "20"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
        ],
        false,
        false,
    )
    .unwrap();
    assert_eq!(
        s["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    assert_eq!(s["linux"]["sysctl"]["kernel.sem"], "250 32000 100 128");
    assert_eq!(s["linux"]["sysctl"].as_object().unwrap().len(), 6);
    // None at all: no sysctl object.
    assert!(with(&[], false, false).unwrap()["linux"]
        .get("sysctl")
        .is_none());

    let field = |k: &str| format!("config.linux.sysctls[{k}]");
    for (k, v) in [
        ("vm.swappiness", "10"),
        ("kernel.hostname", "x"),
        ("kernel.sysrq", "1"),
        ("net.ipv4/../../../vm/drop_caches", "3"),
        ("net..ipv4", "1"),
        ("/net/ipv4/ip_forward", "1"),
        ("net.ipv4.ip_forward ", "1"),
    ] {
        fails(with(&[(k, v)], false, false), &field(k));
    }
    fails(
        with(
            &[("net.ipv4.ip_forward", "1\nvm.drop_caches=3")],
            false,
            false,
        ),
        &field("net.ipv4.ip_forward"),
    );
    // Host network: no net.*; host IPC: no IPC keys.
    let m = fails(
        with(&[("net.ipv4.ip_forward", "1")], true, false),
        &field("net.ipv4.ip_forward"),
    );
    assert!(m.contains("own network namespace"), "{m}");
    fails(
        with(&[("kernel.shmmax", "1")], false, true),
        &field("kernel.shmmax"),
    );
    with(&[("kernel.shmmax", "1")], true, false).unwrap();
}

// ---------------------------------------------------------------- mounts

fn opts(m: &Value) -> Vec<String> {
    strs(&m["options"])
}

fn host_mount(host: &Path, ctr: &str) -> berth_cri_api::v1::Mount {
    berth_cri_api::v1::Mount {
        container_path: ctr.into(),
        host_path: host.to_str().unwrap().into(),
        ..Default::default()
    }
}

#[test]
fn default_mounts_shm_and_etc_files() {
    let fx = Fx::new();
    let s = ok(&ctr());
    for (d, t) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
        ("/sys/fs/cgroup", "cgroup"),
    ] {
        assert_eq!(mount(&s, d).unwrap_or_else(|| panic!("{d}"))["type"], t);
    }
    assert!(opts(mount(&s, "/sys").unwrap()).contains(&"ro".into()));
    assert!(opts(mount(&s, "/sys/fs/cgroup").unwrap()).contains(&"ro".into()));

    let p = pod();
    let hosts = fx.tmp.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let sb = SandboxInfo {
        shm: Some("/run/berth/sb1/shm".into()),
        etc_files: vec![
            ("/etc/hostname".into(), "/run/berth/sb1/hostname".into()),
            ("/etc/hosts".into(), hosts.clone()),
        ],
        ..sandbox(&p)
    };
    let s = gen_with(&fx, &sb, &ctr(), &ImageConfig::default()).unwrap();
    let shm = mount(&s, "/dev/shm").unwrap();
    assert_eq!(shm["type"], "bind");
    assert_eq!(shm["source"], "/run/berth/sb1/shm");
    let h = mount(&s, "/etc/hostname").unwrap();
    assert_eq!(h["source"], "/run/berth/sb1/hostname");
    assert!(opts(h).contains(&"rw".into()));
    // Read-only rootfs: the /etc files are read-only too.
    let mut c = ctr();
    sc(&mut c).readonly_rootfs = true;
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    assert!(opts(mount(&s, "/etc/hostname").unwrap()).contains(&"ro".into()));
    // A CRI mount on the same destination (kubelet's /etc/hosts) replaces
    // the sandbox's.
    let kubelet_hosts = fx.tmp.path().join("kubelet-hosts");
    fs::write(&kubelet_hosts, "").unwrap();
    let mut c = ctr();
    c.mounts = vec![host_mount(&kubelet_hosts, "/etc/hosts")];
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    let all: Vec<_> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["destination"] == "/etc/hosts")
        .collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["source"], kubelet_hosts.to_str().unwrap());
    // A volume on /etc goes before the pod's /etc files, which it would
    // hide otherwise.
    let mut c = ctr();
    c.mounts = vec![host_mount(fx.tmp.path(), "/etc")];
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    let dests: Vec<&str> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    let pos = |d: &str| dests.iter().position(|x| *x == d).unwrap();
    assert!(pos("/etc") < pos("/etc/hosts"), "{dests:?}");
    assert!(pos("/etc") < pos("/etc/hostname"), "{dests:?}");
    let bad = SandboxInfo {
        etc_files: vec![("etc/hosts".into(), hosts)],
        ..sandbox(&p)
    };
    fails(
        gen_with(&fx, &bad, &ctr(), &ImageConfig::default()),
        "sandbox.etc_files[0]",
    );
}

#[test]
fn cri_mounts() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let data = fx.tmp.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    let link = fx.tmp.path().join("link");
    symlink(&data, &link).unwrap();
    let mut c = ctr();
    let mut ro = host_mount(&data, "/data/");
    ro.readonly = true;
    let mut rro = host_mount(&data, "/rro");
    rro.readonly = true;
    rro.recursive_read_only = true;
    let mut idm = host_mount(&data, "/idmapped");
    idm.uid_mappings = vec![IdMapping {
        host_id: 100000,
        container_id: 0,
        length: 65536,
    }];
    idm.gid_mappings = idm.uid_mappings.clone();
    c.mounts = vec![
        // Deeper first in the request: sorted after its parent.
        host_mount(&data.join("sub"), "/data/sub"),
        ro,
        rro,
        host_mount(&link, "/via-link"),
        host_mount(&data, "/dev"),
        idm,
    ];
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    let dests: Vec<String> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect();
    let pos = |d: &str| dests.iter().position(|x| x == d).unwrap();
    assert!(pos("/data") < pos("/data/sub"), "{dests:?}");
    let m = mount(&s, "/data").unwrap();
    assert_eq!(m["type"], "bind");
    assert_eq!(m["source"], data.to_str().unwrap());
    assert_eq!(opts(m), ["rbind", "rprivate", "ro"]);
    assert_eq!(
        opts(mount(&s, "/data/sub").unwrap()),
        ["rbind", "rprivate", "rw"]
    );
    assert_eq!(
        opts(mount(&s, "/rro").unwrap()),
        ["rbind", "rprivate", "ro", "rro"]
    );
    // Symlinked host paths are followed.
    assert_eq!(
        mount(&s, "/via-link").unwrap()["source"],
        data.to_str().unwrap()
    );
    // A /dev volume replaces the defaults under /dev too.
    assert_eq!(mount(&s, "/dev").unwrap()["type"], "bind");
    assert!(mount(&s, "/dev/pts").is_none() && mount(&s, "/dev/shm").is_none());
    let m = mount(&s, "/idmapped").unwrap();
    assert_eq!(m["uidMappings"][0]["hostID"], 100000);
    assert_eq!(m["gidMappings"][0]["size"], 65536);
    assert!(s["linux"].get("rootfsPropagation").is_none());

    let one = |f: &dyn Fn(&mut berth_cri_api::v1::Mount)| {
        let mut m = host_mount(&data, "/x");
        f(&mut m);
        let mut c = ctr();
        c.mounts = vec![host_mount(&data, "/ok"), m];
        gen_with(&fx, &sb, &c, &ImageConfig::default())
    };
    let f = |n: &str| format!("config.mounts[1].{n}");
    fails(
        one(&|m| m.container_path = "x".into()),
        &f("container_path"),
    );
    fails(
        one(&|m| m.container_path = String::new()),
        &f("container_path"),
    );
    fails(one(&|m| m.host_path = "rel/path".into()), &f("host_path"));
    let msg = fails(
        one(&|m| m.host_path = "/does/not/exist".into()),
        &f("host_path"),
    );
    assert!(msg.contains("/does/not/exist"), "{msg}");
    fails(
        one(&|m| m.recursive_read_only = true),
        &f("recursive_read_only"),
    );
    fails(
        one(&|m| {
            m.readonly = true;
            m.recursive_read_only = true;
            m.propagation = MountPropagation::PropagationHostToContainer as i32;
        }),
        &f("recursive_read_only"),
    );
    fails(one(&|m| m.propagation = 9), &f("propagation"));
    fails(
        one(&|m| {
            m.host_path = String::new();
            m.image = Some(ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            });
        }),
        &f("image"),
    );
    fails(
        one(&|m| {
            m.uid_mappings = vec![IdMapping {
                host_id: 1,
                container_id: 0,
                length: 1,
            }]
        }),
        &f("uid_mappings"),
    );
}

/// A tmpfs the test mounts (and unmounts on drop) with a given propagation.
struct TestMount(PathBuf);

impl TestMount {
    fn new(dir: PathBuf, propagation: &str) -> TestMount {
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "berth-spec-test"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let m = TestMount(dir);
        let st = Command::new("mount")
            .arg(format!("--make-{propagation}"))
            .arg(&m.0)
            .status()
            .unwrap();
        assert!(st.success());
        m
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn mount_propagation_needs_matching_host_mounts() {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let shared = TestMount::new(fx.tmp.path().join("shared"), "shared");
    let private = TestMount::new(fx.tmp.path().join("private"), "private");
    let vol = |host: &Path, prop: MountPropagation| {
        let mut m = host_mount(host, "/v");
        m.propagation = prop as i32;
        let mut c = ctr();
        c.mounts = vec![m];
        gen_with(&fx, &sb, &c, &ImageConfig::default())
    };
    let s = vol(&shared.0, MountPropagation::PropagationHostToContainer).unwrap();
    assert_eq!(opts(mount(&s, "/v").unwrap()), ["rbind", "rslave", "rw"]);
    assert_eq!(s["linux"]["rootfsPropagation"], "rslave");
    let s = vol(&shared.0, MountPropagation::PropagationBidirectional).unwrap();
    assert_eq!(opts(mount(&s, "/v").unwrap()), ["rbind", "rshared", "rw"]);
    assert_eq!(s["linux"]["rootfsPropagation"], "rshared");
    let m = fails(
        vol(&private.0, MountPropagation::PropagationBidirectional),
        "config.mounts[0].propagation",
    );
    assert!(m.contains("not shared"), "{m}");
    fails(
        vol(&private.0, MountPropagation::PropagationHostToContainer),
        "config.mounts[0].propagation",
    );
    // rslave and rshared together: the rootfs must be rshared.
    let mut a = host_mount(&shared.0, "/a");
    a.propagation = MountPropagation::PropagationBidirectional as i32;
    let mut b = host_mount(&shared.0, "/b");
    b.propagation = MountPropagation::PropagationHostToContainer as i32;
    let mut c = ctr();
    c.mounts = vec![a, b];
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    assert_eq!(s["linux"]["rootfsPropagation"], "rshared");
}

// ---------------------------------------------------------------- devices

#[test]
fn devices_and_device_rules() {
    let fx = Fx::new();
    // A directory of device nodes the test makes (like /dev/dri).
    let dir = fx.tmp.path().join("devdir");
    fs::create_dir_all(dir.join("inner")).unwrap();
    let mk = |p: &Path, major: u64, minor: u64| {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap();
        // mknod's mode went through the umask.
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
    };
    mk(&dir.join("card0"), 226, 0);
    mk(&dir.join("inner/renderD128"), 226, 128);
    fs::write(dir.join("not-a-device"), "").unwrap();

    let mut c = ctr();
    c.devices = vec![
        Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        },
        Device {
            container_path: "/dev/dri".into(),
            host_path: dir.to_str().unwrap().into(),
            permissions: "mrw".into(),
        },
    ];
    let s = ok(&c);
    let devs = s["linux"]["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 3, "{devs:?}");
    assert_eq!(devs[0]["path"], "/dev/mynull");
    assert_eq!(devs[0]["type"], "c");
    assert_eq!(
        (devs[0]["major"].as_i64(), devs[0]["minor"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(devs[0]["fileMode"], 0o666);
    assert_eq!(devs[1]["path"], "/dev/dri/card0");
    assert_eq!(devs[1]["fileMode"], 0o660);
    assert_eq!(devs[2]["path"], "/dev/dri/inner/renderD128");
    assert_eq!(devs[2]["minor"], 128);

    let rules = s["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0]["allow"], false);
    assert_eq!(rules[0]["access"], "rwm");
    let allows = |maj: i64, min: i64| {
        rules
            .iter()
            .filter(|r| r["allow"] == true && r["major"] == maj && r["minor"] == min)
            .map(|r| r["access"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(allows(1, 3).contains(&"rw".to_string()), "{rules:?}");
    assert_eq!(allows(226, 128), ["mrw"]);
    // The standard nodes (zero, urandom, tty, ...).
    assert_eq!(allows(1, 5), ["rwm"]);
    assert_eq!(allows(1, 9), ["rwm"]);

    let one = |d: Device| {
        let mut c = ctr();
        c.devices = vec![d];
        gen(&c)
    };
    let dev = |host: &str, ctr: &str, perms: &str| Device {
        container_path: ctr.into(),
        host_path: host.into(),
        permissions: perms.into(),
    };
    let f = |n: &str| format!("config.devices[0].{n}");
    fails(one(dev("/dev/null", "/dev/x", "rwx")), &f("permissions"));
    fails(one(dev("/dev/null", "/dev/x", "rr")), &f("permissions"));
    fails(
        one(dev("/dev/nonexistent-dev", "/dev/x", "r")),
        &f("host_path"),
    );
    fails(one(dev("dev/null", "/dev/x", "r")), &f("host_path"));
    let file = dir.join("not-a-device");
    fails(
        one(dev(file.to_str().unwrap(), "/dev/x", "r")),
        &f("host_path"),
    );
    fails(
        one(dev("/dev/null", "/tmp/null", "r")),
        &f("container_path"),
    );
    fails(
        one(dev("/dev/null", "/dev/../etc/x", "r")),
        &f("container_path"),
    );
}

// ---------------------------------------------------------------- resources

/// The spec for `c` with CDI spec files in `dir`.
fn gen_cdi(c: &ContainerConfig, dir: &Path) -> Result<Value, SpecError> {
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let rootfs = fx.rootfs();
    let seccomp = fx.seccomp();
    let dirs = [dir.to_path_buf()];
    let image = ImageConfig::default();
    let input = ContainerInput {
        id: "c1",
        config: c,
        image: &image,
        rootfs: &rootfs,
        seccomp_localhost_root: &seccomp,
        target_pidns: None,
        image_volumes: vec![],
        cdi_spec_dirs: &dirs,
    };
    container_spec(&sb, &input).map(|s| serde_json::to_value(s).unwrap())
}

#[test]
fn cdi_devices_reach_the_oci_spec() {
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("v.yaml"),
        r#"cdiVersion: 1.1.0
kind: v.com/dev
containerEdits:
  hooks:
  - {hookName: createRuntime, path: /bin/true, args: [true, x], env: [A=1], timeout: 3}
devices:
- name: d0
  containerEdits:
    env: [DEV=d0]
    additionalGids: [44]
    deviceNodes:
    - {path: /dev/v0, hostPath: /dev/null}
    mounts:
    - {hostPath: /etc, containerPath: /v/etc, options: [ro, rbind]}
    netDevices:
    - {hostInterfaceName: vhost0, name: net1}
"#,
    )
    .unwrap();
    let mut c = ctr();
    c.cdi_devices = vec![CdiDevice {
        name: "v.com/dev=d0".into(),
    }];
    let s = gen_cdi(&c, t.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(strs(&s["process"]["env"]).contains(&"DEV=d0".to_string()));
    // The user's groups, then the device's.
    assert_eq!(
        s["process"]["user"]["additionalGids"],
        serde_json::json!([0, 44])
    );
    let dev = s["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/dev/v0")
        .unwrap();
    assert_eq!(
        (
            dev["type"].as_str(),
            dev["major"].as_i64(),
            dev["minor"].as_i64()
        ),
        (Some("c"), Some(1), Some(3))
    );
    let rules = s["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules.last().unwrap()["access"], "rwm");
    let m = mount(&s, "/v/etc").unwrap();
    assert_eq!(
        (m["source"].as_str(), m["type"].as_str()),
        (Some("/etc"), Some("bind"))
    );
    assert_eq!(s["hooks"]["createRuntime"][0]["path"], "/bin/true");
    assert_eq!(s["hooks"]["createRuntime"][0]["timeout"], 3);
    assert_eq!(s["linux"]["netDevices"]["vhost0"]["name"], "net1");
    // The annotation's CDI names pass into the OCI annotations too.
    let mut c = ctr();
    c.annotations
        .insert("cdi.k8s.io/p_d".into(), "v.com/dev=d0".into());
    let s = gen_cdi(&c, t.path()).unwrap();
    assert!(strs(&s["process"]["env"]).contains(&"DEV=d0".to_string()));
    assert_eq!(s["annotations"]["cdi.k8s.io/p_d"], "v.com/dev=d0");
    // Unknown and malformed names fail naming their field.
    c.annotations
        .insert("cdi.k8s.io/p_d".into(), "v.com/dev=d1".into());
    let e = fails(gen_cdi(&c, t.path()), "config.annotations[cdi.k8s.io/p_d]");
    assert!(e.contains("unknown CDI device"), "{e}");
    let mut c = ctr();
    c.cdi_devices = vec![CdiDevice { name: "d0".into() }];
    fails(gen_cdi(&c, t.path()), "config.CDI_devices[0]");
}

#[test]
fn resources() {
    let mut c = ctr();
    let r = res(&mut c);
    r.cpu_period = 100000;
    r.cpu_quota = 50000;
    r.cpu_shares = 512;
    r.cpuset_cpus = "0-1".into();
    r.cpuset_mems = "0".into();
    r.memory_limit_in_bytes = 64 << 20;
    r.memory_swap_limit_in_bytes = 128 << 20;
    r.hugepage_limits = vec![HugepageLimit {
        page_size: "2MB".into(),
        limit: 4 << 20,
    }];
    r.unified = [("memory.high".to_string(), "50000000".to_string())].into();
    let s = ok(&c);
    let lr = &s["linux"]["resources"];
    assert_eq!(lr["cpu"]["period"], 100000);
    assert_eq!(lr["cpu"]["quota"], 50000);
    assert_eq!(lr["cpu"]["shares"], 512);
    assert_eq!(lr["cpu"]["cpus"], "0-1");
    assert_eq!(lr["cpu"]["mems"], "0");
    assert_eq!(lr["memory"]["limit"], 64 << 20);
    assert_eq!(lr["memory"]["swap"], 128 << 20);
    assert_eq!(lr["hugepageLimits"][0]["pageSize"], "2MB");
    assert_eq!(lr["hugepageLimits"][0]["limit"], 4 << 20);
    assert_eq!(lr["unified"]["memory.high"], "50000000");
    // Zeroes are "not set".
    let s = ok(&ctr());
    assert!(s["linux"]["resources"].get("cpu").is_none());
    assert!(s["linux"]["resources"].get("memory").is_none());
    let mut c = ctr();
    res(&mut c).memory_limit_in_bytes = 1 << 20;
    let s = ok(&c);
    assert!(s["linux"]["resources"]["memory"].get("swap").is_none());

    let f = |n: &str| format!("config.linux.resources.{n}");
    let bad = |g: &dyn Fn(&mut LinuxContainerResources)| {
        let mut c = ctr();
        g(res(&mut c));
        gen(&c)
    };
    fails(bad(&|r| r.cpu_shares = -2), &f("cpu_shares"));
    fails(bad(&|r| r.cpu_period = -1), &f("cpu_period"));
    fails(bad(&|r| r.cpu_quota = -5), &f("cpu_quota"));
    fails(bad(&|r| r.cpuset_cpus = "0;1".into()), &f("cpuset_cpus"));
    fails(
        bad(&|r| r.memory_limit_in_bytes = -7),
        &f("memory_limit_in_bytes"),
    );
    fails(
        bad(&|r| {
            r.memory_limit_in_bytes = 2 << 20;
            r.memory_swap_limit_in_bytes = 1 << 20;
        }),
        &f("memory_swap_limit_in_bytes"),
    );
    fails(
        bad(&|r| {
            r.hugepage_limits = vec![HugepageLimit {
                page_size: "2XB".into(),
                limit: 1,
            }]
        }),
        &f("hugepage_limits[0].page_size"),
    );
    fails(
        bad(&|r| r.unified = [("../x".to_string(), "1".to_string())].into()),
        &f("unified[../x]"),
    );
}

// ---------------------------------------------------------------- security

fn caps(s: &Value, set: &str) -> BTreeSet<String> {
    strs(&s["process"]["capabilities"][set])
        .into_iter()
        .collect()
}

fn set_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// "ALL": what the kernel knows and this process may hand on.
fn all_caps() -> BTreeSet<String> {
    let last: usize = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    berth_oci::caps::NAMES[..=last]
        .iter()
        .enumerate()
        .filter(|(i, _)| bnd & (1 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect()
}

fn with_caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> Result<Value, SpecError> {
    let mut c = ctr();
    sc(&mut c).capabilities = Some(Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        add_ambient_capabilities: ambient.iter().map(|s| s.to_string()).collect(),
    });
    gen(&c)
}

#[test]
fn capabilities() {
    let s = ok(&ctr());
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(caps(&s, set), set_of(DEFAULT_CAPS), "{set}");
    }
    assert!(caps(&s, "ambient").is_empty());
    assert!(caps(&s, "inheritable").is_empty());

    // With or without CAP_, any case.
    let s = with_caps(&["sys_admin", "CAP_NET_ADMIN"], &["chown", "Cap_Kill"], &[]).unwrap();
    let mut want = set_of(DEFAULT_CAPS);
    want.insert("CAP_SYS_ADMIN".into());
    want.insert("CAP_NET_ADMIN".into());
    want.remove("CAP_CHOWN");
    want.remove("CAP_KILL");
    assert_eq!(caps(&s, "bounding"), want);
    assert_eq!(caps(&s, "effective"), want);

    // ALL then individual drops; drop ALL then individual adds.
    let s = with_caps(&["ALL"], &["NET_RAW"], &[]).unwrap();
    let mut want = all_caps();
    want.remove("CAP_NET_RAW");
    assert_eq!(caps(&s, "bounding"), want);
    let s = with_caps(&["CHOWN"], &["all"], &[]).unwrap();
    assert_eq!(caps(&s, "bounding"), set_of(&["CAP_CHOWN"]));

    // Ambient capabilities are in every set.
    let s = with_caps(&[], &[], &["NET_BIND_SERVICE", "CAP_SYS_TIME"]).unwrap();
    let amb = set_of(&["CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]);
    assert_eq!(caps(&s, "ambient"), amb);
    assert_eq!(caps(&s, "inheritable"), amb);
    assert!(caps(&s, "bounding").contains("CAP_SYS_TIME"));

    let f = |n: &str| format!("{SC}.capabilities.{n}");
    fails(
        with_caps(&["CHOWN", "CAP_BOGUS"], &[], &[]),
        &f("add_capabilities[1]"),
    );
    fails(
        with_caps(&[], &["frobnicate"], &[]),
        &f("drop_capabilities[0]"),
    );
    fails(
        with_caps(&[], &[], &[""]),
        &f("add_ambient_capabilities[0]"),
    );
}

#[test]
fn privileged() {
    let fx = Fx::new();
    let mut p = pod();
    p.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let sb = sandbox(&p);
    let mut c = ctr();
    sc(&mut c).privileged = true;
    sc(&mut c).seccomp = Some(SecurityProfile::default()); // ignored
    sc(&mut c).capabilities = Some(Capability {
        drop_capabilities: vec!["ALL".into()], // ignored
        ..Default::default()
    });
    sc(&mut c).masked_paths = vec!["/proc/kcore".into()]; // ignored
    let s = gen_with(&fx, &sb, &c, &ImageConfig::default()).unwrap();
    assert_eq!(caps(&s, "bounding"), all_caps());
    assert_eq!(caps(&s, "effective"), all_caps());
    assert!(s["linux"].get("seccomp").is_none());
    assert!(s["linux"].get("maskedPaths").is_none());
    assert!(s["linux"].get("readonlyPaths").is_none());
    assert!(!opts(mount(&s, "/sys").unwrap()).contains(&"ro".into()));
    assert!(!opts(mount(&s, "/sys/fs/cgroup").unwrap()).contains(&"ro".into()));
    let rules = s["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["allow"], true);
    assert_eq!(rules[0]["access"], "rwm");
    // The host's devices, e.g. /dev/null and /dev/zero.
    let devs = s["linux"]["devices"].as_array().unwrap();
    for d in ["/dev/null", "/dev/zero"] {
        assert!(devs.iter().any(|x| x["path"] == d), "{d} missing");
    }
    assert!(!devs
        .iter()
        .any(|x| x["path"].as_str().unwrap().starts_with("/dev/pts/")));

    // A privileged container needs a privileged pod.
    fails(gen(&c), &format!("{SC}.privileged"));
}

#[test]
fn masked_and_readonly_paths() {
    let s = ok(&ctr());
    let masked = strs(&s["linux"]["maskedPaths"]);
    for p in ["/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/acpi"] {
        assert!(masked.contains(&p.to_string()), "{p}");
    }
    assert!(strs(&s["linux"]["readonlyPaths"]).contains(&"/proc/sys".to_string()));
    let mut c = ctr();
    sc(&mut c).masked_paths = vec!["/proc/a".into()];
    sc(&mut c).readonly_paths = vec!["/proc/b".into(), "/proc/c".into()];
    let s = ok(&c);
    assert_eq!(strs(&s["linux"]["maskedPaths"]), ["/proc/a"]);
    assert_eq!(strs(&s["linux"]["readonlyPaths"]), ["/proc/b", "/proc/c"]);
    let mut c = ctr();
    sc(&mut c).readonly_paths = vec!["/proc/b".into(), "proc/c".into()];
    fails(gen(&c), &format!("{SC}.readonly_paths[1]"));
    let mut c = ctr();
    sc(&mut c).masked_paths = vec!["x".into()];
    fails(gen(&c), &format!("{SC}.masked_paths[0]"));
}

#[test]
fn apparmor_and_selinux_are_accepted() {
    let mut c = ctr();
    sc(&mut c).apparmor = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::Localhost as i32,
        localhost_ref: "k8s-profile".into(),
    });
    sc(&mut c).selinux_options = Some(SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    ok(&c);
}

fn seccomp_names(s: &Value) -> BTreeSet<String> {
    s["linux"]["seccomp"]["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| strs(&r["names"]))
        .collect()
}

/// By default (no `seccomp_profile_root`), a Localhost profile loads from any
/// absolute path the kubelet sends, as in containerd and CRI-O; a missing or
/// bad file names the path.
#[test]
fn seccomp_localhost_from_any_absolute_path_by_default() {
    use security_profile::ProfileType;
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let rootfs = fx.rootfs();
    let gen = |r: &str| {
        let mut c = ctr();
        sc(&mut c).seccomp = Some(SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: r.into(),
        });
        let input = ContainerInput {
            id: "c1",
            config: &c,
            image: &ImageConfig::default(),
            rootfs: &rootfs,
            seccomp_localhost_root: Path::new(""),
            target_pidns: None,
            image_volumes: vec![],
            cdi_spec_dirs: &[],
        };
        container_spec(&sb, &input).map(|s| serde_json::to_value(s).unwrap())
    };
    let anywhere = fx.tmp.path().join("kubelet-root/seccomp/profile.json");
    fs::create_dir_all(anywhere.parent().unwrap()).unwrap();
    fs::write(
        &anywhere,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["reboot"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let s = gen(anywhere.to_str().unwrap()).unwrap();
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    let field = format!("{SC}.seccomp.localhost_ref");
    let missing = fx.tmp.path().join("nope.json");
    let m = fails(gen(missing.to_str().unwrap()), &field);
    assert!(m.contains(missing.to_str().unwrap()), "{m}");
    let m = fails(gen("profile.json"), &field);
    assert!(m.contains("absolute"), "{m}");
    let bad = fx.tmp.path().join("bad.json");
    fs::write(&bad, "{not json").unwrap();
    let m = fails(gen(bad.to_str().unwrap()), &field);
    assert!(m.contains(bad.to_str().unwrap()), "{m}");
}

#[test]
fn seccomp_profiles() {
    use security_profile::ProfileType;
    let fx = Fx::new();
    let p = pod();
    let sb = sandbox(&p);
    let run = |f: &dyn Fn(&mut LinuxContainerSecurityContext)| {
        let mut c = ctr();
        f(sc(&mut c));
        gen_with(&fx, &sb, &c, &ImageConfig::default())
    };
    let prof = |t: ProfileType, r: &str| SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    };
    // RuntimeDefault: berth's default profile, for the container's caps.
    let s = run(&|s| s.seccomp = Some(prof(ProfileType::RuntimeDefault, ""))).unwrap();
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(seccomp_names(&s).contains("read"));
    assert!(!seccomp_names(&s).contains("mount"));
    let s = run(&|s| {
        s.seccomp = Some(prof(ProfileType::RuntimeDefault, ""));
        s.capabilities = Some(Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
    })
    .unwrap();
    assert!(seccomp_names(&s).contains("mount"));
    // Unconfined, or nothing asked: none.
    let s = run(&|s| s.seccomp = Some(prof(ProfileType::Unconfined, ""))).unwrap();
    assert!(s["linux"].get("seccomp").is_none());
    assert!(ok(&ctr())["linux"].get("seccomp").is_none());
    // The deprecated strings.
    #[allow(deprecated)]
    {
        for (path, on) in [
            ("runtime/default", true),
            ("docker/default", true),
            ("unconfined", false),
            ("", false),
        ] {
            let s = run(&|s| s.seccomp_profile_path = path.into()).unwrap();
            assert_eq!(s["linux"].get("seccomp").is_some(), on, "{path}");
        }
        fails(
            run(&|s| s.seccomp_profile_path = "bogus".into()),
            &format!("{SC}.seccomp_profile_path"),
        );
    }

    // Localhost: an OCI profile file inside the profile directory.
    let good = fx.seccomp().join("audit.json");
    fs::write(
        &good,
        r#"{"defaultAction":"SCMP_ACT_LOG","architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["reboot"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let s =
        run(&|s| s.seccomp = Some(prof(ProfileType::Localhost, good.to_str().unwrap()))).unwrap();
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_LOG");
    assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["names"][0], "reboot");
    #[allow(deprecated)]
    {
        let s = run(&|s| s.seccomp_profile_path = format!("localhost/{}", good.display())).unwrap();
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_LOG");
        let s = run(&|s| s.seccomp_profile_path = "localhost/audit.json".into()).unwrap();
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_LOG");
    }

    let field = format!("{SC}.seccomp.localhost_ref");
    let local = |r: &str| run(&|s| s.seccomp = Some(prof(ProfileType::Localhost, r)));
    // Docker's format: archMap, and rules conditional on capabilities.
    let docker = fx.seccomp().join("docker.json");
    fs::write(
        &docker,
        r#"{"defaultAction":"SCMP_ACT_ERRNO",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},
                       {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
            "syscalls":[
              {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW","comment":"basics"},
              {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
              {"names":["chown"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_SYS_ADMIN"]}}
            ]}"#,
    )
    .unwrap();
    let s = local(docker.to_str().unwrap()).unwrap();
    let names = seccomp_names(&s);
    assert!(
        names.contains("read") && names.contains("chown"),
        "{names:?}"
    );
    assert!(!names.contains("mount"), "{names:?}");
    assert_eq!(
        s["linux"]["seccomp"]["architectures"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let s = run(&|s| {
        s.seccomp = Some(prof(ProfileType::Localhost, docker.to_str().unwrap()));
        s.capabilities = Some(Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
    })
    .unwrap();
    let names = seccomp_names(&s);
    assert!(
        names.contains("mount") && !names.contains("chown"),
        "{names:?}"
    );

    // Outside the directory, by path, by .., or by a symlink inside it.
    let outside = fx.tmp.path().join("outside.json");
    fs::copy(&good, &outside).unwrap();
    fails(local(outside.to_str().unwrap()), &field);
    fails(
        local(&format!("{}/../outside.json", fx.seccomp().display())),
        &field,
    );
    symlink(&outside, fx.seccomp().join("escape.json")).unwrap();
    let m = fails(
        local(fx.seccomp().join("escape.json").to_str().unwrap()),
        &field,
    );
    assert!(m.contains("leaves"), "{m}");
    symlink("../outside.json", fx.seccomp().join("escape2.json")).unwrap();
    fails(
        local(fx.seccomp().join("escape2.json").to_str().unwrap()),
        &field,
    );
    // Missing, empty, not JSON, not a profile that compiles.
    fails(local(""), &field);
    fails(
        local(fx.seccomp().join("nope.json").to_str().unwrap()),
        &field,
    );
    for (name, body) in [
        ("bad.json", "{not json"),
        ("wrong.json", r#"{"defaultAction":"SCMP_ACT_WHATEVER"}"#),
        (
            "nosys.json",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_syscall"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ),
    ] {
        let p = fx.seccomp().join(name);
        fs::write(&p, body).unwrap();
        fails(local(p.to_str().unwrap()), &field);
    }
    fails(
        run(&|s| {
            s.seccomp = Some(SecurityProfile {
                profile_type: 17,
                localhost_ref: String::new(),
            })
        }),
        &format!("{SC}.seccomp.profile_type"),
    );
}

#[test]
fn annotations_name_the_container_and_pod() {
    let mut c = ctr();
    c.annotations = [(
        "io.kubernetes.container.hash".to_string(),
        "abc".to_string(),
    )]
    .into();
    c.labels = [("app".to_string(), "web".to_string())].into();
    let s = ok(&c);
    let a = s["annotations"].as_object().unwrap();
    assert_eq!(a["io.kubernetes.container.hash"], "abc");
    assert_eq!(a["io.kubernetes.cri.container-type"], "container");
    assert_eq!(a["io.kubernetes.cri.container-name"], "app");
    assert_eq!(a["io.kubernetes.cri.sandbox-id"], "sb1");
    assert_eq!(a["io.kubernetes.cri.sandbox-name"], "web");
    assert_eq!(a["io.kubernetes.cri.sandbox-namespace"], "default");
    assert_eq!(
        a["io.kubernetes.cri.image-name"],
        "docker.io/library/busybox:latest"
    );
    assert!(a.get("app").is_none(), "labels are not annotations");
}

/// A spec using most features passes the runtime's own validation.
#[test]
fn generated_spec_passes_berths_validation() {
    let fx = Fx::new();
    let mut p = pod();
    p.linux.as_mut().unwrap().sysctls =
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into();
    let sb = SandboxInfo {
        shm: Some("/run/x/shm".into()),
        etc_files: vec![("/etc/hosts".into(), "/run/x/hosts".into())],
        userns: Some(UserNs {
            path: None,
            uid_map: vec![(0, 100000, 65536)],
            gid_map: vec![(0, 100000, 65536)],
        }),
        ..sandbox(&p)
    };
    let mut c = ctr();
    sc(&mut c).run_as_username = "app".into();
    sc(&mut c).seccomp = Some(SecurityProfile::default());
    sc(&mut c).readonly_rootfs = true;
    c.mounts = vec![host_mount(fx.tmp.path(), "/data")];
    c.devices = vec![Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    let r = res(&mut c);
    r.cpu_shares = 100;
    r.memory_limit_in_bytes = 1 << 30;
    let rootfs = fx.rootfs();
    let seccomp = fx.seccomp();
    let spec = container_spec(
        &sb,
        &ContainerInput {
            id: "c1",
            config: &c,
            image: &ImageConfig::default(),
            rootfs: &rootfs,
            seccomp_localhost_root: &seccomp,
            target_pidns: None,
            image_volumes: vec![],
            cdi_spec_dirs: &[],
        },
    )
    .unwrap();
    berth_oci::config::validate("config.json", &spec).unwrap();
    berth_oci::container::compile_seccomp(&spec).unwrap();

    // And a privileged one (every host device, no seccomp).
    p.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let sb = sandbox(&p);
    let mut c = ctr();
    sc(&mut c).privileged = true;
    let spec = container_spec(
        &sb,
        &ContainerInput {
            id: "c2",
            config: &c,
            image: &ImageConfig::default(),
            rootfs: &rootfs,
            seccomp_localhost_root: &seccomp,
            target_pidns: None,
            image_volumes: vec![],
            cdi_spec_dirs: &[],
        },
    )
    .unwrap();
    berth_oci::config::validate("config.json", &spec).unwrap();
}

// ---------------------------------------------------------------- real containers

/// The berth binary: `$BERTH_BIN`, else `<target>/debug/berth` beside this
/// test's executable (`<target>/debug/deps/spec-*`), built with `cargo
/// build -p berth --target-dir <target>` when it is not there yet.
fn berth_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("BERTH_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap(); // target/debug
        let bin = profile_dir.join("berth");
        if !bin.exists() {
            let target = profile_dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "berth", "--target-dir"])
                .arg(target)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo build -p berth");
            assert!(st.success(), "cargo build -p berth failed");
        }
        bin
    })
    .clone()
}

/// Runs the spec generated for `c` in a busybox bundle on the host's
/// network, IPC and UTS namespaces, with `passwd`/`group` as the image's,
/// and returns the container's output.
fn run_real(c: &ContainerConfig, passwd: &str, group: &str) -> std::process::Output {
    run_real_in(c, passwd, group, false)
}

fn run_real_in(
    c: &ContainerConfig,
    passwd: &str,
    group: &str,
    privileged_pod: bool,
) -> std::process::Output {
    let bundle = Bundle::new(&["true"]).unwrap();
    fs::write(bundle.rootfs().join("etc/passwd"), passwd).unwrap();
    fs::write(bundle.rootfs().join("etc/group"), group).unwrap();
    let mut p = pod();
    p.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = privileged_pod;
    let sb = SandboxInfo {
        netns: None,
        ipcns: None,
        utsns: None,
        // The bundle's own cgroup parent, removed when the bundle drops.
        cgroup_parent: format!("/{}", bundle.cgroup_parent),
        ..sandbox(&p)
    };
    let rootfs = bundle.rootfs();
    let seccomp = bundle.path().join("seccomp");
    let id = unique_id("cri-spec");
    let spec = container_spec(
        &sb,
        &ContainerInput {
            id: &id,
            config: c,
            image: &ImageConfig::default(),
            rootfs: &rootfs,
            seccomp_localhost_root: &seccomp,
            target_pidns: None,
            image_volumes: vec![],
            cdi_spec_dirs: &[],
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut bundle = bundle;
    bundle.config = serde_json::to_value(&spec).unwrap();
    bundle.write().unwrap();
    let berth = Berth::new(berth_bin()).unwrap();
    berth.run_fg(&bundle, &id)
}

#[test]
fn real_privileged_container_has_every_capability_and_host_devices() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut c = ctr();
    c.command = vec![
        "sh".into(),
        "-c".into(),
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; head -c 4 /dev/zero | wc -c".into(),
    ];
    sc(&mut c).privileged = true;
    let o = run_real_in(&c, PASSWD, GROUP, true);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let all: u64 = all_caps()
        .iter()
        .map(|n| 1u64 << berth_oci::caps::from_name(n).unwrap())
        .sum();
    assert!(
        out.contains(&format!("CapEff:\t{all:016x}")),
        "{}",
        output_text(&o)
    );
    assert!(out.contains("Seccomp:\t0"), "{}", output_text(&o));
    assert!(out.trim_end().ends_with('4'), "{}", output_text(&o));
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn real_container_runs_as_named_user_with_groups() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut c = ctr();
    c.command = vec![
        "sh".into(),
        "-c".into(),
        "id -u; id -g; id -G; id -un".into(),
    ];
    sc(&mut c).run_as_username = "app".into();
    sc(&mut c).supplemental_groups = vec![5000];
    let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1235:app:/:/bin/sh\n";
    let group = "root:x:0:\napp:x:1235:\naudio:x:29:app\nvideo:x:44:x,app\nother:x:55:x\n";
    let o = run_real(&c, passwd, group);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{}", output_text(&o));
    assert_eq!(lines[0], "1234");
    assert_eq!(lines[1], "1235");
    let groups: BTreeSet<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        groups,
        ["29", "44", "1235", "5000"].into(),
        "{}",
        output_text(&o)
    );
    assert_eq!(lines[3], "app");
}

#[test]
fn real_container_dropped_caps_readonly_rootfs_and_default_seccomp() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut c = ctr();
    c.command = vec![
        "sh".into(),
        "-c".into(),
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
         touch /newfile 2>&1 || echo ROOT-RO; \
         touch /dev/shm/f && (chown 1 /dev/shm/f 2>&1 || echo CHOWN-DENIED); \
         echo $HOSTNAME $FOO; pwd"
            .into(),
    ];
    c.envs = vec![kv("FOO", "bar")];
    c.working_dir = "/tmp".into();
    let s = sc(&mut c);
    s.readonly_rootfs = true;
    s.capabilities = Some(Capability {
        drop_capabilities: vec!["chown".into(), "CAP_NET_RAW".into()],
        ..Default::default()
    });
    s.seccomp = Some(SecurityProfile::default()); // RuntimeDefault
    let o = run_real(&c, PASSWD, GROUP);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let want: u64 = DEFAULT_CAPS
        .iter()
        .filter(|n| **n != "CAP_CHOWN" && **n != "CAP_NET_RAW")
        .map(|n| 1u64 << berth_oci::caps::from_name(n).unwrap())
        .sum();
    assert!(
        out.contains(&format!("CapEff:\t{want:016x}")),
        "want CapEff {want:016x}: {}",
        output_text(&o)
    );
    assert!(out.contains("Seccomp:\t2"), "{}", output_text(&o));
    assert!(out.contains("Read-only file system"), "{}", output_text(&o));
    assert!(out.contains("ROOT-RO"), "{}", output_text(&o));
    assert!(out.contains("CHOWN-DENIED"), "{}", output_text(&o));
    assert!(out.contains("pod-host bar"), "{}", output_text(&o));
    assert!(out.trim_end().ends_with("/tmp"), "{}", output_text(&o));
}

#[test]
fn real_container_sees_cri_volume_read_only() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let vol = tempfile::tempdir().unwrap();
    fs::write(vol.path().join("hello"), "from the host\n").unwrap();
    let mut c = ctr();
    c.command = vec![
        "sh".into(),
        "-c".into(),
        "cat /vol/hello; touch /vol/x 2>&1 || echo VOL-RO; touch /rw/y && echo RW-OK".into(),
    ];
    let rw = tempfile::tempdir().unwrap();
    let mut m = host_mount(vol.path(), "/vol");
    m.readonly = true;
    m.recursive_read_only = true;
    c.mounts = vec![m, host_mount(rw.path(), "/rw")];
    let o = run_real(&c, PASSWD, GROUP);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("from the host"), "{}", output_text(&o));
    assert!(out.contains("VOL-RO"), "{}", output_text(&o));
    assert!(out.contains("RW-OK"), "{}", output_text(&o));
    assert!(rw.path().join("y").exists());
    assert!(!vol.path().join("x").exists());
}
