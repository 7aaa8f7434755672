//! The agent's life: registration, the ping loop (tasks, concurrency, weights, active tasks), the
//! table of tasks it holds, and the ordered shutdown. Each task's own steps are in `task.rs`; what
//! they share is `ctx.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::WorkerArgs;
use super::ctx::{CALL_TIMEOUT, Ctx, is_refusal};
use super::executor::{self, Executor, ExecutorChoice};
use super::slots::Slots;
use super::stats::{self, StatsCollector};
use super::task;
use crate::client::Client;
use crate::config::RcloneRemotes;
use crate::domain::status::{TaskStatus, WorkerStatus};
use crate::proto as pb;
use crate::storage::Storage;

/// Longest wait between two attempts of registration or ping.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the server may list a task this worker does not hold before it is handed back.
const MISMATCH_GRACE: Duration = Duration::from_secs(3);

/// A task this worker holds.
struct Held {
    weight: watch::Sender<f64>,
}

struct Agent {
    ctx: Arc<Ctx>,
    tasks: Arc<Mutex<HashMap<i32, Held>>>,
    args: WorkerArgs,
}

/// Runs the worker until `shutdown` resolves, then stops as the module documentation says.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let resolved = args.connect.resolve()?;
    let client = resolved.client()?;
    let name = args.worker_name();
    tokio::fs::create_dir_all(&args.store)
        .await
        .with_context(|| format!("cannot create the store folder {}", args.store.display()))?;
    let store = tokio::fs::canonicalize(&args.store).await?;
    tokio::pin!(shutdown);

    let worker_id = tokio::select! {
        id = register(&client, &args, &name, &store) => id?,
        () = &mut shutdown => return Ok(()),
    };
    tracing::info!(worker_id, name = %name, server = %resolved.target.server, "worker registered");
    if let Some(job_id) = args.job {
        report_to_job(&client, job_id, &name, worker_id).await;
    }
    let builtin = super::builtin::prepare(&store, Some(args.builtin_link.as_path()));
    let cpus = stats::specifications(&store).0.max(1) as usize;
    let storage = Storage::with_policy(rclone_remotes(&client).await, args.fetch_policy(&store));
    let executor = choose_executor(&client, args.executor, &store).await;
    tracing::info!(executor = executor.name(), store = %store.display(), "worker ready");

    let ctx = Arc::new(Ctx {
        client,
        worker_id: AtomicI32::new(worker_id),
        worker_name: name,
        storage,
        executor,
        docker_policy: args.docker_policy(),
        slots: Slots::new(f64::from(args.concurrency)),
        store,
        builtin,
        cpus,
        stopping: CancellationToken::new(),
        abandon: CancellationToken::new(),
        wake: Notify::new(),
        resource_locks: Mutex::new(HashMap::new()),
    });
    let agent = Arc::new(Agent {
        ctx,
        tasks: Arc::new(Mutex::new(HashMap::new())),
        args,
    });
    tokio::select! {
        () = agent.clone().ping_loop() => {}
        () = &mut shutdown => {}
    }
    agent.shutdown().await;
    Ok(())
}

/// RegisterWorker then RegisterSpecifications (and UpdateWorker for prefetch/step), retried with
/// back-off while the server cannot be reached; a refusal ends the worker.
async fn register(
    client: &Client,
    args: &WorkerArgs,
    name: &str,
    store: &std::path::Path,
) -> anyhow::Result<i32> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match register_once(client, args, name, store).await {
            Ok(id) => return Ok(id),
            Err(status) if is_refusal(status.code()) => {
                anyhow::bail!(
                    "the server refused to register worker {name:?}: {}",
                    status.message()
                )
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), code = ?status.code(), retry_in = ?backoff,
                    "cannot register, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn register_once(
    client: &Client,
    args: &WorkerArgs,
    name: &str,
    store: &std::path::Path,
) -> Result<i32, tonic::Status> {
    let mut c = client.clone();
    let id = c
        .register_worker(pb::WorkerInfo {
            name: name.to_string(),
            concurrency: Some(args.concurrency as i32),
            is_permanent: Some(args.permanent),
            provider: args.provider.clone(),
            region: args.region.clone(),
        })
        .await?
        .into_inner()
        .worker_id;
    let (cpu, mem, disk) = stats::specifications(store);
    c.register_specifications(pb::ResourceSpec {
        worker_id: id.to_string(),
        cpu,
        mem,
        disk,
    })
    .await?;
    if args.prefetch.is_some() || args.step.is_some() {
        c.update_worker(pb::WorkerUpdateRequest {
            worker_id: id,
            prefetch: args.prefetch.map(|p| p as i32),
            step_id: args.step,
            ..Default::default()
        })
        .await?;
    }
    Ok(id)
}

