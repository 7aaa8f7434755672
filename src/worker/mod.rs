//! The worker agent (`taskqueue worker`): registers with the server, pings for tasks and runs each
//! one through C → O → R → U/V → S/F, staging inputs, resources and outputs through the storage
//! layer and shipping output lines as task logs. It speaks to the server exactly as the original
//! Go worker does (same calls, same order), so the server is exercised the way real fleets use it:
//!
//! 1. `RegisterWorker(name, concurrency, is_permanent, provider?, region?)`;
//! 2. `RegisterSpecifications(worker id as a string, CPUs, memory GiB, free disk GiB of the store)`;
//!    then, only when `--prefetch` or `--step` is given, `UpdateWorker` with them;
//! 3. `GetRcloneConfig` (storage remotes) and, for docker, `GetDockerCredentials`;
//! 4. `PingAndTakeNewTasks(worker id, stats)` every ping interval (5 s) when idle, at once after
//!    receiving tasks or finishing one, with back-off on errors;
//! 5. per task: `UpdateTaskStatus` C, O (download duration), R, U or V (run duration), S or F
//!    (upload duration) — each retried 3 times with a growing delay — and one `SendTaskLogs`
//!    stream per execution, acknowledged before the final status is sent.
//!
//! On SIGTERM: `UpdateWorkerStatus(P)` so nothing new is assigned, tasks not yet running are
//! handed back (`F` with `free_retry`), running ones get the grace period to finish, then are
//! killed and handed back the same way; the process exits 0.
//!
//! Where this agent goes beyond the Go worker: tasks the server says this worker holds
//! (`active_tasks`) but that it does not know (e.g. from before a restart) are reported after 3 s
//! and handed back; a ping answered "worker not found" (the row was deleted) registers again.

mod agent;
pub mod builtin;
mod ctx;
pub mod executor;
mod logs;
pub mod slots;
pub mod stats;
mod task;

use std::path::PathBuf;
use std::time::Duration;

pub use agent::run;
pub use executor::ExecutorChoice;

use crate::client::connect::ConnectArgs;

/// Defaults of the worker, each with its reason.
pub mod defaults {
    use std::time::Duration;
    /// The original worker's idle ping period.
    pub const PING_INTERVAL: Duration = Duration::from_secs(5);
    /// Long enough for most tasks to end cleanly on a rolling restart, short enough for systemd.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
    /// Relative to the current directory, like `serve`'s data folder.
    pub const STORE: &str = "./taskqueue-store";
}

