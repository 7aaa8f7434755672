//! Group commit of SubmitTask where it is free: the submissions without prerequisites that wait
//! together are stored by ONE statement (`SUBMIT_MANY`: the ids, the rows, and the claim cursors
//! of the new pending tasks), on a batch loop's connection. A submission with prerequisites
//! resolves and locks them (`tasks::submit`), so it takes the one-by-one path after the batch
//! statement, as does every submission of a batch whose statement failed for a reason other than a
//! conflict (a step deleted under it, say): each then gets its own answer, as it would alone.
//!
//! Concurrent submissions have no order among themselves; within one batch the ids follow
//! arrival order. With batching off (`--batch-loops 0`) every submission is one transaction.

use metrics::counter;

use super::batch::{BatchConfig, BatchFn, Batcher, record_statement};
use super::tasks::{self, NewTask};
use super::{Client, Db, Op};
use crate::error::{Error, Result};
use crate::telemetry::metrics as m;

/// The `kind` label of the submission batches' metrics.
pub const SUBMIT_BATCH_KIND: &str = "submit";

/// Every submission of the batch in one statement: `req` takes an id per row whose step exists
/// (materialized: each row's `nextval` is taken once), `ins` stores the rows, `rew` lowers the
/// claim cursors of the (step, shard) of the new pending tasks; the answer maps positions to ids
/// (a position with no id: its step was not found). Input and resource lists come as JSON arrays
/// (one text per task: SQL arrays cannot be ragged).
const SUBMIT_MANY: &str = "
    WITH req AS MATERIALIZED (
        SELECT nextval('task_task_id_seq')::integer AS id, u.*
          FROM unnest($2::integer[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                      $8::text[], $9::text[], $10::text[], $11::text[], $12::integer[],
                      $13::boolean[], $14::boolean[], $15::float8[], $16::float8[], $17::float8[],
                      $18::integer[], $19::boolean[])
               WITH ORDINALITY AS u(step_id, task_name, command, shell, container, container_options,
                                    status, input, resource, output, retry, is_final, uses_cache,
                                    download_timeout, running_timeout, upload_timeout, owner_id,
                                    owner_worker_token, n)
         WHERE u.step_id IS NULL OR EXISTS (SELECT 1 FROM step s WHERE s.step_id = u.step_id)
         ORDER BY u.n
    ), ins AS (
        INSERT INTO task (task_id, shard, step_id, task_name, command, shell, container,
                          container_options, status, input, resource, output, retry, is_final,
                          uses_cache, download_timeout, running_timeout, upload_timeout,
                          pending_since, owner_id, owner_worker_token)
        SELECT r.id, (r.id % $1)::smallint, r.step_id, r.task_name, r.command, r.shell, r.container,
               r.container_options, r.status,
               ARRAY(SELECT json_array_elements_text(r.input::json)),
               ARRAY(SELECT json_array_elements_text(r.resource::json)),
               r.output, r.retry, r.is_final, r.uses_cache, r.download_timeout, r.running_timeout,
               r.upload_timeout, CASE WHEN r.status = 'P' THEN now() END, r.owner_id,
               r.owner_worker_token
          FROM req r
        RETURNING task_id, shard, step_id, status
    ), rew AS (
        UPDATE assign_cursor c SET next_task_id = x.id
          FROM (SELECT COALESCE(i.step_id, 0) AS k, i.shard AS s, min(i.task_id) AS id
                  FROM ins i WHERE i.status = 'P' GROUP BY 1, 2) x
         WHERE c.step_key = x.k AND c.shard = x.s AND c.next_task_id > x.id
    )
    SELECT n::integer AS n, id FROM req";

/// How the submissions of a replica reach the database: through the submission batcher, or one
/// transaction each when batching is off.
pub struct Submissions {
    db: Db,
    shards: u16,
    batcher: Option<Batcher<NewTask, Result<i32>>>,
}

impl Submissions {
    /// `loops` batch loops (0: no batching) of at most `max` submissions each.
    pub fn start(db: Db, shards: u16, loops: usize, max: usize) -> Submissions {
        let batcher = Batcher::start_unless_off(
            db.clone(),
            BatchConfig::requests(SUBMIT_BATCH_KIND, Op::SubmitBatch, loops, max),
            SubmitBatch {
                db: db.clone(),
                shards,
            },
        );
        Submissions {
            db,
            shards,
            batcher,
        }
    }

    /// Stores one validated submission; returns its task id.
    pub async fn submit(&self, task: NewTask) -> Result<i32> {
        match &self.batcher {
            Some(b) => b.submit(task).await?,
            None => tasks::submit(&self.db, self.shards, &task).await,
        }
    }

    /// Runs the queued submissions and stops the batch loops (shutdown, after the RPCs drained).
    pub async fn shutdown(&self) {
        if let Some(b) = &self.batcher {
            b.shutdown().await;
        }
    }
}

/// The `BatchFn` of submissions: [`submit_batch`].
pub struct SubmitBatch {
    pub db: Db,
    pub shards: u16,
}

#[async_trait::async_trait]
impl BatchFn<NewTask, Result<i32>> for SubmitBatch {
    async fn run(&self, client: &mut Client, reqs: &[NewTask]) -> Result<Vec<Result<i32>>> {
        submit_batch(client, &self.db, self.shards, reqs).await
    }
}

/// Stores a batch of submissions, one answer per submission in order: those without
/// prerequisites in one statement on `c` (autocommit), the others one by one through the pool of
/// `db` after it. A conflict fails the batch (the batcher runs it again; nothing was stored);
/// another error of the statement sends its submissions the one-by-one way too.
pub async fn submit_batch(
    c: &Client,
    db: &Db,
    shards: u16,
    reqs: &[NewTask],
) -> Result<Vec<Result<i32>>> {
    let many: Vec<usize> = (0..reqs.len())
        .filter(|&i| reqs[i].rules.dependencies.is_empty())
        .collect();
    let mut out: Vec<Option<Result<i32>>> = (0..reqs.len()).map(|_| None).collect();
    if !many.is_empty() {
        match store_many(c, shards, reqs, &many).await {
            Ok(ids) => {
                record_statement(SUBMIT_BATCH_KIND, many.len());
                for (&i, id) in many.iter().zip(ids) {
                    out[i] = Some(match id {
                        Some(id) => {
                            counter!(m::TASKS_SUBMITTED).increment(1);
                            Ok(id)
                        }
                        None => Err(step_not_found(&reqs[i])),
                    });
                }
            }
            Err(e) if e.retryable => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, submissions = many.len(),
                    "a submission batch failed; its submissions go one by one");
            }
        }
    }
    for (i, task) in reqs.iter().enumerate() {
        if out[i].is_none() {
            out[i] = Some(tasks::submit(db, shards, task).await);
        }
    }
    Ok(out
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(Error::internal(
                    "a submission of the batch was not answered",
                ))
            })
        })
        .collect())
}

