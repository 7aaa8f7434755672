//! A simulated worker, run inside the process for each ready VM of a `fake` provider with
//! `auto_launch`: it registers (RegisterWorker, RegisterSpecifications), pings, accepts the tasks it
//! is given and plays them through C → R → U → S (or V → F at `task_failure_rate`), each lasting
//! `task_duration`, at most `concurrency` at once (the concurrency the server sends in each ping
//! answer). It is cheap — one tokio task plus one per running task — so thousands can run at once
//! over one shared gRPC channel.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::client::{Client, Target};
use crate::proto as pb;

/// Who the simulated worker is.
#[derive(Debug, Clone)]
pub struct SimWorker {
    pub name: String,
    pub provider: String,
    pub region: String,
    pub concurrency: i32,
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
}

/// How simulated workers behave.
#[derive(Debug, Clone)]
pub struct SimWorkerSettings {
    /// Pause between pings when nothing happened (the Go worker waits 5 s).
    pub ping_interval: Duration,
    /// How long each task "runs".
    pub task_duration: Duration,
    /// Fraction of tasks that fail.
    pub task_failure_rate: f64,
}

impl Default for SimWorkerSettings {
    fn default() -> Self {
        SimWorkerSettings {
            ping_interval: Duration::from_secs(1),
            task_duration: Duration::from_millis(100),
            task_failure_rate: 0.0,
        }
    }
}

/// Counters shared by the simulated workers of one cloud.
#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub pings: AtomicU64,
    pub tasks_received: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub errors: AtomicU64,
    /// The last error seen, for diagnosing a simulation.
    pub last_error: Mutex<Option<String>>,
}

impl SimStats {
    fn error(&self, what: &str, e: &tonic::Status) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap() = Some(format!("{what}: {e}"));
    }
}

/// A channel to the servers: one address, or several balanced (a load balancer's job in production).
/// Build one per provider and share it: every simulated worker's calls go over it.
pub fn channel(servers: &[String]) -> anyhow::Result<Channel> {
    Ok(match servers {
        [] => anyhow::bail!("no server address for simulated workers"),
        [one] => Target::new(one.clone()).channel()?,
        many => {
            let endpoints = many
                .iter()
                .map(|s| {
                    Endpoint::from_shared(s.clone())
                        .map(|e| e.connect_timeout(Duration::from_secs(5)))
                        .map_err(|e| anyhow::anyhow!("invalid server address {s:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Channel::balance_list(endpoints.into_iter())
        }
    })
}

async fn update(client: &mut Client, task_id: i32, status: &str, duration: Option<i32>) -> bool {
    client
        .update_task_status(pb::TaskStatusUpdate {
            task_id,
            new_status: status.into(),
            duration,
            free_retry: None,
        })
        .await
        .is_ok()
}

/// Plays one task: R, then after the task duration U → S (or V → F).
async fn execute(
    mut client: Client,
    task_id: i32,
    settings: SimWorkerSettings,
    stats: Arc<SimStats>,
    done: mpsc::UnboundedSender<i32>,
    cancel: CancellationToken,
) {
    update(&mut client, task_id, "R", None).await;
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(settings.task_duration) => {}
    }
    let secs = settings.task_duration.as_secs() as i32;
    let failed =
        settings.task_failure_rate > 0.0 && rand::random::<f64>() < settings.task_failure_rate;
    let (mid, end) = if failed { ("V", "F") } else { ("U", "S") };
    update(&mut client, task_id, mid, Some(secs)).await;
    if update(&mut client, task_id, end, Some(0)).await {
        let counter = if failed {
            &stats.tasks_failed
        } else {
            &stats.tasks_succeeded
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let _ = done.send(task_id);
}

/// Runs a simulated worker until `cancel` (its VM is deleted), calling the server through `client`.
pub async fn run(
    worker: SimWorker,
    settings: SimWorkerSettings,
    client: Client,
    stats: Arc<SimStats>,
    cancel: CancellationToken,
) {
    let pause = |d: Duration| {
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                _ = cancel.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    let mut c = client.clone();
    let worker_id = loop {
        let answer = c
            .register_worker(pb::WorkerInfo {
                name: worker.name.clone(),
                concurrency: Some(worker.concurrency),
                is_permanent: Some(false),
                provider: Some(worker.provider.clone()),
                region: Some(worker.region.clone()),
            })
            .await;
        match answer {
            Ok(r) => break r.into_inner().worker_id,
            Err(e) => {
                stats.error("register", &e);
                if !pause(settings.ping_interval).await {
                    return;
                }
            }
        }
    };
    stats.registered.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = c
        .register_specifications(pb::ResourceSpec {
            worker_id: worker_id.to_string(),
            cpu: worker.cpu,
            mem: worker.mem as f32,
            disk: worker.disk as f32,
        })
        .await
    {
        stats.error("register specifications", &e);
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i32>();
    let mut known: HashSet<i32> = HashSet::new();
    let mut queue: VecDeque<i32> = VecDeque::new();
    let mut running = 0usize;
    loop {
        while let Ok(id) = done_rx.try_recv() {
            running -= 1;
            known.remove(&id);
        }
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            a = c.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest { worker_id, stats: None }) => a,
        };
        stats.pings.fetch_add(1, Ordering::Relaxed);
        let mut got_new = false;
        let mut concurrency = worker.concurrency.max(0) as usize;
        match answer {
            Ok(a) => {
                let a = a.into_inner();
                concurrency = a.concurrency.max(0) as usize;
                for task in a.tasks {
                    if known.insert(task.task_id) {
                        got_new = true;
                        stats.tasks_received.fetch_add(1, Ordering::Relaxed);
                        update(&mut c, task.task_id, "C", None).await;
                        queue.push_back(task.task_id);
                    }
                }
            }
            Err(e) => stats.error("ping", &e),
        }
        while running < concurrency
            && let Some(task_id) = queue.pop_front()
        {
            running += 1;
            tokio::spawn(execute(
                client.clone(),
                task_id,
                settings.clone(),
                stats.clone(),
                done_tx.clone(),
                cancel.child_token(),
            ));
        }
        if got_new {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(settings.ping_interval) => {}
            Some(id) = done_rx.recv() => {
                running -= 1;
                known.remove(&id);
            }
        }
    }
}
