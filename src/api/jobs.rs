//! Provider job RPCs, and CreateWorker/DeleteWorker which go through jobs.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "provider jobs and worker deployment (fleet issue)";

pub async fn create_worker(
    _state: &AppState,
    _request: Request<pb::WorkerRequest>,
) -> Result<pb::WorkerIds> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_worker(
    _state: &AppState,
    _request: Request<pb::WorkerDeletion>,
) -> Result<pb::JobId> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_jobs(
    _state: &AppState,
    _request: Request<pb::ListJobsRequest>,
) -> Result<pb::JobsList> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_job_statuses(
    _state: &AppState,
    _request: Request<pb::JobStatusRequest>,
) -> Result<pb::JobStatusResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_job(_state: &AppState, _request: Request<pb::JobId>) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_job(_state: &AppState, _request: Request<pb::JobUpdate>) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}
