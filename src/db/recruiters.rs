//! Recruiters (`recruiter`): CRUD for the RPCs, and the reads and writes of a recruitment cycle
//! (recruiter states with their step's load, recyclable workers, region usage, workflow counters,
//! recycling with weight rescaling, timers, disabling).

use crate::domain::ownership::Owner;
use std::collections::HashMap;
use std::sync::LazyLock;

use scoped_futures::ScopedFutureExt as _;

use super::locks::NS_WORKER;
use super::{Db, Op};
use crate::domain::limits;
use crate::domain::recruitment::{Candidate, Recycle, Resources, Sizing, validate_settings};
use crate::domain::status::{RecyclableScope, TaskStatus, sql_list};
use crate::error::{Code, Error, Result};

use super::Tx;

/// A recruiter's settings, as the API carries them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recruiter {
    pub step_id: i32,
    pub rank: i32,
    pub protofilter: String,
    pub concurrency: Option<i32>,
    pub prefetch: Option<i32>,
    pub max_workers: Option<i32>,
    pub rounds: i32,
    pub timeout: i32,
    pub cpu_per_task: Option<i32>,
    pub memory_per_task: Option<f64>,
    pub disk_per_task: Option<f64>,
    pub prefetch_percent: Option<i32>,
    pub concurrency_min: Option<i32>,
    pub concurrency_max: Option<i32>,
}

/// The fields UpdateRecruiter may change (`None` = unchanged).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecruiterChanges {
    pub protofilter: Option<String>,
    pub concurrency: Option<i32>,
    pub prefetch: Option<i32>,
    pub max_workers: Option<i32>,
    pub rounds: Option<i32>,
    pub timeout: Option<i32>,
    pub cpu_per_task: Option<i32>,
    pub memory_per_task: Option<f64>,
    pub disk_per_task: Option<f64>,
    pub prefetch_percent: Option<i32>,
    pub concurrency_min: Option<i32>,
    pub concurrency_max: Option<i32>,
}

impl RecruiterChanges {
    pub fn is_empty(&self) -> bool {
        *self == RecruiterChanges::default()
    }

    pub fn apply(&self, r: &mut Recruiter) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { r.$f = v.clone().into(); } )* };
        }
        set!(
            concurrency,
            prefetch,
            max_workers,
            cpu_per_task,
            memory_per_task,
            disk_per_task,
            prefetch_percent,
            concurrency_min,
            concurrency_max
        );
        if let Some(p) = &self.protofilter {
            r.protofilter = p.clone();
        }
        if let Some(v) = self.rounds {
            r.rounds = v;
        }
        if let Some(v) = self.timeout {
            r.timeout = v;
        }
    }
}

impl Recruiter {
    pub fn sizing(&self) -> Sizing {
        Sizing {
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            prefetch_percent: self.prefetch_percent,
            cpu_per_task: self.cpu_per_task,
            memory_per_task: self.memory_per_task,
            disk_per_task: self.disk_per_task,
            concurrency_min: self.concurrency_min,
            concurrency_max: self.concurrency_max,
        }
    }

    /// The original's validation (see `domain::recruitment::validate_settings`).
    pub fn validate(&self) -> crate::domain::Result<()> {
        validate_settings(
            &self.protofilter,
            self.rounds,
            self.timeout,
            self.max_workers,
            &self.sizing(),
        )
    }
}

const COLUMNS: &str =
    "step_id, rank, protofilter, worker_concurrency, worker_prefetch, maximum_workers,
    rounds, timeout, cpu_per_task, memory_per_task, disk_per_task, prefetch_percent,
    concurrency_min, concurrency_max";

