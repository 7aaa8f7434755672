//! Leadership without etcd (docs/architecture.md#leadership): a Postgres session advisory lock on a
//! dedicated connection. Two replicas elect exactly one leader; killing it hands over (measured); a
//! frozen leader's session is ended by the server and it steps down when it resumes; a graceful
//! stop hands over at once. Real Postgres, replicas as child processes (and in-process for the
//! last).

use crate::common;

use std::time::{Duration, Instant};

use common::{
    leaders, office, postgres, spawn_replica, start_replicas, test_config, wait_new_term,
    wait_one_leader, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_after_sigkill() {
    let url = postgres().await.fresh_db().await;
    let mut replicas = start_replicas(&url, &["p1", "p2"], &[]).await;
    let (leader, epoch) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    for _ in 0..5 {
        assert_eq!(leaders(&replicas).await, vec![leader], "exactly one leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replicas[leader].kill();
    let killed = Instant::now();
    let (new_epoch, holder) = wait_new_term(&url, epoch, Duration::from_secs(30)).await;
    let failover = killed.elapsed();
    eprintln!(
        "failover (Postgres lock): {:.2}s to {holder}",
        failover.as_secs_f64()
    );
    assert_eq!(holder, replicas[1 - leader].name);
    assert!(failover < Duration::from_secs(5), "took {failover:?}");
    let (now, e) = wait_one_leader(&url, &replicas, Duration::from_secs(10)).await;
    assert_eq!((now, e), (1 - leader, new_epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_lock_and_steps_down_when_it_resumes() {
    let url = postgres().await.fresh_db().await;
    let ttl = Duration::from_secs(3);
    let extra = ["--leader-lease-ttl", "3s", "--watchdog-interval", "100ms"].map(String::from);
    let replicas = start_replicas(&url, &["s1", "s2"], &extra).await;
    let (frozen, epoch) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    let other = 1 - frozen;

    replicas[frozen].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // The server ends the silent session (idle_session_timeout = TTL): the lock passes on.
    let (_, holder) = wait_new_term(&url, epoch, Duration::from_secs(30)).await;
    let takeover = stopped.elapsed();
    eprintln!(
        "takeover from a frozen leader (Postgres lock, TTL {ttl:?}): {:.2}s",
        takeover.as_secs_f64()
    );
    assert_eq!(holder, replicas[other].name);
    assert!(takeover < 3 * ttl, "took {takeover:?}");

    replicas[frozen].signal(libc::SIGCONT);
    wait_until(
        Duration::from_secs(10),
        "the resumed leader to step down",
        || async { replicas[frozen].metric("taskqueue_leader").await == Some(0.0) },
    )
    .await;
    wait_until(Duration::from_secs(10), "the successor to lead", || {
        replicas[other].is_leader()
    })
    .await;
    for _ in 0..10 {
        assert_eq!(leaders(&replicas).await, vec![other]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_lock_over_at_once() {
    let url = postgres().await.fresh_db().await;
    let mut a = test_config(&url);
    a.replica_name = "in-a".into();
    let a = spawn_replica(a).await;
    wait_until(Duration::from_secs(10), "A to take office", || async {
        office(&url).await.is_some_and(|(_, h)| h == "in-a")
    })
    .await;
    let mut b = test_config(&url);
    b.replica_name = "in-b".into();
    let b = spawn_replica(b).await;
    let epoch = office(&url).await.unwrap().0;

    let stopping = Instant::now();
    a.stop().await.unwrap();
    let (_, holder) = wait_new_term(&url, epoch, Duration::from_secs(10)).await;
    eprintln!(
        "handover on graceful stop (Postgres lock): {:.2}s",
        stopping.elapsed().as_secs_f64()
    );
    assert_eq!(holder, "in-b");
    assert!(stopping.elapsed() < Duration::from_secs(3));
    b.stop().await.unwrap();
}
