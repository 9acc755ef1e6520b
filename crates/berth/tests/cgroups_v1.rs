//! linux.resources on a cgroup v1 host, with real containers: limits hold
//! (memory → OOM kill reported, pids, cpu, devices), pause/resume, live
//! `update`, `events`, and bad resources rejected with nothing left behind.
//! On a host without v1 controllers the tests return early (the v2 side is
//! tested in a VM).

use berth_testutil::{output_text as all, unique_id as id, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn v1_host() -> bool {
    let ok = Path::new("/sys/fs/cgroup/memory/memory.oom_control").exists();
    if !ok {
        eprintln!("skipping: no cgroup v1 memory hierarchy");
    }
    ok
}

/// The container's own directory in hierarchy `ctrl` on the host.
fn cg(bundle: &Bundle, ctrl: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(&bundle.cgroup_parent)
        .join("ctr")
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn bundle_with(args: &[&str], resources: Value) -> Bundle {
    let mut bundle = Bundle::new(args).unwrap();
    let r = &mut bundle.config["linux"]["resources"];
    for (k, v) in resources.as_object().unwrap() {
        r[k] = v.clone();
    }
    bundle.write().unwrap();
    bundle
}

/// `berth events --stats`' data.
fn stats(b: &Berth, id: &str) -> Value {
    let out = b.ok(&["events", "--stats", id]);
    let ev: Value = serde_json::from_str(out.trim()).expect("one JSON event");
    assert_eq!(ev["type"], "stats", "{out}");
    assert_eq!(ev["id"], id, "{out}");
    ev["data"].clone()
}

/// Polls `f` until it holds, for at most 20 s (a bound, not a measurement).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `berth create` with null stdio: the init keeps the stdio it is given,
/// and waiting for a pipe's EOF would wait for the container.
fn create(b: &Berth, bundle: &Bundle, cid: &str) {
    let st = b
        .cmd()
        .args(["create", "--bundle", bundle.path().to_str().unwrap(), cid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "create {cid} failed");
}

const MIB: i64 = 1 << 20;

#[test]
fn memory_limit_oom_kill_is_reported_as_oom() {
    if !v1_host() {
        return;
    }
    // The shell holds 64 MiB in a variable: far past the 16 MiB limit.
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        ],
        json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("oom");
    create(&b, &bundle, &cid);
    assert_eq!(
        read(cg(&bundle, "memory").join("memory.limit_in_bytes")),
        (16 * MIB).to_string()
    );
    let mut ev: Child = b
        .cmd()
        .args(["events", "--interval", "50ms", &cid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ev.stdout.take().unwrap()).lines();
    // A first stats line means the OOM watch is registered.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "stats");
    b.ok(&["start", &cid]);
    // The stream ends when the container stops.
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let st = ev.wait().unwrap();
    assert!(st.success(), "events failed: {st}");
    assert!(
        rest.iter()
            .any(|e| e["type"] == "oom" && e["id"] == cid.as_str()),
        "no oom event in {rest:?}"
    );
    assert_eq!(b.state(&cid)["status"], "stopped");
    let s = stats(&b, &cid);
    assert!(
        s["memory"]["oomKills"].as_u64().unwrap() >= 1,
        "oom kills not counted: {s}"
    );
    assert_eq!(s["memory"]["usage"]["limit"], 16 * MIB);
    b.ok(&["delete", &cid]);
    assert!(!cg(&bundle, "memory").exists());
}

#[test]
fn pids_limit_is_enforced() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done; echo looped",
        ],
        json!({"pids": {"limit": 6}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("pids"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("6\n"), "{}", all(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "more than 6 processes started: {}",
        all(&o)
    );
}

#[test]
fn cpu_limits_are_visible_inside_and_outside() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
             /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpuset/cpuset.cpus",
        ],
        json!({"cpu": {"quota": 20000, "period": 50000, "shares": 512, "cpus": "0"}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("cpu"));
    assert!(o.status.success(), "{}", all(&o));
    let out: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(out, ["20000", "50000", "512", "0"], "{}", all(&o));
}

#[test]
fn devices_outside_the_rules_are_denied() {
    if !v1_host() {
        return;
    }
    // /dev/mem (c 1:1) is not in the default list; /dev/null is.
    let script = "busybox mknod /dev/mymem c 1 1 && echo made; \
                  head -c 1 /dev/mymem >/dev/null 2>&1 && echo READ-MEM || echo mem-denied; \
                  echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c";
    let mut bundle = bundle_with(&["sh", "-c", script], json!({}));
    for set in ["bounding", "effective", "permitted"] {
        bundle.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("dev"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("made"), "mknod is allowed (m): {}", all(&o));
    assert!(out.contains("mem-denied"), "{}", all(&o));
    assert!(!out.contains("READ-MEM"), "{}", all(&o));
    assert!(out.contains("null-ok"), "{}", all(&o));
    assert!(out.contains('4'), "/dev/zero readable: {}", all(&o));
}

#[test]
fn devices_listed_in_the_spec_are_allowed() {
    if !v1_host() {
        return;
    }
    // linux.devices asks for /dev/kmsg (c 1:11), which the default list
    // does not allow: the node is made and its cgroup rule added.
    let mut bundle = bundle_with(&["sh", "-c", "ls -l /dev/kmsg; sleep 600"], json!({}));
    bundle.config["linux"]["devices"] =
        json!([{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 420}]);
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let cid = id("specdev");
    create(&b, &bundle, &cid);
    let list = read(cg(&bundle, "devices").join("devices.list"));
    assert!(list.lines().any(|l| l == "c 1:11 rwm"), "{list}");
    assert!(!list.lines().any(|l| l == "c 1:1 rwm"), "{list}");
    b.ok(&["delete", "--force", &cid]);
}

#[test]
fn pause_stops_progress_and_resume_restarts_it() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(&["sh", "-c", "while :; do :; done"], json!({}));
    let b = Berth::new(BERTH).unwrap();
    let cid = id("pause");
    b.run_detached(&bundle, &cid);
    let usage = |b: &Berth| stats(b, &cid)["cpu"]["usage"]["total"].as_u64().unwrap();
    let start = usage(&b);
    eventually("cpu usage to grow", || usage(&b) > start);
    b.ok(&["pause", &cid]);
    assert_eq!(b.state(&cid)["status"], "paused");
    let frozen = usage(&b);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(usage(&b), frozen, "a paused container used CPU");
    b.ok(&["resume", &cid]);
    eventually("cpu usage to grow after resume", || usage(&b) > frozen);
    b.ok(&["delete", "--force", &cid]);
    assert!(!cg(&bundle, "cpuacct").exists());
}

#[test]
fn update_changes_live_limits() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(
        &["sleep", "100"],
        json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 20}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("upd");
    b.run_detached(&bundle, &cid);
    b.ok(&[
        "update",
        "--memory",
        "32m",
        "--cpu-quota",
        "30000",
        "--cpu-period",
        "60000",
        "--cpu-share",
        "256",
        "--pids-limit",
        "10",
        &cid,
    ]);
    let mem = cg(&bundle, "memory");
    assert_eq!(
        read(mem.join("memory.limit_in_bytes")),
        (32 * MIB).to_string()
    );
    assert_eq!(read(cg(&bundle, "cpu").join("cpu.cfs_quota_us")), "30000");
    assert_eq!(read(cg(&bundle, "cpu").join("cpu.cfs_period_us")), "60000");
    assert_eq!(read(cg(&bundle, "cpu").join("cpu.shares")), "256");
    assert_eq!(read(cg(&bundle, "pids").join("pids.max")), "10");
    let s = stats(&b, &cid);
    assert_eq!(s["memory"]["usage"]["limit"], 32 * MIB, "{s}");
    assert_eq!(s["pids"]["limit"], 10, "{s}");

    // --resources: a JSON file of linux.resources; swap raised with memory.
    let f = bundle.path().join("res.json");
    fs::write(
        &f,
        json!({"memory": {"limit": 128 * MIB, "swap": 256 * MIB}, "pids": {"limit": -1}})
            .to_string(),
    )
    .unwrap();
    b.ok(&["update", "--resources", f.to_str().unwrap(), &cid]);
    assert_eq!(
        read(mem.join("memory.limit_in_bytes")),
        (128 * MIB).to_string()
    );
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (256 * MIB).to_string()
        );
        // Lowering both: memory goes first, so memory+swap never drops below it.
        b.ok(&["update", "--memory", "16m", "--memory-swap", "24m", &cid]);
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (16 * MIB).to_string()
        );
        // memory+swap below memory is refused, naming the field; nothing changes.
        let o = b.run(&["update", "--memory-swap", "8m", &cid]);
        assert!(!o.status.success(), "{}", all(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("linux.resources.memory.swap"),
            "{}",
            all(&o)
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (24 * MIB).to_string()
        );
    }
    assert_eq!(read(cg(&bundle, "pids").join("pids.max")), "max");

    // '-' reads standard input. Device rules are ignored by update (as with
    // runc: callers pass whole resources objects), so the device list stays.
    let mut child = b
        .cmd()
        .args(["update", "-r", "-", &cid])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({"cpu": {"shares": 300}, "devices": [{"allow": true, "access": "rwm"}]});
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        input.to_string().as_bytes(),
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", all(&o));
    assert_eq!(read(cg(&bundle, "cpu").join("cpu.shares")), "300");
    let devs = read(cg(&bundle, "devices").join("devices.list"));
    assert!(
        !devs.contains("a *:* rwm"),
        "update changed device rules: {devs}"
    );
    assert!(devs.contains("c 1:3 rwm"), "{devs}");

    // Invalid values: an error naming the field, the live limit untouched.
    let o = b.run(&["update", "--cpu-quota", "10", &cid]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("linux.resources.cpu.quota"),
        "{}",
        all(&o)
    );
    assert_eq!(read(cg(&bundle, "cpu").join("cpu.cfs_quota_us")), "30000");
    let o = b.run(&["update", "--memory", "lots", &cid]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--memory"),
        "{}",
        all(&o)
    );
    b.ok(&["delete", "--force", &cid]);
    // Updating a container that is gone fails.
    assert!(!b.run(&["update", "--memory", "32m", &cid]).status.success());
}

