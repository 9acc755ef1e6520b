//! The monitor as berthd uses it: a real berth-monitor process creating real
//! containers, writing their CRI logs and recording their exits.

use berth_monitor::proto::{self, Client, ExitInfo, Request, Response};
use berth_testutil::{unique_id, Bundle};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

struct Mon {
    dir: tempfile::TempDir,
    oci: tempfile::TempDir,
}

impl Mon {
    fn start() -> Mon {
        let dir = tempfile::tempdir().unwrap();
        let oci = tempfile::tempdir().unwrap();
        let st = Command::new(env!("CARGO_BIN_EXE_berth-monitor"))
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--oci-root", oci.path().to_str().unwrap()])
            .args(["--max-line", "64"])
            .status()
            .unwrap();
        assert!(st.success());
        Mon { dir, oci }
    }
    fn client(&self) -> Client {
        Client::new(self.dir.path())
    }
    fn call(&self, r: Request) -> Response {
        self.client().call(&r).unwrap().0
    }
    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("monitor.pid"))
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Mon {
    fn drop(&mut self) {
        let root = berth_oci::state::Root::new(self.oci.path());
        for id in root.ids().unwrap_or_default() {
            let _ = berth_oci::container::delete(&root, &id, true);
        }
        let _ = self.client().call(&Request::Shutdown);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
    }
}

fn create(m: &Mon, b: &Bundle, id: &str, log: &Path, stdin: bool) -> i32 {
    match m.call(Request::Create {
        id: id.into(),
        bundle: b.path().to_path_buf(),
        log_path: Some(log.to_path_buf()),
        tty: false,
        stdin,
        stdin_once: false,
        runtime: None,
    }) {
        Response::Created { pid } => pid,
        r => panic!("{r:?}"),
    }
}

fn wait(m: &Mon, id: &str) -> ExitInfo {
    match m.call(Request::Wait { id: id.into() }) {
        Response::Exited(x) => x,
        r => panic!("{r:?}"),
    }
}

#[test]
fn a_container_logs_in_cri_format_and_its_exit_is_recorded() {
    let m = Mon::start();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "echo out; echo err >&2; printf 'x%.0s' $(seq 100); echo; exit 7",
    ])
    .unwrap();
    let id = unique_id("mon");
    let log = m.dir.path().join("c.log");
    let pid = create(&m, &b, &id, &log, false);
    // The monitor is the init's parent (subreaper), not this test.
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = ppid
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, m.pid());
    assert!(matches!(
        m.call(Request::Start { id: id.clone() }),
        Response::Ok
    ));
    let x = wait(&m, &id);
    assert_eq!(x.code, 7);
    assert!(!x.oom_killed);
    // The record is durable and readable without the monitor.
    assert_eq!(proto::read_exit(m.dir.path(), &id), Some(x));
    let text = std::fs::read_to_string(&log).unwrap();
    let recs: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').collect()).collect();
    assert!(
        recs.iter()
            .any(|r| r[1] == "stdout" && r[2] == "F" && r[3] == "out"),
        "{text}"
    );
    assert!(
        recs.iter()
            .any(|r| r[1] == "stderr" && r[2] == "F" && r[3] == "err"),
        "{text}"
    );
    // 100 bytes with a 64-byte maximum: one partial record, then the rest.
    let long: Vec<&Vec<&str>> = recs
        .iter()
        .filter(|r| r.len() == 4 && r[3].starts_with('x'))
        .collect();
    assert_eq!(long.len(), 2, "{text}");
    assert_eq!((long[0][2], long[0][3].len()), ("P", 64));
    assert_eq!((long[1][2], long[1][3].len()), ("F", 36));
    // Status lists it as exited; Forget drops it.
    match m.call(Request::Status) {
        Response::Containers { containers } => {
            assert_eq!(containers.len(), 1);
            assert_eq!(containers[0].exit.as_ref().unwrap().code, 7);
        }
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        m.call(Request::Forget { id: id.clone() }),
        Response::Ok
    ));
}

