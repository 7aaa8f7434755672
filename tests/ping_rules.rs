//! The ping's rules run as SQL (`tq_ping`, `tq_free_capacity` in schema/0004_ping.sql) so that a
//! ping costs one round trip; `domain::dispatch` keeps them as a pure reference model. These tests
//! check the SQL against the model: capacity on random inputs, and whole pings of random workers
//! (status, capacity, held weights, liveness and stats ages, with or without stats) through gRPC.

mod common;

use std::time::Duration;

use common::{postgres, register_worker, spawn_replica, task, test_config};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as PropConfig, TestRng, TestRunner};
use taskqueue::domain::dispatch::{WorkerSnapshot, free_capacity, plan_ping};
use taskqueue::domain::status::WorkerStatus;
use taskqueue::proto as pb;

#[tokio::test]
async fn sql_capacity_matches_the_rust_rule() {
    let pg = postgres().await;
    let db = pg.connect(&pg.fresh_db().await).await;
    let mut runner = TestRunner::new_with_rng(
        PropConfig::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let weight = prop_oneof![
        Just(0.0),
        Just(1.0 / 3.0),
        Just(0.999),
        0.0f64..40.0,
        (0u32..60).prop_map(|n| f64::from(n) / 3.0),
    ];
    let case = (0i32..24, 0i32..6, proptest::collection::vec(weight, 0..8));
    let mut cases = Vec::new();
    for _ in 0..3000 {
        cases.push(case.new_tree(&mut runner).unwrap().current());
    }
    // Edge cases the generator may miss.
    cases.push((i32::MAX, i32::MAX, vec![]));
    cases.push((0, 0, vec![]));
    cases.push((1, 0, vec![1.0 - 1e-9]));
    cases.push((3, 0, vec![1.0 / 3.0; 6]));
    let conc: Vec<i32> = cases.iter().map(|c| c.0).collect();
    let pre: Vec<i32> = cases.iter().map(|c| c.1).collect();
    // Summed as Postgres sums a worker's weights, in the same order.
    let held: Vec<f64> = cases.iter().map(|c| c.2.iter().sum()).collect();
    let rows = db
        .query(
            "SELECT tq_free_capacity(c, p, h) FROM unnest($1::int[], $2::int[], $3::float8[])
                WITH ORDINALITY AS u(c, p, h, n) ORDER BY n",
            &[&conc, &pre, &held],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), cases.len());
    for (i, row) in rows.iter().enumerate() {
        let sql: i32 = row.get(0);
        assert_eq!(
            sql,
            free_capacity(conc[i], pre[i], held[i]),
            "concurrency {} prefetch {} held {}",
            conc[i],
            pre[i],
            held[i]
        );
    }
}

