//! The group-commit batcher (db::batch) on a real PostgreSQL: concurrent requests form few
//! batches, a lone request is not delayed, a failed batch fails every caller (a conflict runs it
//! again first), a full queue refuses with UNAVAILABLE, shutdown runs what is queued and refuses
//! the rest.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres;
use taskqueue::db::batch::{BatchConfig, BatchFn, Batcher};
use taskqueue::db::{Client, Db, Op, pg_error};
use taskqueue::error::{Code, Result};

/// Doubles each number in one statement, sleeping `sleep_ms` first; records batch sizes. A
/// request of -1 makes the batch fail (division by zero); the first `conflicts` batches fail with
/// a deadlock.
struct Double {
    sizes: Arc<Mutex<Vec<usize>>>,
    sleep_ms: f64,
    conflicts: AtomicUsize,
    runs: Arc<AtomicUsize>,
}

impl Double {
    fn new(sleep_ms: f64) -> Double {
        Double {
            sizes: Arc::default(),
            sleep_ms,
            conflicts: AtomicUsize::new(0),
            runs: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl BatchFn<i32, i32> for Double {
    async fn run(&self, client: &mut Client, reqs: &[i32]) -> Result<Vec<i32>> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if self
            .conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            client
                .batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '40P01'; END $$",
                )
                .await
                .map_err(pg_error)?;
        }
        self.sizes.lock().unwrap().push(reqs.len());
        let rows = client
            .query(
                "SELECT CASE WHEN x = -1 THEN x / (x + 1) ELSE x * 2 END
                   FROM unnest($1::int[]) WITH ORDINALITY u(x, n), pg_sleep($2::float8 / 1000.0)
                  ORDER BY n",
                &[&reqs, &self.sleep_ms],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

fn config(loops: usize, max: usize) -> BatchConfig {
    BatchConfig {
        kind: "test",
        op: Op::PingBatch,
        loops,
        max,
        queue_wait: Duration::from_secs(10),
        generic_plans: false,
        spare_after: Duration::from_secs(1),
    }
}

async fn db() -> Db {
    let pg = postgres().await;
    Db::connect(&pg.fresh_db().await, 8).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_form_few_batches() {
    let f = Double::new(20.0);
    let sizes = f.sizes.clone();
    let b = Arc::new(Batcher::start(db().await, config(2, 256), f));
    let answers = futures::future::join_all((0..200).map(|i| {
        let b = b.clone();
        async move { (i, b.submit(i).await) }
    }))
    .await;
    for (i, a) in answers {
        assert_eq!(a.unwrap(), i * 2, "request {i} got its own answer");
    }
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 200, "{sizes:?}");
    assert!(
        sizes.len() <= 10,
        "200 requests arriving together make few batches, not {}: {sizes:?}",
        sizes.len()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn batches_never_exceed_max() {
    let f = Double::new(5.0);
    let sizes = f.sizes.clone();
    let b = Arc::new(Batcher::start(db().await, config(1, 16), f));
    let answers = futures::future::join_all((0..100).map(|i| {
        let b = b.clone();
        async move { b.submit(i).await.unwrap() }
    }))
    .await;
    assert_eq!(answers, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    assert!(sizes.len() >= 7, "{sizes:?}");
}

#[tokio::test]
async fn a_lone_request_is_not_delayed() {
    let db = db().await;
    let direct = db.client().await.unwrap();
    direct.query("SELECT 1", &[]).await.unwrap();
    let f = Double::new(0.0);
    let sizes = f.sizes.clone();
    let b = Batcher::start(db.clone(), config(2, 256), f);
    b.submit(0).await.unwrap(); // the loop takes its connection
    let mut batched = Vec::new();
    let mut plain = Vec::new();
    for i in 0..20 {
        let start = Instant::now();
        assert_eq!(b.submit(i).await.unwrap(), i * 2);
        batched.push(start.elapsed());
        let start = Instant::now();
        direct
            .query(
                "SELECT x * 2 FROM unnest($1::int[]) u(x), pg_sleep(0)",
                &[&vec![i]],
            )
            .await
            .unwrap();
        plain.push(start.elapsed());
    }
    batched.sort();
    plain.sort();
    let (b_med, p_med) = (batched[10], plain[10]);
    assert!(
        b_med < p_med * 3 + Duration::from_millis(5),
        "a lone request waits for no timer: median {b_med:?} batched, {p_med:?} direct"
    );
    assert!(sizes.lock().unwrap().iter().all(|&n| n == 1));
}

/// Submits 1, then (after `gap`) 2, 3 and 4 together; gives the batch sizes and when 2 was
/// answered.
async fn one_then_three(b: Arc<Batcher<i32, i32>>, gap: Duration) -> Duration {
    let start = Instant::now();
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.submit(1).await })
    };
    tokio::time::sleep(gap).await;
    let second = {
        let b = b.clone();
        tokio::spawn(async move {
            let a = b.submit(2).await;
            (a, start.elapsed())
        })
    };
    let rest = futures::future::join_all([3, 4].map(|i| {
        let b = b.clone();
        async move { b.submit(i).await.unwrap() }
    }));
    assert_eq!(rest.await, vec![6, 8]);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    let (a, at) = second.await.unwrap();
    assert_eq!(a.unwrap(), 4);
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_loop_waits_for_the_batch_in_flight_unless_it_is_slow() {
    // Fast batches (50 ms, the spare after 1 s): the second loop waits for the first batch and
    // then takes the three queued requests at once.
    let f = Double::new(50.0);
    let sizes = f.sizes.clone();
    let b = Arc::new(Batcher::start(db().await, config(2, 256), f));
    b.submit(0).await.unwrap(); // a loop takes its connection
    sizes.lock().unwrap().clear();
    one_then_three(b.clone(), Duration::from_millis(15)).await;
    assert_eq!(
        sizes.lock().unwrap().clone(),
        vec![1, 3],
        "one batch in flight at a time: the requests of its run wait for it, together"
    );
    b.shutdown().await;

    // A slow batch (400 ms, the spare after 50 ms): the second loop goes meanwhile.
    let f = Double::new(400.0);
    let sizes = f.sizes.clone();
    let cfg = BatchConfig {
        spare_after: Duration::from_millis(50),
        ..config(2, 256)
    };
    let b = Arc::new(Batcher::start(db().await, cfg, f));
    b.submit(0).await.unwrap();
    sizes.lock().unwrap().clear();
    let at = one_then_three(b.clone(), Duration::from_millis(15)).await;
    assert!(
        at < Duration::from_millis(700),
        "the spare did not wait for the slow batch (400 ms) to end: 2 answered after {at:?}"
    );
    assert_eq!(sizes.lock().unwrap().clone(), vec![1, 3]);
    b.shutdown().await;
}

#[tokio::test]
async fn a_failed_batch_fails_every_caller_and_the_next_batch_works() {
    // One loop, and a first slow batch so that the next ones queue up together.
    let f = Double::new(200.0);
    let sizes = f.sizes.clone();
    let b = Arc::new(Batcher::start(db().await, config(1, 256), f));
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.submit(1).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answers = futures::future::join_all([2, -1, 3, 4].map(|i| {
        let b = b.clone();
        async move { b.submit(i).await }
    }))
    .await;
    assert_eq!(first.await.unwrap().unwrap(), 2);
    for a in &answers {
        let e = a
            .as_ref()
            .expect_err("the batch with -1 failed for everyone in it");
        assert_eq!(e.code, Code::Internal, "{e}");
        assert!(e.message.contains("division by zero"), "{e}");
    }
    assert_eq!(sizes.lock().unwrap().clone(), vec![1, 4]);
    assert_eq!(b.submit(5).await.unwrap(), 10, "the loop goes on");
}

#[tokio::test]
async fn a_conflict_runs_the_batch_again() {
    let f = Double::new(0.0);
    f.conflicts.store(2, Ordering::SeqCst);
    let runs = f.runs.clone();
    let b = Batcher::start(db().await, config(1, 256), f);
    assert_eq!(b.submit(21).await.unwrap(), 42);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "two deadlocks, then success"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_with_unavailable() {
    let f = Double::new(400.0);
    let mut cfg = config(1, 1); // a queue of one place
    cfg.queue_wait = Duration::from_millis(100);
    let b = Arc::new(Batcher::start(db().await, cfg, f));
    let running = {
        let b = b.clone();
        tokio::spawn(async move { b.submit(1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // 1 is in flight
    let queued = {
        let b = b.clone();
        tokio::spawn(async move { b.submit(2).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await; // 2 holds the only place
    let e = b.submit(3).await.expect_err("no place left");
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.message.contains("queue full"), "{e}");
    assert_eq!(running.await.unwrap().unwrap(), 2);
    assert_eq!(queued.await.unwrap().unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_runs_what_is_queued_and_refuses_the_rest() {
    let db = db().await;
    let f = Double::new(100.0);
    let b = Arc::new(Batcher::start(db.clone(), config(2, 32), f));
    let queued: Vec<_> = (0..40)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.submit(i).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    b.shutdown().await;
    for (i, q) in queued.into_iter().enumerate() {
        assert_eq!(
            q.await.unwrap().unwrap(),
            2 * i as i32,
            "queued before shutdown: answered"
        );
    }
    let e = b.submit(7).await.expect_err("after shutdown");
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.message.contains("shutting down"), "{e}");
    // The loops gave their connections back.
    let c = tokio::time::timeout(Duration::from_secs(2), db.client())
        .await
        .unwrap();
    assert!(c.is_ok());
}

/// One series' value in Prometheus text (`name{labels} value`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Rough figures, not a timed test
/// (`cargo test --test it batch::measure_idle_pings -- --ignored --nocapture`): 200 workers
/// pinging idle in a closed loop on 8 connections for a few seconds against one replica, with
/// batching off (`--batch-loops 0`) and on; prints pings/s, database transactions per ping
/// (every statement of a ping runs in autocommit, so `xact_commit` counts statements) and the
/// batch sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_idle_pings() {
    use common::{ping, register_worker, spawn_replica, test_config};
    use taskqueue::proto as pb;
    let pg = postgres().await;
    for loops in [0usize, 2] {
        let url = pg.fresh_db().await;
        let mut config = test_config(&url);
        config.leader_eligible = false;
        config.batch_loops = loops;
        config.db_pool_size = 32;
        let r = spawn_replica(config).await;
        let db = pg.connect(&url).await;
        let clients: Vec<_> = (0..8).map(|_| r.worker()).collect();
        let mut ids = Vec::new();
        for i in 0..200 {
            let mut c = clients[i % 8].clone();
            let id = register_worker(&mut c, &format!("idle-{i}"), 1, 0, None).await;
            // The first ping writes last_ping_at; the next ones (for 10 s) are idle.
            ping(&mut c, id).await;
            ids.push(id);
        }
        let xacts = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
        tokio::time::sleep(Duration::from_millis(1500)).await; // statistics are flushed each second
        let x0: i64 = db.query_one(xacts, &[]).await.unwrap().get(0);
        let m0 = r.metrics().await;
        let pings = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let tasks: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &worker_id)| {
                let mut c = clients[i % 8].clone();
                let pings = pings.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        ping(&mut c, worker_id).await;
                        pings.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let m1 = r.metrics().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let x1: i64 = db.query_one(xacts, &[]).await.unwrap().get(0);
        let n = pings.load(Ordering::Relaxed) as f64;
        let d = |s: &str| metric(&m1, s) - metric(&m0, s);
        let batches = d("taskqueue_batch_size_count{kind=\"ping\"}");
        let batched = d("taskqueue_batch_size_sum{kind=\"ping\"}");
        let statements = d("taskqueue_batch_rows_per_statement_count{kind=\"ping\"}");
        eprintln!(
            "batch_loops={loops}: {n} idle pings in {secs:.1}s = {:.0}/s; {:.3} transactions/ping \
             (pg_stat_database, incl. ~{} per 1.5 s of the probe itself); batches {batches}, \
             mean size {:.1}, statements by the batch metrics {statements} = {:.3}/ping",
            n / secs,
            (x1 - x0) as f64 / n,
            2,
            if batches > 0.0 {
                batched / batches
            } else {
                0.0
            },
            if batched > 0.0 {
                statements / batched
            } else {
                0.0
            },
        );

        // Assigning pings: a standing queue, each task reported S at once, then the next ping.
        db.execute(
            "INSERT INTO task (task_id, shard, command, container, pending_since)
             SELECT id, id % 16, 'true', '', now()
               FROM (SELECT nextval('task_task_id_seq')::integer AS id FROM generate_series(1, 50000)) s",
            &[],
        )
        .await
        .unwrap();
        let m0 = r.metrics().await;
        let done = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let tasks: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &worker_id)| {
                let mut c = clients[i % 8].clone();
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let answer = ping(&mut c, worker_id).await;
                        for t in answer.tasks {
                            c.update_task_status(pb::TaskStatusUpdate {
                                task_id: t.task_id,
                                new_status: "S".into(),
                                duration: Some(0),
                                free_retry: None,
                            })
                            .await
                            .unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let m1 = r.metrics().await;
        let d = |s: &str| metric(&m1, s) - metric(&m0, s);
        let batches = d("taskqueue_batch_size_count{kind=\"ping\"}");
        let batched = d("taskqueue_batch_size_sum{kind=\"ping\"}");
        let n = done.load(Ordering::Relaxed) as f64;
        let mean = |op: &str| {
            let count = d(&format!(
                "taskqueue_db_transaction_duration_seconds_count{{op=\"{op}\"}}"
            ));
            let sum = d(&format!(
                "taskqueue_db_transaction_duration_seconds_sum{{op=\"{op}\"}}"
            ));
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            }
        };
        eprintln!(
            "batch_loops={loops}: {n} tasks assigned and reported S in {secs:.1}s = {:.0}/s; \
             ping batches {batches}, mean size {:.1}; mean ms per ping_batch {:.1}, per claim_tasks \
             {:.1}, per update_task_status {:.1}",
            n / secs,
            if batches > 0.0 {
                batched / batches
            } else {
                0.0
            },
            mean("ping_batch"),
            mean("claim_tasks"),
            mean("update_task_status"),
        );
        r.stop().await.unwrap();
    }
}

/// Answers each request with the loop connection's `plan_cache_mode` and backend pid.
struct PlanMode;

#[async_trait::async_trait]
impl BatchFn<i32, (String, i32)> for PlanMode {
    async fn run(&self, client: &mut Client, reqs: &[i32]) -> Result<Vec<(String, i32)>> {
        let row = client
            .query_one(
                "SELECT current_setting('plan_cache_mode'), pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(reqs.iter().map(|_| (row.get(0), row.get(1))).collect())
    }
}

#[tokio::test]
async fn generic_plans_stay_on_the_loops_connection() {
    let db = Db::connect(&postgres().await.fresh_db().await, 2).unwrap();
    let b = Batcher::start(
        db.clone(),
        BatchConfig {
            generic_plans: true,
            ..config(1, 16)
        },
        PlanMode,
    );
    let (mode, pid) = b.submit(1).await.unwrap();
    assert_eq!(mode, "force_generic_plan");
    let (_, again) = b.submit(2).await.unwrap();
    assert_eq!(again, pid, "the loop keeps its connection");
    b.shutdown().await;
    // Every connection the pool hands out afterwards plans as usual: the loop's was closed.
    for _ in 0..2 {
        let c = db.client().await.unwrap();
        let row = c
            .query_one(
                "SELECT current_setting('plan_cache_mode'), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "auto");
        assert_ne!(row.get::<_, i32>(1), pid);
    }
    let without = Batcher::start(db.clone(), config(1, 16), PlanMode);
    assert_eq!(without.submit(1).await.unwrap().0, "auto");
    without.shutdown().await;
}