fn from_row(r: &tokio_postgres::Row) -> Recruiter {
    Recruiter {
        step_id: r.get("step_id"),
        rank: r.get("rank"),
        protofilter: r.get("protofilter"),
        concurrency: r.get("worker_concurrency"),
        prefetch: r.get("worker_prefetch"),
        max_workers: r.get("maximum_workers"),
        rounds: r.get("rounds"),
        timeout: r.get("timeout"),
        cpu_per_task: r.get("cpu_per_task"),
        memory_per_task: r.get("memory_per_task"),
        disk_per_task: r.get("disk_per_task"),
        prefetch_percent: r.get("prefetch_percent"),
        concurrency_min: r.get("concurrency_min"),
        concurrency_max: r.get("concurrency_max"),
    }
}

/// Stores a recruiter owned by `owner` (who, with admins, may change it).
pub async fn create(db: &Db, r: &Recruiter, owner: Owner) -> Result<()> {
    db.execute(
        Op::Recruiters,
        &format!(
            "INSERT INTO recruiter ({COLUMNS}, owner_id, owner_worker_token)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ),
        &[
            &r.step_id,
            &r.rank,
            &r.protofilter,
            &r.concurrency,
            &r.prefetch,
            &r.max_workers,
            &r.rounds,
            &r.timeout,
            &r.cpu_per_task,
            &r.memory_per_task,
            &r.disk_per_task,
            &r.prefetch_percent,
            &r.concurrency_min,
            &r.concurrency_max,
            &owner.user_id,
            &owner.worker_token,
        ],
    )
    .await
    .map_err(|e| match e {
        e if e.code == Code::AlreadyExists => Error::already_exists(format!(
            "step {} already has a recruiter of rank {}",
            r.step_id, r.rank
        )),
        e if e.code == Code::NotFound => Error::not_found(format!("step {} not found", r.step_id)),
        e => e,
    })?;
    Ok(())
}

pub async fn list(db: &Db, step_id: Option<i32>) -> Result<Vec<Recruiter>> {
    db.query(
        Op::Recruiters,
        &format!(
            "SELECT {COLUMNS} FROM recruiter WHERE $1::int4 IS NULL OR step_id = $1
              ORDER BY step_id, rank LIMIT $2"
        ),
        &[&step_id, &limits::LIST_RECRUITERS.max],
        from_row,
    )
    .await
}

/// Applies `changes` to recruiter (step, rank) if the result is still valid (the transaction is
/// rolled back otherwise); any update re-enables a recruiter that a bad protofilter had disabled.
pub async fn update(db: &Db, step_id: i32, rank: i32, changes: &RecruiterChanges) -> Result<()> {
    db.tx(Op::Recruiters, |tx| {
        async move {
            let row = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM recruiter WHERE step_id = $1 AND rank = $2 FOR UPDATE"),
                    &[&step_id, &rank],
                )
                .await?
                .ok_or_else(|| Error::not_found(format!("recruiter of step {step_id} rank {rank} not found")))?;
            let mut r = from_row(&row);
            changes.apply(&mut r);
            r.validate()?;
            tx.execute(
                "UPDATE recruiter SET protofilter = $3, worker_concurrency = $4, worker_prefetch = $5,
                        maximum_workers = $6, rounds = $7, timeout = $8, cpu_per_task = $9,
                        memory_per_task = $10, disk_per_task = $11, prefetch_percent = $12,
                        concurrency_min = $13, concurrency_max = $14, disabled_reason = NULL
                  WHERE step_id = $1 AND rank = $2",
                &[
                    &step_id,
                    &rank,
                    &r.protofilter,
                    &r.concurrency,
                    &r.prefetch,
                    &r.max_workers,
                    &r.rounds,
                    &r.timeout,
                    &r.cpu_per_task,
                    &r.memory_per_task,
                    &r.disk_per_task,
                    &r.prefetch_percent,
                    &r.concurrency_min,
                    &r.concurrency_max,
                ],
            )
            .await?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// Deletes a recruiter; false if there was none.
pub async fn delete(db: &Db, step_id: i32, rank: i32) -> Result<bool> {
    let n = db
        .execute(
            Op::Recruiters,
            "DELETE FROM recruiter WHERE step_id = $1 AND rank = $2",
            &[&step_id, &rank],
        )
        .await?;
    Ok(n == 1)
}

/// A recruiter with what a cycle needs to know about its step.
#[derive(Debug, Clone, PartialEq)]
pub struct RecruiterState {
    pub recruiter: Recruiter,
    pub workflow_id: i32,
    pub disabled_reason: Option<String>,
    pub pending: i64,
    pub free_rate: f64,
    pub current_workers: i64,
    /// Seconds since it became active or last deployed (0 when it is not active yet).
    pub timer_elapsed: f64,
}

/// Load of a worker: Σ weight of its tasks holding capacity (`TaskStatus::HOLDING_CAPACITY`).
static LOAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "(SELECT COALESCE(sum(t.weight), 0) FROM task t
                      WHERE t.worker_id = w.worker_id AND t.status IN ({holding}))",
        holding = sql_list(TaskStatus::HOLDING_CAPACITY),
    )
});

