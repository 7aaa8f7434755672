//! Task logs (`task_log`): batches of lines per (task, stream), appended under a per-task advisory
//! lock held until commit, so batch sequence numbers follow commit order and a follower that reads
//! `seq > last` never misses a batch. Each append notifies channel `task_log` with the task id.
//! Reads: pages after a sequence number (followers), and windows of lines counted from the end
//! (GetLogsChunk) found through `line_end` without reading the rest of the log.
//!
//! Lock order: the task's row first (FOR KEY SHARE here, FOR SHARE for a caller without a token;
//! callers such as status updates may already hold a stronger lock on it), then the task's log
//! lock — the order status updates that append a line also follow, so the two can never deadlock.
//!
//! A caller without a token (the original Go worker: its token interceptor is unary-only) may only
//! append to a task a worker holds (`LogAccess::HeldTasks`). That condition is part of the
//! statement that locks the row for the append, not a separate read, so a task that leaves the held
//! statuses while a stream is open gets no line written after it did.

use std::ops::Range;

use scoped_futures::ScopedFutureExt as _;

use super::locks::NS_TASK_LOG;
use super::{Db, Op};
use crate::domain::logs::{
    LogAccess, LogBudget, PendingBatch, follow_ends, lines_in_window, push_lines, truncation_body,
    window_from_end,
};
use crate::domain::status::TaskStatus;
use crate::error::{Code, Error, Result};

pub use crate::domain::logs::LogStream;

/// The channel a replica LISTENs on to wake log followers; the payload is the task id.
pub const NOTIFY_CHANNEL: &str = "task_log";

/// Locks the task's row against deletion, then takes its log lock (held to commit); no row when
/// the task does not exist. The CTE locks the row before the outer query takes the advisory lock.
const LOCK: &str = "
    WITH t AS (SELECT task_id FROM task WHERE task_id = $1 FOR KEY SHARE)
    SELECT pg_advisory_xact_lock($2, t.task_id) FROM t";

/// As `LOCK`, only when a worker holds the task (`$3`: `TaskStatus::HELD_BY_WORKER`), for a caller
/// without a token. FOR SHARE conflicts with every status update, so the status cannot change
/// between this check and the commit of the append: an update in progress is waited for and the
/// row re-checked (READ COMMITTED re-reads a row changed while it waited), one that starts later
/// waits for this transaction. No row: no such task, or not held.
const LOCK_HELD: &str = "
    WITH t AS (SELECT task_id FROM task
                WHERE task_id = $1 AND status = ANY($3::bpchar[]) AND worker_id IS NOT NULL
                  FOR SHARE)
    SELECT pg_advisory_xact_lock($2, t.task_id) FROM t";

/// Appends one batch with the next seq and line_end of its (task, stream). `$2::bpchar` keeps the
/// comparison on the primary key's own type (index order).
const APPEND: &str = "
    INSERT INTO task_log (task_id, stream, seq, line_count, line_end, body)
    SELECT $1::int4, $2::bpchar, COALESCE(last.seq, 0) + 1, $3::int4,
           COALESCE(last.line_end, 0) + $3::int4, $4::text
      FROM (VALUES (1)) AS one (x)
      LEFT JOIN LATERAL (
            SELECT seq, line_end
              FROM task_log
             WHERE task_id = $1 AND stream = $2::bpchar
             ORDER BY seq DESC
             LIMIT 1) last ON true";

// Sent only while some replica has a log follower (db::watch, schema/0015_watch.sql).
const NOTIFY: &str = "SELECT pg_notify($1::text, $2) WHERE tq_watched($1::text)";

/// Appends `lines` (each stored followed by a newline; a line holding `\n` counts as several) as
/// one batch, inside `tx`. Unknown task → `NotFound`.
pub async fn append_lines(
    tx: &super::Tx<'_>,
    task_id: i32,
    stream: LogStream,
    lines: &[&str],
) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut batch = PendingBatch::default();
    for line in lines {
        batch.lines += push_lines(&mut batch.body, line);
    }
    append_batches(tx, task_id, LogAccess::AnyTask, &[(stream, batch)]).await
}

/// Appends one line written by the server itself (why a task was failed, retried …), inside `tx`.
pub async fn append_system_line(
    tx: &super::Tx<'_>,
    task_id: i32,
    stream: LogStream,
    text: &str,
) -> Result<()> {
    append_lines(tx, task_id, stream, &[text]).await
}

