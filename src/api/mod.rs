//! gRPC adapters of `taskqueue.TaskQueue`, one file per area: decode → call → encode. No SQL and no
//! business rules here: those live in `domain/` and `db/`. This file routes each of the 59 RPCs to
//! its area, after `limits::admit` checked the request's sizes and counts; `rpcs` says who may call
//! each one.

pub mod access;
pub mod auth;
pub mod catalog;
pub mod events;
pub mod files;
pub mod jobs;
pub mod limits;
pub mod login_gate;
pub mod logs;
pub mod recruiters;
pub mod state;
pub mod tasks;
pub mod templates;
pub mod users;
pub mod workers;
pub mod workflows;

use std::sync::Arc;

use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto as pb;
use crate::proto::task_queue_server::TaskQueue;
use limits::admit;
use state::AppState;

/// The service a replica serves.
#[derive(Clone)]
pub struct Service {
    state: Arc<AppState>,
}

impl Service {
    pub fn new(state: Arc<AppState>) -> Service {
        Service { state }
    }
}

fn reply<T>(result: crate::Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl TaskQueue for Service {
    async fn submit_task(
        &self,
        request: Request<pb::TaskRequest>,
    ) -> Result<Response<pb::TaskResponse>, Status> {
        reply(tasks::submit_task(&self.state, admit(request)?).await)
    }

    async fn register_worker(
        &self,
        request: Request<pb::WorkerInfo>,
    ) -> Result<Response<pb::WorkerId>, Status> {
        reply(workers::register_worker(&self.state, admit(request)?).await)
    }

    async fn ping_and_take_new_tasks(
        &self,
        request: Request<pb::PingAndGetNewTasksRequest>,
    ) -> Result<Response<pb::TaskListAndOther>, Status> {
        reply(workers::ping_and_take_new_tasks(&self.state, admit(request)?).await)
    }

    async fn update_task_status(
        &self,
        request: Request<pb::TaskStatusUpdate>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(tasks::update_task_status(&self.state, admit(request)?).await)
    }

    async fn send_task_logs(
        &self,
        request: Request<Streaming<pb::TaskLog>>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(logs::send_task_logs(&self.state, request).await)
    }

    type StreamTaskLogsOutputStream = BoxStream<'static, Result<pb::TaskLog, Status>>;

    async fn stream_task_logs_output(
        &self,
        request: Request<pb::TaskId>,
    ) -> Result<Response<Self::StreamTaskLogsOutputStream>, Status> {
        reply(logs::stream_task_logs_output(&self.state, admit(request)?).await)
    }

    type StreamTaskLogsErrStream = BoxStream<'static, Result<pb::TaskLog, Status>>;

    async fn stream_task_logs_err(
        &self,
        request: Request<pb::TaskId>,
    ) -> Result<Response<Self::StreamTaskLogsErrStream>, Status> {
        reply(logs::stream_task_logs_err(&self.state, admit(request)?).await)
    }

    async fn get_logs_chunk(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::LogChunkList>, Status> {
        reply(logs::get_logs_chunk(&self.state, admit(request)?).await)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::TaskList>, Status> {
        reply(tasks::list_tasks(&self.state, admit(request)?).await)
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::TaskResponse>, Status> {
        reply(tasks::retry_task(&self.state, admit(request)?).await)
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::WorkersList>, Status> {
        reply(workers::list_workers(&self.state, admit(request)?).await)
    }

    async fn create_worker(
        &self,
        request: Request<pb::WorkerRequest>,
    ) -> Result<Response<pb::WorkerIds>, Status> {
        reply(jobs::create_worker(&self.state, admit(request)?).await)
    }

    async fn update_worker_status(
        &self,
        request: Request<pb::WorkerStatus>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(workers::update_worker_status(&self.state, admit(request)?).await)
    }

    async fn delete_worker(
        &self,
        request: Request<pb::WorkerDeletion>,
    ) -> Result<Response<pb::JobId>, Status> {
        reply(jobs::delete_worker(&self.state, admit(request)?).await)
    }

    async fn update_worker(
        &self,
        request: Request<pb::WorkerUpdateRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(workers::update_worker(&self.state, admit(request)?).await)
    }

    async fn get_worker_statuses(
        &self,
        request: Request<pb::WorkerStatusRequest>,
    ) -> Result<Response<pb::WorkerStatusResponse>, Status> {
        reply(workers::get_worker_statuses(&self.state, admit(request)?).await)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::JobsList>, Status> {
        reply(jobs::list_jobs(&self.state, admit(request)?).await)
    }

    async fn get_job_statuses(
        &self,
        request: Request<pb::JobStatusRequest>,
    ) -> Result<Response<pb::JobStatusResponse>, Status> {
        reply(jobs::get_job_statuses(&self.state, admit(request)?).await)
    }

    async fn delete_job(&self, request: Request<pb::JobId>) -> Result<Response<pb::Ack>, Status> {
        reply(jobs::delete_job(&self.state, admit(request)?).await)
    }

    async fn update_job(
        &self,
        request: Request<pb::JobUpdate>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(jobs::update_job(&self.state, admit(request)?).await)
    }

    async fn list_flavors(
        &self,
        request: Request<pb::ListFlavorsRequest>,
    ) -> Result<Response<pb::FlavorsList>, Status> {
        reply(catalog::list_flavors(&self.state, admit(request)?).await)
    }

    async fn list_providers(
        &self,
        request: Request<()>,
    ) -> Result<Response<pb::ProviderList>, Status> {
        reply(catalog::list_providers(&self.state, admit(request)?).await)
    }

    async fn list_regions(&self, request: Request<()>) -> Result<Response<pb::RegionList>, Status> {
        reply(catalog::list_regions(&self.state, admit(request)?).await)
    }

    async fn create_flavor(
        &self,
        request: Request<pb::FlavorCreateRequest>,
    ) -> Result<Response<pb::FlavorId>, Status> {
        reply(catalog::create_flavor(&self.state, admit(request)?).await)
    }

    async fn get_rclone_config(
        &self,
        request: Request<()>,
    ) -> Result<Response<pb::RcloneRemotes>, Status> {
        reply(catalog::get_rclone_config(&self.state, admit(request)?).await)
    }

    async fn get_docker_credentials(
        &self,
        request: Request<()>,
    ) -> Result<Response<pb::DockerCredentials>, Status> {
        reply(catalog::get_docker_credentials(&self.state, admit(request)?).await)
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        reply(users::login(&self.state, admit(request)?).await)
    }

    async fn logout(&self, request: Request<pb::Token>) -> Result<Response<pb::Ack>, Status> {
        reply(users::logout(&self.state, admit(request)?).await)
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::UserId>, Status> {
        reply(users::create_user(&self.state, admit(request)?).await)
    }

    async fn list_users(&self, request: Request<()>) -> Result<Response<pb::UsersList>, Status> {
        reply(users::list_users(&self.state, admit(request)?).await)
    }

    async fn delete_user(&self, request: Request<pb::UserId>) -> Result<Response<pb::Ack>, Status> {
        reply(users::delete_user(&self.state, admit(request)?).await)
    }

    async fn update_user(&self, request: Request<pb::User>) -> Result<Response<pb::Ack>, Status> {
        reply(users::update_user(&self.state, admit(request)?).await)
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(users::change_password(&self.state, admit(request)?).await)
    }

    async fn list_recruiters(
        &self,
        request: Request<pb::RecruiterFilter>,
    ) -> Result<Response<pb::RecruiterList>, Status> {
        reply(recruiters::list_recruiters(&self.state, admit(request)?).await)
    }

    async fn create_recruiter(
        &self,
        request: Request<pb::Recruiter>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(recruiters::create_recruiter(&self.state, admit(request)?).await)
    }

    async fn update_recruiter(
        &self,
        request: Request<pb::RecruiterUpdate>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(recruiters::update_recruiter(&self.state, admit(request)?).await)
    }

    async fn delete_recruiter(
        &self,
        request: Request<pb::RecruiterId>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(recruiters::delete_recruiter(&self.state, admit(request)?).await)
    }

    async fn list_workflows(
        &self,
        request: Request<pb::WorkflowFilter>,
    ) -> Result<Response<pb::WorkflowList>, Status> {
        reply(workflows::list_workflows(&self.state, admit(request)?).await)
    }

    async fn create_workflow(
        &self,
        request: Request<pb::WorkflowRequest>,
    ) -> Result<Response<pb::WorkflowId>, Status> {
        reply(workflows::create_workflow(&self.state, admit(request)?).await)
    }

    async fn delete_workflow(
        &self,
        request: Request<pb::WorkflowId>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(workflows::delete_workflow(&self.state, admit(request)?).await)
    }

    async fn list_steps(
        &self,
        request: Request<pb::StepFilter>,
    ) -> Result<Response<pb::StepList>, Status> {
        reply(workflows::list_steps(&self.state, admit(request)?).await)
    }

    async fn create_step(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepId>, Status> {
        reply(workflows::create_step(&self.state, admit(request)?).await)
    }

    async fn delete_step(&self, request: Request<pb::StepId>) -> Result<Response<pb::Ack>, Status> {
        reply(workflows::delete_step(&self.state, admit(request)?).await)
    }

    async fn get_step_stats(
        &self,
        request: Request<pb::StepStatsRequest>,
    ) -> Result<Response<pb::StepStatsResponse>, Status> {
        reply(workflows::get_step_stats(&self.state, admit(request)?).await)
    }

    async fn get_worker_stats(
        &self,
        request: Request<pb::GetWorkerStatsRequest>,
    ) -> Result<Response<pb::GetWorkerStatsResponse>, Status> {
        reply(workers::get_worker_stats(&self.state, admit(request)?).await)
    }

    async fn fetch_list(
        &self,
        request: Request<pb::FetchListRequest>,
    ) -> Result<Response<pb::FetchListResponse>, Status> {
        reply(files::fetch_list(&self.state, admit(request)?).await)
    }

    async fn fetch_info(
        &self,
        request: Request<pb::FetchListRequest>,
    ) -> Result<Response<pb::FetchInfoResponse>, Status> {
        reply(files::fetch_info(&self.state, admit(request)?).await)
    }

    async fn upload_template(
        &self,
        request: Request<pb::UploadTemplateRequest>,
    ) -> Result<Response<pb::UploadTemplateResponse>, Status> {
        reply(templates::upload_template(&self.state, admit(request)?).await)
    }

    async fn run_template(
        &self,
        request: Request<pb::RunTemplateRequest>,
    ) -> Result<Response<pb::TemplateRun>, Status> {
        reply(templates::run_template(&self.state, admit(request)?).await)
    }

    async fn list_templates(
        &self,
        request: Request<pb::TemplateFilter>,
    ) -> Result<Response<pb::TemplateList>, Status> {
        reply(templates::list_templates(&self.state, admit(request)?).await)
    }

    async fn list_template_runs(
        &self,
        request: Request<pb::TemplateRunFilter>,
    ) -> Result<Response<pb::TemplateRunList>, Status> {
        reply(templates::list_template_runs(&self.state, admit(request)?).await)
    }

    async fn update_template_run(
        &self,
        request: Request<pb::UpdateTemplateRunRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(templates::update_template_run(&self.state, admit(request)?).await)
    }

    async fn delete_template_run(
        &self,
        request: Request<pb::DeleteTemplateRunRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(templates::delete_template_run(&self.state, admit(request)?).await)
    }

    async fn get_workspace_root(
        &self,
        request: Request<pb::WorkspaceRootRequest>,
    ) -> Result<Response<pb::WorkspaceRootResponse>, Status> {
        reply(catalog::get_workspace_root(&self.state, admit(request)?).await)
    }

    async fn register_specifications(
        &self,
        request: Request<pb::ResourceSpec>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(workers::register_specifications(&self.state, admit(request)?).await)
    }

    async fn report_worker_event(
        &self,
        request: Request<pb::WorkerEvent>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(events::report_worker_event(&self.state, admit(request)?).await)
    }

    async fn list_worker_events(
        &self,
        request: Request<pb::WorkerEventFilter>,
    ) -> Result<Response<pb::WorkerEventList>, Status> {
        reply(events::list_worker_events(&self.state, admit(request)?).await)
    }

    async fn delete_worker_event(
        &self,
        request: Request<pb::WorkerEventId>,
    ) -> Result<Response<pb::Ack>, Status> {
        reply(events::delete_worker_event(&self.state, admit(request)?).await)
    }

    async fn prune_worker_events(
        &self,
        request: Request<pb::WorkerEventPruneFilter>,
    ) -> Result<Response<pb::WorkerEventPruneResult>, Status> {
        reply(events::prune_worker_events(&self.state, admit(request)?).await)
    }
}
