//! One-time, expiring tokens for the URLs that Exec/Attach/PortForward return.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::Request;

/// Bytes from the kernel's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into the buffer's tail.
        let r = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("getrandom failed: {e}");
        }
        filled += r as usize;
    }
    b
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// As many tokens are outstanding as the cache holds.
    Full(usize),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Full(n) => write!(f, "too many pending streaming requests (limit {n})"),
        }
    }
}

impl std::error::Error for TokenError {}

pub(crate) struct TokenCache {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, (Request, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, max: usize) -> Self {
        TokenCache {
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, req: Request) -> Result<String, TokenError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= self.max {
            map.retain(|_, (_, deadline)| *deadline > now);
        }
        if map.len() >= self.max {
            return Err(TokenError::Full(self.max));
        }
        // 16 random bytes: unguessable, URL-safe once encoded.
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>());
        map.insert(token.clone(), (req, now + self.ttl));
        Ok(token)
    }

    /// Takes the request of a token: a token works once, and not after it expired.
    pub fn consume(&self, token: &str) -> Option<Request> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (req, deadline) = map.remove(token)?;
        (deadline > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request::PortForward {
            pod_id: "p".into(),
            ports: vec![80],
        }
    }

    #[test]
    fn one_time_and_expiring() {
        let c = TokenCache::new(Duration::from_secs(60), 2);
        let t = c.insert(req()).unwrap();
        assert!(c.consume(&t).is_some());
        assert!(c.consume(&t).is_none(), "reused");
        assert!(c.consume("nope").is_none());
        let c = TokenCache::new(Duration::ZERO, 2);
        let t = c.insert(req()).unwrap();
        assert!(c.consume(&t).is_none(), "expired");
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(Duration::from_secs(60), 2);
        c.insert(req()).unwrap();
        c.insert(req()).unwrap();
        assert_eq!(c.insert(req()).unwrap_err(), TokenError::Full(2));
    }
}
