//! A private containerd with its CRI plugin on, for CRI client tests and the
//! CRI benchmark's reference point.
//!
//! Everything it owns lives under one temp dir (root, state, sockets, runc
//! state, CNI config and IPAM leases, network namespaces) or carries a random
//! suffix: the bridge `bt<hex>` on a random `10.x.y.0/24`, and the cgroup
//! parent `/berth-test-<hex>` that pods must name in their
//! `linux.cgroup_parent` ([`ContainerdCri::cgroup_parent`]). The sandbox
//! (pause) image and a busybox app image are built from busybox-static and
//! imported with `ctr`, so no network is needed. Dropping it kills what it
//! ran, stops the daemon, unmounts what it mounted and deletes the bridge
//! and cgroups.

use crate::{random_suffix, write_image_archive};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sandbox image: busybox whose command sleeps forever.
pub const PAUSE_IMAGE: &str = "localhost/berth/pause:latest";
/// A busybox app image (Cmd `sh`).
pub const BUSYBOX_IMAGE: &str = "localhost/berth/busybox:latest";
/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A running private containerd with CRI.
pub struct ContainerdCri {
    dir: tempfile::TempDir,
    child: Child,
    /// `/berth-test-<hex>`: pods must use it as `linux.cgroup_parent`.
    pub cgroup_parent: String,
    /// The CNI bridge's name (`bt<hex>`).
    pub bridge: String,
    /// The pod subnet, `10.x.y.0/24`.
    pub subnet: String,
}

/// Random 10.x.y.0/24 that no host route covers yet.
fn pick_subnet() -> String {
    let routes = Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    loop {
        let r = random_suffix();
        let b = u8::from_str_radix(&r[0..2], 16).unwrap_or(1);
        let c = u8::from_str_radix(&r[2..4], 16).unwrap_or(1);
        // 10.200-254.x: away from the ranges tools tend to pick.
        let x = 200 + b % 55;
        let net = format!("10.{x}.{c}.");
        if !routes.contains(&net) {
            return format!("{net}0/24");
        }
    }
}

fn config_toml(dir: &Path) -> String {
    let p = dir.display();
    format!(
        r#"version = 2
root = "{p}/root"
state = "{p}/state"
disabled_plugins = [
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

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  # No CAP_SYS_RESOURCE here: lowering oom_score_adj (the sandbox asks
  # for -998) fails, so containerd must clamp it to its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{p}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{p}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{p}/certs.d"
"#
    )
}

/// The CNI network both runtimes get in tests and benchmarks.
pub fn cni_conflist(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            // The bridge and its address are made by the harness: the
            // plugin's isGateway would switch on host-wide ip_forward.
            "isGateway": false,
            // No masquerading: tests must not add iptables rules.
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "rangeStart": subnet.replace(".0/24", ".10"), "gateway": subnet.replace(".0/24", ".1")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            }
        }]
    })
    .to_string()
}

