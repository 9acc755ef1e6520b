//! Runtime spec 1.2 (Linux): the process object (env, cwd, user, umask,
//! rlimits, capabilities, noNewPrivileges, oomScoreAdj) and linux.personality,
//! linux.sysctl and annotations, checked from inside real busybox containers.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::process::{Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// Runs `sh -c script` in the foreground in a fresh bundle after `edit`.
fn try_sh(script: &str, edit: impl FnOnce(&mut Value)) -> Output {
    let mut b = Bundle::new(&["sh", "-c", script]).unwrap();
    edit(&mut b.config);
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("spec-{}", random_suffix());
    berth
        .cmd()
        .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
        // Must not reach the container: its env is exactly process.env.
        .env("BERTH_SPEC_LEAK", "1")
        .output()
        .unwrap()
}

/// Like [`try_sh`]; panics unless the container exits 0, returns stdout.
fn sh(script: &str, edit: impl FnOnce(&mut Value)) -> String {
    let o = try_sh(script, edit);
    assert!(
        o.status.success(),
        "container failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn add_tmp(cfg: &mut Value) {
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
}

/// The first value of a `Key:\tvalue` line of /proc/<pid>/status text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{key} missing:\n{status}"))
        .trim()
}

#[test]
fn env_is_exactly_process_env() {
    let out = sh("env", |c| {
        c["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY=", "TERM=dumb"]);
    });
    let vars: Vec<&str> = out.lines().collect();
    for want in ["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY=", "TERM=dumb"] {
        assert!(vars.contains(&want), "{want} missing:\n{out}");
    }
    assert!(
        !out.contains("BERTH_SPEC_LEAK"),
        "runtime env leaked:\n{out}"
    );
}

#[test]
fn cwd() {
    let out = sh("pwd", |c| c["process"]["cwd"] = json!("/home/user"));
    assert_eq!(out, "/home/user\n");
}

#[test]
fn user_uid_gid_and_additional_gids() {
    let out = sh("id -u; id -g; whoami; grep Groups /proc/self/status", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["1000", "1000", "user"], "{out}");
    let groups: Vec<&str> = lines[3].split_whitespace().skip(1).collect();
    assert_eq!(groups, ["2000", "3000"], "{out}");
}

#[test]
fn umask_shapes_new_files() {
    let script = "umask; touch /tmp/f; mkdir /tmp/d; stat -c %a /tmp/f /tmp/d";
    let out = sh(script, |c| {
        add_tmp(c);
        c["process"]["user"]["umask"] = json!(0o027);
    });
    assert_eq!(out, "0027\n640\n750\n");
    // Unset, the umask is 0022.
    let out = sh(script, add_tmp);
    assert_eq!(out, "0022\n644\n755\n");
}

#[test]
fn rlimits() {
    // Below this machine's hard limits: raising a hard limit needs
    // CAP_SYS_RESOURCE, which the runtime may lack.
    let out = sh(
        "ulimit -n; grep -E 'Max (open files|msgqueue size|core file size)' /proc/self/limits",
        |c| {
            c["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
                {"type": "RLIMIT_MSGQUEUE", "soft": 4096, "hard": 8192},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
            ]);
        },
    );
    let norm: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        norm,
        [
            "1000",
            "Max core file size 0 0 bytes",
            "Max open files 1000 2000 files",
            "Max msgqueue size 4096 8192 bytes",
        ],
        "{out}"
    );
}

/// Capability numbers of the names these tests use.
fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| match *n {
            "CAP_CHOWN" => 0,
            "CAP_KILL" => 5,
            "CAP_SETGID" => 6,
            "CAP_SETUID" => 7,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_RAW" => 13,
            other => panic!("add {other} to the table"),
        })
        .fold(0, |m, c| m | 1 << c)
}

fn cap_sets(status: &str) -> [u64; 5] {
    ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"]
        .map(|k| u64::from_str_radix(status_field(status, k), 16).unwrap())
}

#[test]
fn capabilities_of_root() {
    let bnd = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
    ];
    let inh = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let amb = ["CAP_NET_BIND_SERVICE"];
    let out = sh("cat /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({
            "bounding": bnd, "effective": bnd, "permitted": bnd,
            "inheritable": inh, "ambient": amb
        });
    });
    // For root, execve recomputes permitted and effective as bounding |
    // inheritable: a config that keeps them equal to bounding survives as is.
    assert_eq!(
        cap_sets(&out),
        [mask(&bnd), mask(&bnd), mask(&bnd), mask(&inh), mask(&amb)],
        "Bnd Eff Prm Inh Amb"
    );
}

