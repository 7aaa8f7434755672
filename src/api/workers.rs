//! Worker RPCs: registration, specifications, ping-and-assign, listing and updates.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "workers and ping-and-assign (hot-path issue)";

pub async fn register_worker(
    _state: &AppState,
    _request: Request<pb::WorkerInfo>,
) -> Result<pb::WorkerId> {
    Err(Error::unimplemented(AREA))
}

pub async fn ping_and_take_new_tasks(
    _state: &AppState,
    _request: Request<pb::PingAndGetNewTasksRequest>,
) -> Result<pb::TaskListAndOther> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_workers(
    _state: &AppState,
    _request: Request<pb::ListWorkersRequest>,
) -> Result<pb::WorkersList> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_worker_status(
    _state: &AppState,
    _request: Request<pb::WorkerStatus>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_worker(
    _state: &AppState,
    _request: Request<pb::WorkerUpdateRequest>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_worker_statuses(
    _state: &AppState,
    _request: Request<pb::WorkerStatusRequest>,
) -> Result<pb::WorkerStatusResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_worker_stats(
    _state: &AppState,
    _request: Request<pb::GetWorkerStatsRequest>,
) -> Result<pb::GetWorkerStatsResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn register_specifications(
    _state: &AppState,
    _request: Request<pb::ResourceSpec>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}
