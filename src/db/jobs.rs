//! Provider jobs (`job`) and the worker rows they act on: CreateWorker (workers and their create
//! jobs in one transaction, quota checked under a per-region lock), DeleteWorker and the
//! watchdog's [`schedule_worker_deletion`], the job RPCs, and the job runner's claim / lease /
//! result statements.
//!
//! Job lifecycle: P → R (claimed by the leader's runner with a lease; `attempt` bumped) → S, F, or
//! back to P for a retry; X when canceled (a create superseded by a deletion). A runner records a
//! result only while the job is still R with the attempt it claimed, so a job taken over after its
//! lease expired (its replica died) completes once.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use scoped_futures::ScopedFutureExt as _;

use super::locks::NS_QUOTA;
use super::{Db, Op};
use crate::domain::catalog::{DeclaredProviders, FlavorSpec};
use crate::domain::quota::{self, Usage};
use crate::domain::status::{JobAction, JobStatus, TaskStatus, WorkerStatus, sql_list};
use crate::error::{Code, Error, Result};

use super::Tx;

/// Attempts a job gets after its first (the original's 3).
pub const JOB_RETRIES: i32 = 3;

/// Appends a timestamped line to `job.log` (parameter `$n` holds the text).
fn log_append(n: usize) -> String {
    format!(
        "log = log || CASE WHEN log = '' THEN '' ELSE E'\\n' END
               || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || ' ' || ${n}"
    )
}

/// CreateWorker's request, validated by the caller.
#[derive(Debug, Clone, Default)]
pub struct NewWorkers {
    pub flavor_id: i32,
    pub region_id: i32,
    /// The provider the caller expects (0 = whatever the region belongs to).
    pub provider_id: i32,
    pub number: i32,
    pub concurrency: i32,
    pub prefetch: i32,
    pub step_id: Option<i32>,
}

/// A worker row created for deployment, and the job that deploys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedWorker {
    pub worker_id: i32,
    pub worker_name: String,
    pub job_id: i32,
}

/// Whose deployment this is: a person's (limited only where a quota is configured) or a
/// recruiter's (only where one is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRule {
    Manual,
    Recruiter,
}

/// What the workers of a region use (computed from worker rows, never a counter).
pub async fn region_usage(tx: &Tx<'_>, region_id: i32) -> Result<Usage> {
    let row = tx
        .query_one(
            "SELECT COALESCE(sum(f.cpu), 0)::int8, COALESCE(sum(f.mem), 0)::float8
               FROM worker w JOIN flavor f ON f.flavor_id = w.flavor_id
              WHERE w.region_id = $1",
            &[&region_id],
        )
        .await?;
    Ok(Usage {
        cpu: row.get(0),
        mem: row.get(1),
    })
}

