//! Who owns an object, read for the ownership rule of `domain::ownership`, and who provides a
//! machine, read for the machines rule. Steps belong to their workflow's owner; templates and
//! runs record theirs in `uploaded_by` / `run_by`. One query per kind of object; a missing object
//! answers `None` (the RPC itself then says NotFound, or succeeds where deleting is idempotent).

use tokio_postgres::types::ToSql;

use super::{Db, Op};
use crate::domain::ownership::{Actor, Owner, may_change};
use crate::error::{Error, Result};

/// An object whose owner decides who may change it.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    Workflow(i32),
    Step(i32),
    Task(i32),
    Recruiter { step_id: i32, rank: i32 },
    TemplateVersion { name: &'a str, version: &'a str },
    TemplateRun(i32),
}

impl Object<'_> {
    fn describe(&self) -> String {
        match self {
            Object::Workflow(id) => format!("workflow {id}"),
            Object::Step(id) => format!("step {id}"),
            Object::Task(id) => format!("task {id}"),
            Object::Recruiter { step_id, rank } => format!("recruiter {step_id}/{rank}"),
            Object::TemplateVersion { .. } => "this template version".to_string(),
            Object::TemplateRun(id) => format!("template run {id}"),
        }
    }
}

const WORKFLOW_OWNER: &str =
    "SELECT owner_id, owner_worker_token FROM workflow WHERE workflow_id = $1";
const STEP_OWNER: &str = "
    SELECT w.owner_id, w.owner_worker_token
      FROM step s JOIN workflow w ON w.workflow_id = s.workflow_id
     WHERE s.step_id = $1";
const TASK_OWNER: &str = "SELECT owner_id, owner_worker_token FROM task WHERE task_id = $1";
const RECRUITER_OWNER: &str =
    "SELECT owner_id, owner_worker_token FROM recruiter WHERE step_id = $1 AND rank = $2";
const TEMPLATE_OWNER: &str = "
    SELECT uploaded_by, owner_worker_token FROM workflow_template
     WHERE name = $1 AND version = $2";
const RUN_OWNER: &str =
    "SELECT run_by, owner_worker_token FROM template_run WHERE template_run_id = $1";

/// The owner of `object`; `None` when it does not exist.
pub async fn owner(db: &Db, object: Object<'_>) -> Result<Option<Owner>> {
    let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) = match &object {
        Object::Workflow(id) => (WORKFLOW_OWNER, vec![id]),
        Object::Step(id) => (STEP_OWNER, vec![id]),
        Object::Task(id) => (TASK_OWNER, vec![id]),
        Object::Recruiter { step_id, rank } => (RECRUITER_OWNER, vec![step_id, rank]),
        Object::TemplateVersion { name, version } => (TEMPLATE_OWNER, vec![name, version]),
        Object::TemplateRun(id) => (RUN_OWNER, vec![id]),
    };
    db.query_opt(Op::Auth, sql, &params, |r| Owner {
        user_id: r.get(0),
        worker_token: r.get(1),
    })
    .await
}

/// Refuses with `PermissionDenied` when `actor` may not change `object`; a missing object passes
/// (the RPC answers for it).
pub async fn check(db: &Db, actor: Actor, object: Object<'_>) -> Result<()> {
    match owner(db, object).await? {
        Some(owner) if !may_change(actor, owner) => Err(Error::permission_denied(format!(
            "{} belongs to another user: only its owner or an admin may change it",
            object.describe()
        ))),
        _ => Ok(()),
    }
}

/// Where machines run: a provider (`provider_name`, `config_name`) and, when known, a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub provider: String,
    pub config: String,
    pub region: Option<String>,
}

/// The provider of a flavor (CreateWorker), without a region.
pub async fn flavor_placement(db: &Db, flavor_id: i32) -> Result<Option<Placement>> {
    placement(
        db,
        "SELECT p.provider_name, p.config_name, NULL::text
           FROM flavor f JOIN provider p ON p.provider_id = f.provider_id
          WHERE f.flavor_id = $1",
        flavor_id,
    )
    .await
}

/// The provider and name of a region (CreateWorker).
pub async fn region_placement(db: &Db, region_id: i32) -> Result<Option<Placement>> {
    placement(
        db,
        "SELECT p.provider_name, p.config_name, r.region_name
           FROM region r JOIN provider p ON p.provider_id = r.provider_id
          WHERE r.region_id = $1",
        region_id,
    )
    .await
}

/// Where a worker runs: `None` when there is no such worker, `Some(None)` for a worker that
/// registered by itself without a flavor or region.
pub async fn worker_placement(db: &Db, worker_id: i32) -> Result<Option<Option<Placement>>> {
    db.query_opt(
        Op::Auth,
        "SELECT p.provider_name, p.config_name, r.region_name
           FROM worker w
           LEFT JOIN region r ON r.region_id = w.region_id
           LEFT JOIN flavor f ON f.flavor_id = w.flavor_id
           LEFT JOIN provider p ON p.provider_id = COALESCE(r.provider_id, f.provider_id)
          WHERE w.worker_id = $1",
        &[&worker_id],
        |r| {
            let provider: Option<String> = r.get(0);
            provider.map(|provider| Placement {
                provider,
                config: r.get(1),
                region: r.get(2),
            })
        },
    )
    .await
}

async fn placement(db: &Db, sql: &'static str, id: i32) -> Result<Option<Placement>> {
    db.query_opt(Op::Auth, sql, &[&id], |r| Placement {
        provider: r.get(0),
        config: r.get(1),
        region: r.get(2),
    })
    .await
}
