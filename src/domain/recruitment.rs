//! Recruiter decisions (docs/architecture.md#background-loops), pure: from a snapshot of the active
//! recruiters, their candidate flavors, the workers that could be recycled, quotas and workflow
//! counters, decide which workers to recycle (re-target to another step, with a new concurrency and
//! prefetch) and which to deploy. `loops::recruiter` takes the snapshot and applies the plan in one
//! fenced transaction.
//!
//! Deliberate differences from the original:
//! - each recycled worker gets the concurrency computed for its own flavor;
//! - a worker is recycled at most once per cycle (the first recruiter that takes it keeps it);
//! - what a recruiter recycles or deploys counts for the later recruiters of the same step in the
//!   same cycle (rank 2 acts only if rank 1 did not cover the need);
//! - only workers in status R are recycled (not ones being deleted, offline or paused);
//! - recycling does not require a flavor that is still available for deployment;
//! - `maximum_workers` of 0 or absent means no cap (clients send 0 for "unset").

use std::collections::{HashMap, HashSet};

use super::quota::{self, Quota, Usage};
use super::status::RecyclableScope;
use super::{Error, Result};

/// How a recruiter sizes the workers it deploys or recycles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sizing {
    /// Static concurrency (used when > 0).
    pub concurrency: Option<i32>,
    pub prefetch: Option<i32>,
    pub prefetch_percent: Option<i32>,
    pub cpu_per_task: Option<i32>,
    pub memory_per_task: Option<f64>,
    pub disk_per_task: Option<f64>,
    pub concurrency_min: Option<i32>,
    pub concurrency_max: Option<i32>,
}

/// What a flavor offers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
}

impl Sizing {
    /// The original's rule: "at least one of concurrency / a per-task resource; at least one of
    /// prefetch / prefetch_percent", plus sane ranges.
    pub fn validate(&self) -> Result<()> {
        let positive_i = |v: Option<i32>| v.is_some_and(|v| v > 0);
        let positive_f = |v: Option<f64>| v.is_some_and(|v| v > 0.0);
        if !(positive_i(self.concurrency)
            || positive_i(self.cpu_per_task)
            || positive_f(self.memory_per_task)
            || positive_f(self.disk_per_task))
        {
            return Err(Error::Invalid(
                "a recruiter needs a concurrency or a per-task resource (cpu_per_task, \
                 memory_per_task or disk_per_task) greater than 0"
                    .into(),
            ));
        }
        if self.prefetch.is_none() && self.prefetch_percent.is_none() {
            return Err(Error::Invalid(
                "a recruiter needs a prefetch or a prefetch_percent".into(),
            ));
        }
        for (name, v) in [
            ("concurrency", self.concurrency),
            ("prefetch", self.prefetch),
            ("prefetch_percent", self.prefetch_percent),
            ("cpu_per_task", self.cpu_per_task),
            ("concurrency_min", self.concurrency_min),
            ("concurrency_max", self.concurrency_max),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(Error::Invalid(format!("{name} must not be negative")));
            }
        }
        for (name, v) in [
            ("memory_per_task", self.memory_per_task),
            ("disk_per_task", self.disk_per_task),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(Error::Invalid(format!(
                    "{name} must be a non-negative number"
                )));
            }
        }
        if let (Some(min), Some(max)) = (self.concurrency_min, self.concurrency_max)
            && max > 0
            && min > max
        {
            return Err(Error::Invalid(format!(
                "concurrency_min ({min}) is above concurrency_max ({max})"
            )));
        }
        Ok(())
    }

    /// Concurrency of a worker of `flavor` (as the original): the static value if > 0;
    /// else how many tasks fit by each defined per-task resource (the smallest), clamped to
    /// [min, max (if > 0)], and at least 1.
    pub fn concurrency_for(&self, flavor: &Resources) -> i32 {
        if let Some(c) = self.concurrency.filter(|c| *c > 0) {
            return c;
        }
        let mut fit: Option<f64> = None;
        let mut consider = |have: f64, per_task: f64| {
            if per_task > 0.0 {
                let n = (have / per_task).floor();
                fit = Some(fit.map_or(n, |f| f.min(n)));
            }
        };
        if let Some(c) = self.cpu_per_task {
            consider(f64::from(flavor.cpu), f64::from(c));
        }
        if let Some(m) = self.memory_per_task {
            consider(flavor.mem, m);
        }
        if let Some(d) = self.disk_per_task {
            consider(flavor.disk, d);
        }
        let Some(fit) = fit else { return 1 };
        let mut c = fit.clamp(0.0, f64::from(i32::MAX)) as i32;
        if let Some(min) = self.concurrency_min {
            c = c.max(min);
        }
        if let Some(max) = self.concurrency_max.filter(|m| *m > 0) {
            c = c.min(max);
        }
        c.max(1)
    }

    /// Prefetch for a worker of `concurrency`: static, else a percentage of it, else 0.
    pub fn prefetch_for(&self, concurrency: i32) -> i32 {
        if let Some(p) = self.prefetch {
            return p.max(0);
        }
        match self.prefetch_percent {
            Some(pct) => ((i64::from(concurrency) * i64::from(pct.max(0))) / 100) as i32,
            None => 0,
        }
    }
}

