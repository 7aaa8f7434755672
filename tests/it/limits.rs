//! Limits at the door and on the way out: ping answers that fit the message limit (the rest on the
//! next ping), the log volume of a task (one truncation line, then nothing), the follow streams of
//! one user, page sizes clamped to each List RPC's maximum, oversized input answered
//! `InvalidArgument` (not `Internal`), and Postgres errors without DETAIL. Real PostgreSQL.

use crate::common;

use std::time::Duration;

use common::{
    postgres, register_worker, replica, set_status, spawn_replica, submit, task, test_config,
    wait_until, workflow_with_step,
};
use taskqueue::domain::limits;
use taskqueue::domain::logs::TRUNCATION_LINE;
use taskqueue::proto as pb;
use tonic::Code;

#[tokio::test]
async fn two_30_mb_tasks_reach_their_worker_one_ping_each() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let (_, step) = workflow_with_step(&mut admin, "big", "big").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = submit(
            &mut admin,
            pb::TaskRequest {
                step_id: Some(step),
                ..task("true")
            },
        )
        .await;
        ids.push(t);
    }
    // Tasks this large cannot be submitted any more; a database from before the limit may hold them.
    let db = postgres().await.connect(r.database_url()).await;
    db.execute(
        "UPDATE task SET command = repeat('x', 30000000) WHERE task_id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap();
    let w = register_worker(&mut worker, "bigworker", 2, 0, Some(step)).await;

    let first = common::ping(&mut worker, w).await;
    assert_eq!(first.tasks.len(), 1, "one 30 MB task fits a 50 MiB answer");
    assert_eq!(first.tasks[0].task_id, ids[0]);
    assert_eq!(first.tasks[0].command.len(), 30_000_000);
    // The held-back task stays assigned to this worker and comes with the next ping.
    let again = common::ping(&mut worker, w).await;
    assert_eq!(again.tasks.len(), 1);
    set_status(&mut worker, ids[0], "C").await;
    let second = common::ping(&mut worker, w).await;
    assert_eq!(
        second.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![ids[1]],
        "the second task once the first is accepted"
    );
    assert!(second.active_tasks.contains(&ids[0]));
    println!("ping answers: 1 + 1 task of 30 MB, each under the 50 MiB limit");
}

async fn stored_stdout(client: &mut taskqueue::client::Client, task_id: i32) -> Vec<String> {
    client
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![task_id],
            chunk_size: 100_000,
            skip_from_end: None,
            log_type: Some("stdout".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .logs
        .into_iter()
        .flat_map(|c| c.stdout)
        .collect()
}

#[tokio::test]
async fn a_tasks_log_stops_at_its_byte_bound_with_one_truncation_line() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.max_log_bytes_per_task = 10_000;
    let r = spawn_replica(config).await;
    let mut worker = r.worker();
    let t = submit(&mut worker, task("yes")).await;
    let line = "y".repeat(99); // 100 bytes stored with its newline
    let sender = worker.clone();
    let send = |n: usize| {
        let mut c = sender.clone();
        let line = line.clone();
        async move {
            let messages: Vec<pb::TaskLog> = (0..n)
                .map(|_| pb::TaskLog {
                    task_id: t,
                    log_type: "stdout".into(),
                    log_text: line.clone(),
                })
                .collect();
            c.send_task_logs(tokio_stream::iter(messages)).await
        }
    };
    send(60).await.unwrap();
    assert_eq!(
        stored_stdout(&mut worker, t).await.len(),
        60,
        "under the bound"
    );
    // Two streams, one after the other: the bound is the task's, not the stream's.
    send(30).await.unwrap();
    send(30).await.unwrap();
    let lines = stored_stdout(&mut worker, t).await;
    assert_eq!(
        lines.len(),
        101,
        "100 lines of 100 bytes, then the truncation line"
    );
    assert_eq!(lines.last().unwrap(), TRUNCATION_LINE);
    send(500).await.unwrap();
    let after = stored_stdout(&mut worker, t).await;
    assert_eq!(after, lines, "nothing is stored after the truncation line");
    let db = postgres().await.connect(r.database_url()).await;
    let bytes: i64 = db
        .query_one(
            "SELECT sum(octet_length(body))::bigint FROM task_log WHERE task_id = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        bytes <= 10_000 + TRUNCATION_LINE.len() as i64 + 1,
        "{bytes}"
    );
    println!("log volume: {bytes} bytes stored of 62,000 sent (bound 10,000)");
}

