//! Workflow templates and their runs (`workflow_template`, `template_run`): the script bytes live
//! in the row, so any replica can run any template. Ending a run is one transaction: on success
//! the `I` tasks of the run's workflow become `P` in one statement; on failure the workflow the
//! run created is deleted (steps, tasks and recruiters go with it by cascade).

use crate::domain::ownership::Owner;
use chrono::{DateTime, SecondsFormat, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde_json::Value;

use super::{Db, Op, pg_error};
use crate::domain::limits;
use crate::error::{Error, Result};
use crate::proto as pb;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A template to store.
pub struct NewTemplate<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub script: &'a [u8],
    pub params: &'a Value,
    pub uploaded_by: Option<i32>,
    /// Uploaded with the worker token (which may then replace it).
    pub owner_worker_token: bool,
}

/// A template as stored (the script and its raw parameter list).
pub struct Stored {
    pub template_id: i32,
    pub script: Vec<u8>,
    pub params: Value,
}

/// Whether a template of this name and version exists.
pub async fn exists(db: &Db, name: &str, version: &str) -> Result<bool> {
    let row = db
        .query_opt(
            Op::Templates,
            "SELECT 1 FROM workflow_template WHERE name = $1 AND version = $2",
            &[&name, &version],
            |_| (),
        )
        .await?;
    Ok(row.is_some())
}

const INSERT_TEMPLATE: &str = "
    INSERT INTO workflow_template (name, version, description, script, params_schema, uploaded_by,
                                   owner_worker_token)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING workflow_template_id";

/// With `replace`, an existing name+version gets the new script, description and parameters.
const UPSERT_TEMPLATE: &str = "
    INSERT INTO workflow_template (name, version, description, script, params_schema, uploaded_by,
                                   owner_worker_token)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (name, version) DO UPDATE
       SET description = EXCLUDED.description, script = EXCLUDED.script,
           params_schema = EXCLUDED.params_schema, uploaded_at = now(),
           uploaded_by = EXCLUDED.uploaded_by, owner_worker_token = EXCLUDED.owner_worker_token
    RETURNING workflow_template_id";

/// Stores a template; returns its id. Without `replace`, an existing name+version → AlreadyExists.
pub async fn save(db: &Db, t: &NewTemplate<'_>, replace: bool) -> Result<i32> {
    let sql = if replace {
        UPSERT_TEMPLATE
    } else {
        INSERT_TEMPLATE
    };
    db.query_one(
        Op::Templates,
        sql,
        &[
            &t.name,
            &t.version,
            &t.description,
            &t.script,
            &t.params,
            &t.uploaded_by,
            &t.owner_worker_token,
        ],
        |r| r.get(0),
    )
    .await
    .map_err(|err| {
        if err.code == crate::error::Code::AlreadyExists {
            Error::already_exists(format!(
                "template {} version {} already exists (upload with force to replace it)",
                t.name, t.version
            ))
        } else {
            err
        }
    })
}

/// The script and parameters of a template; NotFound when it does not exist.
pub async fn stored(db: &Db, template_id: i32) -> Result<Stored> {
    db.query_found(
        Op::Templates,
        "SELECT script, params_schema FROM workflow_template WHERE workflow_template_id = $1",
        &[&template_id],
        |row| Stored {
            template_id,
            script: row.get(0),
            params: row.get(1),
        },
        || Error::not_found(format!("template {template_id} not found")),
    )
    .await
}

/// Every `"<provider>.<config>:<region>"` of the catalog, for `provider_region` parameters.
pub async fn region_choices(db: &Db) -> Result<Vec<String>> {
    db.query(
        Op::Templates,
        "SELECT p.provider_name || '.' || p.config_name || ':' || r.region_name
           FROM region r JOIN provider p ON p.provider_id = r.provider_id
          ORDER BY p.provider_id, r.region_id",
        &[],
        |r| r.get(0),
    )
    .await
}

