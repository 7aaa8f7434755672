//! `Admit`: the size and count checks of every request message, run by the dispatch in `api` before
//! a handler sees the request, so an oversized field answers `InvalidArgument` naming the field and
//! its bound and costs no database work. The bounds are `domain::limits`; page sizes are only
//! checked for sign here (handlers clamp them to each RPC's maximum).

use tonic::{Request, Status};

use crate::domain::limits::{
    MAX_SCRIPT_BYTES, check_concurrency, check_count, check_len, check_name, check_prefetch,
    check_range, check_task_bytes, check_text, check_timeout, check_uri, check_uris,
};
use crate::error::Result;
use crate::proto as pb;

/// A request message whose sizes and counts are within the limits.
pub trait Admit {
    /// `Ok` when every field is within its bound; else the first field that is not.
    fn admit(&self) -> Result<()>;
}

/// Room kept free in a ping answer for the gRPC frame and rounding: never needed in full.
const PING_ANSWER_SLACK: usize = 4 << 10;

/// Keeps a ping answer within `max_bytes` encoded: the tasks to send (in `answer.tasks`' order)
/// are kept while they fit, the others are held back — they stay assigned to the worker, in A,
/// and every ping sends the A tasks it holds, so they go with a later ping, once the worker has
/// accepted the ones before. A task too large for any answer on its own is never sent (it is
/// logged). Returns how many tasks were held back.
pub fn fit_ping_answer(answer: &mut pb::TaskListAndOther, max_bytes: usize) -> usize {
    use prost::Message as _;
    let tasks = std::mem::take(&mut answer.tasks);
    let budget = max_bytes
        .saturating_sub(answer.encoded_len())
        .saturating_sub(PING_ANSWER_SLACK);
    let mut used = 0usize;
    let mut held_back = 0;
    for task in tasks {
        let len = task.encoded_len();
        // One tag byte and the length prefix of the embedded message.
        let framed = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if used + framed <= budget {
            used += framed;
            answer.tasks.push(task);
        } else {
            if framed > budget {
                tracing::warn!(
                    task_id = task.task_id,
                    bytes = len,
                    "task larger than a ping answer may be: it cannot be sent to its worker"
                );
            }
            held_back += 1;
        }
    }
    held_back
}

/// Checks `request` and hands it back, or answers `InvalidArgument`.
pub fn admit<T: Admit>(request: Request<T>) -> std::result::Result<Request<T>, Status> {
    request.get_ref().admit().map_err(Status::from)?;
    Ok(request)
}

fn name_opt(field: &str, value: &Option<String>) -> crate::domain::Result<()> {
    value.as_deref().map_or(Ok(()), |v| check_name(field, v))
}

fn text_opt(field: &str, value: &Option<String>) -> crate::domain::Result<()> {
    value.as_deref().map_or(Ok(()), |v| check_text(field, v))
}

fn concurrency_opt(field: &str, value: Option<i32>) -> crate::domain::Result<()> {
    value.map_or(Ok(()), |v| check_concurrency(field, v))
}

fn prefetch_opt(field: &str, value: Option<i32>) -> crate::domain::Result<()> {
    value.map_or(Ok(()), |v| check_prefetch(field, v))
}

fn timeout_opt(field: &str, value: Option<f32>) -> crate::domain::Result<()> {
    value.map_or(Ok(()), |v| check_timeout(field, f64::from(v)))
}

fn not_negative(field: &str, value: Option<i32>) -> crate::domain::Result<()> {
    match value {
        Some(n) if n < 0 => Err(crate::domain::Error::Invalid(format!(
            "{field} must not be negative (got {n})"
        ))),
        _ => Ok(()),
    }
}

/// Messages with nothing to bound (ids, flags, empty requests).
macro_rules! admit_all {
    ($($t:ty),* $(,)?) => {
        $(impl Admit for $t {
            fn admit(&self) -> Result<()> {
                Ok(())
            }
        })*
    };
}

admit_all!(
    (),
    pb::TaskId,
    pb::JobId,
    pb::UserId,
    pb::StepId,
    pb::WorkflowId,
    pb::RecruiterId,
    pb::RecruiterFilter,
    pb::WorkerDeletion,
    pb::ListWorkersRequest,
    pb::TemplateRunFilter,
    pb::DeleteTemplateRunRequest,
    pb::WorkerEventId,
);

