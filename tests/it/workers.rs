//! Workers and ping-and-assign: registration (new and again), specifications, the ping's answer
//! (tasks, concurrency, updates, active tasks), capacity with prefetch and weights, strict step
//! affinity, liveness writes, offline round trips, listing and updates.

use crate::common;

use std::time::Duration;

use common::{
    all_tasks, ping, postgres, register_worker, replica, set_status, status_of, submit, task,
    workflow_with_step,
};
use taskqueue::proto as pb;
use tonic::Code;

#[tokio::test]
async fn registration_and_reregistration() {
    let r = replica().await;
    let mut c = r.worker();
    let info = |name: &str, conc: Option<i32>| pb::WorkerInfo {
        name: name.into(),
        concurrency: conc,
        ..Default::default()
    };
    assert_eq!(
        c.register_worker(info("", Some(1)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.register_worker(info("w", Some(-1)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let id = c
        .register_worker(info("node-1", Some(2)))
        .await
        .unwrap()
        .into_inner()
        .worker_id;

    // It takes two tasks; it accepts one and starts the other.
    let t1 = submit(&mut c, task("one")).await;
    let t2 = submit(&mut c, task("two")).await;
    let t3 = submit(&mut c, task("three")).await;
    let answer = ping(&mut c, id).await;
    assert_eq!(answer.tasks.len(), 2);
    set_status(&mut c, t1, "C").await;
    set_status(&mut c, t2, "C").await;
    set_status(&mut c, t2, "R").await;

    // It restarts and registers again under the same name: same id, its running tasks are retried
    // elsewhere without consuming their retry budget.
    let again = c
        .register_worker(info("node-1", Some(8)))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    assert_eq!(again, id);
    for t in [t1, t2] {
        assert_eq!(status_of(&mut c, t).await, "F");
    }
    let all = all_tasks(&mut c).await;
    for t in [t1, t2] {
        let clone = all
            .iter()
            .find(|x| x.previous_task_id == Some(t))
            .expect("retried");
        assert_eq!(clone.status, "P");
    }
    assert_eq!(status_of(&mut c, t3).await, "P");
    let workers = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    let w = workers.iter().find(|w| w.worker_id == id).unwrap();
    assert_eq!(
        (w.concurrency, w.status.as_str()),
        (2, "R"),
        "a known worker keeps its concurrency"
    );
}

#[tokio::test]
async fn specifications_create_a_local_flavor() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "laptop", 1, 0, None).await;
    let spec = |worker_id: &str, cpu: i32, mem: f32| pb::ResourceSpec {
        worker_id: worker_id.into(),
        cpu,
        mem,
        disk: 100.0,
    };
    assert_eq!(
        c.register_specifications(spec("abc", 4, 8.0))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.register_specifications(spec("999999", 4, 8.0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.register_specifications(spec(&id.to_string(), -1, 8.0))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.register_specifications(spec(&id.to_string(), 4, f32::NAN))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    c.register_specifications(spec(&id.to_string(), 4, 8.0))
        .await
        .unwrap();
    c.register_specifications(spec(&format!(" {id}"), 6, 16.0))
        .await
        .unwrap();
    let workers = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    let w = workers.iter().find(|w| w.worker_id == id).unwrap();
    assert_eq!(
        (w.flavor.as_str(), w.provider.as_str(), w.region.as_str()),
        ("laptop", "local.local", "local")
    );
    assert_eq!(w.recyclable_scope, "G");
    let db = postgres().await.connect(r.database_url()).await;
    let row = db
        .query_one(
            "SELECT cpu, mem FROM flavor WHERE flavor_name = 'laptop'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, f64>(1)),
        (6, 16.0),
        "the local flavor follows the worker"
    );
}

#[tokio::test]
async fn ping_assigns_up_to_capacity_and_reports_held_tasks() {
    let r = replica().await;
    let mut c = r.worker();
    assert_eq!(
        c.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: 4242,
            stats: None
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let id = register_worker(&mut c, "w", 2, 1, None).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let req = pb::TaskRequest {
            retry: Some(2),
            input: vec![format!("file:///in/{i}")],
            output: Some("file:///out/".into()),
            shell: Some("bash".into()),
            ..task(&format!("echo {i}"))
        };
        ids.push(submit(&mut c, req).await);
    }
    let a = ping(&mut c, id).await;
    assert_eq!(a.concurrency, 2);
    assert_eq!(a.tasks.len(), 3, "concurrency 2 + prefetch 1");
    assert_eq!(
        a.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        ids[..3],
        "oldest first"
    );
    let t = &a.tasks[0];
    assert_eq!(
        (t.command.as_str(), t.shell.as_deref(), t.retry),
        ("echo 0", Some("bash"), Some(2))
    );
    assert_eq!(t.input, vec!["file:///in/0"]);
    assert_eq!(
        t.status, "",
        "as the original, a new task's status is left for the worker to fill"
    );
    assert_eq!(a.updates.as_ref().unwrap().updates.len(), 3);
    assert!(a.active_tasks.is_empty());

    // The same A tasks come again until accepted; nothing more while full.
    let again = ping(&mut c, id).await;
    assert_eq!(again.tasks.len(), 3);
    set_status(&mut c, ids[0], "C").await;
    set_status(&mut c, ids[1], "C").await;
    set_status(&mut c, ids[1], "O").await;
    let b = ping(&mut c, id).await;
    assert_eq!(
        b.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert_eq!(
        b.active_tasks,
        vec![ids[0]],
        "O is not reported, as the original"
    );
    assert_eq!(b.updates.as_ref().unwrap().updates.len(), 2);

    // Uploading frees the slot: one more task comes.
    set_status(&mut c, ids[0], "R").await;
    set_status(&mut c, ids[0], "U").await;
    let d = ping(&mut c, id).await;
    assert_eq!(
        d.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![ids[2], ids[3]]
    );
}

#[tokio::test]
async fn weights_count_in_capacity_and_reach_the_worker() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "w", 4, 0, None).await;
    for i in 0..8 {
        c.submit_task(task(&format!("t{i}"))).await.unwrap();
    }
    let a = ping(&mut c, id).await;
    assert_eq!(a.tasks.len(), 4);
    // The recruiter rescales weights when it changes a worker's concurrency: emulate it.
    let db = postgres().await.connect(r.database_url()).await;
    db.execute("UPDATE task SET weight = 0.5 WHERE worker_id = $1", &[&id])
        .await
        .unwrap();
    let b = ping(&mut c, id).await;
    assert_eq!(
        b.tasks.len(),
        6,
        "4 tasks of weight 0.5 leave room for 2 more"
    );
    let weights: Vec<f64> = b
        .updates
        .unwrap()
        .updates
        .values()
        .map(|u| u.weight)
        .collect();
    assert_eq!(weights.iter().filter(|w| **w == 0.5).count(), 4);
}

#[tokio::test]
async fn strict_step_affinity() {
    let r = replica().await;
    let mut c = r.admin().await;
    let (_, s1) = workflow_with_step(&mut c, "wf1", "a").await;
    let (_, s2) = workflow_with_step(&mut c, "wf2", "b").await;
    let on_s1 = register_worker(&mut c, "on-s1", 10, 0, Some(s1)).await;
    let stepless = register_worker(&mut c, "free", 10, 0, None).await;
    let t1 = submit(
        &mut c,
        pb::TaskRequest {
            step_id: Some(s1),
            ..task("1")
        },
    )
    .await;
    let t2 = submit(
        &mut c,
        pb::TaskRequest {
            step_id: Some(s2),
            ..task("2")
        },
    )
    .await;
    let t0 = submit(&mut c, task("0")).await;
    let a = ping(&mut c, on_s1).await;
    assert_eq!(
        a.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![t1]
    );
    assert_eq!(a.tasks[0].step_id, Some(s1));
    let b = ping(&mut c, stepless).await;
    assert_eq!(
        b.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![t0]
    );
    assert_eq!(status_of(&mut c, t2).await, "P", "no worker serves step 2");
}

#[tokio::test]
async fn only_ready_workers_get_new_tasks_and_pings_bring_them_back() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "w", 2, 0, None).await;
    let t = submit(&mut c, task("x")).await;
    let set = |status: &str| pb::WorkerStatus {
        worker_id: id,
        status: status.into(),
    };
    c.update_worker_status(set("P")).await.unwrap();
    assert!(
        ping(&mut c, id).await.tasks.is_empty(),
        "a paused worker gets nothing new"
    );
    // The watchdog turns a silent paused worker into Q; its next ping brings back P, not R.
    c.update_worker_status(set("Q")).await.unwrap();
    ping(&mut c, id).await;
    let statuses = c
        .get_worker_statuses(pb::WorkerStatusRequest {
            worker_ids: vec![id, 31337],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses
            .statuses
            .iter()
            .map(|s| s.status.as_str())
            .collect::<Vec<_>>(),
        vec!["P", "unknown"]
    );
    c.update_worker_status(set("L")).await.unwrap();
    ping(&mut c, id).await;
    assert_eq!(
        c.get_worker_statuses(pb::WorkerStatusRequest {
            worker_ids: vec![id]
        })
        .await
        .unwrap()
        .into_inner()
        .statuses[0]
            .status,
        "F"
    );
    // An offline worker that pings comes back to R and takes work at once.
    c.update_worker_status(set("O")).await.unwrap();
    let a = ping(&mut c, id).await;
    assert_eq!(
        a.tasks.iter().map(|x| x.task_id).collect::<Vec<_>>(),
        vec![t]
    );
    let db = postgres().await.connect(r.database_url()).await;
    let row = db
        .query_one(
            "SELECT status, offline_since FROM worker WHERE worker_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "R");
    assert!(row.get::<_, Option<std::time::SystemTime>>(1).is_none());
    // Bad input.
    assert_eq!(
        c.update_worker_status(set("RR")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.update_worker_status(set("Z")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let unknown = pb::WorkerStatus {
        worker_id: 99_999,
        status: "P".into(),
    };
    assert_eq!(
        c.update_worker_status(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn idle_pings_write_nothing_and_stats_ride_on_liveness() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "w", 1, 0, None).await;
    c.submit_task(task("busy")).await.unwrap();
    ping(&mut c, id).await; // now full
    let db = postgres().await.connect(r.database_url()).await;
    let snapshot = || {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT w.last_ping_at, w.xmin::text, (SELECT count(*) FROM worker_stats) FROM worker w WHERE worker_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (
                row.get::<_, std::time::SystemTime>(0),
                row.get::<_, String>(1),
                row.get::<_, i64>(2),
            )
        }
    };
    let before = snapshot().await;
    for _ in 0..5 {
        ping(&mut c, id).await;
    }
    assert_eq!(
        snapshot().await,
        before,
        "idle pings of a live, full worker leave the row untouched"
    );
    // A worker without stored stats stores them with its next ping.
    let stats = pb::WorkerStats {
        cpu_usage_percent: 12.5,
        load_1min: 0.7,
        ..Default::default()
    };
    c.ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
        worker_id: id,
        stats: Some(stats.clone()),
    })
    .await
    .unwrap();
    let got = c
        .get_worker_stats(pb::GetWorkerStatsRequest {
            worker_ids: vec![id, 5555],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.worker_stats.len(), 1);
    assert_eq!(got.worker_stats[&id], stats);
    // A stale last_ping_at is rewritten by the next ping.
    db.execute(
        "UPDATE worker SET last_ping_at = now() - interval '1 hour' WHERE worker_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    ping(&mut c, id).await;
    let age: f64 = db
        .query_one("SELECT EXTRACT(EPOCH FROM now() - last_ping_at)::float8 FROM worker WHERE worker_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(age < 60.0, "last_ping_at refreshed, age {age}");
}

#[tokio::test]
async fn list_and_update_workers() {
    let r = replica().await;
    let mut c = r.admin().await;
    let (wf, step) = workflow_with_step(&mut c, "wf", "s").await;
    let a = register_worker(&mut c, "a", 1, 0, Some(step)).await;
    let b = register_worker(&mut c, "b", 1, 0, None).await;
    let in_wf = c
        .list_workers(pb::ListWorkersRequest {
            workflow_id: Some(wf),
        })
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        in_wf.iter().map(|w| w.worker_id).collect::<Vec<_>>(),
        vec![a]
    );
    assert_eq!(in_wf[0].step_name.as_deref(), Some("s"));
    assert_eq!(in_wf[0].workflow_name.as_deref(), Some("wf"));
    let all = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        all.iter().map(|w| w.worker_id).collect::<Vec<_>>(),
        vec![a, b]
    );

    let upd = |f: fn(&mut pb::WorkerUpdateRequest)| {
        let mut req = pb::WorkerUpdateRequest {
            worker_id: a,
            ..Default::default()
        };
        f(&mut req);
        req
    };
    assert_eq!(
        c.update_worker(upd(|_| {})).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.update_worker(upd(|r| r.concurrency = Some(-1)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.update_worker(upd(|r| r.recyclable_scope = Some("X".into())))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.update_worker(upd(|r| r.step_id = Some(987_654)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.update_worker(upd(|r| r.flavor_id = Some(987_654)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.update_worker(upd(|r| r.provider_id = Some(987_654)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut unknown = upd(|r| r.concurrency = Some(2));
    unknown.worker_id = 99_999;
    assert_eq!(
        c.update_worker(unknown).await.unwrap_err().code(),
        Code::NotFound
    );

    c.update_worker(upd(|r| {
        r.concurrency = Some(6);
        r.prefetch = Some(2);
        r.is_permanent = Some(true);
        r.recyclable_scope = Some("N".into());
        r.step_id = Some(0);
    }))
    .await
    .unwrap();
    let all = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    let w = all.iter().find(|w| w.worker_id == a).unwrap();
    assert_eq!(
        (
            w.concurrency,
            w.prefetch,
            w.is_permanent,
            w.recyclable_scope.as_str(),
            w.step_id
        ),
        (6, 2, true, "N", None)
    );

    // provider_id moves a worker without region to that provider's default region.
    c.register_specifications(pb::ResourceSpec {
        worker_id: b.to_string(),
        cpu: 2,
        mem: 4.0,
        disk: 10.0,
    })
    .await
    .unwrap();
    let local: i32 = postgres()
        .await
        .connect(r.database_url())
        .await
        .query_one(
            "SELECT provider_id FROM provider WHERE provider_name = 'local'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let to_local = pb::WorkerUpdateRequest {
        worker_id: a,
        provider_id: Some(local),
        ..Default::default()
    };
    c.update_worker(to_local).await.unwrap();
    let all = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        all.iter().find(|w| w.worker_id == a).unwrap().provider,
        "local.local"
    );
}

#[tokio::test]
async fn ping_metrics_are_exported() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "w", 3, 0, None).await;
    for _ in 0..3 {
        c.submit_task(task("t")).await.unwrap();
    }
    ping(&mut c, id).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let text = r.metrics().await;
    for name in [
        "taskqueue_ping_duration_seconds_bucket",
        "taskqueue_tasks_assigned_total",
        "taskqueue_task_queue_wait_seconds_bucket",
        "taskqueue_tasks_per_ping_bucket",
        "taskqueue_db_pool_connections",
        "taskqueue_tasks_submitted_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn tasks_below_the_claim_cursor_are_not_lost() {
    let r = replica().await;
    let mut c = r.worker();
    let id = register_worker(&mut c, "w", 2, 0, None).await;
    // An empty queue: a worker with free capacity pings without finding anything.
    assert!(ping(&mut c, id).await.tasks.is_empty());
    // A waiting task with a low id; its prerequisite keeps one slot busy while later tasks are
    // claimed through the other, moving the claim cursors past the waiting task's id.
    let p = submit(&mut c, task("prerequisite")).await;
    let waiting = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![p],
            ..task("waiting")
        },
    )
    .await;
    assert_eq!(ping(&mut c, id).await.tasks[0].task_id, p);
    set_status(&mut c, p, "C").await;
    set_status(&mut c, p, "R").await;
    for i in 0..5 {
        let t = submit(&mut c, task(&format!("filler {i}"))).await;
        let got = ping(&mut c, id).await;
        assert_eq!(
            got.tasks.iter().map(|x| x.task_id).collect::<Vec<_>>(),
            vec![t],
            "filler {i}"
        );
        set_status(&mut c, t, "C").await;
        set_status(&mut c, t, "S").await;
    }
    // The promotion of the low-id waiting task rewinds the cursor: the next ping takes it at once.
    set_status(&mut c, p, "S").await;
    assert_eq!(status_of(&mut c, waiting).await, "P");
    let got = ping(&mut c, id).await;
    assert_eq!(
        got.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![waiting]
    );
    set_status(&mut c, waiting, "S").await;

    // A pending task below a shard's cursor without any rewind (an insert that committed after a
    // claim passed its id) is found by the periodic rescan within about a second.
    let db = postgres().await.connect(r.database_url()).await;
    let cursor: i32 = db
        .query_one("SELECT max(next_task_id) FROM assign_cursor", &[])
        .await
        .unwrap()
        .get(0);
    assert!(cursor > 1, "claims moved a cursor ({cursor})");
    let shard: i16 = db
        .query_one(
            "SELECT shard FROM assign_cursor WHERE next_task_id = $1 LIMIT 1",
            &[&cursor],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO task (task_id, shard, command, container, status, pending_since) VALUES (0, $1, 'late', 'alpine', 'P', now())",
        &[&shard],
    )
    .await
    .unwrap();
    let client = c.clone();
    common::wait_until(
        Duration::from_secs(5),
        "the rescan to find the late task",
        || {
            let mut c = client.clone();
            async move { ping(&mut c, id).await.tasks.iter().any(|t| t.task_id == 0) }
        },
    )
    .await;
}
