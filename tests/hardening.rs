//! Hardening: the database is never held hostage (filters capped and matched as text, statement
//! timeouts, queries of dropped requests cancelled), Login/ChangePassword throttled (a flood of
//! wrong passwords neither grows memory nor slows a correct login), sessions revoked by a password
//! change, bcrypt hashes upgraded, secret files created 0600.
//!
//! A binary of its own, not a module of `tests/it`: the login flood asserts that this whole
//! process' RSS grows by less than 100 MiB, which the other areas' replicas running beside it in
//! one process would make meaningless.

#[allow(dead_code, unused_imports)] // the harness serves every binary; this one uses a part of it
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    ADMIN_PASSWORD, ADMIN_USER, postgres, replica, spawn_replica, task, test_config, wait_until,
};
use taskqueue::proto as pb;
use taskqueue::proto::task_queue_client::TaskQueueClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

fn list(command_filter: &str) -> pb::ListTasksRequest {
    pb::ListTasksRequest {
        command_filter: Some(command_filter.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn text_filters_are_capped_and_matched_as_plain_text() {
    let r = replica().await;
    let mut admin = r.admin().await;
    for command in ["echo 50%_done", "echo 50xxdone", "ECHO Other"] {
        admin.submit_task(task(command)).await.unwrap();
    }
    let err = admin.list_tasks(list(&"x".repeat(257))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("command_filter too long: 257 bytes"),
        "{}",
        err.message()
    );
    // At the cap is fine.
    admin.list_tasks(list(&"x".repeat(256))).await.unwrap();

    let commands = |tasks: pb::TaskList| {
        let mut c: Vec<String> = tasks.tasks.into_iter().map(|t| t.command).collect();
        c.sort();
        c
    };
    // `%` and `_` are plain characters, not wildcards; the match ignores case.
    let found = admin.list_tasks(list("50%_")).await.unwrap().into_inner();
    assert_eq!(commands(found), ["echo 50%_done"]);
    let found = admin.list_tasks(list("echo")).await.unwrap().into_inner();
    assert_eq!(commands(found).len(), 3);

    // Worker-event class filters and protofilter text values have the same cap.
    let err = admin
        .list_worker_events(pb::WorkerEventFilter {
            class: Some("c".repeat(300)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = admin
        .list_flavors(pb::ListFlavorsRequest {
            filter: format!("flavor~{}", "%".repeat(300)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
}

/// Sessions of the replica's database running a ListTasks query.
async fn running_list_queries(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND state = 'active' AND query LIKE '%ORDER BY t.task_id DESC%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_query_is_cancelled_when_its_client_goes_away() {
    let r = replica().await;
    let mut admin = r.admin().await;
    admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
    let pg = postgres().await;
    let observer = pg.connect(r.database_url()).await;
    // Hold the task table: ListTasks now waits (a slow query that would run until the lock goes).
    let locker = pg.connect(r.database_url()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE task IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let request =
        tokio::spawn(async move { admin.list_tasks(pb::ListTasksRequest::default()).await });
    wait_until(
        Duration::from_secs(10),
        "the ListTasks query runs",
        || async { running_list_queries(&observer).await == 1 },
    )
    .await;
    // The client goes away (its call is dropped: the stream is reset).
    request.abort();
    let started = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the abandoned query is cancelled",
        || async { running_list_queries(&observer).await == 0 },
    )
    .await;
    println!(
        "abandoned query gone after {:?} while the lock was still held",
        started.elapsed()
    );
    let metrics = r.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("taskqueue_db_queries_abandoned_total") && !l.ends_with(" 0")),
        "the abandoned query is counted"
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    // The pool is healthy: no connection was handed out mid-query.
    let mut admin = r.admin().await;
    for _ in 0..20 {
        admin
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_statement_timeout_answers_a_clear_error() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.statement_timeout = Duration::from_millis(300);
    let r = spawn_replica(config).await;
    let mut admin = r.admin().await;
    let locker = postgres().await.connect(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE task IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let err = admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(
        err.message().contains("statement timeout"),
        "{}",
        err.message()
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn change_password_revokes_the_other_sessions() {
    let r = replica().await;
    r.plain_user("frank").await;
    let kept = r.login("frank", "user-secret").await;
    let other = r.login("frank", "user-secret").await;
    let mut by_kept = r.with_token(&kept);
    let mut by_other = r.with_token(&other);
    by_other.list_users(()).await.unwrap();
    by_kept
        .change_password(pb::ChangePasswordRequest {
            username: "frank".into(),
            old_password: "user-secret".into(),
            new_password: "new-secret".into(),
        })
        .await
        .unwrap();
    by_kept.list_users(()).await.unwrap();
    let err = by_other.list_users(()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    r.login("frank", "new-secret").await;
}

async fn stored(db: &tokio_postgres::Client) -> String {
    db.query_one(
        "SELECT password FROM scitq_user WHERE username = $1",
        &[&ADMIN_USER],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_bcrypt_hash_is_upgraded_at_the_next_login() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.admin_hashed_password = Some(bcrypt::hash("legacy-pass", 4).unwrap());
    let r = spawn_replica(config).await;
    let db = postgres().await.connect(&url).await;
    assert!(stored(&db).await.starts_with("$2"));
    r.login(ADMIN_USER, "legacy-pass").await;
    let upgraded = stored(&db).await;
    assert!(upgraded.starts_with("$argon2id$"), "{upgraded}");
    r.login(ADMIN_USER, "legacy-pass").await;
    let err = r
        .anonymous()
        .login(pb::LoginRequest {
            username: ADMIN_USER.into(),
            password: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn secret_files_are_created_0600() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.worker_token = None;
    let token_path = config.worker_token_path();
    let r = spawn_replica(config.clone()).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_path), 0o600);
    r.stop().await.unwrap();

    let (cert, key) =
        taskqueue::server::tls::self_signed(&config.data_dir, "127.0.0.1:0".parse().unwrap(), None)
            .unwrap();
    assert_eq!(mode(&key), 0o600);
    assert!(
        std::fs::read_to_string(cert)
            .unwrap()
            .contains("CERTIFICATE")
    );
}

/// A channel whose connections leave from `source` (another loopback address), as from another host.
async fn channel_from(source: IpAddr, server: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(server).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .unwrap()
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb << 10)
        .unwrap_or(0)
}

/// Wrong-password Logins at full speed for 20 s from many tasks on another address: memory stays
/// flat, the flood is refused cheaply, and a correct Login meanwhile answers within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_neither_grows_memory_nor_delays_a_correct_login() {
    const FLOOD: Duration = Duration::from_secs(20);
    let r = replica().await;
    r.plain_user("victim").await;
    let attacker = channel_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), r.addr).await;
    let baseline = rss();
    let until = Instant::now() + FLOOD;
    let counts = Arc::new([(); 4].map(|_| AtomicU64::new(0)));
    let mut flood = Vec::new();
    for n in 0..32u32 {
        let channel = attacker.clone();
        let counts = counts.clone();
        flood.push(tokio::spawn(async move {
            let mut client = TaskQueueClient::new(channel);
            let mut i = 0u64;
            while Instant::now() < until {
                i += 1;
                let username = if n % 2 == 0 {
                    "victim".to_string()
                } else {
                    format!("nobody-{n}-{i}")
                };
                let slot = match client
                    .login(pb::LoginRequest {
                        username,
                        password: format!("wrong-{i}"),
                    })
                    .await
                {
                    Ok(_) => 0,
                    Err(s) if s.code() == Code::Unauthenticated => 1,
                    Err(s) if s.code() == Code::ResourceExhausted => 2,
                    Err(_) => 3,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    let mut peak = baseline;
    let mut logins = 0;
    while Instant::now() + Duration::from_secs(2) < until {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            r.anonymous().login(pb::LoginRequest {
                username: ADMIN_USER.into(),
                password: ADMIN_PASSWORD.into(),
            }),
        )
        .await
        .expect("a correct login answers during the flood");
        answer.expect("a correct login succeeds during the flood");
        slowest = slowest.max(started.elapsed());
        peak = peak.max(rss());
        println!(
            "sample {logins}: login {:?}, RSS {} MiB",
            started.elapsed(),
            rss() >> 20
        );
        logins += 1;
    }
    for f in flood {
        f.await.unwrap();
    }
    peak = peak.max(rss());
    let [ok, wrong, throttled, other] = [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    println!(
        "flood: {wrong} wrong-password answers, {throttled} throttled, {ok} successes, {other} other; \
         {logins} correct logins, slowest {slowest:?}; RSS {} MiB → peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert_eq!(ok, 0);
    assert_eq!(
        other, 0,
        "every flood attempt is refused as wrong or throttled"
    );
    assert!(
        throttled > wrong,
        "the flood is mostly refused before hashing"
    );
    assert!(logins >= 5);
    assert!(
        slowest < Duration::from_secs(1),
        "a correct login took {slowest:?}"
    );
    let grown = peak.saturating_sub(baseline);
    assert!(grown < 100 << 20, "RSS grew by {} MiB", grown >> 20);
}