impl Admit for pb::TaskRequest {
    fn admit(&self) -> Result<()> {
        check_text("command", &self.command)?;
        name_opt("shell", &self.shell)?;
        check_uri("container", &self.container)?;
        text_opt("container_options", &self.container_options)?;
        check_uris("input", &self.input)?;
        check_uris("resource", &self.resource)?;
        self.output
            .as_deref()
            .map_or(Ok(()), |o| check_uri("output", o))?;
        check_name("status", &self.status)?;
        check_count("dependency", self.dependency.len())?;
        name_opt("task_name", &self.task_name)?;
        timeout_opt("download_timeout", self.download_timeout)?;
        timeout_opt("running_timeout", self.running_timeout)?;
        timeout_opt("upload_timeout", self.upload_timeout)?;
        let optional = |v: &Option<String>| v.as_ref().map_or(0, String::len);
        let total = self.command.len()
            + optional(&self.shell)
            + self.container.len()
            + optional(&self.container_options)
            + self.input.iter().map(String::len).sum::<usize>()
            + self.resource.iter().map(String::len).sum::<usize>()
            + optional(&self.output)
            + optional(&self.task_name);
        check_task_bytes(total)?;
        Ok(())
    }
}

impl Admit for pb::WorkerInfo {
    fn admit(&self) -> Result<()> {
        check_name("name", &self.name)?;
        concurrency_opt("concurrency", self.concurrency)?;
        name_opt("provider", &self.provider)?;
        name_opt("region", &self.region)?;
        Ok(())
    }
}

impl Admit for pb::PingAndGetNewTasksRequest {
    fn admit(&self) -> Result<()> {
        if let Some(stats) = &self.stats {
            check_count("stats.disks", stats.disks.len())?;
            for disk in &stats.disks {
                check_name("stats.disks.device_name", &disk.device_name)?;
            }
        }
        Ok(())
    }
}

impl Admit for pb::TaskStatusUpdate {
    fn admit(&self) -> Result<()> {
        check_name("new_status", &self.new_status)?;
        Ok(())
    }
}

impl Admit for pb::GetLogsRequest {
    fn admit(&self) -> Result<()> {
        check_count("taskIds", self.task_ids.len())?;
        not_negative("chunkSize", Some(self.chunk_size))?;
        not_negative("skipFromEnd", self.skip_from_end)?;
        name_opt("log_type", &self.log_type)?;
        Ok(())
    }
}

impl Admit for pb::ListTasksRequest {
    fn admit(&self) -> Result<()> {
        name_opt("status_filter", &self.status_filter)?;
        text_opt("command_filter", &self.command_filter)?;
        not_negative("limit", self.limit)?;
        not_negative("offset", self.offset)?;
        Ok(())
    }
}

impl Admit for pb::RetryTaskRequest {
    fn admit(&self) -> Result<()> {
        self.retry.map_or(Ok(()), |r| {
            check_range("retry", r, crate::domain::limits::MAX_PREFETCH)
        })?;
        Ok(())
    }
}

impl Admit for pb::WorkerRequest {
    fn admit(&self) -> Result<()> {
        check_range("number", self.number, crate::domain::limits::MAX_IDS as i32)?;
        check_concurrency("concurrency", self.concurrency)?;
        check_prefetch("prefetch", self.prefetch)?;
        Ok(())
    }
}

impl Admit for pb::WorkerStatus {
    fn admit(&self) -> Result<()> {
        check_name("status", &self.status)?;
        Ok(())
    }
}

impl Admit for pb::WorkerUpdateRequest {
    fn admit(&self) -> Result<()> {
        concurrency_opt("concurrency", self.concurrency)?;
        prefetch_opt("prefetch", self.prefetch)?;
        name_opt("recyclable_scope", &self.recyclable_scope)?;
        Ok(())
    }
}

impl Admit for pb::WorkerStatusRequest {
    fn admit(&self) -> Result<()> {
        check_count("worker_ids", self.worker_ids.len())?;
        Ok(())
    }
}

impl Admit for pb::ListJobsRequest {
    fn admit(&self) -> Result<()> {
        // A limit below 1 means 1 and a negative offset means 0, as in the original; only a
        // negative limit is refused.
        not_negative("limit", self.limit)?;
        Ok(())
    }
}

