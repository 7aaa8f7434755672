//! WebSocket events through PostgreSQL (docs/architecture.md#web-surface; schema/0008_ws.sql): what
//! is published, how a replica reads it back. Table changes publish themselves (triggers on task,
//! worker, workflow, step and session rows, in the changing transaction); `publish` is for events
//! without a row of their own, written with the same SQL function so the size rule is one: a body
//! over `INLINE_LIMIT` bytes is stored in `ws_event` and notified by reference.
//!
//! Not here: who may receive what (`domain::ws`), the sockets (`web::ws`).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::{Db, Op};
use crate::domain::ws::Audience;
use crate::error::Result;

/// The NOTIFY channel of WebSocket events.
pub const CHANNEL: &str = "tq_ws";
/// Bodies up to this size travel in the notification itself (NOTIFY allows 8,000 bytes).
pub const INLINE_LIMIT: usize = 7900;
/// How long a stored (by-reference) body is kept: readers fetch it within milliseconds.
pub const KEEP: Duration = Duration::from_secs(600);

/// An event to publish.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The envelope's `type` (`task`, `worker`, `step-stats` …).
    pub kind: &'static str,
    pub action: &'static str,
    /// The envelope's numeric `id` (0: every subscriber).
    pub id: i64,
    pub audience: Audience,
    /// The owning user, for `Audience::Owner`.
    pub owner: Option<i32>,
    pub payload: serde_json::Value,
}

const PUBLISH: &str = "SELECT tq_ws_publish($1, $2, $3, $4, $5, $6::text::json)";

/// Publishes `event` on `client` — inside a transaction, it is sent at commit (and not at all on
/// rollback).
pub async fn publish<C: GenericClient + Sync>(client: &C, event: &Event) -> Result<()> {
    let payload = event.payload.to_string();
    client
        .execute(
            PUBLISH,
            &[
                &event.kind,
                &event.action,
                &event.id,
                &event.audience.as_str(),
                &event.owner,
                &payload,
            ],
        )
        .await?;
    Ok(())
}

/// The body of a stored event (`None`: pruned or never committed).
pub async fn fetch(db: &Db, event_id: i64) -> Result<Option<String>> {
    db.query_opt(
        Op::WsEvents,
        "SELECT body FROM ws_event WHERE event_id = $1",
        &[&event_id],
        |r| r.get(0),
    )
    .await
}

/// Deletes stored bodies older than `KEEP`; returns how many. Any replica may run it.
pub async fn prune(db: &Db) -> Result<u64> {
    let keep = KEEP.as_secs_f64();
    db.execute(
        Op::WsEvents,
        "DELETE FROM ws_event WHERE created_at < now() - make_interval(secs => $1)",
        &[&keep],
    )
    .await
}