/// The message of the one-by-one path for a missing step.
fn step_not_found(task: &NewTask) -> Error {
    let step = task.step_id.unwrap_or_default();
    Error::not_found(format!("step {step} not found"))
}

async fn store_many(
    c: &Client,
    shards: u16,
    reqs: &[NewTask],
    many: &[usize],
) -> Result<Vec<Option<i32>>> {
    let pick: Vec<&NewTask> = many.iter().map(|&i| &reqs[i]).collect();
    let col = |f: fn(&NewTask) -> Option<String>| -> Vec<Option<String>> {
        pick.iter().map(|t| f(t)).collect()
    };
    let json = |f: fn(&NewTask) -> &Vec<String>| -> Result<Vec<String>> {
        pick.iter()
            .map(|t| {
                serde_json::to_string(f(t))
                    .map_err(|e| Error::internal(format!("encoding a list: {e}")))
            })
            .collect()
    };
    let steps: Vec<Option<i32>> = pick.iter().map(|t| t.step_id).collect();
    let names = col(|t| t.task_name.clone());
    let commands = col(|t| Some(t.rules.command.clone()));
    let shells = col(|t| t.shell.clone());
    let containers = col(|t| Some(t.rules.container.clone()));
    let options = col(|t| t.container_options.clone());
    // No prerequisites: the status is decided without reading anything.
    let statuses: Vec<&str> = pick
        .iter()
        .map(|t| t.rules.initial_status(&[]).letter())
        .collect();
    let inputs = json(|t| &t.input)?;
    let resources = json(|t| &t.resource)?;
    let outputs = col(|t| t.output.clone());
    let retries: Vec<Option<i32>> = pick.iter().map(|t| t.rules.retry).collect();
    let finals: Vec<Option<bool>> = pick.iter().map(|t| t.is_final).collect();
    let caches: Vec<Option<bool>> = pick.iter().map(|t| t.uses_cache).collect();
    let timeout = |k: usize| -> Vec<Option<f64>> {
        pick.iter()
            .map(|t| t.rules.timeouts[k].map(f64::from))
            .collect()
    };
    let (download, running, upload) = (timeout(0), timeout(1), timeout(2));
    let owners: Vec<Option<i32>> = pick.iter().map(|t| t.owner.user_id).collect();
    let tokens: Vec<bool> = pick.iter().map(|t| t.owner.worker_token).collect();
    let shards = i32::from(shards);
    let stmt = c.prepare_cached(SUBMIT_MANY).await?;
    let rows = c
        .query(
            &stmt,
            &[
                &shards,
                &steps,
                &names,
                &commands,
                &shells,
                &containers,
                &options,
                &statuses,
                &inputs,
                &resources,
                &outputs,
                &retries,
                &finals,
                &caches,
                &download,
                &running,
                &upload,
                &owners,
                &tokens,
            ],
        )
        .await?;
    let mut ids = vec![None; many.len()];
    for row in rows {
        let n: i32 = row.get("n");
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|k| ids.get_mut(k)) {
            *slot = Some(row.get("id"));
        }
    }
    Ok(ids)
}
