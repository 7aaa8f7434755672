//! Worker event RPCs.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "worker events (logs issue)";

pub async fn report_worker_event(
    _state: &AppState,
    _request: Request<pb::WorkerEvent>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_worker_events(
    _state: &AppState,
    _request: Request<pb::WorkerEventFilter>,
) -> Result<pb::WorkerEventList> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_worker_event(
    _state: &AppState,
    _request: Request<pb::WorkerEventId>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn prune_worker_events(
    _state: &AppState,
    _request: Request<pb::WorkerEventPruneFilter>,
) -> Result<pb::WorkerEventPruneResult> {
    Err(Error::unimplemented(AREA))
}
