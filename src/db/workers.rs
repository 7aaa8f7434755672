//! Workers (`worker`, `worker_stats`, and the local flavors RegisterSpecifications creates):
//! registration, specifications, listing, updates, statuses and stats.

use std::sync::LazyLock;

use prost::Message as _;
use scoped_futures::ScopedFutureExt as _;

use super::{Db, Op};
use crate::domain::limits;
use crate::domain::status::{RecyclableScope, TaskStatus, WorkerStatus, sql_list};
use crate::error::{Error, Result};
use crate::proto as pb;

use super::Tx;

/// What RegisterWorker asks for.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub concurrency: i32,
    pub is_permanent: bool,
    /// Provider full name (`name.config`) and region, when the worker knows them.
    pub placement: Option<(String, String)>,
}

/// What registering did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub worker_id: i32,
    /// Tasks the worker held before it re-registered (failed with a free retry).
    pub reclaimed: Vec<i32>,
}

const FIND_REGION: &str = "
    SELECT r.region_id FROM region r JOIN provider p ON p.provider_id = r.provider_id
     WHERE p.provider_name || '.' || p.config_name = $1 AND r.region_name = $2";

/// The tasks a worker that registers again still holds (`TaskStatus::HELD_BY_WORKER`, not
/// hidden): they are failed with a free retry.
static RECLAIMED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT task_id FROM task WHERE worker_id = $1 AND NOT hidden
            AND status IN ({held}) ORDER BY task_id",
        held = sql_list(TaskStatus::HELD_BY_WORKER),
    )
});

/// RegisterWorker: a new name gets a new worker in status R; a known name (a VM the server created,
/// or a worker that restarted) keeps its row and settings, comes back to R, and the tasks it was
/// running are failed with a free retry so none is stranded (its A tasks are simply sent again).
pub async fn register(db: &Db, shards: u16, reg: &Registration) -> Result<Registered> {
    db.tx(Op::Workers, |tx| {
        async move {
            let region_id: Option<i32> = match &reg.placement {
                Some((provider, region)) => {
                    let row = tx.query_opt(FIND_REGION, &[provider, region]).await?;
                    if row.is_none() {
                        tracing::warn!(worker = %reg.name, provider, region, "registering worker names an unknown provider/region");
                    }
                    row.map(|r| r.get(0))
                }
                None => None,
            };
            let inserted = tx
                .query_opt(
                    "INSERT INTO worker (worker_name, concurrency, status, is_permanent, region_id, last_ping_at)
                     VALUES ($1, $2, 'R', $3, $4, now())
                     ON CONFLICT (worker_name) DO NOTHING RETURNING worker_id",
                    &[&reg.name, &reg.concurrency, &reg.is_permanent, &region_id],
                )
                .await?;
            if let Some(row) = inserted {
                return Ok(Registered { worker_id: row.get(0), reclaimed: Vec::new() });
            }
            let worker_id: i32 = tx
                .query_one(
                    "UPDATE worker SET status = 'R', last_ping_at = now(), offline_since = NULL,
                            region_id = COALESCE(region_id, $2)
                      WHERE worker_name = $1 RETURNING worker_id",
                    &[&reg.name, &region_id],
                )
                .await?
                .get(0);
            let reclaimed: Vec<i32> = tx
                .query(RECLAIMED.as_str(), &[&worker_id])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let reason = format!("taskqueue: worker {} registered again while running this task; it is retried", reg.name);
            super::tasks::fail_with_free_retry(tx, shards, &reclaimed, &reason).await?;
            Ok(Registered { worker_id, reclaimed })
        }
        .scope_boxed()
    })
    .await
}

/// Ensures provider `local.local` and its default region `local` exist; returns their ids.
async fn local_provider(tx: &Tx<'_>) -> Result<(i32, i32)> {
    tx.execute(
        "INSERT INTO provider (provider_name, config_name) VALUES ('local', 'local') ON CONFLICT DO NOTHING",
        &[],
    )
    .await?;
    let provider: i32 = tx
        .query_one("SELECT provider_id FROM provider WHERE provider_name = 'local' AND config_name = 'local'", &[])
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO region (provider_id, region_name, is_default) VALUES ($1, 'local', true) ON CONFLICT DO NOTHING",
        &[&provider],
    )
    .await?;
    let region: i32 = tx
        .query_one(
            "SELECT region_id FROM region WHERE provider_id = $1 AND region_name = 'local'",
            &[&provider],
        )
        .await?
        .get(0);
    Ok((provider, region))
}

