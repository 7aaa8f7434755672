//! The watchdog (design.md §5, behavior.md §5.5), every `--watchdog-interval`: workers that stopped
//! pinging go offline (R→O, P→Q, F→L; I→O on the new-worker clock), and idle or long-lost
//! non-permanent workers are deleted — all decided from database timestamps, so any replica that
//! becomes leader continues exactly where the previous one was. A ping brings an offline worker
//! back (the hot path does O→R, Q→P, L→F), so an operator's pause survives an outage.
//!
//! Deletion goes through [`delete_worker`], the one place that decides how a worker is removed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use metrics::counter;
use scoped_futures::ScopedFutureExt as _;

use super::{LeaderContext, LeaderLoop};
use crate::config::Config;
use crate::db::Op;
use crate::db::watchdog::{self as sql, Due, Timeouts, WentOffline};
use crate::error::Result;
use crate::telemetry::metrics as m;

/// The most workers one tick moves offline; the rest wait for the next tick.
const OFFLINE_BATCH: i64 = 1000;
/// The most workers one tick deletes (one transaction each).
const DELETE_BATCH: i64 = 100;

pub fn leader_loop(config: &Config) -> LeaderLoop {
    // Cloud workers already reported as due but left alone, so they are logged once, not every tick.
    let reported: Arc<Mutex<HashSet<i32>>> = Arc::default();
    LeaderLoop::every("watchdog", config.watchdog_interval, move |ctx| {
        let reported = reported.clone();
        async move {
            let report = run_once(&ctx).await?;
            let mut reported = reported.lock().unwrap_or_else(|e| e.into_inner());
            reported.retain(|id| report.deferred.iter().any(|d| d.worker_id == *id));
            for due in &report.deferred {
                if reported.insert(due.worker_id) {
                    tracing::info!(
                        worker_id = due.worker_id,
                        worker = %due.worker_name,
                        provider = due.provider.as_deref().unwrap_or(""),
                        reason = due.reason.label(),
                        "cloud worker due for deletion left alone: provider deletions need the job path"
                    );
                }
            }
            Ok(())
        }
    })
}

/// What one watchdog pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub went_offline: Vec<WentOffline>,
    /// Deleted workers, with the tasks failed (free retry) with them.
    pub deleted: Vec<(Due, Vec<i32>)>,
    /// Due for deletion but left alone (cloud workers, until the job path exists).
    pub deferred: Vec<Due>,
}

/// One watchdog pass, fenced by the term of `ctx`.
pub async fn run_once(ctx: &LeaderContext) -> Result<Report> {
    let timeouts = Timeouts::from_config(&ctx.config);
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
        counter!(m::WATCHDOG_TRANSITIONS, "to" => status_label(&w.to)).increment(1);
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
            Deletion::Deferred(due) => {
                counter!(m::WATCHDOG_DELETIONS, "reason" => due.reason.label(), "outcome" => "deferred")
                    .increment(1);
                report.deferred.push(due);
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
    /// Left alone: deleting it needs a provider call.
    Deferred(Due),
    /// A ping or an operator change made it not due any more.
    NoLongerDue,
}

/// Deletes a worker the watchdog found idle or lost, in one fenced transaction, after waiting for
/// an in-flight ping of it and checking again that it is due.
///
/// Until the fleet work provides provider jobs, only workers that need no provider call are
/// deleted here (provider `local`, or a manual worker without region and flavor): their unfinished
/// tasks are failed with a free retry and the row is removed. Cloud workers are left alone
/// ([`Deletion::Deferred`]). Switching to the job path (schedule a `D` job) happens here only.
pub async fn delete_worker(ctx: &LeaderContext, worker_id: i32) -> Result<Deletion> {
    let timeouts = Timeouts::from_config(&ctx.config);
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
            if !due.is_local() {
                return Ok(Deletion::Deferred(due));
            }
            let why = match due.reason {
                sql::DueReason::Idle => "idle",
                sql::DueReason::Lost => "lost (offline too long)",
            };
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

/// The metric label of an offline status (a closed set).
fn status_label(status: &str) -> &'static str {
    match status {
        "O" => "O",
        "Q" => "Q",
        "L" => "L",
        _ => "other",
    }
}