#[tokio::test]
async fn one_user_follows_a_bounded_number_of_logs() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.max_log_followers_per_user = 3;
    let r = spawn_replica(config).await;
    let mut admin = r.admin().await;
    let t = submit(&mut admin, task("sleep 1")).await;
    let follow = |mut c: taskqueue::client::Client| async move {
        c.stream_task_logs_output(pb::TaskId { task_id: t })
            .await
            .map(|r| r.into_inner())
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(follow(admin.clone()).await.unwrap());
    }
    let err = follow(admin.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-log-followers-per-user"),
        "{}",
        err.message()
    );
    // Another caller is not counted with this user.
    let _other = follow(r.worker()).await.unwrap();
    drop(open.pop());
    wait_until(
        Duration::from_secs(10),
        "a user follow slot to free",
        || {
            let admin = admin.clone();
            async move { follow(admin).await.is_ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn page_sizes_are_clamped_and_negative_ones_refused() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    // More events than one ListWorkerEvents page holds.
    let db = postgres().await.connect(r.database_url()).await;
    db.execute(
        "INSERT INTO worker_event (worker_name, level, event_class, message)
         SELECT 'w' || g, 'I', 'test', 'event ' || g FROM generate_series(1, 1100) g",
        &[],
    )
    .await
    .unwrap();
    let events = admin
        .list_worker_events(pb::WorkerEventFilter {
            limit: Some(i32::MAX),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len() as i64, limits::LIST_WORKER_EVENTS.max);

    let t = submit(&mut worker, task("true")).await;
    let tasks = admin
        .list_tasks(pb::ListTasksRequest {
            limit: Some(i32::MAX),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![t]);
    for limit in [100_000, i32::MAX] {
        admin
            .list_jobs(pb::ListJobsRequest {
                limit: Some(limit),
                offset: None,
            })
            .await
            .unwrap();
        admin
            .list_workflows(pb::WorkflowFilter {
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .unwrap();
        admin
            .list_steps(pb::StepFilter {
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .unwrap();
        admin
            .list_flavors(pb::ListFlavorsRequest {
                limit,
                filter: String::new(),
            })
            .await
            .unwrap();
    }
    let negative = [
        admin
            .list_jobs(pb::ListJobsRequest {
                limit: Some(-1),
                offset: None,
            })
            .await
            .map(|_| ()),
        admin
            .list_worker_events(pb::WorkerEventFilter {
                limit: Some(-1),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        admin
            .list_tasks(pb::ListTasksRequest {
                limit: Some(-5),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ];
    for result in negative {
        assert_eq!(result.unwrap_err().code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn ten_megabyte_names_are_invalid_arguments_not_internal() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let huge = "n".repeat(10 << 20);
    let results = [
        (
            "CreateWorkflow",
            admin
                .create_workflow(pb::WorkflowRequest {
                    name: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "RegisterWorker",
            worker
                .register_worker(pb::WorkerInfo {
                    name: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "CreateStep",
            admin
                .create_step(pb::StepRequest {
                    name: huge.clone(),
                    workflow_name: Some("wf".into()),
                    workflow_id: None,
                })
                .await
                .map(|_| ()),
        ),
        (
            "CreateUser",
            admin
                .create_user(pb::CreateUserRequest {
                    username: huge.clone(),
                    password: "secret-secret".into(),
                    email: "a@b.c".into(),
                    is_admin: false,
                })
                .await
                .map(|_| ()),
        ),
    ];
    for (rpc, result) in results {
        let e = result.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{rpc}: {}", e.message());
        assert!(e.message().contains("255"), "{rpc}: {}", e.message());
        assert!(e.message().len() <= 200, "{rpc}: {}", e.message().len());
    }
    let db = postgres().await.connect(r.database_url()).await;
    let workflows: i64 = db
        .query_one("SELECT count(*) FROM workflow", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(workflows, 0);
}

#[tokio::test]
async fn postgres_errors_reach_clients_without_detail() {
    let r = replica().await;
    let mut admin = r.admin().await;
    for _ in 0..2 {
        let _ = admin
            .create_workflow(pb::WorkflowRequest {
                name: "twice".into(),
                ..Default::default()
            })
            .await;
    }
    let dup = admin
        .create_workflow(pb::WorkflowRequest {
            name: "twice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        dup.message()
            .contains("duplicate key value violates unique constraint"),
        "{}",
        dup.message()
    );
    assert!(!dup.message().contains("Key ("), "{}", dup.message());

    // The mapping itself, on errors Postgres raises: a unique violation (its DETAIL quotes the
    // value) and an index row too large for a btree (SQLSTATE 54000).
    let db = postgres().await.connect(r.database_url()).await;
    db.batch_execute(
        "CREATE TEMP TABLE limits_probe (v text UNIQUE);
         INSERT INTO limits_probe VALUES ('secret-value')",
    )
    .await
    .unwrap();
    let e = db
        .execute("INSERT INTO limits_probe VALUES ('secret-value')", &[])
        .await
        .unwrap_err();
    let mapped = taskqueue::db::pg_error(e);
    assert_eq!(mapped.code, taskqueue::error::Code::AlreadyExists);
    assert!(
        !mapped.message.contains("secret-value"),
        "{}",
        mapped.message
    );
    let e = db
        .execute(
            "INSERT INTO limits_probe
             SELECT string_agg(md5(g::text), '') FROM generate_series(1, 2000) g",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("54000"));
    let mapped = taskqueue::db::pg_error(e);
    assert_eq!(mapped.code, taskqueue::error::Code::InvalidArgument);
    assert!(mapped.message.len() <= limits::MAX_ECHO_BYTES);
}

#[tokio::test]
async fn one_connection_opens_a_bounded_number_of_streams() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.max_concurrent_streams = 2;
    let r = spawn_replica(config).await;
    // One client, one HTTP/2 connection: its streams share the bound.
    let worker = r.worker();
    let t = submit(&mut worker.clone(), task("sleep 1")).await;
    let follow = |mut c: taskqueue::client::Client| async move {
        c.stream_task_logs_output(pb::TaskId { task_id: t })
            .await
            .map(|r| r.into_inner())
    };
    let first = follow(worker.clone()).await.unwrap();
    let _second = follow(worker.clone()).await.unwrap();
    // A third stream on the same connection is not opened while two are: it waits or fails.
    let third = tokio::time::timeout(Duration::from_secs(1), follow(worker.clone())).await;
    assert!(
        !matches!(third, Ok(Ok(_))),
        "a third stream opened past --max-concurrent-streams 2"
    );
    drop(first);
    wait_until(
        Duration::from_secs(10),
        "a stream of the connection to free",
        || {
            let worker = worker.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(2), follow(worker))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        },
    )
    .await;
}
