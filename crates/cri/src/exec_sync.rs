//! ExecSync: a process in the container, its output collected up to a cap,
//! and on timeout the whole process tree of the exec killed.

use crate::daemon::Daemon;
use crate::error::{internal, invalid, CriError, Result};
use crate::model::CtrState;
use berth_monitor::proto::{Client, Request, Response};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Reads everything, keeping at most `cap` bytes (the rest is drained and
/// dropped so the process never blocks on a full pipe).
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

fn collect(fd: OwnedFd, cap: usize) -> Collector {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b2 = buf.clone();
    let thread = std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = b2.lock().unwrap_or_else(|e| e.into_inner());
                    let room = cap.saturating_sub(out.len());
                    out.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    });
    Collector { buf, thread }
}

impl Collector {
    /// What was read once the pipe closed; a pipe a background process
    /// keeps open is given up on after a short grace.
    fn finish(self, grace: Duration) -> Vec<u8> {
        let start = Instant::now();
        while !self.thread.is_finished() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(5));
        }
        let v = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        v.clone()
    }
}

/// Every descendant of `pid` (by walking /proc), deepest first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    if let Some(pp) = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<i32>().ok())
                    {
                        parent_of.push((p, pp));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(*c);
            frontier.push(*c);
        }
    }
    out.reverse();
    out
}

/// Kills `pid` and everything below it; repeats while new children appear.
pub fn kill_tree(pid: i32) {
    for _ in 0..10 {
        // Stop the root first so it cannot fork while we walk.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let kids = descendants(pid);
        for k in &kids {
            // SAFETY: as above.
            unsafe { libc::kill(*k, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if kids.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Daemon {
    pub fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(invalid("cmd", "is required"));
        }
        if timeout < 0 {
            return Err(invalid("timeout", "must not be negative"));
        }
        let rec = self.find_container(id)?;
        let rec = self.refresh(&rec)?;
        if rec.state != CtrState::Running {
            return Err(CriError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let pod = self.find_pod(&rec.pod_id)?;
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(rec.bundle.join("config.json"))
                .map_err(|e| internal(format!("container spec: {e}")))?,
        )
        .map_err(internal)?;
        // The exec inherits the container's user, env, cwd and confinement.
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let client = Client::new(&pod.dir);
        let (resp, fds) = client
            .call(&Request::Exec {
                id: rec.id.clone(),
                process,
                stdin: false,
                runtime: self.handler(&pod.runtime_handler).external(),
            })
            .map_err(|e| CriError::Internal(format!("exec: {e}")))?;
        let Response::ExecStarted { pid } = resp else {
            return Err(internal(format!("exec: unexpected reply {resp:?}")));
        };
        let mut it = fds.into_iter();
        let (Some(out), Some(err)) = (it.next(), it.next()) else {
            return Err(internal("exec: the monitor sent no stdio"));
        };
        let cap = self.cfg.logs.max_exec_output;
        let out_t = collect(out, cap);
        let err_t = collect(err, cap);
        let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout as u64));
        let wait_for = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let exit = match client.call_timeout(&Request::WaitExec { pid }, wait_for) {
            Ok((Response::Exited(x), _)) => Some(x.code),
            _ => None,
        };
        let exit_code = match exit {
            Some(c) => c,
            None => {
                kill_tree(pid);
                let _ =
                    client.call_timeout(&Request::WaitExec { pid }, Some(Duration::from_secs(5)));
                drop((out_t, err_t));
                return Err(CriError::Internal(format!(
                    "command {:?} timed out after {timeout}s and was killed",
                    cmd
                )));
            }
        };
        // Output pipes may be held open by a background child of the exec:
        // give them a moment, then stop waiting (their data is dropped).
        let stdout = out_t.finish(Duration::from_secs(2));
        let stderr = err_t.finish(Duration::from_millis(100));
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}
