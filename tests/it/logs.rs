//! Task logs across replicas: SendTaskLogs (batched, durable before the Ack), StreamTaskLogsOutput
//! and StreamTaskLogsErr (replay, live follow through NOTIFY, end at the terminal status without
//! losing the tail), GetLogsChunk (paging backwards against a reference model), bounds and bad
//! inputs. Real PostgreSQL, real replicas, the generated gRPC client.

use crate::common;

use std::time::Duration;

use common::{postgres, replica, set_status, spawn_replica, task, test_config, wait_until};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use taskqueue::client::Client;
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

async fn submit(client: &mut Client) -> i32 {
    common::submit(client, task("echo hello")).await
}

/// One SendTaskLogs stream carrying `messages`.
async fn send(client: &mut Client, messages: Vec<pb::TaskLog>) -> Result<(), Status> {
    client
        .send_task_logs(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

async fn follow(
    client: &mut Client,
    task_id: i32,
    stdout: bool,
) -> Result<Streaming<pb::TaskLog>, Status> {
    let request = pb::TaskId { task_id };
    let response = if stdout {
        client.stream_task_logs_output(request).await
    } else {
        client.stream_task_logs_err(request).await
    };
    response.map(|r| r.into_inner())
}

/// Reads `n` lines of a follow stream (fails after `timeout`).
async fn take(stream: &mut Streaming<pb::TaskLog>, n: usize, timeout: Duration) -> Vec<String> {
    let mut lines = Vec::new();
    tokio::time::timeout(timeout, async {
        while lines.len() < n {
            let m = stream.message().await.unwrap().expect("stream ended early");
            lines.push(m.log_text);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {} of {n} lines in {timeout:?}", lines.len()));
    lines
}

/// Reads a follow stream to its end (fails after `timeout`); checks each message's task id and
/// log type.
async fn collect(
    mut stream: Streaming<pb::TaskLog>,
    task_id: i32,
    log_type: &str,
    timeout: Duration,
) -> Result<Vec<String>, Status> {
    tokio::time::timeout(timeout, async {
        let mut lines = Vec::new();
        while let Some(m) = stream.message().await? {
            assert_eq!(m.task_id, task_id);
            assert_eq!(m.log_type, log_type);
            lines.push(m.log_text);
        }
        Ok(lines)
    })
    .await
    .expect("the follow stream did not end in time")
}

async fn chunk(
    client: &mut Client,
    task_ids: Vec<i32>,
    chunk_size: i32,
    skip: Option<i32>,
    log_type: Option<&str>,
) -> Result<Vec<pb::LogChunk>, Status> {
    client
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids,
            chunk_size,
            skip_from_end: skip,
            log_type: log_type.map(str::to_string),
        })
        .await
        .map(|r| r.into_inner().logs)
}

async fn stored_batches(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM task_log", &[])
        .await
        .unwrap()
        .get(0)
}

/// Two replicas on one database.
async fn two_replicas() -> (common::Replica, common::Replica) {
    let url = postgres().await.fresh_db().await;
    let a = spawn_replica(test_config(&url)).await;
    let b = spawn_replica(test_config(&url)).await;
    (a, b)
}

#[tokio::test]
async fn write_through_one_replica_follow_through_the_other() {
    let (a, b) = two_replicas().await;
    let mut on_a = a.worker();
    let mut on_b = b.admin().await;
    let t = submit(&mut on_a).await;
    let mut out = follow(&mut on_b, t, true).await.unwrap();
    let err = follow(&mut on_b, t, false).await.unwrap();

    // A worker's stream stays open while the task runs: lines reach B's follower live.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sender = tokio::spawn({
        let mut on_a = on_a.clone();
        async move { on_a.send_task_logs(ReceiverStream::new(rx)).await }
    });
    let first = [
        "first line",
        "",
        "unicode: é ✓ 🦀 ∑",
        "tab\there  trailing  ",
    ];
    for l in first {
        tx.send(log(t, "stdout", l)).await.unwrap();
    }
    tx.send(log(t, "stderr", "warning: something"))
        .await
        .unwrap();
    // Within a few seconds although the safety poll is 10 s: NOTIFY woke the follower on B.
    let live = take(&mut out, first.len(), Duration::from_secs(5)).await;
    assert_eq!(live, first);

    let mut expected_out: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let mut expected_err = vec!["warning: something".to_string()];
    for i in 0..600 {
        let line = format!("line {i} {}", "·".repeat(i % 17));
        tx.send(log(t, if i % 2 == 0 { "stdout" } else { "O" }, &line))
            .await
            .unwrap();
        expected_out.push(line);
    }
    let long = format!("long {}", "x".repeat(100_000));
    tx.send(log(t, "stdout", &long)).await.unwrap();
    expected_out.push(long);
    tx.send(log(t, "E", "two\nlines")).await.unwrap();
    expected_err.extend(["two".to_string(), "lines".to_string()]);
    tx.send(log(t, "stdout", "the last line")).await.unwrap();
    expected_out.push("the last line".into());
    drop(tx);
    sender.await.unwrap().unwrap();

    // The Ack means stored: the terminal status is set right after, and nothing is lost.
    set_status(&mut on_a, t, "S").await;
    let rest = collect(out, t, "stdout", Duration::from_secs(6))
        .await
        .unwrap();
    let got_out: Vec<String> = live.into_iter().chain(rest).collect();
    assert_eq!(got_out.join("\n"), expected_out.join("\n"));
    let got_err = collect(err, t, "stderr", Duration::from_secs(6))
        .await
        .unwrap();
    assert_eq!(got_err, expected_err);

    // A follower that starts after the end replays everything and ends.
    let late = follow(&mut on_a, t, true).await.unwrap();
    let replay = collect(late, t, "stdout", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(replay, expected_out);

    let metrics = b.metrics().await;
    assert!(metrics.contains("taskqueue_log_follow_lag_seconds_bucket"));
    assert!(metrics.contains("taskqueue_log_received_lines_total"));
}

#[tokio::test]
async fn the_tail_written_just_before_the_terminal_status_is_never_lost() {
    let (a, b) = two_replicas().await;
    let mut on_a = a.worker();
    let mut on_b = b.worker();
    for (round, end) in ["S", "F", "X", "S", "F", "S"].into_iter().enumerate() {
        let t = submit(&mut on_a).await;
        let out = follow(&mut on_b, t, true).await.unwrap();
        let lines: Vec<String> = (0..(round * 97 % 300 + 1))
            .map(|i| format!("round {round} line {i}"))
            .collect();
        let messages = lines.iter().map(|l| log(t, "stdout", l)).collect();
        send(&mut on_a, messages).await.unwrap();
        set_status(&mut on_a, t, end).await;
        let got = collect(out, t, "stdout", Duration::from_secs(6))
            .await
            .unwrap();
        assert_eq!(got, lines, "round {round} ending in {end}");
    }
}

#[tokio::test]
async fn a_stalled_follower_still_gets_everything_written_before_the_end() {
    // The client does not read while batches and the terminal status are written: the follower is
    // blocked by flow control in the middle of a page and must still send every later batch.
    let (a, b) = two_replicas().await;
    let mut on_a = a.worker();
    // A client with the smallest HTTP/2 windows: the server is held back after 64 KiB unread.
    let channel = tonic::transport::Endpoint::from_shared(b.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_lazy();
    let mut on_b = taskqueue::client::with_token(channel, Some(common::WORKER_TOKEN)).unwrap();
    for round in 0..3 {
        let t = submit(&mut on_a).await;
        let out = follow(&mut on_b, t, true).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..12 {
            let line = format!("round {round} batch {i} {}", "z".repeat(50_000));
            send(&mut on_a, vec![log(t, "stdout", &line)])
                .await
                .unwrap();
            expected.push(line);
        }
        set_status(&mut on_a, t, "S").await;
        let got = collect(out, t, "stdout", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got.len(), expected.len(), "round {round}");
        assert!(got == expected, "round {round}: lines differ");
    }
}

#[tokio::test]
async fn follow_ends_when_the_task_is_hidden_or_deleted() {
    let r = replica().await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    send(&mut c, vec![log(t, "stdout", "before retry")])
        .await
        .unwrap();
    let out = follow(&mut c, t, true).await.unwrap();
    // A manual retry hides the original: its streams end.
    c.retry_task(pb::RetryTaskRequest {
        task_id: t,
        retry: None,
    })
    .await
    .unwrap();
    let got = collect(out, t, "stdout", Duration::from_secs(6))
        .await
        .unwrap();
    assert_eq!(got, ["before retry"]);

    // A task deleted while followed: the stream ends with NotFound (woken here by hand, as the
    // safety poll would).
    let t2 = submit(&mut c).await;
    let mut out = follow(&mut c, t2, false).await.unwrap();
    send(&mut c, vec![log(t2, "stderr", "x")]).await.unwrap();
    take(&mut out, 1, Duration::from_secs(5)).await;
    let db = postgres().await.connect(r.database_url()).await;
    db.execute("DELETE FROM task WHERE task_id = $1", &[&t2])
        .await
        .unwrap();
    db.execute("SELECT pg_notify('task_log', $1)", &[&t2.to_string()])
        .await
        .unwrap();
    let err = collect(out, t2, "stderr", Duration::from_secs(6))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A random line: empty, ASCII, accented, emoji, carriage returns, sometimes several lines.
fn random_text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", " ", "é", "ñ", "🦀", "∑", "\t", "\r", "0", "-", "\n",
    ];
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(200..2000),
        _ => rng.random_range(1..60),
    };
    (0..len)
        .map(|_| {
            let p = PIECES[rng.random_range(0..PIECES.len())];
            // Embedded newlines are rare: each one makes an extra line.
            if p == "\n" && rng.random_range(0..20) != 0 {
                "n"
            } else {
                p
            }
        })
        .collect()
}

#[tokio::test]
async fn get_logs_chunk_pages_backwards_like_a_plain_list_of_lines() {
    let r = replica().await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    let empty = submit(&mut c).await;
    let mut rng = StdRng::seed_from_u64(0x10c5);
    let (mut out, mut err) = (Vec::<String>::new(), Vec::<String>::new());
    // Many streams of random sizes: batches of many sizes, one above the 64 KiB flush threshold.
    for stream_no in 0..25 {
        let n = if stream_no == 7 {
            400
        } else {
            rng.random_range(0..40)
        };
        let mut messages = Vec::new();
        for _ in 0..n {
            let text = random_text(&mut rng);
            let to_out = rng.random_bool(0.7);
            let log_type = match (to_out, rng.random_bool(0.5)) {
                (true, true) => "stdout",
                (true, false) => "O",
                (false, true) => "stderr",
                (false, false) => "E",
            };
            let model = if to_out { &mut out } else { &mut err };
            model.extend(text.split('\n').map(str::to_string));
            messages.push(log(t, log_type, &text));
        }
        send(&mut c, messages).await.unwrap();
    }
    assert!(
        out.len() > 600 && err.len() > 200,
        "{} {}",
        out.len(),
        err.len()
    );

    let window = |lines: &[String], size: usize, skip: usize| -> Vec<String> {
        let end = lines.len().saturating_sub(skip);
        lines[end.saturating_sub(size)..end].to_vec()
    };
    let mut cases = vec![(1, 0), (2, 1), (3, 7), (50, 0), (1000, 0), (10_000, 3)];
    for _ in 0..25 {
        cases.push((
            rng.random_range(1..120),
            rng.random_range(0..out.len() + 20),
        ));
    }
    cases.extend([(5, out.len() - 1), (5, out.len()), (5, out.len() + 3)]);
    for (size, skip) in cases {
        for log_type in [
            None,
            Some(""),
            Some("stdout"),
            Some("O"),
            Some("stderr"),
            Some("E"),
        ] {
            let got = chunk(&mut c, vec![t], size as i32, Some(skip as i32), log_type)
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].task_id, t);
            let wants_out = !matches!(log_type, Some("stderr" | "E"));
            let wants_err = !matches!(log_type, Some("stdout" | "O"));
            let expect_out = if wants_out {
                window(&out, size, skip)
            } else {
                vec![]
            };
            let expect_err = if wants_err {
                window(&err, size, skip)
            } else {
                vec![]
            };
            assert_eq!(
                got[0].stdout, expect_out,
                "stdout size {size} skip {skip} {log_type:?}"
            );
            assert_eq!(
                got[0].stderr, expect_err,
                "stderr size {size} skip {skip} {log_type:?}"
            );
        }
    }

    // Several ids: one chunk each, in request order; a task without log or no such task → empty.
    let got = chunk(&mut c, vec![empty, t, 987_654, t], 4, None, None)
        .await
        .unwrap();
    let ids: Vec<i32> = got.iter().map(|l| l.task_id).collect();
    assert_eq!(ids, [empty, t, 987_654, t]);
    assert!(got[0].stdout.is_empty() && got[0].stderr.is_empty());
    assert!(got[2].stdout.is_empty() && got[2].stderr.is_empty());
    assert_eq!(got[1].stdout, window(&out, 4, 0));
    assert_eq!(got[3].stderr, window(&err, 4, 0));
    // chunkSize 0 → empty lists, as the original.
    let got = chunk(&mut c, vec![t], 0, None, None).await.unwrap();
    assert!(got[0].stdout.is_empty() && got[0].stderr.is_empty());

    // Followers replay the same lines.
    set_status(&mut c, t, "S").await;
    let replay = collect(
        follow(&mut c, t, true).await.unwrap(),
        t,
        "stdout",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(replay, out);
    let replay = collect(
        follow(&mut c, t, false).await.unwrap(),
        t,
        "stderr",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(replay, err);
}

#[tokio::test]
async fn a_one_mebibyte_line_and_answers_too_large_to_send() {
    let r = replica().await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    let big: String = "0123456789abcdé🦀".repeat((1 << 20) / 18 + 1);
    assert!(big.len() >= 1 << 20);
    send(
        &mut c,
        vec![
            log(t, "stdout", "before"),
            log(t, "stdout", &big),
            log(t, "stdout", "after"),
        ],
    )
    .await
    .unwrap();
    let got = chunk(&mut c, vec![t], 2, Some(0), Some("stdout"))
        .await
        .unwrap();
    assert_eq!(got[0].stdout.len(), 2);
    assert!(got[0].stdout[0] == big, "the 1 MiB line comes back intact");
    assert_eq!(got[0].stdout[1], "after");
    let mut out = follow(&mut c, t, true).await.unwrap();
    let lines = take(&mut out, 3, Duration::from_secs(10)).await;
    assert!(lines[1] == big && lines[0] == "before" && lines[2] == "after");
    drop(out);

    // 40 MiB of log asked in one answer: refused with a message saying what to do; a smaller
    // window of the same log works.
    let t2 = submit(&mut c).await;
    let mib = "m".repeat(1 << 20);
    send(&mut c, (0..40).map(|_| log(t2, "stderr", &mib)).collect())
        .await
        .unwrap();
    let err = chunk(&mut c, vec![t2], 100, None, None).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("chunkSize"), "{}", err.message());
    let got = chunk(&mut c, vec![t2], 5, Some(10), None).await.unwrap();
    assert_eq!(got[0].stderr.len(), 5);
}

