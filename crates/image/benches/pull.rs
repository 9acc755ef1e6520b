//! Pull benchmark: berth against containerd (`ctr images pull`) and
//! skopeo + umoci, all pulling one generated image from a local registry.
//!
//! `cargo bench -p berth-image --bench pull` (root; `PULL_N` runs per tool,
//! default 5). The image (~200 MB uncompressed in 5 gzip layers: thousands
//! of small files in some, a few big files of pseudo-random bytes in others,
//! so gzip cannot shrink them away) is generated once, deterministically,
//! as an OCI layout and pushed with skopeo to Debian's `docker-registry` on
//! 127.0.0.1. Runs are interleaved (berth, containerd, skopeo+umoci, berth,
//! ...) so drift hits every tool alike, and every run starts empty:
//! * berth: a fresh `ImageRoot` in a child process (this binary re-run),
//!   pull = fetch, verify and unpack every layer into snapshots;
//! * containerd: a fresh daemon with a private root (overlayfs snapshotter,
//!   `PULL_CTD_SNAPSHOTTER` to change), started and stopped around each run;
//!   only `ctr images pull --plain-http` is timed (it fetches and unpacks);
//! * skopeo + umoci: `skopeo copy docker://... oci:DIR:t` then
//!   `umoci unpack --image DIR:t BUNDLE`, timed together.
//!
//! Peak RSS: `ru_maxrss` from `wait4` of the tool's process (the larger of
//! skopeo's and umoci's); for containerd, where the daemon does the work,
//! the daemon's `VmHWM` at the end of the pull (and ctr's own RSS apart).
//! Results go to target/bench/pull.json. Numbers only: nothing is asserted.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_image::{Digest, ImageRoot};
use berth_testutil::registry::{self, Registry};
use serde_json::json;

const CHILD_ENV: &str = "BERTH_PULL_BENCH_CHILD";
const GEN_ENV: &str = "BERTH_PULL_BENCH_GENERATE";

