//! The metadata store is never taken for empty: moved away, emptied,
//! truncated or overwritten while pods run, berthd refuses to start (naming
//! the file, saying what to do) and leaves the pods running; `berthd
//! repair` rebuilds the records and the pods are berthd's again.

mod common;
use berth_cri_api::v1 as cri;
use common::*;
use std::io::{Seek, Write};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Damage {
    MovedAway,
    Emptied,
    TruncatedToHalf,
    HeaderOverwritten,
}

fn damage(db: &Path, how: Damage) {
    match how {
        Damage::MovedAway => std::fs::rename(db, db.with_extension("moved")).unwrap(),
        Damage::Emptied => std::fs::File::create(db).map(|_| ()).unwrap(),
        Damage::TruncatedToHalf => {
            let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }
        Damage::HeaderOverwritten => {
            let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.write_all(&[0xa5; 512]).unwrap();
        }
    }
}

/// A process whose command line is exactly `args` runs.
fn running(args: &[&str]) -> bool {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
}

async fn lost_store_is_refused_then_repaired(how: Damage, tag: &str) {
    let mut b = Berthd::start();
    let mut c = b.rt().await;
    let cfg = pod_config(&format!("st-{tag}"), &b.logs());
    let sleeper = ["sleep", tag];
    let (pod, ids) = run_pod(
        &mut c,
        cfg,
        vec![
            ctr_config("sleeper", &sleeper),
            ctr_config("quitter", &["sh", "-c", "exit 5"]),
        ],
    )
    .await;
    assert_eq!(wait_exited(&mut c, &ids[1]).await.exit_code, 5);
    drop(c);
    assert!(b.terminate().is_some_and(|s| s.success()));
    let db = b.root().join("berthd.db");
    damage(&db, how);

    let st = b.spawn_expecting_failure();
    assert!(!st.success(), "{how:?}");
    let log = b.log();
    assert!(log.contains(&db.display().to_string()), "{how:?}: {log}");
    assert!(log.contains("berthd repair"), "{how:?}: {log}");
    assert!(!log.contains("panicked"), "{how:?}: {log}");
    // Nothing was touched: the pod and its container still run.
    assert!(running(&sleeper), "{how:?}: the container is gone");
    assert!(
        b.leaks().iter().any(|l| l.starts_with("monitor ")),
        "{how:?}: the monitor is gone"
    );

    let (st, out) = b.repair();
    assert!(st.success(), "{how:?}: {out}");
    assert!(out.contains(&pod), "{how:?}: {out}");
    b.spawn();
    let mut c = b.rt().await;
    let pods = c
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{how:?}");
    assert_eq!(pods[0].id, pod);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(
        pods[0].metadata.as_ref().map(|m| m.name.as_str()),
        Some(format!("st-{tag}").as_str())
    );
    let s = status(&mut c, &ids[0]).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{how:?}"
    );
    assert_eq!(s.metadata.map(|m| m.name), Some("sleeper".into()));
    let q = status(&mut c, &ids[1]).await;
    assert_eq!(
        (q.state, q.exit_code),
        (cri::ContainerState::ContainerExited as i32, 5),
        "{how:?}"
    );
    let r = exec(&mut c, &ids[0], &["echo", "back"]).await;
    assert_eq!(r.stdout, b"back\n");
    stop_and_remove_pod(&mut c, &pod).await;
    // Killed and reaped (its memory may take a moment to go).
    for _ in 0..100 {
        if !running(&sleeper) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running(&sleeper));
    assert_eq!(b.leaks(), Vec::<String>::new(), "{how:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_away_store_is_refused_then_repaired() {
    lost_store_is_refused_then_repaired(Damage::MovedAway, "31001").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_store_is_refused_then_repaired() {
    lost_store_is_refused_then_repaired(Damage::Emptied, "31002").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_half_is_refused_then_repaired() {
    lost_store_is_refused_then_repaired(Damage::TruncatedToHalf, "31003").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_its_header_overwritten_is_refused_then_repaired() {
    lost_store_is_refused_then_repaired(Damage::HeaderOverwritten, "31004").await;
}