/// Appends batches of one task inside `tx`: takes the task's log lock (held to commit), inserts
/// each non-empty batch with the next seq of its stream, and notifies followers once.
/// Unknown task → `NotFound`; with `LogAccess::HeldTasks`, unknown or not held → `Unauthenticated`
/// (nothing is inserted; the caller's transaction should roll back).
pub async fn append_batches(
    tx: &super::Tx<'_>,
    task_id: i32,
    access: LogAccess,
    batches: &[(LogStream, PendingBatch)],
) -> Result<()> {
    if batches.iter().all(|(_, b)| b.lines == 0) {
        return Ok(());
    }
    lock_for_append(tx, task_id, access).await?;
    insert_batches(tx, task_id, batches).await
}

/// Takes the task's log lock for an append (see `append_batches`).
async fn lock_for_append(tx: &super::Tx<'_>, task_id: i32, access: LogAccess) -> Result<()> {
    let locked = match access {
        LogAccess::AnyTask => {
            let lock = tx.prepare_cached(LOCK).await?;
            tx.query(&lock, &[&task_id, &NS_TASK_LOG]).await
        }
        LogAccess::HeldTasks => {
            let lock = tx.prepare_cached(LOCK_HELD).await?;
            tx.query(&lock, &[&task_id, &NS_TASK_LOG, &held_letters()])
                .await
        }
    }?;
    if locked.is_empty() {
        return Err(refused(task_id, access));
    }
    Ok(())
}

/// Inserts the non-empty batches (the log lock held) and notifies followers once.
async fn insert_batches(
    tx: &super::Tx<'_>,
    task_id: i32,
    batches: &[(LogStream, PendingBatch)],
) -> Result<()> {
    if batches.iter().all(|(_, b)| b.lines == 0) {
        return Ok(());
    }
    let append = tx.prepare_cached(APPEND).await?;
    for (stream, batch) in batches.iter().filter(|(_, b)| b.lines > 0) {
        let count = i32::try_from(batch.lines)
            .map_err(|_| Error::invalid("too many lines in one log batch"))?;
        tx.execute(&append, &[&task_id, &stream.letter(), &count, &batch.body])
            .await?;
    }
    let notify = tx.prepare_cached(NOTIFY).await?;
    tx.execute(&notify, &[&NOTIFY_CHANNEL, &task_id.to_string()])
        .await?;
    Ok(())
}

/// The letters of `TaskStatus::HELD_BY_WORKER`, as the `$3` of `LOCK_HELD` and `$2` of `IS_HELD`.
fn held_letters() -> Vec<&'static str> {
    TaskStatus::HELD_BY_WORKER
        .iter()
        .map(|s| s.letter())
        .collect()
}

/// Why lines for `task_id` are not stored: the task does not exist, or, for a caller without a
/// token, no worker holds it (the same answer whether it exists or not).
pub fn refused(task_id: i32, access: LogAccess) -> Error {
    match access {
        LogAccess::AnyTask => Error::not_found(format!(
            "task {task_id} not found: its log lines are not stored"
        )),
        LogAccess::HeldTasks => Error::unauthenticated(format!(
            "missing token: without 'authorization: Bearer <token>' log lines are stored only \
             for a task a worker holds (status C, D, O, R, U or V), and task {task_id} is not"
        )),
    }
}

/// The log bytes a task stores (both outputs), and whether its log was truncated already (its
/// truncation line is a batch of its own). Under the task's log lock this is exact across
/// replicas; it reads the lengths of the task's batches (from their headers, not their bodies).
const STORED: &str = "
    SELECT COALESCE(sum(octet_length(body)), 0)::bigint, COALESCE(bool_or(body = $2), false)
      FROM task_log WHERE task_id = $1";

/// Stores the batches of one task in their own transaction (an SendTaskLogs flush), keeping the
/// task's log within `max_bytes`: past it, one truncation line is stored and the rest dropped.
/// Returns how many bytes of body were dropped.
pub async fn store(
    db: &Db,
    task_id: i32,
    access: LogAccess,
    batches: &[(LogStream, PendingBatch)],
    max_bytes: u64,
) -> Result<u64> {
    db.tx(Op::LogIngest, |tx| {
        async move {
            if batches.iter().all(|(_, b)| b.lines == 0) {
                return Ok(0);
            }
            lock_for_append(tx, task_id, access).await?;
            let stored = tx.prepare_cached(STORED).await?;
            let row = tx
                .query_one(&stored, &[&task_id, &truncation_body()])
                .await?;
            let (bytes, truncated): (i64, bool) = (row.get(0), row.get(1));
            let budget = LogBudget {
                stored: u64::try_from(bytes).unwrap_or(0),
                truncated,
                max: max_bytes,
            };
            let (kept, dropped) = budget.apply(batches);
            insert_batches(tx, task_id, &kept).await?;
            Ok(dropped)
        }
        .scope_boxed()
    })
    .await
}

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM task WHERE task_id = $1)";
const IS_HELD: &str = "
    SELECT EXISTS (SELECT 1 FROM task
                    WHERE task_id = $1 AND status = ANY($2::bpchar[]) AND worker_id IS NOT NULL)";