#[test]
fn exec_hands_back_the_stdio_and_reports_the_exit_code() {
    let m = Mon::start();
    let b = Bundle::new(&["sleep", "1000"]).unwrap();
    let id = unique_id("mon-exec");
    let log = m.dir.path().join("c.log");
    create(&m, &b, &id, &log, false);
    m.call(Request::Start { id: id.clone() });
    let process = serde_json::json!({
        "args": ["sh", "-c", "cat; echo to-err >&2; exit 3"],
        "cwd": "/", "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"],
    });
    let (resp, fds) = m
        .client()
        .call(&Request::Exec {
            id: id.clone(),
            process,
            stdin: true,
            runtime: None,
        })
        .unwrap();
    let Response::ExecStarted { pid } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(fds.len(), 3);
    let mut it = fds.into_iter();
    let mut out = std::fs::File::from(it.next().unwrap());
    let mut err = std::fs::File::from(it.next().unwrap());
    let mut inp = std::fs::File::from(it.next().unwrap());
    inp.write_all(b"hello through stdin").unwrap();
    drop(inp);
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello through stdin");
    let mut e = String::new();
    err.read_to_string(&mut e).unwrap();
    assert_eq!(e, "to-err\n");
    match m.call(Request::WaitExec { pid }) {
        Response::Exited(x) => assert_eq!(x.code, 3),
        r => panic!("{r:?}"),
    }
    // A running container cannot be forgotten, and keeps the monitor up.
    assert!(m
        .client()
        .call(&Request::Forget { id: id.clone() })
        .is_err());
    assert!(m.client().call(&Request::Shutdown).is_err());
}

#[test]
fn logs_reopen_and_keep_flowing_while_nobody_talks_to_the_monitor() {
    let m = Mon::start();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done",
    ])
    .unwrap();
    let id = unique_id("mon-log");
    let log = m.dir.path().join("c.log");
    create(&m, &b, &id, &log, false);
    m.call(Request::Start { id: id.clone() });
    let grows = |p: &Path| {
        let n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > n {
                return true;
            }
        }
        false
    };
    assert!(grows(&log));
    std::fs::rename(&log, m.dir.path().join("c.log.1")).unwrap();
    assert!(matches!(
        m.call(Request::ReopenLog { id: id.clone() }),
        Response::Ok
    ));
    assert!(log.exists(), "the new log exists when ReopenLog returns");
    assert!(grows(&log));
    let root = berth_oci::state::Root::new(m.oci.path());
    berth_oci::container::kill(&root, &id, libc::SIGKILL, false).unwrap();
    assert_eq!(wait(&m, &id).code, 128 + 9);
}

#[test]
fn attach_gets_the_output_and_stdin_once_hands_over_stdin() {
    let m = Mon::start();
    let b = Bundle::new(&["sh", "-c", "read line; echo got $line; cat; echo bye >&2"]).unwrap();
    let id = unique_id("mon-attach");
    let log = m.dir.path().join("c.log");
    match m.call(Request::Create {
        id: id.clone(),
        bundle: b.path().to_path_buf(),
        log_path: Some(log.clone()),
        tty: false,
        stdin: true,
        stdin_once: true,
        runtime: None,
    }) {
        Response::Created { .. } => {}
        r => panic!("{r:?}"),
    }
    m.call(Request::Start { id: id.clone() });
    let (resp, fds) = m
        .client()
        .call(&Request::Attach { id: id.clone() })
        .unwrap();
    assert!(
        matches!(
            resp,
            Response::Attached {
                tty: false,
                stdin: true
            }
        ),
        "{resp:?}"
    );
    let mut it = fds.into_iter();
    let mut out = std::fs::File::from(it.next().unwrap());
    let mut err = std::fs::File::from(it.next().unwrap());
    let mut inp = std::fs::File::from(it.next().unwrap());
    // A second attach of a stdin_once container gets no stdin.
    let (resp2, _) = m
        .client()
        .call(&Request::Attach { id: id.clone() })
        .unwrap();
    assert!(
        matches!(resp2, Response::Attached { stdin: false, .. }),
        "{resp2:?}"
    );
    inp.write_all(b"hello\nrest\n").unwrap();
    // Closing the attacher's stdin is the container's EOF: it finishes.
    drop(inp);
    assert_eq!(wait(&m, &id).code, 0);
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    assert_eq!(s, "got hello\nrest\n");
    let mut e = String::new();
    err.read_to_string(&mut e).unwrap();
    assert_eq!(e, "bye\n");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("stdout F got hello"));
}
