//! Provider job RPCs (as the original scitq's): ListJobs, GetJobStatuses, DeleteJob, UpdateJob, and
//! CreateWorker / DeleteWorker, which go through jobs.

use std::collections::HashMap;

use tonic::Request;

use super::access::{self, Machines};
use crate::api::state::AppState;
use crate::db::jobs::{self, NewWorkers};
use crate::domain::limits;
use crate::domain::status::JobStatus;
use crate::error::{Error, Result};
use crate::proto as pb;

/// Most workers one CreateWorker may ask for.
const MAX_CREATE: i32 = 10_000;

impl TryFrom<pb::WorkerRequest> for NewWorkers {
    type Error = Error;

    fn try_from(r: pb::WorkerRequest) -> Result<NewWorkers> {
        if r.number <= 0 || r.number > MAX_CREATE {
            return Err(Error::invalid(format!(
                "number must be between 1 and {MAX_CREATE} (got {})",
                r.number
            )));
        }
        if r.concurrency < 0 || r.prefetch < 0 {
            return Err(Error::invalid(
                "concurrency and prefetch must not be negative",
            ));
        }
        if r.flavor_id <= 0 || r.region_id <= 0 {
            return Err(Error::invalid("flavor_id and region_id are required"));
        }
        let step_id = match r.step_id {
            Some(s) if s < 0 => return Err(Error::invalid(format!("invalid step_id {s}"))),
            Some(0) | None => None,
            Some(s) => Some(s),
        };
        Ok(NewWorkers {
            flavor_id: r.flavor_id,
            region_id: r.region_id,
            provider_id: r.provider_id.max(0),
            number: r.number,
            concurrency: r.concurrency,
            prefetch: r.prefetch,
            step_id,
        })
    }
}

pub async fn create_worker(
    state: &AppState,
    request: Request<pb::WorkerRequest>,
) -> Result<pb::WorkerIds> {
    let actor = access::actor(&request);
    let new = NewWorkers::try_from(request.into_inner())?;
    let target = Machines::New {
        flavor_id: new.flavor_id,
        region_id: new.region_id,
    };
    access::machines(state, actor, target).await?;
    let created = jobs::create_workers(
        &state.db,
        &state.declared_providers,
        &state.config.server_name,
        &new,
    )
    .await?;
    tracing::info!(
        count = created.len(),
        flavor_id = new.flavor_id,
        region_id = new.region_id,
        "workers created"
    );
    Ok(pb::WorkerIds {
        workers_details: created
            .into_iter()
            .map(|c| pb::WorkerDetails {
                worker_id: c.worker_id,
                worker_name: c.worker_name,
                job_id: c.job_id,
            })
            .collect(),
    })
}

pub async fn delete_worker(
    state: &AppState,
    request: Request<pb::WorkerDeletion>,
) -> Result<pb::JobId> {
    let actor = access::actor(&request);
    let req = request.into_inner();
    if req.worker_id <= 0 {
        return Err(Error::invalid("worker_id is required"));
    }
    access::machines(state, actor, Machines::Worker(req.worker_id)).await?;
    let undeployed = req.undeployed.unwrap_or(false);
    let job_id = jobs::delete_worker(
        &state.db,
        state.config.assign_shards,
        req.worker_id,
        undeployed,
    )
    .await?;
    tracing::info!(
        worker_id = req.worker_id,
        job_id,
        undeployed,
        "worker deletion"
    );
    Ok(pb::JobId { job_id })
}

pub async fn list_jobs(
    state: &AppState,
    request: Request<pb::ListJobsRequest>,
) -> Result<pb::JobsList> {
    let req = request.into_inner();
    // A limit below 1 means 1, as in the original; a larger one than the page allows is clamped.
    let limit = limits::LIST_JOBS.rows("limit", req.limit.map(|l| l.max(1)))?;
    let offset = i64::from(req.offset.unwrap_or(0).max(0));
    let jobs = jobs::list_jobs(&state.db, limit, offset).await?;
    Ok(pb::JobsList {
        jobs: jobs
            .into_iter()
            .map(|j| pb::Job {
                job_id: j.job_id,
                status: j.status,
                flavor_id: j.flavor_id,
                retry: j.retry,
                worker_id: j.worker_id,
                action: j.action,
                created_at: j.created_at,
                modified_at: j.modified_at,
                progression: j.progression,
                log: j.log,
            })
            .collect(),
    })
}

pub async fn get_job_statuses(
    state: &AppState,
    request: Request<pb::JobStatusRequest>,
) -> Result<pb::JobStatusResponse> {
    let ids = request.into_inner().job_ids;
    let found: HashMap<i32, (String, i32)> = jobs::job_statuses(&state.db, &ids)
        .await?
        .into_iter()
        .map(|(id, status, progression)| (id, (status, progression)))
        .collect();
    Ok(pb::JobStatusResponse {
        statuses: ids
            .iter()
            .map(|id| {
                let (status, progression) = found
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| ("unknown".into(), 0));
                pb::JobStatus {
                    job_id: *id,
                    status,
                    progression,
                }
            })
            .collect(),
    })
}

pub async fn delete_job(state: &AppState, request: Request<pb::JobId>) -> Result<pb::Ack> {
    let job_id = request.into_inner().job_id;
    if job_id <= 0 {
        return Err(Error::invalid("job_id is required"));
    }
    if !jobs::delete_job(&state.db, job_id).await? {
        return Err(Error::not_found(format!("job {job_id} not found")));
    }
    Ok(pb::Ack { success: true })
}

pub async fn update_job(state: &AppState, request: Request<pb::JobUpdate>) -> Result<pb::Ack> {
    let req = request.into_inner();
    if req.job_id <= 0 {
        return Err(Error::invalid("job_id is required"));
    }
    let status = match req.status.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s)?),
    };
    let append_log = req
        .append_log
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    let progression = req.progression.map(|p| p.clamp(0, 100) as i16);
    if !jobs::update_job(&state.db, req.job_id, status, append_log, progression).await? {
        return Err(Error::not_found(format!("job {} not found", req.job_id)));
    }
    Ok(pb::Ack { success: true })
}
