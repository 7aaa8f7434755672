//! The table of the 59 RPCs of `taskqueue.TaskQueue`: streaming shape and who may call each. The auth
//! layer and the gRPC metrics layer read it, so access rules live in exactly one place.

/// gRPC method type, named as go-grpc-prometheus labels it (`grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    ClientStream,
    ServerStream,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ClientStream => "client_stream",
            Kind::ServerStream => "server_stream",
        }
    }
}

/// Who may call an RPC (docs/architecture.md#roles-and-ownership).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed: Login, ChangePassword.
    Public,
    /// Any valid token: the worker token or a session.
    Authenticated,
    /// A session of an admin user.
    Admin,
    /// Storage and registry secrets: the worker token or an admin.
    Secrets,
    /// Log reads (StreamTaskLogs*): authenticated, or anonymous when
    /// `--allow-unauthenticated-log-streams` is set and the caller sent no authorization header
    /// (the original Go CLI's `task output`).
    LogStream,
    /// SendTaskLogs: authenticated; without an authorization header, admitted as
    /// `Caller::AnonymousLogWriter`, which may only append lines of tasks a worker holds — the
    /// original Go worker's token interceptor is unary-only, so its log streams carry no token.
    /// Under `--allow-unauthenticated-log-streams`, as `LogStream` (any task, as the original).
    LogWrite,
    /// Worker RPCs: the worker token, or an admin acting for a worker (the original's CLI and
    /// operators' scripts mark tasks and jobs by hand). Plain users never act as workers.
    Worker,
    /// Changes one object (workflow, step, task, recruiter, template version, template run):
    /// authenticated here; the handler then requires the object's owner or an admin
    /// (`db::ownership::check`, the rule in `domain::ownership`).
    Owned,
    /// Provider machines (CreateWorker, DeleteWorker, UpdateWorker, UpdateWorkerStatus):
    /// authenticated here; the handler then refuses plain users where the provider has no quota
    /// (`domain::ownership::may_manage_machines`).
    Machines,
    /// Recruiters: `Machines` (over every offered provider) and `Owned` together.
    OwnedMachines,
}

pub struct Rpc {
    pub name: &'static str,
    pub kind: Kind,
    pub access: Access,
}

pub const SERVICE: &str = "taskqueue.TaskQueue";

const fn rpc(name: &'static str, kind: Kind, access: Access) -> Rpc {
    Rpc { name, kind, access }
}

use Access::*;
use Kind::*;

/// Every RPC, in the order of the service definition.
pub const RPCS: &[Rpc] = &[
    rpc("SubmitTask", Unary, Authenticated),
    rpc("RegisterWorker", Unary, Worker),
    rpc("PingAndTakeNewTasks", Unary, Worker),
    rpc("UpdateTaskStatus", Unary, Worker),
    rpc("SendTaskLogs", ClientStream, LogWrite),
    rpc("StreamTaskLogsOutput", ServerStream, LogStream),
    rpc("StreamTaskLogsErr", ServerStream, LogStream),
    rpc("GetLogsChunk", Unary, Authenticated),
    rpc("ListTasks", Unary, Authenticated),
    rpc("RetryTask", Unary, Owned),
    rpc("ListWorkers", Unary, Authenticated),
    rpc("CreateWorker", Unary, Machines),
    rpc("UpdateWorkerStatus", Unary, Machines),
    rpc("DeleteWorker", Unary, Machines),
    rpc("UpdateWorker", Unary, Machines),
    rpc("GetWorkerStatuses", Unary, Authenticated),
    rpc("ListJobs", Unary, Authenticated),
    rpc("GetJobStatuses", Unary, Authenticated),
    rpc("DeleteJob", Unary, Authenticated),
    rpc("UpdateJob", Unary, Worker),
    rpc("ListFlavors", Unary, Authenticated),
    rpc("ListProviders", Unary, Authenticated),
    rpc("ListRegions", Unary, Authenticated),
    rpc("CreateFlavor", Unary, Admin),
    rpc("GetRcloneConfig", Unary, Secrets),
    rpc("GetDockerCredentials", Unary, Secrets),
    rpc("Login", Unary, Public),
    rpc("Logout", Unary, Authenticated),
    rpc("CreateUser", Unary, Admin),
    rpc("ListUsers", Unary, Authenticated),
    rpc("DeleteUser", Unary, Admin),
    rpc("UpdateUser", Unary, Admin),
    rpc("ChangePassword", Unary, Public),
    rpc("ListRecruiters", Unary, Authenticated),
    rpc("CreateRecruiter", Unary, OwnedMachines),
    rpc("UpdateRecruiter", Unary, OwnedMachines),
    rpc("DeleteRecruiter", Unary, OwnedMachines),
    rpc("ListWorkflows", Unary, Authenticated),
    rpc("CreateWorkflow", Unary, Authenticated),
    rpc("DeleteWorkflow", Unary, Owned),
    rpc("ListSteps", Unary, Authenticated),
    rpc("CreateStep", Unary, Authenticated),
    rpc("DeleteStep", Unary, Owned),
    rpc("GetStepStats", Unary, Authenticated),
    rpc("GetWorkerStats", Unary, Authenticated),
    rpc("FetchList", Unary, Authenticated),
    rpc("FetchInfo", Unary, Authenticated),
    rpc("UploadTemplate", Unary, Owned),
    rpc("RunTemplate", Unary, Authenticated),
    rpc("ListTemplates", Unary, Authenticated),
    rpc("ListTemplateRuns", Unary, Authenticated),
    rpc("UpdateTemplateRun", Unary, Owned),
    rpc("DeleteTemplateRun", Unary, Owned),
    rpc("GetWorkspaceRoot", Unary, Authenticated),
    rpc("RegisterSpecifications", Unary, Worker),
    rpc("ReportWorkerEvent", Unary, Worker),
    rpc("ListWorkerEvents", Unary, Authenticated),
    rpc("DeleteWorkerEvent", Unary, Authenticated),
    rpc("PruneWorkerEvents", Unary, Authenticated),
];

