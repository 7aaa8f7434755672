//! Dispatch rules of ping-and-assign (docs/architecture.md#pingandtakenewtasks): a worker's free
//! capacity, where its claim starts among the pending-queue shards, what a ping must write, and how
//! the tasks a worker holds are reported back. Pure and benchmarked (benches/dispatch.rs).

use std::time::Duration;

use super::status::{TaskStatus, WorkerStatus};

/// Free capacity of a worker, in tasks of weight 1: floor(concurrency + prefetch − Σweight of its
/// tasks in A/C/D/O/R + 0.01), never negative. The 0.01 absorbs float residue of rescaled weights.
pub fn free_capacity(concurrency: i32, prefetch: i32, held_weight: f64) -> i32 {
    let room = f64::from(concurrency.max(0)) + f64::from(prefetch.max(0)) - held_weight + 0.01;
    if room.is_finite() && room >= 1.0 {
        room.floor().min(f64::from(i32::MAX)) as i32
    } else {
        0
    }
}

/// Shard of a task: `task_id mod shards`.
pub fn shard_of(task_id: i32, shards: u16) -> i16 {
    task_id.rem_euclid(i32::from(shards.max(1))) as i16
}

/// The shard a worker's claim starts at, derived from its id so that concurrent claimers spread
/// over the shards instead of queueing on the same one.
pub fn first_shard(worker_id: i32, shards: u16) -> i16 {
    // A multiplicative hash: consecutive worker ids land on distant shards.
    let mixed = (worker_id as u32).wrapping_mul(0x9E37_79B1);
    (mixed % u32::from(shards.max(1))) as i16
}

/// What a ping has to do beyond reading, decided from what the worker row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPlan {
    /// How many tasks to claim (0: none).
    pub claim: i32,
    /// The status an offline worker comes back to (O→R, Q→P, L→F).
    pub back_online: Option<WorkerStatus>,
    /// `last_ping_at` is stale (older than a third of the offline timeout) and must be rewritten.
    pub touch_last_ping: bool,
    /// The stats the ping carries are stored (with the liveness write, or when none are).
    pub store_stats: bool,
}

impl PingPlan {
    /// Whether the ping writes anything at all (an idle ping of a live worker does not).
    pub fn writes(&self) -> bool {
        self.claim > 0 || self.back_online.is_some() || self.touch_last_ping || self.store_stats
    }

    /// Whether the ping is idle — answered from its reads alone, nothing written and no second
    /// round trip: it has nothing to write, and nothing to claim (no room, or `maybe_pending`, the
    /// snapshot's probe of the worker's queue, found no pending task: `Some(false)`; `None`, not
    /// probed, counts as "maybe").
    pub fn is_idle(&self, maybe_pending: Option<bool>) -> bool {
        self.back_online.is_none()
            && !self.touch_last_ping
            && !self.store_stats
            && (self.claim == 0 || maybe_pending == Some(false))
    }
}

/// Inputs of `plan_ping`, read from the worker row in one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerSnapshot {
    pub status: WorkerStatus,
    pub concurrency: i32,
    pub prefetch: i32,
    pub held_weight: f64,
    /// Age of `last_ping_at`; `None` if never written.
    pub last_ping_age: Option<Duration>,
    /// Age of the stored stats; `None` if none stored.
    pub stats_age: Option<Duration>,
}

/// Decides a ping: only a worker in R (or coming back to R) with free capacity claims. The server
/// runs this rule as SQL (`tq_ping`, schema/0004_ping.sql, one round trip per ping); this is its
/// reference model, and tests/it/ping_rules.rs checks the SQL against it on random workers.
pub fn plan_ping(
    w: &WorkerSnapshot,
    has_stats: bool,
    last_ping_write_interval: Duration,
) -> PingPlan {
    let back_online = w.status.back_online();
    // R, or O coming back to R (`WorkerStatus::TAKES_TASKS`).
    let claim = if w.status.takes_tasks() {
        free_capacity(w.concurrency, w.prefetch, w.held_weight)
    } else {
        0
    };
    let touch_last_ping = w
        .last_ping_age
        .is_none_or(|age| age >= last_ping_write_interval);
    PingPlan {
        claim,
        back_online,
        touch_last_ping,
        // Stats ride on the liveness write (or are stored when there are none yet), so an idle
        // ping of a live worker writes nothing.
        store_stats: has_stats && (touch_last_ping || w.stats_age.is_none()),
    }
}