/// All of a recruiter's settings (CreateRecruiter, and UpdateRecruiter's result): rounds > 0,
/// non-negative timeout and maximum, a valid sizing, and a protofilter that parses.
pub fn validate_settings(
    protofilter: &str,
    rounds: i32,
    timeout: i32,
    max_workers: Option<i32>,
    sizing: &Sizing,
) -> Result<()> {
    if rounds <= 0 {
        return Err(Error::Invalid(format!(
            "rounds must be greater than 0 (got {rounds})"
        )));
    }
    if timeout < 0 {
        return Err(Error::Invalid("timeout must not be negative".into()));
    }
    if max_workers.is_some_and(|m| m < 0) {
        return Err(Error::Invalid("max_workers must not be negative".into()));
    }
    sizing.validate()?;
    super::protofilter::parse(protofilter)?;
    Ok(())
}

/// Tasks a recruiter wants running at once: its step's pending tasks spread over `rounds`.
pub fn target_taskrate(pending: i64, rounds: i32) -> i64 {
    let rounds = i64::from(rounds.max(1));
    (pending.max(0) + rounds - 1) / rounds
}

/// A recruiter acts when its step has pending tasks and fewer free slots than its target.
pub fn is_active(pending: i64, rounds: i32, free_rate: f64) -> bool {
    pending > 0 && target_taskrate(pending, rounds) as f64 > free_rate
}

/// A flavor in a region that a recruiter's protofilter selects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offer {
    pub flavor_id: i32,
    pub region_id: i32,
    pub resources: Resources,
    /// Still offered by the provider: deployable. Unavailable offers still allow recycling.
    pub available: bool,
}

/// A recruiter that is active this cycle, with what the database says about its step.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRecruiter {
    pub step_id: i32,
    pub rank: i32,
    pub workflow_id: i32,
    pub sizing: Sizing,
    pub max_workers: Option<i32>,
    pub rounds: i32,
    /// Pending tasks of the step.
    pub pending: i64,
    /// Σ over the step's workers (not being deleted) of max(concurrency − load, 0).
    pub free_rate: f64,
    /// Workers attached to the step (not being deleted).
    pub current_workers: i64,
    /// Its timeout has passed since it became active or last deployed.
    pub timeout_passed: bool,
    /// Matching flavors, cheapest first.
    pub offers: Vec<Offer>,
}

