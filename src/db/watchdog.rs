//! The watchdog's queries (docs/architecture.md#background-loops), all decided from timestamps in
//! the database: `last_ping_at` (written by pings), `last_activity_at` (a task of the worker
//! accepted or finished), `created_at` and `offline_since` (set here). Run inside the leader's
//! fenced transactions. Not here: the cadence and the choice of how a worker is deleted
//! (`loops::watchdog`).
//!
//! Pings hold `pg_advisory_xact_lock(NS_WORKER, worker_id)` while they write; the offline
//! transition skips a worker whose ping is in flight (it is alive), and deletion waits for it.

use std::sync::LazyLock;
use std::time::Duration;

use super::locks::NS_WORKER;
use crate::domain::status::{TaskStatus, WorkerStatus, sql_case, sql_list};
use crate::error::{Error, Result};

use super::Tx;

/// The watchdog's clocks (the original's defaults: 30 s, 300 s, 900 s, 300 s, 600 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// R→O, P→Q, F→L after this long without a ping.
    pub offline: Duration,
    /// Idle non-permanent workers are deleted this long after their last activity…
    pub idle: Duration,
    /// …or this long after their creation if they never had any; also how long a worker may
    /// stay installing (I) without a ping before it is marked offline.
    pub new_worker_idle: Duration,
    /// Offline non-permanent workers are deleted after this long offline.
    pub lost: Duration,
    /// Extra idle time for a worker still holding tasks in A/C/D/O (at least this, or the longest
    /// `download_timeout` of those tasks): they may still be downloading.
    pub download_grace: Duration,
}

/// A worker the watchdog moved to an offline status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentOffline {
    pub worker_id: i32,
    pub worker_name: String,
    pub from: WorkerStatus,
    pub to: WorkerStatus,
}

// The workers that stopped pinging, whose ping is not in flight (try-lock, after selecting, so only
// candidates are locked), moved to the offline form of their status; the UPDATE re-checks the
// clock on the current row. An operator's pause survives: P→Q (a ping brings back P), never P→O.
// Installing workers (I, a VM being deployed) get the new-worker clock instead of the offline one.
// The statuses are `WorkerStatus::GOES_OFFLINE`, the new one `WorkerStatus::gone_offline`.
static MARK_OFFLINE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    WITH stale AS MATERIALIZED (
        SELECT worker_id, status FROM worker
         WHERE status IN ({goes_offline})
           AND COALESCE(last_ping_at, created_at)
               < now() - make_interval(secs => CASE WHEN status = 'I' THEN $2::float8 ELSE $1::float8 END)
         ORDER BY worker_id
         LIMIT $3::bigint
    ), unlocked AS MATERIALIZED (
        SELECT worker_id, status FROM stale WHERE pg_try_advisory_xact_lock($4::integer, worker_id)
    )
    UPDATE worker w
       SET status = {gone_offline},
           offline_since = now()
      FROM unlocked u
     WHERE w.worker_id = u.worker_id
       AND w.status IN ({goes_offline})
       AND COALESCE(w.last_ping_at, w.created_at)
           < now() - make_interval(secs => CASE WHEN w.status = 'I' THEN $2::float8 ELSE $1::float8 END)
    RETURNING w.worker_id, w.worker_name, u.status AS old_status, w.status",
        goes_offline = sql_list(WorkerStatus::GOES_OFFLINE),
        gone_offline = sql_case("w.status", WorkerStatus::ALL, WorkerStatus::gone_offline),
    )
});

/// Moves up to `limit` workers that stopped pinging to O/Q/L and stamps `offline_since`.
pub async fn mark_offline(tx: &Tx<'_>, t: &Timeouts, limit: i64) -> Result<Vec<WentOffline>> {
    let stmt = tx.prepare_cached(&MARK_OFFLINE).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &t.offline.as_secs_f64(),
                &t.new_worker_idle.as_secs_f64(),
                &limit,
                &NS_WORKER,
            ],
        )
        .await?;
    let status = |s: String| {
        WorkerStatus::parse(s.trim())
            .map_err(|e| Error::internal(format!("stored worker status: {e}")))
    };
    rows.iter()
        .map(|r| {
            Ok(WentOffline {
                worker_id: r.get(0),
                worker_name: r.get(1),
                from: status(r.get(2))?,
                to: status(r.get(3))?,
            })
        })
        .collect()
}

/// Why a worker is due for deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    /// No running task and no activity for the idle timeout (new-worker timeout if it never had
    /// any; longer while it holds tasks it may still be downloading).
    Idle,
    /// Offline for longer than the lost timeout.
    Lost,
}

impl DueReason {
    pub fn label(self) -> &'static str {
        match self {
            DueReason::Idle => "idle",
            DueReason::Lost => "lost",
        }
    }
}