/// Tells the provider job that started this worker that it registered (a line in the job's log).
/// Best effort: the job's runner decides the job's outcome from the worker row.
async fn report_to_job(client: &Client, job_id: i32, name: &str, worker_id: i32) {
    let mut c = client.clone();
    let update = c.update_job(pb::JobUpdate {
        job_id,
        status: None,
        append_log: Some(format!("worker {name} registered (worker id {worker_id})")),
        progression: None,
    });
    match tokio::time::timeout(CALL_TIMEOUT, update).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => tracing::warn!(job_id, error = %s.message(), "cannot report to the job"),
        Err(_) => tracing::warn!(job_id, "cannot report to the job: no answer in time"),
    }
}

/// The storage remotes from the server; without them only local, file:// and http(s):// work.
async fn rclone_remotes(client: &Client) -> RcloneRemotes {
    let mut c = client.clone();
    match tokio::time::timeout(CALL_TIMEOUT, c.get_rclone_config(())).await {
        Ok(Ok(r)) => r
            .into_inner()
            .remotes
            .into_iter()
            .map(|(name, remote)| (name, remote.options.into_iter().collect()))
            .collect(),
        Ok(Err(s)) => {
            tracing::warn!(error = %s.message(), code = ?s.code(),
                "no storage remotes from the server: only local, file:// and http(s):// locations will work");
            RcloneRemotes::new()
        }
        Err(_) => {
            tracing::warn!(
                "no answer for the storage remotes: only local, file:// and http(s):// locations will work"
            );
            RcloneRemotes::new()
        }
    }
}

/// The executor: as asked, or docker when an engine answers; docker gets the registry credentials.
async fn choose_executor(
    client: &Client,
    choice: ExecutorChoice,
    store: &std::path::Path,
) -> Executor {
    let docker = match choice {
        ExecutorChoice::Shell => false,
        ExecutorChoice::Docker => true,
        ExecutorChoice::Auto => executor::docker_available().await,
    };
    if !docker {
        return Executor::Shell;
    }
    let config_dir = store.join("docker");
    let config_file = config_dir.join("config.json");
    if config_file.exists() {
        return Executor::Docker {
            config_dir: Some(config_dir),
        };
    }
    let mut c = client.clone();
    let credentials = match tokio::time::timeout(CALL_TIMEOUT, c.get_docker_credentials(())).await {
        Ok(Ok(r)) => r.into_inner().credentials,
        _ => Vec::new(),
    };
    if credentials.is_empty() {
        return Executor::Docker { config_dir: None };
    }
    let auths: serde_json::Map<String, serde_json::Value> = credentials
        .into_iter()
        .map(|c| (c.registry, serde_json::json!({ "auth": c.auth })))
        .collect();
    let written = async {
        std::fs::create_dir_all(&config_dir)?;
        crate::secret_files::write_private(
            &config_file,
            serde_json::json!({ "auths": auths }).to_string().as_bytes(),
        )
    }
    .await;
    match written {
        Ok(()) => Executor::Docker {
            config_dir: Some(config_dir),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot write docker credentials; pulls may fail");
            Executor::Docker { config_dir: None }
        }
    }
}

impl Agent {
    async fn ping_loop(self: Arc<Self>) {
        let mut stats = StatsCollector::new();
        let mut backoff = Duration::ZERO;
        let mut immediate = false;
        let mut mismatch: HashMap<i32, Instant> = HashMap::new();
        let mut handed_back: HashSet<i32> = HashSet::new();
        loop {
            if !immediate {
                let wait = if backoff.is_zero() {
                    self.args.ping_interval
                } else {
                    backoff
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.ctx.wake.notified(), if backoff.is_zero() => {}
                }
            }
            immediate = false;
            let request = pb::PingAndGetNewTasksRequest {
                worker_id: self.ctx.worker_id(),
                stats: Some(stats.sample()),
            };
            let mut client = self.ctx.client.clone();
            let answer =
                tokio::time::timeout(CALL_TIMEOUT, client.ping_and_take_new_tasks(request)).await;
            match answer {
                Ok(Ok(r)) => {
                    backoff = Duration::ZERO;
                    let answer = r.into_inner();
                    immediate = self.take(&answer);
                    self.check_active(&answer.active_tasks, &mut mismatch, &mut handed_back)
                        .await;
                }
                Ok(Err(s)) if s.code() == Code::NotFound => {
                    tracing::warn!(error = %s.message(), "the server no longer knows this worker: registering again");
                    let store = self.ctx.store.clone();
                    match register(&self.ctx.client, &self.args, &self.ctx.worker_name, &store)
                        .await
                    {
                        Ok(id) => {
                            self.ctx.worker_id.store(id, Ordering::Relaxed);
                            tracing::info!(worker_id = id, "worker registered again");
                            immediate = true;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot register again");
                            backoff = MAX_BACKOFF;
                        }
                    }
                }
                other => {
                    let error = match other {
                        Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                        _ => "no answer in time".into(),
                    };
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    tracing::warn!(error = %error, retry_in = ?backoff, "ping failed");
                }
            }
        }
    }

