//! Task logs of the original Go worker and CLI, which send no `authorization` header on streams
//! (the Go worker's token interceptor is unary-only): a SendTaskLogs without a token appends lines
//! of tasks a worker holds (C, D, O, R, U, V) and nothing else, checked per task and again in the
//! statement that appends; StreamTaskLogs* without a token need `--allow-unauthenticated-log-streams`.
//! Real PostgreSQL, real replicas, the generated gRPC client.

use crate::common;

use std::time::Duration;

use common::{Replica, ping, postgres, register_worker, replica, set_status, spawn_replica, task};
use common::{test_config, wait_until};
use taskqueue::client::{self, Client};
use taskqueue::proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

fn log(task_id: i32, log_type: &str, text: &str) -> pb::TaskLog {
    pb::TaskLog {
        task_id,
        log_type: log_type.into(),
        log_text: text.into(),
    }
}

/// A client that sends no `authorization` header, as the Go worker on streams.
fn tokenless(r: &Replica) -> Client {
    client::with_token(r.channel(), None).unwrap()
}

async fn submit(c: &mut Client) -> i32 {
    common::submit(c, task("echo hello")).await
}

/// Submits `n` tasks and has a new worker take them in one ping: they are A, on that worker.
async fn assigned_tasks(c: &mut Client, worker: &str, n: usize) -> Vec<i32> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(submit(c).await);
    }
    let w = register_worker(c, worker, n as i32, 0, None).await;
    let mut got: Vec<i32> = ping(c, w).await.tasks.iter().map(|t| t.task_id).collect();
    got.sort();
    assert_eq!(got, ids, "the worker takes every task");
    ids
}

