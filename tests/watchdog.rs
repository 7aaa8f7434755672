//! The leader loops (design.md §5, behavior.md §5.5, §9 items 1, 8, 27): the watchdog's offline
//! transitions and deletions, and the dependency sweep's promotions and cascading failures. Most
//! tests run one pass (`run_once`) against rows whose timestamps are set in the past with the
//! default timeouts; the end-to-end ones run a leader replica with timeouts shortened by config and
//! drive it through the RPCs. Every pass is also shown to be refused once its term is over.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{postgres, spawn_replica, test_config, wait_until};
use scoped_futures::ScopedFutureExt as _;
use taskqueue::config::Config;
use taskqueue::db::{Db, Op};
use taskqueue::loops::{LeaderContext, dependencies, watchdog};
use taskqueue::proto as pb;
use tonic::Code;

/// A database where this test holds office with epoch 1, and a direct connection to it.
struct Fixture {
    url: String,
    pg: tokio_postgres::Client,
    ctx: LeaderContext,
}

async fn take_office(db: &Db, epoch: i64, holder: &str) -> bool {
    db.tx(Op::Leader, |tx| {
        async move { taskqueue::db::leader::take_office(tx, epoch, holder).await }.scope_boxed()
    })
    .await
    .unwrap()
}

/// The original's clocks (behavior.md §5.5): offline 30 s, idle 300 s, new-worker idle 900 s,
/// lost 300 s, download grace 600 s.
fn original_clocks(url: &str) -> Config {
    use taskqueue::config::defaults;
    let mut c = test_config(url);
    c.offline_timeout = defaults::OFFLINE_TIMEOUT;
    c.idle_timeout = defaults::IDLE_TIMEOUT;
    c.new_worker_idle_timeout = defaults::NEW_WORKER_IDLE_TIMEOUT;
    c.lost_timeout = defaults::LOST_TIMEOUT;
    c.task_download_timeout = defaults::TASK_DOWNLOAD_TIMEOUT;
    c
}

async fn fixture() -> Fixture {
    let url = postgres().await.fresh_db().await;
    fixture_on(&url, original_clocks(&url)).await
}

async fn fixture_on(url: &str, config: Config) -> Fixture {
    let db = Db::connect(url, 4).unwrap();
    assert!(take_office(&db, 1, "test-leader").await);
    Fixture {
        url: url.to_string(),
        pg: postgres().await.connect(url).await,
        ctx: LeaderContext {
            db,
            config: Arc::new(config),
            epoch: 1,
        },
    }
}

impl Fixture {
    /// Another replica takes office with epoch 2: this fixture's term is over.
    async fn depose(&self) {
        let other = Db::connect(&self.url, 2).unwrap();
        assert!(take_office(&other, 2, "successor").await);
    }

