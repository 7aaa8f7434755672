//! PingAndTakeNewTasks (design.md §3): liveness, stats and the claim of pending tasks, on every
//! replica: one round trip of two reads for an idle ping (it writes nothing and takes no lock), two
//! round trips for a ping that writes or claims. A ping that has something to write (a claim, an offline worker coming back, a stale
//! `last_ping_at`, stats due) does it under the worker's advisory lock — two pings of one worker
//! never race — and claims through `tq_claim` (schema/0002_dispatch.sql); the decision and the
//! writes are `tq_ping` (schema/0004_ping.sql).

use std::sync::LazyLock;
use std::time::Duration;

use futures::future::try_join;
use prost::Message as _;
use scoped_futures::ScopedFutureExt as _;
use tokio_postgres::Row;

use super::locks::{NS_SHARD, NS_WORKER};
use super::tasks::{TASK_COLUMNS, task_from_row};
use super::{Db, Op, pg_error, retry_allowed};
use crate::domain::dispatch::{self, HeldTask, WorkerSnapshot};
use crate::domain::status::{TaskStatus, WorkerStatus};
use crate::error::{Error, Result};
use crate::proto as pb;

/// How often a rescan below a (step, shard) cursor may happen (see tq_claim_batch).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of dispatch, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    pub shards: u16,
    pub last_ping_write_interval: Duration,
}

/// What a ping answers, before encoding.
#[derive(Debug, Default)]
pub struct PingAnswer {
    pub concurrency: i32,
    /// Tasks in A, sent in full.
    pub tasks: Vec<pb::Task>,
    pub active: Vec<i32>,
    pub weights: Vec<(i32, f64)>,
    /// Seconds each newly claimed task waited in the queue (P → A).
    pub claimed_waits: Vec<f64>,
}

/// The tasks a worker holds, in the statuses a ping reports (built once, not per ping).
static HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
          WHERE t.worker_id = $1 AND t.status IN ('A', 'C', 'D', 'R', 'U', 'V')
          ORDER BY t.task_id"
    )
});