/// A worker (status R) that might be recycled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub worker_id: i32,
    pub step_id: Option<i32>,
    pub workflow_id: Option<i32>,
    pub flavor_id: i32,
    pub region_id: i32,
    pub resources: Resources,
    pub concurrency: i32,
    /// Σ weight of its tasks in A, C, D, O, R.
    pub load: f64,
    pub scope: RecyclableScope,
}

/// Everything a cycle decides from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Active recruiters, ordered by (step, rank).
    pub recruiters: Vec<ActiveRecruiter>,
    /// Workers that might be recycled, ordered by worker id.
    pub candidates: Vec<Candidate>,
    /// Pending tasks of the candidates' current steps (busy steps keep their workers).
    pub pending_by_step: HashMap<i32, i64>,
    /// Quota and usage by region id; a region without an entry has no quota: no deployment.
    pub quotas: HashMap<i32, (Quota, Usage)>,
    /// Workflow id → (workers attached to its steps, maximum_workers).
    pub workflows: HashMap<i32, (i64, Option<i32>)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recycle {
    pub worker_id: i32,
    pub from_step: Option<i32>,
    pub to_step: i32,
    pub rank: i32,
    pub old_concurrency: i32,
    pub new_concurrency: i32,
    pub new_prefetch: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deploy {
    pub step_id: i32,
    pub rank: i32,
    pub flavor_id: i32,
    pub region_id: i32,
    pub concurrency: i32,
    pub prefetch: i32,
}

/// What a cycle does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub recycles: Vec<Recycle>,
    pub deployments: Vec<Deploy>,
    /// Recruiters (step, rank) that reached the deployment stage: their timer restarts.
    pub attempted: Vec<(i32, i32)>,
}

/// Deployments one recruiter may make in one cycle (quotas and maximums usually stop it before).
pub const MAX_DEPLOYMENTS_PER_CYCLE: usize = 500;
/// A worker busier than this fraction of its concurrency is never recycled.
const BUSY_FRACTION: f64 = 0.99;

fn cap(v: Option<i32>) -> Option<i64> {
    v.filter(|m| *m > 0).map(i64::from)
}

fn free_slots(c: &Candidate) -> f64 {
    (f64::from(c.concurrency) - c.load).max(0.0)
}

/// Workers that may be recycled this cycle: matching some active recruiter, scope G or W, not
/// busy, and not needed by their own step's pending tasks.
fn recyclable(s: &Snapshot) -> Vec<Candidate> {
    let wanted: HashSet<(i32, i32)> = s
        .recruiters
        .iter()
        .flat_map(|r| r.offers.iter().map(|o| (o.flavor_id, o.region_id)))
        .collect();
    let mut deficit: HashMap<i32, f64> = HashMap::new();
    let mut out = Vec::new();
    for c in &s.candidates {
        let idle_enough = c.concurrency > 0
            && c.load < f64::from(c.concurrency)
            && c.load / f64::from(c.concurrency) < BUSY_FRACTION;
        let scope_ok = c.scope.is_recyclable();
        if !(idle_enough && scope_ok && wanted.contains(&(c.flavor_id, c.region_id))) {
            continue;
        }
        if let Some(step) = c.step_id {
            let d = deficit
                .entry(step)
                .or_insert_with(|| *s.pending_by_step.get(&step).unwrap_or(&0) as f64);
            if *d > 0.0 {
                // Withheld: its own step still needs it.
                *d -= free_slots(c);
                continue;
            }
        }
        out.push(*c);
    }
    out
}