#[tokio::test]
async fn a_hundred_concurrent_writers_on_two_replicas() {
    let (a, b) = two_replicas().await;
    let mut on_a = a.worker();
    let shared = submit(&mut on_a).await;
    let mut own = Vec::new();
    for _ in 0..50 {
        own.push(submit(&mut on_a).await);
    }
    let follower = follow(&mut b.worker(), shared, true).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..100usize {
        let mut client = if w % 2 == 0 { a.worker() } else { b.worker() };
        let target = if w < 50 { shared } else { own[w - 50] };
        writers.push(tokio::spawn(async move {
            for round in 0..3 {
                let mut messages = Vec::new();
                for n in 0..20 {
                    messages.push(log(target, "stdout", &format!("w{w} r{round} n{n}")));
                }
                messages.push(log(target, "stderr", &format!("w{w} r{round} err")));
                send(&mut client, messages).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    set_status(&mut on_a, shared, "S").await;
    let got = collect(follower, shared, "stdout", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 50 * 3 * 20);
    // Every writer's lines, each once, in the order it sent them.
    for w in 0..50 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|l| l.starts_with(&format!("w{w} ")))
            .collect();
        let expected: Vec<String> = (0..3)
            .flat_map(|r| (0..20).map(move |n| format!("w{w} r{r} n{n}")))
            .collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "writer {w}");
    }
    let mut c = a.worker();
    for (i, &t) in own.iter().enumerate() {
        let w = i + 50;
        let got = chunk(&mut c, vec![t], 1000, None, None).await.unwrap();
        let expected: Vec<String> = (0..3)
            .flat_map(|r| (0..20).map(move |n| format!("w{w} r{r} n{n}")))
            .collect();
        assert_eq!(got[0].stdout, expected);
        assert_eq!(got[0].stderr.len(), 3);
    }
    // Sequence numbers are contiguous and line counts add up, per (task, stream).
    let db = postgres().await.connect(a.database_url()).await;
    let bad: i64 = db
        .query_one(
            "SELECT count(*) FROM (
                SELECT seq, row_number() OVER w AS rn, line_end,
                       sum(line_count) OVER w AS total
                  FROM task_log
                WINDOW w AS (PARTITION BY task_id, stream ORDER BY seq)) s
              WHERE seq <> rn OR line_end <> total",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
}

#[tokio::test]
async fn bad_inputs_are_refused_and_store_nothing() {
    let r = replica().await;
    let mut c = r.worker();
    let db = postgres().await.connect(r.database_url()).await;
    let t = submit(&mut c).await;

    for bad in ["", "x", "o", "STDOUT", "out", "../../etc/passwd"] {
        let err = send(&mut c, vec![log(t, bad, "hello")]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "log_type {bad:?}");
        assert!(err.message().contains("log_type"), "{}", err.message());
    }
    let err = send(&mut c, vec![log(987_654, "stdout", "x")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("987654"), "{}", err.message());
    assert_eq!(stored_batches(&db).await, 0);

    // A stream that goes wrong keeps what came before the bad message, and nothing after.
    let err = send(
        &mut c,
        vec![
            log(t, "stdout", "a"),
            log(t, "stderr", "b"),
            log(987_654, "stdout", "lost"),
            log(t, "stdout", "after"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = send(
        &mut c,
        vec![
            log(t, "stdout", "c"),
            log(t, "bogus", "d"),
            log(t, "stdout", "e"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let got = chunk(&mut c, vec![t], 10, None, None).await.unwrap();
    assert_eq!(got[0].stdout, ["a", "c"]);
    assert_eq!(got[0].stderr, ["b"]);
    let before = stored_batches(&db).await;

    for stdout in [true, false] {
        let err = follow(&mut c, 987_654, stdout).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    type Case<'a> = (Vec<i32>, i32, Option<i32>, Option<&'a str>);
    let cases: [Case; 4] = [
        (vec![t], 10, None, Some("x")),
        (vec![t], -1, None, None),
        (vec![t], 10, Some(-1), None),
        ((0..1001).collect(), 1, None, None),
    ];
    for (ids, size, skip, log_type) in cases {
        let err = chunk(&mut c, ids, size, skip, log_type).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{size} {skip:?} {log_type:?}"
        );
    }
    assert_eq!(stored_batches(&db).await, before);
}

#[tokio::test]
async fn streams_end_when_the_replica_drains() {
    let url = postgres().await.fresh_db().await;
    let a = spawn_replica(test_config(&url)).await;
    let mut b = spawn_replica(test_config(&url)).await;
    let mut on_a = a.worker();
    let t = submit(&mut on_a).await;
    let mut out = follow(&mut b.worker(), t, true).await.unwrap();
    send(&mut on_a, vec![log(t, "stdout", "one")])
        .await
        .unwrap();
    take(&mut out, 1, Duration::from_secs(5)).await;

    // A worker streaming to B when B drains: what it sent is stored, the call says Unavailable.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let sender = tokio::spawn({
        let mut on_b = b.worker();
        async move { on_b.send_task_logs(ReceiverStream::new(rx)).await }
    });
    tx.send(log(t, "stderr", "kept")).await.unwrap();
    let db = postgres().await.connect(&url).await;
    b.begin_shutdown();
    let err = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the send stream ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = collect(out, t, "stdout", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM task_log WHERE task_id = $1 AND body = 'kept\n'",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    drop(tx);
}

#[tokio::test]
async fn many_followers_share_one_listen_connection_and_a_small_pool() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.db_pool_size = 6;
    let r = spawn_replica(config).await;
    let mut c = r.worker();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(submit(&mut c).await);
    }
    const FOLLOWERS: usize = 500;
    // A few HTTP/2 connections, many streams each.
    let clients: Vec<Client> = (0..5).map(|_| r.worker()).collect();
    let mut followers = Vec::new();
    for i in 0..FOLLOWERS {
        let mut client = clients[i % clients.len()].clone();
        let t = tasks[i % tasks.len()];
        followers.push((t, follow(&mut client, t, i % 2 == 0).await.unwrap()));
    }
    let db = postgres().await.connect(&url).await;
    let backends = || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let n = backends().await;
    assert!(
        n <= 6 + 2,
        "{n} backends: at most the pool, the LISTEN session and the leader-election session"
    );
    let metrics = r.metrics().await;
    let open = gauge(&metrics, "taskqueue_log_streams_active{kind=\"follow\"}");
    assert!(open >= FOLLOWERS as f64, "{open}");

    for &t in &tasks {
        send(
            &mut c,
            vec![
                log(t, "stdout", &format!("out {t}")),
                log(t, "stderr", &format!("err {t}")),
            ],
        )
        .await
        .unwrap();
        set_status(&mut c, t, "S").await;
    }
    let results = futures::future::join_all(followers.into_iter().enumerate().map(
        |(i, (t, s))| async move {
            let (kind, prefix) = if i % 2 == 0 {
                ("stdout", "out")
            } else {
                ("stderr", "err")
            };
            let got = collect(s, t, kind, Duration::from_secs(60)).await.unwrap();
            assert_eq!(got, [format!("{prefix} {t}")]);
        },
    ))
    .await;
    assert_eq!(results.len(), FOLLOWERS);
    assert!(backends().await <= 6 + 2);
}

#[tokio::test]
async fn appends_take_the_row_lock_before_the_log_lock() {
    // Status updates lock the task row (FOR UPDATE) and then append a line ("retried as task N"),
    // taking the task's log lock. A log flush must take them in the same order, or the two
    // deadlock (Postgres would abort one after deadlock_timeout and the flush would be retried).
    let r = replica().await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    let mut db = postgres().await.connect(r.database_url()).await;
    let retries = || async {
        gauge(
            &r.metrics().await,
            "taskqueue_db_transaction_retries_total{op=\"log_ingest\"}",
        )
    };
    let retries_before = retries().await;

    let status_update = db.transaction().await.unwrap();
    status_update
        .execute("SELECT 1 FROM task WHERE task_id = $1 FOR UPDATE", &[&t])
        .await
        .unwrap();
    let flush = tokio::spawn({
        let mut c = c.clone();
        async move { send(&mut c, vec![log(t, "stdout", "racing line")]).await }
    });
    let observer = postgres().await.connect(r.database_url()).await;
    wait_until(
        Duration::from_secs(10),
        "the flush to wait for the row",
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
    // The status update now appends its line: it takes the log lock at once.
    status_update
        .execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&taskqueue::db::locks::NS_TASK_LOG, &t],
        )
        .await
        .unwrap();
    status_update.commit().await.unwrap();
    flush.await.unwrap().unwrap();
    assert_eq!(retries().await, retries_before, "the flush deadlocked");
    let got = chunk(&mut c, vec![t], 10, None, None).await.unwrap();
    assert_eq!(got[0].stdout, ["racing line"]);
}

/// The value of a gauge line in Prometheus text (summed if several replicas share the recorder).
fn gauge(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn follow_streams_per_replica_are_bounded() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.max_log_followers = 2;
    let r = spawn_replica(config).await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    let first = follow(&mut c, t, true).await.unwrap();
    let _second = follow(&mut c, t, false).await.unwrap();
    let err = follow(&mut c, t, true).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("--max-log-followers"));
    // A closed stream frees its slot.
    drop(first);
    wait_until(Duration::from_secs(10), "a follow slot to free", || {
        let mut c = c.clone();
        async move { follow(&mut c, t, true).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn followers_survive_a_lost_listen_session() {
    let r = replica().await;
    let mut c = r.worker();
    let t = submit(&mut c).await;
    let mut out = follow(&mut c, t, true).await.unwrap();
    let db = postgres().await.connect(r.database_url()).await;
    let listener = || async {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'taskqueue-notify'",
            &[],
        )
        .await
        .unwrap()
        .map(|row| row.get::<_, i32>(0))
    };
    wait_until(Duration::from_secs(10), "the LISTEN session", || async {
        listener().await.is_some()
    })
    .await;
    let old = listener().await.unwrap();
    db.execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the LISTEN session to reconnect",
        || async { listener().await.is_some_and(|pid| pid != old) },
    )
    .await;
    send(&mut c, vec![log(t, "stdout", "after reconnect")])
        .await
        .unwrap();
    assert_eq!(
        take(&mut out, 1, Duration::from_secs(5)).await,
        ["after reconnect"]
    );
    let metrics = r.metrics().await;
    assert!(gauge(&metrics, "taskqueue_notify_reconnects_total") >= 1.0);
}