/// A non-permanent worker due for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub worker_id: i32,
    pub worker_name: String,
    pub reason: DueReason,
    /// Its provider's name (`local`, `azure` …) through its region or flavor; `None` for a manual
    /// worker registered without either.
    pub provider: Option<String>,
}

// Tasks of a worker: busy = running or uploading (never idle); warm = assigned, accepted,
// downloading or waiting for a slot (idle, with a longer threshold): `TaskStatus::BUSY` and
// `TaskStatus::WARM`; lost = offline (`WorkerStatus::OFFLINE`) for the lost timeout.
static DUE_FOR_DELETION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    SELECT w.worker_id, w.worker_name, p.provider_name,
           (w.status IN ({offline})
            AND COALESCE(w.offline_since, w.last_ping_at, w.created_at) < now() - make_interval(secs => $5::float8)) AS lost
      FROM worker w
      LEFT JOIN region r ON r.region_id = w.region_id
      LEFT JOIN flavor f ON f.flavor_id = w.flavor_id
      LEFT JOIN provider p ON p.provider_id = COALESCE(r.provider_id, f.provider_id)
     CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE t.status IN ({busy})) AS busy,
               count(*) FILTER (WHERE t.status IN ({warm})) AS warm,
               COALESCE(max(t.download_timeout) FILTER (WHERE t.status IN ({warm})), 0) AS longest_download
          FROM task t
         WHERE t.worker_id = w.worker_id AND NOT t.hidden
           AND t.status IN ({on_worker})
     ) held
     WHERE NOT w.is_permanent AND w.status <> 'D'
       AND ($6::integer IS NULL OR w.worker_id = $6)
       AND ((w.status IN ({offline})
             AND COALESCE(w.offline_since, w.last_ping_at, w.created_at) < now() - make_interval(secs => $5::float8))
         OR (held.busy = 0
             AND COALESCE(w.last_activity_at, w.created_at) < now() - make_interval(secs =>
                   CASE WHEN w.last_activity_at IS NULL THEN $2::float8 ELSE $1::float8 END
                 + CASE WHEN held.warm > 0 THEN greatest($3::float8, held.longest_download) ELSE 0 END)))
     ORDER BY w.worker_id
     LIMIT $4::bigint",
        offline = sql_list(WorkerStatus::OFFLINE),
        busy = sql_list(TaskStatus::BUSY),
        warm = sql_list(TaskStatus::WARM),
        on_worker = sql_list(TaskStatus::ON_WORKER),
    )
});

/// Non-permanent workers due for deletion (all, or only `only`), at most `limit`.
pub async fn due_for_deletion(
    tx: &Tx<'_>,
    t: &Timeouts,
    only: Option<i32>,
    limit: i64,
) -> Result<Vec<Due>> {
    let stmt = tx.prepare_cached(&DUE_FOR_DELETION).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &t.idle.as_secs_f64(),
                &t.new_worker_idle.as_secs_f64(),
                &t.download_grace.as_secs_f64(),
                &limit,
                &t.lost.as_secs_f64(),
                &only,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Due {
            worker_id: r.get(0),
            worker_name: r.get(1),
            provider: r.get(2),
            reason: if r.get::<_, bool>(3) {
                DueReason::Lost
            } else {
                DueReason::Idle
            },
        })
        .collect())
}

/// Waits for an in-flight ping of the worker and keeps the next ones out until commit.
pub async fn lock_worker(tx: &Tx<'_>, worker_id: i32) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NS_WORKER, &worker_id],
    )
    .await?;
    Ok(())
}

/// The unfinished tasks a worker holds (`TaskStatus::ON_WORKER`; not hidden).
static HELD_TASKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT task_id FROM task WHERE worker_id = $1 AND NOT hidden
            AND status IN ({on_worker}) ORDER BY task_id",
        on_worker = sql_list(TaskStatus::ON_WORKER),
    )
});

/// The unfinished tasks a worker holds (A, C, D, O, R, U, V; not hidden).
pub async fn held_tasks(tx: &Tx<'_>, worker_id: i32) -> Result<Vec<i32>> {
    let rows = tx.query(HELD_TASKS.as_str(), &[&worker_id]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes the worker row, leaving a worker event that says why (the event outlives the row).
pub async fn delete_row(tx: &Tx<'_>, due: &Due, message: &str) -> Result<()> {
    tx.execute("DELETE FROM worker WHERE worker_id = $1", &[&due.worker_id])
        .await?;
    let level = match due.reason {
        DueReason::Idle => "I",
        DueReason::Lost => "W",
    };
    tx.execute(
        "INSERT INTO worker_event (worker_id, worker_name, level, event_class, message, details_json)
         VALUES (NULL, $1, $2, 'watchdog', $3, jsonb_build_object('worker_id', $4::integer, 'reason', $5::text))",
        &[&due.worker_name, &level, &message, &due.worker_id, &due.reason.label()],
    )
    .await?;
    Ok(())
}