/// Inserts `w.number` workers (status I, named `<server_name>worker<id>`) and one create job each,
/// after checking the quota of their region under that region's lock. Used by CreateWorker and
/// by the recruiter, inside their transaction.
pub async fn insert_workers(
    tx: &Tx<'_>,
    providers: &DeclaredProviders,
    server_name: &str,
    w: &NewWorkers,
    rule: QuotaRule,
) -> Result<Vec<CreatedWorker>> {
    let region = tx
        .query_opt(
            "SELECT r.region_name, r.provider_id, p.provider_name, p.config_name
               FROM region r JOIN provider p ON p.provider_id = r.provider_id
              WHERE r.region_id = $1",
            &[&w.region_id],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("region {} not found", w.region_id)))?;
    let (region_name, provider_id, class, config): (String, i32, String, String) =
        (region.get(0), region.get(1), region.get(2), region.get(3));
    let flavor = tx
        .query_opt(
            "SELECT provider_id, cpu, mem, flavor_name FROM flavor WHERE flavor_id = $1",
            &[&w.flavor_id],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("flavor {} not found", w.flavor_id)))?;
    let (flavor_provider, cpu, mem, flavor_name): (i32, i32, f64, String) =
        (flavor.get(0), flavor.get(1), flavor.get(2), flavor.get(3));
    if flavor_provider != provider_id {
        return Err(Error::invalid(format!(
            "flavor {flavor_name} does not belong to provider {class}.{config} of region {region_name}"
        )));
    }
    if w.provider_id != 0 && w.provider_id != provider_id {
        return Err(Error::invalid(format!(
            "region {region_name} belongs to provider {class}.{config} (id {provider_id}), not to provider {}",
            w.provider_id
        )));
    }
    if let Some(step) = w.step_id {
        let exists = tx
            .query_opt("SELECT 1 FROM step WHERE step_id = $1", &[&step])
            .await?;
        if exists.is_none() {
            return Err(Error::not_found(format!("step {step} not found")));
        }
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NS_QUOTA, &w.region_id],
    )
    .await?;
    let usage = region_usage(tx, w.region_id).await?;
    let quota = providers.quota((&class, &config), &region_name);
    let count = i64::from(w.number);
    let checked = match rule {
        QuotaRule::Manual => quota::check_manual(quota.as_ref(), usage, count, i64::from(cpu), mem),
        QuotaRule::Recruiter => match &quota {
            Some(q) => quota::fits(q, usage, count, i64::from(cpu), mem),
            None => Err(format!(
                "no quota is configured for {class}.{config} in {region_name}"
            )),
        },
    };
    checked.map_err(|why| {
        Error::new(
            Code::ResourceExhausted,
            format!("{class}.{config} region {region_name}: {why}"),
        )
    })?;

    let workers = tx
        .query(
            "INSERT INTO worker (worker_id, worker_name, step_id, concurrency, prefetch, status,
                                 flavor_id, region_id, is_permanent)
             SELECT id, $1 || 'worker' || id, $2, $3, $4, 'I', $5, $6, false
               FROM (SELECT nextval(pg_get_serial_sequence('worker', 'worker_id'))::int4 AS id
                       FROM generate_series(1, $7)) s
             RETURNING worker_id, worker_name",
            &[
                &server_name,
                &w.step_id,
                &w.concurrency,
                &w.prefetch,
                &w.flavor_id,
                &w.region_id,
                &w.number,
            ],
        )
        .await?;
    let ids: Vec<i32> = workers.iter().map(|r| r.get(0)).collect();
    let names: Vec<String> = workers.iter().map(|r| r.get(1)).collect();
    let jobs = tx
        .query(
            "INSERT INTO job (worker_id, worker_name, action, flavor_id, region_id, retry)
             SELECT id, name, 'C', $3, $4, $5 FROM unnest($1::int4[], $2::text[]) AS t(id, name)
             RETURNING job_id, worker_id",
            &[&ids, &names, &w.flavor_id, &w.region_id, &JOB_RETRIES],
        )
        .await?;
    let mut created: Vec<CreatedWorker> = jobs
        .iter()
        .map(|j| {
            let worker_id: i32 = j.get(1);
            let i = ids.iter().position(|id| *id == worker_id).unwrap_or(0);
            CreatedWorker {
                worker_id,
                worker_name: names[i].clone(),
                job_id: j.get(0),
            }
        })
        .collect();
    created.sort_by_key(|c| c.worker_id);
    Ok(created)
}

/// CreateWorker: workers and their create jobs, in one transaction.
pub async fn create_workers(
    db: &Db,
    providers: &DeclaredProviders,
    server_name: &str,
    w: &NewWorkers,
) -> Result<Vec<CreatedWorker>> {
    db.tx(Op::Jobs, |tx| {
        async move { insert_workers(tx, providers, server_name, w, QuotaRule::Manual).await }
            .scope_boxed()
    })
    .await
}

/// The tasks a worker holds that are not finished (`TaskStatus::ON_WORKER`, not hidden).
static UNFINISHED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT task_id FROM task WHERE worker_id = $1 AND NOT hidden
            AND status IN ({on_worker}) ORDER BY task_id",
        on_worker = sql_list(TaskStatus::ON_WORKER),
    )
});

/// An open delete job of the worker (`JobStatus::OPEN`).
static OPEN_DELETE_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT job_id FROM job WHERE worker_id = $1 AND action = 'D' AND status IN ({open})
          ORDER BY job_id LIMIT 1",
        open = sql_list(JobStatus::OPEN),
    )
});

