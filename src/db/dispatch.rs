//! PingAndTakeNewTasks (docs/architecture.md#pingandtakenewtasks): liveness, stats and the claim of pending tasks, on every
//! replica: one round trip (two reads unbatched, one statement batched) for an idle ping (it writes nothing and takes no lock), two
//! round trips for a ping that writes or claims. A ping that has something to write (a claim, an offline worker coming back, a stale
//! `last_ping_at`, stats due) does it under the worker's advisory lock — two pings of one worker
//! never race — and claims through `tq_claim` (schema/0002_dispatch.sql); the decision and the
//! writes are `tq_ping` (schema/0004_ping.sql).
//!
//! With group commit on (`--batch-loops` ≥ 1, the default; docs/architecture.md#group-commit) pings go through a
//! [`Batcher`] instead: [`ping_batch`] serves every ping of a batch with one read (the snapshots
//! and held tasks of all its workers, one statement) and, for those that write or claim, one call of
//! `tq_ping_batch` (schema/0012_claim_many.sql: one claim per step for the whole batch) pipelined
//! with a read of their held tasks.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use futures::future::try_join;
use prost::Message as _;
use scoped_futures::ScopedFutureExt as _;
use tokio_postgres::Row;

use super::batch::{BatchConfig, BatchFn, Batcher, record_statement, same_error};
use super::locks::{NS_SHARD, NS_WORKER};
use super::tasks::{TASK_COLUMNS, task_from_row};
use super::{Client, Db, Op, retry_allowed};
use crate::domain::dispatch::{self, HeldTask, WorkerSnapshot};
use crate::domain::status::{TaskStatus, WorkerStatus, sql_list};
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

/// The tasks a worker holds, in the statuses a ping reports (`dispatch::REPORTED`; built once,
/// not per ping).
static HELD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
          WHERE t.worker_id = $1 AND t.status IN ({reported})",
        reported = sql_list(dispatch::REPORTED),
    )
});

/// The worker as a ping sees it, and — only when it is (or comes back to) R with room for a task —
/// whether any task of its step is pending (NULL otherwise: not probed). Plain SQL and the
/// cheapest probe that is never wrong when it says no: measured with pgbench, a plpgsql call (its
/// expressions are set up again in every transaction, and every ping is one) or the exact
/// per-shard probe of the claim (a subplan set up on every execution) made the read of every idle
/// ping 15–30 % slower. A "maybe" that the claim then does not find (tasks below a shard's cursor
/// before their rescan is due) only costs that ping its second round trip. (`room >= 1` is the
/// capacity rule of `free_capacity` / `tq_free_capacity`, which decide how many; the statuses are
/// `WorkerStatus::TAKES_TASKS` and `TaskStatus::HOLDING_CAPACITY`.) The probe's `OFFSET 0` keeps
/// it a per-worker index probe that stops at the first pending task: without it PostgreSQL may
/// plan the EXISTS as a hashed subplan, reading and hashing EVERY pending task once per execution
/// (measured in the latency bench under the batch loop's generic plan: 6,400 pending tasks read per
/// batch, 369 µs per batch read instead of ~30 µs; test: ping_rules::a_batch_read_probes_the_queue…).
static SNAPSHOT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    SELECT w.status AS worker_status, w.concurrency AS worker_concurrency,
           w.prefetch AS worker_prefetch,
           EXTRACT(EPOCH FROM clock_timestamp() - w.last_ping_at)::double precision AS ping_age,
           EXTRACT(EPOCH FROM clock_timestamp() - s.updated_at)::double precision AS stats_age,
           h.held,
           CASE WHEN w.status IN ({takes_tasks})
                 AND GREATEST(w.concurrency, 0) + GREATEST(w.prefetch, 0) - h.held + 0.01 >= 1
                THEN EXISTS (SELECT 1 FROM task t
                              WHERE COALESCE(t.step_id, 0) = COALESCE(w.step_id, 0) AND t.status = 'P'
                             OFFSET 0)
           END AS maybe_pending
      FROM worker w
      LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
     CROSS JOIN LATERAL (SELECT COALESCE(sum(t.weight), 0)::double precision AS held FROM task t
                          WHERE t.worker_id = w.worker_id AND t.status IN ({holding})) h
     WHERE w.worker_id = $1",
        takes_tasks = sql_list(WorkerStatus::TAKES_TASKS),
        holding = sql_list(TaskStatus::HOLDING_CAPACITY),
    )
});