impl Admit for pb::JobStatusRequest {
    fn admit(&self) -> Result<()> {
        check_count("job_ids", self.job_ids.len())?;
        Ok(())
    }
}

impl Admit for pb::JobUpdate {
    fn admit(&self) -> Result<()> {
        name_opt("status", &self.status)?;
        text_opt("append_log", &self.append_log)?;
        Ok(())
    }
}

impl Admit for pb::ListFlavorsRequest {
    fn admit(&self) -> Result<()> {
        check_text("filter", &self.filter)?;
        not_negative("limit", Some(self.limit))?;
        Ok(())
    }
}

impl Admit for pb::FlavorCreateRequest {
    fn admit(&self) -> Result<()> {
        check_name("provider_name", &self.provider_name)?;
        check_name("config_name", &self.config_name)?;
        check_name("flavor_name", &self.flavor_name)?;
        name_opt("gpu", &self.gpu)?;
        check_count("region_names", self.region_names.len())?;
        for region in &self.region_names {
            check_name("region_names", region)?;
        }
        check_count("costs", self.costs.len())?;
        check_count("evictions", self.evictions.len())?;
        Ok(())
    }
}

impl Admit for pb::LoginRequest {
    fn admit(&self) -> Result<()> {
        check_name("username", &self.username)?;
        check_text("password", &self.password)?;
        Ok(())
    }
}

impl Admit for pb::Token {
    fn admit(&self) -> Result<()> {
        check_name("token", &self.token)?;
        Ok(())
    }
}

impl Admit for pb::CreateUserRequest {
    fn admit(&self) -> Result<()> {
        check_name("username", &self.username)?;
        check_text("password", &self.password)?;
        check_name("email", &self.email)?;
        Ok(())
    }
}

impl Admit for pb::User {
    fn admit(&self) -> Result<()> {
        name_opt("username", &self.username)?;
        name_opt("email", &self.email)?;
        Ok(())
    }
}

impl Admit for pb::ChangePasswordRequest {
    fn admit(&self) -> Result<()> {
        check_name("username", &self.username)?;
        check_text("old_password", &self.old_password)?;
        check_text("new_password", &self.new_password)?;
        Ok(())
    }
}

impl Admit for pb::Recruiter {
    fn admit(&self) -> Result<()> {
        check_text("protofilter", &self.protofilter)?;
        concurrency_opt("concurrency", self.concurrency)?;
        prefetch_opt("prefetch", self.prefetch)?;
        prefetch_opt("max_workers", self.max_workers)?;
        check_prefetch("rounds", self.rounds)?;
        check_timeout("timeout", f64::from(self.timeout))?;
        concurrency_opt("cpu_per_task", self.cpu_per_task)?;
        prefetch_opt("prefetch_percent", self.prefetch_percent)?;
        concurrency_opt("concurrency_min", self.concurrency_min)?;
        concurrency_opt("concurrency_max", self.concurrency_max)?;
        Ok(())
    }
}

impl Admit for pb::RecruiterUpdate {
    fn admit(&self) -> Result<()> {
        text_opt("protofilter", &self.protofilter)?;
        concurrency_opt("concurrency", self.concurrency)?;
        prefetch_opt("prefetch", self.prefetch)?;
        prefetch_opt("max_workers", self.max_workers)?;
        prefetch_opt("rounds", self.rounds)?;
        self.timeout
            .map_or(Ok(()), |t| check_timeout("timeout", f64::from(t)))?;
        concurrency_opt("cpu_per_task", self.cpu_per_task)?;
        prefetch_opt("prefetch_percent", self.prefetch_percent)?;
        concurrency_opt("concurrency_min", self.concurrency_min)?;
        concurrency_opt("concurrency_max", self.concurrency_max)?;
        Ok(())
    }
}

impl Admit for pb::WorkflowFilter {
    fn admit(&self) -> Result<()> {
        text_opt("name_like", &self.name_like)?;
        not_negative("limit", self.limit)?;
        not_negative("offset", self.offset)?;
        Ok(())
    }
}

impl Admit for pb::WorkflowRequest {
    fn admit(&self) -> Result<()> {
        check_name("name", &self.name)?;
        name_opt("run_strategy", &self.run_strategy)?;
        Ok(())
    }
}

