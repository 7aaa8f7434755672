//! Workflow, step and step-statistics RPCs.

use tonic::Request;

use super::access;
use super::tasks::{non_negative, page_limit};
use crate::api::state::AppState;
use crate::db::ownership::Object;
use crate::db::workflows::{self, WorkflowRef};
use crate::domain::limits;
use crate::domain::status::RunStrategy;
use crate::error::{Error, Result};
use crate::proto as pb;

const ACK: pb::Ack = pb::Ack { success: true };

pub async fn list_workflows(
    state: &AppState,
    request: Request<pb::WorkflowFilter>,
) -> Result<pb::WorkflowList> {
    let r = request.into_inner();
    let (limit, offset) = (
        Some(page_limit(&limits::LIST_WORKFLOWS, r.limit)?),
        non_negative("offset", r.offset)?,
    );
    let name = r.name_like.filter(|s| !s.is_empty());
    Ok(pb::WorkflowList {
        workflows: workflows::list_workflows(&state.db, name.as_deref(), limit, offset).await?,
    })
}

pub async fn create_workflow(
    state: &AppState,
    request: Request<pb::WorkflowRequest>,
) -> Result<pb::WorkflowId> {
    let owner = access::new_owner(&request);
    let r = request.into_inner();
    if r.name.trim().is_empty() {
        return Err(Error::invalid("workflow name must not be empty"));
    }
    let strategy = match r.run_strategy.as_deref() {
        None | Some("") => RunStrategy::Batch,
        Some(s) => RunStrategy::parse(s)?,
    };
    if let Some(m) = r.maximum_workers.filter(|&m| m < 0) {
        return Err(Error::invalid(format!(
            "maximum_workers must not be negative, not {m}"
        )));
    }
    let workflow_id =
        workflows::create_workflow(&state.db, &r.name, strategy, r.maximum_workers, owner).await?;
    Ok(pb::WorkflowId { workflow_id })
}

pub async fn delete_workflow(
    state: &AppState,
    request: Request<pb::WorkflowId>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let workflow_id = request.into_inner().workflow_id;
    access::owned(state, actor, Object::Workflow(workflow_id)).await?;
    let tasks = workflows::delete_workflow(&state.db, workflow_id).await?;
    tracing::info!(workflow_id, tasks, "workflow deleted");
    Ok(ACK)
}

pub async fn list_steps(
    state: &AppState,
    request: Request<pb::StepFilter>,
) -> Result<pb::StepList> {
    let r = request.into_inner();
    let (limit, offset) = (
        Some(page_limit(&limits::LIST_STEPS, r.limit)?),
        non_negative("offset", r.offset)?,
    );
    let workflow = Some(r.workflow_id).filter(|&w| w != 0);
    Ok(pb::StepList {
        steps: workflows::list_steps(&state.db, workflow, limit, offset).await?,
    })
}

pub async fn create_step(
    state: &AppState,
    request: Request<pb::StepRequest>,
) -> Result<pb::StepId> {
    let r = request.into_inner();
    if r.name.trim().is_empty() {
        return Err(Error::invalid("step name must not be empty"));
    }
    let workflow = match (
        r.workflow_id.filter(|&w| w != 0),
        r.workflow_name.as_deref().filter(|n| !n.is_empty()),
    ) {
        (Some(id), _) => WorkflowRef::Id(id),
        (None, Some(name)) => WorkflowRef::Name(name),
        (None, None) => return Err(Error::invalid("give workflow_id or workflow_name")),
    };
    let step_id = workflows::create_step(&state.db, &r.name, workflow).await?;
    Ok(pb::StepId { step_id })
}

pub async fn delete_step(state: &AppState, request: Request<pb::StepId>) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let step_id = request.into_inner().step_id;
    access::owned(state, actor, Object::Step(step_id)).await?;
    workflows::delete_step(&state.db, step_id).await?;
    Ok(ACK)
}

pub async fn get_step_stats(
    state: &AppState,
    request: Request<pb::StepStatsRequest>,
) -> Result<pb::StepStatsResponse> {
    let r = request.into_inner();
    let workflow = r.workflow_id.filter(|&w| w != 0);
    Ok(pb::StepStatsResponse {
        stats: workflows::step_stats(&state.db, workflow, &r.step_ids).await?,
    })
}