/// The worker as a ping sees it, and — only when it is (or comes back to) R with room for a task —
/// whether any task of its step is pending (NULL otherwise: not probed). Plain SQL and the
/// cheapest probe that is never wrong when it says no: measured with pgbench, a plpgsql call (its
/// expressions are set up again in every transaction, and every ping is one) or the exact
/// per-shard probe of the claim (a subplan set up on every execution) made the read of every idle
/// ping 15–30 % slower. A "maybe" that the claim then does not find (tasks below a shard's cursor
/// before their rescan is due) only costs that ping its second round trip. (`room >= 1` is the
/// capacity rule of `free_capacity` / `tq_free_capacity`, which decide how many.)
const SNAPSHOT: &str = "
    SELECT w.status, w.concurrency, w.prefetch,
           EXTRACT(EPOCH FROM clock_timestamp() - w.last_ping_at)::double precision AS ping_age,
           EXTRACT(EPOCH FROM clock_timestamp() - s.updated_at)::double precision AS stats_age,
           h.held,
           CASE WHEN w.status IN ('R', 'O')
                 AND GREATEST(w.concurrency, 0) + GREATEST(w.prefetch, 0) - h.held + 0.01 >= 1
                THEN EXISTS (SELECT 1 FROM task t
                              WHERE COALESCE(t.step_id, 0) = COALESCE(w.step_id, 0) AND t.status = 'P')
           END AS maybe_pending
      FROM worker w
      LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
     CROSS JOIN LATERAL (SELECT COALESCE(sum(t.weight), 0)::double precision AS held FROM task t
                          WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')) h
     WHERE w.worker_id = $1";

/// The write side of a ping, server-side (schema/0004_ping.sql); one row, `status` NULL for an
/// unknown worker.
const PING: &str = "SELECT status, concurrency, back_from, claimed, waits
                      FROM tq_ping($1, $2, $3, $4, $5, $6, $7, $8)";

fn snapshot_from(row: Option<Row>, worker_id: i32) -> Result<(WorkerSnapshot, Option<bool>)> {
    let row = row.ok_or_else(|| not_registered(worker_id))?;
    let status: String = row.get("status");
    let status = WorkerStatus::parse(status.trim())
        .map_err(|e| Error::internal(format!("stored worker status: {e}")))?;
    let secs = |v: Option<f64>| {
        v.filter(|s| s.is_finite())
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
    };
    let snapshot = WorkerSnapshot {
        status,
        concurrency: row.get("concurrency"),
        prefetch: row.get("prefetch"),
        held_weight: row.get("held"),
        last_ping_age: secs(row.get("ping_age")),
        stats_age: secs(row.get("stats_age")),
    };
    Ok((snapshot, row.get("maybe_pending")))
}

fn not_registered(worker_id: i32) -> Error {
    Error::not_found(format!("worker {worker_id} not found: register it first"))
}

fn answer(concurrency: i32, rows: &[Row], claimed_waits: Vec<f64>) -> PingAnswer {
    let held: Vec<HeldTask> = rows
        .iter()
        .filter_map(|r| {
            let status: String = r.get("status");
            Some(HeldTask {
                task_id: r.get("task_id"),
                status: TaskStatus::parse(status.trim()).ok()?,
                weight: r.get("weight"),
            })
        })
        .collect();
    let report = dispatch::report(&held);
    let tasks = rows
        .iter()
        .filter(|r| report.to_send.contains(&r.get::<_, i32>("task_id")))
        .map(|r| {
            let mut t = task_from_row(r);
            // As the original: the worker fills the status of a new task itself.
            t.status = String::new();
            t
        })
        .collect();
    PingAnswer {
        concurrency,
        tasks,
        active: report.active,
        weights: report.weights,
        claimed_waits,
    }
}

/// Handles one ping of `worker_id`. First round trip: the worker (with a probe of its queue when
/// it has room) and the tasks it holds, two reads pipelined. When the reference model
/// (`dispatch::plan_ping`) finds nothing to write and the probe nothing to claim — an idle ping —
/// that is the answer. Otherwise a second round trip runs `tq_ping` (which decides again on what it
/// reads itself, under the worker's advisory lock, and writes: liveness, stats, coming back online,
/// the claim) pipelined with a new read of the held tasks; both run in autocommit, in order on one
/// connection, so the read sees the claim. A conflict (deadlock, serialization) runs it again.
pub async fn ping(
    db: &Db,
    cfg: &DispatchConfig,
    worker_id: i32,
    stats: Option<&pb::WorkerStats>,
) -> Result<PingAnswer> {
    let shards = i32::from(cfg.shards);
    let has_stats = stats.is_some();
    let first = db
        .run(Op::Ping, |c| {
            async move {
                let (snap_stmt, held_stmt) =
                    try_join(c.prepare_cached(SNAPSHOT), c.prepare_cached(&HELD))
                        .await
                        .map_err(pg_error)?;
                let (snap, held) = try_join(
                    c.query_opt(&snap_stmt, &[&worker_id]),
                    c.query(&held_stmt, &[&worker_id]),
                )
                .await
                .map_err(pg_error)?;
                let (snapshot, maybe_pending) = snapshot_from(snap, worker_id)?;
                let plan = dispatch::plan_ping(&snapshot, has_stats, cfg.last_ping_write_interval);
                let idle = plan.back_online.is_none()
                    && !plan.touch_last_ping
                    && !plan.store_stats
                    && (plan.claim == 0 || maybe_pending == Some(false));
                Ok(idle.then(|| answer(snapshot.concurrency, &held, Vec::new())))
            }
            .scope_boxed()
        })
        .await?;
    if let Some(answer) = first {
        return Ok(answer);
    }

    let stats_bytes = stats.map(|s| s.encode_to_vec());
    let first_shard = i32::from(dispatch::first_shard(worker_id, cfg.shards));
    let touch_after = PgInterval(cfg.last_ping_write_interval);
    let rescan = PgInterval(RESCAN_INTERVAL);
    let mut attempt = 0;
    loop {
        let result = db
            .run(Op::ClaimTasks, |c| {
                    let stats_bytes = &stats_bytes;
                async move {
                    let (ping_stmt, held_stmt) =
                        try_join(c.prepare_cached(PING), c.prepare_cached(&HELD))
                            .await
                            .map_err(pg_error)?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                        &worker_id,
                        stats_bytes,
                        &touch_after,
                        &shards,
                        &first_shard,
                        &NS_WORKER,
                        &NS_SHARD,
                        &rescan,
                    ];
                    let (ping, held) = try_join(
                        c.query_one(&ping_stmt, &params),
                        c.query(&held_stmt, &[&worker_id]),
                    )
                    .await
                    .map_err(pg_error)?;
                    let Some(status) = ping.get::<_, Option<String>>("status") else {
                        return Err(not_registered(worker_id));
                    };
                    if let Some(from) = ping.get::<_, Option<String>>("back_from") {
                        tracing::info!(worker_id, from = %from.trim(), to = %status.trim(), "worker is back online");
                    }
                    let waits: Option<Vec<f64>> = ping.get("waits");
                    Ok(answer(ping.get("concurrency"), &held, waits.unwrap_or_default()))
                }
                .scope_boxed()
            })
            .await;
        match result {
            Err(e) if retry_allowed(Op::ClaimTasks, &mut attempt, &e).await => {}
            result => return result,
        }
    }
}

/// A `Duration` sent as a Postgres `interval`.
#[derive(Debug, Clone, Copy)]
pub struct PgInterval(pub Duration);

impl tokio_postgres::types::ToSql for PgInterval {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use bytes::BufMut as _;
        // Binary interval: microseconds (i64), days (i32), months (i32).
        out.put_i64(i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX));
        out.put_i32(0);
        out.put_i32(0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::INTERVAL
    }

    tokio_postgres::types::to_sql_checked!();
}
