//! `HOME` for the container's process, as runc sets it: when the process
//! env has no (or an empty) `HOME`, the home directory of the process's uid
//! in the container's `/etc/passwd`, else `/`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// The home directory of `uid` in passwd-format `text`.
pub fn home_of(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].trim().parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
    })
}

/// Reads the container's /etc/passwd (the caller's root is the container's
/// already). Non-blocking and regular files only: a fifo planted there
/// must not hang the init.
fn read_passwd() -> Option<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/etc/passwd")
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    // A passwd larger than this is not one.
    f.by_ref().take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// `env` with HOME added for `uid` when it lacks a non-empty one.
pub fn with_home(env: &[String], uid: u32) -> Vec<String> {
    let has = env
        .iter()
        .any(|e| e.strip_prefix("HOME=").is_some_and(|v| !v.is_empty()));
    let mut out: Vec<String> = env.to_vec();
    if !has {
        out.retain(|e| !e.starts_with("HOME="));
        let home = read_passwd()
            .and_then(|t| home_of(&t, uid))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string());
        out.push(format!("HOME={home}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_uid_entry() {
        let t = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nbad line\n";
        assert_eq!(home_of(t, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(t, 1000).as_deref(), Some("/home/user"));
        assert_eq!(home_of(t, 42), None);
    }

    #[test]
    fn keeps_a_given_home() {
        let env = vec!["HOME=/x".to_string(), "A=b".to_string()];
        assert_eq!(with_home(&env, 0), env);
    }
}
