//! The dependency sweep (design.md §5), every `--dependency-sweep-interval`: waiting tasks whose
//! prerequisites all succeeded become pending (the request path also promotes them when a
//! prerequisite succeeds; the sweep catches everything else, e.g. a prerequisite that had already
//! succeeded), and waiting tasks whose prerequisite failed for good are failed, cascading down
//! chains. One fenced transaction per round, a bounded number of rounds per tick. SQL in
//! `db::dependencies`.

use metrics::counter;
use scoped_futures::ScopedFutureExt as _;

use super::{LeaderContext, LeaderLoop};
use crate::config::Config;
use crate::db::Op;
use crate::db::dependencies::{self as sql, FailedDependent};
use crate::error::Result;
use crate::telemetry::metrics as m;

/// Tasks promoted or failed per round (one transaction).
const BATCH: i64 = 500;
/// Rounds per tick: a chain deeper than this, or a backlog larger than ROUNDS × BATCH, continues
/// at the next tick.
const ROUNDS: usize = 16;

pub fn leader_loop(config: &Config) -> LeaderLoop {
    LeaderLoop::every(
        "dependency_sweep",
        config.dependency_sweep_interval,
        |ctx| async move { run_once(&ctx).await.map(|_| ()) },
    )
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub promoted: Vec<i32>,
    pub failed: Vec<FailedDependent>,
}

/// One sweep, fenced by the term of `ctx`: rounds until nothing changes (at most `ROUNDS`).
pub async fn run_once(ctx: &LeaderContext) -> Result<Report> {
    let mut report = Report::default();
    for _ in 0..ROUNDS {
        let (promoted, failed) = ctx
            .fenced_tx(Op::DependencySweep, |tx| {
                async move {
                    let failed = sql::fail_doomed(tx, BATCH).await?;
                    let promoted = sql::promote_ready(tx, BATCH).await?;
                    Ok((promoted, failed))
                }
                .scope_boxed()
            })
            .await?;
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
    Ok(report)
}
