//! Test fixtures shared by the whole project, built locally from Debian's
//! `busybox-static` with no network:
//!
//! * [`Bundle`]: an OCI bundle (rootfs + config.json like `runc spec` makes,
//!   without a terminal) with its own cgroup parent `berth-test-<random>`;
//! * [`build_rootfs`]: the busybox root filesystem alone;
//! * [`write_image_layout`]: an OCI image layout (oci-layout, index.json,
//!   blobs) of the same filesystem, for image and daemon tests;
//! * [`Berth`]: runs the `berth` binary with a private state root;
//! * [`registry::Registry`]: Debian's `docker-registry` on 127.0.0.1.

pub mod berthctl;
pub mod containerd_cri;
pub mod registry;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

pub const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "true",
    "false",
    "sleep",
    "top",
    "id",
    "ps",
    "hostname",
    "mount",
    "readlink",
    "pwd",
    "env",
    "wc",
    "grep",
    "touch",
    "mkdir",
    "rm",
    "stat",
    "head",
    "tail",
    "kill",
    "dd",
    "ln",
    "sed",
    "awk",
    "test",
    "[",
    "printf",
    "uname",
    "whoami",
    "nc",
    "wget",
    "httpd",
    "seq",
    "sync",
    "cp",
    "mv",
    "chmod",
    "chown",
    "date",
    "find",
    "xargs",
    "yes",
    "ip",
    "ifconfig",
    "hexdump",
    "md5sum",
    "sha256sum",
    "timeout",
    "tee",
    "cut",
    "sort",
    "uniq",
    "tr",
    "mkfifo",
    "umask",
    "unshare",
    "nsenter",
    "chroot",
    "ping",
    "nproc",
    "free",
    "df",
    "du",
    "basename",
    "dirname",
];

/// A unique-enough suffix for names on a shared machine.
pub fn random_suffix() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

/// A unique container id with a readable prefix.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix())
}

/// Exit status, stdout and stderr of `o`, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails clearly when busybox-static is missing.
pub fn busybox() -> Result<PathBuf> {
    let p = PathBuf::from(BUSYBOX);
    if !p.exists() {
        bail!("{BUSYBOX} is missing: install Debian's busybox-static (apt-get install busybox-static)");
    }
    Ok(p)
}

/// Builds a busybox root filesystem in `dir`: /bin with applet links,
/// /etc/passwd and /etc/group (root, nobody, a test user 1000), and empty
/// mount points.
pub fn build_rootfs(dir: &Path) -> Result<()> {
    let bb = busybox()?;
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
        "var/run",
        "usr/bin",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(&bb, dir.join("bin/busybox")).context("copying busybox")?;
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    for a in APPLETS {
        let l = dir.join("bin").join(a);
        if !l.exists() {
            symlink("busybox", &l)?;
        }
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:user\nnogroup:x:65534:\n",
    )?;
    fs::write(dir.join("etc/hostname"), "busybox\n")?;
    Ok(())
}

/// The config `runc spec` writes, with a terminal-less process so tests can
/// capture output, running `args`.
pub fn runc_spec(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.2.1",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// An OCI bundle in a temporary directory, removed on drop.
pub struct Bundle {
    pub tmp: tempfile::TempDir,
    pub config: Value,
    /// cgroup parent made for this bundle (relative to the hierarchy roots).
    pub cgroup_parent: String,
}

impl Bundle {
    /// A busybox bundle running `args`, with cgroupsPath
    /// `/berth-test-<random>/<name>` so tests never touch other cgroups.
    pub fn new(args: &[&str]) -> Result<Bundle> {
        let tmp = tempfile::Builder::new().prefix("berth-bundle-").tempdir()?;
        build_rootfs(&tmp.path().join("rootfs"))?;
        let mut config = runc_spec(args);
        let parent = format!("berth-test-{}", random_suffix());
        config["linux"]["cgroupsPath"] = json!(format!("/{parent}/ctr"));
        let b = Bundle {
            tmp,
            config,
            cgroup_parent: parent,
        };
        b.write()?;
        Ok(b)
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }

    /// Writes `config` to config.json (call after changing it).
    pub fn write(&self) -> Result<()> {
        fs::write(
            self.tmp.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config)?,
        )?;
        Ok(())
    }

    /// Host directories of this bundle's cgroup parent in every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join(&self.cgroup_parent);
                if d.exists() {
                    v.push(d);
                }
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(&self.cgroup_parent);
        if unified.exists() && !v.contains(&unified) {
            v.push(unified);
        }
        v
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Best effort: remove leftover cgroups of this bundle, deepest first.
        for d in self.cgroup_dirs() {
            let mut all: Vec<PathBuf> = walk_dirs(&d);
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in all {
                let _ = fs::remove_dir(p);
            }
        }
    }
}

