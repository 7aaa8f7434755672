//! The hot path under concurrency: 3 replicas on one database, 200 simulated workers (random
//! concurrency, prefetch and step) pinging random replicas, 20,000 tasks with dependencies, flaky
//! tasks that succeed on retry and tasks that fail for good. Checked against the assignment history
//! (recorded by a trigger in the test database), not only the end state:
//! - no task is ever assigned twice;
//! - no worker ever holds more than concurrency + prefetch (every ping answer, and sampled in SQL);
//! - every task ends S, or F when it was meant to fail for good;
//! - step statistics equal a recount.
//!
//! `TASKQUEUE_TEST_TASKS` scales the number of tasks down for a quick local run.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{postgres, spawn_replica, submit, task, test_config};
use futures::StreamExt as _;
use rand::Rng as _;
use taskqueue::client::Client;
use taskqueue::proto as pb;

const HISTORY: &str = "
    CREATE TABLE assignment_history (task_id integer, worker_id integer, at timestamptz DEFAULT clock_timestamp());
    CREATE FUNCTION record_assignment() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status = 'A' AND OLD.status IS DISTINCT FROM 'A' THEN
            INSERT INTO assignment_history (task_id, worker_id) VALUES (NEW.task_id, NEW.worker_id);
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER record_assignment AFTER UPDATE OF status ON task
        FOR EACH ROW EXECUTE FUNCTION record_assignment();";

const OVER_CAPACITY: &str = "
    SELECT w.worker_id FROM worker w
     WHERE (SELECT count(*) FROM task t WHERE t.worker_id = w.worker_id AND t.status IN ('A','C','D','O','R'))
           > w.concurrency + w.prefetch";

#[derive(Default)]
struct Shared {
    owner: Mutex<HashMap<i32, i32>>,
    violations: Mutex<Vec<String>>,
    done: AtomicBool,
    updates: AtomicUsize,
}

impl Shared {
    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }
}

fn pick(clients: &[Client]) -> Client {
    clients[rand::rng().random_range(0..clients.len())].clone()
}

async fn update(clients: &[Client], shared: &Shared, task_id: i32, status: &str) {
    for attempt in 0.. {
        let req = pb::TaskStatusUpdate {
            task_id,
            new_status: status.into(),
            duration: Some(0),
            free_retry: None,
        };
        match pick(clients).update_task_status(req).await {
            Ok(_) => break,
            Err(e) if attempt < 5 && e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                shared.violation(format!("update of task {task_id} to {status} failed: {e}"));
                break;
            }
        }
    }
    shared.updates.fetch_add(1, Ordering::Relaxed);
}