/// RegisterSpecifications (as the original): a worker without flavor gets a flavor of the local
/// provider named after it, in region `local` (and recyclable scope G if it had no region); a local
/// flavor is kept in line with what the worker reports; a cloud flavor is left alone.
pub async fn register_specifications(
    db: &Db,
    worker_id: i32,
    cpu: i32,
    mem: f64,
    disk: f64,
) -> Result<()> {
    db.tx(Op::Workers, |tx| {
        async move {
            let row = tx
                .query_opt(
                    "SELECT w.worker_name, w.flavor_id, w.region_id, f.provider_id
                       FROM worker w LEFT JOIN flavor f ON f.flavor_id = w.flavor_id
                      WHERE w.worker_id = $1 FOR UPDATE OF w",
                    &[&worker_id],
                )
                .await?
                .ok_or_else(|| Error::not_found(format!("worker {worker_id} not found")))?;
            let (name, flavor, flavor_provider): (String, Option<i32>, Option<i32>) = (row.get(0), row.get(1), row.get(3));
            let (local, local_region) = local_provider(tx).await?;
            match flavor {
                None => {
                    let flavor_id: i32 = tx
                        .query_one(
                            "INSERT INTO flavor (provider_id, flavor_name, cpu, mem, disk) VALUES ($1, $2, $3, $4, $5)
                             ON CONFLICT (provider_id, flavor_name)
                             DO UPDATE SET cpu = EXCLUDED.cpu, mem = EXCLUDED.mem, disk = EXCLUDED.disk
                             RETURNING flavor_id",
                            &[&local, &name, &cpu, &mem, &disk],
                        )
                        .await?
                        .get(0);
                    tx.execute(
                        "INSERT INTO flavor_region (flavor_id, region_id, cost) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
                        &[&flavor_id, &local_region],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE worker SET flavor_id = $2,
                                recyclable_scope = CASE WHEN region_id IS NULL THEN 'G' ELSE recyclable_scope END,
                                region_id = COALESCE(region_id, $3)
                          WHERE worker_id = $1",
                        &[&worker_id, &flavor_id, &local_region],
                    )
                    .await?;
                }
                Some(flavor_id) if flavor_provider == Some(local) => {
                    tx.execute(
                        "UPDATE flavor SET cpu = $2, mem = $3, disk = $4
                          WHERE flavor_id = $1 AND (cpu, mem, disk) IS DISTINCT FROM ($2, $3, $4)",
                        &[&flavor_id, &cpu, &mem, &disk],
                    )
                    .await?;
                }
                Some(_) => {}
            }
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

const LIST_WORKERS: &str = "
    SELECT w.worker_id, w.worker_name, w.concurrency, w.prefetch, w.status,
           COALESCE(host(w.ipv4), '') AS ipv4, COALESCE(host(w.ipv6), '') AS ipv6,
           COALESCE(f.flavor_name, '') AS flavor,
           COALESCE(p.provider_name || '.' || p.config_name, '') AS provider,
           COALESCE(r.region_name, '') AS region,
           w.step_id, s.step_name, w.is_permanent, w.recyclable_scope, s.workflow_id, wf.workflow_name
      FROM worker w
      LEFT JOIN flavor f ON f.flavor_id = w.flavor_id
      LEFT JOIN region r ON r.region_id = w.region_id
      LEFT JOIN provider p ON p.provider_id = COALESCE(r.provider_id, f.provider_id)
      LEFT JOIN step s ON s.step_id = w.step_id
      LEFT JOIN workflow wf ON wf.workflow_id = s.workflow_id
     WHERE ($1::integer IS NULL OR s.workflow_id = $1)
     ORDER BY w.worker_id
     LIMIT $2";

/// ListWorkers: all workers (at most `LIST_WORKERS.max`), or those whose step belongs to
/// `workflow_id`.
pub async fn list(db: &Db, workflow_id: Option<i32>) -> Result<Vec<pb::Worker>> {
    db.query(
        Op::Workers,
        LIST_WORKERS,
        &[&workflow_id, &limits::LIST_WORKERS.max],
        |r| pb::Worker {
            worker_id: r.get("worker_id"),
            name: r.get("worker_name"),
            concurrency: r.get("concurrency"),
            prefetch: r.get("prefetch"),
            status: r.get("status"),
            ipv4: r.get("ipv4"),
            ipv6: r.get("ipv6"),
            flavor: r.get("flavor"),
            provider: r.get("provider"),
            region: r.get("region"),
            step_id: r.get("step_id"),
            step_name: r.get("step_name"),
            is_permanent: r.get("is_permanent"),
            recyclable_scope: r.get("recyclable_scope"),
            workflow_id: r.get("workflow_id"),
            workflow_name: r.get("workflow_name"),
        },
    )
    .await
}

/// The fields UpdateWorker may change; `step_id: Some(None)` detaches the worker from its step.
#[derive(Debug, Clone, Default)]
pub struct WorkerChanges {
    pub provider_id: Option<i32>,
    pub flavor_id: Option<i32>,
    pub region_id: Option<i32>,
    pub concurrency: Option<i32>,
    pub prefetch: Option<i32>,
    pub step_id: Option<Option<i32>>,
    pub is_permanent: Option<bool>,
    pub recyclable_scope: Option<RecyclableScope>,
}

async fn exists(tx: &Tx<'_>, sql: &str, id: i32, what: &str) -> Result<()> {
    match tx.query_opt(sql, &[&id]).await? {
        Some(_) => Ok(()),
        None => Err(Error::not_found(format!("{what} {id} not found"))),
    }
}

/// UpdateWorker. A worker has no provider column: its provider is its region's. `provider_id` is
/// therefore checked against the region given with it, or the worker's current region; when neither
/// belongs to that provider, the worker moves to the provider's default region.
pub async fn update(db: &Db, worker_id: i32, ch: &WorkerChanges) -> Result<()> {
    db.tx(Op::Workers, |tx| {
        async move {
            let current_region: Option<i32> = tx
                .query_opt("SELECT region_id FROM worker WHERE worker_id = $1 FOR UPDATE", &[&worker_id])
                .await?
                .ok_or_else(|| Error::not_found(format!("worker {worker_id} not found")))?
                .get(0);
            if let Some(Some(step)) = ch.step_id {
                exists(tx, "SELECT 1 FROM step WHERE step_id = $1", step, "step").await?;
            }
            if let Some(f) = ch.flavor_id {
                exists(tx, "SELECT 1 FROM flavor WHERE flavor_id = $1", f, "flavor").await?;
            }
            if let Some(r) = ch.region_id {
                exists(tx, "SELECT 1 FROM region WHERE region_id = $1", r, "region").await?;
            }
            let mut region = ch.region_id;
            if let Some(provider) = ch.provider_id {
                exists(tx, "SELECT 1 FROM provider WHERE provider_id = $1", provider, "provider").await?;
                let candidate = ch.region_id.or(current_region);
                let belongs = match candidate {
                    Some(r) => tx
                        .query_opt("SELECT 1 FROM region WHERE region_id = $1 AND provider_id = $2", &[&r, &provider])
                        .await?
                        .is_some(),
                    None => false,
                };
                if !belongs {
                    if ch.region_id.is_some() {
                        return Err(Error::invalid(format!(
                            "region {} does not belong to provider {provider}",
                            ch.region_id.unwrap_or_default()
                        )));
                    }
                    let default = tx
                        .query_opt(
                            "SELECT region_id FROM region WHERE provider_id = $1 ORDER BY is_default DESC, region_id LIMIT 1",
                            &[&provider],
                        )
                        .await?
                        .ok_or_else(|| Error::failed_precondition(format!("provider {provider} has no region")))?;
                    region = Some(default.get(0));
                }
            }
            let step_given = ch.step_id.is_some();
            let step = ch.step_id.flatten();
            let scope = ch.recyclable_scope.map(|s| s.letter());
            tx.execute(
                "UPDATE worker SET
                    flavor_id = COALESCE($2, flavor_id),
                    region_id = COALESCE($3, region_id),
                    concurrency = COALESCE($4, concurrency),
                    prefetch = COALESCE($5, prefetch),
                    step_id = CASE WHEN $6 THEN $7 ELSE step_id END,
                    is_permanent = COALESCE($8, is_permanent),
                    recyclable_scope = COALESCE($9, recyclable_scope)
                  WHERE worker_id = $1",
                &[&worker_id, &ch.flavor_id, &region, &ch.concurrency, &ch.prefetch, &step_given, &step, &ch.is_permanent, &scope],
            )
            .await?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
}

/// UpdateWorkerStatus (operator pause, failing …). Offline statuses record when they began.
pub async fn set_status(db: &Db, worker_id: i32, status: WorkerStatus) -> Result<()> {
    let letter = status.letter();
    let offline = status.is_offline();
    db.execute_found(
        Op::Workers,
        "UPDATE worker SET status = $2,
                offline_since = CASE WHEN $3 THEN COALESCE(offline_since, now()) END
          WHERE worker_id = $1",
        &[&worker_id, &letter, &offline],
        || Error::not_found(format!("worker {worker_id} not found")),
    )
    .await?;
    Ok(())
}

/// GetWorkerStatuses: one status per requested id, in request order; unknown ids → "unknown".
pub async fn statuses(db: &Db, ids: &[i32]) -> Result<Vec<pb::WorkerStatus>> {
    let known: std::collections::HashMap<i32, String> = db
        .query(
            Op::Workers,
            "SELECT worker_id, status FROM worker WHERE worker_id = ANY($1)",
            &[&ids],
            |r| (r.get(0), r.get(1)),
        )
        .await?
        .into_iter()
        .collect();
    Ok(ids
        .iter()
        .map(|id| pb::WorkerStatus {
            worker_id: *id,
            status: known.get(id).cloned().unwrap_or_else(|| "unknown".into()),
        })
        .collect())
}

/// GetWorkerStats: the latest stats stored from pings; ids without stats are omitted.
pub async fn stats(db: &Db, ids: &[i32]) -> Result<Vec<(i32, pb::WorkerStats)>> {
    let rows: Vec<(i32, Vec<u8>)> = db
        .query(
            Op::Workers,
            "SELECT worker_id, stats FROM worker_stats WHERE worker_id = ANY($1)",
            &[&ids],
            |r| (r.get(0), r.get(1)),
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (worker_id, bytes) in rows {
        match pb::WorkerStats::decode(bytes.as_slice()) {
            Ok(s) => out.push((worker_id, s)),
            Err(e) => tracing::warn!(worker_id, error = %e, "unreadable stored worker stats"),
        }
    }
    Ok(out)
}
