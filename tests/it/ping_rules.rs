//! The ping's rules run as SQL (`tq_ping`, `tq_free_capacity` in schema/0004_ping.sql) so that a
//! ping costs one round trip; `domain::dispatch` keeps them as a pure reference model. These tests
//! check the SQL against the model: capacity on random inputs, and whole pings of random workers
//! (status, capacity, held weights, liveness and stats ages, with or without stats) through gRPC.

use crate::common;

use std::time::Duration;

use common::{postgres, register_worker, spawn_replica, task, test_config};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as PropConfig, TestRng, TestRunner};
use prost::Message as _;
use taskqueue::db::Db;
use taskqueue::db::dispatch::{DispatchConfig, PingRequest, ping_batch};
use taskqueue::domain::dispatch::{WorkerSnapshot, free_capacity, plan_ping};
use taskqueue::domain::status::WorkerStatus;
use taskqueue::error::Code;
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

/// Puts worker `id` in the state of `case` (tasks it holds taken from the end of the queue) and
/// returns the snapshot the reference model decides on.
async fn prepare(db: &tokio_postgres::Client, id: i32, case: &Case) -> WorkerSnapshot {
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
    WorkerSnapshot {
        status: case.status,
        concurrency: case.concurrency,
        prefetch: case.prefetch,
        held_weight,
        last_ping_age: case.ping_age.map(Duration::from_secs),
        stats_age: case.stats_age.map(Duration::from_secs),
    }
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
        let snapshot = prepare(&db, id, case).await;
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

/// A standing queue of `n` step-less pending tasks, inserted in one statement.
async fn standing_queue(db: &tokio_postgres::Client, n: i32, shards: u16) {
    db.execute(
        "INSERT INTO task (task_id, shard, command, container, pending_since)
         SELECT id, id % $2, 'true', '', now()
           FROM (SELECT nextval('task_task_id_seq')::integer AS id FROM generate_series(1, $1)) s",
        &[&n, &i32::from(shards)],
    )
    .await
    .unwrap();
}

/// What the batch-path tests share: the dispatch settings of a replica with no leader loops (no
/// watchdog changing statuses under the test) on a fresh database, the replica, a direct
/// connection for checks, a worker client for registrations and a pooled connection to call
/// `ping_batch` on.
async fn batch_fixture() -> (
    DispatchConfig,
    common::Replica,
    tokio_postgres::Client,
    taskqueue::client::Client,
    taskqueue::db::Client,
) {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let mut config = test_config(&url);
    config.leader_eligible = false;
    let cfg = DispatchConfig {
        shards: config.assign_shards,
        last_ping_write_interval: config.last_ping_write_interval(),
    };
    let replica = spawn_replica(config).await;
    let worker = replica.worker();
    let db = pg.connect(&url).await;
    let pooled = Db::connect(&url, 2).unwrap().client().await.unwrap();
    (cfg, replica, db, worker, pooled)
}

/// A batch: random workers, then extra pings (worker index, position, with stats) that make some
/// of them ping twice in one batch.
fn batch() -> impl Strategy<Value = (Vec<Case>, Vec<(usize, usize, bool)>, bool)> {
    (
        proptest::collection::vec(case(), 1..8),
        proptest::collection::vec((0usize..64, 0usize..64, any::<bool>()), 0..4),
        proptest::bool::weighted(0.2),
    )
}

/// The batch path (`db::dispatch::ping_batch`: one read for every ping of the batch, one
/// `tq_ping_batch` call for those that write) against the reference model applied ping after
/// ping: a ping is answered from the read when the model says it writes nothing; the others run
/// in order, each seeing what the previous ones of its worker wrote.
#[tokio::test]
async fn every_batch_does_what_the_reference_model_says() {
    let (cfg, _replica, db, mut c, client) = batch_fixture().await;
    let interval = cfg.last_ping_write_interval;
    // Larger than every claim together (at most 5 per worker).
    standing_queue(&db, 2000, cfg.shards).await;

    let mut runner = TestRunner::new_with_rng(
        PropConfig::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut duplicated_batches = 0;
    for round in 0..40 {
        let (cases, extras, unknown) = batch().new_tree(&mut runner).unwrap().current();
        let mut ids = Vec::new();
        let mut snaps = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let id = register_worker(&mut c, &format!("batch-{round}-{i}"), 1, 0, None).await;
            snaps.push(prepare(&db, id, case).await);
            ids.push(id);
        }
        // (worker index, with stats) per ping, in batch order.
        let mut pings: Vec<(Option<usize>, bool)> = cases
            .iter()
            .enumerate()
            .map(|(i, case)| (Some(i), case.send_stats))
            .collect();
        for &(w, pos, stats) in &extras {
            pings.insert(pos % (pings.len() + 1), (Some(w % cases.len()), stats));
        }
        if unknown {
            pings.insert(pings.len() / 2, (None, false));
        }
        if !extras.is_empty() {
            duplicated_batches += 1;
        }

        // The model, ping after ping.
        let mut state = snaps.clone();
        let mut claims = vec![0i32; cases.len()];
        let mut touched = vec![false; cases.len()];
        let mut stored = vec![false; cases.len()];
        let mut answered_from_read = vec![false; pings.len()];
        for (j, &(w, stats)) in pings.iter().enumerate() {
            let Some(w) = w else { continue };
            if !plan_ping(&snaps[w], stats, interval).writes() {
                answered_from_read[j] = true;
                continue;
            }
            let plan = plan_ping(&state[w], stats, interval);
            claims[w] += plan.claim;
            if plan.touch_last_ping || plan.back_online.is_some() {
                touched[w] = true;
                state[w].last_ping_age = Some(Duration::ZERO);
            }
            if plan.store_stats {
                stored[w] = true;
                state[w].stats_age = Some(Duration::ZERO);
            }
            if let Some(s) = plan.back_online {
                state[w].status = s;
            }
            state[w].held_weight += f64::from(plan.claim);
        }

        let before = db
            .query(
                "SELECT w.worker_id, w.last_ping_at, (SELECT count(*) FROM task t WHERE t.worker_id = w.worker_id)
                   FROM worker w WHERE w.worker_id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();
        let reqs: Vec<PingRequest> = pings
            .iter()
            .map(|&(w, stats)| PingRequest {
                worker_id: w.map_or(i32::MAX, |w| ids[w]),
                stats: stats.then(|| {
                    pb::WorkerStats {
                        cpu_usage_percent: 12.5,
                        ..Default::default()
                    }
                    .encode_to_vec()
                }),
            })
            .collect();
        let answers = ping_batch(&client, &cfg, &reqs).await.unwrap();
        assert_eq!(answers.len(), reqs.len());
        let after = db
            .query(
                "SELECT w.worker_id, w.last_ping_at, (SELECT count(*) FROM task t WHERE t.worker_id = w.worker_id),
                        w.status, s.stats
                   FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
                  WHERE w.worker_id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();

        let what = |w: usize| format!("round {round}, worker {w}: {:?}, pings {pings:?}", cases[w]);
        for (w, &id) in ids.iter().enumerate() {
            let b = before.iter().find(|r| r.get::<_, i32>(0) == id).unwrap();
            let a = after.iter().find(|r| r.get::<_, i32>(0) == id).unwrap();
            let claimed = a.get::<_, i64>(2) - b.get::<_, i64>(2);
            assert_eq!(claimed, i64::from(claims[w]), "claimed, {}", what(w));
            assert_eq!(
                a.get::<_, String>(3),
                state[w].status.letter(),
                "status, {}",
                what(w)
            );
            let ping_before: Option<std::time::SystemTime> = b.get(1);
            let ping_after: Option<std::time::SystemTime> = a.get(1);
            assert_eq!(
                ping_after != ping_before,
                touched[w],
                "last_ping_at written, {}",
                what(w)
            );
            let has_stats = a
                .get::<_, Option<Vec<u8>>>(4)
                .is_some_and(|s| !s.is_empty());
            assert_eq!(has_stats, stored[w], "stats stored, {}", what(w));
            let waits: usize = pings
                .iter()
                .zip(&answers)
                .filter(|((p, _), _)| *p == Some(w))
                .map(|(_, a)| a.as_ref().unwrap().claimed_waits.len())
                .sum();
            assert_eq!(waits, claims[w] as usize, "claims reported, {}", what(w));
        }
        for (j, (&(w, _), answer)) in pings.iter().zip(&answers).enumerate() {
            let Some(w) = w else {
                let e = answer.as_ref().expect_err("unknown worker");
                assert_eq!(e.code, Code::NotFound, "{e}");
                continue;
            };
            let answer = answer.as_ref().unwrap();
            assert_eq!(answer.concurrency, cases[w].concurrency, "{}", what(w));
            let held_a = cases[w].held.iter().filter(|(s, _)| *s == "A").count();
            let sent = if answered_from_read[j] {
                held_a
            } else {
                held_a + claims[w] as usize
            };
            assert_eq!(
                answer.tasks.len(),
                sent,
                "ping {j}: tasks sent in full, {}",
                what(w)
            );
        }
    }
    assert!(
        duplicated_batches >= 10,
        "batches with a worker twice: {duplicated_batches}"
    );
}

/// When a batch wants more than the queue holds, every ping gets a task before any gets a second,
/// and nobody goes above its capacity.
#[tokio::test]
async fn claims_spread_fairly_across_a_batch() {
    let (cfg, _replica, db, mut c, client) = batch_fixture().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(register_worker(&mut c, &format!("fair-{i}"), 4, 0, None).await);
    }
    standing_queue(&db, 8, cfg.shards).await;
    let reqs: Vec<PingRequest> = ids
        .iter()
        .map(|&worker_id| PingRequest {
            worker_id,
            stats: None,
        })
        .collect();
    let answers = ping_batch(&client, &cfg, &reqs).await.unwrap();
    let got: Vec<usize> = answers
        .iter()
        .map(|a| a.as_ref().unwrap().tasks.len())
        .collect();
    assert_eq!(got.iter().sum::<usize>(), 8, "{got:?}");
    assert!(got.iter().all(|&n| (1..=4).contains(&n)), "{got:?}");
}

/// One batch claims at most 4,096 tasks per step (tq_claim_many's cap: its slots are built in
/// memory); a worker with more room gets the rest at its next pings, and never more than its room.
#[tokio::test]
async fn a_big_worker_fills_over_several_pings() {
    let (cfg, _replica, db, mut c, client) = batch_fixture().await;
    let id = register_worker(&mut c, "big", 5000, 0, None).await;
    standing_queue(&db, 6000, cfg.shards).await;
    let req = [PingRequest {
        worker_id: id,
        stats: None,
    }];
    let mut got = Vec::new();
    for _ in 0..3 {
        let answers = ping_batch(&client, &cfg, &req).await.unwrap();
        got.push(answers[0].as_ref().unwrap().claimed_waits.len());
    }
    assert_eq!(got, vec![4096, 904, 0], "claims per ping");
    let held: i64 = db
        .query_one("SELECT count(*) FROM task WHERE worker_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 5000);
}

/// The queue probe in a batch's first read stays a per-worker index probe that stops at the first
/// pending task, and the held tasks are read per worker, under the batch loop's generic plan and
/// with statistics that predate the queue (ANALYZE on empty tables, then 3,000 pending tasks and
/// 3,000 running on another worker): PostgreSQL would otherwise plan the EXISTS as a hashed subplan
/// that reads every pending task once per batch, and pull the held tasks' subquery up into a join
/// that reads every running task of every worker (measured in the lifecycle bench: 2.2 ms a
/// batch). No node of the plan may read more than a handful of rows.
#[tokio::test]
async fn a_batch_read_probes_the_queue_without_reading_it() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = pg.connect(&url).await;
    db.batch_execute(
        "ANALYZE task; ANALYZE worker;
         INSERT INTO task (command, container, status, shard, pending_since)
              SELECT 'echo', 'c', 'P', g % 16, now() FROM generate_series(1, 3000) g;
         INSERT INTO worker (worker_name, concurrency, status, is_permanent, last_ping_at)
              VALUES ('busy', 3000, 'R', false, now());
         INSERT INTO task (command, container, status, shard, worker_id)
              SELECT 'echo', 'c', 'R', g % 16, (SELECT worker_id FROM worker WHERE worker_name = 'busy')
                FROM generate_series(1, 3000) g;
         SET plan_cache_mode = force_generic_plan;",
    )
    .await
    .unwrap();
    let id: i32 = db
        .query_one(
            "INSERT INTO worker (worker_name, concurrency, status, is_permanent, last_ping_at)
             VALUES ('probe', 2, 'R', false, now()) RETURNING worker_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.batch_execute(&format!(
        "PREPARE snapshots(int[]) AS {}",
        taskqueue::db::dispatch::batch_snapshot_sql()
    ))
    .await
    .unwrap();
    let plan: Vec<String> = db
        .query(
            &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE snapshots('{{{id}}}')"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("task_pending_idx"),
        "the probe uses the queue's index:\n{plan}"
    );
    let most = plan
        .split("actual rows=")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert!(most <= 2, "a node read {most} rows:\n{plan}");
}
