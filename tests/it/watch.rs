//! `db::watch` and schema/0015_watch.sql: the task triggers publish web events (`tq_ws`) and
//! task-end wake-ups (`task_log`) only while a replica watches the channel, and a watcher that
//! joins misses nothing: `Watch::enter` returns only after the transactions running when the
//! watch went live have ended.

use std::time::Duration;

use futures::StreamExt;
use taskqueue::db::Db;
use taskqueue::db::watch::Watch;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::common::postgres;

/// A connection LISTENing on both channels, and the notifications it receives: (channel, payload).
async fn listener(
    config: &tokio_postgres::Config,
) -> (tokio_postgres::Client, UnboundedReceiver<(String, String)>) {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute("LISTEN tq_ws; LISTEN task_log;")
        .await
        .unwrap();
    (client, rx)
}

/// Every notification up to a sentinel sent now (notifications arrive in commit order), other
/// listeners' sentinels left out.
async fn received(
    db: &tokio_postgres::Client,
    rx: &mut UnboundedReceiver<(String, String)>,
) -> Vec<(String, String)> {
    let sentinel = format!("sentinel {}", rand::random::<u64>());
    db.batch_execute(&format!("NOTIFY tq_ws, '{sentinel}'"))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the sentinel arrives")
            .unwrap();
        if m.1 == sentinel {
            return got;
        }
        // Another listener's sentinel.
        if !m.1.starts_with("sentinel ") {
            got.push(m);
        }
    }
}

/// A task submitted, then accepted, run and finished, in three transactions.
async fn task_life(db: &tokio_postgres::Client) -> i32 {
    let id: i32 = db
        .query_one(
            "INSERT INTO task (command, container, status) VALUES ('true', 'alpine', 'P') RETURNING task_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for status in ["C", "R", "S"] {
        db.execute(
            "UPDATE task SET status = $2 WHERE task_id = $1",
            &[&id, &status],
        )
        .await
        .unwrap();
    }
    id
}

/// Appends one log line to `task_id` (db::logs), and counts the `task_log` wake-ups for it that
/// arrive on a listener of its own.
async fn log_lines(pool: &Db, task_id: i32) -> usize {
    use scoped_futures::ScopedFutureExt;
    let (listening, mut rx) = listener(&pool.session_config("t")).await;
    pool.tx(taskqueue::db::Op::Logs, |tx| {
        async move {
            taskqueue::db::logs::append_lines(
                tx,
                task_id,
                taskqueue::domain::logs::LogStream::Stdout,
                &["a line"],
            )
            .await
        }
        .scope_boxed()
    })
    .await
    .unwrap();
    received(&listening, &mut rx)
        .await
        .iter()
        .filter(|m| *m == &("task_log".to_string(), task_id.to_string()))
        .count()
}

#[tokio::test]
async fn task_events_are_published_only_while_somebody_watches() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = pg.connect(&url).await;
    let (_listening, mut rx) = listener(&url.parse().unwrap()).await;

    // Nobody watches: nothing is built or sent.
    task_life(&db).await;
    assert_eq!(received(&db, &mut rx).await, vec![], "nobody watches");

    // A row that lapsed counts for nothing.
    db.batch_execute(
        "INSERT INTO tq_watch (replica, channel, until) VALUES
             ('gone', 'tq_ws', now() - interval '1 second'),
             ('gone', 'task_log', now() - interval '1 second')",
    )
    .await
    .unwrap();
    task_life(&db).await;
    assert_eq!(received(&db, &mut rx).await, vec![], "lapsed rows");

    // A web socket's watch: web events, no log wake-ups.
    let stop = CancellationToken::new();
    let pool = Db::connect(&url, 4).unwrap();
    let ws = Watch::start(pool.clone(), "tq_ws", stop.clone());
    let log = Watch::start(pool.clone(), "task_log", stop.clone());
    let socket = ws.enter().await.unwrap();
    let id = task_life(&db).await;
    let got = received(&db, &mut rx).await;
    assert!(got.iter().all(|(c, _)| c == "tq_ws"), "{got:?}");
    let statuses: Vec<String> = got
        .iter()
        .flat_map(|(_, p)| serde_json::from_str::<Vec<serde_json::Value>>(p).unwrap())
        .filter(|e| e["type"] == "task" && e["id"] == id)
        .map(|e| e["payload"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["P", "C", "R", "S"], "{got:?}");

    // A follower's watch too: a new log batch and the task's end wake its followers.
    assert_eq!(
        log_lines(&pool, id).await,
        0,
        "nobody follows: no log wake-up"
    );
    let follower = log.enter().await.unwrap();
    let id = task_life(&db).await;
    let got = received(&db, &mut rx).await;
    assert!(
        got.contains(&("task_log".to_string(), id.to_string())),
        "{got:?}"
    );
    assert_eq!(
        log_lines(&pool, id).await,
        1,
        "a follower: the batch wakes it"
    );
    assert_eq!(ws.holders(), 1);
    drop((socket, follower));
    assert_eq!(ws.holders() + log.holders(), 0);
    stop.cancel();
}

/// A change whose trigger ran before the watch went live, in a transaction still open: `enter`
/// waits for that transaction to end, so the watcher's first read shows the change.
#[tokio::test]
async fn entering_waits_for_the_transactions_that_ran_unwatched() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = pg.connect(&url).await;
    let id: i32 = db
        .query_one(
            "INSERT INTO task (command, container, status) VALUES ('true', 'alpine', 'P') RETURNING task_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let open = pg.connect(&url).await;
    open.batch_execute(&format!(
        "BEGIN; UPDATE task SET status = 'C' WHERE task_id = {id}"
    ))
    .await
    .unwrap();

    let stop = CancellationToken::new();
    let watch = Watch::start(Db::connect(&url, 4).unwrap(), "tq_ws", stop.clone());
    let entering = tokio::spawn({
        let watch = watch.clone();
        async move { watch.enter().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !entering.is_finished(),
        "enter returned while a transaction that ran unwatched was open"
    );
    open.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), entering)
        .await
        .expect("enter returns once it committed")
        .unwrap()
        .unwrap();
    let status: String = db
        .query_one("SELECT status FROM task WHERE task_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "C", "the first read after enter shows the change");

    // Live now: entering again waits for nothing, even with a transaction open.
    open.batch_execute(&format!(
        "BEGIN; UPDATE task SET status = 'R' WHERE task_id = {id}"
    ))
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(1), watch.enter())
        .await
        .expect("a live watch is entered at once")
        .unwrap();
    open.batch_execute("ROLLBACK").await.unwrap();
    stop.cancel();
}
