//! Workflow, step and step-statistics RPCs.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "workflows and steps (hot-path issue)";

pub async fn list_workflows(
    _state: &AppState,
    _request: Request<pb::WorkflowFilter>,
) -> Result<pb::WorkflowList> {
    Err(Error::unimplemented(AREA))
}

pub async fn create_workflow(
    _state: &AppState,
    _request: Request<pb::WorkflowRequest>,
) -> Result<pb::WorkflowId> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_workflow(
    _state: &AppState,
    _request: Request<pb::WorkflowId>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_steps(
    _state: &AppState,
    _request: Request<pb::StepFilter>,
) -> Result<pb::StepList> {
    Err(Error::unimplemented(AREA))
}

pub async fn create_step(
    _state: &AppState,
    _request: Request<pb::StepRequest>,
) -> Result<pb::StepId> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_step(_state: &AppState, _request: Request<pb::StepId>) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_step_stats(
    _state: &AppState,
    _request: Request<pb::StepStatsRequest>,
) -> Result<pb::StepStatsResponse> {
    Err(Error::unimplemented(AREA))
}