/// What a template script's scoped session may call: what the DSL needs to build its workflow
/// (workflows, steps, tasks, recruiters and their listings), the catalog it chooses from, the file
/// listings it expands inputs with, and its own run's bookkeeping. Everything else — users,
/// workers' RPCs, deletions, secrets, running or uploading templates — is refused with
/// PermissionDenied, whoever the runner is.
pub const SCRIPT_RPCS: &[&str] = &[
    "SubmitTask",
    "ListTasks",
    "ListWorkflows",
    "CreateWorkflow",
    "ListSteps",
    "CreateStep",
    "GetStepStats",
    "ListRecruiters",
    "CreateRecruiter",
    "ListWorkers",
    "ListFlavors",
    "ListProviders",
    "ListRegions",
    "FetchList",
    "FetchInfo",
    "GetWorkspaceRoot",
    "ListTemplates",
    "ListTemplateRuns",
    "UpdateTemplateRun",
];

/// May a template script's scoped session call `name`?
pub fn script_may_call(name: &str) -> bool {
    SCRIPT_RPCS.contains(&name)
}

/// The RPC of the service a request path (`/taskqueue.TaskQueue/Name`) designates, if any.
pub fn lookup(path: &str) -> Option<&'static Rpc> {
    let name = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    RPCS.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_nine_distinct_rpcs() {
        assert_eq!(RPCS.len(), 59);
        let mut names: Vec<_> = RPCS.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 59);
    }

    #[test]
    fn script_rpcs_exist_and_exclude_admin_and_secrets() {
        for name in SCRIPT_RPCS {
            let rpc = RPCS.iter().find(|r| r.name == *name).expect(name);
            // Plain-user RPCs, some with per-object rules; never admin, secrets or worker RPCs.
            assert!(
                matches!(rpc.access, Authenticated | Owned | OwnedMachines),
                "{name}: {:?}",
                rpc.access
            );
        }
        for name in [
            "CreateUser",
            "RunTemplate",
            "UploadTemplate",
            "GetRcloneConfig",
            "Login",
        ] {
            assert!(!script_may_call(name), "{name}");
        }
    }

    #[test]
    fn lookup_by_path() {
        assert_eq!(
            lookup("/taskqueue.TaskQueue/Login").unwrap().access,
            Access::Public
        );
        assert!(lookup("/taskqueue.TaskQueue/Nope").is_none());
        assert!(lookup("/grpc.health.v1.Health/Check").is_none());
    }

    #[test]
    fn worker_rpcs_need_the_worker_role() {
        for name in [
            "RegisterWorker",
            "RegisterSpecifications",
            "PingAndTakeNewTasks",
            "UpdateTaskStatus",
            "UpdateJob",
            "ReportWorkerEvent",
        ] {
            let path = format!("/{SERVICE}/{name}");
            assert_eq!(lookup(&path).unwrap().access, Access::Worker, "{name}");
        }
        // SendTaskLogs keeps its own rule (token-less streams of the original's workers).
        assert_eq!(
            lookup("/taskqueue.TaskQueue/SendTaskLogs").unwrap().access,
            Access::LogWrite
        );
    }
}
