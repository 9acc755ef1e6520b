//! Errors of the CRI services and their gRPC codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// A missing or invalid request field, named.
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Internal(String),
    /// A deadline of the request passed (ExecSync's timeout).
    #[error("{0}")]
    DeadlineExceeded(String),
}

pub type Result<T> = std::result::Result<T, CriError>;

pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> CriError {
    CriError::Invalid {
        field: field.into(),
        msg: msg.into(),
    }
}

pub fn internal(e: impl std::fmt::Display) -> CriError {
    CriError::Internal(e.to_string())
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        match &e {
            CriError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            CriError::NotFound(_) => Status::not_found(e.to_string()),
            CriError::Precondition(_) => Status::failed_precondition(e.to_string()),
            CriError::Internal(_) => Status::internal(e.to_string()),
            // The kubelet counts only DEADLINE_EXCEEDED as a probe timeout.
            CriError::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for CriError {
    fn from(e: crate::store::StoreError) -> Self {
        CriError::Internal(e.to_string())
    }
}

impl From<std::io::Error> for CriError {
    fn from(e: std::io::Error) -> Self {
        CriError::Internal(e.to_string())
    }
}

impl From<berth_image::Error> for CriError {
    fn from(e: berth_image::Error) -> Self {
        match e {
            berth_image::Error::NotFound(what) => CriError::NotFound(what),
            e => CriError::Internal(e.to_string()),
        }
    }
}
