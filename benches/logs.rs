//! End-to-end benchmark of task logs on real PostgreSQL (the test harness' private server, fsync
//! off) with two in-process replicas A and B on one database, through the generated gRPC client:
//! - ingest: log lines/s stored through SendTaskLogs, one stream and many concurrent streams;
//! - follow latency, write on A → read on B: from a line sent on an open worker stream (includes
//!   the 100 ms batching) and from a committed one-shot stream (Ack) to the follower on B;
//! - a big log (1 GiB by default): written through one stream, then paged with GetLogsChunk at its
//!   end, middle and start, and replayed by a follower on B — with the process' peak memory;
//! - many followers: N follow streams open on B (database connections used, memory), one line
//!   written to each followed task, time until every follower has it, and until all end.
//!
//! Run: `cargo bench --bench logs`. Environment: `LOGS_BENCH_WRITERS` (16), `LOGS_BENCH_LINES`
//! (lines per writer, 20000), `LOGS_BENCH_BIG_MIB` (1024, 0 to skip), `LOGS_BENCH_FOLLOWERS`
//! (10000). Under `cargo test` it runs once at a small size (2 writers × 500 lines, 1 MiB, 100
//! followers).

#[allow(dead_code, unused_imports)] // the tests' harness; the bench uses a part of it
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Replica, postgres, spawn_replica, test_config};
use taskqueue::client::Client;
use taskqueue::proto as pb;
use tokio_stream::wrappers::ReceiverStream;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn log(task_id: i32, text: String) -> pb::TaskLog {
    pb::TaskLog {
        task_id,
        log_type: "stdout".into(),
        log_text: text,
    }
}

async fn submit(client: &mut Client) -> i32 {
    client
        .submit_task(common::task("bench"))
        .await
        .unwrap()
        .into_inner()
        .task_id
}

/// p50 / p90 / p99 / max of durations, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

/// Resident memory of this process (both replicas and the clients), or its peak (`VmHWM`).
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mib() -> f64 {
    memory_mib("VmRSS:")
}