/// Every recruiter with its step's pending count, free slots and workers (those being deleted
/// excluded), ordered by (step, rank).
pub async fn states(tx: &Tx<'_>) -> Result<Vec<RecruiterState>> {
    let sql = format!(
        "SELECT {cols}, s.workflow_id, rc.disabled_reason,
                (SELECT count(*) FROM task t WHERE t.step_id = rc.step_id AND t.status = 'P') AS pending,
                (SELECT COALESCE(sum(GREATEST(w.concurrency - {load}, 0)), 0)::float8
                   FROM worker w WHERE w.step_id = rc.step_id AND w.status <> 'D') AS free_rate,
                (SELECT count(*) FROM worker w WHERE w.step_id = rc.step_id AND w.status <> 'D') AS workers,
                EXTRACT(EPOCH FROM now() - GREATEST(COALESCE(rc.active_since, now()), rc.last_deploy_at))::float8
                    AS elapsed
           FROM recruiter rc JOIN step s ON s.step_id = rc.step_id
          ORDER BY rc.step_id, rc.rank",
        load = *LOAD,
        cols = COLUMNS
            .split(',')
            .map(|c| format!("rc.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = tx.query(sql.as_str(), &[]).await?;
    Ok(rows
        .iter()
        .map(|r| RecruiterState {
            recruiter: from_row(r),
            workflow_id: r.get("workflow_id"),
            disabled_reason: r.get("disabled_reason"),
            pending: r.get("pending"),
            free_rate: r.get("free_rate"),
            current_workers: r.get("workers"),
            timer_elapsed: r.get("elapsed"),
        })
        .collect())
}

/// Workers in status R, scope G or W, whose (flavor, region) is one of `offers`.
pub async fn candidates(tx: &Tx<'_>, offers: &[(i32, i32)]) -> Result<Vec<Candidate>> {
    let flavors: Vec<i32> = offers.iter().map(|o| o.0).collect();
    let regions: Vec<i32> = offers.iter().map(|o| o.1).collect();
    let sql = format!(
        "SELECT w.worker_id, w.step_id, s.workflow_id, w.flavor_id, w.region_id, f.cpu, f.mem, f.disk,
                w.concurrency, {load}::float8 AS load, w.recyclable_scope
           FROM worker w
           JOIN flavor f ON f.flavor_id = w.flavor_id
           JOIN unnest($1::int4[], $2::int4[]) AS o(flavor_id, region_id)
             ON o.flavor_id = w.flavor_id AND o.region_id = w.region_id
           LEFT JOIN step s ON s.step_id = w.step_id
          WHERE w.status = 'R' AND w.recyclable_scope IN ({recyclable})
          ORDER BY w.worker_id",
        load = *LOAD,
        recyclable = sql_list(RecyclableScope::RECYCLABLE),
    );
    let rows = tx.query(sql.as_str(), &[&flavors, &regions]).await?;
    rows.iter()
        .map(|r| {
            Ok(Candidate {
                worker_id: r.get(0),
                step_id: r.get(1),
                workflow_id: r.get(2),
                flavor_id: r.get(3),
                region_id: r.get(4),
                resources: Resources {
                    cpu: r.get(5),
                    mem: r.get(6),
                    disk: r.get(7),
                },
                concurrency: r.get(8),
                load: r.get(9),
                scope: RecyclableScope::parse(r.get::<_, &str>(10))?,
            })
        })
        .collect()
}

/// Pending tasks of each of `steps`.
pub async fn pending_by_step(tx: &Tx<'_>, steps: &[i32]) -> Result<HashMap<i32, i64>> {
    let rows = tx
        .query(
            "SELECT step_id, count(*) FROM task WHERE status = 'P' AND step_id = ANY($1) GROUP BY step_id",
            &[&steps],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Workflow id → (workers attached to its steps and not being deleted, maximum_workers).
pub async fn workflow_counters(
    tx: &Tx<'_>,
    workflows: &[i32],
) -> Result<HashMap<i32, (i64, Option<i32>)>> {
    let rows = tx
        .query(
            "SELECT wf.workflow_id, count(w.worker_id), wf.maximum_workers
               FROM workflow wf
               LEFT JOIN step s ON s.workflow_id = wf.workflow_id
               LEFT JOIN worker w ON w.step_id = s.step_id AND w.status <> 'D'
              WHERE wf.workflow_id = ANY($1)
              GROUP BY wf.workflow_id",
            &[&workflows],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Rescales the weights of a recycled worker's tasks (`TaskStatus::REWEIGHED_ON_RECYCLE`) by $2.
static REWEIGH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE task SET weight = weight * $2
          WHERE worker_id = $1 AND status IN ({reweighed}) AND NOT hidden",
        reweighed = sql_list(TaskStatus::REWEIGHED_ON_RECYCLE),
    )
});

/// Re-targets a worker to another step with a new concurrency and prefetch, rescaling the weights
/// of the tasks it holds (`TaskStatus::REWEIGHED_ON_RECYCLE`: A, C, R, D, U) by new/old so they
/// keep their share of the machine. Takes the worker's lock (the one its pings take) and
/// re-checks, under it, that the worker is still R on the step the plan saw with the concurrency
/// it saw; false (nothing done) otherwise.
pub async fn recycle(tx: &Tx<'_>, r: &Recycle) -> Result<bool> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NS_WORKER, &r.worker_id],
    )
    .await?;
    let still = tx
        .query_opt(
            "SELECT 1 FROM worker WHERE worker_id = $1 AND status = 'R' AND concurrency = $2
                AND step_id IS NOT DISTINCT FROM $3 FOR UPDATE",
            &[&r.worker_id, &r.old_concurrency, &r.from_step],
        )
        .await?;
    if still.is_none() {
        return Ok(false);
    }
    if r.new_concurrency != r.old_concurrency && r.old_concurrency > 0 {
        let factor = f64::from(r.new_concurrency) / f64::from(r.old_concurrency);
        tx.execute(REWEIGH.as_str(), &[&r.worker_id, &factor])
            .await?;
    }
    tx.execute(
        "UPDATE worker SET step_id = $2, concurrency = $3, prefetch = $4 WHERE worker_id = $1",
        &[
            &r.worker_id,
            &r.to_step,
            &r.new_concurrency,
            &r.new_prefetch,
        ],
    )
    .await?;
    Ok(true)
}

/// Timers (docs/architecture.md#state-lives-in-postgresql): `active` recruiters start their clock
/// if it is not running, the others stop it; `attempted` ones restart their deployment clock.
pub async fn set_timers(
    tx: &Tx<'_>,
    active: &[(i32, i32)],
    inactive: &[(i32, i32)],
    attempted: &[(i32, i32)],
) -> Result<()> {
    let split = |v: &[(i32, i32)]| -> (Vec<i32>, Vec<i32>) { v.iter().copied().unzip() };
    let (steps, ranks) = split(active);
    tx.execute(
        "UPDATE recruiter rc SET active_since = now()
           FROM unnest($1::int4[], $2::int4[]) AS k(step_id, rank)
          WHERE rc.step_id = k.step_id AND rc.rank = k.rank AND rc.active_since IS NULL",
        &[&steps, &ranks],
    )
    .await?;
    let (steps, ranks) = split(inactive);
    tx.execute(
        "UPDATE recruiter rc SET active_since = NULL
           FROM unnest($1::int4[], $2::int4[]) AS k(step_id, rank)
          WHERE rc.step_id = k.step_id AND rc.rank = k.rank AND rc.active_since IS NOT NULL",
        &[&steps, &ranks],
    )
    .await?;
    let (steps, ranks) = split(attempted);
    tx.execute(
        "UPDATE recruiter rc SET last_deploy_at = now()
           FROM unnest($1::int4[], $2::int4[]) AS k(step_id, rank)
          WHERE rc.step_id = k.step_id AND rc.rank = k.rank",
        &[&steps, &ranks],
    )
    .await?;
    Ok(())
}

/// Disables a recruiter that cannot run, says why in a worker event, and returns whether it was
/// enabled before (so the caller logs it once).
pub async fn disable(tx: &Tx<'_>, r: &Recruiter, reason: &str) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE recruiter SET disabled_reason = $3
              WHERE step_id = $1 AND rank = $2 AND disabled_reason IS DISTINCT FROM $3",
            &[&r.step_id, &r.rank, &reason],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    let details = serde_json::json!({
        "step_id": r.step_id,
        "rank": r.rank,
        "protofilter": r.protofilter,
        "reason": reason,
    });
    tx.execute(
        "INSERT INTO worker_event (worker_name, level, event_class, message, details_json)
         VALUES ('', 'E', 'recruiter', $1, $2)",
        &[
            &format!(
                "recruiter of step {} rank {} disabled: {reason}",
                r.step_id, r.rank
            ),
            &details,
        ],
    )
    .await?;
    Ok(true)
}

/// Visible tasks in flight (`TaskStatus::IN_FLIGHT`), by status letter (an index scan of
/// `task_status_idx` over live tasks only: terminal tasks are never read).
static TASK_COUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    SELECT status, count(*) FROM task
     WHERE NOT hidden AND status IN ({in_flight})
     GROUP BY status",
        in_flight = sql_list(TaskStatus::IN_FLIGHT),
    )
});

