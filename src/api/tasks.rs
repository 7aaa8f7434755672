//! Task RPCs: submission, listing, status updates and retries.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "tasks and dispatch (hot-path issue)";

pub async fn submit_task(
    _state: &AppState,
    _request: Request<pb::TaskRequest>,
) -> Result<pb::TaskResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_task_status(
    _state: &AppState,
    _request: Request<pb::TaskStatusUpdate>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_tasks(
    _state: &AppState,
    _request: Request<pb::ListTasksRequest>,
) -> Result<pb::TaskList> {
    Err(Error::unimplemented(AREA))
}

pub async fn retry_task(
    _state: &AppState,
    _request: Request<pb::RetryTaskRequest>,
) -> Result<pb::TaskResponse> {
    Err(Error::unimplemented(AREA))
}
