//! Tasks (`task`, `task_dependencies`): submission with its dependency edges in one transaction,
//! status updates with their side effects (durations, dependency promotion, automatic retry), manual
//! retry, listing, and failing tasks with a free retry for the areas that take tasks away from a
//! worker (re-registration, deletion, watchdog).
//!
//! Locking order, to stay deadlock-free: a task row (FOR UPDATE) before its dependents' rows (sorted),
//! then `assign_cursor` rows (sorted). Submission locks its prerequisites FOR SHARE, so a prerequisite
//! cannot change status while a dependent is being attached to it.

use crate::domain::ownership::Owner;
use std::collections::BTreeMap;

use metrics::counter;
use scoped_futures::ScopedFutureExt as _;
use tokio_postgres::Row;

use super::logs::{LogStream, append_system_line};
use super::{Db, Op};
use crate::domain::limits;
use crate::domain::status::TaskStatus;
use crate::domain::tasks::{self as rules, DurationColumn, StatusChange, Submission};
use crate::error::{Code, Error, Result};
use crate::proto as pb;
use crate::telemetry::metrics as m;

use super::Tx;

/// Columns of a task as the API shows it (`pb::Task`), from `task t LEFT JOIN step s`.
pub const TASK_COLUMNS: &str =
    "t.task_id, t.command, t.shell, t.container, t.container_options, t.step_id,
    t.input, t.resource, t.output, t.retry, t.is_final, t.uses_cache, t.download_timeout,
    t.running_timeout, t.upload_timeout, t.status, t.worker_id, s.workflow_id, t.task_name,
    t.retry_count, t.hidden, t.previous_task_id, t.weight,
    EXTRACT(EPOCH FROM t.run_started_at)::bigint AS run_start_time";

/// A `pb::Task` from a row selected with `TASK_COLUMNS`.
pub fn task_from_row(r: &Row) -> pb::Task {
    pb::Task {
        task_id: r.get("task_id"),
        command: r.get("command"),
        shell: r.get("shell"),
        container: r.get("container"),
        container_options: r.get("container_options"),
        step_id: r.get("step_id"),
        input: r.get("input"),
        resource: r.get("resource"),
        output: r.get("output"),
        retry: r.get("retry"),
        is_final: r.get("is_final"),
        uses_cache: r.get("uses_cache"),
        download_timeout: r
            .get::<_, Option<f64>>("download_timeout")
            .map(|v| v as f32),
        running_timeout: r.get::<_, Option<f64>>("running_timeout").map(|v| v as f32),
        upload_timeout: r.get::<_, Option<f64>>("upload_timeout").map(|v| v as f32),
        status: r.get::<_, String>("status"),
        worker_id: r.get("worker_id"),
        workflow_id: r.get("workflow_id"),
        task_name: r.get("task_name"),
        retry_count: r.get("retry_count"),
        hidden: r.get("hidden"),
        previous_task_id: r.get("previous_task_id"),
        weight: Some(r.get("weight")),
        run_start_time: r.get("run_start_time"),
    }
}

/// A submission ready to store: the validated rules plus the fields copied as given.
pub struct NewTask {
    pub rules: Submission,
    pub shell: Option<String>,
    pub container_options: Option<String>,
    pub step_id: Option<i32>,
    pub input: Vec<String>,
    pub resource: Vec<String>,
    pub output: Option<String>,
    pub is_final: Option<bool>,
    pub uses_cache: Option<bool>,
    pub task_name: Option<String>,
    /// Who submitted it (changes need them or an admin).
    pub owner: Owner,
}

const RESOLVE_PREREQUISITES: &str = "
    WITH RECURSIVE lineage(origin, task_id, hidden) AS (
        SELECT t.task_id, t.task_id, t.hidden FROM task t WHERE t.task_id = ANY($1)
        UNION ALL
        SELECT l.origin, c.task_id, c.hidden
          FROM lineage l JOIN task c ON c.previous_task_id = l.task_id
         WHERE l.hidden
    )
    SELECT origin, task_id FROM lineage WHERE NOT hidden";