#[test]
fn capabilities_of_a_user() {
    let bnd = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
    ];
    let prm = ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"];
    let inh = ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"];
    let amb = ["CAP_NET_BIND_SERVICE"];
    let out = sh("cat /proc/self/status", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        c["process"]["capabilities"] = json!({
            "bounding": bnd, "effective": prm, "permitted": prm,
            "inheritable": inh, "ambient": amb
        });
    });
    // A non-root program keeps only its ambient set across execve.
    assert_eq!(
        cap_sets(&out),
        [mask(&bnd), mask(&amb), mask(&amb), mask(&inh), mask(&amb)],
        "Bnd Eff Prm Inh Amb"
    );
}

#[test]
fn without_capabilities_root_cannot_chown() {
    let out = sh("chown 1000 /tmp 2>&1; grep CapEff /proc/self/status", |c| {
        add_tmp(c);
        c["process"]["capabilities"] = json!({
            "bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []
        });
    });
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
}

#[test]
fn no_new_privileges() {
    let read = |nnp: bool| {
        let out = sh("cat /proc/self/status", |c| {
            c["process"]["noNewPrivileges"] = json!(nnp)
        });
        status_field(&out, "NoNewPrivs").to_string()
    };
    assert_eq!(read(true), "1");
    assert_eq!(read(false), "0");
}

#[test]
fn oom_score_adj_raised() {
    let out = sh("cat /proc/self/oom_score_adj", |c| {
        c["process"]["oomScoreAdj"] = json!(500)
    });
    assert_eq!(out, "500\n");
}

#[test]
fn oom_score_adj_lowered() {
    // Going below the caller's own value needs CAP_SYS_RESOURCE.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let can = u64::from_str_radix(status_field(&own, "CapEff"), 16).unwrap() & 1 << 24 != 0;
    let o = try_sh("cat /proc/self/oom_score_adj", |c| {
        c["process"]["oomScoreAdj"] = json!(-500)
    });
    let err = String::from_utf8_lossy(&o.stderr);
    if can {
        assert!(o.status.success(), "{err}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "-500\n");
    } else {
        assert!(
            !o.status.success(),
            "oomScoreAdj -500 without CAP_SYS_RESOURCE"
        );
        assert!(err.contains("oomScoreAdj"), "{err}");
        eprintln!("no CAP_SYS_RESOURCE here; create refused as expected: {err}");
    }
}

#[test]
fn personality_linux32() {
    let out = sh("uname -m", |c| {
        c["linux"]["personality"] = json!({"domain": "LINUX32"})
    });
    assert_eq!(out, "i686\n");
    let out = sh("uname -m", |c| {
        c["linux"]["personality"] = json!({"domain": "LINUX"})
    });
    assert_eq!(out.trim(), std::env::consts::ARCH);
}

#[test]
fn sysctl_in_the_containers_namespaces() {
    let host_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    let out = sh(
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax",
        |c| {
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"})
        },
    );
    assert_eq!(out, "1\n123456789\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_fwd
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap(),
        host_shm
    );
}

#[test]
fn sysctl_outside_the_containers_namespaces_is_refused() {
    let o = try_sh("true", |c| {
        c["linux"]["sysctl"] = json!({"kernel.panic": "1"})
    });
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("linux.sysctl.kernel.panic"), "{err}");
}

#[test]
fn annotations_are_in_state() {
    let mut b = Bundle::new(&["sleep", "1000"]).unwrap();
    let ann = json!({"org.example.key": "value", "io.berth/test": "x y"});
    b.config["annotations"] = ann.clone();
    b.write().unwrap();
    let berth = Berth::new(BIN).unwrap();
    let id = format!("ann-{}", random_suffix());
    // The created init keeps berth's stdio: no pipes, or this would wait.
    let st = berth
        .cmd()
        .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let state = berth.state(&id);
    assert_eq!(state["annotations"], ann);
    assert_eq!(state["status"], "created");
    berth.ok(&["delete", "--force", &id]);
}
