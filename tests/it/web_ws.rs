//! The WebSocket `/ws` (docs/architecture.md#web-surface, issue 15): authentication of the upgrade,
//! ping/pong, events made through one replica's gRPC reaching a socket of another replica on the
//! same database, subscriptions, who sees what, revocation, the inbound size limit, the
//! slow-reader rule, and events over 8 kB sent by reference.
//!
//! Replica A is a full replica (gRPC). Replica B's web side is an `AppState` of its own on the
//! same database (its own pool, LISTEN session and fan-out) serving `web::ws::routes(hub)` on a
//! listener bound here.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use taskqueue::api::state::AppState;
use taskqueue::proto as pb;
use taskqueue::web::ws::WsHub;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type RawSocket = WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(15);

/// Replica B's web side on `replica`'s database; returns its address and its WebSocket hub.
async fn web_side(replica: &Replica) -> (SocketAddr, WsHub) {
    let config = test_config(replica.database_url());
    let db = taskqueue::db::Db::connect(replica.database_url(), 5).unwrap();
    let jwt = taskqueue::server::jwt_key(&db, &config).await.unwrap();
    let declared = Arc::new(taskqueue::server::declared_providers(&config));
    let state = Arc::new(AppState::new(
        db,
        Arc::new(config),
        declared,
        WORKER_TOKEN.to_string(),
        jwt,
        replica.addr,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = WsHub::start(
        state.db.clone(),
        state.logs.notifier(),
        state.logs.ws_watch().clone(),
        state.auth.clone(),
        state.draining.clone(),
    );
    let app = taskqueue::web::ws::routes(hub.clone()).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = state.clone();
    wait_until(WAIT, "replica B listens for events", move || {
        let s = s.clone();
        async move { s.logs.is_listening() }
    })
    .await;
    (addr, hub)
}

fn request(addr: SocketAddr, token: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(token) = token {
        req.headers_mut().insert(
            "cookie",
            format!("theme=dark; session_token={token}")
                .parse()
                .unwrap(),
        );
    }
    req
}

async fn connect(addr: SocketAddr, token: &str) -> Socket {
    let (ws, response) = tokio_tungstenite::connect_async(request(addr, Some(token)))
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// The HTTP status an upgrade attempt is refused with.
async fn refused_status(req: tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// The next text message as JSON (control frames skipped); panics on close or timeout.
async fn next_json<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a readable message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads events until one of `kind`/`action` matches `pred`; returns it and the events before.
async fn wait_event(
    ws: &mut Socket,
    kind: &str,
    action: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let e = next_json(ws).await;
        if e["type"] == kind && e["action"] == action && pred(&e) {
            return (e, before);
        }
        before.push(e);
    }
}

/// Sends a ping and waits for the pong: every message sent before it has been applied.
async fn sync(ws: &mut Socket) -> Vec<Value> {
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let mut before = Vec::new();
    loop {
        let e = next_json(ws).await;
        if e == json!({"type": "pong"}) {
            return before;
        }
        before.push(e);
    }
}

/// Waits until the server closes `ws`; returns the close code if a close frame came.
async fn closed<S>(ws: &mut WebSocketStream<S>) -> Option<CloseCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

async fn user_token(a: &Replica, name: &str) -> String {
    a.admin()
        .await
        .create_user(pb::CreateUserRequest {
            username: name.into(),
            password: "user-secret".into(),
            email: String::new(),
            is_admin: false,
        })
        .await
        .unwrap();
    a.login(name, "user-secret").await
}

async fn admin_token(a: &Replica) -> String {
    a.login(ADMIN_USER, ADMIN_PASSWORD).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upgrade_needs_a_user_session() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    assert_eq!(refused_status(request(web, None)).await, 401);
    assert_eq!(refused_status(request(web, Some("forged"))).await, 401);
    let mut worker_token = request(web, None);
    worker_token.headers_mut().insert(
        "authorization",
        format!("Bearer {WORKER_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        refused_status(worker_token).await,
        401,
        "not a user session"
    );
    // A bearer token works as well as the cookie.
    let token = admin_token(&a).await;
    let mut bearer = request(web, None);
    bearer
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(bearer).await.unwrap();
    assert!(sync(&mut ws).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_made_on_one_replica_reach_a_socket_on_another() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let mut ws = connect(web, &admin_token(&a).await).await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));

    let mut admin = a.admin().await;
    let task_id = submit(&mut admin, task("echo across")).await;
    let (created, _) = wait_event(&mut ws, "task", "created", |e| e["id"] == task_id).await;
    assert_eq!(created["payload"]["taskId"], task_id);
    assert_eq!(created["payload"]["command"], "echo across");
    assert_eq!(created["payload"]["status"], "P");
    assert!(created.get("audience").is_none() && created.get("owner").is_none());

    let mut worker = a.worker();
    let worker_id = register_worker(&mut worker, "ws-w1", 1, 0, None).await;
    let (w, _) = wait_event(&mut ws, "worker", "created", |e| e["id"] == worker_id).await;
    assert_eq!(w["payload"]["worker"]["name"], "ws-w1");

    let assigned = ping(&mut worker, worker_id).await;
    assert_eq!(assigned.tasks.len(), 1);
    let (status, _) = wait_event(&mut ws, "task", "status", |e| e["id"] == task_id).await;
    assert_eq!(
        status["payload"],
        json!({"taskId": task_id, "workerId": worker_id, "oldStatus": "P", "status": "A"})
    );
    set_status(&mut worker, task_id, "C").await;
    let (status, _) = wait_event(&mut ws, "task", "status", |e| e["id"] == task_id).await;
    assert_eq!(status["payload"]["oldStatus"], "A");
    assert_eq!(status["payload"]["status"], "C");

    // A failed submission (unknown prerequisite: rolled back) sends nothing.
    let mut bad = task("never stored");
    bad.dependency = vec![999_999];
    assert!(admin.submit_task(bad).await.is_err());
    let marker = submit(&mut admin, task("marker")).await;
    let (_, before) = wait_event(&mut ws, "task", "created", |e| e["id"] == marker).await;
    assert!(
        before.is_empty(),
        "nothing from the rolled-back change: {before:?}"
    );

    // The worker finishes its task and takes the marker; then it is full: idle pings publish
    // nothing.
    set_status(&mut worker, task_id, "S").await;
    wait_event(&mut ws, "task", "status", |e| e["payload"]["status"] == "S").await;
    assert_eq!(ping(&mut worker, worker_id).await.tasks.len(), 1);
    wait_event(&mut ws, "task", "status", |e| e["id"] == marker).await;
    for _ in 0..3 {
        ping(&mut worker, worker_id).await;
    }
    let after = sync(&mut ws).await;
    assert!(after.is_empty(), "idle pings sent events: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_filter_by_type_and_id() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let mut ws = connect(web, &admin_token(&a).await).await;
    let mut worker = a.worker();
    let w1 = register_worker(&mut worker, "sub-w1", 1, 0, None).await;
    wait_event(&mut ws, "worker", "created", |e| e["id"] == w1).await;

    ws.send(Message::text(
        json!({"type": "subscribe", "event": "worker", "ids": [w1]}).to_string(),
    ))
    .await
    .unwrap();
    sync(&mut ws).await;
    let mut admin = a.admin().await;
    submit(&mut admin, task("not subscribed")).await;
    let w2 = register_worker(&mut worker, "sub-w2", 1, 0, None).await;
    worker
        .update_worker_status(pb::WorkerStatus {
            worker_id: w1,
            status: "P".into(),
        })
        .await
        .unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["action"].as_str(), e["id"].as_i64()),
        (Some("worker"), Some("status"), Some(i64::from(w1))),
        "only worker {w1}'s events: {e}"
    );
    assert_eq!(e["payload"]["status"], "P");

    // Another type with all its ids.
    ws.send(Message::text(r#"{"type":"subscribe","event":"task"}"#))
        .await
        .unwrap();
    sync(&mut ws).await;
    let t = submit(&mut admin, task("subscribed now")).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_i64()),
        (Some("task"), Some(i64::from(t)))
    );

    // Unsubscribing everything gives everything back.
    ws.send(Message::text(r#"{"type":"unsubscribe","event":"worker"}"#))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"unsubscribe","event":"task"}"#))
        .await
        .unwrap();
    sync(&mut ws).await;
    let w3 = register_worker(&mut worker, "sub-w3", 1, 0, None).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_i64()),
        (Some("worker"), Some(i64::from(w3)))
    );
    assert_ne!(w2, w3);

    // A malformed message is answered with an error, the socket stays.
    ws.send(Message::text(r#"{"type":"shout"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "error");
    assert!(sync(&mut ws).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_see_only_their_own_tasks() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let alice = user_token(&a, "alice").await;
    let bob = user_token(&a, "bob").await;
    let mut ws_alice = connect(web, &alice).await;
    let mut ws_bob = connect(web, &bob).await;
    let mut ws_admin = connect(web, &admin_token(&a).await).await;

    let mut as_alice = a.with_token(&alice);
    let (wf, step) = workflow_with_step(&mut as_alice, "alice-wf", "s1").await;
    let mut req = task("alice's");
    req.step_id = Some(step);
    let t = submit(&mut as_alice, req).await;
    // Everyone sees the fleet: a worker is the marker that bob saw nothing before it.
    let w = register_worker(&mut a.worker(), "seen-by-all", 1, 0, None).await;

    let (_, before) = wait_event(&mut ws_bob, "worker", "created", |e| e["id"] == w).await;
    assert!(before.is_empty(), "bob saw alice's objects: {before:?}");
    for ws in [&mut ws_alice, &mut ws_admin] {
        let (_, before) = wait_event(ws, "worker", "created", |e| e["id"] == w).await;
        let seen: Vec<(String, String)> = before
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for expected in [
            ("workflow", "created"),
            ("step", "created"),
            ("task", "created"),
            ("step-stats", "delta"),
        ] {
            assert!(
                seen.iter()
                    .any(|(k, a)| (k.as_str(), a.as_str()) == expected),
                "{expected:?} missing from {seen:?}"
            );
        }
        let step_created = before.iter().find(|e| e["type"] == "step").unwrap();
        assert_eq!(step_created["id"], wf, "step events carry the workflow id");
        let task_created = before.iter().find(|e| e["type"] == "task").unwrap();
        assert_eq!(task_created["id"], t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_closes_the_socket() {
    let a = replica().await;
    let (web, b) = web_side(&a).await;
    let alice = user_token(&a, "alice").await;
    let mut ws = connect(web, &alice).await;
    let mut other = connect(web, &admin_token(&a).await).await;
    assert!(sync(&mut ws).await.is_empty());
    a.with_token(&alice)
        .logout(pb::Token {
            token: alice.clone(),
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Policy));
    assert!(
        started.elapsed() < taskqueue::web::ws::SESSION_RECHECK,
        "closed by the revocation, not the periodic check"
    );
    assert!(sync(&mut other).await.is_empty(), "the other socket stays");
    wait_until(WAIT, "the closed socket is unregistered", || {
        let b = b.clone();
        async move { b.sockets() == 1 }
    })
    .await;
    assert_eq!(refused_status(request(web, Some(&alice))).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversize_message_closes_the_socket() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let token = admin_token(&a).await;
    let mut ws = connect(web, &token).await;
    // Exactly the limit is accepted (and answered: it is not a client message).
    let mut at_limit = r#"{"type":"ping","pad":""#.to_string();
    at_limit.push_str(&" ".repeat(taskqueue::web::ws::MAX_INBOUND - at_limit.len() - 2));
    at_limit.push_str("\"}");
    assert_eq!(at_limit.len(), taskqueue::web::ws::MAX_INBOUND);
    ws.send(Message::text(at_limit)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    let over = "x".repeat(taskqueue::web::ws::MAX_INBOUND + 1);
    let _ = ws.send(Message::text(over)).await;
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Size));
    // The server is fine.
    let mut again = connect(web, &token).await;
    assert!(sync(&mut again).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_is_disconnected_and_the_others_keep_receiving() {
    let a = replica().await;
    let (web, b) = web_side(&a).await;
    let token = admin_token(&a).await;
    // The slow reader never reads, through a small receive buffer (so its backlog stays in
    // the server's 256-message buffer instead of the kernel's).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(web).await.unwrap();
    let (mut slow, _): (RawSocket, _) =
        tokio_tungstenite::client_async(request(web, Some(&token)), stream)
            .await
            .unwrap();
    let mut fast = connect(web, &token).await;
    assert!(sync(&mut fast).await.is_empty());

    const FLOOD: usize = 3000;
    let pg = postgres().await.connect(a.database_url()).await;
    pg.execute(
        "INSERT INTO task (command, container, status)
         SELECT 'flood ' || g || ' ' || repeat('x', 3000), 'alpine', 'P' FROM generate_series(1, $1) g",
        &[&(FLOOD as i32)],
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < FLOOD {
            let e = next_json(&mut fast).await;
            if e["type"] == "task" && e["action"] == "created" {
                n += 1;
            }
        }
        fast
    });
    let mut fast = reader.await.unwrap();
    wait_until(WAIT, "the slow reader is dropped", || {
        let b = b.clone();
        async move { b.sockets() == 1 }
    })
    .await;
    assert!(sync(&mut fast).await.is_empty(), "the fast reader stays");
    // What the slow reader gets: what was buffered before, then the end — never the whole flood.
    let mut got = 0;
    loop {
        match tokio::time::timeout(WAIT, slow.next()).await.expect("ends") {
            Some(Ok(Message::Text(_))) => got += 1,
            Some(Ok(Message::Close(frame))) => {
                if let Some(f) = frame {
                    assert_eq!(f.code, CloseCode::Policy);
                }
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(got < FLOOD, "the slow reader got all {got} events");
    let metrics = a.metrics().await;
    let _ = metrics; // replica A serves no sockets; B's counters are in this process' recorder.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_over_8_kb_arrives_by_reference() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let mut ws = connect(web, &admin_token(&a).await).await;
    let command = format!("echo {}", "y".repeat(9000));
    let t = submit(&mut a.admin().await, task(&command)).await;
    let (created, _) = wait_event(&mut ws, "task", "created", |e| e["id"] == t).await;
    assert_eq!(created["payload"]["command"], command.as_str());
    let pg = postgres().await.connect(a.database_url()).await;
    let stored: i64 = pg
        .query_one("SELECT count(*) FROM ws_event", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "stored, notified by reference");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_events_reach_admins_only_and_job_events_everyone() {
    let a = replica().await;
    let (web, _b) = web_side(&a).await;
    let alice = user_token(&a, "alice").await;
    let mut ws_alice = connect(web, &alice).await;
    let mut ws_admin = connect(web, &admin_token(&a).await).await;
    user_token(&a, "carol").await;
    let pg = postgres().await.connect(a.database_url()).await;
    let job: i32 = pg
        .query_one(
            "INSERT INTO job (action, status) VALUES ('C', 'S') RETURNING job_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let (created, _) = wait_event(&mut ws_admin, "user", "created", |_| true).await;
    assert_eq!(created["payload"]["username"], "carol");
    assert!(
        !created.to_string().contains("argon2"),
        "no password hash: {created}"
    );
    wait_event(&mut ws_admin, "job", "created", |e| e["id"] == job).await;
    let (_, before) = wait_event(&mut ws_alice, "job", "created", |e| e["id"] == job).await;
    assert!(
        before.iter().all(|e| e["type"] != "user"),
        "alice saw user events: {before:?}"
    );
}

/// Measurement, not a check: what the event triggers cost a status change, per row, in one
/// statement over many rows (a batch of claims) and in one statement per row (status updates).
/// `cargo test --test it web_ws::trigger_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn trigger_cost() {
    let url = postgres().await.fresh_db().await;
    let pg = postgres().await.connect(&url).await;
    // A replica always listens (and reads at once).
    let listener = postgres().await.connect(&url).await;
    listener.batch_execute("LISTEN tq_ws").await.unwrap();
    // Somebody watches (db::watch): the triggers publish.
    pg.batch_execute(
        "INSERT INTO tq_watch (replica, channel, until) VALUES ('measure', 'tq_ws', now() + interval '1 hour')",
    )
    .await
    .unwrap();
    pg.batch_execute(
        "INSERT INTO workflow (workflow_name) VALUES ('bench');
         INSERT INTO step (step_name, workflow_id) SELECT 's', workflow_id FROM workflow;",
    )
    .await
    .unwrap();
    const ROWS: i32 = 20_000;
    const SINGLE: i32 = 2_000;
    for mode in [
        "no triggers",
        "off (kill switch)",
        "on",
        "no triggers",
        "off (kill switch)",
        "on",
    ] {
        pg.batch_execute(
            "DELETE FROM task; ALTER TABLE task ENABLE TRIGGER USER; RESET taskqueue.ws_events;",
        )
        .await
        .unwrap();
        match mode {
            "off (kill switch)" => pg.batch_execute("SET taskqueue.ws_events = 'off'").await,
            "no triggers" => {
                pg.batch_execute(
                    "ALTER TABLE task DISABLE TRIGGER task_ws_update;
                     ALTER TABLE task DISABLE TRIGGER task_ws_insert;",
                )
                .await
            }
            _ => Ok(()),
        }
        .unwrap();
        let t = std::time::Instant::now();
        pg.execute(
            "INSERT INTO task (command, container, status, step_id)
             SELECT 'c' || g, 'alpine', 'P', (SELECT min(step_id) FROM step)
               FROM generate_series(1, $1) g",
            &[&ROWS],
        )
        .await
        .unwrap();
        let insert = t.elapsed();
        let t = std::time::Instant::now();
        pg.execute("UPDATE task SET status = 'A' WHERE status = 'P'", &[])
            .await
            .unwrap();
        let batch = t.elapsed();
        let ids: Vec<i32> = pg
            .query(
                "SELECT task_id FROM task ORDER BY task_id LIMIT $1",
                &[&i64::from(SINGLE)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stmt = pg
            .prepare("UPDATE task SET status = 'C' WHERE task_id = $1")
            .await
            .unwrap();
        let t = std::time::Instant::now();
        for id in &ids {
            pg.execute(&stmt, &[id]).await.unwrap();
        }
        let single = t.elapsed();
        println!(
            "events {mode}: insert {:.1} µs/row, batch update {:.1} µs/row, \
             single-row updates {:.1} µs each",
            insert.as_secs_f64() * 1e6 / f64::from(ROWS),
            batch.as_secs_f64() * 1e6 / f64::from(ROWS),
            single.as_secs_f64() * 1e6 / f64::from(SINGLE),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn trigger_cost_single() {
    let url = postgres().await.fresh_db().await;
    let pg = postgres().await.connect(&url).await;
    let listener = postgres().await.connect(&url).await;
    listener.batch_execute("LISTEN tq_ws").await.unwrap();
    // Somebody watches (db::watch): the triggers publish.
    pg.batch_execute(
        "INSERT INTO tq_watch (replica, channel, until) VALUES ('measure', 'tq_ws', now() + interval '1 hour')",
    )
    .await
    .unwrap();
    pg.batch_execute(
        "INSERT INTO workflow (workflow_name) VALUES ('bench');
         INSERT INTO step (step_name, workflow_id) SELECT 's', workflow_id FROM workflow;
         INSERT INTO task (command, container, status, step_id) SELECT 'c' || g, 'alpine', 'P', (SELECT min(step_id) FROM step) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    if std::env::var_os("WS_EVENTS_OFF").is_some() {
        pg.batch_execute("SET taskqueue.ws_events = 'off'")
            .await
            .unwrap();
    }
    let t = std::time::Instant::now();
    let rows = pg
        .query("EXPLAIN ANALYZE UPDATE task SET status = 'D'", &[])
        .await
        .unwrap();
    for r in rows {
        let l: String = r.get(0);
        println!("batch plan: {l}");
    }
    println!(
        "batch: {:.1} µs/row",
        t.elapsed().as_secs_f64() * 1e6 / 2000.0
    );
    let stmt = pg
        .prepare("UPDATE task SET status = $2 WHERE task_id = $1")
        .await
        .unwrap();
    for (round, status) in ["A", "C", "R"].iter().enumerate() {
        let t = std::time::Instant::now();
        for id in 1..=500i32 {
            pg.execute(&stmt, &[&id, status]).await.unwrap();
        }
        println!(
            "round {round}: {:.1} µs each",
            t.elapsed().as_secs_f64() * 1e6 / 500.0
        );
    }
    let rows = pg
        .query(
            "EXPLAIN ANALYZE UPDATE task SET status = 'U' WHERE task_id = 7",
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let l: String = r.get(0);
        println!("{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn notify_cost() {
    let url = postgres().await.fresh_db().await;
    let pg = postgres().await.connect(&url).await;
    let listener = postgres().await.connect(&url).await;
    listener.batch_execute("LISTEN tq_ws").await.unwrap();
    for n in [2_000i32, 10_000, 40_000] {
        let t = std::time::Instant::now();
        pg.execute(
            "SELECT count(pg_notify('tq_ws', g || repeat('x', 300))) FROM generate_series(1, $1) g",
            &[&n],
        )
        .await
        .unwrap();
        println!(
            "{n} notifies: {:.1} µs each",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    }
}