const LOCK_PREREQUISITES: &str =
    "SELECT task_id, status, hidden FROM task WHERE task_id = ANY($1) ORDER BY task_id FOR SHARE";

const INSERT_TASK: &str = "
    WITH id AS (SELECT nextval('task_task_id_seq')::integer AS v)
    INSERT INTO task (task_id, shard, step_id, task_name, command, shell, container, container_options,
                      status, input, resource, output, retry, is_final, uses_cache,
                      download_timeout, running_timeout, upload_timeout, pending_since,
                      owner_id, owner_worker_token)
    SELECT id.v, (id.v % $1)::smallint, $2, $3, $4, $5, $6, $7, $8::text, $9, $10, $11, $12, $13, $14,
           $15, $16, $17, CASE WHEN $8::text = 'P' THEN now() END, $18, $19
      FROM id
    RETURNING task_id, shard";

/// Stores a task and its dependency edges in one transaction. Prerequisites that were retried are
/// replaced by the retry that took their place; an unknown prerequisite fails the whole submission.
pub async fn submit(db: &Db, shards: u16, task: &NewTask) -> Result<i32> {
    let shards = i32::from(shards);
    let id = db
        .tx(Op::SubmitTask, |tx| {
            async move {
                if let Some(step) = task.step_id {
                    let found = tx
                        .query_opt("SELECT 1 FROM step WHERE step_id = $1", &[&step])
                        .await?;
                    if found.is_none() {
                        return Err(Error::not_found(format!("step {step} not found")));
                    }
                }
                let (prerequisites, statuses) =
                    lock_prerequisites(tx, &task.rules.dependencies).await?;
                let status = task.rules.initial_status(&statuses);
                let [download, running, upload] = task.rules.timeouts.map(|t| t.map(f64::from));
                let stmt = tx.prepare_cached(INSERT_TASK).await?;
                let row = tx
                    .query_one(
                        &stmt,
                        &[
                            &shards,
                            &task.step_id,
                            &task.task_name,
                            &task.rules.command,
                            &task.shell,
                            &task.rules.container,
                            &task.container_options,
                            &status.letter(),
                            &task.input,
                            &task.resource,
                            &task.output,
                            &task.rules.retry,
                            &task.is_final,
                            &task.uses_cache,
                            &download,
                            &running,
                            &upload,
                            &task.owner.user_id,
                            &task.owner.worker_token,
                        ],
                    )
                    .await?;
                let (id, shard): (i32, i16) = (row.get(0), row.get(1));
                if !prerequisites.is_empty() {
                    tx.execute(
                        "INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id)
                         SELECT $1, unnest($2::integer[])",
                        &[&id, &prerequisites],
                    )
                    .await?;
                }
                if status == TaskStatus::Pending {
                    rewind_cursors(tx, &[(task.step_id, shard, id)]).await?;
                }
                Ok(id)
            }
            .scope_boxed()
        })
        .await?;
    counter!(m::TASKS_SUBMITTED).increment(1);
    Ok(id)
}

/// Resolves prerequisite ids (following retries to the task that replaced them), locks them FOR
/// SHARE and returns them with their statuses. Unknown ids → `InvalidArgument`, naming them.
async fn lock_prerequisites(tx: &Tx<'_>, requested: &[i32]) -> Result<(Vec<i32>, Vec<TaskStatus>)> {
    if requested.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // A prerequisite may be retried (hidden) between resolving and locking: resolve again then.
    for _ in 0..5 {
        let rows = tx.query(RESOLVE_PREREQUISITES, &[&requested]).await?;
        let mut resolved: BTreeMap<i32, i32> = BTreeMap::new();
        for r in &rows {
            resolved.insert(r.get(0), r.get(1));
        }
        let missing: Vec<String> = requested
            .iter()
            .filter(|id| !resolved.contains_key(id))
            .map(|id| id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "unknown prerequisite task(s): {}",
                missing.join(", ")
            )));
        }
        let mut ids: Vec<i32> = resolved.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let locked = tx.query(LOCK_PREREQUISITES, &[&ids]).await?;
        if locked.iter().any(|r| r.get::<_, bool>("hidden")) || locked.len() != ids.len() {
            continue;
        }
        let statuses = locked
            .iter()
            .map(|r| parse_status(r.get("status")))
            .collect::<Result<Vec<_>>>()?;
        return Ok((ids, statuses));
    }
    Err(Error::new(
        Code::Aborted,
        "prerequisites kept changing while submitting; try again",
    ))
}