impl ContainerdCri {
    /// Starts the daemon, waits for its socket, imports [`PAUSE_IMAGE`] and
    /// [`BUSYBOX_IMAGE`].
    pub fn start() -> Result<ContainerdCri> {
        for bin in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            if !Path::new("/usr/bin").join(bin).exists() {
                bail!("/usr/bin/{bin} is missing: install Debian's containerd (scripts/setup.sh)");
            }
        }
        if !Path::new("/usr/lib/cni/bridge").exists() {
            bail!("/usr/lib/cni/bridge is missing: install containernetworking-plugins");
        }
        let suffix = random_suffix();
        let dir = tempfile::Builder::new().prefix("berth-ctd-").tempdir()?;
        let d = dir.path();
        let bridge = format!("bt{}", &suffix[..8]);
        let subnet = pick_subnet();
        fs::create_dir_all(d.join("cni/net.d"))?;
        fs::write(
            d.join("cni/net.d/10-berth-test.conflist"),
            cni_conflist(
                &format!("berth-test-{suffix}"),
                &bridge,
                &subnet,
                &d.join("cni-ipam"),
            ),
        )?;
        fs::write(d.join("config.toml"), config_toml(d))?;
        for args in [
            vec!["link", "add", bridge.as_str(), "type", "bridge"],
            vec![
                "addr",
                "add",
                &format!("{}/24", subnet.replace(".0/24", ".1")),
                "dev",
                bridge.as_str(),
            ],
            vec!["link", "set", bridge.as_str(), "up"],
        ] {
            let o = Command::new("ip").args(&args).output().context("ip")?;
            if !o.status.success() {
                let _ = Command::new("ip").args(["link", "del", &bridge]).output();
                bail!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
        let log = fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        let mut c = ContainerdCri {
            dir,
            child,
            cgroup_parent: format!("/berth-test-{suffix}"),
            bridge,
            subnet,
        };
        c.wait_ready()?;
        let images = tempfile::tempdir()?;
        for (name, cmd) in [
            (PAUSE_IMAGE, &["sleep", "2147483647"][..]),
            (BUSYBOX_IMAGE, &["sh"][..]),
        ] {
            let archive = images.path().join("image.tar");
            write_image_archive(&archive, name, cmd)?;
            c.import(&archive)?;
        }
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("containerd exited ({st}): {}", self.log());
            }
            let ok = self.socket().exists()
                && self
                    .ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd did not serve within 60s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket (CRI and containerd's own API).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `unix:///…/containerd.sock`, as CRI clients spell it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ctr` talking to this daemon in the CRI namespace.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", CRI_NAMESPACE]);
        c
    }

    /// Imports an OCI archive (its ref.name annotation is the image name)
    /// into the CRI namespace, unpacked for overlayfs.
    pub fn import(&self, archive: &Path) -> Result<()> {
        let o = self
            .ctr()
            .args(["images", "import", "--snapshotter", "overlayfs"])
            .arg(archive)
            .output()?;
        if !o.status.success() {
            bail!(
                "ctr images import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Lets the CRI plugin pull from `host` (`127.0.0.1:PORT`) over plain
    /// HTTP, e.g. from a [`crate::registry::Registry`].
    pub fn allow_plain_http(&self, host: &str) -> Result<()> {
        let d = self.dir.path().join("certs.d").join(host);
        fs::create_dir_all(&d)?;
        fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        Ok(())
    }

    /// Builds a busybox image named `name` with `cmd` and imports it.
    pub fn import_busybox(&self, name: &str, cmd: &[&str]) -> Result<()> {
        let t = tempfile::tempdir()?;
        let archive = t.path().join("image.tar");
        write_image_archive(&archive, name, cmd)?;
        self.import(&archive)
    }

    /// Pids of every process in this daemon's pod cgroups.
    pub fn pod_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let rel = self.cgroup_parent.trim_start_matches('/');
        for base in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup",
        ] {
            let root = Path::new(base).join(rel);
            if root.is_dir() {
                collect_procs(&root, &mut pids);
                break;
            }
        }
        pids
    }

    /// Pids of the shims this daemon started (their command line names its
    /// socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        let needle = self.socket().display().to_string();
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == self.child.id() {
                    continue;
                }
                let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                    v.push(pid);
                }
            }
        }
        v
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let d = e.path().join(rel);
                if d.is_dir() {
                    out.extend(crate::walk_dirs(&d));
                }
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(rel);
        if unified.is_dir() {
            out.extend(crate::walk_dirs(&unified));
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out.dedup();
        out
    }
}

fn collect_procs(d: &Path, out: &mut Vec<u32>) {
    if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), out);
            }
        }
    }
}

fn containerd_running() -> bool {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "containerd")
            })
        })
        .unwrap_or(false)
}

fn kill(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        // Tasks first through containerd, so shims exit cleanly and remove
        // their sockets.
        if let Ok(o) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["tasks", "rm", "-f", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // Whatever is left in our cgroups: kill until empty (bounded).
        for _ in 0..50 {
            let pids = self.pod_pids();
            if pids.is_empty() {
                break;
            }
            kill(&pids, "KILL");
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&[self.child.id()], "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&self.shim_pids(), "KILL");
        // Mounts under our dir (rootfs overlays, netns, shm), deepest first.
        let prefix = format!("{}/", self.dir.path().display());
        for _ in 0..3 {
            let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut left: Vec<String> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&prefix))
                .map(str::to_string)
                .collect();
            if left.is_empty() {
                break;
            }
            left.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in left {
                let _ = Command::new("umount")
                    .args(["-l", &m])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for d in self.cgroup_dirs() {
            let _ = fs::remove_dir(d);
        }
        if !containerd_running() {
            // containerd makes /run/containerd (shim sockets) whatever its
            // state dir; remove the empty dirs unless a daemon (maybe a
            // parallel test's) may still use them. Whoever started last
            // sees none left.
            let mut dirs = crate::walk_dirs(Path::new("/run/containerd"));
            dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_imports_and_cleans_up() {
        let c = ContainerdCri::start().unwrap();
        let o = c.ctr().args(["images", "ls", "-q"]).output().unwrap();
        let ls = String::from_utf8_lossy(&o.stdout);
        assert!(ls.contains(PAUSE_IMAGE), "{ls}");
        assert!(ls.contains(BUSYBOX_IMAGE), "{ls}");
        let dir = c.dir().to_path_buf();
        drop(c);
        assert!(!dir.exists());
    }
}