/// The write side of a ping, server-side (schema/0004_ping.sql); one row, `status` NULL for an
/// unknown worker.
const PING: &str = "SELECT status, concurrency, back_from, claimed, waits
                      FROM tq_ping($1, $2, $3, $4, $5, $6, $7, $8)";

/// The first read of a ping batch, ONE statement: SNAPSHOT for every worker of the batch
/// (`= ANY($1)`) with its id (`ping_worker`), each joined with the tasks it holds (HELD): a row per
/// held task, or one row with NULL task columns for a worker that holds none. One statement
/// rather than two pipelined: each pays its own Bind/Execute/Sync, executor start and send in
/// PostgreSQL (measured, A/B on the bench: PostgreSQL CPU per idle ping 54–58 → 51–53 µs with
/// full workers, 46–53 → 42–47 µs with an empty queue; within the noise on throughput). No ORDER
/// BY: rows are grouped by the caller and `answer` sorts held tasks, so the plan has no Sort to
/// set up. The held tasks' `OFFSET 0` keeps their subquery a per-worker index probe:
/// without it PostgreSQL pulls it up into a join and, under the generic plan with statistics
/// that predate the running tasks, reads every held task of every worker once per batch
/// (measured in the lifecycle bench: 2.2 ms a batch; test: ping_rules::a_batch_read_probes…).
static SNAPSHOTS_HELD: LazyLock<String> = LazyLock::new(|| {
    let snapshots = SNAPSHOT
        .replace(
            "SELECT w.status AS",
            "SELECT w.worker_id AS ping_worker, w.status AS",
        )
        .replace("WHERE w.worker_id = $1", "WHERE w.worker_id = ANY($1)");
    format!(
        "SELECT x.*, h.* FROM ({snapshots}) x
           LEFT JOIN LATERAL (SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
                               WHERE t.worker_id = x.ping_worker AND t.status IN ({reported})
                              OFFSET 0) h ON true",
        reported = sql_list(dispatch::REPORTED),
    )
});

/// The first read of a ping batch (`SNAPSHOTS_HELD`), for tests of its plan.
#[doc(hidden)]
pub fn batch_snapshot_sql() -> &'static str {
    &SNAPSHOTS_HELD
}

/// HELD for every worker of a batch (grouped by the caller).
static HELD_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
          WHERE t.worker_id = ANY($1) AND t.status IN ({reported})",
        reported = sql_list(dispatch::REPORTED),
    )
});

/// The write side of the pings of a batch that write or claim (schema/0012_claim_many.sql).
const PING_BATCH: &str = "SELECT statuses, concurrencies, back_froms, claim_pings, waits
                            FROM tq_ping_batch($1, $2, $3, $4, $5, $6, $7, $8)";

fn snapshot_from(row: Option<&Row>, worker_id: i32) -> Result<(WorkerSnapshot, Option<bool>)> {
    let row = row.ok_or_else(|| not_registered(worker_id))?;
    let status: String = row.get("worker_status");
    let status = WorkerStatus::parse(status.trim())
        .map_err(|e| Error::internal(format!("stored worker status: {e}")))?;
    let secs = |v: Option<f64>| {
        v.filter(|s| s.is_finite())
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
    };
    let snapshot = WorkerSnapshot {
        status,
        concurrency: row.get("worker_concurrency"),
        prefetch: row.get("worker_prefetch"),
        held_weight: row.get("held"),
        last_ping_age: secs(row.get("ping_age")),
        stats_age: secs(row.get("stats_age")),
    };
    Ok((snapshot, row.get("maybe_pending")))
}

fn not_registered(worker_id: i32) -> Error {
    Error::not_found(format!("worker {worker_id} not found: register it first"))
}