fn parse_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s.trim()).map_err(|e| Error::internal(format!("stored task status: {e}")))
}

/// Lowers the claim cursors of (step, shard) so tasks that just became pending with these ids are
/// found by the next claim (schema/0002_dispatch.sql). One statement per call, rows in key order.
pub async fn rewind_cursors(tx: &Tx<'_>, tasks: &[(Option<i32>, i16, i32)]) -> Result<()> {
    let mut lowest: BTreeMap<(i32, i16), i32> = BTreeMap::new();
    for &(step, shard, id) in tasks {
        let e = lowest.entry((step.unwrap_or(0), shard)).or_insert(id);
        *e = (*e).min(id);
    }
    if lowest.is_empty() {
        return Ok(());
    }
    let (mut keys, mut shards, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for ((k, s), id) in lowest {
        keys.push(k);
        shards.push(s);
        ids.push(id);
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE assign_cursor c SET next_task_id = x.id
               FROM unnest($1::integer[], $2::smallint[], $3::integer[]) AS x(k, s, id)
              WHERE c.step_key = x.k AND c.shard = x.s AND c.next_task_id > x.id",
        )
        .await?;
    tx.execute(&stmt, &[&keys, &shards, &ids]).await?;
    Ok(())
}

const LOCK_TASK: &str = "SELECT status, hidden, retry, worker_id, step_id, shard FROM task WHERE task_id = $1 FOR UPDATE";

/// The worker's idle clock restarts when it accepted or finished a task, at most once a second
/// (its row is then neither locked nor written: see schema/0013_activity_clock.sql, which the
/// status batch follows too).
const ACTIVITY: &str = "UPDATE worker SET last_activity_at = now()
                         WHERE worker_id = $1
                           AND (last_activity_at IS NULL OR last_activity_at < now() - interval '1 second')";

const UPDATE_STATUS: &str = "
    UPDATE task
       SET status = $2,
           modified_at = now(),
           run_started_at = CASE WHEN $3 THEN now() ELSE run_started_at END,
           download_duration = CASE WHEN $4 = 'download' THEN $5 ELSE download_duration END,
           run_duration = CASE WHEN $4 = 'run' THEN $5 ELSE run_duration END,
           upload_duration = CASE WHEN $4 = 'upload' THEN $5 ELSE upload_duration END,
           worker_id = CASE WHEN $6 THEN NULL ELSE worker_id END,
           pending_since = CASE WHEN $7 THEN now() ELSE pending_since END
     WHERE task_id = $1";

/// What a status update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The task already had that status: nothing changed (idempotent success).
    Unchanged,
    /// Updated; `retried_as` is the clone of an automatic retry.
    Updated { retried_as: Option<i32> },
}

/// UpdateTaskStatus: one transaction (see `apply_status`).
pub async fn update_status(
    db: &Db,
    shards: u16,
    task_id: i32,
    new: TaskStatus,
    duration: Option<i32>,
    free_retry: bool,
) -> Result<Applied> {
    let applied = db
        .tx(Op::UpdateTaskStatus, |tx| {
            async move { apply_status(tx, shards, task_id, new, duration, free_retry).await }
                .scope_boxed()
        })
        .await?;
    if applied != Applied::Unchanged {
        counter!(m::TASK_STATUS_UPDATES, "status" => new.letter()).increment(1);
    }
    Ok(applied)
}

