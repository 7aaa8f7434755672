//! The watchdog (docs/architecture.md#background-loops), every `--watchdog-interval`: workers that
//! stopped pinging go offline (R→O, P→Q, F→L; I→O on the new-worker clock), and idle or long-lost
//! non-permanent workers are deleted — all decided from database timestamps, so any replica that
//! becomes leader continues exactly where the previous one was. A ping brings an offline worker
//! back (the hot path does O→R, Q→P, L→F), so an operator's pause survives an outage.
//!
//! Deletion goes through [`delete_worker`], the one place that decides how a worker is removed.

use metrics::counter;
use scoped_futures::ScopedFutureExt as _;

use super::{LeaderContext, LeaderLoop};
use crate::config::Config;
use crate::db::watchdog::{self as sql, Due, Timeouts, WentOffline};
use crate::db::{Op, jobs};
use crate::domain::status::WorkerStatus;
use crate::error::Result;
use crate::telemetry::metrics as m;

/// The most workers one tick moves offline; the rest wait for the next tick.
const OFFLINE_BATCH: i64 = 1000;
/// The most workers one tick deletes (one transaction each).
const DELETE_BATCH: i64 = 100;

pub fn leader_loop(config: &Config) -> LeaderLoop {
    LeaderLoop::every(
        "watchdog",
        config.watchdog_interval,
        move |ctx| async move {
            run_once(&ctx).await?;
            Ok(())
        },
    )
}

/// What one watchdog pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub went_offline: Vec<WentOffline>,
    /// Deleted workers, with the tasks failed (free retry) with them.
    pub deleted: Vec<(Due, Vec<i32>)>,
    /// Provider machines due for deletion: a delete job (D) was scheduled (the job runner stops
    /// the machine, then removes the row), with its id; their tasks were failed with a free retry.
    pub scheduled: Vec<(Due, i32)>,
}

/// The watchdog's clocks, read from the configuration here, at the edge: `db::watchdog` takes
/// them as values and never reads the configuration.
fn timeouts(c: &Config) -> Timeouts {
    Timeouts {
        offline: c.offline_timeout,
        idle: c.idle_timeout,
        new_worker_idle: c.new_worker_idle_timeout,
        lost: c.lost_timeout,
        download_grace: c.task_download_timeout,
    }
}

/// One watchdog pass, fenced by the term of `ctx`.
pub async fn run_once(ctx: &LeaderContext) -> Result<Report> {
    let timeouts = timeouts(&ctx.config);
    let (went_offline, due) = ctx
        .fenced_tx(Op::Watchdog, |tx| {
            async move {
                let offline = sql::mark_offline(tx, &timeouts, OFFLINE_BATCH).await?;
                let due = sql::due_for_deletion(tx, &timeouts, None, DELETE_BATCH).await?;
                Ok((offline, due))
            }
            .scope_boxed()
        })
        .await?;
    for w in &went_offline {
        counter!(m::WATCHDOG_TRANSITIONS, "to" => status_label(w.to)).increment(1);
        tracing::info!(worker_id = w.worker_id, worker = %w.worker_name, from = %w.from, to = %w.to, "worker stopped pinging: offline");
    }
    let mut report = Report {
        went_offline,
        ..Report::default()
    };
    for candidate in due {
        match delete_worker(ctx, candidate.worker_id).await? {
            Deletion::Deleted(due, tasks) => {
                counter!(m::WATCHDOG_DELETIONS, "reason" => due.reason.label(), "outcome" => "deleted")
                    .increment(1);
                tracing::info!(worker_id = due.worker_id, worker = %due.worker_name, reason = due.reason.label(), failed_tasks = ?tasks, "deleted worker");
                report.deleted.push((due, tasks));
            }
            Deletion::Scheduled(due, job_id) => {
                counter!(m::WATCHDOG_DELETIONS, "reason" => due.reason.label(), "outcome" => "scheduled")
                    .increment(1);
                tracing::info!(worker_id = due.worker_id, worker = %due.worker_name, provider = due.provider.as_deref().unwrap_or(""), reason = due.reason.label(), job_id, "delete job scheduled for worker");
                report.scheduled.push((due, job_id));
            }
            Deletion::NoLongerDue => {}
        }
    }
    Ok(report)
}

/// What [`delete_worker`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The worker row is gone; its unfinished tasks were failed with a free retry.
    Deleted(Due, Vec<i32>),
    /// Its machine belongs to a provider: a delete job (D) was scheduled (or was already open),
    /// with this id.
    Scheduled(Due, i32),
    /// A ping or an operator change made it not due any more.
    NoLongerDue,
}

/// Deletes a worker the watchdog found idle or lost, in one fenced transaction, after waiting for
/// an in-flight ping of it and checking again that it is due.
///
/// A worker started by hand (no region, so no provider machine) is deleted here: its unfinished
/// tasks are failed with a free retry and the row is removed. A worker on a provider's machine
/// (cloud or `local`) goes through the job path: a delete job is scheduled in the same
/// transaction (`db::jobs::schedule_worker_deletion`: the worker becomes D, its tasks are failed
/// with a free retry) and the job runner stops the machine.
pub async fn delete_worker(ctx: &LeaderContext, worker_id: i32) -> Result<Deletion> {
    let timeouts = timeouts(&ctx.config);
    let shards = ctx.config.assign_shards;
    ctx.fenced_tx(Op::Watchdog, |tx| {
        async move {
            sql::lock_worker(tx, worker_id).await?;
            let Some(due) = sql::due_for_deletion(tx, &timeouts, Some(worker_id), 1)
                .await?
                .pop()
            else {
                return Ok(Deletion::NoLongerDue);
            };
            let why = match due.reason {
                sql::DueReason::Idle => "idle",
                sql::DueReason::Lost => "lost (offline too long)",
            };
            if due.provider.is_some() {
                let reason = format!(
                    "taskqueue: worker {} is being deleted by the watchdog: {why}",
                    due.worker_name
                );
                let job_id =
                    match jobs::schedule_worker_deletion(tx, shards, worker_id, &reason).await? {
                        jobs::Deletion::Scheduled { job_id }
                        | jobs::Deletion::AlreadyScheduled { job_id } => job_id,
                        // Permanent workers are never due; should one be, it is gone now.
                        jobs::Deletion::Deleted => 0,
                    };
                return Ok(Deletion::Scheduled(due, job_id));
            }
            let message = format!(
                "taskqueue: worker {} deleted by the watchdog: {why}",
                due.worker_name
            );
            let tasks = sql::held_tasks(tx, worker_id).await?;
            crate::db::tasks::fail_with_free_retry(tx, shards, &tasks, &message).await?;
            sql::delete_row(tx, &due, &message).await?;
            Ok(Deletion::Deleted(due, tasks))
        }
        .scope_boxed()
    })
    .await
}

/// The metric label of an offline status (a closed set: `WorkerStatus::OFFLINE`, else "other").
fn status_label(status: WorkerStatus) -> &'static str {
    if status.is_offline() {
        status.letter()
    } else {
        "other"
    }
}
