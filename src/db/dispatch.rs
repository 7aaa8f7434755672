//! PingAndTakeNewTasks (design.md §3): liveness, stats and the claim of pending tasks, on every
//! replica. An idle ping of a live worker is one round trip of two reads and writes nothing (plus a
//! read-only probe of the queue when it has free capacity). A ping that has something to write (a claim, an offline worker coming back, a stale `last_ping_at`, stats
//! due) runs one transaction under the worker's advisory lock — two pings of one worker never race —
//! re-reads the worker there, and claims through `tq_claim` (schema/0002_dispatch.sql).

use std::time::Duration;

use futures::future::try_join;
use prost::Message as _;
use scoped_futures::ScopedFutureExt as _;
use tokio_postgres::Row;

use super::locks::{NS_SHARD, NS_WORKER};
use super::tasks::{TASK_COLUMNS, task_from_row};
use super::{Db, Op, pg_error};
use crate::domain::dispatch::{self, HeldTask, PingPlan, WorkerSnapshot};
use crate::domain::status::{TaskStatus, WorkerStatus};
use crate::error::{Error, Result};
use crate::proto as pb;

/// How often a rescan below a (step, shard) cursor may happen (see tq_claim).
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

const SNAPSHOT: &str = "
    SELECT w.status, w.concurrency, w.prefetch, w.step_id,
           EXTRACT(EPOCH FROM clock_timestamp() - w.last_ping_at)::double precision AS ping_age,
           EXTRACT(EPOCH FROM clock_timestamp() - s.updated_at)::double precision AS stats_age,
           COALESCE((SELECT sum(t.weight) FROM task t
                      WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')), 0)::double precision AS held
      FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
     WHERE w.worker_id = $1";

fn held_query() -> String {
    format!(
        "SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
          WHERE t.worker_id = $1 AND t.status IN ('A', 'C', 'D', 'R', 'U', 'V')
          ORDER BY t.task_id"
    )
}

const TOUCH: &str = "
    UPDATE worker SET status = COALESCE($2, status),
                      offline_since = CASE WHEN $2 IS NULL THEN offline_since END,
                      last_ping_at = now()
     WHERE worker_id = $1";

const STORE_STATS: &str = "
    INSERT INTO worker_stats (worker_id, stats, updated_at) VALUES ($1, $2, now())
    ON CONFLICT (worker_id) DO UPDATE SET stats = EXCLUDED.stats, updated_at = EXCLUDED.updated_at";

const CLAIM: &str = "SELECT task_id, waited FROM tq_claim($1, $2, $3, $4, $5, $6, $7)";

/// Whether a claim for step key $1 over $2 shards could find anything, judged exactly as `tq_claim`
/// would (from each shard's cursor, or a rescan that is due), without locks or a transaction. A
/// worker with free capacity and nothing to claim then pings without a transaction.
const MAYBE_PENDING: &str = "
    SELECT EXISTS (
        SELECT 1 FROM generate_series(0, $2 - 1) AS s(shard)
          LEFT JOIN assign_cursor c ON c.step_key = $1 AND c.shard = s.shard
         WHERE c.step_key IS NULL
            OR (c.next_task_id > 0 AND c.rescan_after <= now())
            OR EXISTS (SELECT 1 FROM task t
                        WHERE COALESCE(t.step_id, 0) = $1 AND t.shard = s.shard AND t.status = 'P'
                          AND t.task_id >= c.next_task_id))";

struct Snapshot {
    worker: WorkerSnapshot,
    step_id: Option<i32>,
}

fn snapshot_from(row: Option<Row>, worker_id: i32) -> Result<Snapshot> {
    let row = row.ok_or_else(|| {
        Error::not_found(format!("worker {worker_id} not found: register it first"))
    })?;
    let status: String = row.get("status");
    let status = WorkerStatus::parse(status.trim())
        .map_err(|e| Error::internal(format!("stored worker status: {e}")))?;
    let secs = |v: Option<f64>| {
        v.filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
    };
    Ok(Snapshot {
        worker: WorkerSnapshot {
            status,
            concurrency: row.get("concurrency"),
            prefetch: row.get("prefetch"),
            held_weight: row.get("held"),
            last_ping_age: secs(row.get("ping_age")),
            stats_age: secs(row.get("stats_age")),
        },
        step_id: row.get("step_id"),
    })
}

fn plan(cfg: &DispatchConfig, snap: &WorkerSnapshot, has_stats: bool) -> PingPlan {
    let mut plan = dispatch::plan_ping(
        snap,
        has_stats,
        cfg.last_ping_write_interval,
        cfg.last_ping_write_interval,
    );
    // Stats ride on the liveness write, so an idle ping of a live worker writes nothing.
    plan.store_stats = has_stats && (plan.touch_last_ping || snap.stats_age.is_none());
    plan
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

/// Handles one ping of `worker_id`.
pub async fn ping(
    db: &Db,
    cfg: &DispatchConfig,
    worker_id: i32,
    stats: Option<&pb::WorkerStats>,
) -> Result<PingAnswer> {
    let held_sql = held_query();
    // Fast path: read the worker and what it holds, pipelined on one connection.
    let fast = db
        .run(Op::Ping, |c| {
            async move {
                let (snap_stmt, held_stmt) =
                    try_join(c.prepare_cached(SNAPSHOT), c.prepare_cached(&held_sql))
                        .await
                        .map_err(pg_error)?;
                let (snap, held) = try_join(
                    c.query_opt(&snap_stmt, &[&worker_id]),
                    c.query(&held_stmt, &[&worker_id]),
                )
                .await
                .map_err(pg_error)?;
                let snap = snapshot_from(snap, worker_id)?;
                let plan = plan(cfg, &snap.worker, stats.is_some());
                if plan.back_online.is_some() || plan.touch_last_ping || plan.store_stats {
                    return Ok(None);
                }
                if plan.claim > 0 {
                    let stmt = c.prepare_cached(MAYBE_PENDING).await.map_err(pg_error)?;
                    let key = snap.step_id.unwrap_or(0);
                    let maybe: bool = c
                        .query_one(&stmt, &[&key, &i32::from(cfg.shards)])
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    if maybe {
                        return Ok(None);
                    }
                }
                Ok(Some(answer(snap.worker.concurrency, &held, Vec::new())))
            }
            .scope_boxed()
        })
        .await?;
    if let Some(answer) = fast {
        return Ok(answer);
    }
    let stats_bytes = stats.map(|s| s.encode_to_vec());
    let held_sql = held_query();
    db.tx(Op::ClaimTasks, |tx| {
        let stats_bytes = stats_bytes.clone();
        let held_sql = held_sql.clone();
        async move {
            let (lock, snap_stmt) = try_join(
                tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)"),
                tx.prepare_cached(SNAPSHOT),
            )
            .await
            .map_err(pg_error)?;
            let (_, snap) = try_join(tx.execute(&lock, &[&NS_WORKER, &worker_id]), tx.query_opt(&snap_stmt, &[&worker_id]))
                .await
                .map_err(pg_error)?;
            let snap = snapshot_from(snap, worker_id)?;
            let plan = plan(cfg, &snap.worker, stats_bytes.is_some());
            if plan.back_online.is_some() || plan.touch_last_ping {
                let back = plan.back_online.map(|s| s.letter());
                let stmt = tx.prepare_cached(TOUCH).await.map_err(pg_error)?;
                tx.execute(&stmt, &[&worker_id, &back]).await.map_err(pg_error)?;
                if let Some(to) = plan.back_online {
                    tracing::info!(worker_id, from = %snap.worker.status, to = %to, "worker is back online");
                }
            }
            if plan.store_stats
                && let Some(bytes) = &stats_bytes
            {
                let stmt = tx.prepare_cached(STORE_STATS).await.map_err(pg_error)?;
                tx.execute(&stmt, &[&worker_id, bytes]).await.map_err(pg_error)?;
            }
            let mut waits = Vec::new();
            if plan.claim > 0 {
                let shards = i32::from(cfg.shards);
                let first = i32::from(dispatch::first_shard(worker_id, cfg.shards));
                let rescan = PgInterval(RESCAN_INTERVAL);
                let stmt = tx.prepare_cached(CLAIM).await.map_err(pg_error)?;
                let rows = tx
                    .query(&stmt, &[&worker_id, &snap.step_id, &plan.claim, &shards, &first, &NS_SHARD, &rescan])
                    .await
                    .map_err(pg_error)?;
                waits = rows.iter().map(|r| r.get::<_, f64>(1)).collect();
            }
            let held_stmt = tx.prepare_cached(&held_sql).await.map_err(pg_error)?;
            let held = tx.query(&held_stmt, &[&worker_id]).await.map_err(pg_error)?;
            Ok(answer(snap.worker.concurrency, &held, waits))
        }
        .scope_boxed()
    })
    .await
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