/// One simulated worker: pings a random replica, runs what it gets (C → R → S, or R → V → F for
/// tasks meant to fail), and checks every answer against its capacity.
async fn worker(clients: Arc<Vec<Client>>, shared: Arc<Shared>, worker_id: i32, capacity: usize) {
    let known: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let failing: Arc<Mutex<HashSet<i32>>> = Arc::default();
    while !shared.done.load(Ordering::Relaxed) {
        let answer = match pick(&clients)
            .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
                worker_id,
                stats: None,
            })
            .await
        {
            Ok(a) => a.into_inner(),
            Err(e) => {
                shared.violation(format!("ping of worker {worker_id} failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let holding = {
            let failing = failing.lock().unwrap();
            answer.tasks.len()
                + answer
                    .active_tasks
                    .iter()
                    .filter(|t| !failing.contains(t))
                    .count()
        };
        if holding > capacity {
            shared.violation(format!(
                "worker {worker_id} holds {holding} tasks, capacity {capacity}"
            ));
        }
        let mut fresh = Vec::new();
        for t in answer.tasks {
            if known.lock().unwrap().insert(t.task_id) {
                let previous = shared.owner.lock().unwrap().insert(t.task_id, worker_id);
                if let Some(other) = previous {
                    shared.violation(format!(
                        "task {} sent to workers {other} and {worker_id}",
                        t.task_id
                    ));
                }
                fresh.push(t);
            }
        }
        let got = !fresh.is_empty();
        for t in fresh {
            let (clients, shared, failing) = (clients.clone(), shared.clone(), failing.clone());
            tokio::spawn(async move {
                let fails = t.command == "fatal" || (t.command == "flaky" && t.retry_count == 0);
                update(&clients, &shared, t.task_id, "C").await;
                update(&clients, &shared, t.task_id, "R").await;
                let pause = rand::rng().random_range(0..5);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if fails {
                    failing.lock().unwrap().insert(t.task_id);
                    update(&clients, &shared, t.task_id, "V").await;
                    update(&clients, &shared, t.task_id, "F").await;
                } else {
                    update(&clients, &shared, t.task_id, "S").await;
                }
            });
        }
        if !got {
            let pause = rand::rng().random_range(100..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_two_hundred_workers_never_double_assign_or_overfill() {
    let total: usize = std::env::var("TASKQUEUE_TEST_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = pg.connect(&url).await;
    db.batch_execute(HISTORY).await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut config = test_config(&url);
        config.db_pool_size = 16;
        replicas.push(spawn_replica(config).await);
    }
    let mut admin = replicas[0].admin().await;
    let clients: Arc<Vec<Client>> = Arc::new(replicas.iter().map(|r| r.worker()).collect());

    let wf = admin
        .create_workflow(pb::WorkflowRequest {
            name: "load".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let mut steps = Vec::new();
    for i in 0..4 {
        let req = pb::StepRequest {
            name: format!("step-{i}"),
            workflow_id: Some(wf),
            workflow_name: None,
        };
        steps.push(admin.create_step(req).await.unwrap().into_inner().step_id);
    }

    // 200 workers with random concurrency, prefetch and step.
    let shared = Arc::new(Shared::default());
    let registrations = futures::stream::iter(0..200)
        .map(|i| {
            let (conc, prefetch, step) = {
                let mut rng = rand::rng();
                (
                    rng.random_range(1..=4),
                    rng.random_range(0..=2),
                    steps[i % steps.len()],
                )
            };
            let mut c = pick(&clients);
            async move {
                (
                    common::register_worker(
                        &mut c,
                        &format!("sim-{i}"),
                        conc,
                        prefetch,
                        Some(step),
                    )
                    .await,
                    conc + prefetch,
                )
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let handles: Vec<_> = registrations
        .into_iter()
        .map(|(id, capacity)| {
            tokio::spawn(worker(
                clients.clone(),
                shared.clone(),
                id,
                capacity as usize,
            ))
        })
        .collect();

    // Tasks, step by step; a third of later steps' tasks depend on one or two earlier ones.
    let started = Instant::now();
    let per_step = total / steps.len();
    let mut previous: Vec<i32> = Vec::new();
    let mut fatal = HashSet::new();
    for &step in &steps {
        let mut requests = Vec::new();
        for _ in 0..per_step {
            let mut rng = rand::rng();
            let kind = match rng.random_range(0..100) {
                0 => "fatal",
                1..=9 => "flaky",
                _ => "ok",
            };
            let mut deps = Vec::new();
            if !previous.is_empty() && rng.random_range(0..3) == 0 {
                for _ in 0..rng.random_range(1..=2) {
                    deps.push(previous[rng.random_range(0..previous.len())]);
                }
            }
            let retry = if kind == "flaky" { 2 } else { 0 };
            requests.push(pb::TaskRequest {
                step_id: Some(step),
                retry: Some(retry),
                dependency: deps,
                ..task(kind)
            });
        }
        let ids: Vec<(i32, String)> = futures::stream::iter(requests)
            .map(|req| {
                let mut c = pick(&clients);
                async move {
                    let kind = req.command.clone();
                    (submit(&mut c, req).await, kind)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        previous = ids
            .iter()
            .filter(|(_, k)| k != "fatal")
            .map(|(id, _)| *id)
            .collect();
        fatal.extend(ids.iter().filter(|(_, k)| k == "fatal").map(|(id, _)| *id));
    }
    let submitted = started.elapsed();

    // Run until every visible task is finished, sampling capacity in SQL meanwhile.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let over: Vec<i32> = db
            .query(OVER_CAPACITY, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !over.is_empty() {
            shared.violation(format!("workers over capacity in SQL: {over:?}"));
        }
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM task WHERE NOT hidden AND status NOT IN ('S', 'F')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} tasks still open after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared.done.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{total} tasks: submitted in {submitted:?}, all finished in {elapsed:?} ({} status updates)",
        shared.updates.load(Ordering::Relaxed)
    );

    let violations = shared.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );

    // History: each task assigned at most once, and to the worker that was told about it.
    let twice: i64 = db
        .query_one("SELECT count(*) FROM (SELECT task_id FROM assignment_history GROUP BY task_id HAVING count(*) > 1) x", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "tasks assigned twice");
    let history: Vec<(i32, i32)> = db
        .query("SELECT task_id, worker_id FROM assignment_history", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let owner = shared.owner.lock().unwrap().clone();
    for (t, w) in &history {
        assert_eq!(owner.get(t), Some(w), "task {t} assigned to {w} in SQL");
    }

    // End states: S everywhere, F exactly for the fatal ones; flaky ones succeeded on retry.
    let rows = db
        .query(
            "SELECT task_id, status, command, hidden, previous_task_id FROM task",
            &[],
        )
        .await
        .unwrap();
    let visible_failed: HashSet<i32> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(3) && r.get::<_, String>(1) == "F")
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        visible_failed, fatal,
        "exactly the fatal tasks failed for good"
    );
    for r in &rows {
        let (status, command, hidden): (String, String, bool) = (r.get(1), r.get(2), r.get(3));
        if hidden {
            assert_eq!(
                (status.as_str(), command.as_str()),
                ("F", "flaky"),
                "only flaky first attempts are retried"
            );
        } else if command != "fatal" {
            assert_eq!(status, "S", "task {}", r.get::<_, i32>(0));
        }
    }
    assert_eq!(
        history.len(),
        rows.len(),
        "every task, clones included, was assigned exactly once"
    );

    // Step statistics equal a recount.
    let stats = admin
        .get_step_stats(pb::StepStatsRequest {
            workflow_id: Some(wf),
            step_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    for s in stats {
        let recount = db
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT hidden), count(*) FILTER (WHERE NOT hidden AND status = 'S'),
                        count(*) FILTER (WHERE hidden AND status = 'F'), count(*) FILTER (WHERE NOT hidden AND status = 'F')
                   FROM task WHERE step_id = $1",
                &[&s.step_id],
            )
            .await
            .unwrap();
        let n = |i: usize| recount.get::<_, i64>(i) as i32;
        assert_eq!(
            (
                s.total_tasks,
                s.successful_tasks,
                s.failed_tasks,
                s.really_failed_tasks
            ),
            (n(0), n(1), n(2), n(3)),
            "step {}",
            s.step_name
        );
        assert_eq!(
            s.waiting_tasks
                + s.pending_tasks
                + s.accepted_tasks
                + s.running_tasks
                + s.uploading_tasks,
            0
        );
    }
}
