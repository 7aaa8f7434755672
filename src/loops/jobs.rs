//! The job runner (leader only, docs/architecture.md#background-loops): claims `job` rows — pending
//! and due, or running with an expired lease (their replica died) — with `FOR UPDATE SKIP LOCKED`,
//! and runs each provider call in its own task, at most `MAX_RUNNING_JOBS` at once, under
//! `job_timeout`, keeping its lease alive every third of `job_lease`. A failed attempt goes back to
//! P after a back-off while retries are left (the original's 3), then F.
//!
//! Exactly-once completion: a result is recorded only while the job is still R with the attempt
//! this runner claimed (and this leader's epoch is current), so when a job is taken over, only the
//! runner that owns it can complete it; providers are idempotent by worker name, so the take-over
//! re-runs the call without making a second machine. When the runner is dropped (leadership lost),
//! its tasks are aborted; their jobs' leases expire and the next leader takes them over.
//!
//! A create job on a provider that asks for it (`local`: the worker is a process here) succeeds
//! only once the worker has registered — its row's `last_ping_at` moved past what it was before
//! the call — and fails as soon as the provider says the worker is gone, or after the provider's
//! registration timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use scoped_futures::ScopedFutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::LeaderContext;
use crate::db::Op;
use crate::db::jobs::{self, ClaimedJob, Finished, Outcome};
use crate::domain::status::JobAction;
use crate::error::{Code, Result};
use crate::providers::{ProviderError, Providers, VmSpec};
use crate::telemetry::metrics as m;

/// At most this many provider calls run at once (the original's semaphore).
pub const MAX_RUNNING_JOBS: usize = 10;
/// How often the leader looks for runnable jobs.
pub const JOB_INTERVAL: Duration = Duration::from_secs(1);
/// How often the leader publishes the open-job gauges.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before a failed attempt is tried again.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// How the runner runs jobs.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub lease: Duration,
    pub timeout: Duration,
    pub max_running: usize,
    pub backoff: Duration,
}

impl JobSettings {
    pub fn from_config(config: &crate::config::Config) -> JobSettings {
        JobSettings {
            lease: config.job_lease,
            timeout: config.job_timeout,
            max_running: MAX_RUNNING_JOBS,
            backoff: RETRY_BACKOFF,
        }
    }
}

/// The leader's job runner: one per term.
pub struct JobRunner {
    providers: Arc<Providers>,
    settings: JobSettings,
    slots: Arc<Semaphore>,
    running: Mutex<JoinSet<()>>,
    /// When the open-job gauges were last published.
    gauges_at: Mutex<Option<Instant>>,
}

impl JobRunner {
    pub fn new(providers: Providers, settings: JobSettings) -> JobRunner {
        JobRunner {
            providers: Arc::new(providers),
            slots: Arc::new(Semaphore::new(settings.max_running)),
            settings,
            running: Mutex::new(JoinSet::new()),
            gauges_at: Mutex::new(None),
        }
    }

    /// Provider calls in progress.
    pub fn running(&self) -> usize {
        self.settings.max_running - self.slots.available_permits()
    }

    /// One iteration: claims as many runnable jobs as there are free slots and starts them.
    /// Returns how many were started.
    pub async fn run_once(&self, ctx: &LeaderContext) -> Result<usize> {
        {
            let mut running = self.running.lock().unwrap();
            while running.try_join_next().is_some() {}
        }
        let publish = {
            let mut at = self.gauges_at.lock().unwrap();
            let due = at.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL);
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if publish {
            record_gauges(ctx).await?;
        }
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let lease = self.settings.lease;
        let runner = format!("{}#{}", ctx.config.replica_name, ctx.epoch);
        let runner = runner.as_str();
        let claimed = ctx
            .fenced_tx(Op::JobRunner, |tx| {
                async move { jobs::claim(tx, free as i64, lease, runner).await }.scope_boxed()
            })
            .await?;
        let started = claimed.len();
        for job in claimed {
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the runner's semaphore is never closed");
            if let Some(from) = &job.taken_over_from {
                tracing::warn!(job_id = job.job_id, from = %from, "taking over a job whose lease expired");
            }
            let run = execute(
                ctx.clone(),
                self.providers.clone(),
                self.settings.clone(),
                job,
                permit,
            );
            self.running.lock().unwrap().spawn(run);
        }
        Ok(started)
    }