/// Fails, with a free retry, the tasks a worker holds that are not finished.
async fn release_tasks(tx: &Tx<'_>, shards: u16, worker_id: i32, reason: &str) -> Result<Vec<i32>> {
    let ids: Vec<i32> = tx
        .query(UNFINISHED.as_str(), &[&worker_id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    super::tasks::fail_with_free_retry(tx, shards, &ids, reason).await?;
    Ok(ids)
}

/// What [`schedule_worker_deletion`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// A delete job was created; the worker is now D.
    Scheduled { job_id: i32 },
    /// A delete job was already pending or running; nothing new was done.
    AlreadyScheduled { job_id: i32 },
    /// A permanent worker (offline or installing) was deleted at once: it has no machine of ours.
    Deleted,
}

/// Deletes a worker the way DeleteWorker does, inside `tx` — also what the
/// watchdog calls for idle or lost workers:
/// - non-permanent: a delete job (D) is created (unless one is already open), open create/restart
///   jobs of the worker are canceled (X), the worker becomes D; the job runner deletes the machine
///   and then the row. A worker without region or flavor is deletable too (its job only removes
///   the row);
/// - permanent: deleted at once if offline (O) or installing (I), else `FailedPrecondition`;
/// - unknown worker: `NotFound`.
///
/// In every case its unfinished tasks are failed with a free retry, with `reason` in their log.
pub async fn schedule_worker_deletion(
    tx: &Tx<'_>,
    shards: u16,
    worker_id: i32,
    reason: &str,
) -> Result<Deletion> {
    let row = tx
        .query_opt(
            "SELECT status, is_permanent, worker_name, flavor_id, region_id
               FROM worker WHERE worker_id = $1 FOR UPDATE",
            &[&worker_id],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("worker {worker_id} not found")))?;
    let status = WorkerStatus::parse(row.get::<_, &str>(0))?;
    let (permanent, name): (bool, String) = (row.get(1), row.get(2));
    let (flavor_id, region_id): (Option<i32>, Option<i32>) = (row.get(3), row.get(4));
    if permanent {
        if !matches!(status, WorkerStatus::Offline | WorkerStatus::Installing) {
            return Err(Error::failed_precondition(format!(
                "will not delete permanent worker {worker_id} with status {status}: only an offline (O) \
                 or installing (I) permanent worker can be deleted"
            )));
        }
        release_tasks(tx, shards, worker_id, reason).await?;
        tx.execute("DELETE FROM worker WHERE worker_id = $1", &[&worker_id])
            .await?;
        return Ok(Deletion::Deleted);
    }
    if let Some(open) = tx
        .query_opt(OPEN_DELETE_JOB.as_str(), &[&worker_id])
        .await?
    {
        return Ok(Deletion::AlreadyScheduled {
            job_id: open.get(0),
        });
    }
    cancel_open_jobs(tx, worker_id, "canceled: the worker is being deleted").await?;
    let job_id: i32 = tx
        .query_one(
            "INSERT INTO job (worker_id, worker_name, action, flavor_id, region_id, retry)
             VALUES ($1, $2, 'D', $3, $4, $5) RETURNING job_id",
            &[&worker_id, &name, &flavor_id, &region_id, &JOB_RETRIES],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE worker SET status = 'D' WHERE worker_id = $1",
        &[&worker_id],
    )
    .await?;
    release_tasks(tx, shards, worker_id, reason).await?;
    Ok(Deletion::Scheduled { job_id })
}

/// Cancels the open jobs of a worker but its delete job (`JobStatus::OPEN`), saying `why` in
/// their log.
async fn cancel_open_jobs(tx: &Tx<'_>, worker_id: i32, why: &str) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE job SET status = 'X', lease_until = NULL, modified_at = now(), {}
              WHERE worker_id = $1 AND action <> 'D' AND status IN ({open})",
            log_append(2),
            open = sql_list(JobStatus::OPEN),
        ),
        &[&worker_id, &why],
    )
    .await?;
    Ok(())
}

/// Removes a worker row whose machine is gone (DeleteWorker with `undeployed`, and the end of a
/// delete job): its unfinished tasks are failed with a free retry, its open create jobs canceled.
/// Returns false if there was no such worker.
pub async fn remove_undeployed(
    tx: &Tx<'_>,
    shards: u16,
    worker_id: i32,
    reason: &str,
) -> Result<bool> {
    let exists = tx
        .query_opt(
            "SELECT 1 FROM worker WHERE worker_id = $1 FOR UPDATE",
            &[&worker_id],
        )
        .await?;
    if exists.is_none() {
        return Ok(false);
    }
    release_tasks(tx, shards, worker_id, reason).await?;
    cancel_open_jobs(tx, worker_id, "canceled: the worker was deleted").await?;
    tx.execute("DELETE FROM worker WHERE worker_id = $1", &[&worker_id])
        .await?;
    Ok(true)
}

