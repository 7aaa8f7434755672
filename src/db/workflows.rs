//! Workflows and steps (`workflow`, `step`) and step statistics, computed by one SQL aggregate per
//! request (the original's semantics) — no in-memory counters, so nothing drifts and every replica
//! agrees.

use crate::domain::ownership::Owner;
use scoped_futures::ScopedFutureExt as _;
use std::sync::LazyLock;

use super::{Db, Op, pg_error};
use crate::domain::status::{RunStrategy, TaskStatus, sql_list};
use crate::error::{Code, Error, Result};
use crate::proto as pb;

/// CreateWorkflow. A duplicate name answers `AlreadyExists` with Postgres' own wording
/// ("duplicate key value violates unique constraint …"): DSL clients match that text to retry with
/// another name.
pub async fn create_workflow(
    db: &Db,
    name: &str,
    strategy: RunStrategy,
    maximum_workers: Option<i32>,
    owner: Owner,
) -> Result<i32> {
    let letter = strategy.letter();
    let (owner_id, owner_worker_token) = (owner.user_id, owner.worker_token);
    db.query_one(
        Op::Workflows,
        "INSERT INTO workflow (workflow_name, run_strategy, maximum_workers, owner_id,
                               owner_worker_token)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING workflow_id",
        &[
            &name,
            &letter,
            &maximum_workers,
            &owner_id,
            &owner_worker_token,
        ],
        |r| r.get(0),
    )
    .await
}