#[test]
fn events_streams_stats_until_the_container_stops() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(&["sh", "-c", "sleep 1"], json!({"pids": {"limit": 9}}));
    let b = Berth::new(BERTH).unwrap();
    let cid = id("ev");
    b.run_detached(&bundle, &cid);
    let o = b
        .cmd()
        .args(["events", "--interval", "100ms", &cid])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", all(&o));
    let evs: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let s = evs
        .iter()
        .find(|e| e["type"] == "stats")
        .unwrap_or_else(|| panic!("no stats in {}", all(&o)));
    assert_eq!(s["id"], cid.as_str());
    assert_eq!(s["data"]["pids"]["limit"], 9);
    assert!(!evs.iter().any(|e| e["type"] == "oom"), "{}", all(&o));
    let o = b.run(&["events", "--interval", "soon", &cid]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--interval"),
        "{}",
        all(&o)
    );
}

/// A create that must fail on `resources`, naming `field`, leaving no state
/// and no cgroup.
fn rejected(resources: Value, field: &str) {
    let bundle = bundle_with(&["true"], resources.clone());
    let b = Berth::new(BERTH).unwrap();
    let cid = id("bad");
    // stderr to a file: a create that wrongly succeeds must not hang us on
    // a pipe its init holds.
    let errf = bundle.path().join("create.err");
    let st = b
        .cmd()
        .args(["create", "--bundle", bundle.path().to_str().unwrap(), &cid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&errf).unwrap())
        .status()
        .unwrap();
    let err = fs::read_to_string(&errf).unwrap();
    assert!(!st.success(), "{resources} accepted: {err}");
    assert!(
        err.contains(field),
        "{resources}: error does not name {field}: {err}"
    );
    assert!(
        !b.root.path().join(&cid).exists(),
        "{resources}: state left behind"
    );
    assert!(
        bundle.cgroup_dirs().is_empty(),
        "{resources}: cgroups left behind: {:?}",
        bundle.cgroup_dirs()
    );
}

