//! Task RPCs: SubmitTask, ListTasks, RetryTask, UpdateTaskStatus.

use tonic::Request;

use super::access;
use crate::api::auth::Caller;
use crate::api::state::AppState;
use crate::db::ownership::Object;
use crate::db::status_batch::StatusRequest;
use crate::db::tasks::{self, NewTask, TaskFilter};
use crate::domain::docker_options::{self, Refusal};
use crate::domain::filters;
use crate::domain::limits;
use crate::domain::status::TaskStatus;
use crate::domain::tasks::Submission;
use crate::error::{Error, Result};
use crate::proto as pb;

/// A task's image never passes for an option; its container options are checked against the
/// configured allow-list unless an admin submitted it (the worker checks again, with its own).
fn check_container(
    state: &AppState,
    image: &str,
    options: Option<&str>,
    admin: bool,
) -> Result<()> {
    let refused = |r: Refusal| match r {
        Refusal::Malformed(_) => Error::invalid(r.to_string()),
        Refusal::Forbidden { .. } => Error::permission_denied(r.to_string()),
    };
    docker_options::check_image(image).map_err(refused)?;
    match options {
        Some(opts) if !admin => {
            docker_options::check(opts, &state.config.docker_policy()).map_err(refused)
        }
        _ => Ok(()),
    }
}

pub async fn submit_task(
    state: &AppState,
    request: Request<pb::TaskRequest>,
) -> Result<pb::TaskResponse> {
    let owner = access::new_owner(&request);
    let admin = Caller::of(&request).is_admin();
    let r = request.into_inner();
    check_container(state, &r.container, r.container_options.as_deref(), admin)?;
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
        owner,
    };
    let task_id = state.submissions.submit(task).await?;
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
        limit: Some(page_limit(&limits::LIST_TASKS, r.limit)?),
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
    let actor = access::actor(&request);
    let r = request.into_inner();
    access::owned(state, actor, Object::Task(r.task_id)).await?;
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
    let update = StatusRequest::new(r.task_id, status, r.duration, free_retry)?;
    state.status_updates.update(update).await?;
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

/// The rows a List RPC answers for an optional `limit` of at least 1: absent → the page's default,
/// more than its maximum → the maximum.
pub fn page_limit(page: &limits::Page, v: Option<i32>) -> Result<i64> {
    positive("limit", v)?;
    Ok(page.rows("limit", v)?)
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