/// The refusal of a status update of a hidden task.
pub fn hidden_task(task_id: i32) -> Error {
    Error::failed_precondition(format!(
        "task {task_id} is hidden and read-only: it was retried, update its retry instead"
    ))
}

/// Sets a task's status inside `tx` with every side effect: durations, `run_started_at`, the
/// worker's activity clock, promotion of dependents on S, automatic retry on F.
pub async fn apply_status(
    tx: &Tx<'_>,
    shards: u16,
    task_id: i32,
    new: TaskStatus,
    duration: Option<i32>,
    free_retry: bool,
) -> Result<Applied> {
    let change = rules::status_change(new, duration, free_retry)?;
    let stmt = tx.prepare_cached(LOCK_TASK).await?;
    let row = tx
        .query_opt(&stmt, &[&task_id])
        .await?
        .ok_or_else(|| Error::not_found(format!("task {task_id} not found")))?;
    let current = parse_status(row.get("status"))?;
    if row.get::<_, bool>("hidden") {
        return Err(hidden_task(task_id));
    }
    if current == new {
        return Ok(Applied::Unchanged);
    }
    let worker_id: Option<i32> = row.get("worker_id");
    let step_id: Option<i32> = row.get("step_id");
    let shard: i16 = row.get("shard");
    let stored_retry: Option<i32> = row.get("retry");
    write_change(tx, task_id, &change).await?;
    if change.worker_activity
        && let Some(w) = worker_id
    {
        let stmt = tx.prepare_cached(ACTIVITY).await?;
        tx.execute(&stmt, &[&w]).await?;
    }
    if change.becomes_pending {
        rewind_cursors(tx, &[(step_id, shard, task_id)]).await?;
    }
    let mut retried_as = None;
    match new {
        TaskStatus::Succeeded => promote_dependents(tx, task_id).await?,
        TaskStatus::Failed => {
            if let Some(budget) = rules::automatic_retry_budget(stored_retry, change.free_retry) {
                let clone = clone_for_retry(tx, shards, task_id, budget).await?;
                append_system_line(
                    tx,
                    task_id,
                    LogStream::Stderr,
                    &format!("taskqueue: task failed; retried as task {clone}"),
                )
                .await?;
                counter!(m::TASK_RETRIES, "kind" => "automatic").increment(1);
                retried_as = Some(clone);
            }
        }
        _ => {}
    }
    Ok(Applied::Updated { retried_as })
}

async fn write_change(tx: &Tx<'_>, task_id: i32, c: &StatusChange) -> Result<()> {
    let (column, seconds) = match c.duration {
        Some((DurationColumn::Download, d)) => ("download", Some(d)),
        Some((DurationColumn::Run, d)) => ("run", Some(d)),
        Some((DurationColumn::Upload, d)) => ("upload", Some(d)),
        None => ("", None),
    };
    let stmt = tx.prepare_cached(UPDATE_STATUS).await?;
    tx.execute(
        &stmt,
        &[
            &task_id,
            &c.new.letter(),
            &c.starts_running,
            &column,
            &seconds,
            &c.releases_worker,
            &c.becomes_pending,
        ],
    )
    .await?;
    Ok(())
}

// Statements on waiting tasks reach them by primary key only: the status test is written
// `(…) IS TRUE`, which no index condition matches, so a generic plan with statistics older than a
// burst of W tasks cannot AND the key with `task_status_idx` and read every W task
// (schema/0014_dependents_by_key.sql; tests/it/status_batch.rs holds the plans to it).
#[doc(hidden)]
pub const LOCK_WAITING_DEPENDENTS: &str = "
    SELECT t.task_id FROM task t
     WHERE t.task_id = ANY (ARRAY(SELECT d.dependent_task_id FROM task_dependencies d
                                   WHERE d.prerequisite_task_id = $1))
       AND (t.status = 'W' AND NOT t.hidden) IS TRUE
     ORDER BY t.task_id
       FOR UPDATE OF t";

