//! Tests of the recruiter decisions: examples of each rule, and invariants over random snapshots.

use super::*;
use proptest::prelude::*;

fn res(cpu: i32, mem: f64) -> Resources {
    Resources {
        cpu,
        mem,
        disk: 100.0,
    }
}

fn sizing(concurrency: i32) -> Sizing {
    Sizing {
        concurrency: Some(concurrency),
        prefetch: Some(0),
        ..Sizing::default()
    }
}

fn offer(flavor_id: i32, region_id: i32, cpu: i32) -> Offer {
    Offer {
        flavor_id,
        region_id,
        resources: res(cpu, f64::from(cpu) * 4.0),
        available: true,
    }
}

fn recruiter(step_id: i32, pending: i64, offers: Vec<Offer>) -> ActiveRecruiter {
    ActiveRecruiter {
        step_id,
        rank: 1,
        workflow_id: 1,
        sizing: sizing(2),
        max_workers: None,
        rounds: 1,
        pending,
        free_rate: 0.0,
        current_workers: 0,
        timeout_passed: true,
        offers,
    }
}

fn quota(cpu: i64) -> (Quota, Usage) {
    (
        Quota {
            max_cpu: cpu,
            max_mem: None,
        },
        Usage::default(),
    )
}

fn idle(worker_id: i32, step_id: Option<i32>, flavor_id: i32, cpu: i32) -> Candidate {
    Candidate {
        worker_id,
        step_id,
        workflow_id: step_id.map(|_| 1),
        flavor_id,
        region_id: 1,
        resources: res(cpu, f64::from(cpu) * 4.0),
        concurrency: 2,
        load: 0.0,
        scope: RecyclableScope::Global,
    }
}

#[test]
fn sizing_rules() {
    let s = Sizing {
        cpu_per_task: Some(2),
        memory_per_task: Some(8.0),
        prefetch_percent: Some(50),
        ..Sizing::default()
    };
    assert_eq!(s.concurrency_for(&res(16, 32.0)), 4, "memory binds");
    assert_eq!(s.concurrency_for(&res(4, 64.0)), 2, "cpu binds");
    assert_eq!(s.concurrency_for(&res(1, 1.0)), 1, "at least one");
    assert_eq!(s.prefetch_for(4), 2);
    let clamped = Sizing {
        concurrency_min: Some(3),
        concurrency_max: Some(5),
        ..s.clone()
    };
    assert_eq!(clamped.concurrency_for(&res(1, 1.0)), 3);
    assert_eq!(clamped.concurrency_for(&res(64, 640.0)), 5);
    assert_eq!(sizing(7).concurrency_for(&res(1, 1.0)), 7, "static wins");
    assert_eq!(Sizing::default().concurrency_for(&res(8, 8.0)), 1);
    assert_eq!(sizing(3).prefetch_for(3), 0);
    assert!(s.validate().is_ok());
}

#[test]
fn sizing_validation() {
    let no_conc = Sizing {
        prefetch: Some(1),
        ..Sizing::default()
    };
    assert!(no_conc.validate().is_err());
    let no_prefetch = Sizing {
        concurrency: Some(1),
        ..Sizing::default()
    };
    assert!(no_prefetch.validate().is_err());
    let negative = Sizing {
        prefetch: Some(-1),
        ..sizing(1)
    };
    assert!(negative.validate().is_err());
    let inverted = Sizing {
        concurrency_min: Some(5),
        concurrency_max: Some(2),
        ..sizing(1)
    };
    assert!(inverted.validate().is_err());
    let nan = Sizing {
        memory_per_task: Some(f64::NAN),
        ..sizing(1)
    };
    assert!(nan.validate().is_err());
}

#[test]
fn target_rate_and_activity() {
    assert_eq!(target_taskrate(10, 3), 4);
    assert_eq!(target_taskrate(9, 3), 3);
    assert_eq!(target_taskrate(0, 1), 0);
    assert!(is_active(10, 1, 9.5));
    assert!(!is_active(10, 1, 10.0));
    assert!(!is_active(0, 1, 0.0));
}

#[test]
fn deploys_cheapest_within_quota() {
    let s = Snapshot {
        recruiters: vec![recruiter(10, 100, vec![offer(1, 1, 2), offer(2, 2, 2)])],
        quotas: HashMap::from([(1, quota(6)), (2, quota(4))]),
        ..Snapshot::default()
    };
    let p = plan(&s);
    let per_region = |r| p.deployments.iter().filter(|d| d.region_id == r).count();
    assert_eq!(per_region(1), 3, "cheapest region first, up to its quota");
    assert_eq!(per_region(2), 2, "then the next offer");
    assert!(p.deployments.iter().all(|d| d.concurrency == 2));
    assert_eq!(p.attempted, vec![(10, 1)]);
}

