//! linux.seccomp with real containers: every action a profile can name,
//! argument conditions, the built-in default profile, SCMP_ACT_NOTIFY with a
//! real agent on a unix socket, and profiles berth must refuse.

use berth_testutil::{random_suffix, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth() -> Berth {
    Berth::new(BERTH).expect("berth root")
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix())
}

fn all(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `berth run` in the foreground; the container's stdio is our pipes.
fn run_fg(b: &Berth, bundle: &Bundle) -> Output {
    b.cmd()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(id("sc"))
        .stdin(Stdio::null())
        .output()
        .expect("spawning berth run")
}

/// A static program that tries the syscalls the tests care about, one per
/// argument, and prints `<name>: ok` or `<name>: <strerror>`.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long r;
        if (!strcmp(a, "unshare-user")) r = unshare(CLONE_NEWUSER);
        else if (!strcmp(a, "unshare-net")) r = unshare(CLONE_NEWNET);
        else if (!strcmp(a, "unshare-files")) r = unshare(CLONE_FILES);
        else if (!strcmp(a, "socket-inet")) r = socket(AF_INET, SOCK_STREAM, 0);
        else if (!strcmp(a, "socket-unix")) r = socket(AF_UNIX, SOCK_STREAM, 0);
        else if (!strcmp(a, "socket-vsock")) r = socket(40, SOCK_STREAM, 0);
        else if (!strcmp(a, "personality-linux")) r = personality(PER_LINUX);
        else if (!strcmp(a, "personality-norandom")) r = personality(ADDR_NO_RANDOMIZE);
        else if (!strcmp(a, "mkdir")) r = mkdir("/tmp/probe-dir", 0755);
        /* Invalid arguments the kernel checks first: EINVAL when the
           filter lets the call through, EPERM when it does not. */
        else if (!strcmp(a, "kcmp")) r = syscall(SYS_kcmp, getpid(), getpid(), 100, 0, 0);
        else if (!strcmp(a, "pidfd_getfd")) r = syscall(SYS_pidfd_getfd, -1, 0, 1);
        else if (!strcmp(a, "process_madvise")) r = syscall(SYS_process_madvise, -1, 0, 0, 0, 1);
        else { printf("%s: unknown probe\n", a); continue; }
        printf("%s: %s\n", a, r < 0 ? strerror(errno) : "ok");
    }
    return 0;
}
"#;

/// The probe, compiled once per test binary.
fn probe() -> &'static Path {
    static PROBE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = PROBE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("probe.c");
        let out = dir.path().join("probe");
        fs::write(&c, PROBE_C).unwrap();
        let o = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&c)
            .output()
            .expect("gcc is needed by the seccomp tests");
        assert!(o.status.success(), "gcc failed: {}", all(&o));
        (dir, out)
    });
    p
}

/// A bundle running `args` with `seccomp` as linux.seccomp and the probe
/// at /probe.
fn bundle_with(args: &[&str], seccomp: Option<Value>) -> Bundle {
    let mut b = Bundle::new(args).expect("bundle");
    fs::copy(probe(), b.rootfs().join("probe")).unwrap();
    if let Some(s) = seccomp {
        b.config["linux"]["seccomp"] = s;
    }
    b.write().unwrap();
    b
}

/// Lines of the probe's output as (probe, result).
fn probe_results(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn result_of<'a>(res: &'a [(String, String)], probe: &str) -> &'a str {
    res.iter()
        .find(|(p, _)| p == probe)
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("no result for {probe} in {res:?}"))
}

#[test]
fn errno_action_returns_errno_ret() {
    let b = berth();
    let bundle = bundle_with(
        &["sh", "-c", "mkdir /tmp/x; echo rc=$?; echo still-running"],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": libc::ENOSPC}]
        })),
    );
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(
        text.contains("rc=1") && text.contains("still-running"),
        "{text}"
    );
}

#[test]
fn default_errno_ret_applies_to_the_default_action() {
    // A default-deny profile: what it does not list fails with
    // defaultErrnoRet.
    let b = berth();
    let bundle = bundle_with(
        &["/probe", "mkdir", "socket-unix"],
        Some(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EXDEV,
            "syscalls": [{"names": berth_default_allow_without(&["mkdir", "mkdirat"]),
                          "action": "SCMP_ACT_ALLOW"}]
        })),
    );
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let res = probe_results(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        result_of(&res, "mkdir"),
        "Invalid cross-device link",
        "{text}"
    );
    assert_eq!(result_of(&res, "socket-unix"), "ok", "{text}");
}

