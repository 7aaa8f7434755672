//! Task RPCs: SubmitTask, ListTasks, RetryTask, UpdateTaskStatus.

use tonic::Request;

use crate::db::tasks::{self, NewTask, TaskFilter};
use crate::domain::filters;
use crate::domain::status::TaskStatus;
use crate::domain::tasks::Submission;
use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

pub async fn submit_task(
    state: &AppState,
    request: Request<pb::TaskRequest>,
) -> Result<pb::TaskResponse> {
    let r = request.into_inner();
    let timeouts = [r.download_timeout, r.running_timeout, r.upload_timeout];
    let rules = Submission::validate(
        &r.command,
        &r.container,
        &r.status,
        &r.dependency,
        r.retry,
        timeouts,
    )?;
    let task = NewTask {
        rules,
        shell: r.shell.filter(|s| !s.is_empty()),
        container_options: r.container_options.filter(|s| !s.is_empty()),
        step_id: r.step_id.filter(|&s| s != 0),
        input: r.input,
        resource: r.resource,
        output: r.output.filter(|s| !s.is_empty()),
        is_final: r.is_final,
        uses_cache: r.uses_cache,
        task_name: r.task_name.filter(|s| !s.is_empty()),
    };
    let task_id = tasks::submit(&state.db, state.config.assign_shards, &task).await?;
    Ok(pb::TaskResponse { task_id })
}

pub async fn list_tasks(
    state: &AppState,
    request: Request<pb::ListTasksRequest>,
) -> Result<pb::TaskList> {
    let r = request.into_inner();
    let filter = TaskFilter {
        status: r
            .status_filter
            .filter(|s| !s.is_empty())
            .map(|s| TaskStatus::parse(&s))
            .transpose()?,
        worker_id: r.worker_id_filter.filter(|&v| v != 0),
        step_id: r.step_id_filter.filter(|&v| v != 0),
        workflow_id: r.workflow_id_filter.filter(|&v| v != 0),
        command: filters::text_filter("command_filter", r.command_filter)?,
        show_hidden: r.show_hidden.unwrap_or(false),
        limit: positive("limit", r.limit)?,
        offset: non_negative("offset", r.offset)?,
    };
    Ok(pb::TaskList {
        tasks: tasks::list(&state.db, &filter).await?,
    })
}

pub async fn retry_task(
    state: &AppState,
    request: Request<pb::RetryTaskRequest>,
) -> Result<pb::TaskResponse> {
    let r = request.into_inner();
    let task_id = tasks::retry(&state.db, state.config.assign_shards, r.task_id, r.retry).await?;
    Ok(pb::TaskResponse { task_id })
}

pub async fn update_task_status(
    state: &AppState,
    request: Request<pb::TaskStatusUpdate>,
) -> Result<pb::Ack> {
    let r = request.into_inner();
    let status = TaskStatus::parse(&r.new_status)?;
    let free_retry = r.free_retry.unwrap_or(false);
    tasks::update_status(
        &state.db,
        state.config.assign_shards,
        r.task_id,
        status,
        r.duration,
        free_retry,
    )
    .await?;
    Ok(pb::Ack { success: true })
}

/// An optional page size: absent → no limit; otherwise at least 1.
pub fn positive(name: &str, v: Option<i32>) -> Result<Option<i64>> {
    match v {
        Some(n) if n < 1 => Err(Error::invalid(format!(
            "{name} must be at least 1, not {n}"
        ))),
        v => Ok(v.map(i64::from)),
    }
}

/// An optional offset: absent → 0; never negative.
pub fn non_negative(name: &str, v: Option<i32>) -> Result<i64> {
    match v {
        Some(n) if n < 0 => Err(Error::invalid(format!(
            "{name} must not be negative, not {n}"
        ))),
        v => Ok(i64::from(v.unwrap_or(0))),
    }
}