#[test]
fn no_quota_no_deployment_and_timeout_waits() {
    let mut s = Snapshot {
        recruiters: vec![recruiter(10, 100, vec![offer(1, 1, 2)])],
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert!(p.deployments.is_empty());
    assert_eq!(p.attempted, vec![(10, 1)]);
    s.quotas.insert(1, quota(100));
    s.recruiters[0].timeout_passed = false;
    let p = plan(&s);
    assert!(p.deployments.is_empty() && p.attempted.is_empty());
}

#[test]
fn deploys_only_what_is_missing_and_respects_maximums() {
    let mut r = recruiter(10, 10, vec![offer(1, 1, 2)]);
    r.free_rate = 6.0;
    let s = Snapshot {
        recruiters: vec![r.clone()],
        quotas: HashMap::from([(1, quota(1000))]),
        ..Snapshot::default()
    };
    assert_eq!(
        plan(&s).deployments.len(),
        2,
        "4 missing slots, 2 per worker"
    );

    r.free_rate = 0.0;
    r.max_workers = Some(3);
    r.current_workers = 1;
    let s = Snapshot {
        recruiters: vec![r.clone()],
        quotas: HashMap::from([(1, quota(1000))]),
        ..Snapshot::default()
    };
    assert_eq!(plan(&s).deployments.len(), 2, "recruiter maximum");

    r.max_workers = None;
    let s = Snapshot {
        recruiters: vec![r],
        quotas: HashMap::from([(1, quota(1000))]),
        workflows: HashMap::from([(1, (3, Some(4)))]),
        ..Snapshot::default()
    };
    assert_eq!(plan(&s).deployments.len(), 1, "workflow maximum");
}

#[test]
fn rounds_spread_the_load() {
    let mut r = recruiter(10, 100, vec![offer(1, 1, 2)]);
    r.rounds = 10;
    let s = Snapshot {
        recruiters: vec![r],
        quotas: HashMap::from([(1, quota(1000))]),
        ..Snapshot::default()
    };
    assert_eq!(
        plan(&s).deployments.len(),
        5,
        "10 tasks at once, 2 per worker"
    );
}

#[test]
fn recycles_idle_workers_each_with_its_own_concurrency() {
    let mut r = recruiter(10, 100, vec![offer(1, 1, 4), offer(2, 1, 16)]);
    r.sizing = Sizing {
        cpu_per_task: Some(2),
        prefetch_percent: Some(100),
        ..Sizing::default()
    };
    r.timeout_passed = false;
    let s = Snapshot {
        recruiters: vec![r],
        candidates: vec![idle(1, None, 1, 4), idle(2, Some(5), 2, 16)],
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert_eq!(p.recycles.len(), 2);
    assert_eq!(
        (p.recycles[0].new_concurrency, p.recycles[0].new_prefetch),
        (2, 2)
    );
    assert_eq!(
        (p.recycles[1].new_concurrency, p.recycles[1].new_prefetch),
        (8, 8)
    );
    assert_eq!(p.recycles[1].from_step, Some(5));
    assert!(p.deployments.is_empty(), "timeout not passed");
}

#[test]
fn a_worker_is_recycled_once_per_cycle() {
    let s = Snapshot {
        recruiters: vec![
            recruiter(10, 100, vec![offer(1, 1, 2)]),
            recruiter(11, 100, vec![offer(1, 1, 2)]),
        ],
        candidates: vec![idle(1, None, 1, 2)],
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert_eq!(p.recycles.len(), 1);
    assert_eq!(p.recycles[0].to_step, 10);
}

#[test]
fn busy_steps_keep_their_workers_and_own_step_is_skipped() {
    let s = Snapshot {
        recruiters: vec![recruiter(10, 100, vec![offer(1, 1, 2)])],
        candidates: vec![
            idle(1, Some(5), 1, 2),
            idle(2, Some(5), 1, 2),
            idle(3, Some(10), 1, 2),
        ],
        pending_by_step: HashMap::from([(5, 3)]),
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert!(
        p.recycles.is_empty(),
        "step 5 needs both its workers; worker 3 is already there: {p:?}"
    );
    let s = Snapshot {
        pending_by_step: HashMap::from([(5, 2)]),
        ..s
    };
    let p = plan(&s);
    assert_eq!(p.recycles.len(), 1, "one worker covers step 5's two tasks");
    assert_eq!(p.recycles[0].worker_id, 2);
}

#[test]
fn workflow_scope_and_busy_workers() {
    let mut other_workflow = idle(1, Some(5), 1, 2);
    other_workflow.scope = RecyclableScope::Workflow;
    other_workflow.workflow_id = Some(2);
    let mut same_workflow = idle(2, Some(6), 1, 2);
    same_workflow.scope = RecyclableScope::Workflow;
    let mut never = idle(3, None, 1, 2);
    never.scope = RecyclableScope::Never;
    let mut busy = idle(4, None, 1, 2);
    busy.load = 1.99;
    let s = Snapshot {
        recruiters: vec![recruiter(10, 100, vec![offer(1, 1, 2)])],
        candidates: vec![other_workflow, same_workflow, never, busy],
        ..Snapshot::default()
    };
    let ids: Vec<i32> = plan(&s).recycles.iter().map(|r| r.worker_id).collect();
    assert_eq!(ids, vec![2]);
}

#[test]
fn a_half_busy_worker_brings_part_of_its_new_slots() {
    let mut r = recruiter(10, 3, vec![offer(1, 1, 2)]);
    r.sizing = sizing(4);
    let mut half = idle(1, None, 1, 2);
    half.load = 1.0;
    let s = Snapshot {
        recruiters: vec![r],
        candidates: vec![half, idle(2, None, 1, 2)],
        ..Snapshot::default()
    };
    let p = plan(&s);
    // Worker 1 brings floor(4 × 0.5) = 2 slots, worker 2 brings 4: both are needed for 3.
    assert_eq!(p.recycles.len(), 2);
}

#[test]
fn the_next_rank_only_covers_what_is_left() {
    let mut second = recruiter(10, 4, vec![offer(1, 1, 2)]);
    second.rank = 2;
    let s = Snapshot {
        recruiters: vec![recruiter(10, 4, vec![offer(1, 1, 2)]), second],
        quotas: HashMap::from([(1, quota(1000))]),
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert_eq!(p.deployments.len(), 2);
    assert!(p.deployments.iter().all(|d| d.rank == 1));
}

#[test]
fn unavailable_flavors_are_recycled_not_deployed() {
    let mut o = offer(1, 1, 2);
    o.available = false;
    let s = Snapshot {
        recruiters: vec![recruiter(10, 100, vec![o])],
        candidates: vec![idle(1, None, 1, 2)],
        quotas: HashMap::from([(1, quota(1000))]),
        ..Snapshot::default()
    };
    let p = plan(&s);
    assert_eq!(p.recycles.len(), 1);
    assert!(p.deployments.is_empty());
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let offers = proptest::collection::vec(
        (1..6i32, 1..4i32, 1..17i32, any::<bool>()).prop_map(|(f, r, cpu, available)| Offer {
            flavor_id: f,
            region_id: r,
            resources: res(cpu, f64::from(cpu) * 2.0),
            available,
        }),
        0..5,
    );
    let recruiters = proptest::collection::vec(
        (
            1..5i32,
            1..3i32,
            0..300i64,
            0.0..20.0f64,
            proptest::option::of(0..10i32),
            1..4i32,
            any::<bool>(),
            offers,
            proptest::option::of(1..5i32),
            proptest::option::of(1..9i32),
        )
            .prop_map(
                |(step, rank, pending, free, max, rounds, timeout, offers, conc, cpt)| {
                    ActiveRecruiter {
                        step_id: step,
                        rank,
                        workflow_id: step % 2,
                        sizing: Sizing {
                            concurrency: conc,
                            cpu_per_task: cpt,
                            prefetch_percent: Some(50),
                            concurrency_max: Some(6),
                            ..Sizing::default()
                        },
                        max_workers: max,
                        rounds,
                        pending,
                        free_rate: free,
                        current_workers: 2,
                        timeout_passed: timeout,
                        offers,
                    }
                },
            ),
        0..5,
    );
    let candidates = proptest::collection::vec(
        (
            proptest::option::of(1..6i32),
            1..6i32,
            1..4i32,
            1..9i32,
            0.0..10.0f64,
            0..4usize,
        )
            .prop_map(|(step, f, r, conc, load, scope)| (step, f, r, conc, load, scope)),
        0..12,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (step, f, r, conc, load, scope))| Candidate {
                worker_id: i as i32 + 1,
                step_id: step,
                workflow_id: step.map(|s| s % 2),
                flavor_id: f,
                region_id: r,
                resources: res(f * 2, f64::from(f) * 4.0),
                concurrency: conc,
                load,
                scope: RecyclableScope::ALL[scope],
            })
            .collect::<Vec<_>>()
    });
    let quotas = proptest::collection::hash_map(
        1..4i32,
        (0..64i64, proptest::option::of(0.0..200.0f64), 0..16i64),
        0..3,
    );
    (recruiters, candidates, quotas, 0..20i64).prop_map(|(mut rs, candidates, q, pend)| {
        for r in &mut rs {
            let mut seen = HashSet::new();
            r.offers.retain(|o| seen.insert((o.flavor_id, o.region_id)));
        }
        rs.sort_by_key(|r| (r.step_id, r.rank));
        rs.dedup_by_key(|r| (r.step_id, r.rank));
        Snapshot {
            recruiters: rs,
            pending_by_step: candidates
                .iter()
                .filter_map(|c| c.step_id)
                .map(|s| (s, pend))
                .collect(),
            candidates,
            quotas: q
                .into_iter()
                .map(|(r, (cpu, mem, used))| {
                    (
                        r,
                        (
                            Quota {
                                max_cpu: cpu,
                                max_mem: mem,
                            },
                            Usage {
                                cpu: used,
                                mem: 0.0,
                            },
                        ),
                    )
                })
                .collect(),
            workflows: HashMap::from([(0, (1, Some(6))), (1, (0, None))]),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn plans_keep_every_invariant(s in arb_snapshot()) {
        let p = plan(&s);
        // A worker is recycled at most once, only from the candidates, never onto its own step.
        let mut seen = HashSet::new();
        for r in &p.recycles {
            prop_assert!(seen.insert(r.worker_id), "worker {} recycled twice", r.worker_id);
            let c = s.candidates.iter().find(|c| c.worker_id == r.worker_id).unwrap();
            prop_assert_ne!(c.step_id, Some(r.to_step));
            prop_assert!(matches!(c.scope, RecyclableScope::Global | RecyclableScope::Workflow));
            let rec = s.recruiters.iter().find(|x| (x.step_id, x.rank) == (r.to_step, r.rank)).unwrap();
            // Each recycled worker gets the concurrency of its own flavor.
            prop_assert_eq!(r.new_concurrency, rec.sizing.concurrency_for(&c.resources));
            prop_assert_eq!(r.new_prefetch, rec.sizing.prefetch_for(r.new_concurrency));
            prop_assert!(r.new_concurrency >= 1);
        }
        // Deployments stay within each region's quota, and only where one exists.
        let mut used: HashMap<i32, Usage> = s.quotas.iter().map(|(r, (_, u))| (*r, *u)).collect();
        for d in &p.deployments {
            let rec = s.recruiters.iter().find(|x| (x.step_id, x.rank) == (d.step_id, d.rank)).unwrap();
            prop_assert!(rec.timeout_passed);
            let o = rec.offers.iter().find(|o| (o.flavor_id, o.region_id) == (d.flavor_id, d.region_id)).unwrap();
            prop_assert!(o.available);
            let u = used.get_mut(&d.region_id);
            prop_assert!(u.is_some(), "deployment in a region without quota");
            u.unwrap().add(i64::from(o.resources.cpu), o.resources.mem);
        }
        for (region, u) in &used {
            let (q, before) = s.quotas[region];
            if u != &before {
                prop_assert!(u.cpu <= q.max_cpu, "region {} over quota", region);
                if let Some(m) = q.max_mem { prop_assert!(u.mem <= m + 1e-6); }
            }
        }
        // Recruiter maximums: a recruiter joins workers to its step only while under its maximum.
        for r in &s.recruiters {
            let by_r = p.recycles.iter().filter(|x| (x.to_step, x.rank) == (r.step_id, r.rank)).count()
                + p.deployments.iter().filter(|x| (x.step_id, x.rank) == (r.step_id, r.rank)).count();
            if let Some(max) = r.max_workers.filter(|m| *m > 0) && by_r > 0 {
                let upto = p.recycles.iter().filter(|x| x.to_step == r.step_id && x.rank <= r.rank).count()
                    + p.deployments.iter().filter(|x| x.step_id == r.step_id && x.rank <= r.rank).count();
                prop_assert!(r.current_workers + upto as i64 <= i64::from(max),
                    "step {} rank {} over its maximum", r.step_id, r.rank);
            }
        }
        // Workflow maximum (workflow 0 allows 6 and starts with 1 worker): deployments stop there.
        let wf0_deployed = p.deployments.iter().filter(|d| d.step_id % 2 == 0).count() as i64;
        let wf0_out = p.recycles.iter().filter(|r| r.to_step % 2 != 0
            && s.candidates.iter().any(|c| c.worker_id == r.worker_id && c.workflow_id == Some(0))).count() as i64;
        prop_assert!(wf0_deployed <= 5 + wf0_out);
    }
}
