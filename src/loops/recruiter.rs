//! The recruitment loop (leader only, the original's with its bugs fixed;
//! docs/architecture.md#background-loops): every `recruiter_interval`, one fenced transaction reads
//! the recruiters and their steps, plans with `domain::recruitment::plan`, and applies the plan —
//! recycling workers (new step, concurrency, prefetch, task weights rescaled) and deploying new
//! ones (worker rows + create jobs, quota re-checked under the region's lock). Timers live in the
//! `recruiter` row. A recruiter whose protofilter does not parse is disabled alone
//! (`disabled_reason`, a worker event, a log line); the others run. It also publishes the queue
//! gauges: workers by status, live tasks by status, idle workers with pending work.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use metrics::{counter, gauge};
use scoped_futures::ScopedFutureExt as _;

use super::LeaderContext;
use crate::config::Config;
use crate::db::Op;
use crate::db::catalog;
use crate::db::jobs::{self, CreatedWorker, NewWorkers, QuotaRule};
use crate::db::recruiters;
use crate::domain::catalog::DeclaredProviders;
use crate::domain::protofilter;
use crate::domain::recruitment::{self, ActiveRecruiter, Offer, Resources, Snapshot};
use crate::error::{Code, Result};
use crate::telemetry::metrics as m;

use crate::db::Tx;

/// Flavor offers considered per recruiter (cheapest first).
const MAX_OFFERS: i64 = 1_000;

/// The recruitment cycle as a leader loop, every `--recruiter-interval`.
pub fn leader_loop(config: &crate::config::Config) -> super::LeaderLoop {
    let recruiter = std::sync::Arc::new(Recruiter::new());
    super::LeaderLoop::every("recruiter", config.recruiter_interval, move |ctx| {
        let recruiter = recruiter.clone();
        async move {
            recruiter.run_once(&ctx).await?;
            Ok(())
        }
    })
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Recruiters that were active, as (step, rank).
    pub active: Vec<(i32, i32)>,
    /// Workers recycled, as (worker, new step).
    pub recycled: Vec<(i32, i32)>,
    pub deployed: Vec<CreatedWorker>,
    /// Recruiters disabled in this cycle.
    pub disabled: Vec<(i32, i32)>,
}

/// The recruitment loop's state across cycles (only the label sets of its gauges: everything that
/// matters is in the database).
#[derive(Default)]
pub struct Recruiter {
    gauge_labels: Mutex<HashSet<(String, String)>>,
}

impl Recruiter {
    pub fn new() -> Recruiter {
        Recruiter::default()
    }

    /// One recruitment cycle.
    pub async fn run_once(&self, ctx: &LeaderContext) -> Result<CycleReport> {
        let config = ctx.config.clone();
        let declared = ctx.declared_providers.clone();
        let (report, counts) = ctx
            .fenced_tx(Op::RecruiterCycle, |tx| {
                let (config, declared) = (&*config, &*declared);
                async move {
                    let report = cycle(tx, config, declared).await?;
                    let counts = recruiters::worker_counts(tx).await?;
                    let queue = recruiters::queue_counts(tx).await?;
                    Ok((report, (counts, queue)))
                }
                .scope_boxed()
            })
            .await?;
        counter!(m::RECRUITER_DEPLOYMENTS).increment(report.deployed.len() as u64);
        counter!(m::RECRUITER_RECYCLES).increment(report.recycled.len() as u64);
        if !report.deployed.is_empty() || !report.recycled.is_empty() {
            tracing::info!(
                deployed = report.deployed.len(),
                recycled = report.recycled.len(),
                active = report.active.len(),
                "recruitment cycle"
            );
        }
        let (counts, (tasks, idle_eligible)) = counts;
        self.publish(counts);
        publish_queue(&tasks, idle_eligible);
        Ok(report)
    }

    fn publish(&self, counts: Vec<(String, String, i64)>) {
        let mut labels = self.gauge_labels.lock().unwrap();
        let now: HashSet<(String, String)> = counts
            .iter()
            .map(|(s, p, _)| (s.clone(), p.clone()))
            .collect();
        for (status, provider) in labels.difference(&now) {
            gauge!(m::WORKERS, "status" => status.clone(), "provider" => provider.clone()).set(0.0);
        }
        for (status, provider, n) in counts {
            gauge!(m::WORKERS, "status" => status, "provider" => provider).set(n as f64);
        }
        *labels = now;
    }
}

/// Tasks by status (every live status is set, 0 when absent) and idle eligible workers.
fn publish_queue(tasks: &[(String, i64)], idle_eligible: i64) {
    for status in ["W", "P", "A", "C", "D", "O", "R", "U", "V"] {
        let n = tasks
            .iter()
            .find(|(s, _)| s.trim() == status)
            .map_or(0, |(_, n)| *n);
        gauge!(m::TASKS, "status" => status).set(n as f64);
    }
    gauge!(m::WORKERS_IDLE_ELIGIBLE).set(idle_eligible as f64);
}

fn key(r: &recruiters::Recruiter) -> (i32, i32) {
    (r.step_id, r.rank)
}

