//! Worker events (`worker_event`): insert, list newest first with exact filters, delete, prune.
//! Validation (levels, JSON, limits, prune rules) is in `domain::events`; this file only queries.

use chrono::{DateTime, Utc};
use scoped_futures::ScopedFutureExt as _;

use super::{Db, Op, pg_error};
use crate::domain::events::{EventLevel, PruneFilter};
use crate::error::{Code, Error, Result};
use crate::telemetry::metrics as m;

/// A validated event to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// `None`: the event is not tied to a worker (it may precede registration).
    pub worker_id: Option<i32>,
    pub worker_name: &'a str,
    pub level: EventLevel,
    pub event_class: &'a str,
    pub message: &'a str,
    pub details: Option<serde_json::Value>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub event_id: i64,
    pub created_at: DateTime<Utc>,
    pub worker_id: Option<i32>,
    pub worker_name: String,
    pub level: String,
    pub event_class: String,
    pub message: String,
    /// The JSON as text; `None` when the event has no details.
    pub details_json: Option<String>,
}

const INSERT: &str = "
    INSERT INTO worker_event (worker_id, worker_name, level, event_class, message, details_json)
    VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING event_id";

/// Stores an event; returns its id. A `worker_id` naming no worker → `NotFound`.
pub async fn insert(db: &Db, event: &NewEvent<'_>) -> Result<i64> {
    db.run(Op::Events, |c| {
        async move {
            let stmt = c.prepare_cached(INSERT).await?;
            let row = c
                .query_one(
                    &stmt,
                    &[
                        &event.worker_id,
                        &event.worker_name,
                        &event.level.letter(),
                        &event.event_class,
                        &event.message,
                        &event.details,
                    ],
                )
                .await
                .map_err(|e| match pg_error(e) {
                    e if e.code == Code::NotFound => Error::not_found(format!(
                        "worker {} not found (omit worker_id for events of unregistered workers)",
                        event.worker_id.unwrap_or_default()
                    )),
                    e => e,
                })?;
            metrics::counter!(m::WORKER_EVENTS_INSERTED, "level" => event.level.letter())
                .increment(1);
            Ok(row.get(0))
        }
        .scope_boxed()
    })
    .await
}

/// Exact filters of ListWorkerEvents; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub worker_id: Option<i32>,
    pub level: Option<EventLevel>,
    pub event_class: Option<String>,
    pub limit: i64,
}

const LIST: &str = "
    SELECT event_id, created_at, worker_id, worker_name, level, event_class, message,
           details_json::text
      FROM worker_event
     WHERE ($1::int4 IS NULL OR worker_id = $1)
       AND ($2::bpchar IS NULL OR level = $2)
       AND ($3::text IS NULL OR event_class = $3)
     ORDER BY created_at DESC, event_id DESC
     LIMIT $4";

/// Events matching `filter`, newest first, at most `filter.limit`.
pub async fn list(db: &Db, filter: &ListFilter) -> Result<Vec<EventRecord>> {
    db.run(Op::Events, |c| {
        async move {
            let stmt = c.prepare_cached(LIST).await?;
            let level = filter.level.map(EventLevel::letter);
            let rows = c
                .query(
                    &stmt,
                    &[
                        &filter.worker_id,
                        &level,
                        &filter.event_class,
                        &filter.limit,
                    ],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| EventRecord {
                    event_id: r.get(0),
                    created_at: r.get(1),
                    worker_id: r.get(2),
                    worker_name: r.get(3),
                    level: r.get(4),
                    event_class: r.get(5),
                    message: r.get(6),
                    details_json: r.get(7),
                })
                .collect())
        }
        .scope_boxed()
    })
    .await
}

/// Deletes one event; returns whether it existed.
pub async fn delete(db: &Db, event_id: i64) -> Result<bool> {
    let n = db
        .execute(
            Op::Events,
            "DELETE FROM worker_event WHERE event_id = $1",
            &[&event_id],
        )
        .await?;
    Ok(n > 0)
}

const PRUNE_WHERE: &str = "
     WHERE ($1::timestamptz IS NULL OR created_at < $1)
       AND ($2::bpchar IS NULL OR level = $2)
       AND ($3::text IS NULL OR event_class = $3)
       AND ($4::int4 IS NULL OR worker_id = $4)";

/// What a prune did: how many events matched, how many were deleted (0 for a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub matched: u64,
    pub deleted: u64,
}

/// Counts (dry run) or deletes the events matching `filter`.
pub async fn prune(db: &Db, filter: &PruneFilter) -> Result<Pruned> {
    let level = filter.level.map(EventLevel::letter);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&filter.before, &level, &filter.class, &filter.worker_id];
    if filter.dry_run {
        let sql = format!("SELECT count(*) FROM worker_event {PRUNE_WHERE}");
        let n: i64 = db
            .query_one(Op::Events, &sql, &params, |r| r.get(0))
            .await?;
        return Ok(Pruned {
            matched: n as u64,
            deleted: 0,
        });
    }
    let sql = format!("DELETE FROM worker_event {PRUNE_WHERE}");
    let n = db.execute(Op::Events, &sql, &params).await?;
    Ok(Pruned {
        matched: n,
        deleted: n,
    })
}