#[doc(hidden)]
pub const PROMOTE_READY: &str = "
    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
     WHERE t.task_id = ANY($1) AND (t.status = 'W' AND NOT t.hidden) IS TRUE
       AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN task p ON p.task_id = d.prerequisite_task_id
                        WHERE d.dependent_task_id = t.task_id AND p.status <> 'S')
    RETURNING t.task_id, t.step_id, t.shard";

/// W→P for the dependents of `prerequisite` whose prerequisites have all succeeded. Dependents are
/// locked first, then checked with a fresh snapshot, so when two prerequisites of one task succeed
/// at once, the second to lock sees both.
pub async fn promote_dependents(tx: &Tx<'_>, prerequisite: i32) -> Result<()> {
    let lock = tx.prepare_cached(LOCK_WAITING_DEPENDENTS).await?;
    let waiting: Vec<i32> = tx
        .query(&lock, &[&prerequisite])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    let promote = tx.prepare_cached(PROMOTE_READY).await?;
    let rows = tx.query(&promote, &[&waiting]).await?;
    let promoted: Vec<(Option<i32>, i16, i32)> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(0)))
        .collect();
    rewind_cursors(tx, &promoted).await
}

const INSERT_CLONE: &str = "
    WITH id AS (SELECT nextval('task_task_id_seq')::integer AS v)
    INSERT INTO task (task_id, shard, step_id, task_name, command, shell, container, container_options,
                      status, input, resource, output, retry, is_final, uses_cache, download_timeout,
                      running_timeout, upload_timeout, input_hash, previous_task_id, retry_count,
                      pending_since, weight, owner_id, owner_worker_token)
    SELECT id.v, (id.v % $3)::smallint, t.step_id, t.task_name, t.command, t.shell, t.container,
           t.container_options, 'P', t.input, t.resource, t.output, $2, t.is_final, t.uses_cache,
           t.download_timeout, t.running_timeout, t.upload_timeout, t.input_hash, t.task_id,
           t.retry_count + 1, now(), 1.0, t.owner_id, t.owner_worker_token
      FROM task t, id
     WHERE t.task_id = $1
    RETURNING task_id";

/// Replaces `task_id` by a pending clone with retry budget `budget`: the original is hidden, its
/// prerequisites are copied to the clone and its dependents now wait for the clone. A clone whose
/// prerequisites have not all succeeded (a manual retry of a waiting task) waits (W) too.
pub async fn clone_for_retry(tx: &Tx<'_>, shards: u16, task_id: i32, budget: i32) -> Result<i32> {
    let shards = i32::from(shards);
    let stmt = tx.prepare_cached(INSERT_CLONE).await?;
    let clone: i32 = tx
        .query_one(&stmt, &[&task_id, &budget, &shards])
        .await?
        .get(0);
    tx.execute(
        "UPDATE task SET hidden = true, modified_at = now() WHERE task_id = $1",
        &[&task_id],
    )
    .await?;
    tx.execute(
        "INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id)
         SELECT $2, prerequisite_task_id FROM task_dependencies WHERE dependent_task_id = $1",
        &[&task_id, &clone],
    )
    .await?;
    tx.execute(
        "DELETE FROM task_dependencies WHERE dependent_task_id = $1",
        &[&task_id],
    )
    .await?;
    tx.execute(
        "UPDATE task_dependencies SET prerequisite_task_id = $2 WHERE prerequisite_task_id = $1",
        &[&task_id, &clone],
    )
    .await?;
    tx.execute(
        "UPDATE task t SET status = 'W', pending_since = NULL WHERE t.task_id = $1
            AND EXISTS (SELECT 1 FROM task_dependencies d JOIN task p ON p.task_id = d.prerequisite_task_id
                         WHERE d.dependent_task_id = t.task_id AND p.status <> 'S')",
        &[&clone],
    )
    .await?;
    Ok(clone)
}

