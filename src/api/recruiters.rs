//! Recruiter RPCs.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "recruiters (fleet issue)";

pub async fn list_recruiters(
    _state: &AppState,
    _request: Request<pb::RecruiterFilter>,
) -> Result<pb::RecruiterList> {
    Err(Error::unimplemented(AREA))
}

pub async fn create_recruiter(
    _state: &AppState,
    _request: Request<pb::Recruiter>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_recruiter(
    _state: &AppState,
    _request: Request<pb::RecruiterUpdate>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_recruiter(
    _state: &AppState,
    _request: Request<pb::RecruiterId>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}
