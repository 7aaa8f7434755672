//! The dependency sweep (docs/architecture.md#background-loops): promotion of waiting tasks whose
//! prerequisites succeeded, failure of those whose prerequisite failed for good (down the chain,
//! with a log line), full and incremental passes, fencing; and the same end to end on a leader
//! replica driven through the RPCs.

use crate::common;

use std::time::Duration;

use common::leader::{fixture, original_clocks};
use common::{postgres, spawn_replica, submit, wait_until};
use taskqueue::loops::dependencies;

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

/// A leader replica (Postgres-lock mode) that sweeps every 100 ms.
fn short_config(url: &str) -> taskqueue::config::Config {
    let mut c = original_clocks(url);
    c.dependency_sweep_interval = Duration::from_millis(100);
    c
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
            submit(&mut c, t).await
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
