//! Recruiter RPCs (as the original scitq's): ListRecruiters (optionally for one step),
//! CreateRecruiter, UpdateRecruiter, DeleteRecruiter. Validation is
//! `domain::recruitment::validate_settings`.

use tonic::Request;

use super::access::{self, Machines};
use crate::api::state::AppState;
use crate::db::ownership::Object;
use crate::db::recruiters::{self, Recruiter, RecruiterChanges};
use crate::domain::ownership::{Actor, Owner};
use crate::error::{Error, Result};
use crate::proto as pb;

const ACK: pb::Ack = pb::Ack { success: true };

fn check_step(step_id: i32) -> Result<()> {
    if step_id <= 0 {
        return Err(Error::invalid("step_id is required"));
    }
    Ok(())
}

impl From<pb::Recruiter> for Recruiter {
    fn from(r: pb::Recruiter) -> Recruiter {
        Recruiter {
            step_id: r.step_id,
            rank: r.rank,
            protofilter: r.protofilter,
            concurrency: r.concurrency,
            prefetch: r.prefetch,
            max_workers: r.max_workers,
            rounds: r.rounds,
            timeout: r.timeout,
            cpu_per_task: r.cpu_per_task,
            memory_per_task: r.memory_per_task.map(f64::from),
            disk_per_task: r.disk_per_task.map(f64::from),
            prefetch_percent: r.prefetch_percent,
            concurrency_min: r.concurrency_min,
            concurrency_max: r.concurrency_max,
        }
    }
}

/// Changing a recruiter: machines may be managed here, and the recruiter is the caller's.
async fn recruiter_access(state: &AppState, actor: Actor, step_id: i32, rank: i32) -> Result<()> {
    access::machines(state, actor, Machines::AnyProvider).await?;
    access::owned(state, actor, Object::Recruiter { step_id, rank }).await
}

fn to_pb(r: Recruiter) -> pb::Recruiter {
    pb::Recruiter {
        step_id: r.step_id,
        rank: r.rank,
        protofilter: r.protofilter,
        concurrency: r.concurrency,
        prefetch: r.prefetch,
        max_workers: r.max_workers,
        rounds: r.rounds,
        timeout: r.timeout,
        cpu_per_task: r.cpu_per_task,
        memory_per_task: r.memory_per_task.map(|v| v as f32),
        disk_per_task: r.disk_per_task.map(|v| v as f32),
        prefetch_percent: r.prefetch_percent,
        concurrency_min: r.concurrency_min,
        concurrency_max: r.concurrency_max,
    }
}

pub async fn list_recruiters(
    state: &AppState,
    request: Request<pb::RecruiterFilter>,
) -> Result<pb::RecruiterList> {
    let step_id = request.into_inner().step_id;
    let list = recruiters::list(&state.db, step_id).await?;
    Ok(pb::RecruiterList {
        recruiters: list.into_iter().map(to_pb).collect(),
    })
}

pub async fn create_recruiter(
    state: &AppState,
    request: Request<pb::Recruiter>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let recruiter = Recruiter::from(request.into_inner());
    check_step(recruiter.step_id)?;
    recruiter.validate()?;
    access::machines(state, actor, Machines::AnyProvider).await?;
    access::owned(state, actor, Object::Step(recruiter.step_id)).await?;
    recruiters::create(&state.db, &recruiter, Owner::of(actor)).await?;
    tracing::info!(
        step_id = recruiter.step_id,
        rank = recruiter.rank,
        "recruiter created"
    );
    Ok(ACK)
}

pub async fn update_recruiter(
    state: &AppState,
    request: Request<pb::RecruiterUpdate>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let r = request.into_inner();
    check_step(r.step_id)?;
    recruiter_access(state, actor, r.step_id, r.rank).await?;
    let changes = RecruiterChanges {
        protofilter: r.protofilter,
        concurrency: r.concurrency,
        prefetch: r.prefetch,
        max_workers: r.max_workers,
        rounds: r.rounds,
        timeout: r.timeout,
        cpu_per_task: r.cpu_per_task,
        memory_per_task: r.memory_per_task.map(f64::from),
        disk_per_task: r.disk_per_task.map(f64::from),
        prefetch_percent: r.prefetch_percent,
        concurrency_min: r.concurrency_min,
        concurrency_max: r.concurrency_max,
    };
    if changes.is_empty() {
        return Err(Error::invalid("nothing to update: give at least one field"));
    }
    recruiters::update(&state.db, r.step_id, r.rank, &changes).await?;
    Ok(ACK)
}

pub async fn delete_recruiter(
    state: &AppState,
    request: Request<pb::RecruiterId>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let id = request.into_inner();
    check_step(id.step_id)?;
    recruiter_access(state, actor, id.step_id, id.rank).await?;
    // No error when absent (as in the original): deleting is idempotent.
    recruiters::delete(&state.db, id.step_id, id.rank).await?;
    Ok(ACK)
}