fn main() {
    // The image is generated in a child process too: a child's ru_maxrss
    // starts from its parent's peak (fork copies it, exec keeps it), so the
    // parent must stay small for the tools' numbers to be theirs.
    if let Ok(dir) = std::env::var(GEN_ENV) {
        let (size, packed) = write_image(Path::new(&dir));
        println!("{size} {packed}");
        return;
    }
    // The berth side runs in a child process, so its peak RSS is its own.
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (root, host) = spec.split_once('|').expect("ROOT|HOST");
        let opts = berth_image::registry::Options {
            insecure: vec![host.to_string()],
            ..Default::default()
        };
        let root = ImageRoot::open(root).expect("image root");
        if let Err(e) = root.pull(&format!("{host}/bench:latest"), &opts) {
            eprintln!("berth pull: {e}");
            std::process::exit(1);
        }
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("pull bench: needs root (containerd, umoci unpack); skipped");
        return;
    }
    let n: usize = std::env::var("PULL_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let work = tempfile::Builder::new()
        .prefix("berth-pull-bench-")
        .tempdir()
        .expect("temp dir");

    let t0 = Instant::now();
    let layout = work.path().join("layout");
    let out = Command::new(std::env::current_exe().unwrap())
        .env(GEN_ENV, &layout)
        .stderr(Stdio::inherit())
        .output()
        .expect("generating the image");
    assert!(out.status.success(), "generating the image failed");
    let sizes = String::from_utf8(out.stdout).unwrap();
    let (size, packed) = sizes.trim().split_once(' ').expect("sizes");
    let (size, packed): (u64, u64) = (size.parse().unwrap(), packed.parse().unwrap());
    eprintln!(
        "image: {:.1} MB uncompressed, {:.1} MB compressed, 5 layers ({:.1}s to generate)",
        size as f64 / 1e6,
        packed as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let reg = Registry::with(registry::Config {
        dir: Some(work.path().join("registry")),
        ..Default::default()
    });
    reg.push(&format!("oci:{}:t", layout.display()), "bench", &[]);

    let snapshotter =
        std::env::var("PULL_CTD_SNAPSHOTTER").unwrap_or_else(|_| "overlayfs".to_string());
    let run_created = !Path::new("/run/containerd").exists();
    let mut berth = Vec::new();
    let mut ctd = Vec::new();
    let mut ctd_client = Vec::new();
    let mut sku = Vec::new();
    for i in 0..n {
        // berth
        let d = work.path().join(format!("berth-{i}"));
        let exe = std::env::current_exe().unwrap();
        let mut c = Command::new(exe);
        c.env(CHILD_ENV, format!("{}|{}", d.display(), reg.host()));
        berth.push(timed(&mut c));
        fs::remove_dir_all(&d).unwrap();

        // containerd
        let d = work.path().join(format!("ctd-{i}"));
        let daemon = Containerd::start(&d);
        let mut c = Command::new("ctr");
        c.env("CONTAINERD_SNAPSHOTTER", &snapshotter)
            .arg("--address")
            .arg(d.join("containerd.sock"))
            .args(["--namespace", "bench", "images", "pull", "--plain-http"])
            .arg(format!("{}/bench:latest", reg.host()));
        let s = timed(&mut c);
        let hwm = daemon.vm_hwm_kib();
        ctd_client.push(s.rss_kib);
        ctd.push(Sample {
            secs: s.secs,
            rss_kib: hwm,
        });
        drop(daemon); // stops it (Drop)
        fs::remove_dir_all(&d).unwrap();

        // skopeo + umoci
        let d = work.path().join(format!("umoci-{i}"));
        fs::create_dir_all(&d).unwrap();
        let oci = d.join("oci");
        let mut copy = Command::new("skopeo");
        copy.args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}/bench:latest", reg.host()))
            .arg(format!("oci:{}:t", oci.display()));
        let a = timed(&mut copy);
        let mut unpack = Command::new("umoci");
        unpack
            .args(["unpack", "--image"])
            .arg(format!("{}:t", oci.display()))
            .arg(d.join("bundle"));
        let b = timed(&mut unpack);
        sku.push(Sample {
            secs: a.secs + b.secs,
            rss_kib: a.rss_kib.max(b.rss_kib),
        });
        fs::remove_dir_all(&d).unwrap();
        eprintln!(
            "run {}/{n}: berth {:.2}s, containerd {:.2}s, skopeo+umoci {:.2}s",
            i + 1,
            berth[i].secs,
            ctd[i].secs,
            sku[i].secs
        );
    }
    drop(reg);
    if run_created {
        // containerd creates /run/containerd (its default shim dir's
        // parent) even with a private state dir; it was not there before.
        let _ = fs::remove_dir_all("/run/containerd");
    }

    let (b, c, s) = (stats(&berth), stats(&ctd), stats(&sku));
    let ratio_ctd = b.p50 / c.p50;
    let ratio_sku = b.p50 / s.p50;
    println!("pull of a {:.0} MB, 5-layer image from a local registry, {n} runs each (wall seconds; peak RSS)", size as f64 / 1e6);
    println!(
        "{:<20} {:>7} {:>7} {:>7} {:>12}",
        "tool", "min", "p50", "max", "peak RSS MB"
    );
    for (name, st) in [
        ("berth", &b),
        (&*format!("containerd/{snapshotter}"), &c),
        ("skopeo+umoci", &s),
    ] {
        println!(
            "{name:<20} {:>7.2} {:>7.2} {:>7.2} {:>12.1}",
            st.min,
            st.p50,
            st.max,
            st.rss_kib as f64 / 1024.0
        );
    }
    let ctr_rss = ctd_client.iter().max().copied().unwrap_or(0);
    println!(
        "(containerd's RSS is the daemon's VmHWM; ctr itself peaked at {:.1} MB)",
        ctr_rss as f64 / 1024.0
    );
    println!("berth p50 / containerd p50 = {ratio_ctd:.2} (goal <= 0.6); berth / skopeo+umoci = {ratio_sku:.2}");

    let out = target_dir().join("bench");
    fs::create_dir_all(&out).unwrap();
    let j = |st: &Stats, v: &[Sample]| {
        json!({"min": st.min, "p50": st.p50, "max": st.max, "peak_rss_kib": st.rss_kib,
               "runs": v.iter().map(|s| s.secs).collect::<Vec<_>>()})
    };
    let report = json!({
        "image": {"uncompressed_bytes": size, "compressed_bytes": packed, "layers": 5},
        "runs": n,
        "berth": j(&b, &berth),
        "containerd": {"snapshotter": snapshotter, "ctr_peak_rss_kib": ctr_rss, "daemon": j(&c, &ctd)},
        "skopeo_umoci": j(&s, &sku),
        "ratio_berth_containerd": ratio_ctd,
        "ratio_berth_skopeo_umoci": ratio_sku,
    });
    fs::write(
        out.join("pull.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("wrote {}", out.join("pull.json").display());
}

struct Sample {
    secs: f64,
    rss_kib: i64,
}

struct Stats {
    min: f64,
    p50: f64,
    max: f64,
    rss_kib: i64,
}

fn stats(v: &[Sample]) -> Stats {
    let mut s: Vec<f64> = v.iter().map(|x| x.secs).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = s.len() / 2;
    let p50 = if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    };
    Stats {
        min: s[0],
        p50,
        max: s[s.len() - 1],
        rss_kib: v.iter().map(|x| x.rss_kib).max().unwrap_or(0),
    }
}

/// Runs `c` to completion; wall time and `ru_maxrss` (KiB) from `wait4`.
/// A failing tool aborts the benchmark with its stderr.
// Reaped by wait4 (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn timed(c: &mut Command) -> Sample {
    let start = Instant::now();
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("stderr");
    // Drain stderr on a thread so a chatty tool cannot block on the pipe.
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let err = err.join().unwrap();
    let st = std::process::ExitStatus::from_raw(status);
    assert!(st.success(), "{c:?}: {st}: {err}");
    Sample {
        secs,
        rss_kib: ru.ru_maxrss,
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

// ------------------------------------------------------------------ image

/// xorshift64 bytes: incompressible and reproducible.
fn noise(out: &mut Vec<u8>, n: usize, seed: &mut u64) {
    let end = out.len() + n;
    while out.len() < end {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(end);
}

/// Layer contents: `small` files of 0.5–4 KiB (half text, half noise)
/// spread over directories of 100, and `big` files of 16 MiB of noise.
fn layer(idx: usize, small: usize, big: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (idx as u64 + 1);
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    let top = format!("l{idx}");
    add(&mut b, &top, b"", true);
    let mut buf = Vec::new();
    for i in 0..small {
        if i % 100 == 0 {
            add(&mut b, &format!("{top}/d{}", i / 100), b"", true);
        }
        buf.clear();
        let len = 512 + (i * 7919) % 3584;
        if i % 2 == 0 {
            while buf.len() < len {
                buf.extend_from_slice(
                    format!("line {i} of file {idx}: lorem ipsum dolor\n").as_bytes(),
                );
            }
            buf.truncate(len);
        } else {
            noise(&mut buf, len, &mut seed);
        }
        add(&mut b, &format!("{top}/d{}/f{i}", i / 100), &buf, false);
    }
    for i in 0..big {
        buf.clear();
        noise(&mut buf, 16 << 20, &mut seed);
        add(&mut b, &format!("{top}/big{i}.bin"), &buf, false);
    }
    b.into_inner().unwrap()
}

/// Writes the image as an OCI layout tagged "t"; returns the uncompressed
/// and compressed sizes of its layers.
fn write_image(dir: &Path) -> (u64, u64) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8], media: &str| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        json!({"mediaType": media, "digest": d.to_string(), "size": b.len()})
    };
    // (small files, big files) per layer: ~200 MB in all.
    let plan = [(10_000, 0), (0, 4), (10_000, 0), (200, 3), (5_000, 2)];
    let (mut descs, mut diff_ids) = (Vec::new(), Vec::new());
    let (mut size, mut packed) = (0u64, 0u64);
    for (i, (small, big)) in plan.into_iter().enumerate() {
        let tar = layer(i, small, big);
        size += tar.len() as u64;
        diff_ids.push(Digest::of(&tar).to_string());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        packed += gz.len() as u64;
        descs.push(put(&gz, "application/vnd.oci.image.layer.v1.tar+gzip"));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = json!({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let cd = put(
        &serde_json::to_vec(&config).unwrap(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cd, "layers": descs});
    let mut md = put(
        &serde_json::to_vec(&manifest).unwrap(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    md["annotations"] = json!({"org.opencontainers.image.ref.name": "t"});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [md]})).unwrap(),
    )
    .unwrap();
    fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    (size, packed)
}

// --------------------------------------------------------------- services

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A containerd with its own root, state and sockets under `dir` (CRI and
/// host-probing snapshotters off).
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("config.toml"),
            berth_testutil::containerd_config(dir),
        )
        .unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian's package; scripts/setup.sh)");
        let mut c = Containerd {
            child,
            dir: dir.to_path_buf(),
        };
        let sock = dir.join("containerd.sock");
        wait_until("containerd to serve", || {
            if let Some(st) = c.child.try_wait().unwrap() {
                panic!(
                    "containerd exited: {st}: {}",
                    fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        c
    }

    /// The daemon's peak resident set so far (KiB).
    fn vm_hwm_kib(&self) -> i64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Containerd {
    /// SIGTERM, wait, then unmount anything it left under its dir (also
    /// when a failed run unwinds).
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        let mut left: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let c = std::ffi::CString::new(m).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