/// DeleteWorker: returns the delete job's id, or 0 when the row was deleted at once.
pub async fn delete_worker(db: &Db, shards: u16, worker_id: i32, undeployed: bool) -> Result<i32> {
    db.tx(Op::Jobs, |tx| {
        async move {
            if undeployed {
                let reason =
                    format!("taskqueue: worker {worker_id} was deleted; the task is retried");
                return if remove_undeployed(tx, shards, worker_id, &reason).await? {
                    Ok(0)
                } else {
                    Err(Error::not_found(format!("worker {worker_id} not found")))
                };
            }
            let reason =
                format!("taskqueue: worker {worker_id} is being deleted; the task is retried");
            Ok(
                match schedule_worker_deletion(tx, shards, worker_id, &reason).await? {
                    Deletion::Scheduled { job_id } | Deletion::AlreadyScheduled { job_id } => {
                        job_id
                    }
                    Deletion::Deleted => 0,
                },
            )
        }
        .scope_boxed()
    })
    .await
}

/// A job as ListJobs shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: i32,
    pub status: String,
    pub flavor_id: i32,
    pub retry: i32,
    pub worker_id: i32,
    pub action: String,
    pub created_at: String,
    pub modified_at: String,
    pub progression: i32,
    pub log: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Jobs, newest first.
pub async fn list_jobs(db: &Db, limit: i64, offset: i64) -> Result<Vec<Job>> {
    db.query(
        Op::Jobs,
        "SELECT job_id, status, COALESCE(flavor_id, 0), retry, COALESCE(worker_id, 0),
                action, created_at, modified_at, progression, log
           FROM job ORDER BY job_id DESC LIMIT $1 OFFSET $2",
        &[&limit, &offset],
        |r| Job {
            job_id: r.get(0),
            status: r.get(1),
            flavor_id: r.get(2),
            retry: r.get(3),
            worker_id: r.get(4),
            action: r.get(5),
            created_at: rfc3339(r.get(6)),
            modified_at: rfc3339(r.get(7)),
            progression: i32::from(r.get::<_, i16>(8)),
            log: r.get(9),
        },
    )
    .await
}

/// Status and progression of each job that exists, by id.
pub async fn job_statuses(db: &Db, ids: &[i32]) -> Result<Vec<(i32, String, i32)>> {
    db.query(
        Op::Jobs,
        "SELECT job_id, status, progression FROM job WHERE job_id = ANY($1)",
        &[&ids],
        |r| (r.get(0), r.get(1), i32::from(r.get::<_, i16>(2))),
    )
    .await
}

/// Deletes a job row; false if there was none. A runner busy with it finds it gone and records
/// nothing.
pub async fn delete_job(db: &Db, job_id: i32) -> Result<bool> {
    let n = db
        .execute(Op::Jobs, "DELETE FROM job WHERE job_id = $1", &[&job_id])
        .await?;
    Ok(n == 1)
}

/// UpdateJob (an installing worker's progress report); false if the job does not exist.
pub async fn update_job(
    db: &Db,
    job_id: i32,
    status: Option<JobStatus>,
    append_log: Option<String>,
    progression: Option<i16>,
) -> Result<bool> {
    let status = status.map(|s| s.letter());
    let n = db
        .execute(
            Op::Jobs,
            &format!(
                "UPDATE job SET modified_at = now(),
                        status = COALESCE($2, status),
                        progression = COALESCE($3, progression),
                        {}
                  WHERE job_id = $1",
                log_append_optional(4)
            ),
            &[&job_id, &status, &progression, &append_log],
        )
        .await?;
    Ok(n == 1)
}

/// Like [`log_append`], but leaves the log alone when `$n` is NULL.
fn log_append_optional(n: usize) -> String {
    format!(
        "log = CASE WHEN ${n}::text IS NULL THEN log ELSE log || CASE WHEN log = '' THEN '' ELSE E'\\n' END
               || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || ' ' || ${n}::text END"
    )
}