/// Names the default profile allows unconditionally, minus `except`, plus
/// socket (conditional in the default profile).
fn berth_default_allow_without(except: &[&str]) -> Vec<String> {
    let p = default_profile(&[]);
    let mut names: Vec<String> = p["syscalls"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .filter(|n| !except.contains(&n.as_str()))
        .collect();
    names.push("socket".into());
    names
}

#[test]
fn kill_process_kills_the_container() {
    let b = berth();
    let bundle = bundle_with(
        &["mkdir", "/tmp/x"],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]
        })),
    );
    let o = run_fg(&b, &bundle);
    // berth run reports a death by signal as 128 + signal: SIGSYS is 31.
    assert_eq!(o.status.code(), Some(128 + libc::SIGSYS), "{}", all(&o));
}

#[test]
fn log_action_allows() {
    let b = berth();
    let bundle = bundle_with(
        &[
            "sh",
            "-c",
            "mkdir /dev/shm/x && test -d /dev/shm/x && echo made",
        ],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_LOG"}]
        })),
    );
    let o = run_fg(&b, &bundle);
    assert!(o.status.success(), "{}", all(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("made"),
        "{}",
        all(&o)
    );
}

#[test]
fn argument_conditions_select_calls() {
    let b = berth();
    let bundle = bundle_with(
        &[
            "/probe",
            "socket-inet",
            "socket-unix",
            "personality-linux",
            "personality-norandom",
        ],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
                 "args": [{"index": 0, "value": libc::AF_INET, "op": "SCMP_CMP_EQ"}]},
                // personality: refuse any flag in the ADDR_NO_RANDOMIZE bit.
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 0x0040000, "valueTwo": 0x0040000,
                           "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        })),
    );
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let res = probe_results(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        result_of(&res, "socket-inet"),
        "Permission denied",
        "{text}"
    );
    assert_eq!(result_of(&res, "socket-unix"), "ok", "{text}");
    assert_eq!(result_of(&res, "personality-linux"), "ok", "{text}");
    assert_eq!(
        result_of(&res, "personality-norandom"),
        "Operation not permitted",
        "{text}"
    );
}

