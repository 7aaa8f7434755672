//! Malformed input (not oversized: the limits module does sizes) on every RPC that takes any, sent
//! by a caller allowed to call it (admin, or the worker token for worker RPCs), so what is checked
//! is validation, not roles: unknown ids answer `NotFound`, impossible values `InvalidArgument`,
//! and the database is unchanged after each.

use taskqueue::proto as pb;
use tonic::Code;

use crate::common::{register_worker, replica, submit, task, workflow_with_step};
use crate::guard::{Guard, refused};

/// `case!(call, Code, "what")`: awaits the call and asserts the refusal.
macro_rules! case {
    ($call:expr, $code:ident, $what:expr) => {
        refused($call.await, Code::$code, $what)
    };
}

#[tokio::test]
async fn tasks_and_logs() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let (wf, step) = workflow_with_step(&mut admin, "wf", "st").await;
    let _ = wf;
    let t = submit(
        &mut admin,
        pb::TaskRequest {
            step_id: Some(step),
            ..task("true")
        },
    )
    .await;
    let guard = Guard::ignoring(&r, &[]).await;

    case!(
        admin.submit_task(pb::TaskRequest {
            status: "Q".into(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with an unknown status"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            step_id: Some(999_999),
            ..task("true")
        }),
        NotFound,
        "SubmitTask into an unknown step"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            dependency: vec![999_999],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask depending on an unknown task"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            retry: Some(-1),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a negative retry"
    );
    for (what, timeout) in [
        ("negative", -1.0f32),
        ("NaN", f32::NAN),
        ("infinite", f32::INFINITY),
    ] {
        case!(
            admin.submit_task(pb::TaskRequest {
                running_timeout: Some(timeout),
                ..task("true")
            }),
            InvalidArgument,
            &format!("SubmitTask with a {what} running timeout")
        );
        case!(
            admin.submit_task(pb::TaskRequest {
                download_timeout: Some(timeout),
                ..task("true")
            }),
            InvalidArgument,
            &format!("SubmitTask with a {what} download timeout")
        );
        case!(
            admin.submit_task(pb::TaskRequest {
                upload_timeout: Some(timeout),
                ..task("true")
            }),
            InvalidArgument,
            &format!("SubmitTask with a {what} upload timeout")
        );
    }
    case!(
        worker.update_task_status(pb::TaskStatusUpdate {
            task_id: 999_999,
            new_status: "S".into(),
            ..Default::default()
        }),
        NotFound,
        "UpdateTaskStatus of an unknown task"
    );
    for status in ["", "ZZ", "s", "SS", "\0"] {
        case!(
            worker.update_task_status(pb::TaskStatusUpdate {
                task_id: t,
                new_status: status.into(),
                ..Default::default()
            }),
            InvalidArgument,
            &format!("UpdateTaskStatus to {status:?}")
        );
    }
    case!(
        worker.update_task_status(pb::TaskStatusUpdate {
            task_id: t,
            new_status: "R".into(),
            duration: Some(-5),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateTaskStatus with a negative duration"
    );
    for status in ["QQ", "pending", "R,S"] {
        case!(
            admin.list_tasks(pb::ListTasksRequest {
                status_filter: Some(status.into()),
                ..Default::default()
            }),
            InvalidArgument,
            &format!("ListTasks with status filter {status:?}")
        );
    }
    case!(
        admin.list_tasks(pb::ListTasksRequest {
            limit: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTasks with a negative limit"
    );
    case!(
        admin.list_tasks(pb::ListTasksRequest {
            offset: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTasks with a negative offset"
    );
    case!(
        admin.retry_task(pb::RetryTaskRequest {
            task_id: t,
            retry: Some(-3),
        }),
        InvalidArgument,
        "RetryTask with a negative retry"
    );
    case!(
        admin.get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![t],
            chunk_size: -1,
            ..Default::default()
        }),
        InvalidArgument,
        "GetLogsChunk with a negative chunk size"
    );
    case!(
        admin.get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![t],
            chunk_size: 10,
            log_type: Some("stdin".into()),
            ..Default::default()
        }),
        InvalidArgument,
        "GetLogsChunk with an unknown log type"
    );
    case!(
        admin.get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![t],
            chunk_size: 10,
            skip_from_end: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "GetLogsChunk with a negative skip"
    );
    guard
        .assert_unchanged("malformed task and log requests")
        .await;
}

#[tokio::test]
async fn workers_jobs_and_events() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let w = register_worker(&mut worker, "w1", 1, 0, None).await;
    let guard = Guard::new(&r).await;

    case!(
        worker.register_worker(pb::WorkerInfo {
            name: String::new(),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker without a name"
    );
    for c in [-1, i32::MIN] {
        case!(
            worker.register_worker(pb::WorkerInfo {
                name: "w2".into(),
                concurrency: Some(c),
                ..Default::default()
            }),
            InvalidArgument,
            &format!("RegisterWorker with concurrency {c}")
        );
    }
    case!(
        worker.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: 999_999,
            stats: None,
        }),
        NotFound,
        "Ping of an unknown worker"
    );
    case!(
        admin.update_worker_status(pb::WorkerStatus {
            worker_id: w,
            status: "ZZ".into(),
        }),
        InvalidArgument,
        "UpdateWorkerStatus to an unknown status"
    );
    case!(
        admin.update_worker_status(pb::WorkerStatus {
            worker_id: 999_999,
            status: "R".into(),
        }),
        NotFound,
        "UpdateWorkerStatus of an unknown worker"
    );
    case!(
        admin.delete_worker(pb::WorkerDeletion {
            worker_id: 999_999,
            undeployed: None,
        }),
        NotFound,
        "DeleteWorker of an unknown worker"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: 999_999,
            concurrency: Some(2),
            ..Default::default()
        }),
        NotFound,
        "UpdateWorker of an unknown worker"
    );
    for c in [-1, i32::MIN] {
        case!(
            admin.update_worker(pb::WorkerUpdateRequest {
                worker_id: w,
                concurrency: Some(c),
                ..Default::default()
            }),
            InvalidArgument,
            &format!("UpdateWorker to concurrency {c}")
        );
    }
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            prefetch: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateWorker to a negative prefetch"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            step_id: Some(999_999),
            ..Default::default()
        }),
        NotFound,
        "UpdateWorker to an unknown step"
    );
    case!(
        admin.create_worker(pb::WorkerRequest {
            provider_id: 999_999,
            flavor_id: 1,
            region_id: 1,
            number: 1,
            concurrency: 1,
            ..Default::default()
        }),
        NotFound,
        "CreateWorker on an unknown provider"
    );
    case!(
        admin.delete_job(pb::JobId { job_id: 999_999 }),
        NotFound,
        "DeleteJob of an unknown job"
    );
    case!(
        worker.update_job(pb::JobUpdate {
            job_id: 999_999,
            status: Some("S".into()),
            ..Default::default()
        }),
        NotFound,
        "UpdateJob of an unknown job"
    );
    case!(
        worker.register_specifications(pb::ResourceSpec {
            worker_id: "not-a-number".into(),
            cpu: 2,
            mem: 1.0,
            disk: 1.0,
        }),
        InvalidArgument,
        "RegisterSpecifications with a non-numeric worker id"
    );
    case!(
        worker.register_specifications(pb::ResourceSpec {
            worker_id: "999999".into(),
            cpu: 2,
            mem: 1.0,
            disk: 1.0,
        }),
        NotFound,
        "RegisterSpecifications of an unknown worker"
    );
    case!(
        worker.register_specifications(pb::ResourceSpec {
            worker_id: w.to_string(),
            cpu: -2,
            mem: f32::NAN,
            disk: -1.0,
        }),
        InvalidArgument,
        "RegisterSpecifications with negative and NaN sizes"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: Some(w),
            worker_name: "w1".into(),
            level: "Q".into(),
            event_class: "x".into(),
            message: "m".into(),
            details_json: String::new(),
        }),
        InvalidArgument,
        "ReportWorkerEvent with an unknown level"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: Some(w),
            worker_name: "w1".into(),
            level: "E".into(),
            event_class: "x".into(),
            message: "m".into(),
            details_json: "{not json".into(),
        }),
        InvalidArgument,
        "ReportWorkerEvent with malformed details JSON"
    );
    case!(
        admin.prune_worker_events(pb::WorkerEventPruneFilter {
            before: Some("yesterday-ish".into()),
            ..Default::default()
        }),
        InvalidArgument,
        "PruneWorkerEvents with an unparsable date"
    );
    guard
        .assert_unchanged("malformed worker, job and event requests")
        .await;
}

