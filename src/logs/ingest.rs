//! SendTaskLogs: receives a worker's stream of log lines, buffers them per (task, output) and
//! writes them in batches — every `FLUSH_INTERVAL`, or at once when `FLUSH_BYTES` or `FLUSH_KEYS`
//! are reached. While a batch is written the next message is not read, so a worker cannot send
//! faster than the database stores (HTTP/2 flow control carries the back-pressure).
//!
//! What is stored when a stream goes wrong (the rule is "what came before the bad message"):
//! - the stream ends normally: everything is committed before the call returns (the Ack), so a
//!   worker that sends its final status after the Ack never races its own tail;
//! - a message with an invalid `log_type` (InvalidArgument) or an unknown task id (NotFound, checked
//!   when an id first appears in the stream): the valid lines received before it are stored, the bad
//!   message and anything after it are not. A stream for one unknown task thus stores nothing;
//! - a task deleted while its lines are buffered: its lines are dropped (NotFound), other tasks'
//!   lines are stored;
//! - the stream breaks (client gone) or the replica drains (Unavailable): what was received is
//!   stored, best effort.
//!
//! A task stores at most `--max-log-bytes-per-task` of log (both outputs, counted in the database
//! under the task's log lock, so across streams and replicas): the batch that crosses the bound
//! keeps the lines that fit, then one truncation line is stored and every later line is dropped
//! (the stream itself carries on: a worker is not failed for a chatty task).
//!
//! A stream without a token (`LogAccess::HeldTasks`: the original Go worker, whose token
//! interceptor is unary-only) may only append lines of tasks a worker holds. The rule is checked
//! per task, when its id first appears in the stream and again by the statement that appends each
//! batch. A line for a task not held ends the stream with `Unauthenticated` (the lines of held
//! tasks received before it are stored, as above); a task that leaves the held statuses while its
//! lines are buffered gets none of them stored, and the stream ends with `Unauthenticated` too. A
//! stream without a token that carried no line at all is `Unauthenticated` as well: without a
//! token, nothing but appending lines of a held task is ever answered with success.

use std::collections::HashSet;
use std::pin::pin;

use futures::{Stream, StreamExt as _};
use tokio::time::{Instant, sleep_until};

use super::{FLUSH_BYTES, FLUSH_INTERVAL, FLUSH_KEYS, LogService, OpenStream};
use crate::db;
use crate::domain::logs::{IngestBuffer, LogAccess, LogStream};
use crate::error::{Error, Result};
use crate::telemetry::metrics as m;

/// One received message of a SendTaskLogs stream.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub task_id: i32,
    pub log_type: String,
    pub text: String,
}

/// Task ids a stream already checked; bounded (a stream naming more tasks checks again).
const KNOWN_TASKS_MAX: usize = 1024;

impl LogService {
    /// Receives a SendTaskLogs stream to its end and stores what `access` allows (see the module
    /// doc for what is stored when something goes wrong). Returns once everything received is
    /// committed.
    pub async fn receive(
        &self,
        lines: impl Stream<Item = Result<LogLine>>,
        access: LogAccess,
    ) -> Result<()> {
        let _open = OpenStream::new("send");
        let mut lines = pin!(lines);
        let mut buffer = IngestBuffer::default();
        let mut known: HashSet<i32> = HashSet::new();
        // A line passed `check` (without a token: a task a worker holds was named).
        let mut admitted = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.draining.cancelled() => {
                    self.flush(&mut buffer, access).await?;
                    return Err(Error::unavailable(
                        "replica shutting down: the lines received so far are stored; \
                         send the rest through another replica",
                    ));
                }
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    self.flush(&mut buffer, access).await?;
                    deadline = None;
                    continue;
                }
                next = lines.next() => next,
            };
            let line = match next {
                None if access == LogAccess::HeldTasks && !admitted => {
                    return Err(Error::unauthenticated(
                        "missing token: send 'authorization: Bearer <token>' \
                         (without one, a stream may only carry lines of tasks a worker holds)",
                    ));
                }
                None => return self.flush(&mut buffer, access).await,
                Some(Err(e)) => {
                    if let Err(flush) = self.flush(&mut buffer, access).await {
                        tracing::warn!(error = %flush, "cannot store the lines of a broken log stream");
                    }
                    return Err(e);
                }
                Some(Ok(line)) => line,
            };
            let stream = match self.check(&line, &mut known, access).await {
                Ok(stream) => stream,
                Err(e) => {
                    self.flush(&mut buffer, access).await?;
                    return Err(e);
                }
            };
            admitted = true;
            buffer.push(line.task_id, stream, &line.text);
            if buffer.bytes() >= FLUSH_BYTES || buffer.keys() >= FLUSH_KEYS {
                self.flush(&mut buffer, access).await?;
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + FLUSH_INTERVAL);
            }
        }
    }

    /// Refuses a message for a task `access` does not allow (checked when its id first appears,
    /// before anything else, so a caller without a token learns nothing more) or with an invalid
    /// `log_type`; returns the output the message belongs to.
    async fn check(
        &self,
        line: &LogLine,
        known: &mut HashSet<i32>,
        access: LogAccess,
    ) -> Result<LogStream> {
        if !known.contains(&line.task_id) {
            if !db::logs::accepts_lines(&self.db, line.task_id, access).await? {
                return Err(db::logs::refused(line.task_id, access));
            }
            if known.len() >= KNOWN_TASKS_MAX {
                known.clear();
            }
            known.insert(line.task_id);
        }
        Ok(LogStream::parse(&line.log_type)?)
    }

    /// Writes everything buffered, one transaction per task, while holding a writer permit.
    /// Returns the first failure after trying every task.
    async fn flush(&self, buffer: &mut IngestBuffer, access: LogAccess) -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let _permit = self
            .writers
            .acquire()
            .await
            .map_err(|_| Error::unavailable("shutting down"))?;
        let mut first_error = None;
        for (task_id, batches) in buffer.take() {
            let max = self.max_log_bytes_per_task;
            match db::logs::store(&self.db, task_id, access, &batches, max).await {
                Ok(dropped) => {
                    if dropped > 0 {
                        metrics::counter!(m::LOG_DROPPED_BYTES).increment(dropped);
                    }
                    let lines: u64 = batches.iter().map(|(_, b)| u64::from(b.lines)).sum();
                    let bytes: usize = batches.iter().map(|(_, b)| b.body.len()).sum();
                    metrics::counter!(m::LOG_RECEIVED_LINES).increment(lines);
                    metrics::counter!(m::LOG_RECEIVED_BYTES).increment(bytes as u64);
                    metrics::counter!(m::LOG_BATCHES_WRITTEN).increment(batches.len() as u64);
                }
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "log lines not stored");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(3600)
}