#[test]
fn invalid_resources_name_the_field_and_leave_nothing() {
    if !v1_host() {
        return;
    }
    rejected(
        json!({"memory": {"limit": -5}}),
        "linux.resources.memory.limit",
    );
    rejected(
        json!({"memory": {"limit": 64 * MIB, "swap": 32 * MIB}}),
        "linux.resources.memory.swap",
    );
    rejected(json!({"cpu": {"quota": 500}}), "linux.resources.cpu.quota");
    rejected(json!({"cpu": {"period": 10}}), "linux.resources.cpu.period");
    rejected(
        json!({"cpu": {"quota": 10000, "burst": 20000}}),
        "linux.resources.cpu.burst",
    );
    rejected(json!({"cpu": {"shares": 1}}), "linux.resources.cpu.shares");
    rejected(json!({"pids": {"limit": -7}}), "linux.resources.pids.limit");
    rejected(
        json!({"unified": {"memory.max": "1"}}),
        "linux.resources.unified",
    );
    rejected(
        json!({"devices": [{"allow": true, "type": "c", "access": "rwx"}]}),
        "linux.resources.devices[0].access",
    );
    rejected(
        json!({"memory": {"limit": "lots"}}),
        "linux.resources.memory.limit",
    );
    // Valid syntax the kernel refuses: the error comes after the cgroup
    // exists, and create still removes it.
    rejected(json!({"cpu": {"cpus": "4000"}}), "linux.resources.cpu.cpus");
}

/// The v1 hierarchies berth manages on this host (real directories; a name
/// that is a co-mount's symlink is skipped).
fn hierarchies() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "unified")
        .collect();
    v.sort();
    v
}

/// A command that runs `berth <args>` from its own cgroup: `/<parent>` in
/// every v1 hierarchy (`/<parent>/<memory_sub>` in memory when given),
/// made here (and removed with `bundle`), so relative cgroupsPaths resolve
/// under the test's cgroups, never the test runner's.
fn berth_from_own_cgroup(
    b: &Berth,
    parent: &str,
    memory_sub: Option<&str>,
) -> std::process::Command {
    from_own_cgroup(Path::new(BERTH), b.root.path(), parent, memory_sub)
}

/// `runtime --root <root> ...` (berth or runc) run from its own cgroup, as
/// [`berth_from_own_cgroup`].
fn from_own_cgroup(
    runtime: &Path,
    root: &Path,
    parent: &str,
    memory_sub: Option<&str>,
) -> std::process::Command {
    let mut moves = String::new();
    for h in hierarchies() {
        let mut d = Path::new("/sys/fs/cgroup").join(&h).join(parent);
        if h == "memory" {
            if let Some(sub) = memory_sub {
                d = d.join(sub);
            }
        }
        if !d.exists() {
            fs::create_dir_all(&d).unwrap();
            if h == "cpuset" {
                // A new cpuset has no cpus: a process cannot enter it.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(Path::new("/sys/fs/cgroup/cpuset").join(f)).unwrap();
                    fs::write(d.join(f), v.trim()).unwrap();
                }
            }
        }
        moves += &format!("echo $$ > {}/cgroup.procs && ", d.display());
    }
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("{moves}exec \"$@\""))
        .arg("sh")
        .arg(runtime)
        .arg("--root")
        .arg(root);
    c
}

/// The host pid of `cid`'s init is in `/<rel>` of every hierarchy.
fn assert_in_cgroup(b: &Berth, cid: &str, rel: &str) {
    let pid = b.state(cid)["pid"].to_string();
    for h in hierarchies() {
        let procs = Path::new("/sys/fs/cgroup")
            .join(&h)
            .join(rel)
            .join("cgroup.procs");
        let got = fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
        assert!(
            got.lines().any(|l| l == pid),
            "{cid}: pid {pid} not in {}: {got:?}",
            procs.display()
        );
    }
}

