//! Worker RPCs: RegisterWorker, RegisterSpecifications, PingAndTakeNewTasks, ListWorkers,
//! UpdateWorker, UpdateWorkerStatus, GetWorkerStatuses, GetWorkerStats.

use std::time::Instant;

use metrics::{counter, histogram};
use tonic::Request;

use super::access::{self, Machines};
use super::limits::fit_ping_answer;
use crate::api::state::AppState;
use crate::db::workers::{self, Registration, WorkerChanges};
use crate::domain::status::{RecyclableScope, WorkerStatus};
use crate::error::{Error, Result};
use crate::proto as pb;
use crate::telemetry::metrics as m;

const ACK: pb::Ack = pb::Ack { success: true };

pub async fn register_worker(
    state: &AppState,
    request: Request<pb::WorkerInfo>,
) -> Result<pb::WorkerId> {
    let r = request.into_inner();
    if r.name.trim().is_empty() {
        return Err(Error::invalid("worker name must not be empty"));
    }
    let concurrency = non_negative("concurrency", r.concurrency.unwrap_or(1))?;
    let placement = match (
        r.provider.filter(|p| !p.is_empty()),
        r.region.filter(|p| !p.is_empty()),
    ) {
        (Some(p), Some(reg)) => Some((p, reg)),
        _ => None,
    };
    let reg = Registration {
        name: r.name,
        concurrency,
        is_permanent: r.is_permanent.unwrap_or(false),
        placement,
    };
    let done = workers::register(&state.db, state.config.assign_shards, &reg).await?;
    tracing::info!(worker_id = done.worker_id, name = %reg.name, reclaimed = done.reclaimed.len(), "worker registered");
    Ok(pb::WorkerId {
        worker_id: done.worker_id,
    })
}

pub async fn register_specifications(
    state: &AppState,
    request: Request<pb::ResourceSpec>,
) -> Result<pb::Ack> {
    let r = request.into_inner();
    let worker_id: i32 = r.worker_id.trim().parse().map_err(|_| {
        Error::invalid(format!("worker_id must be a number, not {:?}", r.worker_id))
    })?;
    let cpu = non_negative("cpu", r.cpu)?;
    for (name, v) in [("mem", r.mem), ("disk", r.disk)] {
        if !v.is_finite() || v < 0.0 {
            return Err(Error::invalid(format!(
                "{name} must be a non-negative number of GiB"
            )));
        }
    }
    workers::register_specifications(
        &state.db,
        worker_id,
        cpu,
        f64::from(r.mem),
        f64::from(r.disk),
    )
    .await?;
    Ok(ACK)
}

pub async fn ping_and_take_new_tasks(
    state: &AppState,
    request: Request<pb::PingAndGetNewTasksRequest>,
) -> Result<pb::TaskListAndOther> {
    let start = Instant::now();
    let r = request.into_inner();
    let answer = state.pings.ping(r.worker_id, r.stats.as_ref()).await?;
    let claimed = answer.claimed_waits.len();
    counter!(m::TASKS_ASSIGNED).increment(claimed as u64);
    histogram!(m::TASKS_PER_PING).record(claimed as f64);
    for wait in &answer.claimed_waits {
        histogram!(m::TASK_QUEUE_WAIT_SECONDS).record(*wait);
    }
    let updates = answer
        .weights
        .into_iter()
        .map(|(id, weight)| (id, pb::TaskUpdate { weight }))
        .collect();
    let mut reply = pb::TaskListAndOther {
        tasks: answer.tasks,
        concurrency: answer.concurrency,
        updates: Some(pb::TaskUpdateList { updates }),
        active_tasks: answer.active,
    };
    let held_back = fit_ping_answer(&mut reply, crate::config::defaults::MAX_MESSAGE_BYTES);
    if held_back > 0 {
        tracing::debug!(
            worker_id = r.worker_id,
            held_back,
            "ping answer full: the rest goes with the next ping"
        );
    }
    histogram!(m::PING_SECONDS).record(start.elapsed().as_secs_f64());
    Ok(reply)
}

pub async fn list_workers(
    state: &AppState,
    request: Request<pb::ListWorkersRequest>,
) -> Result<pb::WorkersList> {
    let workflow = request.into_inner().workflow_id.filter(|&w| w != 0);
    Ok(pb::WorkersList {
        workers: workers::list(&state.db, workflow).await?,
    })
}

pub async fn update_worker(
    state: &AppState,
    request: Request<pb::WorkerUpdateRequest>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let r = request.into_inner();
    access::machines(state, actor, Machines::Worker(r.worker_id)).await?;
    let changes = WorkerChanges {
        provider_id: r.provider_id,
        flavor_id: r.flavor_id,
        region_id: r.region_id,
        concurrency: r
            .concurrency
            .map(|c| non_negative("concurrency", c))
            .transpose()?,
        prefetch: r
            .prefetch
            .map(|p| non_negative("prefetch", p))
            .transpose()?,
        step_id: r.step_id.map(|s| Some(s).filter(|&s| s != 0)),
        is_permanent: r.is_permanent,
        recyclable_scope: r
            .recyclable_scope
            .as_deref()
            .map(RecyclableScope::parse)
            .transpose()?,
    };
    let nothing = WorkerChanges::default();
    if format!("{changes:?}") == format!("{nothing:?}") {
        return Err(Error::invalid("nothing to update: give at least one field"));
    }
    workers::update(&state.db, r.worker_id, &changes).await?;
    Ok(ACK)
}

pub async fn update_worker_status(
    state: &AppState,
    request: Request<pb::WorkerStatus>,
) -> Result<pb::Ack> {
    let actor = access::actor(&request);
    let r = request.into_inner();
    access::machines(state, actor, Machines::Worker(r.worker_id)).await?;
    let status = WorkerStatus::parse(&r.status)?;
    workers::set_status(&state.db, r.worker_id, status).await?;
    tracing::info!(worker_id = r.worker_id, status = %status, "worker status set");
    Ok(ACK)
}

pub async fn get_worker_statuses(
    state: &AppState,
    request: Request<pb::WorkerStatusRequest>,
) -> Result<pb::WorkerStatusResponse> {
    let ids = request.into_inner().worker_ids;
    Ok(pb::WorkerStatusResponse {
        statuses: workers::statuses(&state.db, &ids).await?,
    })
}

pub async fn get_worker_stats(
    state: &AppState,
    request: Request<pb::GetWorkerStatsRequest>,
) -> Result<pb::GetWorkerStatsResponse> {
    let ids = request.into_inner().worker_ids;
    Ok(pb::GetWorkerStatsResponse {
        worker_stats: workers::stats(&state.db, &ids).await?.into_iter().collect(),
    })
}

fn non_negative(name: &str, v: i32) -> Result<i32> {
    if v < 0 {
        return Err(Error::invalid(format!(
            "{name} must not be negative, not {v}"
        )));
    }
    Ok(v)
}