/// `berth seccomp-default` for a process with `caps`.
fn default_profile(caps: &[&str]) -> Value {
    let mut c = Command::new(BERTH);
    c.arg("seccomp-default");
    for cap in caps {
        c.args(["--cap", cap]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", all(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

const WORKLOAD: &str = "echo hello | wc -c; ls / >/dev/null && echo ls-ok; \
     cat /proc/self/status >/dev/null && echo cat-ok; date >/dev/null && echo date-ok; \
     sleep 0.01 && echo sleep-ok; (echo sub) && echo fork-ok; \
     /probe unshare-user unshare-net unshare-files socket-inet socket-unix socket-vsock \
     personality-linux personality-norandom";

#[test]
fn default_profile_blocks_namespaces_not_workloads() {
    let b = berth();
    // The capabilities the container's bounding set has, as the daemon does.
    let bundle0 = bundle_with(&["sh", "-c", WORKLOAD], None);
    let caps: Vec<String> = bundle0.config["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();

    // Without seccomp an unprivileged container may create a user namespace:
    // the profile is what stops it.
    let o = run_fg(&b, &bundle0);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let res = probe_results(&String::from_utf8_lossy(&o.stdout));
    // Hosts that forbid unprivileged user namespaces (a sysctl) refuse it
    // anyway; the profile must refuse it either way.
    if result_of(&res, "unshare-user") != "ok" {
        eprintln!("note: this host refuses user namespaces without seccomp: {text}");
    }

    let bundle = bundle_with(&["sh", "-c", WORKLOAD], Some(default_profile(&caps)));
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("6\n"), "{text}");
    for ok in ["ls-ok", "cat-ok", "date-ok", "sleep-ok", "fork-ok"] {
        assert!(out.contains(ok), "{ok} missing: {text}");
    }
    let res = probe_results(&out);
    let eperm = "Operation not permitted";
    assert_eq!(result_of(&res, "unshare-user"), eperm, "{text}");
    assert_eq!(result_of(&res, "unshare-net"), eperm, "{text}");
    assert_eq!(result_of(&res, "unshare-files"), "ok", "{text}");
    assert_eq!(result_of(&res, "socket-inet"), "ok", "{text}");
    assert_eq!(result_of(&res, "socket-unix"), "ok", "{text}");
    assert_eq!(result_of(&res, "socket-vsock"), eperm, "{text}");
    assert_eq!(result_of(&res, "personality-linux"), "ok", "{text}");
    assert_eq!(result_of(&res, "personality-norandom"), eperm, "{text}");
}

#[test]
fn default_profile_without_no_new_privileges() {
    // Loaded before the init drops privileges: its own setgroups, setresuid,
    // capset and prctl calls go through the profile too.
    let b = berth();
    let mut bundle = bundle_with(
        &["sh", "-c", "id -u; /probe unshare-user"],
        Some(default_profile(&[])),
    );
    bundle.config["process"]["noNewPrivileges"] = json!(false);
    bundle.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    bundle.config["linux"]["seccomp"]["flags"] = json!([
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
    ]);
    bundle.write().unwrap();
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("1000\n"), "{text}");
    assert!(
        out.contains("unshare-user: Operation not permitted"),
        "{text}"
    );
}

#[test]
fn default_profile_with_sys_admin_allows_namespaces() {
    let b = berth();
    let mut bundle = bundle_with(&["/probe", "unshare-net"], None);
    for set in ["bounding", "effective", "permitted"] {
        bundle.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_ADMIN"));
    }
    bundle.config["linux"]["seccomp"] = default_profile(&["CAP_SYS_ADMIN"]);
    bundle.write().unwrap();
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    let res = probe_results(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(result_of(&res, "unshare-net"), "ok", "{text}");
}

/// moby's default allows kcmp, pidfd_getfd and process_madvise (reaching
/// into other processes' fds and memory) only with CAP_SYS_PTRACE.
#[test]
fn default_profile_gates_process_inspection_on_cap_sys_ptrace() {
    let b = berth();
    let probes = ["/probe", "kcmp", "pidfd_getfd", "process_madvise"];
    let results = |caps: &[&str], seccomp: Option<Value>| {
        let mut bundle = bundle_with(&probes, seccomp);
        for set in ["bounding", "effective", "permitted"] {
            for c in caps {
                bundle.config["process"]["capabilities"][set]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(c));
            }
        }
        bundle.write().unwrap();
        let o = run_fg(&b, &bundle);
        let text = all(&o);
        assert!(o.status.success(), "{text}");
        (probe_results(&String::from_utf8_lossy(&o.stdout)), text)
    };
    let einval = "Invalid argument";
    let (res, text) = results(&[], None);
    for p in &probes[1..] {
        assert_eq!(result_of(&res, p), einval, "without seccomp: {text}");
    }
    let (res, text) = results(&[], Some(default_profile(&[])));
    for p in &probes[1..] {
        assert_eq!(result_of(&res, p), "Operation not permitted", "{text}");
    }
    let caps = ["CAP_SYS_PTRACE"];
    let (res, text) = results(&caps, Some(default_profile(&caps)));
    for p in &probes[1..] {
        assert_eq!(result_of(&res, p), einval, "with CAP_SYS_PTRACE: {text}");
    }
}

#[test]
fn bpf_is_cached_per_profile() {
    let b = berth();
    let bundle = bundle_with(&["true"], Some(default_profile(&[])));
    let cached = || -> Vec<String> {
        fs::read_dir(b.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".seccomp-"))
            .collect()
    };
    for _ in 0..2 {
        let o = run_fg(&b, &bundle);
        assert!(o.status.success(), "{}", all(&o));
    }
    let first = cached();
    assert_eq!(first.len(), 1, "{first:?}");
    // The cached filter is the one loaded: it still refuses what it should.
    let bundle2 = bundle_with(&["/probe", "unshare-user"], Some(default_profile(&[])));
    let o = run_fg(&b, &bundle2);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("unshare-user: Operation not permitted"),
        "{}",
        all(&o)
    );
    assert_eq!(cached(), first);
    // `list` does not mistake the cache for a container.
    let list = b.ok(&["list", "-q"]);
    assert!(list.trim().is_empty(), "{list}");
}

// --- SCMP_ACT_NOTIFY -------------------------------------------------------

/// struct seccomp_notif is 80 bytes, seccomp_notif_resp 24: _IOWR('!', n, T).
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xC050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xC018_2101;

fn recv_with_fd(sock: RawFd) -> (Vec<u8>, Option<OwnedFd>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u8; 64];
    // SAFETY: zeroed msghdr pointing at live buffers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len();
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        buf.truncate(n as usize);
        let c = libc::CMSG_FIRSTHDR(&msg);
        let fd = if !c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS {
            Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(c) as *const RawFd,
            )))
        } else {
            None
        };
        (buf, fd)
    }
}

