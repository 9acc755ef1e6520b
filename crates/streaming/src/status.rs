//! The Kubernetes `Status` object written on the error stream (v4 and later),
//! and the plain-text messages of the earlier protocols.

use serde::{Deserialize, Serialize};
use serde_json::json;

/// How a remote command ended, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command exited with this non-zero code.
    ExitCode(i32),
    /// Any other failure, with the server's message.
    Failure(String),
}

pub const REASON_NON_ZERO_EXIT: &str = "NonZeroExitCode";
pub const CAUSE_EXIT_CODE: &str = "ExitCode";

/// JSON of a successful command.
pub fn success() -> Vec<u8> {
    serde_json::to_vec(&json!({"metadata": {}, "status": "Success"})).unwrap()
}

fn exit_message(cmd: &[String], code: i32) -> String {
    format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}")
}

/// JSON of a command that exited with `code` (non-zero).
pub fn exit_code(cmd: &[String], code: i32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": {},
        "status": "Failure",
        "message": exit_message(cmd, code),
        "reason": REASON_NON_ZERO_EXIT,
        "details": {"causes": [{"reason": CAUSE_EXIT_CODE, "message": code.to_string()}]},
    }))
    .unwrap()
}

/// JSON of an internal error.
pub fn internal_error(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {msg}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": msg}]},
        "code": 500,
    }))
    .unwrap()
}

/// What the pre-v4 protocols write: nothing on success, else a message.
pub fn text(outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    match outcome {
        Outcome::Success => Vec::new(),
        Outcome::ExitCode(c) => exit_message(cmd, *c).into_bytes(),
        Outcome::Failure(m) => m.clone().into_bytes(),
    }
}

#[derive(Deserialize, Serialize, Default)]
struct Cause {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize, Serialize, Default)]
struct Details {
    #[serde(default)]
    causes: Vec<Cause>,
}

#[derive(Deserialize, Serialize, Default)]
struct Status {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: Option<Details>,
}

/// Reads a v4 status (an empty stream counts as success, like kubectl).
pub fn parse_json(b: &[u8]) -> Outcome {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Success;
    }
    let s: Status = match serde_json::from_slice(b) {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("error stream is not a Status: {e}")),
    };
    if s.status == "Success" {
        return Outcome::Success;
    }
    if s.reason == REASON_NON_ZERO_EXIT {
        if let Some(code) = s
            .details
            .iter()
            .flat_map(|d| d.causes.iter())
            .find(|c| c.reason == CAUSE_EXIT_CODE)
            .and_then(|c| c.message.parse().ok())
        {
            return Outcome::ExitCode(code);
        }
    }
    Outcome::Failure(s.message)
}

/// Reads a pre-v4 error stream.
pub fn parse_text(b: &[u8]) -> Outcome {
    if b.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failure(String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(parse_json(&success()), Outcome::Success);
        assert_eq!(&success()[..], br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(
            parse_json(&exit_code(&["false".into()], 3)),
            Outcome::ExitCode(3)
        );
        assert!(
            matches!(parse_json(&internal_error("boom")), Outcome::Failure(m) if m.contains("boom"))
        );
        let v: serde_json::Value = serde_json::from_slice(&exit_code(&[], 42)).unwrap();
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "42");
    }
}