impl Admit for pb::StepFilter {
    fn admit(&self) -> Result<()> {
        not_negative("limit", self.limit)?;
        not_negative("offset", self.offset)?;
        Ok(())
    }
}

impl Admit for pb::StepRequest {
    fn admit(&self) -> Result<()> {
        name_opt("workflow_name", &self.workflow_name)?;
        check_name("name", &self.name)?;
        Ok(())
    }
}

impl Admit for pb::StepStatsRequest {
    fn admit(&self) -> Result<()> {
        check_count("step_ids", self.step_ids.len())?;
        Ok(())
    }
}

impl Admit for pb::GetWorkerStatsRequest {
    fn admit(&self) -> Result<()> {
        check_count("worker_ids", self.worker_ids.len())?;
        Ok(())
    }
}

impl Admit for pb::FetchListRequest {
    fn admit(&self) -> Result<()> {
        check_uri("uri", &self.uri)?;
        Ok(())
    }
}

impl Admit for pb::UploadTemplateRequest {
    fn admit(&self) -> Result<()> {
        if self.script.len() > MAX_SCRIPT_BYTES {
            return Err(crate::domain::Error::Invalid(format!(
                "script is {} bytes, more than the {MAX_SCRIPT_BYTES} bytes allowed",
                self.script.len()
            ))
            .into());
        }
        Ok(())
    }
}

impl Admit for pb::RunTemplateRequest {
    fn admit(&self) -> Result<()> {
        check_len(
            "param_values_json",
            &self.param_values_json,
            MAX_SCRIPT_BYTES,
        )?;
        Ok(())
    }
}

impl Admit for pb::TemplateFilter {
    fn admit(&self) -> Result<()> {
        name_opt("name", &self.name)?;
        name_opt("version", &self.version)?;
        Ok(())
    }
}

impl Admit for pb::UpdateTemplateRunRequest {
    fn admit(&self) -> Result<()> {
        text_opt("error_message", &self.error_message)?;
        Ok(())
    }
}

impl Admit for pb::WorkspaceRootRequest {
    fn admit(&self) -> Result<()> {
        check_name("provider", &self.provider)?;
        check_name("region", &self.region)?;
        Ok(())
    }
}

impl Admit for pb::ResourceSpec {
    fn admit(&self) -> Result<()> {
        check_name("worker_id", &self.worker_id)?;
        Ok(())
    }
}

impl Admit for pb::WorkerEvent {
    fn admit(&self) -> Result<()> {
        check_name("worker_name", &self.worker_name)?;
        check_name("level", &self.level)?;
        check_name("event_class", &self.event_class)?;
        check_text("message", &self.message)?;
        check_text("details_json", &self.details_json)?;
        Ok(())
    }
}

impl Admit for pb::WorkerEventFilter {
    fn admit(&self) -> Result<()> {
        name_opt("level", &self.level)?;
        name_opt("class", &self.class)?;
        not_negative("limit", self.limit)?;
        Ok(())
    }
}

impl Admit for pb::WorkerEventPruneFilter {
    fn admit(&self) -> Result<()> {
        name_opt("before", &self.before)?;
        name_opt("level", &self.level)?;
        name_opt("class", &self.class)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn oversized_fields_are_invalid_arguments_naming_the_field() {
        let task = pb::TaskRequest {
            command: "x".repeat(100 << 10),
            container: "alpine".into(),
            ..Default::default()
        };
        let e = task.admit().unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.starts_with("command"), "{}", e.message);
        let worker = pb::WorkerInfo {
            name: "w".into(),
            concurrency: Some(i32::MAX),
            ..Default::default()
        };
        assert!(worker.admit().unwrap_err().message.contains("concurrency"));
        let spread = pb::TaskRequest {
            command: "true".into(),
            container: "alpine".into(),
            input: vec!["i".repeat(4000); 300],
            ..Default::default()
        };
        assert!(spread.admit().unwrap_err().message.contains("in all"));
        let fine = pb::TaskRequest {
            command: "true".into(),
            container: "alpine".into(),
            running_timeout: Some(3600.0),
            ..Default::default()
        };
        assert!(fine.admit().is_ok());
    }
}