/// ListWorkflows: newest first; `name_like` is a case-insensitive LIKE pattern, as the original.
pub async fn list_workflows(
    db: &Db,
    name_like: Option<&str>,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<pb::Workflow>> {
    db.query(
        Op::Workflows,
        "SELECT workflow_id, workflow_name, run_strategy, maximum_workers FROM workflow
          WHERE ($1::text IS NULL OR workflow_name ILIKE $1)
          ORDER BY workflow_id DESC LIMIT $2 OFFSET $3",
        &[&name_like, &limit, &offset],
        |r| pb::Workflow {
            workflow_id: r.get(0),
            name: r.get(1),
            run_strategy: r.get(2),
            maximum_workers: r.get(3),
        },
    )
    .await
}

/// DeleteWorkflow: its steps, tasks, edges and recruiters go with it (cascade); its workers stay,
/// without step. Returns how many tasks were deleted.
pub async fn delete_workflow(db: &Db, workflow_id: i32) -> Result<u64> {
    db.tx(Op::Workflows, |tx| {
        async move {
            let tasks: i64 = tx
                .query_one(
                    "SELECT count(*) FROM task t JOIN step s ON s.step_id = t.step_id WHERE s.workflow_id = $1",
                    &[&workflow_id],
                )
                .await?
                .get(0);
            let n = tx.execute("DELETE FROM workflow WHERE workflow_id = $1", &[&workflow_id]).await?;
            if n == 0 {
                return Err(Error::not_found(format!("workflow {workflow_id} not found")));
            }
            Ok(tasks as u64)
        }
        .scope_boxed()
    })
    .await
}

/// Which workflow CreateStep attaches the step to.
#[derive(Clone, Copy)]
pub enum WorkflowRef<'a> {
    Id(i32),
    Name(&'a str),
}

/// CreateStep. Unknown workflow → `NotFound`; a second step of the same name in a workflow →
/// `AlreadyExists`.
pub async fn create_step(db: &Db, name: &str, workflow: WorkflowRef<'_>) -> Result<i32> {
    db.tx(Op::Workflows, |tx| {
        async move {
            let row = match &workflow {
                WorkflowRef::Id(id) => {
                    tx.query_opt(
                        "SELECT workflow_id FROM workflow WHERE workflow_id = $1",
                        &[id],
                    )
                    .await
                }
                WorkflowRef::Name(n) => {
                    tx.query_opt(
                        "SELECT workflow_id FROM workflow WHERE workflow_name = $1",
                        &[n],
                    )
                    .await
                }
            }?;
            let workflow_id: i32 = match (row, &workflow) {
                (Some(r), _) => r.get(0),
                (None, WorkflowRef::Id(id)) => {
                    return Err(Error::not_found(format!("workflow {id} not found")));
                }
                (None, WorkflowRef::Name(n)) => {
                    return Err(Error::not_found(format!("workflow {n:?} not found")));
                }
            };
            let row = tx
                .query_one(
                    "INSERT INTO step (step_name, workflow_id) VALUES ($1, $2) RETURNING step_id",
                    &[&name, &workflow_id],
                )
                .await
                .map_err(|e| match pg_error(e) {
                    err if err.code == Code::AlreadyExists => Error::already_exists(format!(
                        "workflow {workflow_id} already has a step named {name:?} ({})",
                        err.message
                    )),
                    err => err,
                })?;
            Ok(row.get(0))
        }
        .scope_boxed()
    })
    .await
}

/// ListSteps: the steps of a workflow (`None`: of every workflow), by id.
pub async fn list_steps(
    db: &Db,
    workflow_id: Option<i32>,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<pb::Step>> {
    db.run(Op::Workflows, |c| {
        async move {
            if let Some(id) = workflow_id
                && c.query_opt("SELECT 1 FROM workflow WHERE workflow_id = $1", &[&id])
                    .await?
                    .is_none()
            {
                return Err(Error::not_found(format!("workflow {id} not found")));
            }
            let rows = c
                .query(
                    "SELECT s.step_id, w.workflow_name, s.workflow_id, s.step_name
                       FROM step s JOIN workflow w ON w.workflow_id = s.workflow_id
                      WHERE ($1::integer IS NULL OR s.workflow_id = $1)
                      ORDER BY s.step_id LIMIT $2 OFFSET $3",
                    &[&workflow_id, &limit, &offset],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| pb::Step {
                    step_id: r.get(0),
                    workflow_name: r.get(1),
                    workflow_id: r.get(2),
                    name: r.get(3),
                })
                .collect())
        }
        .scope_boxed()
    })
    .await
}

/// DeleteStep: its tasks and recruiters go with it; its workers stay, without step.
pub async fn delete_step(db: &Db, step_id: i32) -> Result<()> {
    let n = db
        .execute(
            Op::Workflows,
            "DELETE FROM step WHERE step_id = $1",
            &[&step_id],
        )
        .await?;
    if n == 0 {
        return Err(Error::not_found(format!("step {step_id} not found")));
    }
    Ok(())
}

/// One aggregate over the tasks of the selected steps (the original's semantics):
/// buckets count non-hidden tasks; `failed` counts retried (hidden) failures and `really_failed`
/// final ones; accumulators are count/sum/min/max in seconds (0 for an empty set). Buckets:
/// `TaskStatus::PENDING_OR_INACTIVE`, `WARM` (accepted), `UPLOADING`; `ok` is `RUN_SUCCEEDED`, `ko`
/// `RUN_FAILED`, uploads and the end time `SETTLED`.
static STEP_STATS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    WITH chosen AS (
        SELECT s.step_id, s.step_name FROM step s
         WHERE ($1::integer IS NULL OR s.workflow_id = $1)
           AND (cardinality($2::integer[]) = 0 OR s.step_id = ANY($2))
    )
    SELECT c.step_id, c.step_name,
        count(t.task_id) FILTER (WHERE NOT t.hidden)                                   AS total,
        count(*) FILTER (WHERE NOT t.hidden AND t.status = 'W')                        AS waiting,
        count(*) FILTER (WHERE NOT t.hidden AND t.status IN ({pending}))                AS pending,
        count(*) FILTER (WHERE NOT t.hidden AND t.status IN ({warm}))      AS accepted,
        count(*) FILTER (WHERE NOT t.hidden AND t.status = 'R')                        AS running,
        count(*) FILTER (WHERE NOT t.hidden AND t.status IN ({uploading}))                AS uploading,
        count(*) FILTER (WHERE NOT t.hidden AND t.status = 'S')                        AS successful,
        count(*) FILTER (WHERE t.hidden AND t.status = 'F')                            AS failed,
        count(*) FILTER (WHERE NOT t.hidden AND t.status = 'F')                        AS really_failed,
        count(*) FILTER (WHERE t.status IN ({run_ok}))                                 AS ok_n,
        COALESCE(sum(t.run_duration) FILTER (WHERE t.status IN ({run_ok})), 0)::float8 AS ok_sum,
        COALESCE(min(t.run_duration) FILTER (WHERE t.status IN ({run_ok})), 0)::float8 AS ok_min,
        COALESCE(max(t.run_duration) FILTER (WHERE t.status IN ({run_ok})), 0)::float8 AS ok_max,
        count(*) FILTER (WHERE t.status IN ({run_ko}) AND t.run_started_at IS NOT NULL) AS ko_n,
        COALESCE(sum(t.run_duration) FILTER (WHERE t.status IN ({run_ko}) AND t.run_started_at IS NOT NULL), 0)::float8 AS ko_sum,
        COALESCE(min(t.run_duration) FILTER (WHERE t.status IN ({run_ko}) AND t.run_started_at IS NOT NULL), 0)::float8 AS ko_min,
        COALESCE(max(t.run_duration) FILTER (WHERE t.status IN ({run_ko}) AND t.run_started_at IS NOT NULL), 0)::float8 AS ko_max,
        count(*) FILTER (WHERE t.status = 'R' AND t.run_started_at IS NOT NULL)         AS run_n,
        COALESCE(sum(EXTRACT(EPOCH FROM now() - t.run_started_at)) FILTER (WHERE t.status = 'R'), 0)::float8 AS run_sum,
        COALESCE(min(EXTRACT(EPOCH FROM now() - t.run_started_at)) FILTER (WHERE t.status = 'R'), 0)::float8 AS run_min,
        COALESCE(max(EXTRACT(EPOCH FROM now() - t.run_started_at)) FILTER (WHERE t.status = 'R'), 0)::float8 AS run_max,
        count(*) FILTER (WHERE t.download_duration > 0)                                AS dl_n,
        COALESCE(sum(t.download_duration) FILTER (WHERE t.download_duration > 0), 0)::float8 AS dl_sum,
        COALESCE(min(t.download_duration) FILTER (WHERE t.download_duration > 0), 0)::float8 AS dl_min,
        COALESCE(max(t.download_duration) FILTER (WHERE t.download_duration > 0), 0)::float8 AS dl_max,
        count(*) FILTER (WHERE t.status IN ({settled}) AND t.upload_duration > 0)        AS ul_n,
        COALESCE(sum(t.upload_duration) FILTER (WHERE t.status IN ({settled}) AND t.upload_duration > 0), 0)::float8 AS ul_sum,
        COALESCE(min(t.upload_duration) FILTER (WHERE t.status IN ({settled}) AND t.upload_duration > 0), 0)::float8 AS ul_min,
        COALESCE(max(t.upload_duration) FILTER (WHERE t.status IN ({settled}) AND t.upload_duration > 0), 0)::float8 AS ul_max,
        min(EXTRACT(EPOCH FROM t.run_started_at) - t.download_duration)::bigint        AS start_time,
        max(EXTRACT(EPOCH FROM t.run_started_at) + t.run_duration + t.upload_duration)
            FILTER (WHERE t.status IN ({settled}))::bigint                              AS end_time,
        EXTRACT(EPOCH FROM now())::integer                                             AS eval_time
      FROM chosen c LEFT JOIN task t ON t.step_id = c.step_id
     GROUP BY c.step_id, c.step_name
     ORDER BY c.step_id",
        pending = sql_list(TaskStatus::PENDING_OR_INACTIVE),
        warm = sql_list(TaskStatus::WARM),
        uploading = sql_list(TaskStatus::UPLOADING),
        run_ok = sql_list(TaskStatus::RUN_SUCCEEDED),
        run_ko = sql_list(TaskStatus::RUN_FAILED),
        settled = sql_list(TaskStatus::SETTLED),
    )
});