/// What runc 1.1 (cgroupfs driver) was seen to do on this host, run from a
/// shell in its own cgroups: a relative cgroupsPath is joined to the
/// caller's own cgroup in each hierarchy, an empty or missing one is
/// `<own cgroup>/<id>`, an absolute one is taken from the roots.
#[test]
fn relative_and_default_cgroup_paths_are_under_the_callers_cgroup() {
    if !v1_host() {
        return;
    }
    let mut bundle = bundle_with(
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; sleep 300",
        ],
        json!({"memory": {"limit": 48 * MIB}}),
    );
    let parent = bundle.cgroup_parent.clone();
    let b = Berth::new(BERTH).unwrap();
    let run = |bundle: &mut Bundle, path: Option<&str>, cid: &str, memory_sub: Option<&str>| {
        match path {
            Some(p) => bundle.config["linux"]["cgroupsPath"] = json!(p),
            None => {
                bundle.config["linux"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cgroupsPath");
            }
        }
        bundle.write().unwrap();
        let st = berth_from_own_cgroup(&b, &parent, memory_sub)
            .args([
                "run",
                "-d",
                "--bundle",
                bundle.path().to_str().unwrap(),
                cid,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "run {cid} with cgroupsPath {path:?}");
    };
    // Relative: under the caller's cgroup, parents made and removed.
    let cid = id("rel");
    run(&mut bundle, Some("a/b"), &cid, None);
    let rel = format!("{parent}/a/b");
    assert_in_cgroup(&b, &cid, &rel);
    assert_eq!(
        read(
            Path::new("/sys/fs/cgroup/memory")
                .join(&rel)
                .join("memory.limit_in_bytes")
        ),
        (48 * MIB).to_string()
    );
    // delete from another cgroup (the test's) finds it: the path is recorded.
    b.ok(&["delete", "--force", &cid]);
    for h in hierarchies() {
        assert!(
            !Path::new("/sys/fs/cgroup")
                .join(&h)
                .join(&parent)
                .join("a")
                .exists(),
            "{h}"
        );
    }
    // Empty and missing: <caller's cgroup>/<id>.
    for (path, tag) in [(Some(""), "empty"), (None, "none")] {
        let cid = id(tag);
        run(&mut bundle, path, &cid, None);
        assert_in_cgroup(&b, &cid, &format!("{parent}/{cid}"));
        b.ok(&["delete", "--force", &cid]);
        assert!(!Path::new("/sys/fs/cgroup/pids")
            .join(&parent)
            .join(&cid)
            .exists());
    }
    // Absolute: from the hierarchy roots, wherever the caller is.
    let cid = id("abs");
    run(&mut bundle, Some(&format!("/{parent}/abs")), &cid, None);
    assert_in_cgroup(&b, &cid, &format!("{parent}/abs"));
    b.ok(&["delete", "--force", &cid]);
    // berth records one path for all hierarchies: a caller whose memory
    // cgroup differs from the others' gets their common ancestor (runc
    // would use /<parent>/m/a/b in memory).
    let cid = id("uneven");
    run(&mut bundle, Some("a/b"), &cid, Some("m"));
    assert_in_cgroup(&b, &cid, &rel);
    b.ok(&["delete", "--force", &cid]);
    assert!(!Path::new("/sys/fs/cgroup/memory").join(&rel).exists());
}

/// containerd sends `slice:prefix:name` for a cgroup parent ending in
/// `.slice` whatever the driver; runc 1.1's cgroupfs driver takes it as one
/// relative directory of that literal name under the caller's cgroup. berth
/// makes the same directories, checked side by side with Debian's runc.
#[test]
fn the_systemd_form_under_cgroupfs_is_the_directory_runc_makes() {
    if !v1_host() {
        return;
    }
    let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipping: no runc to compare with");
        return;
    };
    let mut bundle = bundle_with(&["sleep", "300"], json!({}));
    let parent = bundle.cgroup_parent.clone();
    let runc_root = tempfile::tempdir().unwrap();
    let b = Berth::new(BERTH).unwrap();
    // Per runtime: the hierarchies (unified included) holding the container's
    // cgroup at <parent>/<the literal cgroupsPath>.
    let mut made = Vec::new();
    for (runtime, root) in [
        (Path::new(BERTH), b.root.path()),
        (runc.as_path(), runc_root.path()),
    ] {
        let cid = id("sysd");
        let path = format!("test.slice:cri-containerd:{cid}");
        bundle.config["linux"]["cgroupsPath"] = json!(path);
        bundle.write().unwrap();
        // The detached container keeps the stdio it is given: a file, so
        // nothing waits for it to close.
        let err = tempfile::tempfile().unwrap();
        let st = from_own_cgroup(runtime, root, &parent, None)
            .args([
                "run",
                "-d",
                "--bundle",
                bundle.path().to_str().unwrap(),
                &cid,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        assert!(st.success(), "{}: {}", runtime.display(), {
            use std::io::{Read, Seek};
            let mut err = err;
            let mut s = String::new();
            err.rewind().unwrap();
            err.read_to_string(&mut s).unwrap();
            s
        });
        let mut hs: Vec<String> = fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|h| {
                Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join(&parent)
                    .join(&path)
                    .is_dir()
            })
            .collect();
        hs.sort();
        assert!(
            hs.contains(&"memory".to_string()),
            "{}: {hs:?}",
            runtime.display()
        );
        made.push(hs);
        let o = std::process::Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", &cid])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", runtime.display(), all(&o));
        for h in hierarchies() {
            let d = Path::new("/sys/fs/cgroup")
                .join(&h)
                .join(&parent)
                .join(&path);
            assert!(!d.exists(), "{} left {}", runtime.display(), d.display());
        }
    }
    assert_eq!(made[0], made[1], "berth's hierarchies, then runc's");
}

