//! Task logs (`task_log`): batches of lines per (task, stream), appended under a per-task advisory
//! lock held until commit, so batch sequence numbers follow commit order and a follower that reads
//! `seq > last` never misses a batch. Each append notifies channel `task_log` with the task id.

use super::locks::NS_TASK_LOG;
use super::pg_error;
use crate::error::Result;

/// Which output of a task a log line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// The letter stored in `task_log.stream`.
    pub fn letter(self) -> &'static str {
        match self {
            LogStream::Stdout => "O",
            LogStream::Stderr => "E",
        }
    }
}

/// The channel a replica LISTENs on to wake log followers; the payload is the task id.
pub const NOTIFY_CHANNEL: &str = "task_log";

const APPEND: &str = "
    INSERT INTO task_log (task_id, stream, seq, line_count, body)
    SELECT $1, $2, COALESCE(max(seq), 0) + 1, $3, $4
      FROM task_log
     WHERE task_id = $1 AND stream = $2";

/// Appends `lines` (each stored followed by a newline) as one batch, inside `tx`.
pub async fn append_lines(
    tx: &deadpool_postgres::Transaction<'_>,
    task_id: i32,
    stream: LogStream,
    lines: &[&str],
) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        // Postgres text cannot hold NUL; it is the only character changed on the way in.
        body.push_str(&line.replace('\0', "\u{FFFD}"));
        body.push('\n');
    }
    let count = lines.len() as i32;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NS_TASK_LOG, &task_id],
    )
    .await
    .map_err(pg_error)?;
    let stmt = tx.prepare_cached(APPEND).await.map_err(pg_error)?;
    tx.execute(&stmt, &[&task_id, &stream.letter(), &count, &body])
        .await
        .map_err(pg_error)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&NOTIFY_CHANNEL, &task_id.to_string()],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Appends one line written by the server itself (why a task was failed, retried …), inside `tx`.
pub async fn append_system_line(
    tx: &deadpool_postgres::Transaction<'_>,
    task_id: i32,
    stream: LogStream,
    text: &str,
) -> Result<()> {
    append_lines(tx, task_id, stream, &[text]).await
}
