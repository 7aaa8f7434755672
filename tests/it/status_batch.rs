//! Group commit of UpdateTaskStatus (`db::status_batch`, `tq_status_batch` in
//! schema/0010_status_batch.sql) against the one-by-one path as the reference: random batches of
//! random updates (the same task more than once in a batch, unknown and hidden tasks, failures
//! with and without retries, dependents) leave the database as the reference leaves it when it
//! applies the same requests in the batch's serial order; and concurrent updates through gRPC form
//! batches and keep every rule.

use crate::common;

use common::{postgres, start_replicas, submit, task};
use taskqueue::db::Db;
use taskqueue::db::status_batch::{StatusRequest, plan_rounds, status_batch};
use taskqueue::db::tasks::{Applied, update_status};
use taskqueue::domain::status::TaskStatus;
use taskqueue::error::Result;
use taskqueue::proto as pb;

const SHARDS: u16 = 4;

/// A small deterministic generator (xorshift64*), so a failing case can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// The same fixture in both databases: two workers; tasks 1–4 and 10 in random statuses (on a
/// worker when their status says so) with random retry budgets; 5 waits for 1 and 2, 6 for 1, 7
/// for 5, 8 for 3 and 4; 9 is hidden; claim cursors past every task (as far as ids have gone) but
/// the pending ones.
fn fixture(rng: &mut Rng) -> String {
    let mut sql = String::from(
        "INSERT INTO worker (worker_id, worker_name, concurrency, status)
              VALUES (1, 'w1', 4, 'R'), (2, 'w2', 4, 'R');
         SELECT setval('task_task_id_seq', 100);",
    );
    let statuses = ["P", "A", "C", "D", "O", "R", "U", "S", "F", "X"];
    let mut tasks = Vec::new();
    for id in [1, 2, 3, 4, 10] {
        let status = rng.pick(&statuses);
        let worker = if "ACDORU".contains(status) {
            (1 + rng.below(2)).to_string()
        } else {
            "NULL".into()
        };
        tasks.push(format!(
            "({id}, '{status}', {worker}, {}, false)",
            rng.below(3)
        ));
    }
    for id in [5, 6, 7, 8] {
        tasks.push(format!("({id}, 'W', NULL, {}, false)", rng.below(2)));
    }
    tasks.push("(9, 'F', NULL, 1, true)".into());
    sql.push_str(&format!(
        "INSERT INTO task (task_id, status, worker_id, retry, hidden, shard, command, container, pending_since)
         SELECT v.id, v.st, v.w, v.r, v.h, v.id % {SHARDS}, 'true', '', CASE WHEN v.st = 'P' THEN now() END
           FROM (VALUES {}) AS v(id, st, w, r, h);
         INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id)
              VALUES (5, 1), (5, 2), (6, 1), (7, 5), (8, 3), (8, 4);
         INSERT INTO assign_cursor (step_key, shard, next_task_id, rescan_after)
         SELECT 0, s, COALESCE((SELECT min(t.task_id) FROM task t WHERE t.status = 'P' AND t.shard = s), 100),
                now() + interval '1 hour' FROM generate_series(0, {}) s;",
        tasks.join(", "),
        SHARDS - 1
    ));
    sql
}

/// A random valid update (A is refused before any batch; free retry only with F).
fn update(rng: &mut Rng) -> StatusRequest {
    let statuses: Vec<TaskStatus> = TaskStatus::ALL
        .iter()
        .copied()
        .filter(|s| *s != TaskStatus::Assigned)
        .collect();
    // Success and the worker's statuses are the common ones: more of them.
    let common = [
        TaskStatus::Accepted,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Succeeded,
        TaskStatus::UploadingSuccess,
        TaskStatus::Failed,
    ];
    let status = if rng.below(2) == 0 {
        rng.pick(&common)
    } else {
        rng.pick(&statuses)
    };
    let task_id = rng.pick(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 999]);
    let duration = (rng.below(2) == 0).then(|| rng.below(100) as i32);
    let free_retry = status == TaskStatus::Failed && rng.below(3) == 0;
    StatusRequest::new(task_id, status, duration, free_retry).unwrap()
}