/// The answer of a ping from the rows (`TASK_COLUMNS`) of the tasks its worker holds, in any
/// order: sent ordered by task id.
fn answer<'a>(
    concurrency: i32,
    rows: impl IntoIterator<Item = &'a Row>,
    claimed_waits: Vec<f64>,
) -> PingAnswer {
    let mut rows: Vec<&Row> = rows.into_iter().collect();
    rows.sort_by_key(|r| r.get::<_, i32>("task_id"));
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
                    try_join(c.prepare_cached(&SNAPSHOT), c.prepare_cached(&HELD)).await?;
                let (snap, held) = try_join(
                    c.query_opt(&snap_stmt, &[&worker_id]),
                    c.query(&held_stmt, &[&worker_id]),
                )
                .await?;
                let (snapshot, maybe_pending) = snapshot_from(snap.as_ref(), worker_id)?;
                let plan = dispatch::plan_ping(&snapshot, has_stats, cfg.last_ping_write_interval);
                let idle = plan.is_idle(maybe_pending);
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
                            .await?;
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
                    .await?;
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

/// The metrics label of the ping batcher.
pub const PING_BATCH_KIND: &str = "ping";

/// One ping waiting for its batch: the worker and its stats, encoded.
#[derive(Debug, Clone)]
pub struct PingRequest {
    pub worker_id: i32,
    pub stats: Option<Vec<u8>>,
}

/// How the pings of a replica reach the database: through the ping batcher (group commit), or one
/// by one (`ping`) when batching is off.
pub struct Pings {
    db: Db,
    cfg: DispatchConfig,
    batcher: Option<Batcher<PingRequest, Result<PingAnswer>>>,
}

impl Pings {
    /// `loops` batch loops (0: no batching) of at most `max` pings each.
    pub fn start(db: Db, cfg: DispatchConfig, loops: usize, max: usize) -> Pings {
        let batcher = Batcher::start_unless_off(
            db.clone(),
            BatchConfig::requests(PING_BATCH_KIND, Op::PingBatch, loops, max),
            PingBatch { cfg },
        );
        Pings { db, cfg, batcher }
    }

    /// Handles one ping of `worker_id`.
    pub async fn ping(
        &self,
        worker_id: i32,
        stats: Option<&pb::WorkerStats>,
    ) -> Result<PingAnswer> {
        match &self.batcher {
            Some(b) => {
                let req = PingRequest {
                    worker_id,
                    stats: stats.map(|s| s.encode_to_vec()),
                };
                b.submit(req).await?
            }
            None => ping(&self.db, &self.cfg, worker_id, stats).await,
        }
    }

    /// Runs the queued pings and stops the batch loops (shutdown, after the RPCs drained).
    pub async fn shutdown(&self) {
        if let Some(b) = &self.batcher {
            b.shutdown().await;
        }
    }
}

/// The `BatchFn` of pings: [`ping_batch`].
pub struct PingBatch {
    pub cfg: DispatchConfig,
}

#[async_trait::async_trait]
impl BatchFn<PingRequest, Result<PingAnswer>> for PingBatch {
    async fn run(
        &self,
        client: &mut Client,
        reqs: &[PingRequest],
    ) -> Result<Vec<Result<PingAnswer>>> {
        ping_batch(client, &self.cfg, reqs).await
    }
}

/// Rows grouped by the worker id in `column`, in any order.
fn by_worker<'a>(rows: &'a [Row], column: &str) -> HashMap<i32, Vec<&'a Row>> {
    let mut out: HashMap<i32, Vec<&Row>> = HashMap::new();
    for r in rows {
        if let Some(w) = r.get::<_, Option<i32>>(column) {
            out.entry(w).or_default().push(r);
        }
    }
    out
}

/// Serves a batch of pings, one answer per ping in order (a ping of an unknown worker gets its own
/// NOT_FOUND). First round trip: the snapshots (with the queue probe) and the held tasks of every
/// worker of the batch, one statement — read after every ping of the batch arrived, so an
/// idle ping (`dispatch::plan_ping` finds nothing to write and the probe nothing to claim) is
/// answered from them. Second round trip, only when some ping writes or claims: `tq_ping_batch`
/// for those pings (in arrival order; it decides again under the workers' locks, as `tq_ping`)
/// pipelined with a read of their workers' held tasks, in autocommit, in order on one connection,
/// so the read sees the claims. A conflict fails the whole batch (the batcher runs it again);
/// another error of the write fails the pings that wrote, not the idle ones.
pub async fn ping_batch(
    c: &Client,
    cfg: &DispatchConfig,
    reqs: &[PingRequest],
) -> Result<Vec<Result<PingAnswer>>> {
    let mut ids: Vec<i32> = reqs.iter().map(|r| r.worker_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let stmt = c.prepare_cached(&SNAPSHOTS_HELD).await?;
    let rows = c.query(&stmt, &[&ids]).await?;
    record_statement(PING_BATCH_KIND, ids.len());
    // Per worker: its snapshot, and its held tasks (a worker holding none has one row, its task
    // columns NULL).
    let mut workers = HashMap::with_capacity(ids.len());
    for (worker_id, mut rows) in by_worker(&rows, "ping_worker") {
        let snapshot = snapshot_from(rows.first().copied(), worker_id)?;
        rows.retain(|r| r.get::<_, Option<i32>>("task_id").is_some());
        workers.insert(worker_id, (snapshot, rows));
    }

    let mut out: Vec<Option<Result<PingAnswer>>> = (0..reqs.len()).map(|_| None).collect();
    let mut writes = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let Some(((snapshot, maybe_pending), held)) = workers.get(&r.worker_id) else {
            out[i] = Some(Err(not_registered(r.worker_id)));
            continue;
        };
        let plan = dispatch::plan_ping(snapshot, r.stats.is_some(), cfg.last_ping_write_interval);
        if plan.is_idle(*maybe_pending) {
            out[i] = Some(Ok(answer(
                snapshot.concurrency,
                held.iter().copied(),
                Vec::new(),
            )));
        } else {
            writes.push(i);
        }
    }

    if !writes.is_empty() {
        match write_batch(c, cfg, reqs, &writes).await {
            Ok(answers) => {
                for (i, a) in writes.iter().zip(answers) {
                    out[*i] = Some(a);
                }
            }
            Err(e) if e.retryable => return Err(e),
            Err(e) => {
                for i in &writes {
                    out[*i] = Some(Err(same_error(&e)));
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Error::internal("a ping of the batch was not answered"))))
        .collect())
}