/// ListTemplates: by id; else by name and version LIKE patterns, version "latest" keeping the
/// newest upload of each name. Newest first. `param_json` is the raw list (shown by the caller).
const LIST_TEMPLATES: &str = "
    SELECT workflow_template_id, name, version, description, params_schema, uploaded_at, uploaded_by
      FROM (SELECT t.*,
                   row_number() OVER (PARTITION BY name ORDER BY uploaded_at DESC,
                                      workflow_template_id DESC) AS newest
              FROM workflow_template t
             WHERE ($1::int IS NULL OR workflow_template_id = $1)
               AND ($2::text IS NULL OR name LIKE $2)
               AND ($3::text IS NULL OR version LIKE $3)) t
     WHERE NOT $4 OR newest = 1
     ORDER BY uploaded_at DESC, workflow_template_id DESC
     LIMIT $5";

pub async fn list(
    db: &Db,
    id: Option<i32>,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<(pb::Template, Value)>> {
    let latest = version.is_some_and(|v| v.eq_ignore_ascii_case("latest"));
    let version = version.filter(|_| !latest);
    db.query(
        Op::Templates,
        LIST_TEMPLATES,
        &[&id, &name, &version, &latest, &limits::LIST_TEMPLATES.max],
        |r| {
            let t = pb::Template {
                workflow_template_id: r.get(0),
                name: r.get(1),
                version: r.get(2),
                description: r.get(3),
                param_json: String::new(),
                uploaded_at: rfc3339(r.get(5)),
                uploaded_by: r.get(6),
            };
            (t, r.get::<_, Value>(4))
        },
    )
    .await
}

/// Ends the runs still `P` that were created before `older_than_secs` ago: no replica can still
/// be running them (each kills its scripts at the template timeout), so their replica stopped
/// mid-run. They end `F` and the workflows they recorded are deleted, as for a failed run.
/// Returns how many runs were ended.
pub async fn abandon_stale_runs(db: &Db, older_than_secs: f64) -> Result<u64> {
    db.tx(Op::Templates, |tx| {
        async move {
            let rows = tx
                .query(
                    "UPDATE template_run
                        SET status = 'F',
                            error_message = 'abandoned: the replica running the script stopped before it ended'
                      WHERE status = 'P' AND created_at < now() - make_interval(secs => $1)
                  RETURNING workflow_id",
                    &[&older_than_secs],
                )
                .await?;
            let workflows: Vec<i32> = rows.iter().filter_map(|r| r.get(0)).collect();
            if !workflows.is_empty() {
                tx.execute("DELETE FROM workflow WHERE workflow_id = ANY($1)", &[&workflows])
                    .await?;
            }
            Ok(rows.len() as u64)
        }
        .scope_boxed()
    })
    .await
}

/// Records a new run in status P; returns its id.
pub async fn create_run(db: &Db, template_id: i32, values: &Value, owner: Owner) -> Result<i32> {
    let (run_by, worker_token) = (owner.user_id, owner.worker_token);
    db.query_one(
        Op::Templates,
        "INSERT INTO template_run (workflow_template_id, param_values, run_by, owner_worker_token)
         VALUES ($1, $2, $3, $4) RETURNING template_run_id",
        &[&template_id, &values, &run_by, &worker_token],
        |r| r.get(0),
    )
    .await
}

/// Activates the pending work of a successful run: every `I` task of the run's workflow becomes
/// `P` (one statement). Returns the number of tasks activated.
const ACTIVATE_TASKS: &str = "
    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
      FROM step s
     WHERE s.step_id = t.step_id AND s.workflow_id = $1 AND t.status = 'I'";

/// Ends a run whose script succeeded: status S with the script's stderr as message, and its
/// workflow's `I` tasks activated. A run that recorded no workflow ends F ("workflow_id is NULL").
/// Returns the number of tasks activated.
pub async fn finish_success(db: &Db, run_id: i32, stderr: &str) -> Result<u64> {
    db.tx(Op::Templates, |tx| {
        async move {
            let workflow: Option<i32> = tx
                .query_opt(
                    "SELECT workflow_id FROM template_run WHERE template_run_id = $1 FOR UPDATE",
                    &[&run_id],
                )
                .await?
                .ok_or_else(|| Error::not_found(format!("template run {run_id} was deleted")))?
                .get(0);
            let Some(workflow) = workflow else {
                let message = format!("workflow_id is NULL: the script never called UpdateTemplateRun with the workflow it created\n{stderr}");
                set_status(tx, run_id, "F", message.trim_end()).await?;
                return Ok(0);
            };
            let activated = tx
                .execute(ACTIVATE_TASKS, &[&workflow])
                .await?;
            set_status(tx, run_id, "S", stderr).await?;
            Ok(activated)
        }
        .scope_boxed()
    })
    .await
}

/// Ends a run whose script failed: status F with `message`, and the workflow it recorded (if
/// any) deleted. Returns the deleted workflow's id.
pub async fn finish_failure(db: &Db, run_id: i32, message: &str) -> Result<Option<i32>> {
    db.tx(Op::Templates, |tx| {
        async move {
            let workflow: Option<i32> = tx
                .query_opt(
                    "SELECT workflow_id FROM template_run WHERE template_run_id = $1 FOR UPDATE",
                    &[&run_id],
                )
                .await?
                .and_then(|r| r.get(0));
            if let Some(w) = workflow {
                tx.execute("DELETE FROM workflow WHERE workflow_id = $1", &[&w])
                    .await?;
            }
            set_status(tx, run_id, "F", message).await?;
            Ok(workflow)
        }
        .scope_boxed()
    })
    .await
}

async fn set_status(tx: &super::Tx<'_>, run_id: i32, status: &str, message: &str) -> Result<()> {
    let message = Some(message).filter(|m| !m.is_empty());
    tx.execute(
        "UPDATE template_run SET status = $2, error_message = $3 WHERE template_run_id = $1",
        &[&run_id, &status, &message],
    )
    .await?;
    Ok(())
}

const LIST_RUNS: &str = "
    SELECT r.template_run_id, r.workflow_template_id, t.name, t.version, w.workflow_name, r.run_by,
           r.status, r.workflow_id, r.created_at, r.param_values::text, r.error_message, u.username
      FROM template_run r
      JOIN workflow_template t ON t.workflow_template_id = r.workflow_template_id
      LEFT JOIN workflow w ON w.workflow_id = r.workflow_id
      LEFT JOIN scitq_user u ON u.user_id = r.run_by
     WHERE ($1::int IS NULL OR r.workflow_template_id = $1)
       AND ($2::int IS NULL OR r.template_run_id = $2)
     ORDER BY r.created_at DESC, r.template_run_id DESC
     LIMIT $3";

/// ListTemplateRuns (optionally of one template), newest first; or one run by id.
pub async fn list_runs(
    db: &Db,
    template_id: Option<i32>,
    run_id: Option<i32>,
) -> Result<Vec<pb::TemplateRun>> {
    db.query(
        Op::Templates,
        LIST_RUNS,
        &[&template_id, &run_id, &limits::LIST_TEMPLATE_RUNS.max],
        |r| pb::TemplateRun {
            template_run_id: r.get(0),
            workflow_template_id: r.get(1),
            template_name: r.get(2),
            template_version: r.get(3),
            workflow_name: r.get(4),
            run_by: r.get(5),
            status: r.get(6),
            workflow_id: r.get(7),
            created_at: rfc3339(r.get(8)),
            param_values_json: r.get(9),
            error_message: r.get(10),
            run_by_username: r.get(11),
        },
    )
    .await
}

/// UpdateTemplateRun: sets the given columns. Unknown run or workflow → NotFound.
pub async fn update_run(
    db: &Db,
    run_id: i32,
    workflow_id: Option<i32>,
    error_message: Option<&str>,
) -> Result<()> {
    db.run(Op::Templates, |c| {
        async move {
            let n = c
                .execute(
                    "UPDATE template_run
                        SET workflow_id = COALESCE($2, workflow_id),
                            error_message = COALESCE($3, error_message)
                      WHERE template_run_id = $1",
                    &[&run_id, &workflow_id, &error_message],
                )
                .await
                .map_err(|e| {
                    let err = pg_error(e);
                    if err.code == crate::error::Code::NotFound {
                        Error::not_found(format!("workflow {} not found", workflow_id.unwrap_or(0)))
                    } else {
                        err
                    }
                })?;
            if n == 0 {
                return Err(Error::not_found(format!("template run {run_id} not found")));
            }
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// DeleteTemplateRun: NotFound when there is no such run. The workflow it created stays.
pub async fn delete_run(db: &Db, run_id: i32) -> Result<()> {
    db.execute_found(
        Op::Templates,
        "DELETE FROM template_run WHERE template_run_id = $1",
        &[&run_id],
        || Error::not_found(format!("template run {run_id} not found")),
    )
    .await?;
    Ok(())
}
