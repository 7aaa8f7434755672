//! The dependency sweep's queries (design.md §5, behavior.md §9 item 1): waiting tasks (W) whose
//! prerequisites all succeeded become pending; waiting tasks with a prerequisite failed for good
//! are failed with a log line naming it. Edges live in `task_dependencies`; a retry re-points them
//! to its clone, so a hidden prerequisite never decides anything.
//!
//! "Failed for good" = status F, not hidden, no automatic retry left (`retry` NULL or 0). Tasks
//! failed here get `retry = 0`, so their own dependents follow in the next round: chains cascade.
//! Rows are taken `FOR UPDATE SKIP LOCKED`: a task a status update holds is left for the next
//! round, so the sweep never waits on, nor deadlocks with, the request path.

use super::logs::{LogStream, append_system_line};
use super::pg_error;
use super::tasks::rewind_cursors;
use crate::error::Result;

type Tx<'a> = deadpool_postgres::Transaction<'a>;

const PROMOTE_READY: &str = "
    WITH ready AS (
        SELECT t.task_id FROM task t
         WHERE t.status = 'W' AND NOT t.hidden
           AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                             JOIN task p ON p.task_id = d.prerequisite_task_id
                            WHERE d.dependent_task_id = t.task_id AND p.status <> 'S')
         ORDER BY t.task_id
         LIMIT $1::bigint
           FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
      FROM ready
     WHERE t.task_id = ready.task_id AND t.status = 'W'
    RETURNING t.task_id, t.step_id, t.shard";

/// W→P for up to `limit` waiting tasks whose prerequisites have all succeeded; lowers the claim
/// cursors so the next pings find them. Returns the promoted ids.
pub async fn promote_ready(tx: &Tx<'_>, limit: i64) -> Result<Vec<i32>> {
    let stmt = tx.prepare_cached(PROMOTE_READY).await.map_err(pg_error)?;
    let rows = tx.query(&stmt, &[&limit]).await.map_err(pg_error)?;
    let promoted: Vec<(Option<i32>, i16, i32)> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(0)))
        .collect();
    rewind_cursors(tx, &promoted).await?;
    let mut ids: Vec<i32> = promoted.into_iter().map(|(_, _, id)| id).collect();
    ids.sort_unstable();
    Ok(ids)
}

const FAIL_DOOMED: &str = "
    WITH doomed AS (
        SELECT t.task_id, min(p.task_id) AS cause
          FROM task t
          JOIN task_dependencies d ON d.dependent_task_id = t.task_id
          JOIN task p ON p.task_id = d.prerequisite_task_id
         WHERE t.status = 'W' AND NOT t.hidden
           AND p.status = 'F' AND NOT p.hidden AND COALESCE(p.retry, 0) = 0
         GROUP BY t.task_id
         ORDER BY t.task_id
         LIMIT $1::bigint
    ), locked AS (
        SELECT t.task_id, doomed.cause FROM task t JOIN doomed ON doomed.task_id = t.task_id
         WHERE t.status = 'W'
           FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE task t SET status = 'F', retry = 0, modified_at = now()
      FROM locked
     WHERE t.task_id = locked.task_id AND t.status = 'W'
    RETURNING t.task_id, locked.cause";

/// A waiting task failed because of a prerequisite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedDependent {
    pub task_id: i32,
    /// The (lowest-id) prerequisite that failed for good.
    pub prerequisite: i32,
}

/// Fails up to `limit` waiting tasks that have a prerequisite failed for good, each with a stderr
/// log line naming that prerequisite.
pub async fn fail_doomed(tx: &Tx<'_>, limit: i64) -> Result<Vec<FailedDependent>> {
    let stmt = tx.prepare_cached(FAIL_DOOMED).await.map_err(pg_error)?;
    let rows = tx.query(&stmt, &[&limit]).await.map_err(pg_error)?;
    let mut failed: Vec<FailedDependent> = rows
        .iter()
        .map(|r| FailedDependent {
            task_id: r.get(0),
            prerequisite: r.get(1),
        })
        .collect();
    failed.sort_unstable_by_key(|f| f.task_id);
    for f in &failed {
        append_system_line(
            tx,
            f.task_id,
            LogStream::Stderr,
            &format!(
                "taskqueue: task not run: its prerequisite task {} failed with no retry left",
                f.prerequisite
            ),
        )
        .await?;
    }
    Ok(failed)
}
