//! Pure types and rules: status alphabets and transitions, capacity, credentials, protofilter,
//! quotas, recruiter decisions, allowed docker options and storage locations. No tonic, no SQL,
//! no I/O — everything here is property-tested and benchable.

pub mod catalog;
pub mod credentials;
pub mod dispatch;
pub mod docker_options;
pub mod events;
pub mod fetch_policy;
pub mod filters;
pub mod jwt;
pub mod limits;
pub mod logs;
pub mod ownership;
pub mod protofilter;
pub mod quota;
pub mod recruitment;
pub mod status;
pub mod tasks;
pub mod templates;
pub mod ws;

/// A rule was broken by the input (`Invalid`) or by the current state (`Conflict`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, Error>;
