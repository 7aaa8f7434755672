//! The dependency sweep (docs/architecture.md#background-loops), every
//! `--dependency-sweep-interval`: waiting tasks whose prerequisites all succeeded become pending
//! (the request path also promotes them when a prerequisite succeeds; the sweep catches everything
//! else), and waiting tasks whose prerequisite failed for good are failed, cascading down chains.
//! One fenced transaction per round, a bounded number of rounds per pass. SQL in
//! `db::dependencies`.
//!
//! A term starts with a full pass (a scan of every waiting task) and repeats one every
//! `FULL_PASS_EVERY`; in between, a pass looks only at the dependents of prerequisites that
//! settled since the previous pass began (minus `SETTLE_SLACK`, for transactions that committed
//! late), which costs an index probe when nothing happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::counter;
use scoped_futures::ScopedFutureExt as _;
use tokio::time::Instant;

use super::{LeaderContext, LeaderLoop};
use crate::config::Config;
use crate::db::Op;
use crate::db::dependencies::{self as sql, FailedDependent, Scope};
use crate::error::Result;
use crate::telemetry::metrics as m;

/// Tasks promoted or failed per round (one transaction).
const BATCH: i64 = 500;
/// Rounds per pass: a chain deeper than this, or a backlog larger than ROUNDS × BATCH, continues
/// at the next pass.
const ROUNDS: usize = 16;
/// How often a pass looks at every waiting task, whatever changed.
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(60);
/// How far before the previous pass an incremental pass looks: `modified_at` is the start of the
/// updating transaction, which may have committed after that pass read.
pub const SETTLE_SLACK: Duration = Duration::from_secs(10);

/// Where the sweep stands: the term it ran in, when its last pass began (database clock), and when
/// its last full pass ran.
#[derive(Default)]
struct Progress {
    epoch: Option<i64>,
    last_pass: Option<DateTime<Utc>>,
    last_full: Option<Instant>,
}

pub fn leader_loop(config: &Config) -> LeaderLoop {
    let progress: Arc<Mutex<Progress>> = Arc::default();
    LeaderLoop::every(
        "dependency_sweep",
        config.dependency_sweep_interval,
        move |ctx| {
            let progress = progress.clone();
            async move {
                let scope = {
                    let p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    match (p.epoch, p.last_pass, p.last_full) {
                        (Some(epoch), Some(since), Some(full))
                            if epoch == ctx.epoch && full.elapsed() < FULL_PASS_EVERY =>
                        {
                            let slack = chrono::Duration::from_std(SETTLE_SLACK)
                                .unwrap_or(chrono::Duration::zero());
                            Scope::SettledSince(since - slack)
                        }
                        _ => Scope::All,
                    }
                };
                let (_, began) = run_pass(&ctx, scope).await?;
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.epoch = Some(ctx.epoch);
                p.last_pass = Some(began);
                if scope == Scope::All {
                    p.last_full = Some(Instant::now());
                }
                Ok(())
            }
        },
    )
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub promoted: Vec<i32>,
    pub failed: Vec<FailedDependent>,
}

/// One full pass, fenced by the term of `ctx`.
pub async fn run_once(ctx: &LeaderContext) -> Result<Report> {
    Ok(run_pass(ctx, Scope::All).await?.0)
}

/// One pass over `scope`, fenced by the term of `ctx`: rounds until nothing changes (at most
/// `ROUNDS`). Returns what it did and when it began (database clock).
pub async fn run_pass(ctx: &LeaderContext, scope: Scope) -> Result<(Report, DateTime<Utc>)> {
    let mut report = Report::default();
    let mut began = None;
    for _ in 0..ROUNDS {
        let (round, now) = ctx
            .fenced_tx(Op::DependencySweep, |tx| {
                async move {
                    let now = sql::now(tx).await?;
                    Ok((sql::sweep_round(tx, scope, BATCH).await?, now))
                }
                .scope_boxed()
            })
            .await?;
        began.get_or_insert(now);
        let sql::Round { promoted, failed } = round;
        if promoted.is_empty() && failed.is_empty() {
            break;
        }
        counter!(m::DEPENDENCY_PROMOTED).increment(promoted.len() as u64);
        counter!(m::DEPENDENCY_FAILED).increment(failed.len() as u64);
        for f in &failed {
            tracing::info!(
                task_id = f.task_id,
                prerequisite = f.prerequisite,
                "waiting task failed: a prerequisite failed for good"
            );
        }
        if !promoted.is_empty() {
            tracing::debug!(count = promoted.len(), "waiting tasks promoted to pending");
        }
        report.promoted.extend(promoted);
        report.failed.extend(failed);
    }
    Ok((report, began.unwrap_or_else(Utc::now)))
}
