//! Task log RPCs (docs/architecture.md#task-logs): the worker's log stream (SendTaskLogs), live
//! follow streams (StreamTaskLogsOutput/Err) and paged chunks (GetLogsChunk). The streaming work
//! is in `crate::logs`, queries in `db::logs`, rules in `domain::logs`.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::{Request, Status, Streaming};

use crate::db;
use crate::domain::logs::{LogAccess, LogStream, chunk_request};
use crate::error::{Error, Result};
use crate::logs::LogLine;
use crate::proto as pb;
use crate::server::auth::Caller;
use crate::server::state::AppState;

pub async fn send_task_logs(
    state: &AppState,
    request: Request<Streaming<pb::TaskLog>>,
) -> Result<pb::Ack> {
    // No token (the original Go worker: its token interceptor is unary-only): held tasks only.
    let access = match Caller::of(&request) {
        Caller::AnonymousLogWriter => LogAccess::HeldTasks,
        _ => LogAccess::AnyTask,
    };
    let lines = request.into_inner().map(|message| {
        message.map_err(broken_stream).map(|m| LogLine {
            task_id: m.task_id,
            log_type: m.log_type,
            text: m.log_text,
        })
    });
    state.logs.receive(lines, access).await?;
    Ok(pb::Ack { success: true })
}

pub async fn stream_task_logs_output(
    state: &AppState,
    request: Request<pb::TaskId>,
) -> Result<BoxStream<'static, Result<pb::TaskLog, Status>>> {
    follow(state, request, LogStream::Stdout).await
}

pub async fn stream_task_logs_err(
    state: &AppState,
    request: Request<pb::TaskId>,
) -> Result<BoxStream<'static, Result<pb::TaskLog, Status>>> {
    follow(state, request, LogStream::Stderr).await
}

/// One TaskLog per line, with the `log_type` name the original sends ("stdout"/"stderr").
async fn follow(
    state: &AppState,
    request: Request<pb::TaskId>,
    stream: LogStream,
) -> Result<BoxStream<'static, Result<pb::TaskLog, Status>>> {
    let user_id = Caller::of(&request).user_id();
    let task_id = request.into_inner().task_id;
    let lines = state.logs.follow(task_id, stream, user_id).await?;
    Ok(lines
        .map(move |line| {
            line.map(|log_text| pb::TaskLog {
                task_id,
                log_type: stream.name().to_string(),
                log_text,
            })
            .map_err(Status::from)
        })
        .boxed())
}

pub async fn get_logs_chunk(
    state: &AppState,
    request: Request<pb::GetLogsRequest>,
) -> Result<pb::LogChunkList> {
    let req = request.into_inner();
    let streams = LogStream::parse_filter(req.log_type.as_deref())?;
    let (chunk, skip) = chunk_request(req.task_ids.len(), req.chunk_size, req.skip_from_end)?;
    let chunks = db::logs::chunks(&state.db, &req.task_ids, &streams, chunk, skip).await?;
    let logs = chunks
        .into_iter()
        .map(|c| pb::LogChunk {
            task_id: c.task_id,
            stdout: c.stdout,
            stderr: c.stderr,
        })
        .collect();
    Ok(pb::LogChunkList { logs })
}

/// A receive error of the client stream (client gone, message too large, bad encoding).
fn broken_stream(status: Status) -> Error {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => {
            Error::invalid(format!("log stream refused: {}", status.message()))
        }
        _ => Error::unavailable(format!("log stream broken: {}", status.message())),
    }
}