    /// Applies a ping answer; returns whether new tasks arrived.
    fn take(&self, answer: &pb::TaskListAndOther) -> bool {
        self.ctx.slots.resize(f64::from(answer.concurrency.max(0)));
        let mut tasks = self.tasks.lock().unwrap();
        if let Some(updates) = &answer.updates {
            for (id, update) in &updates.updates {
                if let Some(held) = tasks.get(id) {
                    held.weight.send_if_modified(|w| {
                        let changed = (*w - update.weight).abs() > 1e-9;
                        *w = update.weight;
                        changed
                    });
                }
            }
        }
        let mut new = 0;
        for t in &answer.tasks {
            if tasks.contains_key(&t.task_id) || self.ctx.stopping.is_cancelled() {
                continue;
            }
            let weight = t.weight.filter(|w| *w > 0.0).unwrap_or(1.0);
            let weight = answer
                .updates
                .as_ref()
                .and_then(|u| u.updates.get(&t.task_id))
                .map(|u| u.weight)
                .unwrap_or(weight);
            let (tx, rx) = watch::channel(weight);
            tasks.insert(t.task_id, Held { weight: tx });
            let ctx = self.ctx.clone();
            let table = self.tasks.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let id = t.task_id;
                task::execute(ctx.clone(), t, rx).await;
                table.lock().unwrap().remove(&id);
                ctx.wake.notify_one();
            });
            new += 1;
        }
        if new > 0 {
            tracing::info!(new, held = tasks.len(), "received tasks");
        }
        new > 0
    }

    /// Tasks the server says this worker holds but it does not know: after 3 s, warn and hand
    /// them back so they are retried instead of stalling.
    async fn check_active(
        &self,
        active: &[i32],
        mismatch: &mut HashMap<i32, Instant>,
        handed_back: &mut HashSet<i32>,
    ) {
        let unknown: Vec<i32> = {
            let tasks = self.tasks.lock().unwrap();
            active
                .iter()
                .copied()
                .filter(|id| !tasks.contains_key(id))
                .collect()
        };
        mismatch.retain(|id, _| unknown.contains(id));
        handed_back.retain(|id| unknown.contains(id));
        let now = Instant::now();
        for id in unknown {
            let since = *mismatch.entry(id).or_insert(now);
            if now.duration_since(since) < MISMATCH_GRACE || !handed_back.insert(id) {
                continue;
            }
            tracing::warn!(
                task_id = id,
                "the server lists a task this worker does not hold: handing it back"
            );
            self.ctx
                .event(
                    "W",
                    "task",
                    format!(
                        "task {id} is assigned to this worker but not running here: handed back"
                    ),
                    serde_json::json!({ "task_id": id }),
                )
                .await;
            if let Err(e) = self.ctx.update(id, TaskStatus::Failed, None, true).await {
                tracing::warn!(task_id = id, error = ?e, "cannot hand back an unknown task");
            }
        }
    }

    /// SIGTERM: pause, hand back what was assigned but not started, let running tasks finish
    /// within the grace period, then kill and hand back the rest.
    async fn shutdown(&self) {
        let ctx = &self.ctx;
        tracing::info!(grace = ?self.args.shutdown_grace, "stopping: taking no new tasks");
        ctx.stopping.cancel();
        let mut client = ctx.client.clone();
        let paused = client.update_worker_status(pb::WorkerStatus {
            worker_id: ctx.worker_id(),
            status: WorkerStatus::Paused.letter().into(),
        });
        if let Err(e) = tokio::time::timeout(CALL_TIMEOUT, paused).await {
            tracing::warn!(error = %e, "cannot pause this worker on the server");
        }
        // Tasks assigned between the last ping and the pause are handed back unstarted.
        let last = client.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: ctx.worker_id(),
            stats: None,
        });
        if let Ok(Ok(answer)) = tokio::time::timeout(CALL_TIMEOUT, last).await {
            let unknown: Vec<i32> = {
                let tasks = self.tasks.lock().unwrap();
                answer
                    .into_inner()
                    .tasks
                    .iter()
                    .map(|t| t.task_id)
                    .filter(|id| !tasks.contains_key(id))
                    .collect()
            };
            for id in unknown {
                if let Err(e) = ctx.update(id, TaskStatus::Failed, None, true).await {
                    tracing::warn!(task_id = id, error = ?e, "cannot hand back an assigned task");
                }
            }
        }
        if !self.wait_empty(self.args.shutdown_grace).await {
            let left = self.tasks.lock().unwrap().len();
            tracing::warn!(
                left,
                "grace period over: killing and handing back running tasks"
            );
            ctx.abandon.cancel();
            if !self.wait_empty(Duration::from_secs(60)).await {
                tracing::error!("some tasks could not be handed back before exit");
            }
        }
        tracing::info!("worker stopped");
    }

    async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.tasks.lock().unwrap().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                () = self.ctx.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