#[tokio::test]
async fn workflows_catalog_users_templates() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let (wf, _step) = workflow_with_step(&mut admin, "wf", "st").await;
    let guard = Guard::new(&r).await;

    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: String::new(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow without a name"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: "wf".into(),
            ..Default::default()
        }),
        AlreadyExists,
        "CreateWorkflow with a taken name"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: "wf3".into(),
            run_strategy: Some("Q".into()),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow with an unknown run strategy"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: "wf4".into(),
            maximum_workers: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow with negative maximum workers"
    );
    case!(
        admin.create_step(pb::StepRequest {
            name: "s".into(),
            workflow_id: Some(999_999),
            workflow_name: None,
        }),
        NotFound,
        "CreateStep in an unknown workflow"
    );
    case!(
        admin.create_step(pb::StepRequest {
            name: String::new(),
            workflow_id: Some(wf),
            workflow_name: None,
        }),
        InvalidArgument,
        "CreateStep without a name"
    );
    case!(
        admin.create_step(pb::StepRequest {
            name: "s".into(),
            workflow_id: None,
            workflow_name: None,
        }),
        InvalidArgument,
        "CreateStep without a workflow"
    );
    case!(
        admin.delete_step(pb::StepId { step_id: 999_999 }),
        NotFound,
        "DeleteStep of an unknown step"
    );
    case!(
        admin.list_workflows(pb::WorkflowFilter {
            limit: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkflows with a negative limit"
    );
    case!(
        admin.list_steps(pb::StepFilter {
            workflow_id: wf,
            limit: Some(-1),
            offset: None,
        }),
        InvalidArgument,
        "ListSteps with a negative limit"
    );
    case!(
        admin.list_flavors(pb::ListFlavorsRequest {
            limit: 10,
            filter: "cpu>=>2".into(),
        }),
        InvalidArgument,
        "ListFlavors with a malformed filter"
    );
    case!(
        admin.list_flavors(pb::ListFlavorsRequest {
            limit: 10,
            filter: "no_such_column=1".into(),
        }),
        InvalidArgument,
        "ListFlavors filtering on an unknown column"
    );
    case!(
        admin.create_flavor(pb::FlavorCreateRequest {
            provider_name: "nope".into(),
            config_name: "x".into(),
            flavor_name: "f".into(),
            cpu: 1,
            region_names: vec!["r".into()],
            costs: vec![1.0],
            evictions: vec![0.0],
            ..Default::default()
        }),
        NotFound,
        "CreateFlavor for an unknown provider"
    );
    case!(
        admin.create_user(pb::CreateUserRequest {
            username: String::new(),
            password: "pw".into(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateUser without a name"
    );
    case!(
        admin.create_user(pb::CreateUserRequest {
            username: "admin".into(),
            password: "pw".into(),
            ..Default::default()
        }),
        AlreadyExists,
        "CreateUser with a taken name"
    );
    case!(
        admin.delete_user(pb::UserId { user_id: 999_999 }),
        NotFound,
        "DeleteUser of an unknown user"
    );
    case!(
        admin.update_user(pb::User {
            user_id: 999_999,
            username: Some("x".into()),
            ..Default::default()
        }),
        NotFound,
        "UpdateUser of an unknown user"
    );
    case!(
        r.anonymous().change_password(pb::ChangePasswordRequest {
            username: "admin".into(),
            old_password: "wrong".into(),
            new_password: "new".into(),
        }),
        Unauthenticated,
        "ChangePassword with a wrong old password"
    );
    case!(
        r.anonymous().login(pb::LoginRequest {
            username: "nobody".into(),
            password: "x".into(),
        }),
        Unauthenticated,
        "Login of an unknown user"
    );
    case!(
        admin.run_template(pb::RunTemplateRequest {
            workflow_template_id: 999_999,
            param_values_json: "{}".into(),
        }),
        NotFound,
        "RunTemplate of an unknown template"
    );
    case!(
        admin.update_template_run(pb::UpdateTemplateRunRequest {
            template_run_id: 999_999,
            workflow_id: None,
            error_message: Some("x".into()),
        }),
        NotFound,
        "UpdateTemplateRun of an unknown run"
    );
    case!(
        admin.delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: 999_999
        }),
        NotFound,
        "DeleteTemplateRun of an unknown run"
    );
    case!(
        admin.get_workspace_root(pb::WorkspaceRootRequest {
            provider: "nope".into(),
            region: "nowhere".into(),
        }),
        NotFound,
        "GetWorkspaceRoot of an unknown provider"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: 999_999,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            concurrency: Some(1),
            prefetch: Some(0),
            ..Default::default()
        }),
        NotFound,
        "CreateRecruiter on an unknown step"
    );
    case!(
        admin.update_recruiter(pb::RecruiterUpdate {
            step_id: 999_999,
            rank: 1,
            rounds: Some(2),
            ..Default::default()
        }),
        NotFound,
        "UpdateRecruiter of an unknown recruiter"
    );
    case!(
        admin.fetch_list(pb::FetchListRequest {
            uri: "nosuchscheme://x/y".into()
        }),
        InvalidArgument,
        "FetchList of an unknown scheme"
    );
    case!(
        admin.fetch_info(pb::FetchListRequest { uri: String::new() }),
        InvalidArgument,
        "FetchInfo of an empty URI"
    );
    guard
        .assert_unchanged("malformed workflow, catalog, user and template requests")
        .await;
}