/// Whether a stream with `access` may send lines for a task: it exists (hidden tasks included: a
/// replaced task's late log lines are kept), and for `HeldTasks` a worker holds it. A first check
/// when the id first appears in a stream; the append checks again (`LOCK_HELD`).
pub async fn accepts_lines(db: &Db, task_id: i32, access: LogAccess) -> Result<bool> {
    db.run(Op::LogIngest, |c| {
        async move {
            let row = match access {
                LogAccess::AnyTask => {
                    let stmt = c.prepare_cached(EXISTS).await?;
                    c.query_one(&stmt, &[&task_id]).await
                }
                LogAccess::HeldTasks => {
                    let stmt = c.prepare_cached(IS_HELD).await?;
                    c.query_one(&stmt, &[&task_id, &held_letters()]).await
                }
            }?;
            Ok(row.get(0))
        }
        .scope_boxed()
    })
    .await
}

/// Whether a task's follow streams end now (terminal or hidden); `None` when the task is gone.
pub async fn follow_ended(db: &Db, task_id: i32) -> Result<Option<bool>> {
    db.run(Op::LogFollow, |c| {
        async move {
            let stmt = c
                .prepare_cached("SELECT status, hidden FROM task WHERE task_id = $1")
                .await?;
            let Some(row) = c.query_opt(&stmt, &[&task_id]).await? else {
                return Ok(None);
            };
            let status: String = row.get(0);
            let status = TaskStatus::parse(&status)?;
            Ok(Some(follow_ends(status, row.get(1))))
        }
        .scope_boxed()
    })
    .await
}

/// A stored batch read by a follower.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub seq: i32,
    pub body: String,
    /// Seconds between the batch's write and this read, by the database clock.
    pub age_seconds: f64,
    /// Bytes of body of the page up to and including this batch, as the database counts them.
    pub page_bytes: i64,
}

/// What a follower read in one statement (one snapshot): whether its follow ends, and the next
/// batches. Because both come from the same snapshot, a task seen terminal comes with every batch
/// committed before its terminal status.
#[derive(Debug, Clone)]
pub struct FollowPage {
    /// The task is terminal or hidden.
    pub ended: bool,
    pub batches: Vec<StoredBatch>,
}

/// The task's status, and the next batches after `$3`, oldest first: at most `$4`, and no more than
/// `$5` bytes of body — except that the first batch is always returned, whatever its size. Lengths
/// are read without detoasting, and bodies only of the rows returned. No row: no such task; one
/// row with a NULL seq: no new batch.
const READ_AFTER: &str = "
    SELECT t.status, t.hidden, p.seq, p.body, p.age, p.upto
      FROM task t
      LEFT JOIN LATERAL (
            SELECT seq, body, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age,
                   upto::int8 AS upto
              FROM (SELECT seq, body, created_at,
                           sum(octet_length(body)) OVER (ORDER BY seq) AS upto
                      FROM task_log
                     WHERE task_id = $1 AND stream = $2::bpchar AND seq > $3
                     ORDER BY seq
                     LIMIT $4) page
             WHERE upto - octet_length(body) < $5) p ON true
     WHERE t.task_id = $1
     ORDER BY p.seq";

/// Reads the next page of a follower (see `READ_AFTER`); `None` when the task is gone.
pub async fn read_after(
    db: &Db,
    task_id: i32,
    stream: LogStream,
    after_seq: i32,
    max_rows: i64,
    max_bytes: i64,
) -> Result<Option<FollowPage>> {
    db.run(Op::LogFollow, |c| {
        async move {
            let stmt = c.prepare_cached(READ_AFTER).await?;
            let rows = c
                .query(
                    &stmt,
                    &[
                        &task_id,
                        &stream.letter(),
                        &after_seq,
                        &max_rows,
                        &max_bytes,
                    ],
                )
                .await?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let status = TaskStatus::parse(first.get::<_, &str>(0))?;
            let ended = follow_ends(status, first.get(1));
            let batches = rows
                .iter()
                .filter_map(|r| {
                    Some(StoredBatch {
                        seq: r.get::<_, Option<i32>>(2)?,
                        body: r.get(3),
                        age_seconds: r.get(4),
                        page_bytes: r.get(5),
                    })
                })
                .collect();
            Ok(Some(FollowPage { ended, batches }))
        }
        .scope_boxed()
    })
    .await
}