/// The serial order a batch stands for: per round, its updates other than successes, then its
/// successes (their promotions come after the round's updates); then, in arrival order, the
/// updates of the one-by-one path.
fn serial_order(reqs: &[StatusRequest]) -> Vec<usize> {
    let rounds = plan_rounds(reqs);
    let last = rounds.iter().flatten().copied().max().unwrap_or(0);
    let mut order = Vec::new();
    for r in 1..=last {
        for success in [false, true] {
            order.extend((0..reqs.len()).filter(|&i| {
                rounds[i] == Some(r) && (reqs[i].change.new == TaskStatus::Succeeded) == success
            }));
        }
    }
    order.extend((0..reqs.len()).filter(|&i| rounds[i].is_none()));
    order
}

fn outcome(r: &Result<Applied>) -> String {
    match r {
        Ok(a) => format!("{a:?}"),
        Err(e) => format!("{:?}: {}", e.code, e.message),
    }
}

/// What the two databases must agree on (clocks aside: a P task has a `pending_since`, a task
/// that started running has a `run_started_at`).
async fn state(c: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in c
        .query(
            "SELECT format('task %s %s w=%s hidden=%s retry=%s count=%s prev=%s d=%s/%s/%s run=%s pending=%s',
                           task_id, status, worker_id, hidden, retry, retry_count, previous_task_id,
                           download_duration, run_duration, upload_duration,
                           run_started_at IS NOT NULL,
                           CASE WHEN status = 'P' THEN pending_since IS NOT NULL END)
               FROM task ORDER BY task_id",
            &[],
        )
        .await
        .unwrap()
    {
        out.push(row.get(0));
    }
    for row in c
        .query(
            "SELECT format('dep %s<-%s', dependent_task_id, prerequisite_task_id)
               FROM task_dependencies ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
    {
        out.push(row.get(0));
    }
    for row in c
        .query(
            "SELECT format('worker %s active=%s', worker_id, last_activity_at IS NOT NULL)
               FROM worker ORDER BY worker_id",
            &[],
        )
        .await
        .unwrap()
    {
        out.push(row.get(0));
    }
    out
}

