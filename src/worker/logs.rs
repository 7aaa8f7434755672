//! Shipping one task execution's output to the server: one `SendTaskLogs` client stream per
//! execution, one message per line (`stdout` / `stderr`). `finish` closes the stream and waits for
//! the server's Ack, so the final status is only sent once every line is stored. The stream opens
//! with the first line; one that breaks is opened again (the lines in flight at that moment may be
//! lost; later ones are not).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::proto as pb;

/// Lines buffered before the command's output is slowed down.
const BUFFER: usize = 4096;
/// Attempts to (re)open a broken stream before giving up on this execution's logs.
const REOPEN_ATTEMPTS: u32 = 3;

pub struct LogShipper {
    tx: mpsc::Sender<pb::TaskLog>,
    task_id: i32,
    join: JoinHandle<Result<(), String>>,
}

impl LogShipper {
    pub fn open(client: Client, task_id: i32) -> LogShipper {
        let (tx, rx) = mpsc::channel(BUFFER);
        let join = tokio::spawn(ship(client, rx));
        LogShipper { tx, task_id, join }
    }

    pub fn stdout(&self) -> LineSender {
        LineSender {
            tx: self.tx.clone(),
            task_id: self.task_id,
            kind: "stdout",
        }
    }

    pub fn stderr(&self) -> LineSender {
        LineSender {
            tx: self.tx.clone(),
            task_id: self.task_id,
            kind: "stderr",
        }
    }

    /// A line of the worker itself about this task (an error, a hand-back), on stderr.
    pub async fn note(&self, text: impl Into<String>) {
        self.stderr().send(text.into()).await;
    }

    /// Closes the stream and waits (at most `limit`) for the server to acknowledge every line.
    pub async fn finish(self, limit: Duration) -> Result<(), String> {
        drop(self.tx);
        match tokio::time::timeout(limit, self.join).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("log shipping task failed: {e}")),
            Err(_) => Err(format!(
                "the server did not acknowledge the logs within {limit:?}"
            )),
        }
    }
}

/// Sends lines of one kind.
#[derive(Clone)]
pub struct LineSender {
    tx: mpsc::Sender<pb::TaskLog>,
    task_id: i32,
    kind: &'static str,
}

impl LineSender {
    pub async fn send(&self, text: String) {
        let _ = self
            .tx
            .send(pb::TaskLog {
                task_id: self.task_id,
                log_type: self.kind.into(),
                log_text: text,
            })
            .await;
    }
}

/// Forwards lines from `rx` into a client stream, reopening it when the server ends it early.
async fn ship(client: Client, mut rx: mpsc::Receiver<pb::TaskLog>) -> Result<(), String> {
    // The stream opens with the first line: a task waiting for a slot holds no stream open.
    let Some(first) = rx.recv().await else {
        return Ok(());
    };
    let mut failures = 0;
    let mut pending: Option<pb::TaskLog> = Some(first);
    loop {
        let (inner_tx, inner_rx) = mpsc::channel::<pb::TaskLog>(64);
        let mut call_client = client.clone();
        let mut call = tokio::spawn(async move {
            call_client
                .send_task_logs(tokio_stream::wrappers::ReceiverStream::new(inner_rx))
                .await
        });
        // Forward until the input ends (normal close) or the call ends early (broken stream).
        let ended_early = loop {
            let next = match pending.take() {
                Some(line) => Some(line),
                None => tokio::select! {
                    line = rx.recv() => line,
                    result = &mut call => break Some(result),
                },
            };
            let Some(line) = next else { break None };
            if let Err(mpsc::error::SendError(line)) = inner_tx.send(line).await {
                pending = Some(line);
                break Some((&mut call).await);
            }
        };
        drop(inner_tx);
        let result = match ended_early {
            None => call.await,
            Some(r) => {
                // Ended before we closed it: reopen unless it keeps failing.
                let error = match r {
                    Ok(Ok(_)) => "the server closed the log stream early".to_string(),
                    Ok(Err(status)) => status.message().to_string(),
                    Err(e) => e.to_string(),
                };
                failures += 1;
                if failures >= REOPEN_ATTEMPTS {
                    // Drain so the command is never blocked by its own output.
                    while rx.recv().await.is_some() {}
                    return Err(format!("log stream failed {failures} times: {error}"));
                }
                tracing::warn!(attempt = failures, error = %error, "log stream broke, reopening");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                continue;
            }
        };
        return match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(format!("the server refused the logs: {}", status.message())),
            Err(e) => Err(e.to_string()),
        };
    }
}