fn walk_dirs(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

/// The `berth` binary built by cargo for integration tests
/// (`CARGO_BIN_EXE_berth`), or `$BERTH_BIN`, or target/{debug,release}.
pub fn berth_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for prof in ["debug", "release"] {
        let p = root.join("target").join(prof).join("berth");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("berth")
}

/// Runs berth with a private `--root`, removed (after force-deleting what is
/// left) on drop.
pub struct Berth {
    pub bin: PathBuf,
    pub root: tempfile::TempDir,
}

impl Berth {
    pub fn new(bin: impl Into<PathBuf>) -> Result<Berth> {
        Ok(Berth {
            bin: bin.into(),
            root: tempfile::Builder::new().prefix("berth-root-").tempdir()?,
        })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root.path());
        c
    }

    /// Runs `berth --root R <args>` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawning berth")
    }

    /// Like [`run`](Self::run) but panics with stderr unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "berth {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `berth run` of `bundle` as `id` in the foreground, stdin closed; the
    /// program's stdout/stderr are captured.
    pub fn run_fg(&self, bundle: &Bundle, id: &str) -> Output {
        self.cmd()
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(id)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("spawning berth run")
    }

    /// `berth create` of `bundle` as `id`; returns the init's host pid. Like
    /// [`run_detached`](Self::run_detached), stdio never goes to a pipe: the
    /// waiting init would hold it open and a reader would hang.
    pub fn create(&self, bundle: &Bundle, id: &str) -> i32 {
        self.detached(&["create"], bundle, id)
    }

    /// `berth run -d` of `bundle` as `id`; returns the init's host pid. The
    /// container inherits berth's stdio, so pipes would stay open as long as
    /// it runs: stdout goes to /dev/null and stderr to a file in the bundle.
    pub fn run_detached(&self, bundle: &Bundle, id: &str) -> i32 {
        self.detached(&["run", "-d"], bundle, id)
    }

    fn detached(&self, verb: &[&str], bundle: &Bundle, id: &str) -> i32 {
        let err = bundle.path().join(format!("{}-{id}.err", verb[0]));
        let st = self
            .cmd()
            .args(verb)
            .arg("--bundle")
            .arg(bundle.path())
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&err).expect("creating the stderr file"))
            .status()
            .expect("spawning berth");
        assert!(
            st.success(),
            "berth {verb:?} {id} failed: {}",
            fs::read_to_string(&err).unwrap_or_default()
        );
        let pid = self.state(id)["pid"].as_i64().unwrap_or(0) as i32;
        assert!(pid > 0, "container {id} has no pid after {verb:?}");
        pid
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = self.run(&["delete", "--force", id]);
                }
            }
        }
    }
}

/// A config.toml for a private containerd whose root, state and sockets all
/// live under `dir` (the CRI plugin and snapshotters that probe the host,
/// such as aufs running modprobe, are off). The gRPC socket is
/// `<dir>/containerd.sock`.
pub fn containerd_config(dir: &Path) -> String {
    let p = dir.display();
    format!(
        r#"version = 2
root = "{p}/root"
state = "{p}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{p}/containerd.sock"

[ttrpc]
  address = "{p}/containerd.sock.ttrpc"

[debug]
  address = "{p}/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{p}/opt"
"#
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_blob(layout: &Path, data: &[u8]) -> Result<String> {
    let hex = sha256_hex(data);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(&hex), data)?;
    Ok(format!("sha256:{hex}"))
}

/// Writes an OCI image layout of the busybox rootfs at `layout`, tagged
/// `tag` (org.opencontainers.image.ref.name), with `cmd` as its Cmd.
/// Returns the manifest digest.
pub fn write_image_layout(layout: &Path, tag: &str, cmd: &[&str]) -> Result<String> {
    let staging = tempfile::tempdir()?;
    build_rootfs(staging.path())?;
    // Layer: a gzip'd tar with deterministic metadata.
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", staging.path())?;
        b.finish()?;
    }
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes)?;
    let layer = gz.finish()?;
    fs::create_dir_all(layout)?;
    let layer_digest = write_blob(layout, &layer)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "berth-testutil: busybox-static"}]
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = write_blob(layout, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = write_blob(layout, &manifest_bytes)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    Ok(manifest_digest)
}

/// Writes the image layout as a tar archive (for `podman load`,
/// `ctr images import`, `skopeo copy oci-archive:`).
pub fn write_image_archive(archive: &Path, tag: &str, cmd: &[&str]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let digest = write_image_layout(dir.path(), tag, cmd)?;
    let f = fs::File::create(archive)?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir.path())?;
    b.finish()?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_layout_is_well_formed() {
        let d = tempfile::tempdir().unwrap();
        let digest = write_image_layout(d.path(), "latest", &["sh"]).unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(d.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], json!(digest));
        let hex = digest.strip_prefix("sha256:").unwrap();
        let m = fs::read(d.path().join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_hex(&m), hex);
    }
}