/// This host mounts v1 controllers and a bare cgroup2 at unified: berth
/// must call it hybrid. /proc/self/mountinfo is the ground truth.
#[test]
fn this_host_is_detected_as_hybrid() {
    if !v1_host() {
        return;
    }
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts: Vec<(String, String)> = mi
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            Some((
                pre.split(' ').nth(4)?.to_string(),
                post.split(' ').next()?.to_string(),
            ))
        })
        .collect();
    let at = |p: &str| {
        mounts
            .iter()
            .rev()
            .find(|(m, _)| m == p)
            .map(|(_, t)| t.as_str())
    };
    assert_ne!(at("/sys/fs/cgroup"), Some("cgroup2"), "{mi}");
    assert_eq!(at("/sys/fs/cgroup/unified"), Some("cgroup2"), "{mi}");
    assert!(
        mounts
            .iter()
            .any(|(m, t)| t == "cgroup" && m.starts_with("/sys/fs/cgroup/")),
        "no v1 hierarchy: {mi}"
    );
    let root = Path::new("/sys/fs/cgroup");
    assert_eq!(
        berth_cgroups::detect_mode(root),
        berth_cgroups::Mode::Hybrid
    );
    assert_eq!(
        berth_cgroups::mode_from_mountinfo(&mi, root),
        berth_cgroups::Mode::Hybrid
    );
}

#[test]
fn delete_removes_the_cgroup_even_when_processes_linger() {
    if !v1_host() {
        return;
    }
    // Without a pid namespace the init's exit does not take its child along:
    // the sleep stays in the container's cgroup after the container stops.
    let mut bundle = bundle_with(&["sh", "-c", "sleep 300 & exit 0"], json!({}));
    bundle.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let cid = id("linger");
    create(&b, &bundle, &cid);
    b.ok(&["start", &cid]);
    eventually("the init to exit", || b.state(&cid)["status"] == "stopped");
    let procs = cg(&bundle, "pids").join("cgroup.procs");
    let lingering: Vec<i32> = read(procs.clone())
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(lingering.len(), 1, "expected the sleep to linger");
    b.ok(&["delete", &cid]);
    for ctrl in ["pids", "memory", "cpu", "devices", "freezer"] {
        assert!(!cg(&bundle, ctrl).exists(), "{ctrl} cgroup left behind");
    }
    eventually("the lingering process to die", || {
        !Path::new(&format!("/proc/{}", lingering[0])).exists()
            || fs::read_to_string(format!("/proc/{}/stat", lingering[0]))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

/// A container that made cgroups of its own (a nested runtime, systemd):
/// delete --force kills what runs in them and removes them, deepest first.
#[test]
fn delete_removes_sub_cgroups_the_container_made() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(&["sleep", "300"], json!({}));
    let b = Berth::new(BERTH).unwrap();
    let cid = id("subcg");
    b.run_detached(&bundle, &cid);
    // A process of the container, moved into a child cgroup of its cgroup.
    let pidf = bundle.path().join("exec.pid");
    let st = b
        .cmd()
        .args([
            "exec",
            "-d",
            "--pid-file",
            pidf.to_str().unwrap(),
            &cid,
            "sleep",
            "300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let pid = read(pidf);
    let mut made = Vec::new();
    for h in hierarchies() {
        let sub = cg(&bundle, &h).join("sub");
        fs::create_dir_all(sub.join("deeper")).unwrap();
        made.push(sub.clone());
        // A new cpuset child has no cpus, so nothing can enter it.
        if h != "cpuset" {
            fs::write(sub.join("cgroup.procs"), &pid).unwrap();
        }
    }
    assert!(read(cg(&bundle, "pids").join("sub/cgroup.procs"))
        .lines()
        .any(|l| l == pid));
    // ps lists it too: the sub-cgroup is the container's.
    let ps: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &cid])).unwrap();
    assert!(ps.contains(&pid.parse().unwrap()), "{ps:?}");
    b.ok(&["delete", "--force", &cid]);
    for d in &made {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    for h in hierarchies() {
        assert!(!cg(&bundle, &h).exists(), "{h} cgroup left behind");
    }
    eventually("the process in the sub-cgroup to die", || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}

/// update writes the merged resources: a value given alone keeps its
/// recorded partner (swap and memory, period and quota).
#[test]
fn update_of_one_value_keeps_the_recorded_others() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(
        &["sleep", "300"],
        json!({"memory": {"limit": 64 * MIB, "swap": 128 * MIB},
               "cpu": {"quota": 20000, "period": 100000}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("merge");
    b.run_detached(&bundle, &cid);
    let mem = cg(&bundle, "memory");
    let cpu = cg(&bundle, "cpu");
    let memsw = mem.join("memory.memsw.limit_in_bytes").exists();
    if memsw {
        b.ok(&["update", "--memory-swap", "192m", &cid]);
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (192 * MIB).to_string()
        );
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64 * MIB).to_string()
        );
        // The recorded swap total is checked against a new memory limit.
        let o = b.run(&["update", "--memory", "256m", &cid]);
        assert!(!o.status.success(), "{}", all(&o));
        assert!(
            all(&o).contains("linux.resources.memory.swap"),
            "{}",
            all(&o)
        );
    }
    b.ok(&["update", "--memory", "32m", &cid]);
    assert_eq!(
        read(mem.join("memory.limit_in_bytes")),
        (32 * MIB).to_string()
    );
    if memsw {
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (192 * MIB).to_string()
        );
    }
    b.ok(&["update", "--cpu-period", "50000", &cid]);
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "50000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "20000");
    b.ok(&["update", "--cpu-quota", "30000", &cid]);
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "50000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "30000");
    // A quota the kernel's minimum refuses names the field; nothing changes.
    let o = b.run(&["update", "--cpu-quota", "999", &cid]);
    assert!(all(&o).contains("linux.resources.cpu.quota"), "{}", all(&o));
    let o = b.run(&["update", "--cpu-period", "999", &cid]);
    assert!(
        all(&o).contains("linux.resources.cpu.period"),
        "{}",
        all(&o)
    );
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "30000");

    // cpuset: one cpu where the host has more, then all again.
    let cpus = read(PathBuf::from("/sys/fs/cgroup/cpuset/cpuset.cpus"));
    let cpuset = cg(&bundle, "cpuset");
    if cpus != "0" {
        b.ok(&["update", "--cpuset-cpus", "0", &cid]);
        assert_eq!(read(cpuset.join("cpuset.cpus")), "0");
        let o = b.run(&["exec", &cid, "cat", "/proc/self/status"]);
        let status = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            status.lines().any(|l| l == "Cpus_allowed_list:\t0"),
            "{status}"
        );
        b.ok(&["update", "--cpuset-cpus", &cpus, &cid]);
        assert_eq!(read(cpuset.join("cpuset.cpus")), cpus);
    }
    // blkio weight: written where the I/O scheduler has a weight file (CFQ
    // or BFQ), else refused naming the field.
    let blk = cg(&bundle, "blkio");
    let weight = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .map(|f| blk.join(f))
        .find(|f| f.exists());
    let o = b.run(&["update", "--blkio-weight", "300", &cid]);
    match weight {
        Some(f) => {
            assert!(o.status.success(), "{}", all(&o));
            assert!(
                read(f.clone()).split_whitespace().any(|w| w == "300"),
                "{}: {}",
                f.display(),
                read(f.clone())
            );
        }
        None => {
            assert!(!o.status.success());
            assert!(
                all(&o).contains("linux.resources.blockIO.weight"),
                "{}",
                all(&o)
            );
        }
    }
    let s = stats(&b, &cid);
    assert_eq!(s["memory"]["usage"]["limit"], 32 * MIB, "{s}");
    b.ok(&["delete", "--force", &cid]);
}

