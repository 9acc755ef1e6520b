//! Errors of the runtime library. Each carries what failed and why, so a user
//! reading one line can tell which field, file or syscall was at fault.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json (or a process.json) is malformed or invalid.
    #[error("{file}: {field}: {msg}")]
    InvalidConfig {
        file: String,
        field: String,
        msg: String,
    },
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("container {id:?} is {status}: {msg}")]
    BadState {
        id: String,
        status: String,
        msg: String,
    },
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' only")]
    InvalidId(String),
    // The errno is part of the message (not a chained source) because init
    // errors travel to the parent as text.
    #[error("{ctx}: {err}")]
    Os { ctx: String, err: io::Error },
    #[error(transparent)]
    Cgroup(#[from] berth_cgroups::Error),
    /// An error reported by the container's init process before it ran the
    /// user's program.
    #[error("container init: {0}")]
    Init(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn config(file: &str, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidConfig {
            file: file.to_string(),
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Adds a "what we were doing" context to OS-level errors.
pub trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|source| Error::Os {
            ctx: f(),
            err: source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::errno::Errno> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Os {
            ctx: f(),
            err: io::Error::from_raw_os_error(e as i32),
        })
    }
}

/// The last OS error as an `Error` with context.
pub fn last_os(ctx: impl Into<String>) -> Error {
    Error::Os {
        ctx: ctx.into(),
        err: io::Error::last_os_error(),
    }
}
