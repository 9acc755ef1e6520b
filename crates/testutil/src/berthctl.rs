//! Driving the built `berthctl` binary against one CRI endpoint, as a user
//! would: its output and exit codes.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Ctl {
    pub bin: PathBuf,
    pub endpoint: String,
}

impl Ctl {
    /// A command with the endpoint set and no ambient configuration.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--runtime-endpoint").arg(&self.endpoint);
        c.env_remove("CONTAINER_RUNTIME_ENDPOINT");
        c.env("BERTHCTL_CONFIG", "/dev/null");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "berthctl {args:?}: {}",
            crate::output_text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `args -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Runs with `input` on stdin (then closed).
    pub fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut ch = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap()
    }
}

/// Writes `text` to `dir/name`; returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