/// The last lines of one task's outputs (GetLogsChunk).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChunk {
    pub task_id: i32,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// What a GetLogsChunk may return at most, summed over its tasks: encoded, it must stay well under
/// the 50 MiB gRPC message limit.
pub const CHUNK_MAX_BYTES: usize = 32 << 20;
/// What each returned line costs in the encoded answer besides its bytes (field tag, length).
const LINE_OVERHEAD: usize = 6;

const TOTAL_LINES: &str = "
    SELECT line_end FROM task_log
     WHERE task_id = $1 AND stream = $2::bpchar
     ORDER BY seq DESC
     LIMIT 1";

/// The batches holding lines `[$3, $4)`: from the first batch ending after `$3` to the first one
/// ending at or after `$4` — index range probes on `(task_id, stream, line_end)`. First their size
/// (lengths are read without detoasting), then their bodies.
const WINDOW_BYTES: &str = "
    SELECT COALESCE(sum(octet_length(body)), 0)::int8
      FROM task_log
     WHERE task_id = $1 AND stream = $2::bpchar AND line_end > $3
       AND line_end <= (SELECT min(line_end) FROM task_log
                         WHERE task_id = $1 AND stream = $2::bpchar AND line_end >= $4)";
const WINDOW_BATCHES: &str = "
    SELECT line_end, line_count, body
      FROM task_log
     WHERE task_id = $1 AND stream = $2::bpchar AND line_end > $3
       AND line_end <= (SELECT min(line_end) FROM task_log
                         WHERE task_id = $1 AND stream = $2::bpchar AND line_end >= $4)
     ORDER BY line_end";

/// Reads, for each task in order, the window of `chunk` lines ending `skip` lines before the end
/// of each selected output: only the batches overlapping the window are read, and their sizes are
/// checked (without reading them) against `CHUNK_MAX_BYTES` first. A task with no log (or no such
/// task) gets empty lists, as the original.
pub async fn chunks(
    db: &Db,
    task_ids: &[i32],
    streams: &[LogStream],
    chunk: i64,
    skip: i64,
) -> Result<Vec<LogChunk>> {
    db.run(Op::Logs, |c| {
        async move {
            let total_stmt = c.prepare_cached(TOTAL_LINES).await?;
            let size_stmt = c.prepare_cached(WINDOW_BYTES).await?;
            let read_stmt = c.prepare_cached(WINDOW_BATCHES).await?;
            let mut budget = CHUNK_MAX_BYTES;
            let mut out = Vec::with_capacity(task_ids.len());
            for &task_id in task_ids {
                let mut result = LogChunk {
                    task_id,
                    ..LogChunk::default()
                };
                for &stream in streams {
                    let total: Option<i64> = c
                        .query_opt(&total_stmt, &[&task_id, &stream.letter()])
                        .await?
                        .map(|r| r.get(0));
                    let window = window_from_end(total.unwrap_or(0), chunk, skip);
                    if window.is_empty() {
                        continue;
                    }
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&task_id, &stream.letter(), &window.start, &window.end];
                    let bytes: i64 = c.query_one(&size_stmt, &params).await?.get(0);
                    let cost =
                        bytes as usize + (window.end - window.start) as usize * LINE_OVERHEAD;
                    budget = budget.checked_sub(cost).ok_or_else(|| too_large(&window))?;
                    let rows = c.query(&read_stmt, &params).await?;
                    let lines = match stream {
                        LogStream::Stdout => &mut result.stdout,
                        LogStream::Stderr => &mut result.stderr,
                    };
                    for row in &rows {
                        let (line_end, count, body): (i64, i32, &str) =
                            (row.get(0), row.get(1), row.get(2));
                        lines.extend(
                            lines_in_window(line_end, body, i64::from(count), &window)
                                .map(str::to_string),
                        );
                    }
                }
                out.push(result);
            }
            Ok(out)
        }
        .scope_boxed()
    })
    .await
}

fn too_large(window: &Range<i64>) -> Error {
    Error::new(
        Code::ResourceExhausted,
        format!(
            "the requested log lines ({} lines from line {}) exceed {} MiB in one answer: \
             ask for fewer lines (chunkSize) or fewer tasks at once",
            window.end - window.start,
            window.start,
            CHUNK_MAX_BYTES >> 20
        ),
    )
}