/// Reads, plans and applies one cycle inside `tx`.
async fn cycle(tx: &Tx<'_>, config: &Config, declared: &DeclaredProviders) -> Result<CycleReport> {
    let mut report = CycleReport::default();
    let mut inactive = Vec::new();
    let mut active: Vec<ActiveRecruiter> = Vec::new();
    // Region id → (provider class, config name, region name), for quota lookups.
    let mut regions: HashMap<i32, (String, String, String)> = HashMap::new();

    for st in recruiters::states(tx).await? {
        let r = &st.recruiter;
        if st.disabled_reason.is_some() {
            continue;
        }
        let filter = match protofilter::parse(&r.protofilter) {
            Ok(f) => f,
            Err(e) => {
                let reason = format!("its protofilter does not parse: {e}");
                if recruiters::disable(tx, r, &reason).await? {
                    tracing::warn!(step_id = r.step_id, rank = r.rank, %reason, "recruiter disabled");
                    report.disabled.push(key(r));
                }
                continue;
            }
        };
        if !recruitment::is_active(st.pending, r.rounds, st.free_rate) {
            inactive.push(key(r));
            continue;
        }
        let flavors = catalog::matching_flavors(tx, &filter, MAX_OFFERS).await?;
        let offers = flavors
            .iter()
            .map(|f| {
                if let Some((class, name)) = f.provider.split_once('.') {
                    regions.insert(f.region_id, (class.into(), name.into(), f.region.clone()));
                }
                Offer {
                    flavor_id: f.flavor_id,
                    region_id: f.region_id,
                    resources: Resources {
                        cpu: f.cpu,
                        mem: f.mem,
                        disk: f.disk,
                    },
                    available: f.available,
                }
            })
            .collect();
        active.push(ActiveRecruiter {
            step_id: r.step_id,
            rank: r.rank,
            workflow_id: st.workflow_id,
            sizing: r.sizing(),
            max_workers: r.max_workers,
            rounds: r.rounds,
            pending: st.pending,
            free_rate: st.free_rate,
            current_workers: st.current_workers,
            timeout_passed: st.timer_elapsed >= f64::from(r.timeout),
            offers,
        });
    }
    report.active = active.iter().map(|a| (a.step_id, a.rank)).collect();

    let mut attempted = Vec::new();
    if !active.is_empty() {
        let snapshot = snapshot(tx, declared, active, &regions).await?;
        let plan = recruitment::plan(&snapshot);
        attempted = plan.attempted.clone();
        let mut recycles = plan.recycles.clone();
        recycles.sort_by_key(|r| r.worker_id);
        for r in &recycles {
            if recruiters::recycle(tx, r).await? {
                tracing::info!(
                    worker_id = r.worker_id,
                    from_step = ?r.from_step,
                    to_step = r.to_step,
                    concurrency = r.new_concurrency,
                    "recycled worker"
                );
                report.recycled.push((r.worker_id, r.to_step));
            }
        }
        deploy(tx, config, declared, &plan.deployments, &mut report).await?;
    }
    recruiters::set_timers(tx, &report.active, &inactive, &attempted).await?;
    Ok(report)
}

/// Completes the active recruiters with recyclable workers, quotas and workflow counters.
async fn snapshot(
    tx: &Tx<'_>,
    declared: &DeclaredProviders,
    recruiters_: Vec<ActiveRecruiter>,
    regions: &HashMap<i32, (String, String, String)>,
) -> Result<Snapshot> {
    let offers: BTreeSet<(i32, i32)> = recruiters_
        .iter()
        .flat_map(|r| r.offers.iter().map(|o| (o.flavor_id, o.region_id)))
        .collect();
    let offers: Vec<(i32, i32)> = offers.into_iter().collect();
    let candidates = recruiters::candidates(tx, &offers).await?;
    let steps: Vec<i32> = candidates
        .iter()
        .filter_map(|c| c.step_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let pending_by_step = recruiters::pending_by_step(tx, &steps).await?;
    let mut quotas = HashMap::new();
    for (region_id, (class, name, region)) in regions {
        if let Some(q) = declared.quota((class, name), region) {
            quotas.insert(*region_id, (q, jobs::region_usage(tx, *region_id).await?));
        }
    }
    let workflow_ids: Vec<i32> = recruiters_
        .iter()
        .map(|r| r.workflow_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let workflows = recruiters::workflow_counters(tx, &workflow_ids).await?;
    Ok(Snapshot {
        recruiters: recruiters_,
        candidates,
        pending_by_step,
        quotas,
        workflows,
    })
}

/// Deploys the planned workers, grouping identical consecutive deployments into one insert. A
/// quota that no longer allows a group (a person deployed in the meantime) skips it.
async fn deploy(
    tx: &Tx<'_>,
    config: &Config,
    declared: &DeclaredProviders,
    deployments: &[recruitment::Deploy],
    report: &mut CycleReport,
) -> Result<()> {
    let mut i = 0;
    while i < deployments.len() {
        let d = deployments[i];
        let n = deployments[i..].iter().take_while(|x| **x == d).count();
        i += n;
        let new = NewWorkers {
            flavor_id: d.flavor_id,
            region_id: d.region_id,
            provider_id: 0,
            number: n as i32,
            concurrency: d.concurrency,
            prefetch: d.prefetch,
            step_id: Some(d.step_id),
        };
        match jobs::insert_workers(
            tx,
            declared,
            &config.server_name,
            &new,
            QuotaRule::Recruiter,
        )
        .await
        {
            Ok(created) => {
                tracing::info!(
                    step_id = d.step_id,
                    rank = d.rank,
                    flavor_id = d.flavor_id,
                    region_id = d.region_id,
                    count = created.len(),
                    "recruiter deploys workers"
                );
                report.deployed.extend(created);
            }
            Err(e) if e.code == Code::ResourceExhausted => {
                tracing::info!(step_id = d.step_id, rank = d.rank, error = %e, "deployment skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
