//! The watchdog (docs/architecture.md#background-loops): offline transitions and deletions
//! of workers. Most tests run one pass (`run_once`) against rows whose timestamps are set in the
//! past, with the original's clocks; the end-to-end ones run a leader replica with clocks shortened
//! by config and drive it through the RPCs. A pass is also shown to be refused once its term is over.

use crate::common;

use std::time::Duration;

use common::leader::{W, fixture, original_clocks, w};
use common::{postgres, spawn_replica, wait_until};
use taskqueue::config::Config;
use taskqueue::loops::watchdog;
use taskqueue::proto as pb;
use tonic::Code;

#[tokio::test]
async fn workers_that_stop_pinging_go_offline_and_an_operator_pause_survives() {
    let f = fixture().await;
    let stale = Some(60.0); // offline timeout 30 s
    let permanent = W {
        permanent: true,
        ping: stale,
        ..w("permanent", "R")
    };
    let ids = [
        f.worker(W {
            ping: stale,
            ..w("ready", "R")
        })
        .await,
        f.worker(W {
            ping: stale,
            ..w("paused", "P")
        })
        .await,
        f.worker(W {
            ping: stale,
            ..w("failing", "F")
        })
        .await,
        f.worker(w("fresh", "R")).await,
        f.worker(W {
            ping: Some(25.0),
            ..w("almost", "R")
        })
        .await,
        // Installing: the new-worker clock (900 s) since creation, not the offline one.
        f.worker(W {
            ping: None,
            created: 60.0,
            ..w("installing", "I")
        })
        .await,
        f.worker(W {
            ping: None,
            created: 1000.0,
            ..w("stuck", "I")
        })
        .await,
        f.worker(W {
            ping: stale,
            offline: Some(40.0),
            ..w("already", "O")
        })
        .await,
        f.worker(W {
            ping: stale,
            ..w("deleting", "D")
        })
        .await,
        f.worker(permanent).await,
    ];
    let report = watchdog::run_once(&f.ctx).await.unwrap();
    let mut statuses = Vec::new();
    for id in ids {
        statuses.push(f.worker_status(id).await.unwrap());
    }
    assert_eq!(
        statuses,
        ["O", "Q", "L", "R", "R", "I", "O", "O", "D", "O"],
        "R→O, P→Q (never O), F→L, I→O on the new-worker clock; others untouched"
    );
    let moved: Vec<(i32, String, String)> = report
        .went_offline
        .iter()
        .map(|m| (m.worker_id, m.from.letter().into(), m.to.letter().into()))
        .collect();
    assert_eq!(
        moved,
        vec![
            (ids[0], "R".into(), "O".into()),
            (ids[1], "P".into(), "Q".into()),
            (ids[2], "F".into(), "L".into()),
            (ids[6], "I".into(), "O".into()),
            (ids[9], "R".into(), "O".into()),
        ]
    );
    let stamped: i64 =
        f.pg.query_one(
            "SELECT count(*) FROM worker WHERE offline_since > now() - interval '5 seconds'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stamped, 5, "offline_since set by this pass");
    assert!(report.deleted.is_empty() && report.scheduled.is_empty());

    // A second pass finds nothing new.
    let again = watchdog::run_once(&f.ctx).await.unwrap();
    assert!(again.went_offline.is_empty());
}

#[tokio::test]
async fn idle_workers_are_deleted_and_busy_warm_or_permanent_ones_kept() {
    let f = fixture().await;
    let local = f.provider("local").await;
    let idle = Some(400.0); // idle timeout 300 s
    // Deleted: idle manual worker; never active for > 900 s. Idle worker on a provider machine
    // (local): a delete job is scheduled instead.
    let manual = f
        .worker(W {
            activity: idle,
            ..w("manual", "R")
        })
        .await;
    let local_idle = f
        .worker(W {
            activity: idle,
            region: Some(local),
            ..w("local-idle", "R")
        })
        .await;
    let born_idle_old = f
        .worker(W {
            activity: None,
            created: 1000.0,
            ..w("born-old", "R")
        })
        .await;
    // Kept: recent activity; never active but young; permanent; running a task; warm (holding an
    // accepted task, threshold 300 + 600 s); a paused worker follows the same clocks.
    let recent = f
        .worker(W {
            activity: Some(100.0),
            ..w("recent", "R")
        })
        .await;
    let born_young = f
        .worker(W {
            activity: None,
            created: 400.0,
            ..w("born-young", "R")
        })
        .await;
    let permanent = f
        .worker(W {
            activity: idle,
            permanent: true,
            ..w("permanent", "R")
        })
        .await;
    let busy = f
        .worker(W {
            activity: Some(5000.0),
            ..w("busy", "R")
        })
        .await;
    let running = f.task("R", Some(busy), Some(0)).await;
    let warm = f
        .worker(W {
            activity: Some(800.0),
            ..w("warm", "R")
        })
        .await;
    let accepted = f.task("C", Some(warm), Some(0)).await;
    // Warm for too long (> 900 s): deleted, its accepted task retried for free.
    let cold = f
        .worker(W {
            activity: Some(1000.0),
            ..w("cold", "R")
        })
        .await;
    let stranded = f.task("A", Some(cold), Some(2)).await;

    let report = watchdog::run_once(&f.ctx).await.unwrap();
    let mut deleted: Vec<i32> = report.deleted.iter().map(|(d, _)| d.worker_id).collect();
    deleted.sort();
    assert_eq!(deleted, vec![manual, born_idle_old, cold]);
    for id in [manual, born_idle_old, cold] {
        assert_eq!(f.worker_status(id).await, None, "worker {id} deleted");
    }
    for id in [recent, born_young, permanent, busy, warm] {
        assert_eq!(
            f.worker_status(id).await.as_deref(),
            Some("R"),
            "worker {id} kept"
        );
    }
    assert_eq!(f.task_row(running).await.0, "R");
    assert_eq!(f.task_row(accepted).await.0, "C");
    assert_eq!(report.scheduled.len(), 1);
    assert_eq!(report.scheduled[0].0.worker_id, local_idle);
    assert_eq!(f.worker_status(local_idle).await.as_deref(), Some("D"));
    let job: (String, String) = {
        let row =
            f.pg.query_one(
                "SELECT action, status FROM job WHERE job_id = $1",
                &[&report.scheduled[0].1],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(job, ("D".to_string(), "P".to_string()));

    // The stranded task: failed with a free retry (budget kept), a clone pending, a log line.
    assert_eq!(f.task_row(stranded).await, ("F".into(), true, Some(2)));
    let clone =
        f.pg.query_one(
            "SELECT status, retry, worker_id FROM task WHERE previous_task_id = $1",
            &[&stranded],
        )
        .await
        .unwrap();
    assert_eq!(clone.get::<_, String>(0), "P");
    assert_eq!(clone.get::<_, Option<i32>>(1), Some(2));
    assert_eq!(clone.get::<_, Option<i32>>(2), None);
    assert!(
        f.stderr_of(stranded)
            .await
            .contains("deleted by the watchdog"),
        "{}",
        f.stderr_of(stranded).await
    );
    let events: i64 =
        f.pg.query_one(
            "SELECT count(*) FROM worker_event WHERE event_class = 'watchdog' AND level = 'I'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 3, "one worker event per deletion");
}

#[tokio::test]
async fn a_long_download_timeout_keeps_a_warm_worker_longer() {
    let f = fixture().await;
    let warm = f
        .worker(W {
            activity: Some(1000.0),
            ..w("warm", "R")
        })
        .await;
    let task = f.task("A", Some(warm), Some(0)).await;
    f.pg.execute(
        "UPDATE task SET download_timeout = 2000 WHERE task_id = $1",
        &[&task],
    )
    .await
    .unwrap();
    watchdog::run_once(&f.ctx).await.unwrap();
    assert_eq!(
        f.worker_status(warm).await.as_deref(),
        Some("R"),
        "300 s + max(600 s, 2000 s) not reached after 1000 s"
    );
}

#[tokio::test]
async fn lost_workers_are_deleted_and_their_running_tasks_retried_for_free() {
    let f = fixture().await;
    let lost = f
        .worker(W {
            ping: Some(700.0),
            offline: Some(400.0), // lost timeout 300 s
            activity: Some(5.0),
            ..w("lost", "O")
        })
        .await;
    let running = f.task("R", Some(lost), Some(0)).await;
    let uploading = f.task("U", Some(lost), None).await;
    let done = f.task("S", Some(lost), None).await;
    let quarantined_recently = f
        .worker(W {
            ping: Some(200.0),
            offline: Some(100.0),
            ..w("recent", "Q")
        })
        .await;
    f.task("R", Some(quarantined_recently), None).await;
    let permanent = f
        .worker(W {
            ping: Some(700.0),
            offline: Some(400.0),
            permanent: true,
            ..w("permanent", "L")
        })
        .await;

    let report = watchdog::run_once(&f.ctx).await.unwrap();
    assert_eq!(report.deleted.len(), 1);
    let (due, tasks) = &report.deleted[0];
    assert_eq!(due.worker_id, lost);
    assert_eq!(due.reason.label(), "lost");
    assert_eq!(tasks, &vec![running, uploading]);
    assert_eq!(f.worker_status(lost).await, None);
    assert_eq!(
        f.worker_status(quarantined_recently).await.as_deref(),
        Some("Q")
    );
    assert_eq!(f.worker_status(permanent).await.as_deref(), Some("L"));
    for t in [running, uploading] {
        let (status, hidden, _) = f.task_row(t).await;
        assert_eq!((status.as_str(), hidden), ("F", true), "task {t} retried");
    }
    assert_eq!(
        f.task_row(done).await.0,
        "S",
        "finished tasks are left alone"
    );
    let clones: i64 =
        f.pg.query_one(
            "SELECT count(*) FROM task WHERE previous_task_id = ANY($1) AND status = 'P'",
            &[&vec![running, uploading]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clones, 2);
    let warned: i64 = f
        .pg
        .query_one(
            "SELECT count(*) FROM worker_event WHERE event_class = 'watchdog' AND level = 'W' AND worker_name = 'lost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(warned, 1);
}

#[tokio::test]
async fn cloud_workers_due_for_deletion_get_a_delete_job() {
    let f = fixture().await;
    let azure = f.provider("azure").await;
    let cloud = f
        .worker(W {
            activity: Some(400.0),
            region: Some(azure),
            ..w("vm1", "R")
        })
        .await;
    let task = f.task("A", Some(cloud), Some(0)).await;
    f.pg.execute(
        "UPDATE worker SET last_activity_at = now() - interval '2000 seconds' WHERE worker_id = $1",
        &[&cloud],
    )
    .await
    .unwrap();
    let report = watchdog::run_once(&f.ctx).await.unwrap();
    assert!(report.deleted.is_empty());
    assert_eq!(report.scheduled.len(), 1);
    let (due, job_id) = &report.scheduled[0];
    assert_eq!(due.provider.as_deref(), Some("azure"));
    assert_eq!(
        f.worker_status(cloud).await.as_deref(),
        Some("D"),
        "the job runner stops the machine, then removes the row"
    );
    let row =
        f.pg.query_one(
            "SELECT action, status, worker_id FROM job WHERE job_id = $1",
            &[job_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "D");
    assert_eq!(row.get::<_, String>(1), "P");
    assert_eq!(row.get::<_, Option<i32>>(2), Some(cloud));
    assert_eq!(
        f.task_row(task).await.0,
        "F",
        "its unfinished task is failed with a free retry"
    );
    // A second pass does not schedule it again: a D worker is not due.
    let again = watchdog::run_once(&f.ctx).await.unwrap();
    assert!(again.scheduled.is_empty() && again.deleted.is_empty());
}

#[tokio::test]
async fn a_deposed_watchdog_changes_nothing() {
    let f = fixture().await;
    f.worker(W {
        ping: Some(60.0),
        ..w("stale", "R")
    })
    .await;
    let idle = f
        .worker(W {
            activity: Some(400.0),
            ..w("idle", "R")
        })
        .await;
    f.task("A", Some(idle), None).await;
    let before = f.snapshot().await;
    f.depose().await;
    let err = watchdog::run_once(&f.ctx).await.unwrap_err();
    assert!(taskqueue::db::leader::is_deposed(&err), "{err}");
    assert_eq!(err.code, taskqueue::error::Code::FailedPrecondition);
    let err = watchdog::delete_worker(&f.ctx, idle).await.unwrap_err();
    assert!(taskqueue::db::leader::is_deposed(&err), "{err}");
    assert_eq!(f.snapshot().await, before);
}

/// A leader replica (Postgres-lock mode) with short clocks.
pub fn short_config(url: &str) -> Config {
    let mut c = original_clocks(url);
    c.offline_timeout = Duration::from_secs(1);
    c.watchdog_interval = Duration::from_millis(100);
    c.dependency_sweep_interval = Duration::from_millis(100);
    c
}

async fn worker_status(client: &mut taskqueue::client::Client, id: i32) -> String {
    client
        .get_worker_statuses(pb::WorkerStatusRequest {
            worker_ids: vec![id],
        })
        .await
        .unwrap()
        .into_inner()
        .statuses[0]
        .status
        .clone()
}

#[tokio::test]
async fn the_leader_watchdog_follows_pings_and_keeps_pauses_end_to_end() {
    let url = postgres().await.fresh_db().await;
    let r = spawn_replica(short_config(&url)).await;
    let mut c = r.worker();
    let ready = common::register_worker(&mut c, "ready", 1, 0, None).await;
    let paused = common::register_worker(&mut c, "paused", 1, 0, None).await;
    c.update_worker_status(pb::WorkerStatus {
        worker_id: paused,
        status: "P".into(),
    })
    .await
    .unwrap();

    // No pings: after the offline timeout the watchdog moves them; the pause is never lost.
    let seen_paused = std::sync::Mutex::new(Vec::new());
    wait_until(Duration::from_secs(10), "both workers offline", || {
        let mut c = c.clone();
        let seen = &seen_paused;
        async move {
            let (a, b) = (
                worker_status(&mut c, ready).await,
                worker_status(&mut c, paused).await,
            );
            seen.lock().unwrap().push(b.clone());
            a == "O" && b == "Q"
        }
    })
    .await;
    let seen_paused = seen_paused.into_inner().unwrap();
    assert!(
        seen_paused.iter().all(|s| s == "P" || s == "Q"),
        "{seen_paused:?}"
    );

    // A ping brings each back to what it was (the hot path flips O→R, Q→P).
    common::ping(&mut c, ready).await;
    common::ping(&mut c, paused).await;
    assert_eq!(worker_status(&mut c, ready).await, "R");
    assert_eq!(worker_status(&mut c, paused).await, "P");
    r.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_manual_worker_is_deleted_end_to_end() {
    let url = postgres().await.fresh_db().await;
    let mut config = short_config(&url);
    config.offline_timeout = Duration::from_secs(30);
    config.new_worker_idle_timeout = Duration::from_secs(1);
    let r = spawn_replica(config).await;
    let mut c = r.worker();
    let id = common::register_worker(&mut c, "manual", 1, 0, None).await;
    wait_until(
        Duration::from_secs(10),
        "the idle worker to be deleted",
        || {
            let mut c = c.clone();
            async move { worker_status(&mut c, id).await == "unknown" }
        },
    )
    .await;
    let err = c
        .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
            worker_id: id,
            stats: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    r.stop().await.unwrap();
}