/// When worker `worker_id` last registered or pinged (None: never, or no such worker). A create
/// job waits for it to move (loops::jobs).
pub async fn worker_last_ping(db: &Db, worker_id: i32) -> Result<Option<DateTime<Utc>>> {
    let last_ping = db
        .query_opt(
            Op::JobRunner,
            "SELECT last_ping_at FROM worker WHERE worker_id = $1",
            &[&worker_id],
            |r| r.get(0),
        )
        .await?;
    Ok(last_ping.flatten())
}

/// A job claimed by a runner, with what its provider call needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub job_id: i32,
    pub attempt: i32,
    pub action: JobAction,
    pub retry: i32,
    pub worker_id: Option<i32>,
    pub worker_name: Option<String>,
    /// The runner whose lease expired, when this claim takes the job over.
    pub taken_over_from: Option<String>,
    /// Full provider name, through the job's region.
    pub provider: Option<String>,
    pub region: Option<String>,
    pub flavor: Option<FlavorSpec>,
    /// The worker's concurrency (what a local or simulated worker starts with).
    pub concurrency: i32,
}

const CLAIM: &str = "
    WITH picked AS (
        SELECT j.job_id, j.status AS old_status, j.claimed_by AS old_owner,
               r.region_name, p.provider_name || '.' || p.config_name AS provider,
               f.flavor_name, f.cpu, f.mem, f.disk, COALESCE(w.concurrency, 1) AS concurrency
          FROM job j
          LEFT JOIN region r ON r.region_id = j.region_id
          LEFT JOIN provider p ON p.provider_id = r.provider_id
          LEFT JOIN flavor f ON f.flavor_id = j.flavor_id
          LEFT JOIN worker w ON w.worker_id = j.worker_id
         WHERE (j.status = 'P' AND (j.lease_until IS NULL OR j.lease_until <= now()))
            OR (j.status = 'R' AND (j.lease_until IS NULL OR j.lease_until < now()))
         ORDER BY j.job_id
         LIMIT $1
           FOR UPDATE OF j SKIP LOCKED)
    UPDATE job j
       SET status = 'R', attempt = j.attempt + 1, claimed_by = $3, modified_at = now(),
           lease_until = now() + make_interval(secs => $2)
      FROM picked
     WHERE j.job_id = picked.job_id
    RETURNING j.job_id, j.attempt, j.action, j.retry, j.worker_id, j.worker_name,
              picked.old_status, picked.old_owner, picked.region_name, picked.provider,
              picked.flavor_name, picked.cpu, picked.mem, picked.disk, picked.concurrency";

/// Claims up to `limit` runnable jobs (pending and due, or running with an expired lease) for
/// `runner`, leasing them for `lease`. Call it in a fenced transaction.
pub async fn claim(
    tx: &Tx<'_>,
    limit: i64,
    lease: Duration,
    runner: &str,
) -> Result<Vec<ClaimedJob>> {
    let stmt = tx.prepare_cached(CLAIM).await?;
    let rows = tx
        .query(&stmt, &[&limit, &lease.as_secs_f64(), &runner])
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let old_status: String = r.get(6);
        let flavor = r.get::<_, Option<String>>(10).map(|name| FlavorSpec {
            name,
            cpu: r.get(11),
            mem: r.get(12),
            disk: r.get(13),
        });
        jobs.push(ClaimedJob {
            job_id: r.get(0),
            attempt: r.get(1),
            action: JobAction::parse(r.get::<_, &str>(2))?,
            retry: r.get(3),
            worker_id: r.get(4),
            worker_name: r.get(5),
            taken_over_from: (old_status == "R").then(|| {
                r.get::<_, Option<String>>(7)
                    .unwrap_or_else(|| "an unknown runner".into())
            }),
            region: r.get(8),
            provider: r.get(9),
            flavor,
            concurrency: r.get(14),
        });
    }
    jobs.sort_by_key(|j| j.job_id);
    for j in jobs.iter().filter(|j| j.taken_over_from.is_some()) {
        let line = format!(
            "taken over by {runner}: the lease of {} expired",
            j.taken_over_from.as_deref().unwrap_or_default()
        );
        tx.execute(
            &format!("UPDATE job SET {} WHERE job_id = $1", log_append(2)),
            &[&j.job_id, &line],
        )
        .await?;
    }
    Ok(jobs)
}