    /// (provider_id, region_id) of a new provider `name.test` with region `r`.
    async fn provider(&self, name: &str) -> i32 {
        let p: i32 = self
            .pg
            .query_one(
                "INSERT INTO provider (provider_name, config_name) VALUES ($1, 'test') RETURNING provider_id",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        self.pg
            .query_one(
                "INSERT INTO region (provider_id, region_name) VALUES ($1, 'r') RETURNING region_id",
                &[&p],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn worker(&self, w: W) -> i32 {
        self.pg
            .query_one(
                "INSERT INTO worker (worker_name, status, created_at, last_ping_at, last_activity_at,
                                     offline_since, is_permanent, region_id)
                 VALUES ($1, $2, now() - make_interval(secs => $3::float8),
                         now() - make_interval(secs => $4::float8),
                         now() - make_interval(secs => $5::float8),
                         now() - make_interval(secs => $6::float8), $7, $8)
                 RETURNING worker_id",
                &[
                    &w.name,
                    &w.status,
                    &w.created,
                    &w.ping,
                    &w.activity,
                    &w.offline,
                    &w.permanent,
                    &w.region,
                ],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn task(&self, status: &str, worker: Option<i32>, retry: Option<i32>) -> i32 {
        self.pg
            .query_one(
                "INSERT INTO task (command, container, status, worker_id, retry)
                 VALUES ('true', 'alpine', $1, $2, $3) RETURNING task_id",
                &[&status, &worker, &retry],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn depends(&self, dependent: i32, prerequisite: i32) {
        self.pg
            .execute(
                "INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id) VALUES ($1, $2)",
                &[&dependent, &prerequisite],
            )
            .await
            .unwrap();
    }

    async fn worker_status(&self, id: i32) -> Option<String> {
        self.pg
            .query_opt("SELECT status FROM worker WHERE worker_id = $1", &[&id])
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    async fn task_row(&self, id: i32) -> (String, bool, Option<i32>) {
        let r = self
            .pg
            .query_one(
                "SELECT status, hidden, retry FROM task WHERE task_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    async fn stderr_of(&self, id: i32) -> String {
        self.pg
            .query_one(
                "SELECT COALESCE(string_agg(body, '' ORDER BY seq), '') FROM task_log
                  WHERE task_id = $1 AND stream = 'E'",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Everything the loops may change, to show a refused pass changed nothing.
    async fn snapshot(&self) -> String {
        self.pg
            .query_one(
                "SELECT (SELECT COALESCE(string_agg(worker_id || w.status || COALESCE(offline_since::text, ''), ',' ORDER BY worker_id), '') FROM worker w)
                     || '|' || (SELECT COALESCE(string_agg(task_id || t.status || hidden::text || COALESCE(pending_since::text, ''), ',' ORDER BY task_id), '') FROM task t)
                     || '|' || (SELECT count(*) FROM task_log)::text",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// A worker row; times are seconds ago (`None` = NULL).
#[derive(Clone)]
struct W {
    name: &'static str,
    status: &'static str,
    created: f64,
    ping: Option<f64>,
    activity: Option<f64>,
    offline: Option<f64>,
    permanent: bool,
    region: Option<i32>,
}

fn w(name: &'static str, status: &'static str) -> W {
    W {
        name,
        status,
        created: 10_000.0,
        ping: Some(1.0),
        activity: Some(1.0),
        offline: None,
        permanent: false,
        region: None,
    }
}

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
        .map(|m| (m.worker_id, m.from.clone(), m.to.clone()))
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
    assert!(report.deleted.is_empty() && report.deferred.is_empty());

    // A second pass finds nothing new.
    let again = watchdog::run_once(&f.ctx).await.unwrap();
    assert!(again.went_offline.is_empty());
}

#[tokio::test]
async fn idle_workers_are_deleted_and_busy_warm_or_permanent_ones_kept() {
    let f = fixture().await;
    let local = f.provider("local").await;
    let idle = Some(400.0); // idle timeout 300 s
    // Deleted: idle manual worker; idle local worker; never active for > 900 s.
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
    assert_eq!(deleted, vec![manual, local_idle, born_idle_old, cold]);
    for id in [manual, local_idle, born_idle_old, cold] {
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
    assert_eq!(events, 4, "one worker event per deletion");
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
async fn cloud_workers_due_for_deletion_are_left_for_the_job_path() {
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
    assert_eq!(report.deferred.len(), 1);
    assert_eq!(report.deferred[0].provider.as_deref(), Some("azure"));
    assert_eq!(f.worker_status(cloud).await.as_deref(), Some("R"));
    assert_eq!(
        f.task_row(task).await.0,
        "A",
        "its tasks are left alone too"
    );
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

#[tokio::test]
async fn waiting_tasks_are_promoted_once_all_prerequisites_succeeded() {
    let f = fixture().await;
    let a = f.task("S", None, None).await;
    let b = f.task("S", None, None).await;
    let running = f.task("R", None, None).await;
    let ready = f.task("W", None, None).await;
    f.depends(ready, a).await;
    f.depends(ready, b).await;
    let blocked = f.task("W", None, None).await;
    f.depends(blocked, a).await;
    f.depends(blocked, running).await;
    // Its prerequisite was deleted (the edge went with it): nothing left to wait for.
    let orphan = f.task("W", None, None).await;
    let hidden = f.task("W", None, None).await;
    f.depends(hidden, a).await;
    f.pg.execute(
        "UPDATE task SET hidden = true WHERE task_id = $1",
        &[&hidden],
    )
    .await
    .unwrap();

    let report = dependencies::run_once(&f.ctx).await.unwrap();
    assert_eq!(report.promoted, vec![ready, orphan]);
    assert!(report.failed.is_empty());
    assert_eq!(f.task_row(ready).await.0, "P");
    assert_eq!(f.task_row(orphan).await.0, "P");
    assert_eq!(f.task_row(blocked).await.0, "W");
    assert_eq!(
        f.task_row(hidden).await.0,
        "W",
        "hidden tasks are read-only"
    );
    let pending_since: bool =
        f.pg.query_one(
            "SELECT pending_since > now() - interval '1 minute' FROM task WHERE task_id = $1",
            &[&ready],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending_since, "pending_since set when the task became P");
    assert!(dependencies::run_once(&f.ctx).await.unwrap() == Default::default());
}

#[tokio::test]
async fn a_final_failure_fails_waiting_dependents_down_the_chain_with_a_reason() {
    let f = fixture().await;
    let root = f.task("F", None, Some(0)).await;
    let child = f.task("W", None, Some(3)).await;
    let grandchild = f.task("W", None, None).await;
    let great = f.task("W", None, None).await;
    f.depends(child, root).await;
    f.depends(grandchild, child).await;
    f.depends(great, grandchild).await;
    // A sibling of root that succeeded does not save a task that also needs root.
    let ok = f.task("S", None, None).await;
    f.depends(grandchild, ok).await;
    // NULL retry is a final failure too.
    let root2 = f.task("F", None, None).await;
    let other = f.task("W", None, None).await;
    f.depends(other, root2).await;

    let report = dependencies::run_once(&f.ctx).await.unwrap();
    let failed: Vec<(i32, i32)> = report
        .failed
        .iter()
        .map(|d| (d.task_id, d.prerequisite))
        .collect();
    assert_eq!(
        failed,
        vec![
            (child, root),
            (other, root2),
            (grandchild, child),
            (great, grandchild)
        ]
    );
    for (t, cause) in failed {
        assert_eq!(f.task_row(t).await, ("F".into(), false, Some(0)));
        let log = f.stderr_of(t).await;
        assert!(
            log.contains(&format!("prerequisite task {cause} failed")),
            "task {t}: {log}"
        );
    }
}

#[tokio::test]
async fn retriable_or_retried_prerequisites_keep_dependents_waiting() {
    let f = fixture().await;
    // F with retries left: an automatic retry is coming, its clone will take the edge.
    let retriable = f.task("F", None, Some(2)).await;
    let a = f.task("W", None, None).await;
    f.depends(a, retriable).await;
    // A hidden F was retried: it decides nothing.
    let retried = f.task("F", None, Some(0)).await;
    f.pg.execute(
        "UPDATE task SET hidden = true WHERE task_id = $1",
        &[&retried],
    )
    .await
    .unwrap();
    let b = f.task("W", None, None).await;
    f.depends(b, retried).await;
    let report = dependencies::run_once(&f.ctx).await.unwrap();
    assert_eq!(report, Default::default());
    assert_eq!(f.task_row(a).await.0, "W");
    assert_eq!(f.task_row(b).await.0, "W");
}

#[tokio::test]
async fn a_deposed_sweep_changes_nothing() {
    let f = fixture().await;
    let ok = f.task("S", None, None).await;
    let bad = f.task("F", None, Some(0)).await;
    let promotable = f.task("W", None, None).await;
    f.depends(promotable, ok).await;
    let doomed = f.task("W", None, None).await;
    f.depends(doomed, bad).await;
    let before = f.snapshot().await;
    f.depose().await;
    let err = dependencies::run_once(&f.ctx).await.unwrap_err();
    assert!(taskqueue::db::leader::is_deposed(&err), "{err}");
    assert_eq!(f.snapshot().await, before);
}

/// A leader replica (Postgres-lock mode) with short clocks.
fn short_config(url: &str) -> Config {
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

#[tokio::test]
async fn the_leader_sweep_resolves_dependencies_end_to_end() {
    let url = postgres().await.fresh_db().await;
    let r = spawn_replica(short_config(&url)).await;
    let mut c = r.admin().await;
    let submitter = c.clone();
    let submit = |deps: Vec<i32>, retry: Option<i32>| {
        let mut c = submitter.clone();
        async move {
            let mut t = common::task("true");
            t.dependency = deps;
            t.retry = retry;
            c.submit_task(t).await.unwrap().into_inner().task_id
        }
    };
    // A chain below a task that fails for good: all of it fails, each with its reason.
    let root = submit(vec![], Some(0)).await;
    let child = submit(vec![root], None).await;
    let grandchild = submit(vec![child], None).await;
    assert_eq!(common::status_of(&mut c, grandchild).await, "W");
    common::set_status(&mut c, root, "F").await;
    wait_until(Duration::from_secs(10), "the chain to fail", || {
        let mut c = c.clone();
        async move { common::status_of(&mut c, grandchild).await == "F" }
    })
    .await;
    assert_eq!(common::status_of(&mut c, child).await, "F");
    let pg = postgres().await.connect(&url).await;
    let log: String = pg
        .query_one(
            "SELECT string_agg(body, '') FROM task_log WHERE task_id = $1 AND stream = 'E'",
            &[&grandchild],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        log.contains(&format!("prerequisite task {child} failed")),
        "{log}"
    );

    // Depending on a task that already succeeded: pending without further ado.
    let done = submit(vec![], None).await;
    common::set_status(&mut c, done, "S").await;
    let late = submit(vec![done], None).await;
    wait_until(
        Duration::from_secs(10),
        "the late dependent to be pending",
        || {
            let mut c = c.clone();
            async move { common::status_of(&mut c, late).await == "P" }
        },
    )
    .await;
    r.stop().await.unwrap();
}

#[tokio::test]
async fn an_incremental_sweep_looks_only_at_recently_settled_prerequisites() {
    use taskqueue::db::dependencies::Scope;
    let f = fixture().await;
    let old = f.task("S", None, None).await;
    let recent = f.task("F", None, Some(0)).await;
    f.pg.execute(
        "UPDATE task SET modified_at = now() - interval '1 hour' WHERE task_id = $1",
        &[&old],
    )
    .await
    .unwrap();
    let behind_old = f.task("W", None, None).await;
    f.depends(behind_old, old).await;
    let chain = [f.task("W", None, None).await, f.task("W", None, None).await];
    f.depends(chain[0], recent).await;
    f.depends(chain[1], chain[0]).await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(5);

    let (report, began) = dependencies::run_pass(&f.ctx, Scope::SettledSince(since))
        .await
        .unwrap();
    assert!(
        report.promoted.is_empty(),
        "an old success is left to the full pass"
    );
    let failed: Vec<i32> = report.failed.iter().map(|d| d.task_id).collect();
    assert_eq!(failed, chain, "the cascade follows within one pass");
    assert!(began > since);
    assert_eq!(f.task_row(behind_old).await.0, "W");

    let full = dependencies::run_once(&f.ctx).await.unwrap();
    assert_eq!(full.promoted, vec![behind_old]);
}