/// One SendTaskLogs stream carrying `messages`.
async fn send(c: &mut Client, messages: Vec<pb::TaskLog>) -> Result<(), Status> {
    c.send_task_logs(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

/// The stored (stdout, stderr) lines of a task, read with the worker token.
async fn lines_of(c: &mut Client, task_id: i32) -> (Vec<String>, Vec<String>) {
    let mut chunks = c
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![task_id],
            chunk_size: 1000,
            skip_from_end: None,
            log_type: None,
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    let chunk = chunks.pop().unwrap();
    (chunk.stdout, chunk.stderr)
}

async fn stored_batches(db: &tokio_postgres::Client, tasks: &[i32]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM task_log WHERE task_id = ANY($1)",
        &[&tasks],
    )
    .await
    .unwrap()
    .get(0)
}

fn assert_unauthenticated(result: Result<(), Status>, what: &str) -> String {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    err.message().to_string()
}

#[tokio::test]
async fn tokenless_lines_are_stored_for_a_task_in_each_held_status() {
    let r = replica().await;
    let mut c = r.worker();
    let mut go_worker = tokenless(&r);
    let t = assigned_tasks(&mut c, "go-worker", 1).await[0];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for status in ["C", "D", "O", "R", "U", "V"] {
        set_status(&mut c, t, status).await;
        let (o, e) = (format!("stdout in {status}"), format!("stderr in {status}"));
        send(
            &mut go_worker,
            vec![log(t, "stdout", &o), log(t, "stderr", &e)],
        )
        .await
        .unwrap_or_else(|e| panic!("a line without a token while {status}: {e:?}"));
        out.push(o);
        err.push(e);
    }
    assert_eq!(lines_of(&mut c, t).await, (out, err));
}

#[tokio::test]
async fn tokenless_lines_for_a_task_no_worker_holds_are_unauthenticated_and_store_nothing() {
    let r = replica().await;
    let mut c = r.worker();
    let mut go_worker = tokenless(&r);
    let db = postgres().await.connect(r.database_url()).await;
    // One task per status outside C, D, O, R, U, V: A (assigned, not yet accepted) and the rest
    // set through UpdateTaskStatus; then a task nobody took and an id that does not exist.
    let ids = assigned_tasks(&mut c, "go-worker", 8).await;
    let mut cases = vec![(ids[0], "A")];
    for (&t, status) in ids[1..].iter().zip(["I", "W", "P", "S", "F", "X", "Z"]) {
        set_status(&mut c, t, status).await;
        cases.push((t, status));
    }
    cases.push((submit(&mut c).await, "P, never assigned"));
    cases.push((987_654, "unknown"));
    let all: Vec<i32> = cases.iter().map(|(t, _)| *t).collect();

    let mut messages = Vec::new();
    for &(t, status) in &cases {
        let what = format!("a line without a token for a task {status}");
        let message = assert_unauthenticated(
            send(&mut go_worker, vec![log(t, "stdout", "refused")]).await,
            &what,
        );
        assert!(message.contains("missing token"), "{what}: {message}");
        // The same answer whether the task exists or not.
        messages.push(message.replace(&t.to_string(), "N"));
        // Without a token, the task is checked before anything else in the message.
        assert_unauthenticated(
            send(&mut go_worker, vec![log(t, "bogus", "refused")]).await,
            &format!("{what}, bad log_type"),
        );
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(stored_batches(&db, &all).await, 0);

    // With a token everything works as before: any existing task, whatever its status.
    for &(t, status) in &cases[..cases.len() - 1] {
        send(&mut c, vec![log(t, "stdout", "with a token")])
            .await
            .unwrap_or_else(|e| panic!("a line with the worker token for a task {status}: {e:?}"));
    }
    let err = send(&mut c, vec![log(987_654, "stdout", "x")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        stored_batches(&db, &all).await,
        cases.len() as i64 - 1,
        "one batch per existing task"
    );
}

#[tokio::test]
async fn a_tokenless_stream_ends_at_the_first_line_of_a_task_not_held() {
    let r = replica().await;
    let mut c = r.worker();
    let mut go_worker = tokenless(&r);
    let db = postgres().await.connect(r.database_url()).await;
    let held = assigned_tasks(&mut c, "go-worker", 1).await[0];
    set_status(&mut c, held, "R").await;
    let pending = submit(&mut c).await;

    // Lines of several tasks in one stream: what came before the refused line is stored.
    assert_unauthenticated(
        send(
            &mut go_worker,
            vec![
                log(held, "stdout", "a"),
                log(held, "stderr", "b"),
                log(pending, "stdout", "not held"),
                log(held, "stdout", "after"),
            ],
        )
        .await,
        "a stream naming a pending task",
    );
    assert_eq!(
        lines_of(&mut c, held).await,
        (vec!["a".to_string()], vec!["b".to_string()])
    );
    assert_eq!(stored_batches(&db, &[pending]).await, 0);

    // Nothing without a token but appending lines of a held task succeeds: an empty stream, or a
    // header with a bad token (only a missing header is the Go worker's), are refused.
    assert_unauthenticated(send(&mut go_worker, vec![]).await, "an empty stream");
    let mut bad = client::with_token(r.channel(), Some("not-a-valid-token")).unwrap();
    assert_unauthenticated(
        send(&mut bad, vec![log(held, "stdout", "bad token")]).await,
        "a bad token",
    );
    assert_eq!(stored_batches(&db, &[held]).await, 2, "a and b only");
}

#[tokio::test]
async fn a_task_that_leaves_the_held_statuses_mid_stream_gets_no_more_lines() {
    let r = replica().await;
    let mut c = r.worker();
    let t = assigned_tasks(&mut c, "go-worker", 1).await[0];
    set_status(&mut c, t, "R").await;

    // The Go worker keeps one stream open while its task runs.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stream = tokio::spawn({
        let mut go_worker = tokenless(&r);
        async move { go_worker.send_task_logs(ReceiverStream::new(rx)).await }
    });
    tx.send(log(t, "stdout", "before")).await.unwrap();
    wait_until(Duration::from_secs(10), "the first line stored", || {
        let mut c = c.clone();
        async move { lines_of(&mut c, t).await.0 == ["before"] }
    })
    .await;
    // The task leaves its worker's hands: its id is known to the stream, but the append checks
    // the status again.
    set_status(&mut c, t, "S").await;
    tx.send(log(t, "stdout", "after")).await.unwrap();
    drop(tx);
    let result = stream.await.unwrap().map(|_| ());
    assert_unauthenticated(result, "a line after the task succeeded");
    assert_eq!(lines_of(&mut c, t).await.0, ["before"]);
}

/// Sends one line without a token while another transaction holds an uncommitted status change
/// of the task (`new_status`): the append waits for it, then decides on the committed status.
/// Returns the stream's result.
async fn append_racing_a_status_change(
    r: &Replica,
    t: i32,
    new_status: &str,
) -> Result<(), Status> {
    let mut db = postgres().await.connect(r.database_url()).await;
    let change = db.transaction().await.unwrap();
    change
        .execute(
            "UPDATE task SET status = $2 WHERE task_id = $1",
            &[&t, &new_status],
        )
        .await
        .unwrap();
    let append = tokio::spawn({
        let mut go_worker = tokenless(r);
        async move { send(&mut go_worker, vec![log(t, "stdout", "racing line")]).await }
    });
    let observer = postgres().await.connect(r.database_url()).await;
    wait_until(
        Duration::from_secs(10),
        "the append to wait for the status change",
        || async {
            let waiting: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting > 0
        },
    )
    .await;
    change.commit().await.unwrap();
    append.await.unwrap()
}

#[tokio::test]
async fn the_held_check_is_part_of_the_statement_that_appends() {
    // The early check (when the id first appears) sees R, committed; the status change commits
    // while the append waits for the row. A read-then-write check would store the line.
    let r = replica().await;
    let mut c = r.worker();
    let db = postgres().await.connect(r.database_url()).await;
    let ids = assigned_tasks(&mut c, "go-worker", 2).await;
    let (finished, uploading) = (ids[0], ids[1]);
    for t in [finished, uploading] {
        set_status(&mut c, t, "R").await;
    }

    let result = append_racing_a_status_change(&r, finished, "S").await;
    assert_unauthenticated(result, "a line racing R → S");
    assert_eq!(stored_batches(&db, &[finished]).await, 0);

    // R → U keeps the task held: the line waits, then is stored.
    append_racing_a_status_change(&r, uploading, "U")
        .await
        .unwrap();
    assert_eq!(lines_of(&mut c, uploading).await.0, ["racing line"]);
}

/// Reads a follow stream to its end.
async fn collect(mut stream: Streaming<pb::TaskLog>) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut lines = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            lines.push(m.log_text);
        }
        lines
    })
    .await
    .expect("the follow stream ends")
}