async fn backends(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// `writers` concurrent SendTaskLogs streams of `lines` lines (~100 bytes) each, to A.
async fn ingest(a: &Replica, db: &tokio_postgres::Client, writers: usize, lines: usize) {
    let mut client = a.worker();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        tasks.push(submit(&mut client).await);
    }
    let stored_before: i64 = db
        .query_one(
            "SELECT COALESCE(sum(line_count), 0)::int8 FROM task_log",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let start = Instant::now();
    let mut handles = Vec::new();
    for (w, t) in tasks.into_iter().enumerate() {
        let mut client = a.worker();
        handles.push(tokio::spawn(async move {
            let messages = (0..lines).map(move |i| {
                log(
                    t,
                    format!("writer {w:3} line {i:8} the quick brown fox jumps over the lazy dog 0123456789 abcdefghij"),
                )
            });
            client
                .send_task_logs(tokio_stream::iter(messages))
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = start.elapsed();
    let stored: i64 = db
        .query_one(
            "SELECT COALESCE(sum(line_count), 0)::int8 FROM task_log",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let total = writers * lines;
    assert_eq!(
        (stored - stored_before) as usize,
        total,
        "every line stored"
    );
    println!(
        "ingest: {writers} stream(s) x {lines} lines (~100 B) in {:.2} s: {:.0} lines/s, {:.1} MB/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        total as f64 * 101.0 / elapsed.as_secs_f64() / 1e6
    );
}

/// Write on A, read on B: from an open worker stream, and from a committed one-shot stream.
async fn latency(a: &Replica, b: &Replica, samples: usize) {
    let mut on_a = a.worker();
    let t = submit(&mut on_a).await;
    let mut follower = b
        .worker()
        .stream_task_logs_output(pb::TaskId { task_id: t })
        .await
        .unwrap()
        .into_inner();

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sender = tokio::spawn({
        let mut on_a = on_a.clone();
        async move { on_a.send_task_logs(ReceiverStream::new(rx)).await }
    });
    let mut open_stream = Vec::new();
    for i in 0..samples {
        let start = Instant::now();
        tx.send(log(t, format!("open {i}"))).await.unwrap();
        let m = follower.message().await.unwrap().unwrap();
        assert_eq!(m.log_text, format!("open {i}"));
        open_stream.push(start.elapsed());
    }
    drop(tx);
    sender.await.unwrap().unwrap();

    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let start = Instant::now();
        on_a.send_task_logs(tokio_stream::iter([log(t, format!("one-shot {i}"))]))
            .await
            .unwrap();
        let acked = Instant::now();
        let m = follower.message().await.unwrap().unwrap();
        assert_eq!(m.log_text, format!("one-shot {i}"));
        from_send.push(start.elapsed());
        from_ack.push(acked.elapsed());
    }
    println!(
        "follow latency A -> B, line sent on an open stream -> read on B (includes the 100 ms batching): {}",
        percentiles(open_stream)
    );
    println!(
        "follow latency A -> B, one-shot stream sent -> read on B: {}",
        percentiles(from_send)
    );
    println!(
        "follow latency A -> B, commit (Ack) -> read on B: {}",
        percentiles(from_ack)
    );
}

/// A log of `mib` MiB in 1 KiB lines through one stream to A; paged and replayed on B.
async fn big_log(a: &Replica, b: &Replica, mib: usize) {
    let mut on_a = a.worker();
    let t = submit(&mut on_a).await;
    let lines = mib * 1024;
    let peak_before = memory_mib("VmHWM:");
    let start = Instant::now();
    let messages = (0..lines).map(move |i| log(t, format!("{i:10} {}", "x".repeat(1012))));
    on_a.send_task_logs(tokio_stream::iter(messages))
        .await
        .unwrap();
    let written = start.elapsed();
    println!(
        "big log: {mib} MiB ({lines} lines of 1 KiB) through one stream in {:.1} s: {:.0} lines/s, {:.0} MB/s; peak RSS {:.0} MiB -> {:.0} MiB",
        written.as_secs_f64(),
        lines as f64 / written.as_secs_f64(),
        (lines * 1024) as f64 / written.as_secs_f64() / 1e6,
        peak_before,
        memory_mib("VmHWM:")
    );
    let mut on_b = b.worker();
    for (name, skip) in [("end", 0), ("middle", lines / 2), ("start", lines - 100)] {
        let start = Instant::now();
        let chunk = on_b
            .get_logs_chunk(pb::GetLogsRequest {
                task_ids: vec![t],
                chunk_size: 100,
                skip_from_end: Some(skip as i32),
                log_type: Some("stdout".into()),
            })
            .await
            .unwrap()
            .into_inner();
        let first = lines - skip - 100;
        assert_eq!(chunk.logs[0].stdout.len(), 100);
        assert!(chunk.logs[0].stdout[0].starts_with(&format!("{first:10} ")));
        println!(
            "big log: GetLogsChunk of 100 lines at the {name}: {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    common::set_status(&mut on_a, t, "S").await;
    let start = Instant::now();
    let mut follower = on_b
        .stream_task_logs_output(pb::TaskId { task_id: t })
        .await
        .unwrap()
        .into_inner();
    let (mut count, mut bytes) = (0usize, 0usize);
    while let Some(m) = follower.message().await.unwrap() {
        count += 1;
        bytes += m.log_text.len() + 1;
    }
    assert_eq!(count, lines);
    let replay = start.elapsed();
    println!(
        "big log: replayed on B to its end in {:.1} s: {:.0} lines/s, {:.0} MB/s; peak RSS {:.0} MiB",
        replay.as_secs_f64(),
        count as f64 / replay.as_secs_f64(),
        bytes as f64 / replay.as_secs_f64() / 1e6,
        memory_mib("VmHWM:")
    );
}

/// `n` follow streams on B over 100 tasks; one line written to each task on A.
async fn followers(a: &Replica, b: &Replica, db: &tokio_postgres::Client, n: usize) {
    let mut on_a = a.worker();
    let task_count = (n / 100).max(1);
    let mut tasks = Vec::new();
    for _ in 0..task_count {
        tasks.push(submit(&mut on_a).await);
    }
    let rss_before = rss_mib();
    let connections: Vec<Client> = (0..n.div_ceil(500)).map(|_| b.worker()).collect();
    let start = Instant::now();
    let mut opens = Vec::new();
    for i in 0..n {
        let mut client = connections[i % connections.len()].clone();
        let t = tasks[i % task_count];
        opens.push(tokio::spawn(async move {
            let stream = client
                .stream_task_logs_output(pb::TaskId { task_id: t })
                .await
                .unwrap()
                .into_inner();
            (t, stream)
        }));
    }
    let mut streams = Vec::new();
    for o in opens {
        streams.push(o.await.unwrap());
    }
    let opened = start.elapsed();
    let used = backends(db).await;
    println!(
        "followers: {n} streams on B opened in {:.2} s; database connections of both replicas: {used} \
         (pools of {} + one LISTEN session each); process RSS {:.0} MiB -> {:.0} MiB",
        opened.as_secs_f64(),
        b.config.db_pool_size,
        rss_before,
        rss_mib()
    );

    let written = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (t, mut stream) in streams {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let m = stream.message().await.unwrap().unwrap();
            assert_eq!(m.log_text, format!("hello {t}"));
            let received = written.elapsed();
            // Then wait for the end of the stream.
            while stream.message().await.unwrap().is_some() {}
            let _ = done_tx.send((received, written.elapsed()));
        });
    }
    drop(done_tx);
    for &t in &tasks {
        on_a.send_task_logs(tokio_stream::iter([log(t, format!("hello {t}"))]))
            .await
            .unwrap();
    }
    let all_written = written.elapsed();
    for &t in &tasks {
        common::set_status(&mut on_a, t, "S").await;
    }
    let mut received = Vec::new();
    let mut ended = Duration::ZERO;
    while let Some((r, e)) = done_rx.recv().await {
        received.push(r);
        ended = ended.max(e);
    }
    assert_eq!(received.len(), n);
    println!(
        "followers: one line written to each of {task_count} tasks ({:.0} ms to write them all); \
         delivered to all {n} followers: {}; all streams ended {:.2} s after the first write",
        all_written.as_secs_f64() * 1e3,
        percentiles(received),
        ended.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` (no --bench) every phase runs once, small,
    // so the suite checks the benchmark still works without paying for its full size.
    let full = std::env::args().any(|a| a == "--bench");
    let scale = |n: usize, small: usize| if full { n } else { small };
    let writers = env("LOGS_BENCH_WRITERS", scale(16, 2));
    let lines = env("LOGS_BENCH_LINES", scale(20_000, 500));
    let follower_count = env("LOGS_BENCH_FOLLOWERS", scale(10_000, 100));
    let big_mib = env("LOGS_BENCH_BIG_MIB", scale(1024, 1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = postgres().await.fresh_db().await;
        let replica = |url: String| async move {
            let mut config = test_config(&url);
            config.db_pool_size = taskqueue::config::defaults::DB_POOL_SIZE;
            spawn_replica(config).await
        };
        let a = replica(url.clone()).await;
        let b = replica(url.clone()).await;
        let db = postgres().await.connect(&url).await;
        ingest(&a, &db, 1, lines).await;
        ingest(&a, &db, writers, lines).await;
        latency(&a, &b, 200).await;
        if big_mib > 0 {
            big_log(&a, &b, big_mib).await;
        }
        followers(&a, &b, &db, follower_count).await;
    });
}
