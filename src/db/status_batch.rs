//! Group commit of UpdateTaskStatus: the updates that wait together are applied by ONE call of
//! `tq_status_batch` (schema/0010_status_batch.sql), set-based, on a batch loop's connection.
//!
//! What each update does is decided here, before it is queued, by the pure rule
//! (`domain::tasks::status_change`: a bad update is refused at once and never joins a batch); the
//! function applies the decisions. A failure (F) is the exception: it may clone the task for an
//! automatic retry, so it takes the one-by-one path (`tasks::update_status`) after the batch call,
//! in its own transaction — and so does every later update of the same task in that batch, so one
//! task's updates keep their order. The batch is one serial order of its requests (they were all
//! in flight together): see the SQL file.
//!
//! With batching off (`--batch-loops 0`) every update takes the one-by-one path.

use std::collections::{HashMap, HashSet};

use metrics::counter;

use super::batch::{BatchConfig, BatchFn, Batcher, record_statement};
use super::tasks::{self, Applied};
use super::{Client, Db, Op};
use crate::domain::status::TaskStatus;
use crate::domain::tasks::{self as rules, DurationColumn, StatusChange};
use crate::error::{Error, Result};
use crate::telemetry::metrics as m;

/// The `kind` label of the status batches' metrics.
pub const STATUS_BATCH_KIND: &str = "status";

const STATUS_BATCH: &str =
    "SELECT outcomes FROM tq_status_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// One status update, validated: the task, what the update does, and its free-retry flag.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub task_id: i32,
    pub change: StatusChange,
}

impl StatusRequest {
    /// Validates an update (`InvalidArgument` for A, a negative duration, free retry on not-F).
    pub fn new(
        task_id: i32,
        new: TaskStatus,
        duration: Option<i32>,
        free_retry: bool,
    ) -> Result<StatusRequest> {
        Ok(StatusRequest {
            task_id,
            change: rules::status_change(new, duration, free_retry)?,
        })
    }

    /// Whether the batch call can apply it (everything but a failure).
    fn set_based(&self) -> bool {
        self.change.new != TaskStatus::Failed
    }
}

/// How the status updates of a replica reach the database: through the status batcher, or one by
/// one when batching is off.
pub struct StatusUpdates {
    db: Db,
    shards: u16,
    batcher: Option<Batcher<StatusRequest, Result<Applied>>>,
}

impl StatusUpdates {
    /// `loops` batch loops (0: no batching) of at most `max` updates each.
    pub fn start(db: Db, shards: u16, loops: usize, max: usize) -> StatusUpdates {
        let batcher = Batcher::start_unless_off(
            db.clone(),
            BatchConfig::requests(STATUS_BATCH_KIND, Op::StatusBatch, loops, max),
            StatusBatch {
                db: db.clone(),
                shards,
            },
        );
        StatusUpdates {
            db,
            shards,
            batcher,
        }
    }

    /// Applies one update (validated by [`StatusRequest::new`]).
    pub async fn update(&self, req: StatusRequest) -> Result<Applied> {
        match &self.batcher {
            Some(b) => b.submit(req).await?,
            None => one_by_one(&self.db, self.shards, &req).await,
        }
    }

    /// Runs the queued updates and stops the batch loops (shutdown, after the RPCs drained).
    pub async fn shutdown(&self) {
        if let Some(b) = &self.batcher {
            b.shutdown().await;
        }
    }
}

async fn one_by_one(db: &Db, shards: u16, r: &StatusRequest) -> Result<Applied> {
    let c = &r.change;
    let duration = c.duration.map(|(_, d)| d);
    tasks::update_status(db, shards, r.task_id, c.new, duration, c.free_retry).await
}

/// The `BatchFn` of status updates: [`status_batch`] (the pool serves the failures' path).
pub struct StatusBatch {
    pub db: Db,
    pub shards: u16,
}

#[async_trait::async_trait]
impl BatchFn<StatusRequest, Result<Applied>> for StatusBatch {
    async fn run(
        &self,
        client: &mut Client,
        reqs: &[StatusRequest],
    ) -> Result<Vec<Result<Applied>>> {
        status_batch(client, &self.db, self.shards, reqs).await
    }
}