#[tokio::test]
async fn tokenless_reads_need_the_flag() {
    let url = postgres().await.fresh_db().await;
    let strict = spawn_replica(test_config(&url)).await;
    let mut legacy_config = test_config(&url);
    legacy_config.allow_unauthenticated_log_streams = true;
    let legacy = spawn_replica(legacy_config).await;
    let mut c = strict.worker();
    let t = assigned_tasks(&mut c, "go-worker", 1).await[0];
    set_status(&mut c, t, "R").await;
    send(
        &mut c,
        vec![log(t, "stdout", "out"), log(t, "stderr", "err")],
    )
    .await
    .unwrap();

    // By default, the Go CLI's `task output` (no token) is refused, on both outputs.
    let mut go_cli = tokenless(&strict);
    let refused = go_cli
        .stream_task_logs_output(pb::TaskId { task_id: t })
        .await
        .map(|_| ());
    assert_unauthenticated(refused, "StreamTaskLogsOutput without a token");
    let refused = go_cli
        .stream_task_logs_err(pb::TaskId { task_id: t })
        .await
        .map(|_| ());
    assert_unauthenticated(refused, "StreamTaskLogsErr without a token");

    // With --allow-unauthenticated-log-streams, log streams are open as in the original: reads,
    // and writes to any task (here one that no worker holds).
    let mut go_cli = tokenless(&legacy);
    let out = go_cli
        .stream_task_logs_output(pb::TaskId { task_id: t })
        .await
        .unwrap()
        .into_inner();
    let err = go_cli
        .stream_task_logs_err(pb::TaskId { task_id: t })
        .await
        .unwrap()
        .into_inner();
    let pending = submit(&mut c).await;
    send(&mut go_cli, vec![log(pending, "stdout", "as the original")])
        .await
        .unwrap();
    assert_eq!(lines_of(&mut c, pending).await.0, ["as the original"]);
    // Nothing else: a unary RPC still needs a token.
    let unary = go_cli
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map(|_| ());
    assert_unauthenticated(unary, "ListTasks without a token, flag on");

    set_status(&mut c, t, "S").await;
    assert_eq!(collect(out).await, ["out"]);
    assert_eq!(collect(err).await, ["err"]);

    // With a token, reads work on both replicas as before.
    for r in [&strict, &legacy] {
        let stream = r
            .worker()
            .stream_task_logs_output(pb::TaskId { task_id: t })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(collect(stream).await, ["out"]);
    }
}