/// Flags of `taskqueue worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Worker name, unique on the server (a restart under the same name takes over the worker)
    /// [default: the host name].
    #[arg(long, env = "TASKQUEUE_WORKER_NAME")]
    pub name: Option<String>,
    /// Tasks run at once (in weight units); the server may change it through pings.
    #[arg(long, env = "TASKQUEUE_WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Tasks the server may assign beyond `concurrency`, downloaded ahead while others run.
    #[arg(long, env = "TASKQUEUE_WORKER_PREFETCH")]
    pub prefetch: Option<u32>,
    /// Folder holding the tasks' work directories and the resource cache.
    #[arg(long, env = "TASKQUEUE_WORKER_STORE", default_value = defaults::STORE)]
    pub store: PathBuf,
    /// Serve only the tasks of this step (id); none → step-less tasks.
    #[arg(long, env = "TASKQUEUE_WORKER_STEP")]
    pub step: Option<i32>,
    /// Never deleted by the server's idle/lost watchdog.
    #[arg(long, env = "TASKQUEUE_WORKER_PERMANENT")]
    pub permanent: bool,
    /// Provider of this machine ("name.config", e.g. azure.primary) when the server created it.
    #[arg(long, env = "TASKQUEUE_WORKER_PROVIDER", requires = "region")]
    pub provider: Option<String>,
    /// Region of this machine (with --provider).
    #[arg(long, env = "TASKQUEUE_WORKER_REGION", requires = "provider")]
    pub region: Option<String>,
    /// How commands run: docker when a Docker engine answers, else shell.
    #[arg(long, env = "TASKQUEUE_WORKER_EXECUTOR", value_enum, default_value_t = ExecutorChoice::Auto)]
    pub executor: ExecutorChoice,
    /// Ping period when idle.
    #[arg(long, env = "TASKQUEUE_WORKER_PING_INTERVAL", value_parser = humantime::parse_duration,
          default_value = "5s")]
    pub ping_interval: Duration,
    /// On SIGTERM, how long running tasks may go on before they are killed and handed back.
    #[arg(long, env = "TASKQUEUE_WORKER_SHUTDOWN_GRACE", value_parser = humantime::parse_duration,
          default_value = "60s")]
    pub shutdown_grace: Duration,
    /// The provider job that started this worker (the original's `-job`): once registered, the
    /// worker adds a line to that job's log (UpdateJob).
    #[arg(long, env = "TASKQUEUE_WORKER_JOB")]
    pub job: Option<i32>,
    /// Where the shell helpers (std.sh, bio.sh) are linked for commands written for the original
    /// (`. /builtin/std.sh`); only made when absent or already ours, and when allowed (root).
    /// Empty: no link (commands use `$SCITQ_BUILTIN`).
    #[arg(long, env = "TASKQUEUE_WORKER_BUILTIN_LINK", default_value = builtin::DEFAULT_LINK)]
    pub builtin_link: PathBuf,
    /// Local folders a task's inputs, resources and outputs may be in (comma-separated; links
    /// are resolved first, the store is never reachable) [default: the system temp folder].
    #[arg(long, env = "TASKQUEUE_WORKER_LOCAL_ROOTS", value_delimiter = ',')]
    pub local_roots: Option<Vec<PathBuf>>,
    /// Host folders below which a task's `-v`/`--mount` bind sources may be (comma-separated)
    /// [default: none]. Checked for every task, whoever submitted it.
    #[arg(
        long,
        env = "TASKQUEUE_WORKER_DOCKER_VOLUME_ROOTS",
        value_delimiter = ','
    )]
    pub docker_volume_roots: Vec<PathBuf>,
    /// Container options this worker runs besides the built-in allow-list (comma-separated,
    /// e.g. `--docker-allowed-options=--device`), whoever submitted the task [default: none].
    #[arg(
        long,
        env = "TASKQUEUE_WORKER_DOCKER_ALLOWED_OPTIONS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub docker_allowed_options: Vec<String>,
}

impl WorkerArgs {
    /// Defaults for `name` (tests and embedding).
    pub fn new(server: &str, token: &str, name: &str, store: PathBuf) -> WorkerArgs {
        WorkerArgs {
            connect: ConnectArgs {
                server: Some(server.into()),
                token: Some(token.into()),
                ..Default::default()
            },
            name: Some(name.into()),
            concurrency: 1,
            prefetch: None,
            store,
            step: None,
            permanent: false,
            provider: None,
            region: None,
            executor: ExecutorChoice::Shell,
            ping_interval: defaults::PING_INTERVAL,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            job: None,
            // Embedded workers (tests) leave the host's /builtin alone.
            builtin_link: PathBuf::new(),
            local_roots: None,
            docker_volume_roots: Vec::new(),
            docker_allowed_options: Vec::new(),
        }
    }

    /// Where a task's local inputs, resources and outputs may be: `--local-roots`, else the
    /// system temp folder; never inside the store (other tasks' folders, registry credentials).
    pub fn fetch_policy(
        &self,
        store: &std::path::Path,
    ) -> crate::domain::fetch_policy::FetchPolicy {
        crate::domain::fetch_policy::FetchPolicy {
            local_roots: self
                .local_roots
                .clone()
                .unwrap_or_else(|| vec![std::env::temp_dir()]),
            denied: vec![store.to_path_buf()],
            ..crate::domain::fetch_policy::FetchPolicy::worker()
        }
    }

    /// The container options this worker runs.
    pub fn docker_policy(&self) -> crate::domain::docker_options::DockerPolicy {
        crate::domain::docker_options::DockerPolicy {
            volume_roots: self.docker_volume_roots.clone(),
            extra_allowed: self
                .docker_allowed_options
                .iter()
                .filter_map(|o| crate::domain::docker_options::option_name(o))
                .collect(),
        }
    }

    /// The worker name: the flag, else the host name.
    pub fn worker_name(&self) -> String {
        if let Some(n) = self.name.as_deref().filter(|n| !n.trim().is_empty()) {
            return n.trim().to_string();
        }
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let host = if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).to_string()
        } else {
            String::new()
        };
        if host.is_empty() {
            "worker".into()
        } else {
            host
        }
    }
}