    /// Waits until no job is in progress (tests; a resigning leader may also wait for its jobs).
    pub async fn wait_idle(&self) {
        loop {
            let mut set = std::mem::take(&mut *self.running.lock().unwrap());
            if set.is_empty() {
                return;
            }
            while set.join_next().await.is_some() {}
        }
    }
}

/// The job runner as a leader loop: one runner per term, looking for runnable jobs every
/// [`JOB_INTERVAL`]. When the term ends the runner is dropped and its provider calls aborted; their
/// leases expire and the next leader takes the jobs over (providers are idempotent by name).
pub fn leader_loop(config: &crate::config::Config, providers: Providers) -> super::LeaderLoop {
    let settings = JobSettings::from_config(config);
    super::LeaderLoop::long_running("jobs", JOB_INTERVAL, move |ctx, cancel| {
        let runner = JobRunner::new(providers.clone(), settings.clone());
        async move {
            let mut tick = tokio::time::interval(JOB_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                runner.run_once(&ctx).await?;
            }
        }
    })
}

/// Publishes the gauges of open jobs (leader).
pub async fn record_gauges(ctx: &LeaderContext) -> Result<()> {
    let counts = ctx
        .fenced_tx(Op::JobRunner, |tx| {
            async move { jobs::open_job_counts(tx).await }.scope_boxed()
        })
        .await?;
    for action in JobAction::ALL {
        for status in ["P", "R"] {
            let n = counts
                .iter()
                .find(|(a, s, _)| a == action.letter() && s == status)
                .map_or(0, |c| c.2);
            gauge!(m::JOBS_OPEN, "action" => action.letter(), "status" => status).set(n as f64);
        }
    }
    Ok(())
}

/// Runs one claimed job to a recorded result (or to the loss of its lease).
async fn execute(
    ctx: LeaderContext,
    providers: Arc<Providers>,
    settings: JobSettings,
    job: ClaimedJob,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let action = job.action.letter();
    // The lease keeper runs in this task, so it stops with it (a dropped runner renews nothing).
    let outcome = tokio::select! {
        () = keep_lease(&ctx, job.job_id, job.attempt, settings.lease) => None,
        o = tokio::time::timeout(settings.timeout, perform(&ctx, &providers, &job)) => Some(o.unwrap_or_else(|_| {
            Outcome::Failed(format!("the provider call timed out after {}", humantime::format_duration(settings.timeout)))
        })),
    };
    histogram!(m::JOB_DURATION_SECONDS, "action" => action).record(started.elapsed().as_secs_f64());
    let Some(outcome) = outcome else {
        tracing::info!(
            job_id = job.job_id,
            "job no longer ours (taken over, canceled or deleted); stopped"
        );
        counter!(m::JOBS_FINISHED, "action" => action, "status" => "lost").increment(1);
        return;
    };
    let shards = ctx.config.assign_shards;
    let backoff = settings.backoff;
    let (job_ref, outcome_ref) = (&job, &outcome);
    let recorded = ctx
        .fenced_tx(Op::JobRunner, |tx| {
            async move { jobs::finish(tx, shards, job_ref, outcome_ref, backoff).await }
                .scope_boxed()
        })
        .await;
    let status = match recorded {
        Ok(Finished::Done(s)) => {
            match &outcome {
                Outcome::Failed(why) | Outcome::Refused(why) => {
                    tracing::warn!(job_id = job.job_id, action, error = %why, "job failed for good")
                }
                _ => {
                    tracing::info!(job_id = job.job_id, action, worker = ?job.worker_name, "job succeeded")
                }
            }
            s.letter()
        }
        Ok(Finished::Retrying) => {
            if let Outcome::Failed(why) = &outcome {
                tracing::warn!(job_id = job.job_id, action, attempt = job.attempt, error = %why, "job attempt failed; will retry");
            }
            "retry"
        }
        Ok(Finished::Lost) => "lost",
        Err(e) => {
            // The job stays R: its lease expires and the (next) leader runs it again.
            tracing::warn!(job_id = job.job_id, error = %e, "cannot record the job's result");
            "lost"
        }
    };
    counter!(m::JOBS_FINISHED, "action" => action, "status" => status).increment(1);
}