#[test]
fn blkio_throttles_and_missing_controllers() {
    if !v1_host() {
        return;
    }
    // Any block device of the host will do: the rule is only written.
    let dev = fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find_map(|e| fs::read_to_string(e.path().join("dev")).ok())
        .map(|s| s.trim().to_string());
    if let (Some(dev), true) = (dev, Path::new("/sys/fs/cgroup/blkio").exists()) {
        let (maj, min) = dev.split_once(':').unwrap();
        let (maj, min): (i64, i64) = (maj.parse().unwrap(), min.parse().unwrap());
        let bundle = bundle_with(
            &["cat", "/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device"],
            json!({"blockIO": {
                "throttleReadBpsDevice": [{"major": maj, "minor": min, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": maj, "minor": min, "rate": 100}]
            }}),
        );
        let b = Berth::new(BERTH).unwrap();
        let o = b.run_fg(&bundle, &id("blkio"));
        assert!(o.status.success(), "{}", all(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("{dev} 1048576"),
            "{}",
            all(&o)
        );
    }
    // A limit for a controller the host does not mount is an error naming
    // the field, not silently dropped.
    if !Path::new("/sys/fs/cgroup/hugetlb").exists() {
        rejected(
            json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}),
            "linux.resources.hugepageLimits[0]",
        );
    }
    if !Path::new("/sys/fs/cgroup/net_cls").exists() {
        rejected(
            json!({"network": {"classID": 1048577}}),
            "linux.resources.network.classID",
        );
    }
}

#[test]
fn oom_with_the_killer_disabled_is_reported_and_delete_still_works() {
    if !v1_host() {
        return;
    }
    // With the OOM killer off the hog waits at the limit instead of dying:
    // the eventfd still fires, and the counter of kills stays at zero.
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        ],
        json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB, "disableOOMKiller": true}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("oomoff");
    create(&b, &bundle, &cid);
    let mut ev: Child = b
        .cmd()
        .args(["events", "--interval", "50ms", &cid])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ev.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "stats");
    b.ok(&["start", &cid]);
    // Stats keep coming every 50 ms, so this loop never blocks for long.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    for l in lines.by_ref() {
        let e: Value = serde_json::from_str(&l.unwrap()).unwrap();
        if e["type"] == "oom" {
            seen = true;
            break;
        }
        assert!(Instant::now() < deadline, "no oom event");
    }
    assert!(seen, "events ended without an oom event");
    assert_eq!(b.state(&cid)["status"], "running");
    assert_eq!(stats(&b, &cid)["memory"]["oomKills"], 0);
    b.ok(&["delete", "--force", &cid]);
    // The stream ends once the container is gone.
    for _ in lines {}
    assert!(ev.wait().unwrap().success());
    assert!(!cg(&bundle, "memory").exists());
}

// Accounting with real values: what a user of `berth events --stats` (and
// of the library's Manager::stats, which it prints) would check.

