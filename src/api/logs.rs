//! Task log RPCs: the worker's log stream, live follow streams, paged chunks.

use futures::stream::BoxStream;
use tonic::Status;
use tonic::{Request, Streaming};

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "task logs (logs issue)";

pub async fn send_task_logs(
    _state: &AppState,
    _request: Request<Streaming<pb::TaskLog>>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn stream_task_logs_output(
    _state: &AppState,
    _request: Request<pb::TaskId>,
) -> Result<BoxStream<'static, Result<pb::TaskLog, Status>>> {
    Err(Error::unimplemented(AREA))
}

pub async fn stream_task_logs_err(
    _state: &AppState,
    _request: Request<pb::TaskId>,
) -> Result<BoxStream<'static, Result<pb::TaskLog, Status>>> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_logs_chunk(
    _state: &AppState,
    _request: Request<pb::GetLogsRequest>,
) -> Result<pb::LogChunkList> {
    Err(Error::unimplemented(AREA))
}
