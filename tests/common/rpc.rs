//! Short forms of the RPCs most tests make: a task request, submit, a workflow with a step, a
//! registered worker, a ping, a status update, the task list, a task's status, a flavor, a
//! region's id.

use taskqueue::client::Client;
use taskqueue::proto as pb;

/// A task request with defaults (shell executor friendly): `command` in container `alpine`.
pub fn task(command: &str) -> pb::TaskRequest {
    pb::TaskRequest {
        command: command.into(),
        container: "alpine".into(),
        ..Default::default()
    }
}

/// Submits `request`, panicking on error; returns the new task's id.
pub async fn submit(client: &mut Client, request: pb::TaskRequest) -> i32 {
    client
        .submit_task(request)
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// Creates a workflow and one step in it; returns (workflow_id, step_id).
pub async fn workflow_with_step(client: &mut Client, workflow: &str, step: &str) -> (i32, i32) {
    let wf = client
        .create_workflow(pb::WorkflowRequest {
            name: workflow.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let step = client
        .create_step(pb::StepRequest {
            name: step.into(),
            workflow_id: Some(wf),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    (wf, step)
}

/// Registers a worker and, when `step` is given, attaches it to that step.
pub async fn register_worker(
    client: &mut Client,
    name: &str,
    concurrency: i32,
    prefetch: i32,
    step: Option<i32>,
) -> i32 {
    let id = client
        .register_worker(pb::WorkerInfo {
            name: name.into(),
            concurrency: Some(concurrency),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    if step.is_some() || prefetch != 0 {
        client
            .update_worker(pb::WorkerUpdateRequest {
                worker_id: id,
                step_id: step,
                prefetch: Some(prefetch),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    id
}

/// One ping without stats.
pub async fn ping(client: &mut Client, worker_id: i32) -> pb::TaskListAndOther {
    client
        .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id,
            stats: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Sets a task's status, panicking on error.
pub async fn set_status(client: &mut Client, task_id: i32, status: &str) {
    client
        .update_task_status(pb::TaskStatusUpdate {
            task_id,
            new_status: status.into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap();
}

/// Every task, hidden ones (retried, superseded) included, as ListTasks shows them.
pub async fn all_tasks(client: &mut Client) -> Vec<pb::Task> {
    client
        .list_tasks(pb::ListTasksRequest {
            show_hidden: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

/// The status of a task as ListTasks shows it (hidden tasks included).
pub async fn status_of(client: &mut Client, task_id: i32) -> String {
    all_tasks(client)
        .await
        .into_iter()
        .find(|t| t.task_id == task_id)
        .map(|t| t.status)
        .unwrap_or_default()
}

/// Creates a flavor, panicking on error; returns its id.
pub async fn create_flavor(client: &mut Client, request: pb::FlavorCreateRequest) -> i32 {
    client
        .create_flavor(request)
        .await
        .unwrap()
        .into_inner()
        .flavor_id
}

/// The id of the region named `name` (panics when there is none).
pub async fn region_id(client: &mut Client, name: &str) -> i32 {
    client
        .list_regions(())
        .await
        .unwrap()
        .into_inner()
        .regions
        .into_iter()
        .find(|r| r.region_name == name)
        .unwrap()
        .region_id
}
