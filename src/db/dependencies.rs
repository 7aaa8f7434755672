//! The dependency sweep's queries (docs/architecture.md#background-loops): waiting tasks (W) whose
//! prerequisites all succeeded become pending; waiting tasks with a prerequisite failed for good
//! are failed with a log line naming it. Edges live in `task_dependencies`; a retry re-points them
//! to its clone, so a hidden prerequisite never decides anything.
//!
//! "Failed for good" = status F, not hidden, no automatic retry left (`retry` NULL or 0). Tasks
//! failed here get `retry = 0`, so their own dependents follow in the next round: chains cascade.
//!
//! A round classifies waiting tasks — all of them (a full pass: one scan), or only the dependents
//! of prerequisites that settled since a given time (`task_settled_idx`: cheap when nothing
//! happened) — and acts on those that need it. Rows are then taken `FOR UPDATE SKIP LOCKED` and
//! re-checked: a task a status update holds is left for the next round, so the sweep never waits
//! on, nor deadlocks with, the request path.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::logs::{LogStream, append_system_line};
use super::tasks::rewind_cursors;
use crate::domain::status::{TaskStatus, sql_list};
use crate::error::Result;

use super::Tx;

// Per waiting task (`t`, narrowed by `scope`): are all its prerequisites S (true as well when it
// has none left), and the lowest prerequisite failed for good, if any. Only tasks with something
// to do are returned.
fn classify(scope: &str) -> String {
    format!(
        "
    SELECT task_id, cause FROM (
        SELECT t.task_id,
               COALESCE(bool_and(p.status = 'S'), true) AS ready,
               min(p.task_id) FILTER (WHERE p.status = 'F' AND NOT p.hidden
                                        AND COALESCE(p.retry, 0) = 0) AS cause
          FROM task t
          LEFT JOIN task_dependencies d ON d.dependent_task_id = t.task_id
          LEFT JOIN task p ON p.task_id = d.prerequisite_task_id
         WHERE {scope}t.status = 'W' AND NOT t.hidden
         GROUP BY t.task_id
    ) v
     WHERE v.ready OR v.cause IS NOT NULL
     ORDER BY task_id
     LIMIT $1::bigint"
    )
}

// Every waiting task.
static CLASSIFY_ALL: LazyLock<String> = LazyLock::new(|| classify(""));

// The waiting dependents of prerequisites that settled (S, or F not hidden) at or after $2
// (`TaskStatus::SETTLED`, through `task_settled_idx`).
static CLASSIFY_SINCE: LazyLock<String> = LazyLock::new(|| {
    classify(&format!(
        "t.task_id IN (SELECT e.dependent_task_id
                               FROM task s JOIN task_dependencies e ON e.prerequisite_task_id = s.task_id
                              WHERE s.status IN ({settled}) AND NOT s.hidden AND s.modified_at >= $2)
           AND ",
        settled = sql_list(TaskStatus::SETTLED),
    ))
});

/// Which waiting tasks a round looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every waiting task (one scan of them).
    All,
    /// The dependents of prerequisites settled at or after this time.
    SettledSince(DateTime<Utc>),
}

/// The database's clock (start of the current transaction): the watermark of the next pass.
pub async fn now(tx: &Tx<'_>) -> Result<DateTime<Utc>> {
    let row = tx.query_one("SELECT now()", &[]).await?;
    Ok(row.get(0))
}

// The waiting tasks are reached by primary key only, as in db::tasks (see LOCK_WAITING_DEPENDENTS
// there): `(…) IS TRUE` keeps the status test out of index conditions.
#[doc(hidden)]
pub const PROMOTE: &str = "
    WITH locked AS (
        SELECT t.task_id FROM task t
         WHERE t.task_id = ANY($1) AND (t.status = 'W' AND NOT t.hidden) IS TRUE
         ORDER BY t.task_id
           FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
      FROM locked
     WHERE t.task_id = locked.task_id
       AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                         JOIN task p ON p.task_id = d.prerequisite_task_id
                        WHERE d.dependent_task_id = t.task_id AND p.status <> 'S')
    RETURNING t.task_id, t.step_id, t.shard";

#[doc(hidden)]
pub const FAIL: &str = "
    WITH doomed AS (
        SELECT * FROM unnest($1::integer[], $2::integer[]) AS x(task_id, cause)
    ), locked AS (
        SELECT t.task_id, doomed.cause FROM task t JOIN doomed ON doomed.task_id = t.task_id
         WHERE t.task_id = ANY($1) AND (t.status = 'W' AND NOT t.hidden) IS TRUE
         ORDER BY t.task_id
           FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE task t SET status = 'F', retry = 0, modified_at = now()
      FROM locked
     WHERE t.task_id = locked.task_id
       AND EXISTS (SELECT 1 FROM task p WHERE p.task_id = locked.cause AND p.status = 'F'
                      AND NOT p.hidden AND COALESCE(p.retry, 0) = 0)
    RETURNING t.task_id, locked.cause";

/// A waiting task failed because of a prerequisite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedDependent {
    pub task_id: i32,
    /// The (lowest-id) prerequisite that failed for good.
    pub prerequisite: i32,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Tasks made pending, in id order.
    pub promoted: Vec<i32>,
    /// Tasks failed, in id order.
    pub failed: Vec<FailedDependent>,
}

/// One round over up to `limit` waiting tasks that need something: W→P when all prerequisites
/// succeeded (lowering the claim cursors so the next pings find them), W→F with a stderr line
/// when one failed for good.
pub async fn sweep_round(tx: &Tx<'_>, scope: Scope, limit: i64) -> Result<Round> {
    let rows = match scope {
        Scope::All => {
            let stmt = tx.prepare_cached(&CLASSIFY_ALL).await?;
            tx.query(&stmt, &[&limit]).await
        }
        Scope::SettledSince(since) => {
            let stmt = tx.prepare_cached(&CLASSIFY_SINCE).await?;
            tx.query(&stmt, &[&limit, &since]).await
        }
    }?;
    let (mut ready, mut doomed, mut causes) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        match r.get::<_, Option<i32>>(1) {
            Some(cause) => {
                doomed.push(r.get::<_, i32>(0));
                causes.push(cause);
            }
            None => ready.push(r.get::<_, i32>(0)),
        }
    }
    let mut round = Round::default();
    if !ready.is_empty() {
        let stmt = tx.prepare_cached(PROMOTE).await?;
        let rows = tx.query(&stmt, &[&ready]).await?;
        let promoted: Vec<(Option<i32>, i16, i32)> = rows
            .iter()
            .map(|r| (r.get(1), r.get(2), r.get(0)))
            .collect();
        rewind_cursors(tx, &promoted).await?;
        round.promoted = promoted.into_iter().map(|(_, _, id)| id).collect();
        round.promoted.sort_unstable();
    }
    if !doomed.is_empty() {
        let stmt = tx.prepare_cached(FAIL).await?;
        let rows = tx.query(&stmt, &[&doomed, &causes]).await?;
        round.failed = rows
            .iter()
            .map(|r| FailedDependent {
                task_id: r.get(0),
                prerequisite: r.get(1),
            })
            .collect();
        round.failed.sort_unstable_by_key(|f| f.task_id);
        for f in &round.failed {
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
    }
    Ok(round)
}