/// Statuses a ping reports back (as the original: O is not among them).
pub const REPORTED: &[TaskStatus] = &[
    TaskStatus::Assigned,
    TaskStatus::Accepted,
    TaskStatus::Downloading,
    TaskStatus::Running,
    TaskStatus::UploadingSuccess,
    TaskStatus::UploadingFailure,
];

/// One task a worker holds, as the ping reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldTask {
    pub task_id: i32,
    pub status: TaskStatus,
    pub weight: f64,
}

/// How a ping answer sorts the tasks a worker holds: A tasks are sent in full (re-sent until the
/// worker accepts them), the others are listed as active; every reported task gets its weight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub to_send: Vec<i32>,
    pub active: Vec<i32>,
    pub weights: Vec<(i32, f64)>,
}

pub fn report(held: &[HeldTask]) -> Report {
    let mut r = Report::default();
    for t in held.iter().filter(|t| REPORTED.contains(&t.status)) {
        r.weights.push((t.task_id, t.weight));
        if t.status == TaskStatus::Assigned {
            r.to_send.push(t.task_id);
        } else {
            r.active.push(t.task_id);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn capacity_examples() {
        assert_eq!(free_capacity(4, 0, 0.0), 4);
        assert_eq!(free_capacity(4, 2, 3.0), 3);
        assert_eq!(free_capacity(4, 0, 4.0), 0);
        assert_eq!(free_capacity(4, 0, 5.0), 0);
        assert_eq!(free_capacity(2, 0, 0.999), 1);
        assert_eq!(free_capacity(3, 0, 2.0 * (1.0 / 3.0) * 3.0), 1);
        assert_eq!(
            free_capacity(1, 0, 1.0 - 1e-9),
            0,
            "float residue does not create a slot"
        );
        assert_eq!(free_capacity(-1, -1, 0.0), 0);
        assert_eq!(free_capacity(1, 0, f64::NAN), 0);
    }

    #[test]
    fn shards_cover_everything() {
        for n in [1u16, 2, 16, 17] {
            for id in [-5, 0, 1, 7, 1000, i32::MAX] {
                assert!((shard_of(id, n) as u16) < n);
                assert!((first_shard(id, n) as u16) < n);
            }
        }
        let starts: std::collections::HashSet<_> = (1..=64).map(|w| first_shard(w, 16)).collect();
        assert!(
            starts.len() >= 12,
            "consecutive workers start on different shards: {starts:?}"
        );
    }

    fn snapshot(status: WorkerStatus) -> WorkerSnapshot {
        WorkerSnapshot {
            status,
            concurrency: 2,
            prefetch: 1,
            held_weight: 1.0,
            last_ping_age: Some(Duration::from_secs(1)),
            stats_age: Some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn pings() {
        let iv = Duration::from_secs(10);
        let p = plan_ping(&snapshot(WorkerStatus::Ready), true, iv);
        assert_eq!(
            p,
            PingPlan {
                claim: 2,
                back_online: None,
                touch_last_ping: false,
                store_stats: false
            }
        );
        let mut full = snapshot(WorkerStatus::Ready);
        full.held_weight = 3.0;
        assert!(
            !plan_ping(&full, true, iv).writes(),
            "an idle ping of a busy live worker writes nothing"
        );
        let p = plan_ping(&snapshot(WorkerStatus::Offline), false, iv);
        assert_eq!((p.claim, p.back_online), (2, Some(WorkerStatus::Ready)));
        let p = plan_ping(&snapshot(WorkerStatus::Quarantined), false, iv);
        assert_eq!(
            (p.claim, p.back_online),
            (0, Some(WorkerStatus::Paused)),
            "an operator pause survives"
        );
        for s in [
            WorkerStatus::Paused,
            WorkerStatus::Failing,
            WorkerStatus::Installing,
            WorkerStatus::Deleting,
        ] {
            assert_eq!(
                plan_ping(&snapshot(s), false, iv).claim,
                0,
                "{s:?} gets no new task"
            );
        }
        let mut stale = snapshot(WorkerStatus::Paused);
        stale.last_ping_age = Some(Duration::from_secs(11));
        stale.stats_age = None;
        let p = plan_ping(&stale, true, iv);
        assert!(p.touch_last_ping && p.store_stats);
    }

    #[test]
    fn idle_pings() {
        let iv = Duration::from_secs(10);
        let mut full = snapshot(WorkerStatus::Ready);
        full.held_weight = 3.0;
        let p = plan_ping(&full, true, iv);
        for probe in [None, Some(true), Some(false)] {
            assert!(
                p.is_idle(probe),
                "no room, nothing to write: idle ({probe:?})"
            );
        }
        let room = plan_ping(&snapshot(WorkerStatus::Ready), true, iv);
        assert!(room.claim > 0);
        assert!(room.is_idle(Some(false)), "room but nothing pending: idle");
        assert!(!room.is_idle(Some(true)) && !room.is_idle(None));
        let back = plan_ping(&snapshot(WorkerStatus::Quarantined), false, iv);
        assert!(!back.is_idle(Some(false)), "coming back online writes");
        let mut stale = snapshot(WorkerStatus::Paused);
        stale.last_ping_age = None;
        assert!(
            !plan_ping(&stale, false, iv).is_idle(Some(false)),
            "liveness write"
        );
        let mut no_stats = snapshot(WorkerStatus::Paused);
        no_stats.stats_age = None;
        assert!(
            !plan_ping(&no_stats, true, iv).is_idle(Some(false)),
            "first stats"
        );
        assert!(plan_ping(&no_stats, false, iv).is_idle(None));
    }

    #[test]
    fn report_sorts_held_tasks() {
        use TaskStatus::*;
        let held = [
            (1, Assigned),
            (2, Accepted),
            (3, OnHold),
            (4, UploadingFailure),
        ]
        .map(|(task_id, status)| HeldTask {
            task_id,
            status,
            weight: 0.5,
        });
        let r = report(&held);
        assert_eq!(r.to_send, vec![1]);
        assert_eq!(r.active, vec![2, 4]);
        assert_eq!(r.weights.len(), 3, "O is not reported, as the original");
    }

    proptest! {
        /// Claiming the free capacity (weight-1 tasks) never puts a worker above concurrency +
        /// prefetch, whatever it already holds.
        #[test]
        fn claiming_never_exceeds_capacity(c in 0i32..64, p in 0i32..16, weights in proptest::collection::vec(0.01f64..4.0, 0..40)) {
            let held: f64 = weights.iter().sum();
            let free = free_capacity(c, p, held);
            prop_assert!(free >= 0);
            if free > 0 {
                prop_assert!(held + f64::from(free) <= f64::from(c + p) + 0.011);
            } else {
                prop_assert!(held + 1.0 > f64::from(c + p) + 0.01 - 1e-9, "a free slot was left unused");
            }
        }

        /// Repeated pings claiming what is free converge to exactly full, never beyond.
        #[test]
        fn repeated_pings_fill_exactly(c in 1i32..32, p in 0i32..8, pings in 1usize..10) {
            let mut held = 0.0;
            for _ in 0..pings {
                held += f64::from(free_capacity(c, p, held));
                prop_assert!(held <= f64::from(c + p));
            }
            prop_assert_eq!(held, f64::from(c + p));
        }

        /// Rescaling weights by new/old concurrency keeps the used fraction of a worker.
        #[test]
        fn rescaled_weights_keep_their_share(old in 1i32..32, new in 1i32..32, n in 0i32..32) {
            let n = n.min(old);
            let rescaled = f64::from(n) * f64::from(new) / f64::from(old);
            let used_before = f64::from(n) / f64::from(old);
            let used_after = rescaled / f64::from(new);
            prop_assert!((used_before - used_after).abs() < 1e-9);
            prop_assert!(free_capacity(new, 0, rescaled) <= new);
        }
    }
}