fn accum(r: &tokio_postgres::Row, prefix: &str) -> pb::Accum {
    let f = |s: &str| r.get::<_, f64>(format!("{prefix}_{s}").as_str()) as f32;
    pb::Accum {
        count: r.get::<_, i64>(format!("{prefix}_n").as_str()) as i32,
        sum: f("sum"),
        min: f("min"),
        max: f("max"),
    }
}

/// GetStepStats: the steps of `workflow_id` (or of every workflow), optionally only `step_ids`.
pub async fn step_stats(
    db: &Db,
    workflow_id: Option<i32>,
    step_ids: &[i32],
) -> Result<Vec<pb::StepStats>> {
    db.run(Op::StepStats, |c| {
        async move {
            let stmt = c.prepare_cached(&STEP_STATS).await?;
            let rows = c.query(&stmt, &[&workflow_id, &step_ids]).await?;
            let n = |r: &tokio_postgres::Row, c: &str| r.get::<_, i64>(c) as i32;
            Ok(rows
                .iter()
                .map(|r| pb::StepStats {
                    step_id: r.get("step_id"),
                    step_name: r.get("step_name"),
                    total_tasks: n(r, "total"),
                    waiting_tasks: n(r, "waiting"),
                    pending_tasks: n(r, "pending"),
                    accepted_tasks: n(r, "accepted"),
                    running_tasks: n(r, "running"),
                    uploading_tasks: n(r, "uploading"),
                    successful_tasks: n(r, "successful"),
                    failed_tasks: n(r, "failed"),
                    really_failed_tasks: n(r, "really_failed"),
                    success_run: Some(accum(r, "ok")),
                    failed_run: Some(accum(r, "ko")),
                    running_run: Some(accum(r, "run")),
                    download: Some(accum(r, "dl")),
                    upload: Some(accum(r, "ul")),
                    start_time: r.get("start_time"),
                    end_time: r.get("end_time"),
                    stats_eval_time: r.get("eval_time"),
                })
                .collect())
        }
        .scope_boxed()
    })
    .await
}