/// Running workers that hold no task and could take one (capacity > 0) while tasks of their step
/// are pending: what a dispatch that keeps up should bring to zero at their next ping ("hold no
/// task": none holding capacity, `TaskStatus::HOLDING_CAPACITY`).
static IDLE_ELIGIBLE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    SELECT count(*) FROM worker w
     WHERE w.status = 'R' AND w.concurrency + w.prefetch > 0
       AND NOT EXISTS (SELECT 1 FROM task t
                        WHERE t.worker_id = w.worker_id AND t.status IN ({holding}))
       AND EXISTS (SELECT 1 FROM task p
                    WHERE COALESCE(p.step_id, 0) = COALESCE(w.step_id, 0) AND p.status = 'P')",
        holding = sql_list(TaskStatus::HOLDING_CAPACITY),
    )
});

/// Queue gauges published by the leader: tasks by status, and idle workers with pending work.
pub async fn queue_counts(tx: &Tx<'_>) -> Result<(Vec<(String, i64)>, i64)> {
    let rows = tx.query(TASK_COUNTS.as_str(), &[]).await?;
    let tasks = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let idle = tx.query_one(IDLE_ELIGIBLE.as_str(), &[]).await?;
    Ok((tasks, idle.get(0)))
}

/// Workers by (status, provider full name or "none"), for the leader's gauges.
pub async fn worker_counts(tx: &Tx<'_>) -> Result<Vec<(String, String, i64)>> {
    let rows = tx
        .query(
            "SELECT w.status, COALESCE(p.provider_name || '.' || p.config_name, 'none'), count(*)
               FROM worker w
               LEFT JOIN region r ON r.region_id = w.region_id
               LEFT JOIN provider p ON p.provider_id = r.provider_id
              GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