/// The library's view of the container's cgroup (what `events` prints).
fn manager(bundle: &Bundle) -> berth_cgroups::Manager {
    let p = bundle.config["linux"]["cgroupsPath"].as_str().unwrap();
    berth_cgroups::Manager::new(
        Path::new("/sys/fs/cgroup"),
        &berth_cgroups::normalize_path(p).unwrap(),
    )
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

const MIB_U: u64 = 1 << 20;

/// Transparent huge pages for every anonymous mapping: one fault per 2 MiB.
fn thp_always() -> bool {
    fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"))
}

#[test]
fn stats_show_the_memory_a_container_holds() {
    if !v1_host() {
        return;
    }
    // busybox tail keeps everything since the last newline: 40 MiB of
    // zeros without one stay in its heap (anonymous memory) while the
    // writer sleeps with the pipe open.
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "{ head -c 41943040 /dev/zero; sleep 1000; } | tail & sleep 1000",
        ],
        json!({}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("memstats");
    b.run_detached(&bundle, &cid);
    let forty = 40 * MIB_U;
    let mut s = Value::Null;
    eventually("40 MiB of anonymous memory in rss", || {
        s = stats(&b, &cid);
        num(&s, &["memory", "rss"]) >= forty
    });
    let usage = num(&s, &["memory", "usage", "usage"]);
    let ws = num(&s, &["memory", "workingSet"]);
    let rss = num(&s, &["memory", "rss"]);
    let faults = num(&s, &["memory", "pageFaults"]);
    assert!(usage >= forty, "usage below 40 MiB: {s}");
    // The shell, busybox and tail's buffer growth: far below 100 MiB.
    assert!(usage < 100 * MIB_U, "usage implausibly high: {s}");
    assert!(ws >= forty && ws <= usage, "working set: {s}");
    // rss is part of usage (v1 usage is batched per cpu: a little slack).
    assert!(rss <= usage + MIB_U, "rss above usage: {s}");
    // Every page of the buffer was touched once: one fault a 4 KiB page
    // (unless huge pages back all anonymous memory).
    let min_faults = if thp_always() {
        1
    } else {
        forty / 4096 * 9 / 10
    };
    assert!(faults >= min_faults, "{faults} page faults for 40 MiB: {s}");
    assert!(num(&s, &["memory", "majorPageFaults"]) <= faults, "{s}");
    assert!(num(&s, &["memory", "usage", "max"]) >= usage, "peak: {s}");
    assert_eq!(s["memory"]["oomKills"], 0, "{s}");
    // The library's reading of the same cgroup agrees.
    let m = manager(&bundle).stats().unwrap();
    assert!(m.memory.rss_bytes >= forty, "{m:?}");
    assert!(m.memory.working_set_bytes >= forty, "{m:?}");
    assert_eq!(m.memory.limit_bytes, u64::MAX, "no limit was set: {m:?}");

    // 40 MiB more in a file on the container's /dev/shm (tmpfs: shmem,
    // charged as cache, never inactive file pages): usage, cache and the
    // working set all grow by it, rss does not.
    let o = b.run(&[
        "exec",
        &cid,
        "sh",
        "-c",
        "head -c 41943040 /dev/zero > /dev/shm/blob",
    ]);
    assert!(o.status.success(), "{}", all(&o));
    let s2 = stats(&b, &cid);
    let cache = num(&s2, &["memory", "cache"]);
    assert!(cache >= forty, "40 MiB of shmem not in cache: {s2}");
    assert!(
        num(&s2, &["memory", "usage", "usage"]) >= usage + forty - MIB_U,
        "usage did not grow by 40 MiB: before {s}, after {s2}"
    );
    assert!(
        num(&s2, &["memory", "workingSet"]) >= ws + forty - MIB_U,
        "shmem is not in the working set: before {s}, after {s2}"
    );
    assert!(
        num(&s2, &["memory", "rss"]) < rss + 4 * MIB_U,
        "a tmpfs file counted as rss: before {s}, after {s2}"
    );
    b.ok(&["delete", "--force", &cid]);
}

/// utime + stime of a host pid, in seconds (/proc/<pid>/stat fields 14, 15).
fn proc_cpu_secs(pid: i64) -> f64 {
    let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn stats_count_the_cpu_time_of_a_busy_loop() {
    if !v1_host() {
        return;
    }
    // The init spins (builtins only, no forks) from /tmp/go until /tmp/stop,
    // both made by the test in the rootfs.
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; \
             while [ ! -e /tmp/stop ]; do :; done; sleep 1000",
        ],
        json!({}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("cpustats");
    let pid = b.run_detached(&bundle, &cid) as i64;
    let before = stats(&b, &cid);
    let t0 = Instant::now();
    let cpu0 = proc_cpu_secs(pid);
    fs::write(bundle.rootfs().join("tmp/go"), "").unwrap();
    // Spin until the kernel's own per-task account says 0.5 s of CPU: on a
    // busy machine that takes longer than 0.5 s of wall time.
    eventually("the loop to use 0.5 s of CPU", || {
        proc_cpu_secs(pid) - cpu0 >= 0.5
    });
    fs::write(bundle.rootfs().join("tmp/stop"), "").unwrap();
    let task = proc_cpu_secs(pid) - cpu0;
    let after = stats(&b, &cid);
    let wall = t0.elapsed().as_secs_f64();
    let ns = |v: &Value, k: &str| num(v, &["cpu", "usage", k]);
    let used = (ns(&after, "total") - ns(&before, "total")) as f64 / 1e9;
    // A tick (10 ms) of rounding in /proc, the loop's last few iterations.
    assert!(
        used >= 0.45 && used + 0.02 >= task,
        "cgroup CPU {used:.3} s for a loop the kernel says used {task:.3} s: \
         before {before}, after {after}"
    );
    // One spinning thread cannot use more than the wall time that passed.
    assert!(
        used <= wall + 0.1,
        "cgroup CPU {used:.3} s in {wall:.3} s of wall time: {after}"
    );
    // user + kernel is the total (the split is tick-based: loose bounds).
    let split = (ns(&after, "user") + ns(&after, "kernel")) as f64;
    let total = ns(&after, "total") as f64;
    assert!(
        (split - total).abs() <= total * 0.25 + 5e7,
        "user + kernel {split} vs total {total}: {after}"
    );
    assert!(ns(&after, "user") > ns(&before, "user"), "{after}");
    // No quota: no CFS periods.
    assert_eq!(num(&after, &["cpu", "throttling", "periods"]), 0, "{after}");
    let m = manager(&bundle).stats().unwrap();
    assert!(m.cpu.usage_total_ns >= ns(&after, "total"), "{m:?}");
    b.ok(&["delete", "--force", &cid]);
}

#[test]
fn stats_count_the_processes_started() {
    if !v1_host() {
        return;
    }
    let bundle = bundle_with(
        &["sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000 & wait"],
        json!({"pids": {"limit": 20}}),
    );
    let b = Berth::new(BERTH).unwrap();
    let cid = id("pidstats");
    b.run_detached(&bundle, &cid);
    let current = |b: &Berth| num(&stats(b, &cid), &["pids", "current"]);
    // The shell and its three sleeps.
    eventually("4 processes", || current(&b) == 4);
    let st = b
        .cmd()
        .args(["exec", "-d", &cid, "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    eventually("5 processes after an exec", || current(&b) == 5);
    let ps: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &cid])).unwrap();
    assert_eq!(ps.len(), 5, "{ps:?}");
    let s = stats(&b, &cid);
    assert_eq!(s["pids"]["limit"], 20, "{s}");
    let m = manager(&bundle).stats().unwrap();
    assert_eq!((m.pids.current, m.pids.limit), (5, 20), "{m:?}");
    // A process that exits is no longer counted.
    b.ok(&["kill", &cid, "KILL"]);
    eventually("the container to stop", || {
        b.state(&cid)["status"] == "stopped"
    });
    eventually("no processes", || {
        manager(&bundle).stats().unwrap().pids.current == 0
    });
    b.ok(&["delete", "--force", &cid]);
}

/// The whole disk (maj, min) holding `dir`, or None when its filesystem is
/// not on a block device (tmpfs, overlay, 9p, btrfs subvolumes).
fn disk_of(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(dir).ok()?.dev();
    let (maj, min) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    let sys = fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    // A partition's parent directory is its disk.
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    let (a, b) = fs::read_to_string(disk.join("dev"))
        .ok()?
        .trim()
        .split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// v1 blkio on this kernel (6.x) counts a device's bytes and ops in
/// blkio.throttle.io_service_bytes/io_serviced only once throttling is
/// configured on that device's queue (by any cgroup): on this host a
/// container's O_DIRECT writes to the root disk read 0 without a rule. The
/// test gives its own cgroup a rule too high to ever limit (1 TiB/s); on
/// such a device the counters must show what the container wrote and read.
#[test]
fn stats_count_io_to_a_disk_backed_bind_mount() {
    if !v1_host() || !Path::new("/sys/fs/cgroup/blkio").exists() {
        return;
    }
    let mut bundle = bundle_with(&["sleep", "1000"], json!({}));
    let data = bundle.path().join("data");
    fs::create_dir(&data).unwrap();
    let Some((major, minor)) = disk_of(&data) else {
        eprintln!("skipping io: {} is not on a block device", data.display());
        return;
    };
    let huge = 1u64 << 40;
    let rule = json!([{"major": major, "minor": minor, "rate": huge}]);
    bundle.config["linux"]["resources"]["blockIO"] =
        json!({"throttleReadBpsDevice": rule, "throttleWriteBpsDevice": rule});
    bundle.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind",
        "source": data.to_str().unwrap(), "options": ["rbind", "rw"]
    }));
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let cid = id("iostats");
    b.run_detached(&bundle, &cid);
    let before = stats(&b, &cid);
    let io = |v: &Value, k: &str| num(v, &["blkio", k]);
    assert_eq!(io(&before, "writeBytes"), 0, "{before}");
    let eight = 8 * MIB_U;
    // Buffered writes, then fsync: the container's own flush is its I/O.
    let o = b.run(&[
        "exec",
        &cid,
        "dd",
        "if=/dev/zero",
        "of=/data/f",
        "bs=1M",
        "count=8",
        "conv=fsync",
    ]);
    assert!(o.status.success(), "{}", all(&o));
    let w = stats(&b, &cid);
    assert!(
        io(&w, "writeBytes") >= eight,
        "8 MiB written and fsync'd: {w}"
    );
    // The data plus the filesystem's journal and metadata, not more.
    assert!(io(&w, "writeBytes") < eight + 64 * MIB_U, "{w}");
    assert!(io(&w, "writeOps") >= 1, "{w}");
    // Reads that go to the disk (O_DIRECT; the file is in the page cache).
    let o = b.run(&[
        "exec",
        &cid,
        "dd",
        "if=/data/f",
        "of=/dev/null",
        "bs=1M",
        "iflag=direct",
    ]);
    assert!(o.status.success(), "{}", all(&o));
    let r = stats(&b, &cid);
    assert!(
        io(&r, "readBytes") >= io(&w, "readBytes") + eight,
        "8 MiB read: {r}"
    );
    assert!(io(&r, "readOps") > io(&w, "readOps"), "{r}");
    let m = manager(&bundle).stats().unwrap();
    assert!(
        m.io.read_bytes >= eight && m.io.write_bytes >= eight,
        "{m:?}"
    );
    b.ok(&["delete", "--force", &cid]);
}
