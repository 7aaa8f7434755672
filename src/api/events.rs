//! Worker event RPCs (as the original scitq's): report, list, delete, prune.
//! Rules in `domain::events`, queries in `db::events`.
//!
//! Choices: an event whose `worker_id` names no worker is refused (`NotFound`); `worker_id` 0 or
//! absent stores an event tied to no worker (workers report before they are registered). An empty
//! `level` means `I`. DeleteWorkerEvent of an absent event succeeds (deletes are idempotent, so a
//! retry through another replica does not fail).

use chrono::SecondsFormat;
use tonic::Request;

use crate::api::state::AppState;
use crate::db::events::{self, ListFilter, NewEvent};
use crate::domain::events::{self as rules, EventLevel, PruneFilter};
use crate::error::{Error, Result};
use crate::proto as pb;

pub async fn report_worker_event(
    state: &AppState,
    request: Request<pb::WorkerEvent>,
) -> Result<pb::Ack> {
    let req = request.into_inner();
    let event = NewEvent {
        worker_id: req.worker_id.filter(|&id| id != 0),
        worker_name: &req.worker_name,
        level: EventLevel::parse_reported(&req.level)?,
        event_class: rules::event_class(&req.event_class)?,
        message: &req.message,
        details: rules::parse_details(&req.details_json)?,
    };
    events::insert(&state.db, &event).await?;
    Ok(pb::Ack { success: true })
}

pub async fn list_worker_events(
    state: &AppState,
    request: Request<pb::WorkerEventFilter>,
) -> Result<pb::WorkerEventList> {
    let req = request.into_inner();
    let filter = ListFilter {
        worker_id: req.worker_id,
        level: EventLevel::parse_filter(req.level.as_deref())?,
        event_class: crate::domain::filters::text_filter("class", req.class)?,
        limit: rules::list_limit(req.limit),
    };
    let records = events::list(&state.db, &filter).await?;
    let events = records.into_iter().map(encode).collect::<Result<_>>()?;
    Ok(pb::WorkerEventList { events })
}

pub async fn delete_worker_event(
    state: &AppState,
    request: Request<pb::WorkerEventId>,
) -> Result<pb::Ack> {
    let event_id = request.into_inner().event_id;
    if event_id <= 0 {
        return Err(Error::invalid(format!("invalid event_id {event_id}")));
    }
    events::delete(&state.db, i64::from(event_id)).await?;
    Ok(pb::Ack { success: true })
}

pub async fn prune_worker_events(
    state: &AppState,
    request: Request<pb::WorkerEventPruneFilter>,
) -> Result<pb::WorkerEventPruneResult> {
    let req = request.into_inner();
    let filter = PruneFilter::new(
        req.before.as_deref(),
        req.level.as_deref(),
        req.class.as_deref(),
        req.worker_id,
        req.dry_run,
    )?;
    let pruned = events::prune(&state.db, &filter).await?;
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(pb::WorkerEventPruneResult {
        matched: count(pruned.matched),
        deleted: count(pruned.deleted),
    })
}

/// A stored event on the wire: `created_at` in RFC 3339 UTC, details as JSON text ("" if none).
fn encode(e: events::EventRecord) -> Result<pb::WorkerEventRecord> {
    Ok(pb::WorkerEventRecord {
        event_id: i32::try_from(e.event_id)
            .map_err(|_| Error::internal(format!("event id {} exceeds int32", e.event_id)))?,
        created_at: e.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        worker_id: e.worker_id,
        worker_name: e.worker_name,
        level: e.level,
        event_class: e.event_class,
        message: e.message,
        details_json: e.details_json.unwrap_or_default(),
    })
}