/// One random worker state before a ping.
#[derive(Debug, Clone)]
struct Case {
    status: WorkerStatus,
    concurrency: i32,
    prefetch: i32,
    /// (status letter, weight) of tasks it holds.
    held: Vec<(&'static str, f64)>,
    /// Age of `last_ping_at` in seconds (None: NULL).
    ping_age: Option<u64>,
    /// Age of stored stats in seconds (None: no row).
    stats_age: Option<u64>,
    send_stats: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let status = prop_oneof![
        Just(WorkerStatus::Ready),
        Just(WorkerStatus::Ready),
        Just(WorkerStatus::Offline),
        Just(WorkerStatus::Quarantined),
        Just(WorkerStatus::Lost),
        Just(WorkerStatus::Paused),
        Just(WorkerStatus::Failing),
        Just(WorkerStatus::Installing),
    ];
    // Ages far from the touch interval (a third of the offline timeout, 10 s by default).
    let age = prop_oneof![Just(None), Just(Some(1u64)), Just(Some(3600u64))];
    let held = proptest::collection::vec(
        (
            prop_oneof![
                Just("A"),
                Just("C"),
                Just("R"),
                Just("O"),
                Just("U"),
                Just("S")
            ],
            prop_oneof![Just(1.0), Just(0.5), Just(2.0), Just(1.0 / 3.0)],
        ),
        0..4,
    );
    (
        status,
        0i32..4,
        0i32..3,
        held,
        age.clone(),
        age,
        any::<bool>(),
    )
        .prop_map(
            |(status, concurrency, prefetch, held, ping_age, stats_age, send_stats)| Case {
                status,
                concurrency,
                prefetch,
                held,
                ping_age,
                stats_age,
                send_stats,
            },
        )
}

#[tokio::test]
async fn every_ping_does_what_the_reference_model_says() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let mut config = test_config(&url);
    config.leader_eligible = false; // no watchdog changing statuses under the test
    let interval = config.last_ping_write_interval();
    let r = spawn_replica(config).await;
    let db = pg.connect(&url).await;
    let mut c = r.worker();
    let cases: Vec<Case> = {
        let mut runner = TestRunner::new_with_rng(
            PropConfig::default(),
            TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        );
        (0..80)
            .map(|_| case().new_tree(&mut runner).unwrap().current())
            .collect()
    };
    // A standing queue larger than every claim together (at most 5 per case).
    for _ in 0..500 {
        c.submit_task(task("true")).await.unwrap();
    }
    let pending: i64 = db
        .query_one("SELECT count(*) FROM task WHERE status = 'P'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pending >= 450, "queue loaded: {pending}");

    for (i, case) in cases.iter().enumerate() {
        let id = register_worker(&mut c, &format!("rule-{i}"), 1, 0, None).await;
        db.execute(
            "UPDATE worker SET status = $2, concurrency = $3, prefetch = $4,
                    last_ping_at = CASE WHEN $5::bigint IS NULL THEN NULL
                                        ELSE now() - make_interval(secs => $5::bigint) END
              WHERE worker_id = $1",
            &[
                &id,
                &case.status.letter(),
                &case.concurrency,
                &case.prefetch,
                &case.ping_age.map(|a| a as i64),
            ],
        )
        .await
        .unwrap();
        db.execute("DELETE FROM worker_stats WHERE worker_id = $1", &[&id])
            .await
            .unwrap();
        if let Some(age) = case.stats_age {
            db.execute(
                "INSERT INTO worker_stats (worker_id, stats, updated_at)
                 VALUES ($1, '\\x', now() - make_interval(secs => $2::bigint))",
                &[&id, &(age as i64)],
            )
            .await
            .unwrap();
        }
        for (status, weight) in &case.held {
            // Taken from the end of the queue: the claim works from the front.
            db.execute(
                "UPDATE task SET status = $2, worker_id = $1, weight = $3
                  WHERE task_id = (SELECT max(task_id) FROM task WHERE status = 'P')",
                &[&id, status, weight],
            )
            .await
            .unwrap();
        }
        let held_weight: f64 = case
            .held
            .iter()
            .filter(|(s, _)| ["A", "C", "D", "O", "R"].contains(s))
            .map(|(_, w)| w)
            .sum();
        let snapshot = WorkerSnapshot {
            status: case.status,
            concurrency: case.concurrency,
            prefetch: case.prefetch,
            held_weight,
            last_ping_age: case.ping_age.map(Duration::from_secs),
            stats_age: case.stats_age.map(Duration::from_secs),
        };
        let plan = plan_ping(&snapshot, case.send_stats, interval);
        let before = db
            .query_one(
                "SELECT last_ping_at, (SELECT count(*) FROM task WHERE worker_id = $1) AS tasks
                   FROM worker WHERE worker_id = $1",
                &[&id],
            )
            .await
            .unwrap();

        let answer = c
            .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
                worker_id: id,
                stats: case.send_stats.then(|| pb::WorkerStats {
                    cpu_usage_percent: 12.5,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();

        let after = db
            .query_one(
                "SELECT w.status, w.last_ping_at, s.stats, s.updated_at > now() - interval '1 minute' AS fresh_stats,
                        (SELECT count(*) FROM task WHERE worker_id = $1) AS tasks
                   FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
                  WHERE w.worker_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let what = format!("case {i}: {case:?} → {plan:?}");
        let claimed = after.get::<_, i64>("tasks") - before.get::<_, i64>("tasks");
        assert_eq!(claimed, i64::from(plan.claim), "claimed tasks, {what}");
        let status: String = after.get("status");
        assert_eq!(
            status,
            plan.back_online.unwrap_or(case.status).letter(),
            "status after the ping, {what}"
        );
        let ping_before: Option<std::time::SystemTime> = before.get("last_ping_at");
        let ping_after: Option<std::time::SystemTime> = after.get("last_ping_at");
        assert_eq!(
            ping_after != ping_before,
            plan.touch_last_ping || plan.back_online.is_some(),
            "last_ping_at written, {what}"
        );
        let stored = after
            .get::<_, Option<Vec<u8>>>("stats")
            .is_some_and(|s| !s.is_empty());
        assert_eq!(stored, plan.store_stats, "stats stored, {what}");
        if !plan.store_stats && case.stats_age == Some(3600) {
            assert_eq!(
                after.get::<_, Option<bool>>("fresh_stats"),
                Some(false),
                "old stats left alone, {what}"
            );
        }
        assert_eq!(answer.concurrency, case.concurrency, "{what}");
        let new_a = case.held.iter().filter(|(s, _)| *s == "A").count() + plan.claim as usize;
        assert_eq!(answer.tasks.len(), new_a, "tasks sent in full, {what}");
    }
}