/// The second round trip of [`ping_batch`]: the pings at `writes` (positions in `reqs`).
async fn write_batch(
    c: &Client,
    cfg: &DispatchConfig,
    reqs: &[PingRequest],
    writes: &[usize],
) -> Result<Vec<Result<PingAnswer>>> {
    let workers: Vec<i32> = writes.iter().map(|&i| reqs[i].worker_id).collect();
    let stats: Vec<Option<&[u8]>> = writes.iter().map(|&i| reqs[i].stats.as_deref()).collect();
    // One start shard for the whole batch (from its first ping's worker, so it moves from batch
    // to batch): the batch is one claimer and its shard try-locks are held until it commits, so
    // claiming from as few shards as possible leaves the others to concurrent batches (per-ping
    // starts had two loops' batches skip each other's shards and claim less).
    let start = i32::from(dispatch::first_shard(workers[0], cfg.shards));
    let first_shards: Vec<i32> = vec![start; workers.len()];
    let mut ids = workers.clone();
    ids.sort_unstable();
    ids.dedup();
    let shards = i32::from(cfg.shards);
    let touch_after = PgInterval(cfg.last_ping_write_interval);
    let rescan = PgInterval(RESCAN_INTERVAL);
    let (ping_stmt, held_stmt) =
        try_join(c.prepare_cached(PING_BATCH), c.prepare_cached(&HELD_MANY)).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &workers,
        &stats,
        &touch_after,
        &shards,
        &first_shards,
        &NS_WORKER,
        &NS_SHARD,
        &rescan,
    ];
    let (row, held) = try_join(
        c.query_one(&ping_stmt, &params),
        c.query(&held_stmt, &[&ids]),
    )
    .await?;
    record_statement(PING_BATCH_KIND, workers.len());
    record_statement(PING_BATCH_KIND, ids.len());
    let held = by_worker(&held, "worker_id");
    let statuses: Vec<Option<String>> = row.get("statuses");
    let concurrencies: Vec<Option<i32>> = row.get("concurrencies");
    let back_froms: Vec<Option<String>> = row.get("back_froms");
    let claim_pings: Vec<i32> = row.get("claim_pings");
    let waits: Vec<f64> = row.get("waits");
    let mut claimed_waits: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    for (&k, &w) in claim_pings.iter().zip(&waits) {
        if let Some(list) = usize::try_from(k - 1)
            .ok()
            .and_then(|k| claimed_waits.get_mut(k))
        {
            list.push(w);
        }
    }
    Ok(workers
        .iter()
        .enumerate()
        .map(|(k, &worker_id)| {
            let (Some(status), Some(concurrency)) = (
                statuses.get(k).cloned().flatten(),
                concurrencies.get(k).copied().flatten(),
            ) else {
                return Err(not_registered(worker_id));
            };
            if let Some(from) = back_froms.get(k).cloned().flatten() {
                tracing::info!(worker_id, from = %from.trim(), to = %status.trim(), "worker is back online");
            }
            let rows = held.get(&worker_id).into_iter().flatten().copied();
            Ok(answer(concurrency, rows, std::mem::take(&mut claimed_waits[k])))
        })
        .collect())
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
