//! Leadership with etcd (docs/architecture.md#leadership): one leader among replicas, failover
//! after SIGKILL within lease TTL + 2 s (measured), handover on graceful shutdown, fencing of a
//! frozen leader (SIGSTOP) and of a deposed one, and every RPC working while etcd is down. Real
//! etcd and Postgres; replicas as child processes of the `taskqueue` binary, or in-process
//! memberships where the test needs a hook inside the leader.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Etcd, leaders, metric_value, office, postgres, start_replicas, test_config, wait_new_term,
    wait_one_leader, wait_until,
};
use scoped_futures::ScopedFutureExt as _;
use taskqueue::cluster::{self, Membership};
use taskqueue::db::{Db, Op};
use taskqueue::loops::{LeaderContext, LeaderLoop, OnCancel};
use tokio::sync::{Semaphore, mpsc};

const TTL: Duration = Duration::from_secs(3);

fn etcd_args(etcd: &Etcd, ttl: Duration) -> Vec<String> {
    vec![
        "--etcd-endpoints".into(),
        etcd.endpoint(),
        "--leader-lease-ttl".into(),
        format!("{}s", ttl.as_secs()),
    ]
}

async fn start_etcd() -> Etcd {
    let etcd = Etcd::start();
    etcd.wait_ready().await;
    etcd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_sigkill_takes_at_most_the_lease_ttl_plus_2s() {
    let etcd = start_etcd().await;
    let url = postgres().await.fresh_db().await;
    let mut replicas = start_replicas(&url, &["r1", "r2", "r3"], &etcd_args(&etcd, TTL)).await;
    let (mut leader, mut epoch) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    assert_eq!(
        leaders(&replicas).await,
        vec![leader],
        "a scrape of the cluster shows exactly one leader"
    );

    for round in 1..=2 {
        replicas[leader].kill();
        let killed = Instant::now();
        let (new_epoch, holder) = wait_new_term(&url, epoch, Duration::from_secs(30)).await;
        let failover = killed.elapsed();
        eprintln!(
            "failover round {round} (etcd, TTL {TTL:?}): {:.2}s, new leader {holder}",
            failover.as_secs_f64()
        );
        assert!(
            failover <= TTL + Duration::from_secs(2),
            "failover took {failover:?}"
        );
        let (now_leader, now_epoch) =
            wait_one_leader(&url, &replicas, Duration::from_secs(10)).await;
        assert_eq!(now_epoch, new_epoch);
        assert_ne!(now_leader, leader);
        (leader, epoch) = (now_leader, now_epoch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_resigns_and_hands_over_at_once() {
    let etcd = start_etcd().await;
    let url = postgres().await.fresh_db().await;
    // The default TTL (10 s): a successor that waited for the lease would take that long.
    let ttl = Duration::from_secs(10);
    let mut replicas = start_replicas(&url, &["g1", "g2", "g3"], &etcd_args(&etcd, ttl)).await;
    let (leader, epoch) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    let mut etcd_client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut config = test_config(&url);
    config.server_name = "taskqueue".into();
    let prefix = cluster::election_name(&config);
    let mut candidates = async || {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_keys_only();
        etcd_client
            .get(prefix.clone(), Some(options))
            .await
            .unwrap()
            .kvs()
            .len()
    };
    assert_eq!(candidates().await, 3);

    // A follower that stops withdraws its candidacy: no dead key waits in line.
    let follower = (leader + 1) % 3;
    assert_eq!(
        replicas[follower].terminate(Duration::from_secs(10)).await,
        Some(0)
    );
    assert_eq!(candidates().await, 2);

    let stopping = Instant::now();
    let exit = replicas[leader].terminate(Duration::from_secs(10)).await;
    assert_eq!(exit, Some(0), "{}", replicas[leader].log_text());
    let (_, holder) = wait_new_term(&url, epoch, Duration::from_secs(30)).await;
    let handover = stopping.elapsed();
    eprintln!(
        "handover on SIGTERM (etcd, TTL {ttl:?}): {:.2}s to {holder}",
        handover.as_secs_f64()
    );
    assert!(handover < ttl / 2, "handover took {handover:?}");
    assert!(replicas[leader].log_text().contains("resigned leadership"));
    wait_one_leader(&url, &replicas, Duration::from_secs(10)).await;
    assert_eq!(candidates().await, 1);
}

/// The value of `taskqueue_leader_transitions_total{to="<to>"}`.
fn transitions(text: &str, to: &str) -> f64 {
    let name = format!("taskqueue_leader_transitions_total{{to=\"{to}\"}}");
    metric_value(text, &name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_steps_down_when_it_resumes() {
    let etcd = start_etcd().await;
    let url = postgres().await.fresh_db().await;
    // Short loop intervals: the frozen leader has loop iterations due the moment it resumes.
    let mut extra = etcd_args(&etcd, TTL);
    extra.extend(
        [
            "--watchdog-interval",
            "100ms",
            "--dependency-sweep-interval",
            "50ms",
        ]
        .map(String::from),
    );
    let replicas = start_replicas(&url, &["f1", "f2"], &extra).await;
    let (frozen, epoch) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    let other = 1 - frozen;

    replicas[frozen].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let (new_epoch, holder) = wait_new_term(&url, epoch, Duration::from_secs(30)).await;
    eprintln!(
        "takeover from a frozen leader (etcd, TTL {TTL:?}): {:.2}s",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(holder, replicas[other].name);
    wait_until(Duration::from_secs(10), "the successor to lead", || {
        replicas[other].is_leader()
    })
    .await;

    replicas[frozen].signal(libc::SIGCONT);
    let resumed = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the resumed leader to step down",
        || async { replicas[frozen].metric("taskqueue_leader").await == Some(0.0) },
    )
    .await;
    eprintln!(
        "resumed leader stepped down after {:.3}s",
        resumed.elapsed().as_secs_f64()
    );
    let text = replicas[frozen]
        .scrape(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(transitions(&text, "follower") >= 1.0, "{text}");
    let log = replicas[frozen].log_text();
    assert!(log.contains("stepping down"), "{log}");
    // Which came first on resuming: a refused fenced write, or the lease deadline.
    for line in log
        .lines()
        .filter(|l| l.contains("stepping down") || l.contains("leader write refused"))
    {
        eprintln!("frozen leader: {line}");
    }
    // Exactly one leader afterwards, the successor, with its term recorded.
    for _ in 0..10 {
        assert_eq!(leaders(&replicas).await, vec![other]);
        assert_eq!(office(&url).await.unwrap().0, new_epoch);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_pending_write_is_refused_and_it_steps_down() {
    let etcd = start_etcd().await;
    let url = postgres().await.fresh_db().await;
    let config = |name: &str| {
        let mut c = test_config(&url);
        c.etcd_endpoints = vec![etcd.endpoint()];
        // Long enough that A's own keep-alive does not notice the revocation during the test.
        c.leader_lease_ttl = Duration::from_secs(30);
        c.replica_name = name.into();
        Arc::new(c)
    };

    // A's probe loop: each iteration waits for the test's go, then makes one fenced write and
    // reports whether it was refused as deposed. `Finish`: even a cancelled term completes it.
    let go = Arc::new(Semaphore::new(0));
    let (report_tx, mut reports) = mpsc::unbounded_channel::<Result<i64, (bool, String)>>();
    let probe = {
        let go = go.clone();
        LeaderLoop::every("probe", Duration::from_millis(10), move |ctx: LeaderContext| {
            let go = go.clone();
            let report_tx = report_tx.clone();
            async move {
                go.acquire().await.unwrap().forget();
                let epoch = ctx.epoch;
                let r = ctx
                    .fenced_tx(Op::Leader, |tx| {
                        async move {
                            tx.execute(
                                "INSERT INTO worker_event (event_class, message) VALUES ('probe', $1)",
                                &[&epoch.to_string()],
                            )
                            .await
                            .map_err(taskqueue::db::pg_error)?;
                            Ok(())
                        }
                        .scope_boxed()
                    })
                    .await;
                let _ = report_tx.send(match &r {
                    Ok(()) => Ok(epoch),
                    Err(e) => Err((taskqueue::db::leader::is_deposed(e), e.to_string())),
                });
                r
            }
        })
        .on_cancel(OnCancel::Finish)
    };
    let a = cluster::start(
        Membership {
            db: Db::connect(&url, 4).unwrap(),
            config: config("a"),
            declared_providers: Arc::default(),
            loops: vec![probe],
        },
        &url,
    )
    .await
    .unwrap();
    let mut a_status = a.status();
    let a_epoch = a_status
        .wait_for(|s| s.is_leader())
        .await
        .unwrap()
        .leading
        .unwrap();
    go.add_permits(1);
    assert_eq!(
        reports.recv().await.unwrap(),
        Ok(a_epoch),
        "A writes in its term"
    );

    let b = cluster::start(
        Membership {
            db: Db::connect(&url, 4).unwrap(),
            config: config("b"),
            declared_providers: Arc::default(),
            loops: vec![],
        },
        &url,
    )
    .await
    .unwrap();
    // Depose A behind its back: revoke its lease in etcd. Its key goes, B is elected.
    let mut etcd_client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let leader = etcd_client
        .leader(cluster::election_name(&config("a")))
        .await
        .unwrap();
    let kv = leader.kv().expect("A holds the leader key");
    assert_eq!(kv.value(), b"a");
    etcd_client.lease_revoke(kv.lease()).await.unwrap();
    let mut b_status = b.status();
    let b_epoch = tokio::time::timeout(
        Duration::from_secs(20),
        b_status.wait_for(|s| s.is_leader()),
    )
    .await
    .expect("B leads after A's lease is revoked")
    .unwrap()
    .leading
    .unwrap();
    assert!(b_epoch > a_epoch);
    assert_eq!(office(&url).await, Some((b_epoch, "b".to_string())));

    // A's pending write: refused by the fencing, and A steps down.
    go.add_permits(1);
    let refused = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("A attempts its pending write")
        .unwrap();
    match refused {
        Err((true, message)) => assert!(message.contains("no longer leader"), "{message}"),
        other => panic!("A's write after being deposed: {other:?}"),
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        a_status.wait_for(|s| !s.is_leader()),
    )
    .await
    .expect("A steps down")
    .unwrap();
    assert!(b.is_leader());
    let client = postgres().await.connect(&url).await;
    let probes: Vec<String> = client
        .query(
            "SELECT message FROM worker_event WHERE event_class = 'probe'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        probes,
        vec![a_epoch.to_string()],
        "only the write of A's live term landed"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    a.shutdown(deadline).await;
    b.shutdown(deadline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_etcd_is_down_rpcs_work_everywhere_and_nobody_leads() {
    let mut etcd = start_etcd().await;
    let url = postgres().await.fresh_db().await;
    let replicas = start_replicas(&url, &["e1", "e2", "e3"], &etcd_args(&etcd, TTL)).await;
    wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    let mut workers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let mut c = r.worker();
        let id = common::register_worker(&mut c, &format!("w{i}"), 1, 0, None).await;
        workers.push((c, id));
    }

    etcd.kill();
    let down = Instant::now();
    let outage = Duration::from_secs(20);
    let (mut calls, mut samples_without_leader) = (0, 0);
    while down.elapsed() < outage {
        for (c, id) in &mut workers {
            common::ping(c, *id).await;
            c.submit_task(common::task("echo during the outage"))
                .await
                .expect("submissions work while etcd is down");
            calls += 2;
        }
        // Once the lease can have expired nobody may act as leader.
        if down.elapsed() > TTL + Duration::from_millis(500) {
            assert_eq!(
                leaders(&replicas).await,
                Vec::<usize>::new(),
                "a replica leads without a valid lease"
            );
            samples_without_leader += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "etcd down {outage:?}: {calls} pings and submissions succeeded on 3 replicas; \
         {samples_without_leader} scrapes without a leader"
    );
    assert!(samples_without_leader > 10);

    etcd.restart();
    let back = Instant::now();
    let (leader, _) = wait_one_leader(&url, &replicas, Duration::from_secs(30)).await;
    eprintln!(
        "after etcd returned: one leader ({}) in {:.2}s",
        replicas[leader].name,
        back.elapsed().as_secs_f64()
    );
    for _ in 0..10 {
        assert_eq!(leaders(&replicas).await, vec![leader]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
