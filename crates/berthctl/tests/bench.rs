//! `berthctl bench`: small N, the reports' shape (numbers are not asserted).

use berth_testutil::output_text;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn berthctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berthctl"))
}

/// berth built next to berthctl (scripts/test.sh builds the workspace
/// first), else the testutil lookup.
fn berth() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_BIN_EXE_berthctl"));
    let sib = here.with_file_name("berth");
    if sib.is_file() {
        return sib;
    }
    let p = berth_testutil::berth_bin();
    assert!(
        p.is_file(),
        "no berth binary: run `cargo build -p berth` first"
    );
    p
}

fn read_report(dir: &std::path::Path) -> Value {
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.trim_end().ends_with("</html>"));
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn oci_berth_vs_runc() {
    let out = tempfile::tempdir().unwrap();
    let o = berthctl()
        .args([
            "bench",
            "oci",
            "-n",
            "2",
            "--warmup",
            "1",
            "--baseline",
            "runc",
            "--runtime",
        ])
        .arg(format!("berth={}", berth().display()))
        .args(["--runtime", "runc", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("kill+wait") && table.contains("/runc"),
        "{table}"
    );
    let r = read_report(out.path());
    assert_eq!(r["kind"], "oci");
    assert_eq!(r["baseline"], "runc");
    let ops: Vec<&str> = r["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["run /bin/true", "create", "start", "kill+wait", "delete"]
    );
    for op in r["operations"].as_array().unwrap() {
        for rt in ["berth", "runc"] {
            let s = &op["results"][rt];
            assert_eq!(s["count"], 2, "{op}");
            assert_eq!(s["failures"], 0, "{op}");
            assert_eq!(s["samples"].as_array().unwrap().len(), 2);
            for k in ["min", "p50", "p90", "p99", "max"] {
                assert!(s[k].as_f64().unwrap() > 0.0, "{k} in {op}");
            }
        }
        assert_eq!(op["results"]["runc"]["ratio_p50_to_baseline"], 1.0);
    }
    // Nothing left behind: the bench's cgroup parent is gone.
    let parent = r["params"]["cgroup_parent"].as_str().unwrap();
    assert!(parent.starts_with("berthctl-bench-"), "{parent}");
    assert!(!std::path::Path::new("/sys/fs/cgroup/memory")
        .join(parent)
        .exists());
}

#[test]
fn oci_bad_runtime_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let o = berthctl()
        .args(["bench", "oci", "--runtime", "/nonexistent/rt", "--out"])
        .arg(out.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--runtime /nonexistent/rt"));
    assert!(!out.path().join("r").exists());
}

#[test]
fn cri_against_containerd() {
    let ctd = berth_testutil::containerd_cri::ContainerdCri::start().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = berthctl()
        .args([
            "bench",
            "cri",
            "-n",
            "2",
            "--warmup",
            "0",
            "--concurrency",
            "2",
            "--density",
            "2",
        ])
        .arg("--endpoint")
        .arg(ctd.endpoint())
        .args([
            "--endpoint",
            "dead=unix:///nonexistent.sock",
            "--cgroup-parent",
        ])
        .arg(&ctd.cgroup_parent)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let r = read_report(out.path());
    assert_eq!(r["kind"], "cri");
    assert_eq!(r["baseline"], "containerd");
    let t = r["targets"].as_array().unwrap();
    assert_eq!(t[0]["name"], "containerd");
    assert!(t[0]["skipped"].is_null());
    assert_eq!(t[1]["name"], "dead");
    assert!(
        t[1]["skipped"].as_str().unwrap().contains("does not exist"),
        "{}",
        t[1]
    );
    let ops = r["operations"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["name"].as_str().unwrap()).collect();
    for want in [
        "pod startup",
        "RunPodSandbox",
        "RemovePodSandbox",
        "pod startup @2",
        "StartContainer @2",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for op in ops {
        let s = &op["results"]["containerd"];
        assert_eq!(s["count"], 2, "{op}");
        assert_eq!(s["failures"], 0, "{op}");
    }
    let d = &r["extra"]["containerd: density"];
    assert_eq!(d["pods_running"], 2, "{d}");
    assert!(d["pods_per_second"].as_f64().unwrap() > 0.0, "{d}");
    // The daemon and its two sandboxes' and two containers' shim(s).
    assert!(d["runtime_processes"].as_u64().unwrap() >= 2, "{d}");
    assert!(d["pss_kib_per_pod"].as_f64().unwrap() > 0.0, "{d}");
    // Everything was torn down.
    let pods = berthctl()
        .args(["-r", &ctd.endpoint(), "pods", "-q"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pods.stdout).trim(), "");
}

#[test]
fn overhead_host_vs_berth_and_runc() {
    let out = tempfile::tempdir().unwrap();
    let o = berthctl()
        .args([
            "bench",
            "overhead",
            "-n",
            "1",
            "--warmup",
            "0",
            "--cpu-mib",
            "4",
            "--io-mib",
            "2",
        ])
        .args(["--files", "20", "--runtime"])
        .arg(format!("berth={}", berth().display()))
        .args(["--runtime", "runc", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let r = read_report(out.path());
    assert_eq!(r["kind"], "overhead");
    assert_eq!(r["baseline"], "host");
    let ops = r["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 3);
    for op in ops {
        for t in ["host", "berth", "runc"] {
            assert_eq!(op["results"][t]["count"], 1, "{t} in {op}");
            assert_eq!(op["results"][t]["failures"], 0, "{t} in {op}");
        }
        assert_eq!(op["results"]["host"]["ratio_p50_to_baseline"], 1.0);
    }
}