/// Renews the job's lease every third of it; returns when the job is no longer ours (taken over,
/// canceled, finished by its worker, deleted, or this term is over).
async fn keep_lease(ctx: &LeaderContext, job_id: i32, attempt: i32, lease: Duration) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = ctx
            .fenced_tx(Op::JobRunner, |tx| {
                async move { jobs::renew_lease(tx, job_id, attempt, lease).await }.scope_boxed()
            })
            .await;
        match renewed {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) if e.code == Code::FailedPrecondition => return,
            Err(e) => tracing::warn!(job_id, error = %e, "cannot renew a job lease"),
        }
    }
}

/// How often a create job looks whether its worker registered.
const REGISTRATION_POLL: Duration = Duration::from_millis(250);

/// Waits until worker `worker_id` has registered or pinged after `before` (its `last_ping_at`
/// then), while the provider says it is still starting, for at most `limit`.
async fn registered(
    ctx: &LeaderContext,
    provider: &dyn crate::providers::Provider,
    name: &str,
    worker_id: i32,
    before: Option<chrono::DateTime<chrono::Utc>>,
    limit: Duration,
) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        match jobs::worker_last_ping(&ctx.db, worker_id).await {
            Ok(Some(seen)) if before.is_none_or(|b| seen > b) => {
                return Outcome::Created { ipv4: None };
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(worker_id, error = %e, "cannot read the worker's last ping"),
        }
        if let Err(e) = provider.check_starting(name).await {
            return Outcome::Failed(e.to_string());
        }
        if Instant::now() >= deadline {
            return Outcome::Failed(format!(
                "worker {name} did not register within {}",
                humantime::format_duration(limit)
            ));
        }
        tokio::time::sleep(REGISTRATION_POLL).await;
    }
}

/// The provider call of a job.
async fn perform(ctx: &LeaderContext, providers: &Providers, job: &ClaimedJob) -> Outcome {
    let Some(name) = job.worker_name.as_deref() else {
        return Outcome::Refused("the job names no worker".into());
    };
    // A worker that never had a region (registered by hand) has no machine of ours.
    let (Some(provider_name), Some(region)) = (job.provider.as_deref(), job.region.as_deref())
    else {
        return match job.action {
            JobAction::Delete => Outcome::Deleted,
            _ => Outcome::Refused(format!("worker {name} has no region, hence no provider")),
        };
    };
    let Some(provider) = providers.get(provider_name) else {
        return Outcome::Refused(format!(
            "provider {provider_name} is not built into this server (only local and fake are)"
        ));
    };
    let result = match job.action {
        JobAction::Create => {
            let Some(flavor) = job.flavor.clone() else {
                return Outcome::Refused(format!("worker {name} has no flavor to create"));
            };
            let spec = VmSpec {
                worker_name: name.to_string(),
                worker_id: job.worker_id.unwrap_or(0),
                job_id: job.job_id,
                provider: provider_name.to_string(),
                region: region.to_string(),
                flavor,
                concurrency: job.concurrency,
            };
            let wait = provider.registration_timeout().zip(job.worker_id);
            let before = match wait {
                Some((_, worker_id)) => match jobs::worker_last_ping(&ctx.db, worker_id).await {
                    Ok(seen) => seen,
                    Err(e) => return Outcome::Failed(format!("cannot read worker {name}: {e}")),
                },
                None => None,
            };
            match provider.create(&spec).await {
                Ok(vm) => match wait {
                    None => Ok(Outcome::Created { ipv4: vm.ipv4 }),
                    Some((limit, worker_id)) => Ok(
                        match registered(ctx, provider.as_ref(), name, worker_id, before, limit)
                            .await
                        {
                            Outcome::Created { .. } => Outcome::Created { ipv4: vm.ipv4 },
                            other => other,
                        },
                    ),
                },
                Err(e) => Err(e),
            }
        }
        JobAction::Delete => provider
            .delete(name, region)
            .await
            .map(|()| Outcome::Deleted),
        JobAction::Restart => provider
            .restart(name, region)
            .await
            .map(|()| Outcome::Restarted),
        JobAction::Update => return Outcome::Refused("update jobs are not supported".into()),
    };
    result.unwrap_or_else(|e| match e {
        ProviderError::Unsupported(_) => Outcome::Refused(e.to_string()),
        ProviderError::Failed(why) => Outcome::Failed(why),
    })
}
