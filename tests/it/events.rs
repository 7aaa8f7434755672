//! Worker events (as the original scitq's): ReportWorkerEvent, ListWorkerEvents, DeleteWorkerEvent,
//! PruneWorkerEvents — happy paths across two replicas, filters and limits, and every bad input
//! (right code, database unchanged).

use crate::common;

use common::{postgres, register_worker, replica, spawn_replica, test_config};
use taskqueue::client::Client;
use taskqueue::proto as pb;
use tonic::Code;

fn event(worker_id: Option<i32>, level: &str, class: &str, message: &str) -> pb::WorkerEvent {
    pb::WorkerEvent {
        worker_id,
        worker_name: "host-1".into(),
        level: level.into(),
        event_class: class.into(),
        message: message.into(),
        details_json: String::new(),
    }
}

async fn list(client: &mut Client, filter: pb::WorkerEventFilter) -> Vec<pb::WorkerEventRecord> {
    client
        .list_worker_events(filter)
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM worker_event", &[])
        .await
        .unwrap()
        .get(0)
}

async fn prune(
    client: &mut Client,
    before: Option<&str>,
    dry_run: bool,
    tweak: impl FnOnce(&mut pb::WorkerEventPruneFilter),
) -> Result<pb::WorkerEventPruneResult, tonic::Status> {
    let mut filter = pb::WorkerEventPruneFilter {
        before: before.map(str::to_string),
        dry_run,
        ..Default::default()
    };
    tweak(&mut filter);
    client
        .prune_worker_events(filter)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn report_on_one_replica_list_on_another() {
    let url = postgres().await.fresh_db().await;
    let a = spawn_replica(test_config(&url)).await;
    let b = spawn_replica(test_config(&url)).await;
    let mut worker = a.worker();
    let mut admin = b.admin().await;
    let worker_id = register_worker(&mut worker, "node-7", 1, 0, None).await;

    let mut first = event(Some(worker_id), "E", "install", "docker pull failed");
    first.details_json = r#"{"image": "alpine", "exit": 125, "tags": ["a", "é"]}"#.into();
    worker.report_worker_event(first).await.unwrap();
    // Before registration: no worker id (or 0, which some workers send), empty level means I.
    worker
        .report_worker_event(event(None, "", "bootstrap", "starting"))
        .await
        .unwrap();
    worker
        .report_worker_event(event(Some(0), "W", "network", "slow link"))
        .await
        .unwrap();

    let all = list(&mut admin, Default::default()).await;
    assert_eq!(all.len(), 3);
    // Newest first.
    assert_eq!(all[0].message, "slow link");
    assert_eq!(all[0].worker_id, None);
    assert_eq!(all[1].level, "I");
    assert_eq!(all[1].details_json, "");
    let e = &all[2];
    assert_eq!(e.worker_id, Some(worker_id));
    assert_eq!((e.level.as_str(), e.event_class.as_str()), ("E", "install"));
    assert_eq!(e.worker_name, "host-1");
    let details: serde_json::Value = serde_json::from_str(&e.details_json).unwrap();
    assert_eq!(
        details,
        serde_json::json!({"image": "alpine", "exit": 125, "tags": ["a", "é"]})
    );
    // RFC 3339 UTC, as the original.
    assert!(e.created_at.ends_with('Z'), "{}", e.created_at);
    chrono::DateTime::parse_from_rfc3339(&e.created_at).unwrap();
    assert!(e.event_id > 0 && all[0].event_id > e.event_id);

    // Empty details are stored as NULL.
    let db = postgres().await.connect(&url).await;
    let nulls: i64 = db
        .query_one(
            "SELECT count(*) FROM worker_event WHERE details_json IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 2);
}

#[tokio::test]
async fn list_filters_and_limits() {
    let r = replica().await;
    let mut c = r.worker();
    let w1 = register_worker(&mut c, "w1", 1, 0, None).await;
    let w2 = register_worker(&mut c, "w2", 1, 0, None).await;
    for (w, level, class) in [
        (w1, "I", "task"),
        (w1, "E", "task"),
        (w2, "E", "install"),
        (w2, "D", "task"),
        (w1, "W", "upload"),
    ] {
        c.report_worker_event(event(Some(w), level, class, "m"))
            .await
            .unwrap();
    }
    let filter =
        |worker_id, level: Option<&str>, class: Option<&str>, limit| pb::WorkerEventFilter {
            worker_id,
            level: level.map(str::to_string),
            class: class.map(str::to_string),
            limit,
        };
    assert_eq!(
        list(&mut c, filter(Some(w1), None, None, None)).await.len(),
        3
    );
    assert_eq!(
        list(&mut c, filter(None, Some("E"), None, None))
            .await
            .len(),
        2
    );
    assert_eq!(
        list(&mut c, filter(None, None, Some("task"), None))
            .await
            .len(),
        3
    );
    let one = list(&mut c, filter(Some(w2), Some("E"), Some("install"), None)).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].worker_id, Some(w2));
    assert!(
        list(&mut c, filter(Some(99_999), None, None, None))
            .await
            .is_empty()
    );
    // Empty strings filter nothing.
    assert_eq!(
        list(&mut c, filter(None, Some(""), Some(""), None))
            .await
            .len(),
        5
    );
    assert_eq!(
        list(&mut c, filter(None, None, None, Some(2))).await.len(),
        2
    );

    // Default 50, at most 1000.
    let db = postgres().await.connect(r.database_url()).await;
    db.execute(
        "INSERT INTO worker_event (worker_name, level, event_class, message)
         SELECT 'bulk', 'D', 'bulk', 'n' || i FROM generate_series(1, 1100) i",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(list(&mut c, filter(None, None, None, None)).await.len(), 50);
    assert_eq!(
        list(&mut c, filter(None, None, None, Some(0))).await.len(),
        50
    );
    // A negative limit is refused (limits at the door), no longer read as the default.
    assert_eq!(
        c.list_worker_events(filter(None, None, None, Some(-5)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        list(&mut c, filter(None, None, None, Some(5000)))
            .await
            .len(),
        1000
    );
}

#[tokio::test]
async fn bad_reports_are_refused_and_store_nothing() {
    let r = replica().await;
    let mut c = r.worker();
    let db = postgres().await.connect(r.database_url()).await;
    let w = register_worker(&mut c, "w", 1, 0, None).await;
    let bad_json = [
        "{",
        "{'a': 1}",
        "not json",
        "[1, 2",
        "1 2",
        r#"{"a": "\u0000"}"#,
    ];
    for details in bad_json {
        let mut e = event(Some(w), "I", "task", "m");
        e.details_json = details.into();
        let err = c.report_worker_event(e).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "details {details:?}");
    }
    for level in ["X", "i", "INFO", "EE"] {
        let err = c
            .report_worker_event(event(Some(w), level, "task", "m"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "level {level:?}");
    }
    for class in ["", "  "] {
        let err = c
            .report_worker_event(event(Some(w), "I", class, "m"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "class {class:?}");
    }
    let err = c
        .report_worker_event(event(Some(w + 1000), "I", "task", "m"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("worker"), "{}", err.message());
    assert_eq!(count(&db).await, 0);

    let err = c
        .list_worker_events(pb::WorkerEventFilter {
            level: Some("Q".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn delete_and_prune() {
    let r = replica().await;
    let mut c = r.worker();
    let db = postgres().await.connect(r.database_url()).await;
    let w = register_worker(&mut c, "w", 1, 0, None).await;
    // Old events (dated by SQL) and new ones.
    db.execute(
        "INSERT INTO worker_event (created_at, worker_id, worker_name, level, event_class, message)
         SELECT timestamptz '2024-01-01T00:00:00Z' + i * interval '1 hour', $1, 'w',
                (ARRAY['D','I','W','E'])[1 + i % 4], CASE WHEN i % 2 = 0 THEN 'task' ELSE 'install' END,
                'old ' || i
           FROM generate_series(0, 39) i",
        &[&w],
    )
    .await
    .unwrap();
    for i in 0..5 {
        c.report_worker_event(event(None, "I", "task", &format!("new {i}")))
            .await
            .unwrap();
    }
    assert_eq!(count(&db).await, 45);

    // Delete one; deleting it again (or any absent id) still succeeds.
    let newest = list(&mut c, Default::default()).await[0].event_id;
    c.delete_worker_event(pb::WorkerEventId { event_id: newest })
        .await
        .unwrap();
    c.delete_worker_event(pb::WorkerEventId { event_id: newest })
        .await
        .unwrap();
    assert_eq!(count(&db).await, 44);
    let err = c
        .delete_worker_event(pb::WorkerEventId { event_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Bad prunes: nothing deleted.
    let err = prune(&mut c, None, false, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("before"), "{}", err.message());
    let err = prune(&mut c, Some(""), false, |_| {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for bad in ["2024-02-01", "yesterday", "2024-13-01T00:00:00Z"] {
        let err = prune(&mut c, Some(bad), true, |_| {}).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "before {bad:?}");
    }
    let err = prune(&mut c, Some("2030-01-01T00:00:00Z"), false, |f| {
        f.level = Some("Z".into())
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(count(&db).await, 44);

    // Dry runs count without deleting; without `before` they count everything that matches.
    let cut = "2024-01-01T20:00:00Z"; // the first 20 old events are before it
    let dry = prune(&mut c, Some(cut), true, |_| {}).await.unwrap();
    assert_eq!((dry.matched, dry.deleted), (20, 0));
    let dry = prune(&mut c, None, true, |f| f.class = Some("task".into()))
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.deleted), (20 + 4, 0));
    let dry = prune(&mut c, Some(cut), true, |f| {
        f.level = Some("E".into());
        f.worker_id = Some(w);
    })
    .await
    .unwrap();
    assert_eq!(dry.matched, 5);
    assert_eq!(count(&db).await, 44);

    // Destructive prunes delete exactly what matched.
    let done = prune(&mut c, Some(cut), false, |f| {
        f.class = Some("install".into())
    })
    .await
    .unwrap();
    assert_eq!((done.matched, done.deleted), (10, 10));
    assert_eq!(count(&db).await, 34);
    let done = prune(&mut c, Some("2024-01-01T20:00:00+00:00"), false, |_| {})
        .await
        .unwrap();
    assert_eq!((done.matched, done.deleted), (10, 10));
    let left = list(
        &mut c,
        pb::WorkerEventFilter {
            limit: Some(1000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(left.len(), 24);
    assert!(left.iter().all(|e| e.message.starts_with("new") || {
        let i: i32 = e.message.trim_start_matches("old ").parse().unwrap();
        i >= 20
    }));
}