/// Decides one recruitment cycle.
pub fn plan(s: &Snapshot) -> Plan {
    let mut plan = Plan::default();
    let pool = recyclable(s);
    let mut taken: HashSet<i32> = HashSet::new();
    let mut added: HashMap<i32, f64> = HashMap::new();
    let mut joined: HashMap<i32, i64> = HashMap::new();
    let mut quotas = s.quotas.clone();
    let mut workflows = s.workflows.clone();

    for r in &s.recruiters {
        let target = target_taskrate(r.pending, r.rounds) as f64;
        let mut remaining = target - r.free_rate - added.get(&r.step_id).copied().unwrap_or(0.0);
        if remaining <= 0.0 {
            continue;
        }
        let max_workers = cap(r.max_workers);
        let step_workers = |joined: &HashMap<i32, i64>| {
            r.current_workers + joined.get(&r.step_id).copied().unwrap_or(0)
        };
        let offered: HashSet<(i32, i32)> = r
            .offers
            .iter()
            .map(|o| (o.flavor_id, o.region_id))
            .collect();

        // Recycling first.
        for c in &pool {
            if remaining <= 0.0 || max_workers.is_some_and(|m| step_workers(&joined) >= m) {
                break;
            }
            if taken.contains(&c.worker_id)
                || c.step_id == Some(r.step_id)
                || !offered.contains(&(c.flavor_id, c.region_id))
                || (c.scope == RecyclableScope::Workflow && c.workflow_id != Some(r.workflow_id))
            {
                continue;
            }
            let new_concurrency = r.sizing.concurrency_for(&c.resources);
            let free_fraction = 1.0 - c.load / f64::from(c.concurrency);
            if free_fraction < 1.0 / f64::from(new_concurrency) {
                continue;
            }
            let recovered = (f64::from(new_concurrency) * free_fraction).floor();
            taken.insert(c.worker_id);
            plan.recycles.push(Recycle {
                worker_id: c.worker_id,
                from_step: c.step_id,
                to_step: r.step_id,
                rank: r.rank,
                old_concurrency: c.concurrency,
                new_concurrency,
                new_prefetch: r.sizing.prefetch_for(new_concurrency),
            });
            remaining -= recovered;
            *added.entry(r.step_id).or_default() += recovered;
            *joined.entry(r.step_id).or_default() += 1;
            if let Some(from) = c.workflow_id
                && let Some(w) = workflows.get_mut(&from)
            {
                w.0 -= 1;
            }
            if let Some(w) = workflows.get_mut(&r.workflow_id) {
                w.0 += 1;
            }
        }

        if remaining <= 0.0 || !r.timeout_passed {
            continue;
        }
        let workflow_full = |workflows: &HashMap<i32, (i64, Option<i32>)>| {
            workflows
                .get(&r.workflow_id)
                .is_some_and(|(count, max)| cap(*max).is_some_and(|m| *count >= m))
        };
        if workflow_full(&workflows) {
            continue;
        }
        plan.attempted.push((r.step_id, r.rank));
        let mut deployed = 0;
        while remaining > 0.0 && deployed < MAX_DEPLOYMENTS_PER_CYCLE {
            if workflow_full(&workflows) || max_workers.is_some_and(|m| step_workers(&joined) >= m)
            {
                break;
            }
            let offer = r.offers.iter().find(|o| {
                o.available
                    && quotas.get(&o.region_id).is_some_and(|(q, used)| {
                        quota::can_launch(
                            Some(q),
                            *used,
                            i64::from(o.resources.cpu),
                            o.resources.mem,
                        )
                    })
            });
            let Some(offer) = offer else { break };
            let concurrency = r.sizing.concurrency_for(&offer.resources);
            plan.deployments.push(Deploy {
                step_id: r.step_id,
                rank: r.rank,
                flavor_id: offer.flavor_id,
                region_id: offer.region_id,
                concurrency,
                prefetch: r.sizing.prefetch_for(concurrency),
            });
            if let Some((_, used)) = quotas.get_mut(&offer.region_id) {
                used.add(i64::from(offer.resources.cpu), offer.resources.mem);
            }
            if let Some(w) = workflows.get_mut(&r.workflow_id) {
                w.0 += 1;
            }
            deployed += 1;
            remaining -= f64::from(concurrency);
            *added.entry(r.step_id).or_default() += f64::from(concurrency);
            *joined.entry(r.step_id).or_default() += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests;
