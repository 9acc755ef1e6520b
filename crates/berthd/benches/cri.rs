//! berthd against containerd (Debian's, with its CRI plugin), in one run,
//! same CNI plugins, same busybox image, same cgroup driver: the CRI
//! lifecycle (RunPodSandbox → CreateContainer → StartContainer →
//! StopPodSandbox → RemovePodSandbox) sequential and N at a time, and the
//! memory of the runtime's processes per running pod. Measured with
//! `berthctl bench cri`, which writes report.json / report.html.
//!
//!   cargo bench -p berthd --bench cri [-- N CONCURRENCY OUTDIR]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n = args.first().cloned().unwrap_or_else(|| "100".into());
    let conc = args.get(1).cloned().unwrap_or_else(|| "10".into());
    let out = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "target/bench-cri".into());
    let berthctl = common::bin("berthctl");
    let b = common::Berthd::start();
    // The same CNI network as containerd's (one bridge plugin, no portmap),
    // on berthd's own bridge and subnet; berthd reads it at the first pod.
    std::fs::write(
        b.tmp.path().join("net.d/10-berth.conflist"),
        berth_testutil::containerd_cri::cni_conflist(
            "berth-bench",
            &b.bridge,
            &format!("{}.0/24", b.subnet_prefix),
            &b.tmp.path().join("ipam"),
        ),
    )
    .expect("writing berthd's CNI config");
    let ctd = berth_testutil::containerd_cri::ContainerdCri::start().expect("containerd");
    ctd.import_busybox(common::IMAGE, &["sh"])
        .expect("importing the image into containerd");
    let st = Command::new(&berthctl)
        .args([
            "bench",
            "cri",
            "-n",
            &n,
            "--concurrency",
            &conc,
            "--warmup",
            "5",
        ])
        .arg("--endpoint")
        .arg(format!("berthd=unix://{}", b.socket.display()))
        .arg("--endpoint")
        .arg(format!("containerd={}", ctd.endpoint()))
        .args([
            "--baseline",
            "containerd",
            "--image",
            common::IMAGE,
            "--out",
            &out,
        ])
        .status()
        .expect("berthctl");
    assert!(st.success(), "berthctl bench cri failed");
    println!("report: {out}/report.json, {out}/report.html");
}