/// No pending task is below its (step, shard) claim cursor: a claim finds every one.
async fn cursors_reach_every_pending_task(c: &tokio_postgres::Client, what: &str) {
    let missed: i64 = c
        .query_one(
            "SELECT count(*) FROM task t JOIN assign_cursor a
                 ON a.step_key = COALESCE(t.step_id, 0) AND a.shard = t.shard
              WHERE t.status = 'P' AND NOT t.hidden AND a.next_task_id > t.task_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = c
        .query(
            "SELECT format('%s %s %s', t.task_id, t.status, t.shard) FROM task t ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let cur = c
        .query(
            "SELECT format('%s->%s', shard, next_task_id) FROM assign_cursor ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        missed,
        0,
        "pending tasks below their cursor, {what} {:?} {:?}",
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>(),
        cur.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn every_batch_does_what_the_one_by_one_path_does_in_its_serial_order() {
    let pg = postgres().await;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (url_ref, url_batch) = (pg.fresh_db().await, pg.fresh_db().await);
        let (c_ref, c_batch) = (pg.connect(&url_ref).await, pg.connect(&url_batch).await);
        let sql = fixture(&mut rng);
        c_ref.batch_execute(&sql).await.unwrap();
        c_batch.batch_execute(&sql).await.unwrap();
        let (db_ref, db_batch) = (
            Db::connect(&url_ref, 2).unwrap(),
            Db::connect(&url_batch, 2).unwrap(),
        );
        let loop_client = db_batch.client().await.unwrap();
        let batches = 1 + rng.below(4);
        for b in 0..batches {
            let n = 1 + rng.below(8);
            let reqs: Vec<StatusRequest> = (0..n).map(|_| update(&mut rng)).collect();
            let what: Vec<String> = reqs
                .iter()
                .map(|r| format!("{}{}", r.change.new.letter(), r.task_id))
                .collect();
            let what = format!("seed {seed}, batch {b}: {}", what.join(" "));
            let mut expected: Vec<Option<String>> = vec![None; n];
            for i in serial_order(&reqs) {
                let r = &reqs[i];
                let c = &r.change;
                let d = c.duration.map(|(_, d)| d);
                let got = update_status(&db_ref, SHARDS, r.task_id, c.new, d, c.free_retry).await;
                expected[i] = Some(outcome(&got));
            }
            let answers = status_batch(&loop_client, &db_batch, SHARDS, &reqs)
                .await
                .unwrap_or_else(|e| panic!("batch failed: {e}, {what}"));
            let answers: Vec<Option<String>> = answers.iter().map(|a| Some(outcome(a))).collect();
            assert_eq!(answers, expected, "answers, {what}");
            assert_eq!(state(&c_batch).await, state(&c_ref).await, "state, {what}");
            cursors_reach_every_pending_task(&c_batch, &what).await;
            cursors_reach_every_pending_task(&c_ref, &what).await;
        }
    }
}

#[test]
fn rounds_keep_each_task_in_order_and_failures_go_one_by_one() {
    let r = |task_id, s| StatusRequest::new(task_id, s, None, false).unwrap();
    use TaskStatus::*;
    let reqs = [
        r(1, Accepted),
        r(2, Running),
        r(1, Running),
        r(2, Failed),
        r(2, Pending),
        r(1, Succeeded),
        r(3, Succeeded),
    ];
    assert_eq!(
        plan_rounds(&reqs),
        vec![Some(1), Some(1), Some(2), None, None, Some(3), Some(1)]
    );
    assert_eq!(serial_order(&reqs), vec![0, 1, 6, 2, 5, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_form_batches_and_keep_every_rule() {
    let pg = postgres().await;
    // A replica of its own process: its metrics count this test's updates alone.
    let r = start_replicas(&pg.fresh_db().await, &["status-batch"], &[])
        .await
        .remove(0);
    let mut c = r.worker();
    // 200 prerequisites, one dependent each: dependents are promoted as their prerequisite succeeds.
    let mut pairs = Vec::new();
    for i in 0..200 {
        let pre = submit(&mut c, task(&format!("pre {i}"))).await;
        let mut dep = task(&format!("dep {i}"));
        dep.dependency = vec![pre];
        let dep = submit(&mut c, dep).await;
        pairs.push((pre, dep));
    }
    let before = r.metrics().await;
    let updates = pairs.iter().map(|&(pre, _)| {
        let mut c = r.worker();
        async move {
            for s in ["C", "R", "R", "U", "S"] {
                c.update_task_status(pb::TaskStatusUpdate {
                    task_id: pre,
                    new_status: s.into(),
                    duration: Some(3),
                    free_retry: None,
                })
                .await
                .unwrap();
            }
        }
    });
    futures::future::join_all(updates).await;
    let after = r.metrics().await;
    let tasks = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    for (pre, dep) in &pairs {
        let pre = tasks.iter().find(|t| t.task_id == *pre).unwrap();
        let dep = tasks.iter().find(|t| t.task_id == *dep).unwrap();
        assert_eq!(pre.status, "S");
        assert_eq!(dep.status, "P", "dependent promoted");
    }
    let batches = metric(&after, "taskqueue_batch_size_count{kind=\"status\"}")
        - metric(&before, "taskqueue_batch_size_count{kind=\"status\"}");
    let served = metric(&after, "taskqueue_batch_size_sum{kind=\"status\"}")
        - metric(&before, "taskqueue_batch_size_sum{kind=\"status\"}");
    assert_eq!(served, 1000.0, "every update went through the batcher");
    assert!(
        batches < 1000.0,
        "{batches} batches for 1000 concurrent updates: none formed"
    );
    // Same-status updates are idempotent successes; hidden and unknown tasks are refused.
    let same = c
        .update_task_status(pb::TaskStatusUpdate {
            task_id: pairs[0].0,
            new_status: "S".into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(same.success);
    let unknown = c
        .update_task_status(pb::TaskStatusUpdate {
            task_id: 999_999,
            new_status: "R".into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(unknown.message(), "task 999999 not found");
    let assigned = c
        .update_task_status(pb::TaskStatusUpdate {
            task_id: pairs[0].1,
            new_status: "A".into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap_err();
    assert_eq!(assigned.code(), tonic::Code::InvalidArgument);
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A worker's idle clock (`last_activity_at`) restarts when it accepts or finishes a task, but at
/// most once a second: a second acceptance right after the first neither locks nor rewrites the
/// worker's row (schema/0013_activity_clock.sql), through the batch path and the one-by-one path.
#[tokio::test]
async fn the_idle_clock_restarts_at_most_once_a_second() {
    let pg = postgres().await;
    for batch_loops in [2, 0] {
        let url = pg.fresh_db().await;
        let mut config = common::test_config(&url);
        config.batch_loops = batch_loops;
        let r = common::spawn_replica(config).await;
        let db = pg.connect(&url).await;
        let mut c = r.worker();
        let worker = common::register_worker(&mut c, "clock", 4, 0, None).await;
        let a = submit(&mut c, task("a")).await;
        let b = submit(&mut c, task("b")).await;
        assert_eq!(common::ping(&mut c, worker).await.tasks.len(), 2);
        let clock = async |db: &tokio_postgres::Client| -> Option<std::time::SystemTime> {
            db.query_one(
                "SELECT last_activity_at FROM worker WHERE worker_id = $1",
                &[&worker],
            )
            .await
            .unwrap()
            .get(0)
        };
        db.execute(
            "UPDATE worker SET last_activity_at = now() - interval '10 seconds' WHERE worker_id = $1",
            &[&worker],
        )
        .await
        .unwrap();
        let old = clock(&db).await;
        common::set_status(&mut c, a, "C").await;
        let restarted = clock(&db).await;
        assert!(
            restarted > old,
            "loops {batch_loops}: the clock restarts on C"
        );
        common::set_status(&mut c, b, "C").await;
        assert_eq!(
            clock(&db).await,
            restarted,
            "loops {batch_loops}: not again within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        common::set_status(&mut c, a, "S").await;
        assert!(
            clock(&db).await > restarted,
            "loops {batch_loops}: again a second later, on S"
        );
    }
}

/// A direct connection whose notices (auto_explain's plans, at `log_level = notice`) are kept.
async fn explained_connection(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use futures::StreamExt;
    let (client, mut conn) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    (client, rx)
}

/// The most rows any node of an `EXPLAIN ANALYZE` text read.
fn most_rows(plan: &str) -> u64 {
    plan.split("actual rows=")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Every statement that reaches a few waiting tasks by id (the promotion of a success's
/// dependents in `tq_status_batch` and in `db::tasks::promote_dependents`, the dependency sweep's
/// PROMOTE and FAIL) reads them by primary key, whatever the statistics say: with the task table
/// analyzed while empty and 20,000 W tasks inserted since, under a generic plan (the batch loops'
/// mode) and a custom one, no node of any plan (auto_explain, nested statements included) reads
/// more than a few rows. A status test written plainly let PostgreSQL AND `task_pkey` with
/// `task_status_idx` and read every W task (schema/0014_dependents_by_key.sql).
#[tokio::test]
async fn waiting_dependents_are_reached_by_primary_key() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let (db, mut notices) = explained_connection(&url).await;
    db.batch_execute(
        "ALTER TABLE task SET (autovacuum_enabled = false);
         ALTER TABLE task_dependencies SET (autovacuum_enabled = false);
         ANALYZE task; ANALYZE task_dependencies;
         INSERT INTO task (command, container, status, shard)
              SELECT 'echo', 'c', 'W', g % 4 FROM generate_series(1, 20000) g;
         -- 30001–30003 run; 30004 failed for good. 1–4 wait for one of them each.
         INSERT INTO task (task_id, command, container, status, retry) VALUES
              (30001, 'echo', 'c', 'R', 0), (30002, 'echo', 'c', 'S', 0),
              (30003, 'echo', 'c', 'S', 0), (30004, 'echo', 'c', 'F', 0);
         INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id)
              VALUES (1, 30001), (2, 30002), (3, 30003), (4, 30004);",
    )
    .await
    .unwrap();
    let statements = [
        (
            "tq_status_batch",
            "SELECT tq_status_batch(ARRAY[30001], ARRAY[1], ARRAY['S'], ARRAY[NULL::text],
                                    ARRAY[0], ARRAY[false], ARRAY[false], ARRAY[false],
                                    ARRAY[false], ARRAY[true])"
                .to_string(),
            "SELECT status FROM task WHERE task_id = 1",
            "P",
        ),
        (
            "LOCK_WAITING_DEPENDENTS + PROMOTE_READY",
            format!(
                "PREPARE lock_waiting(int) AS {};
                 PREPARE promote_ready(int[]) AS {};
                 EXECUTE lock_waiting(30002);
                 EXECUTE promote_ready('{{2}}');",
                taskqueue::db::tasks::LOCK_WAITING_DEPENDENTS,
                taskqueue::db::tasks::PROMOTE_READY
            ),
            "SELECT status FROM task WHERE task_id = 2",
            "P",
        ),
        (
            "sweep PROMOTE",
            format!(
                "PREPARE sweep_promote(int[]) AS {};
                 EXECUTE sweep_promote('{{3}}');",
                taskqueue::db::dependencies::PROMOTE
            ),
            "SELECT status FROM task WHERE task_id = 3",
            "P",
        ),
        (
            "sweep FAIL",
            format!(
                "PREPARE sweep_fail(int[], int[]) AS {};
                 EXECUTE sweep_fail('{{4}}', '{{30004}}');",
                taskqueue::db::dependencies::FAIL
            ),
            "SELECT status FROM task WHERE task_id = 4",
            "F",
        ),
    ];
    for mode in ["force_generic_plan", "force_custom_plan"] {
        for (name, sql, check, want) in &statements {
            db.batch_execute(&format!(
                "BEGIN;
                 LOAD 'auto_explain';
                 SET LOCAL auto_explain.log_min_duration = 0;
                 SET LOCAL auto_explain.log_nested_statements = on;
                 SET LOCAL auto_explain.log_analyze = on;
                 SET LOCAL auto_explain.log_timing = off;
                 SET LOCAL auto_explain.log_level = notice;
                 SET LOCAL plan_cache_mode = {mode};"
            ))
            .await
            .unwrap();
            while notices.try_recv().is_ok() {}
            db.batch_execute(sql).await.unwrap();
            let plans: Vec<String> = std::iter::from_fn(|| notices.try_recv().ok()).collect();
            let status: String = db.query_one(*check, &[]).await.unwrap().get(0);
            db.batch_execute("ROLLBACK; DEALLOCATE ALL;").await.unwrap();
            assert_eq!(status, *want, "{mode}, {name}: the statement did its work");
            assert!(
                plans.iter().any(|p| p.contains("task_pkey")),
                "{mode}, {name}: auto_explain showed the plans: {plans:#?}"
            );
            for plan in &plans {
                assert!(
                    most_rows(plan) <= 4,
                    "{mode}, {name}: a node read {} rows:\n{plan}",
                    most_rows(plan)
                );
            }
        }
    }
}