/// Extends the lease of a job this runner still owns; false when it no longer does (taken over,
/// canceled, updated to a final status by its worker, or deleted).
pub async fn renew_lease(tx: &Tx<'_>, job_id: i32, attempt: i32, lease: Duration) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE job SET lease_until = now() + make_interval(secs => $3)
              WHERE job_id = $1 AND attempt = $2 AND status = 'R'",
            &[&job_id, &attempt, &lease.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// What a provider call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The machine exists (create) — with its address when the provider gave one.
    Created {
        ipv4: Option<IpAddr>,
    },
    /// The machine is gone (delete): the worker row goes too.
    Deleted,
    Restarted,
    /// Failed; retried while attempts are left.
    Failed(String),
    /// Cannot succeed (no provider implementation, nothing to act on): failed without retry.
    Refused(String),
}

/// Where a job ended up after [`finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Done(JobStatus),
    /// Failed with attempts left: back to P after the back-off.
    Retrying,
    /// The runner no longer owned the job: nothing was recorded.
    Lost,
}

/// Records the outcome of an attempt, if this runner still owns the job (status R, same attempt).
pub async fn finish(
    tx: &Tx<'_>,
    shards: u16,
    job: &ClaimedJob,
    outcome: &Outcome,
    backoff: Duration,
) -> Result<Finished> {
    let owned = tx
        .query_opt(
            "SELECT 1 FROM job WHERE job_id = $1 AND attempt = $2 AND status = 'R' FOR UPDATE",
            &[&job.job_id, &job.attempt],
        )
        .await?;
    if owned.is_none() {
        return Ok(Finished::Lost);
    }
    let (finished, line) = match outcome {
        Outcome::Failed(why) if job.retry > 0 => {
            tx.execute(
                &format!(
                    "UPDATE job SET status = 'P', retry = retry - 1, modified_at = now(),
                            lease_until = now() + make_interval(secs => $2), claimed_by = NULL, {}
                      WHERE job_id = $1",
                    log_append(3)
                ),
                &[
                    &job.job_id,
                    &backoff.as_secs_f64(),
                    &format!(
                        "attempt {} failed: {why}; retrying ({} retries left after this one)",
                        job.attempt,
                        job.retry - 1
                    ),
                ],
            )
            .await?;
            return Ok(Finished::Retrying);
        }
        Outcome::Failed(why) | Outcome::Refused(why) => {
            (JobStatus::Failed, format!("failed: {why}"))
        }
        Outcome::Created { ipv4 } => {
            if let Some(worker_id) = job.worker_id {
                tx.execute(
                    "UPDATE worker SET ipv4 = COALESCE($2, ipv4) WHERE worker_id = $1",
                    &[&worker_id, ipv4],
                )
                .await?;
            }
            let at = ipv4.map(|ip| format!(" at {ip}")).unwrap_or_default();
            (JobStatus::Succeeded, format!("created{at}"))
        }
        Outcome::Deleted => {
            if let Some(worker_id) = job.worker_id {
                let reason = format!(
                    "taskqueue: worker {} was deleted; the task is retried",
                    job.worker_name.as_deref().unwrap_or_default()
                );
                remove_undeployed(tx, shards, worker_id, &reason).await?;
            }
            (JobStatus::Succeeded, "deleted".to_string())
        }
        Outcome::Restarted => (JobStatus::Succeeded, "restarted".to_string()),
    };
    let progression: i16 = if finished == JobStatus::Succeeded {
        100
    } else {
        0
    };
    tx.execute(
        &format!(
            "UPDATE job SET status = $2, modified_at = now(), lease_until = NULL,
                    progression = GREATEST(progression, $3), {}
              WHERE job_id = $1",
            log_append(4)
        ),
        &[&job.job_id, &finished.letter(), &progression, &line],
    )
    .await?;
    Ok(Finished::Done(finished))
}

/// Open jobs (`JobStatus::OPEN`) by (action, status).
static OPEN_JOB_COUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT action, status, count(*) FROM job WHERE status IN ({open}) GROUP BY 1, 2",
        open = sql_list(JobStatus::OPEN),
    )
});

/// Open jobs by (action, status), for the leader's gauges.
pub async fn open_job_counts(tx: &Tx<'_>) -> Result<Vec<(String, String, i64)>> {
    let rows = tx.query(OPEN_JOB_COUNTS.as_str(), &[]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