/// Where each request of a batch goes: `Some(round)` for the batch call (1 for a task's first
/// update in the batch, 2 for its second, …), `None` for the one-by-one path after it (a failure,
/// and every later update of its task). This order is the batch's serial order (with the
/// updates of one round before its successes' promotions, in the SQL).
pub fn plan_rounds(reqs: &[StatusRequest]) -> Vec<Option<i32>> {
    let mut seen: HashMap<i32, i32> = HashMap::new();
    let mut later: HashSet<i32> = HashSet::new();
    reqs.iter()
        .map(|r| {
            if later.contains(&r.task_id) || !r.set_based() {
                later.insert(r.task_id);
                return None;
            }
            let round = seen.entry(r.task_id).or_insert(0);
            *round += 1;
            Some(*round)
        })
        .collect()
}

/// Applies a batch of validated updates, one answer per request in order: the set-based ones in
/// one call of `tq_status_batch` on `c` (autocommit: the call is its own transaction; a conflict
/// fails the whole batch and the batcher runs it again, nothing having been committed), then the
/// others one by one through the pool of `db`, in order (their errors are their own).
pub async fn status_batch(
    c: &Client,
    db: &Db,
    shards: u16,
    reqs: &[StatusRequest],
) -> Result<Vec<Result<Applied>>> {
    let rounds = plan_rounds(reqs);
    let batched: Vec<usize> = (0..reqs.len()).filter(|&i| rounds[i].is_some()).collect();
    let mut out: Vec<Option<Result<Applied>>> = (0..reqs.len()).map(|_| None).collect();
    if !batched.is_empty() {
        let outcomes = call(c, reqs, &rounds, &batched).await?;
        record_statement(STATUS_BATCH_KIND, batched.len());
        for (&i, code) in batched.iter().zip(outcomes) {
            out[i] = Some(answer(&reqs[i], code.as_deref()));
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        if rounds[i].is_none() {
            out[i] = Some(one_by_one(db, shards, r).await);
        }
    }
    Ok(out
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| Err(Error::internal("an update of the batch was not answered")))
        })
        .collect())
}

async fn call(
    c: &Client,
    reqs: &[StatusRequest],
    rounds: &[Option<i32>],
    batched: &[usize],
) -> Result<Vec<Option<String>>> {
    let pick = |i: &usize| &reqs[*i];
    let tasks: Vec<i32> = batched.iter().map(|i| pick(i).task_id).collect();
    let round: Vec<i32> = batched.iter().map(|&i| rounds[i].unwrap_or(1)).collect();
    let statuses: Vec<&str> = batched
        .iter()
        .map(|i| pick(i).change.new.letter())
        .collect();
    let columns: Vec<&str> = batched
        .iter()
        .map(|i| match pick(i).change.duration {
            Some((DurationColumn::Download, _)) => "download",
            Some((DurationColumn::Run, _)) => "run",
            Some((DurationColumn::Upload, _)) => "upload",
            None => "",
        })
        .collect();
    let seconds: Vec<Option<i32>> = batched
        .iter()
        .map(|i| pick(i).change.duration.map(|(_, d)| d))
        .collect();
    let flag = |f: fn(&StatusChange) -> bool| -> Vec<bool> {
        batched.iter().map(|i| f(&pick(i).change)).collect()
    };
    let starts = flag(|c| c.starts_running);
    let releases = flag(|c| c.releases_worker);
    let pending = flag(|c| c.becomes_pending);
    let activity = flag(|c| c.worker_activity);
    let promote = flag(|c| c.new == TaskStatus::Succeeded);
    let stmt = c.prepare_cached(STATUS_BATCH).await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &tasks, &round, &statuses, &columns, &seconds, &starts, &releases, &pending,
                &activity, &promote,
            ],
        )
        .await?;
    let outcomes: Vec<Option<String>> = row.get("outcomes");
    if outcomes.len() != batched.len() {
        return Err(Error::internal(format!(
            "tq_status_batch gave {} outcomes for {} updates",
            outcomes.len(),
            batched.len()
        )));
    }
    Ok(outcomes)
}

/// The answer of one set-based update from its outcome letter (the messages of the one-by-one
/// path, word for word).
fn answer(r: &StatusRequest, code: Option<&str>) -> Result<Applied> {
    let task_id = r.task_id;
    match code {
        Some("U") => {
            counter!(m::TASK_STATUS_UPDATES, "status" => r.change.new.letter()).increment(1);
            Ok(Applied::Updated { retried_as: None })
        }
        Some("S") => Ok(Applied::Unchanged),
        Some("N") => Err(Error::not_found(format!("task {task_id} not found"))),
        Some("H") => Err(tasks::hidden_task(task_id)),
        other => Err(Error::internal(format!(
            "tq_status_batch: unknown outcome {other:?} for task {task_id}"
        ))),
    }
}