/// Waits for `fd` to become readable; false after `ms` (a guard against a
/// hung test, not a timing assertion).
fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// The seccomp agent's side of one hand-off: accepts a connection and
/// returns the containerProcessState and the listener fd it came with.
fn accept_one(listener: &UnixListener) -> Result<(Value, OwnedFd), String> {
    if !readable(listener.as_raw_fd(), 60_000) {
        return Err("nobody connected to the listener".into());
    }
    let (s, _) = listener.accept().map_err(|e| e.to_string())?;
    let (data, fd) = recv_with_fd(s.as_raw_fd());
    let state: Value = serde_json::from_slice(&data).map_err(|e| e.to_string())?;
    let fd = fd.ok_or_else(|| format!("no fd with the state {state}"))?;
    Ok((state, fd))
}

/// Answers the next notification on `fd` with `-errno`; returns the
/// syscall number it was for.
fn answer_one(fd: &OwnedFd, errno: i32) -> Result<i32, String> {
    if !readable(fd.as_raw_fd(), 60_000) {
        return Err("no notification".into());
    }
    let mut req = [0u8; 80];
    // SAFETY: req is a zeroed struct seccomp_notif.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, req.as_mut_ptr()) } != 0 {
        return Err(format!("NOTIF_RECV: {}", std::io::Error::last_os_error()));
    }
    let nr = i32::from_ne_bytes(req[16..20].try_into().unwrap());
    // struct seccomp_notif_resp: id, val, error, flags.
    let mut resp = [0u8; 24];
    resp[0..8].copy_from_slice(&req[0..8]);
    resp[16..20].copy_from_slice(&(-errno).to_ne_bytes());
    // SAFETY: resp is a struct seccomp_notif_resp.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, resp.as_mut_ptr()) } != 0 {
        return Err(format!("NOTIF_SEND: {}", std::io::Error::last_os_error()));
    }
    Ok(nr)
}

/// A seccomp agent: one hand-off, one notification answered with `-errno`.
/// Returns (state JSON, syscall nr).
fn agent(listener: UnixListener, errno: i32) -> Result<(Value, i32), String> {
    let (state, fd) = accept_one(&listener)?;
    let nr = answer_one(&fd, errno).map_err(|e| format!("{e}; state {state}"))?;
    Ok((state, nr))
}

fn notify_case(no_new_privileges: bool) {
    let b = berth();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut bundle = bundle_with(
        &["sh", "-c", "mkdir /tmp/n; echo rc=$?"],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "listenerMetadata": "agent-metadata",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        })),
    );
    bundle.config["process"]["noNewPrivileges"] = json!(no_new_privileges);
    bundle.config["annotations"] = json!({"test": "notify"});
    bundle.write().unwrap();
    let agent = std::thread::spawn(move || agent(listener, libc::EDQUOT));
    let o = run_fg(&b, &bundle);
    let text = all(&o);
    let (state, nr) = agent
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(o.status.success(), "{text}");
    assert!(text.contains("Disk quota exceeded"), "{text}");
    assert!(text.contains("rc=1"), "{text}");
    assert!(
        nr == libc::SYS_mkdir as i32 || nr == libc::SYS_mkdirat as i32,
        "notified syscall {nr}"
    );
    assert_eq!(state["fds"], json!(["seccompFd"]), "{state}");
    assert_eq!(state["metadata"], "agent-metadata", "{state}");
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    assert_eq!(state["pid"], state["state"]["pid"], "{state}");
    assert_eq!(state["state"]["status"], "creating", "{state}");
    assert_eq!(state["state"]["annotations"]["test"], "notify", "{state}");
    assert!(state["ociVersion"].is_string(), "{state}");
}

#[test]
fn notify_hands_the_listener_to_the_agent() {
    notify_case(true);
}

#[test]
fn notify_without_no_new_privileges() {
    notify_case(false);
}

// --- bad input -------------------------------------------------------------

