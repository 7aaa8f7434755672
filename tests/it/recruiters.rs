//! Recruiters: CRUD with its validation, and the recruitment cycle run directly on a leader
//! context — deployment within quotas and maximums, timers in the database, recycling (each worker
//! with its own concurrency, weights rescaled, once per cycle), a bad protofilter disabling only
//! its recruiter.

use crate::common;
use crate::fleet_support;

use common::{register_worker, task, workflow_with_step};
use fleet_support::{count, fleet_replica, sql};
use taskqueue::client::Client;
use taskqueue::loops::recruiter::Recruiter;
use taskqueue::proto as pb;
use tonic::Code;

const PROVIDERS: &str = "
fake:
  test:
    regions: [r1, r2]
    quotas: {r1: {cpu: 8, mem: 1000}}
";

fn recruiter(step_id: i32, rank: i32, filter: &str) -> pb::Recruiter {
    pb::Recruiter {
        step_id,
        rank,
        protofilter: filter.into(),
        concurrency: Some(1),
        prefetch: Some(0),
        rounds: 1,
        ..Default::default()
    }
}

async fn flavors(c: &mut Client) {
    for (name, cpu, cost) in [("small", 2, 0.1f32), ("big", 8, 0.5)] {
        c.create_flavor(pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "test".into(),
            flavor_name: name.into(),
            cpu,
            memory: cpu as f32 * 2.0,
            disk: 10.0,
            region_names: vec!["r1".into(), "r2".into()],
            costs: vec![cost, cost / 2.0],
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn submit(c: &mut Client, step: i32, n: usize) {
    for _ in 0..n {
        c.submit_task(pb::TaskRequest {
            step_id: Some(step),
            ..task("true")
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn recruiter_crud_and_validation() {
    let (r, _ctx) = fleet_replica(PROVIDERS).await;
    let mut c = r.plain_user("alice").await;
    let (_, s1) = workflow_with_step(&mut c, "wf", "s1").await;
    let (_, s2) = workflow_with_step(&mut c, "wf2", "s2").await;
    c.create_recruiter(recruiter(s1, 1, "cpu>=2"))
        .await
        .unwrap();
    c.create_recruiter(pb::Recruiter {
        concurrency: None,
        cpu_per_task: Some(2),
        prefetch: None,
        prefetch_percent: Some(50),
        memory_per_task: Some(1.5),
        ..recruiter(s1, 2, "")
    })
    .await
    .unwrap();
    c.create_recruiter(recruiter(s2, 0, "region is default"))
        .await
        .unwrap();

    let bad: Vec<(pb::Recruiter, Code)> = vec![
        (recruiter(s1, 1, "cpu>=4"), Code::AlreadyExists),
        (recruiter(424_242, 1, ""), Code::NotFound),
        (recruiter(0, 1, ""), Code::InvalidArgument),
        (
            pb::Recruiter {
                rounds: 0,
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (
            pb::Recruiter {
                concurrency: None,
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (
            pb::Recruiter {
                concurrency: Some(0),
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (
            pb::Recruiter {
                prefetch: None,
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (
            pb::Recruiter {
                max_workers: Some(-1),
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (
            pb::Recruiter {
                timeout: -1,
                ..recruiter(s1, 5, "")
            },
            Code::InvalidArgument,
        ),
        (recruiter(s1, 5, "cpu>>2"), Code::InvalidArgument),
        (
            recruiter(s1, 5, "cpu>=1;DROP TABLE recruiter"),
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in bad {
        let e = c.create_recruiter(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {}", e.message());
    }
    let e = c
        .create_recruiter(recruiter(s1, 5, "bogus=1"))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("bogus=1"),
        "names the token: {}",
        e.message()
    );

    let all = c
        .list_recruiters(pb::RecruiterFilter { step_id: None })
        .await
        .unwrap()
        .into_inner()
        .recruiters;
    let keys: Vec<(i32, i32)> = all.iter().map(|r| (r.step_id, r.rank)).collect();
    assert_eq!(keys, vec![(s1, 1), (s1, 2), (s2, 0)]);
    assert_eq!(all[1].memory_per_task, Some(1.5));
    assert_eq!(all[1].prefetch_percent, Some(50));
    let only = c
        .list_recruiters(pb::RecruiterFilter { step_id: Some(s2) })
        .await
        .unwrap()
        .into_inner()
        .recruiters;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].protofilter, "region is default");
    let none = c
        .list_recruiters(pb::RecruiterFilter {
            step_id: Some(424_242),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.recruiters.is_empty());

    let update = |step_id: i32, rank: i32| pb::RecruiterUpdate {
        step_id,
        rank,
        ..Default::default()
    };
    c.update_recruiter(pb::RecruiterUpdate {
        rounds: Some(4),
        max_workers: Some(7),
        protofilter: Some("cpu>=4".into()),
        ..update(s1, 1)
    })
    .await
    .unwrap();
    let bad_updates: Vec<(pb::RecruiterUpdate, Code)> = vec![
        (update(s1, 1), Code::InvalidArgument),
        (
            pb::RecruiterUpdate {
                rounds: Some(0),
                ..update(s1, 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::RecruiterUpdate {
                rounds: Some(2),
                ..update(s1, 9)
            },
            Code::NotFound,
        ),
        (
            pb::RecruiterUpdate {
                rounds: Some(2),
                ..update(0, 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::RecruiterUpdate {
                protofilter: Some("x y".into()),
                ..update(s1, 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::RecruiterUpdate {
                concurrency_min: Some(5),
                concurrency_max: Some(2),
                ..update(s1, 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::RecruiterUpdate {
                concurrency: Some(-3),
                ..update(s1, 1)
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in bad_updates {
        let e = c.update_recruiter(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {}", e.message());
    }
    let after = c
        .list_recruiters(pb::RecruiterFilter { step_id: Some(s1) })
        .await
        .unwrap()
        .into_inner()
        .recruiters;
    assert_eq!(
        (
            after[0].rounds,
            after[0].max_workers,
            after[0].protofilter.as_str(),
            after[0].concurrency_min
        ),
        (4, Some(7), "cpu>=4", None),
        "the refused updates changed nothing"
    );

    c.delete_recruiter(pb::RecruiterId {
        step_id: s1,
        rank: 1,
    })
    .await
    .unwrap();
    c.delete_recruiter(pb::RecruiterId {
        step_id: s1,
        rank: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        c.delete_recruiter(pb::RecruiterId {
            step_id: 0,
            rank: 1
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(count(&sql(&r).await, "recruiter").await, 2);
}

#[tokio::test]
async fn recruitment_deploys_within_quota_and_maximums_with_timers_in_the_database() {
    let (r, ctx) = fleet_replica(PROVIDERS).await;
    let mut admin = r.admin().await;
    flavors(&mut admin).await;
    let mut c = r.worker();
    let (_, step) = workflow_with_step(&mut c, "wf", "s").await;
    submit(&mut c, step, 20).await;
    c.create_recruiter(pb::Recruiter {
        timeout: 3600,
        ..recruiter(step, 1, "cpu>=2:cpu<=2")
    })
    .await
    .unwrap();
    let db = sql(&r).await;
    let cycle = Recruiter::new();

    // Active, but its timeout has not passed: the clock starts, nothing is deployed.
    let report = cycle.run_once(&ctx).await.unwrap();
    assert_eq!(report.active, vec![(step, 1)]);
    assert!(report.deployed.is_empty());
    let timers = db
        .query_one(
            "SELECT active_since IS NOT NULL, last_deploy_at IS NULL FROM recruiter",
            &[],
        )
        .await
        .unwrap();
    assert!(timers.get::<_, bool>(0) && timers.get::<_, bool>(1));

    // The timeout passed (an hour ago, as far as the database knows).
    db.execute(
        "UPDATE recruiter SET active_since = now() - interval '2 hours'",
        &[],
    )
    .await
    .unwrap();
    let report = cycle.run_once(&ctx).await.unwrap();
    assert_eq!(
        report.deployed.len(),
        4,
        "8 vCPUs of quota in r1; r2 has no quota"
    );
    let rows = db
        .query(
            "SELECT r.region_name, w.step_id, w.concurrency, w.prefetch, w.status, j.action
               FROM worker w JOIN region r USING (region_id) JOIN job j USING (worker_id)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert_eq!(row.get::<_, String>(0), "r1");
        assert_eq!(row.get::<_, Option<i32>>(1), Some(step));
        assert_eq!((row.get::<_, i32>(2), row.get::<_, i32>(3)), (1, 0));
        assert_eq!(
            (row.get::<_, String>(4), row.get::<_, String>(5)),
            ("I".into(), "C".into())
        );
    }
    let deployed_at: bool = db
        .query_one("SELECT last_deploy_at IS NOT NULL FROM recruiter", &[])
        .await
        .unwrap()
        .get(0);
    assert!(deployed_at);

    // Quota full: later cycles deploy nothing, even once the timeout passes again.
    db.execute("UPDATE recruiter SET last_deploy_at = now() - interval '2 hours', active_since = now() - interval '2 hours'", &[])
        .await
        .unwrap();
    assert!(cycle.run_once(&ctx).await.unwrap().deployed.is_empty());
    assert_eq!(count(&db, "worker").await, 4);
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("taskqueue_recruiter_deployments_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskqueue_workers{status=\"I\",provider=\"fake.test\"}"),
        "{metrics}"
    );

    // No pending task left: inactive, its clock stops.
    db.execute("UPDATE task SET status = 'S'", &[])
        .await
        .unwrap();
    let report = cycle.run_once(&ctx).await.unwrap();
    assert!(report.active.is_empty());
    let stopped: bool = db
        .query_one("SELECT active_since IS NULL FROM recruiter", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stopped);
}

#[tokio::test]
async fn recruiter_and_workflow_maximums_cap_deployments() {
    let (r, ctx) =
        fleet_replica("fake:\n  test:\n    regions: [r1]\n    quotas: {r1: {cpu: 1000}}\n").await;
    let mut admin = r.admin().await;
    admin
        .create_flavor(pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "test".into(),
            flavor_name: "small".into(),
            cpu: 2,
            memory: 4.0,
            region_names: vec!["r1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut c = r.worker();
    let (_, s1) = workflow_with_step(&mut c, "wf1", "s").await;
    submit(&mut c, s1, 30).await;
    c.create_recruiter(pb::Recruiter {
        max_workers: Some(3),
        ..recruiter(s1, 1, "")
    })
    .await
    .unwrap();
    let wf2 = c
        .create_workflow(pb::WorkflowRequest {
            name: "wf2".into(),
            maximum_workers: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let s2 = c
        .create_step(pb::StepRequest {
            name: "s".into(),
            workflow_id: Some(wf2),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    submit(&mut c, s2, 30).await;
    // Concurrency from the flavor: 2 vCPUs / 1 per task = 2 slots per worker.
    c.create_recruiter(pb::Recruiter {
        concurrency: None,
        cpu_per_task: Some(1),
        prefetch: None,
        prefetch_percent: Some(100),
        ..recruiter(s2, 1, "")
    })
    .await
    .unwrap();
    let report = Recruiter::new().run_once(&ctx).await.unwrap();
    assert_eq!(report.deployed.len(), 5);
    let db = sql(&r).await;
    let per_step = db
        .query("SELECT step_id, count(*), min(concurrency), min(prefetch) FROM worker GROUP BY step_id ORDER BY 1", &[])
        .await
        .unwrap();
    let got: Vec<(i32, i64, i32, i32)> = per_step
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got, vec![(s1, 3, 1, 0), (s2, 2, 2, 2)]);
}

#[tokio::test]
async fn idle_workers_are_recycled_each_with_its_own_concurrency_and_once() {
    let (r, ctx) = fleet_replica(PROVIDERS).await;
    let mut c = r.worker();
    let (wf, a) = workflow_with_step(&mut c, "wf", "a").await;
    let b = c
        .create_step(pb::StepRequest {
            name: "b".into(),
            workflow_id: Some(wf),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    let d = c
        .create_step(pb::StepRequest {
            name: "d".into(),
            workflow_id: Some(wf),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    // Local workers (RegisterSpecifications gives them a local flavor and scope G) on step a.
    let worker = |name: &'static str, cpu: i32| {
        let mut c = c.clone();
        async move {
            let id = register_worker(&mut c, name, 2, 0, Some(a)).await;
            c.register_specifications(pb::ResourceSpec {
                worker_id: id.to_string(),
                cpu,
                mem: 64.0,
                disk: 100.0,
            })
            .await
            .unwrap();
            id
        }
    };
    let eight = worker("eight", 8).await;
    let four = worker("four", 4).await;
    let never = worker("never", 8).await;
    let db = sql(&r).await;
    db.execute(
        "UPDATE worker SET recyclable_scope = 'N' WHERE worker_id = $1",
        &[&never],
    )
    .await
    .unwrap();
    // "eight" runs one task of step a (half its slots); a has nothing pending.
    submit(&mut c, a, 1).await;
    let assigned = common::ping(&mut c, eight).await.tasks;
    assert_eq!(assigned.len(), 1);
    let running = assigned[0].task_id;
    common::set_status(&mut c, running, "R").await;

    submit(&mut c, b, 40).await;
    submit(&mut c, d, 40).await;
    let dynamic = pb::Recruiter {
        concurrency: None,
        cpu_per_task: Some(2),
        prefetch: None,
        prefetch_percent: Some(50),
        timeout: 3600,
        ..recruiter(b, 1, "provider=local.local")
    };
    c.create_recruiter(dynamic.clone()).await.unwrap();
    c.create_recruiter(pb::Recruiter {
        step_id: d,
        ..dynamic
    })
    .await
    .unwrap();

    let report = Recruiter::new().run_once(&ctx).await.unwrap();
    let mut recycled = report.recycled.clone();
    recycled.sort();
    assert_eq!(
        recycled,
        vec![(eight, b), (four, b)],
        "each worker once, to the first recruiter"
    );
    assert!(report.deployed.is_empty(), "timeout not passed");
    let workers = db
        .query(
            "SELECT worker_id, step_id, concurrency, prefetch FROM worker ORDER BY worker_id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, Option<i32>, i32, i32)> = workers
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (eight, Some(b), 4, 2),
            (four, Some(b), 2, 1),
            (never, Some(a), 2, 0)
        ],
        "8 vCPUs / 2 per task = 4 slots, 4 / 2 = 2"
    );
    let weight: f64 = db
        .query_one("SELECT weight FROM task WHERE task_id = $1", &[&running])
        .await
        .unwrap()
        .get(0);
    assert!((weight - 2.0).abs() < 1e-9, "rescaled by 4/2: {weight}");
    // Its next ping tells the worker about the new weight and concurrency.
    let pinged = common::ping(&mut c, eight).await;
    assert_eq!(pinged.concurrency, 4);
    let update = pinged.updates.expect("weights").updates;
    assert!((update[&running].weight - 2.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_bad_protofilter_disables_only_its_recruiter() {
    let (r, ctx) = fleet_replica(PROVIDERS).await;
    let mut admin = r.admin().await;
    flavors(&mut admin).await;
    let mut c = r.worker();
    let (_, bad) = workflow_with_step(&mut c, "wf", "bad").await;
    let (_, good) = workflow_with_step(&mut c, "wf2", "good").await;
    submit(&mut c, bad, 5).await;
    submit(&mut c, good, 5).await;
    c.create_recruiter(recruiter(good, 1, "cpu>=2"))
        .await
        .unwrap();
    let db = sql(&r).await;
    // Stored before this version validated filters (e.g. migrated from the original).
    db.execute(
        "INSERT INTO recruiter (step_id, rank, protofilter, worker_concurrency, worker_prefetch)
         VALUES ($1, 1, 'cpu>>2', 1, 0)",
        &[&bad],
    )
    .await
    .unwrap();
    let cycle = Recruiter::new();
    let report = cycle.run_once(&ctx).await.unwrap();
    assert_eq!(report.disabled, vec![(bad, 1)]);
    assert_eq!(report.active, vec![(good, 1)]);
    assert_eq!(
        report.deployed.len(),
        4,
        "the other recruiter still deploys"
    );
    let reason: Option<String> = db
        .query_one(
            "SELECT disabled_reason FROM recruiter WHERE step_id = $1",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.unwrap().contains("cpu>>2"));
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM worker_event WHERE event_class = 'recruiter' AND level = 'E'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    // Said once, not every cycle.
    assert!(cycle.run_once(&ctx).await.unwrap().disabled.is_empty());
    assert_eq!(count(&db, "worker_event").await, 1);
    // Fixing it re-enables it (an admin: rows from before owners were recorded are theirs).
    admin
        .update_recruiter(pb::RecruiterUpdate {
            step_id: bad,
            rank: 1,
            protofilter: Some("cpu>=2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let reason: Option<String> = db
        .query_one(
            "SELECT disabled_reason FROM recruiter WHERE step_id = $1",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, None);
}
