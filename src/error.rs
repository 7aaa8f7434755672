//! The crate error: a gRPC-shaped code plus a message a person can act on, and the ONE mapping from
//! it to `tonic::Status`. Lower layers (`db`, `domain`) convert into it; handlers only use `?`.

use std::fmt;

/// What kind of failure this is; maps one-to-one onto a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    Aborted,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

/// The crate-wide error. `retryable` marks transient database conflicts (serialization failures,
/// deadlocks) that the transaction helper may run again.
#[derive(Debug)]
pub struct Error {
    pub code: Code,
    pub message: String,
    pub retryable: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: false,
            source: None,
        }
    }
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::domain::Error> for Error {
    fn from(e: crate::domain::Error) -> Self {
        use crate::domain::Error as D;
        match e {
            D::Invalid(m) => Error::invalid(m),
            D::Conflict(m) => Error::failed_precondition(m),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code as C;
        let code = match e.code {
            Code::InvalidArgument => C::InvalidArgument,
            Code::NotFound => C::NotFound,
            Code::AlreadyExists => C::AlreadyExists,
            Code::Unauthenticated => C::Unauthenticated,
            Code::PermissionDenied => C::PermissionDenied,
            Code::FailedPrecondition => C::FailedPrecondition,
            Code::ResourceExhausted => C::ResourceExhausted,
            Code::Aborted => C::Aborted,
            Code::Unavailable => C::Unavailable,
            Code::DeadlineExceeded => C::DeadlineExceeded,
            Code::Internal => C::Internal,
        };
        if code == C::Internal {
            // Internal errors are logged where they become a response: a person must look.
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "internal error");
        }
        // A last bound on what a client is sent, whatever built the message.
        let message = if e.message.len() > crate::domain::limits::MAX_ERROR_MESSAGE_BYTES {
            crate::domain::limits::clip(&e.message, crate::domain::limits::MAX_ERROR_MESSAGE_BYTES)
        } else {
            e.message
        };
        tonic::Status::new(code, message)
    }
}