/// RetryTask: clones any non-hidden task (whatever its status: a task that wrongly reported success
/// can be re-run) with budget max((asked or stored) − 1, 0). Returns the clone's id.
pub async fn retry(db: &Db, shards: u16, task_id: i32, asked: Option<i32>) -> Result<i32> {
    let clone = db
        .tx(Op::RetryTask, |tx| {
            async move {
                let row = tx
                    .query_opt("SELECT hidden, retry FROM task WHERE task_id = $1 FOR UPDATE", &[&task_id])
                    .await?
                    .ok_or_else(|| Error::not_found(format!("task {task_id} not found")))?;
                if row.get::<_, bool>(0) {
                    return Err(Error::failed_precondition(format!(
                        "task {task_id} was already retried (it is hidden): retry its latest retry instead"
                    )));
                }
                let budget = rules::manual_retry_budget(asked, row.get(1))?;
                let clone = clone_for_retry(tx, shards, task_id, budget).await?;
                append_system_line(tx, task_id, LogStream::Stderr, &format!("taskqueue: retried by request as task {clone}"))
                    .await?;
                Ok(clone)
            }
            .scope_boxed()
        })
        .await?;
    counter!(m::TASK_RETRIES, "kind" => "manual").increment(1);
    Ok(clone)
}

/// Fails the given tasks with a free retry (they go back to the queue without consuming their retry
/// budget) and writes `reason` to each one's stderr log. Tasks already finished or hidden are left
/// alone. For areas that take tasks away from a worker: re-registration, deletion, watchdog.
pub async fn fail_with_free_retry(
    tx: &Tx<'_>,
    shards: u16,
    task_ids: &[i32],
    reason: &str,
) -> Result<()> {
    let mut ids = task_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let row = tx
            .query_opt(
                "SELECT status, hidden FROM task WHERE task_id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let Some(row) = row else { continue };
        let status = parse_status(row.get(0))?;
        if row.get::<_, bool>(1) || status.is_settled() {
            continue;
        }
        append_system_line(tx, id, LogStream::Stderr, reason).await?;
        apply_status(tx, shards, id, TaskStatus::Failed, None, true).await?;
        counter!(m::TASK_STATUS_UPDATES, "status" => TaskStatus::Failed.letter()).increment(1);
    }
    Ok(())
}

/// Filters of ListTasks; `None` = no filter.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub worker_id: Option<i32>,
    pub step_id: Option<i32>,
    pub workflow_id: Option<i32>,
    pub command: Option<String>,
    pub show_hidden: bool,
    pub limit: Option<i64>,
    pub offset: i64,
}

/// ListTasks: newest first.
pub async fn list(db: &Db, f: &TaskFilter) -> Result<Vec<pb::Task>> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM task t LEFT JOIN step s ON s.step_id = t.step_id
          WHERE ($1::text IS NULL OR t.status = $1)
            AND ($2::integer IS NULL OR t.worker_id = $2)
            AND ($3::integer IS NULL OR t.step_id = $3)
            AND ($4::integer IS NULL OR s.workflow_id = $4)
            AND ($5::text IS NULL OR strpos(lower(t.command), lower($5)) > 0)
            AND ($6 OR NOT t.hidden)
          ORDER BY t.task_id DESC
          LIMIT $7 OFFSET $8"
    );
    let status = f.status.map(|s| s.letter());
    // A plain substring, case-insensitive (see `domain::filters`): no pattern characters.
    let command = f.command.as_deref();
    db.run(Op::ListTasks, |c| {
        async move {
            let stmt = c.prepare_cached(&sql).await?;
            let rows = c
                .query(
                    &stmt,
                    &[
                        &status,
                        &f.worker_id,
                        &f.step_id,
                        &f.workflow_id,
                        &command,
                        &f.show_hidden,
                        &f.limit
                            .unwrap_or(limits::LIST_TASKS.default)
                            .min(limits::LIST_TASKS.max),
                        &f.offset,
                    ],
                )
                .await?;
            Ok(rows.iter().map(task_from_row).collect())
        }
        .scope_boxed()
    })
    .await
}