/// `create` refuses the profile, naming every needle, and leaves nothing:
/// no state, no cgroup, no process.
fn rejects(seccomp: Value, needles: &[&str]) {
    let b = berth();
    let bundle = bundle_with(&["sh", "-c", "echo should-not-run"], Some(seccomp));
    for cmd in ["create", "run"] {
        let o = b.run(&[cmd, "--bundle", bundle.path().to_str().unwrap(), &id("bad")]);
        let text = all(&o);
        assert!(!o.status.success(), "{cmd} accepted: {text}");
        assert!(!text.contains("should-not-run"), "{text}");
        for n in needles {
            assert!(
                text.contains(n),
                "{cmd}: error does not mention {n:?}: {text}"
            );
        }
        // A profile that compiled may stay cached (.seccomp-*.bpf files,
        // not containers); nothing else may.
        let left: Vec<_> = fs::read_dir(b.root.path())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".seccomp-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{cmd} left state: {left:?}");
        assert!(
            bundle.cgroup_dirs().is_empty(),
            "{cmd} left cgroups: {:?}",
            bundle.cgroup_dirs()
        );
    }
}

#[test]
fn unknown_architecture() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]}),
        &["linux.seccomp.architectures", "SCMP_ARCH_VAX"],
    );
}

#[test]
fn unknown_action() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]}),
        &["linux.seccomp.syscalls[0].action", "SCMP_ACT_EXPLODE"],
    );
}

#[test]
fn name_that_is_no_syscall() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["read", "opne"], "action": "SCMP_ACT_ERRNO"}]}),
        &["linux.seccomp.syscalls[0].names[1]", "opne"],
    );
}

#[test]
fn newer_syscall_is_skipped_not_refused() {
    // fchmodat2 (Linux 6.6) and mseal (6.10) postdate Debian's libseccomp
    // 2.5.4: a profile may list them.
    let b = berth();
    let bundle = bundle_with(
        &["sh", "-c", "echo ran"],
        Some(json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mseal", "open_tree_attr", "acct"],
                             "action": "SCMP_ACT_ERRNO"}]})),
    );
    let o = run_fg(&b, &bundle);
    assert!(o.status.success(), "{}", all(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ran"));
}

#[test]
fn argument_index_out_of_range() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 6, "value": 2, "op": "SCMP_CMP_EQ"}]}]}),
        &["linux.seccomp.syscalls[0].args[0].index"],
    );
}

#[test]
fn notify_without_listener_path() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
        &["linux.seccomp.listenerPath"],
    );
}

#[test]
fn notify_as_default_action() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/nonexistent.sock"}),
        &["linux.seccomp.defaultAction"],
    );
}

#[test]
fn listener_nobody_listens_on() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/nonexistent/agent.sock",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
        &["linux.seccomp.listenerPath", "/nonexistent/agent.sock"],
    );
}

#[test]
fn exec_gets_the_containers_profile() {
    let b = berth();
    let bundle = bundle_with(&["sleep", "30"], Some(default_profile(&[])));
    let cid = id("exec");
    b.run_detached(&bundle, &cid);
    let o = b
        .cmd()
        .args(["exec", &cid, "/probe", "unshare-user", "socket-unix"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = all(&o);
    assert!(o.status.success(), "{text}");
    let res = probe_results(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        result_of(&res, "unshare-user"),
        "Operation not permitted",
        "{text}"
    );
    assert_eq!(result_of(&res, "socket-unix"), "ok", "{text}");
    b.ok(&["delete", "--force", &cid]);
}

#[test]
fn errno_ret_out_of_range() {
    rejects(
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}]}),
        &["linux.seccomp.syscalls[0].errnoRet", "5000"],
    );
}

#[test]
fn notify_for_exec_processes() {
    let b = berth();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let bundle = bundle_with(
        &["sleep", "30"],
        Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        })),
    );
    // One hand-off for the container's init, one for the exec'd process,
    // whose mkdir is answered.
    let agent = std::thread::spawn(move || -> Result<(Value, Value), String> {
        let (init_state, _init_fd) = accept_one(&listener)?;
        let (exec_state, fd) = accept_one(&listener)?;
        answer_one(&fd, libc::EDQUOT)?;
        Ok((init_state, exec_state))
    });
    let cid = id("notify-exec");
    b.run_detached(&bundle, &cid);
    let o = b
        .cmd()
        .args(["exec", &cid, "sh", "-c", "mkdir /tmp/n; echo rc=$?"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = all(&o);
    let (init_state, exec_state) = agent
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    b.ok(&["delete", "--force", &cid]);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("Disk quota exceeded"), "{text}");
    assert!(text.contains("rc=1"), "{text}");
    assert_eq!(init_state["state"]["id"], cid.as_str(), "{init_state}");
    assert_eq!(exec_state["state"]["id"], cid.as_str(), "{exec_state}");
    assert_eq!(exec_state["state"]["status"], "running", "{exec_state}");
    assert_ne!(exec_state["pid"], init_state["pid"], "{exec_state}");
}
