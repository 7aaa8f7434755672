//! Oversized and out-of-range input on every request type that carries sizes or counts (names,
//! free text, URIs, id lists, concurrency and prefetch, timeouts, page sizes), sent by a caller
//! allowed to make the call: each is refused with `InvalidArgument` naming the field and its
//! bound, before any work, and leaves the database unchanged.

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

/// One byte more than a name may have.
fn name() -> String {
    "n".repeat(256)
}

/// One byte more than free text may have.
fn text() -> String {
    "t".repeat((64 << 10) + 1)
}

/// One byte more than a URI may have.
fn uri() -> String {
    format!("s3://bucket/{}", "k".repeat(4096))
}

/// Ten megabytes.
fn huge() -> String {
    "h".repeat(10 << 20)
}

/// One id more than a list may hold.
fn ids() -> Vec<i32> {
    (1..=10_001).collect()
}

#[tokio::test]
async fn oversized_input_on_every_request_type() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let mut anon = r.anonymous();
    let (wf, step) = workflow_with_step(&mut admin, "wf", "st").await;
    let t = submit(
        &mut admin,
        pb::TaskRequest {
            step_id: Some(step),
            ..task("true")
        },
    )
    .await;
    let w = register_worker(&mut worker, "limits-worker", 1, 0, None).await;
    // Worker pings rewrite its last ping time; nothing else may change.
    let guard = Guard::ignoring(&r, &["worker_stats"]).await;

    case!(
        admin.submit_task(pb::TaskRequest {
            command: text(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 64 KiB + 1 command"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            shell: Some(name()),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 256-byte shell"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            container: uri(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 4 KiB + 1 container"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            container_options: Some(text()),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with 64 KiB + 1 of container options"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            input: vec!["s3://b/k".into(); 10_001],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with 10,001 inputs"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            input: vec![uri()],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 4 KiB + 1 input URI"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            resource: vec!["s3://b/r".into(); 10_001],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with 10,001 resources"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            resource: vec![uri()],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 4 KiB + 1 resource URI"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            output: Some(uri()),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 4 KiB + 1 output URI"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            status: name(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 256-byte status"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            dependency: ids(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with 10,001 prerequisites"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            task_name: Some(name()),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 256-byte task name"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            input: vec!["i".repeat(4000); 300],
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with 1.2 MB of fields in all"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            command: huge(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 10 MB command"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            download_timeout: Some(3e38),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 3e38 s download_timeout"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            download_timeout: Some(31.0 * 86_400.0),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 31-day download_timeout"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            running_timeout: Some(3e38),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 3e38 s running_timeout"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            running_timeout: Some(31.0 * 86_400.0),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 31-day running_timeout"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            upload_timeout: Some(3e38),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 3e38 s upload_timeout"
    );
    case!(
        admin.submit_task(pb::TaskRequest {
            upload_timeout: Some(31.0 * 86_400.0),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with a 31-day upload_timeout"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: name(),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with a 256-byte name"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: huge(),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with a 10 MB name"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: "w".into(),
            concurrency: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with concurrency 2^31-1"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: "w".into(),
            concurrency: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with concurrency -1"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: "w".into(),
            provider: Some(name()),
            region: Some("r".into()),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with a 256-byte provider"
    );
    case!(
        worker.register_worker(pb::WorkerInfo {
            name: "w".into(),
            provider: Some("p".into()),
            region: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "RegisterWorker with a 256-byte region"
    );
    case!(
        worker.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: w,
            stats: Some(pb::WorkerStats {
                disks: vec![pb::DiskUsage::default(); 10_001],
                ..Default::default()
            })
        }),
        InvalidArgument,
        "PingAndTakeNewTasks with 10,001 disks"
    );
    case!(
        worker.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: w,
            stats: Some(pb::WorkerStats {
                disks: vec![pb::DiskUsage {
                    device_name: name(),
                    usage_percent: 1.0
                }],
                ..Default::default()
            })
        }),
        InvalidArgument,
        "PingAndTakeNewTasks with a 256-byte disk name"
    );
    case!(
        worker.update_task_status(pb::TaskStatusUpdate {
            task_id: t,
            new_status: name(),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateTaskStatus with a 256-byte status"
    );
    case!(
        admin.get_logs_chunk(pb::GetLogsRequest {
            task_ids: ids(),
            chunk_size: 10,
            ..Default::default()
        }),
        InvalidArgument,
        "GetLogsChunk with 10,001 task ids"
    );
    case!(
        admin.get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![t],
            chunk_size: 10,
            log_type: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "GetLogsChunk with a 256-byte log type"
    );
    case!(
        admin.list_tasks(pb::ListTasksRequest {
            status_filter: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTasks with a 256-byte status filter"
    );
    case!(
        admin.list_tasks(pb::ListTasksRequest {
            command_filter: Some(text()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTasks with a 64 KiB + 1 command filter"
    );
    case!(
        admin.list_tasks(pb::ListTasksRequest {
            limit: Some(i32::MIN),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTasks with limit -2^31"
    );
    case!(
        admin.retry_task(pb::RetryTaskRequest {
            task_id: t,
            retry: Some(i32::MAX)
        }),
        InvalidArgument,
        "RetryTask with retry 2^31-1"
    );
    case!(
        admin.create_worker(pb::WorkerRequest {
            provider_id: 1,
            flavor_id: 1,
            region_id: 1,
            number: i32::MAX,
            concurrency: 1,
            prefetch: 0,
            step_id: None
        }),
        InvalidArgument,
        "CreateWorker of 2^31-1 workers"
    );
    case!(
        admin.create_worker(pb::WorkerRequest {
            provider_id: 1,
            flavor_id: 1,
            region_id: 1,
            number: 1,
            concurrency: i32::MAX,
            prefetch: 0,
            step_id: None
        }),
        InvalidArgument,
        "CreateWorker with concurrency 2^31-1"
    );
    case!(
        admin.create_worker(pb::WorkerRequest {
            provider_id: 1,
            flavor_id: 1,
            region_id: 1,
            number: 1,
            concurrency: 1,
            prefetch: i32::MAX,
            step_id: None
        }),
        InvalidArgument,
        "CreateWorker with prefetch 2^31-1"
    );
    case!(
        admin.create_worker(pb::WorkerRequest {
            provider_id: 1,
            flavor_id: 1,
            region_id: 1,
            number: 1,
            concurrency: 1,
            prefetch: -1,
            step_id: None
        }),
        InvalidArgument,
        "CreateWorker with prefetch -1"
    );
    case!(
        admin.update_worker_status(pb::WorkerStatus {
            worker_id: w,
            status: name()
        }),
        InvalidArgument,
        "UpdateWorkerStatus with a 256-byte status"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            concurrency: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateWorker with concurrency 2^31-1"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            concurrency: Some(10_001),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateWorker with concurrency 10,001"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            prefetch: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateWorker with prefetch 2^31-1"
    );
    case!(
        admin.update_worker(pb::WorkerUpdateRequest {
            worker_id: w,
            recyclable_scope: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateWorker with a 256-byte recyclable scope"
    );
    case!(
        admin.get_worker_statuses(pb::WorkerStatusRequest { worker_ids: ids() }),
        InvalidArgument,
        "GetWorkerStatuses with 10,001 ids"
    );
    case!(
        admin.list_jobs(pb::ListJobsRequest {
            limit: Some(-1),
            offset: None
        }),
        InvalidArgument,
        "ListJobs with a negative limit"
    );
    case!(
        admin.get_job_statuses(pb::JobStatusRequest { job_ids: ids() }),
        InvalidArgument,
        "GetJobStatuses with 10,001 ids"
    );
    case!(
        worker.update_job(pb::JobUpdate {
            job_id: 1,
            status: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateJob with a 256-byte status"
    );
    case!(
        worker.update_job(pb::JobUpdate {
            job_id: 1,
            append_log: Some(text()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateJob appending 64 KiB + 1 of log"
    );
    case!(
        admin.list_flavors(pb::ListFlavorsRequest {
            limit: 10,
            filter: text()
        }),
        InvalidArgument,
        "ListFlavors with a 64 KiB + 1 filter"
    );
    case!(
        admin.list_flavors(pb::ListFlavorsRequest {
            limit: -1,
            filter: String::new()
        }),
        InvalidArgument,
        "ListFlavors with a negative limit"
    );
    case!(
        admin.create_flavor(pb::FlavorCreateRequest {
            provider_name: name(),
            config_name: "c".into(),
            flavor_name: "f".into(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateFlavor with a 256-byte provider name"
    );
    case!(
        admin.create_flavor(pb::FlavorCreateRequest {
            provider_name: "p".into(),
            config_name: "c".into(),
            flavor_name: name(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateFlavor with a 256-byte flavor name"
    );
    case!(
        admin.create_flavor(pb::FlavorCreateRequest {
            provider_name: "p".into(),
            config_name: "c".into(),
            flavor_name: "f".into(),
            region_names: vec!["r".into(); 10_001],
            ..Default::default()
        }),
        InvalidArgument,
        "CreateFlavor in 10,001 regions"
    );
    case!(
        admin.create_flavor(pb::FlavorCreateRequest {
            provider_name: "p".into(),
            config_name: "c".into(),
            flavor_name: "f".into(),
            gpu: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateFlavor with a 256-byte gpu"
    );
    case!(
        anon.login(pb::LoginRequest {
            username: huge(),
            password: "x".into()
        }),
        InvalidArgument,
        "Login with a 10 MB username"
    );
    case!(
        anon.login(pb::LoginRequest {
            username: "admin".into(),
            password: text()
        }),
        InvalidArgument,
        "Login with a 64 KiB + 1 password"
    );
    case!(
        admin.logout(pb::Token { token: name() }),
        InvalidArgument,
        "Logout with a 256-byte token"
    );
    case!(
        admin.create_user(pb::CreateUserRequest {
            username: name(),
            password: "secret-secret".into(),
            email: String::new(),
            is_admin: false
        }),
        InvalidArgument,
        "CreateUser with a 256-byte username"
    );
    case!(
        admin.create_user(pb::CreateUserRequest {
            username: "u".into(),
            password: "secret-secret".into(),
            email: name(),
            is_admin: false
        }),
        InvalidArgument,
        "CreateUser with a 256-byte email"
    );
    case!(
        admin.create_user(pb::CreateUserRequest {
            username: "u".into(),
            password: text(),
            email: String::new(),
            is_admin: false
        }),
        InvalidArgument,
        "CreateUser with a 64 KiB + 1 password"
    );
    case!(
        admin.update_user(pb::User {
            user_id: 1,
            username: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateUser with a 256-byte username"
    );
    case!(
        admin.update_user(pb::User {
            user_id: 1,
            email: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateUser with a 256-byte email"
    );
    case!(
        anon.change_password(pb::ChangePasswordRequest {
            username: name(),
            old_password: "a".into(),
            new_password: "b".into()
        }),
        InvalidArgument,
        "ChangePassword with a 256-byte username"
    );
    case!(
        anon.change_password(pb::ChangePasswordRequest {
            username: "admin".into(),
            old_password: "a".into(),
            new_password: text()
        }),
        InvalidArgument,
        "ChangePassword to a 64 KiB + 1 password"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: text(),
            rounds: 1,
            timeout: 10,
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with a 64 KiB + 1 protofilter"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            concurrency: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with concurrency 2^31-1"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            prefetch: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with prefetch 2^31-1"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            max_workers: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with max_workers 2^31-1"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            concurrency_max: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with concurrency_max 2^31-1"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: 10,
            cpu_per_task: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with cpu_per_task -1"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: i32::MAX,
            timeout: 10,
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with 2^31-1 rounds"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: i32::MAX,
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with a 68-year timeout"
    );
    case!(
        admin.create_recruiter(pb::Recruiter {
            step_id: step,
            rank: 1,
            protofilter: "cpu>=1".into(),
            rounds: 1,
            timeout: -1,
            ..Default::default()
        }),
        InvalidArgument,
        "CreateRecruiter with a negative timeout"
    );
    case!(
        admin.update_recruiter(pb::RecruiterUpdate {
            step_id: step,
            rank: 1,
            protofilter: Some(text()),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateRecruiter with a 64 KiB + 1 protofilter"
    );
    case!(
        admin.update_recruiter(pb::RecruiterUpdate {
            step_id: step,
            rank: 1,
            concurrency: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateRecruiter with concurrency 2^31-1"
    );
    case!(
        admin.update_recruiter(pb::RecruiterUpdate {
            step_id: step,
            rank: 1,
            timeout: Some(i32::MAX),
            ..Default::default()
        }),
        InvalidArgument,
        "UpdateRecruiter with a 68-year timeout"
    );
    case!(
        admin.list_workflows(pb::WorkflowFilter {
            name_like: Some(text()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkflows with a 64 KiB + 1 name filter"
    );
    case!(
        admin.list_workflows(pb::WorkflowFilter {
            limit: Some(i32::MIN),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkflows with limit -2^31"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: name(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow with a 256-byte name"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: huge(),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow with a 10 MB name"
    );
    case!(
        admin.create_workflow(pb::WorkflowRequest {
            name: "ok".into(),
            run_strategy: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "CreateWorkflow with a 256-byte run strategy"
    );
    case!(
        admin.list_steps(pb::StepFilter {
            workflow_id: wf,
            limit: Some(-1),
            offset: None
        }),
        InvalidArgument,
        "ListSteps with a negative limit"
    );
    case!(
        admin.create_step(pb::StepRequest {
            name: name(),
            workflow_id: Some(wf),
            workflow_name: None
        }),
        InvalidArgument,
        "CreateStep with a 256-byte name"
    );
    case!(
        admin.create_step(pb::StepRequest {
            name: "s".into(),
            workflow_id: None,
            workflow_name: Some(huge())
        }),
        InvalidArgument,
        "CreateStep in a workflow with a 10 MB name"
    );
    case!(
        admin.get_step_stats(pb::StepStatsRequest {
            workflow_id: None,
            step_ids: ids()
        }),
        InvalidArgument,
        "GetStepStats with 10,001 step ids"
    );
    case!(
        admin.get_worker_stats(pb::GetWorkerStatsRequest { worker_ids: ids() }),
        InvalidArgument,
        "GetWorkerStats with 10,001 ids"
    );
    case!(
        admin.fetch_list(pb::FetchListRequest { uri: uri() }),
        InvalidArgument,
        "FetchList of a 4 KiB + 1 URI"
    );
    case!(
        admin.fetch_info(pb::FetchListRequest { uri: uri() }),
        InvalidArgument,
        "FetchInfo of a 4 KiB + 1 URI"
    );
    case!(
        admin.upload_template(pb::UploadTemplateRequest {
            script: vec![b'#'; (1 << 20) + 1],
            force: false
        }),
        InvalidArgument,
        "UploadTemplate of a 1 MiB + 1 script"
    );
    case!(
        admin.run_template(pb::RunTemplateRequest {
            workflow_template_id: 1,
            param_values_json: "x".repeat((1 << 20) + 1)
        }),
        InvalidArgument,
        "RunTemplate with 1 MiB + 1 of parameters"
    );
    case!(
        admin.list_templates(pb::TemplateFilter {
            name: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTemplates with a 256-byte name"
    );
    case!(
        admin.list_templates(pb::TemplateFilter {
            version: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListTemplates with a 256-byte version"
    );
    case!(
        admin.update_template_run(pb::UpdateTemplateRunRequest {
            template_run_id: 1,
            workflow_id: None,
            error_message: Some(text())
        }),
        InvalidArgument,
        "UpdateTemplateRun with a 64 KiB + 1 error message"
    );
    case!(
        admin.get_workspace_root(pb::WorkspaceRootRequest {
            provider: name(),
            region: "r".into()
        }),
        InvalidArgument,
        "GetWorkspaceRoot with a 256-byte provider"
    );
    case!(
        admin.get_workspace_root(pb::WorkspaceRootRequest {
            provider: "p".into(),
            region: name()
        }),
        InvalidArgument,
        "GetWorkspaceRoot with a 256-byte region"
    );
    case!(
        worker.register_specifications(pb::ResourceSpec {
            worker_id: name(),
            cpu: 1,
            mem: 1.0,
            disk: 1.0
        }),
        InvalidArgument,
        "RegisterSpecifications with a 256-byte worker id"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: None,
            worker_name: name(),
            level: "I".into(),
            event_class: "c".into(),
            message: "m".into(),
            details_json: String::new()
        }),
        InvalidArgument,
        "ReportWorkerEvent with a 256-byte worker name"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: None,
            worker_name: "w".into(),
            level: name(),
            event_class: "c".into(),
            message: "m".into(),
            details_json: String::new()
        }),
        InvalidArgument,
        "ReportWorkerEvent with a 256-byte level"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: None,
            worker_name: "w".into(),
            level: "I".into(),
            event_class: name(),
            message: "m".into(),
            details_json: String::new()
        }),
        InvalidArgument,
        "ReportWorkerEvent with a 256-byte class"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: None,
            worker_name: "w".into(),
            level: "I".into(),
            event_class: "c".into(),
            message: text(),
            details_json: String::new()
        }),
        InvalidArgument,
        "ReportWorkerEvent with a 64 KiB + 1 message"
    );
    case!(
        worker.report_worker_event(pb::WorkerEvent {
            worker_id: None,
            worker_name: "w".into(),
            level: "I".into(),
            event_class: "c".into(),
            message: "m".into(),
            details_json: text()
        }),
        InvalidArgument,
        "ReportWorkerEvent with 64 KiB + 1 of details"
    );
    case!(
        admin.list_worker_events(pb::WorkerEventFilter {
            level: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkerEvents with a 256-byte level"
    );
    case!(
        admin.list_worker_events(pb::WorkerEventFilter {
            class: Some(name()),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkerEvents with a 256-byte class"
    );
    case!(
        admin.list_worker_events(pb::WorkerEventFilter {
            limit: Some(-1),
            ..Default::default()
        }),
        InvalidArgument,
        "ListWorkerEvents with a negative limit"
    );
    case!(
        admin.prune_worker_events(pb::WorkerEventPruneFilter {
            before: Some(name()),
            dry_run: true,
            ..Default::default()
        }),
        InvalidArgument,
        "PruneWorkerEvents before a 256-byte date"
    );
    case!(
        admin.prune_worker_events(pb::WorkerEventPruneFilter {
            class: Some(name()),
            dry_run: true,
            ..Default::default()
        }),
        InvalidArgument,
        "PruneWorkerEvents of a 256-byte class"
    );

    guard.assert_unchanged("oversized input").await;
    let _ = (&mut anon, wf);
}
