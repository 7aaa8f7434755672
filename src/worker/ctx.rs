//! What every task of the worker shares ([`Ctx`]): the client, the worker's identity, the
//! storage layer, the executor, the slots and the shutdown tokens, with the status updates and
//! worker events that tasks send through it. The agent (`agent.rs`) builds it and `task.rs` runs
//! each task on it, so the two files share it without importing each other both ways.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::executor::Executor;
use super::slots::Slots;
use crate::client::Client;
use crate::domain::docker_options::DockerPolicy;
use crate::domain::status::TaskStatus;
use crate::proto as pb;
use crate::storage::Storage;

/// Deadline of one unary call to the server.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What every task of this worker shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub worker_id: AtomicI32,
    pub worker_name: String,
    pub storage: Storage,
    pub executor: Executor,
    /// Container options this worker runs (checked again before each docker task).
    pub docker_policy: DockerPolicy,
    pub slots: Arc<Slots>,
    pub store: PathBuf,
    /// The shell helpers' folder (`<store>/builtin`), if they could be written.
    pub builtin: Option<PathBuf>,
    /// CPUs of this machine (a task's `CPU` is its share of them).
    pub cpus: usize,
    /// SIGTERM: take nothing new; tasks not yet running hand themselves back.
    pub stopping: CancellationToken,
    /// The grace period is over: running tasks are killed and handed back.
    pub abandon: CancellationToken,
    /// Ping now (a task finished or a slot freed).
    pub wake: Notify,
    /// One download at a time per resource location.
    pub resource_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why a status update did not land.
#[derive(Debug)]
pub(crate) enum UpdateError {
    /// The server refused it for good: the task is hidden (retried elsewhere), deleted, or the
    /// update is invalid. The task is no longer this worker's.
    Rejected(String),
    /// The server could not be reached within the attempts.
    Unreachable(String),
}

impl Ctx {
    pub fn worker_id(&self) -> i32 {
        self.worker_id.load(Ordering::Relaxed)
    }

    /// UpdateTaskStatus, 3 attempts with a growing delay; a same-status update is a success on
    /// the server, so a retry after a lost answer is harmless.
    pub async fn update(
        &self,
        task_id: i32,
        status: TaskStatus,
        duration: Option<i32>,
        free_retry: bool,
    ) -> Result<(), UpdateError> {
        let request = pb::TaskStatusUpdate {
            task_id,
            new_status: status.letter().into(),
            duration,
            free_retry: free_retry.then_some(true),
        };
        let mut last = String::new();
        for attempt in 1..=3u32 {
            let mut client = self.client.clone();
            let call = client.update_task_status(request.clone());
            match tokio::time::timeout(CALL_TIMEOUT * attempt, call).await {
                Ok(Ok(_)) => {
                    tracing::debug!(task_id, status = %status, "task status updated");
                    return Ok(());
                }
                Ok(Err(s)) if is_refusal(s.code()) => {
                    return Err(UpdateError::Rejected(s.message().to_string()));
                }
                Ok(Err(s)) => last = format!("{}: {}", code_name(s.code()), s.message()),
                Err(_) => last = "no answer in time".into(),
            }
            tracing::warn!(task_id, status = %status, attempt, error = %last, "task status update failed");
            if attempt < 3 {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
        Err(UpdateError::Unreachable(last))
    }

    /// A worker event (best effort).
    pub async fn event(
        &self,
        level: &str,
        class: &str,
        message: String,
        details: serde_json::Value,
    ) {
        let mut client = self.client.clone();
        let event = pb::WorkerEvent {
            worker_id: Some(self.worker_id()),
            worker_name: self.worker_name.clone(),
            level: level.into(),
            event_class: class.into(),
            message,
            details_json: details.to_string(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.report_worker_event(event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => tracing::debug!(error = %s.message(), "worker event not sent"),
            Err(_) => tracing::debug!("worker event not sent: no answer in time"),
        }
    }
}

/// Codes that mean "this will never succeed": do not retry.
pub(crate) fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}
