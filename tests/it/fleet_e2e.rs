//! End to end with the `fake` provider: two replicas, a step with a recruiter (protofilter, rounds,
//! maximum, quota) and 2,000 pending tasks → workers deployed within quota and maximum, simulated
//! workers (registering, pinging, running tasks through gRPC) run every task, then idle workers are
//! recycled to a second step.

use crate::common;
use crate::fleet_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use common::{postgres, spawn_replica, task, test_config, wait_until};
use fleet_support::{leader, providers, unique_cloud};
use taskqueue::loops::LeaderContext;
use taskqueue::loops::jobs::{JobRunner, JobSettings};
use taskqueue::loops::recruiter::Recruiter;
use taskqueue::loops::watchdog;
use taskqueue::proto as pb;
use taskqueue::providers::{Environment, Providers};

const TASKS: usize = 2_000;

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recruiters_deploy_within_limits_simulated_workers_run_everything_and_idle_ones_are_recycled()
 {
    let url = postgres().await.fresh_db().await;
    // Two replicas behind the simulated workers' balanced channel.
    let ports = [common::free_port(), common::free_port()];
    let cloud_id = unique_cloud("e2e");
    let yaml = format!(
        "fake:\n  sim:\n    cloud: {cloud_id}\n    regions: [r1, r2]\n    quotas: {{r1: {{cpu: 40}}}}\n    \
         auto_launch: true\n    create_delay: 200ms\n    ping_interval: 200ms\n    task_duration: 10ms\n    \
         server_addr: [http://127.0.0.1:{}, http://127.0.0.1:{}]\n",
        ports[0], ports[1]
    );
    let mut replicas = Vec::new();
    for port in ports {
        let mut config = test_config(&url);
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.providers = providers(&yaml);
        config.db_pool_size = 20;
        // This test drives the leader's loops itself, with its own term.
        config.leader_eligible = false;
        replicas.push(spawn_replica(config).await);
    }
    let ctx = leader(&replicas[0].config, 1).await;
    taskqueue::loops::catalog::take_office(&ctx).await.unwrap();

    let mut admin = replicas[0].admin().await;
    for (name, cpu, regions, costs) in [
        ("small", 2, vec!["r1", "r2"], vec![0.2f32, 0.1]),
        ("big", 16, vec!["r1"], vec![0.05]),
    ] {
        admin
            .create_flavor(pb::FlavorCreateRequest {
                provider_name: "fake".into(),
                config_name: "sim".into(),
                flavor_name: name.into(),
                cpu,
                memory: cpu as f32 * 4.0,
                disk: 50.0,
                region_names: regions.into_iter().map(String::from).collect(),
                costs,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut c = replicas[1].worker();
    let (wf, s1) = common::workflow_with_step(&mut c, "e2e", "one").await;
    let s2 = c
        .create_step(pb::StepRequest {
            name: "two".into(),
            workflow_id: Some(wf),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    c.create_recruiter(pb::Recruiter {
        step_id: s1,
        rank: 1,
        protofilter: "cpu>=2:cpu<=4".into(),
        concurrency: Some(4),
        prefetch: Some(2),
        max_workers: Some(15),
        rounds: 10,
        timeout: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    // Step two only recycles (its timeout keeps it from deploying).
    c.create_recruiter(pb::Recruiter {
        step_id: s2,
        rank: 1,
        protofilter: "cpu>=2:cpu<=4".into(),
        concurrency: Some(2),
        prefetch: Some(0),
        max_workers: Some(5),
        rounds: 1,
        timeout: 3600,
        ..Default::default()
    })
    .await
    .unwrap();

    let mut submitters = Vec::new();
    for part in 0..4 {
        let mut c = replicas[part % 2].worker();
        submitters.push(tokio::spawn(async move {
            for _ in 0..TASKS / 4 {
                c.submit_task(pb::TaskRequest {
                    step_id: Some(s1),
                    ..task("true")
                })
                .await
                .unwrap();
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }

    // The leader's loops, driven here (leadership itself is tested elsewhere).
    let env = Environment::for_replica(&replicas[0].config, replicas[0].addr, common::WORKER_TOKEN);
    let fleet = Providers::from_config(&replicas[0].config, &env).unwrap();
    let runner = Arc::new(JobRunner::new(
        fleet,
        JobSettings {
            lease: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_running: 10,
            backoff: Duration::from_millis(100),
        },
    ));
    let recruiter = Arc::new(Recruiter::new());
    let stop = Arc::new(AtomicBool::new(false));
    let max_cpu_r1 = Arc::new(AtomicI64::new(0));
    let max_workers = Arc::new(AtomicI64::new(0));
    let driver = {
        let (runner, recruiter, stop, ctx) =
            (runner.clone(), recruiter.clone(), stop.clone(), ctx.clone());
        let (max_cpu_r1, max_workers) = (max_cpu_r1.clone(), max_workers.clone());
        let db = postgres().await.connect(&url).await;
        tokio::spawn(async move {
            let mut tick = 0u64;
            while !stop.load(Ordering::SeqCst) {
                runner.run_once(&ctx).await.unwrap();
                if tick % 3 == 0 {
                    recruiter.run_once(&ctx).await.unwrap();
                }
                let cpu = count(
                    &db,
                    "SELECT COALESCE(sum(f.cpu), 0)::int8 FROM worker w JOIN flavor f USING (flavor_id)
                       JOIN region r USING (region_id) WHERE r.region_name = 'r1'",
                )
                .await;
                max_cpu_r1.fetch_max(cpu, Ordering::SeqCst);
                max_workers.fetch_max(
                    count(&db, "SELECT count(*) FROM worker").await,
                    Ordering::SeqCst,
                );
                tick += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let db = postgres().await.connect(&url).await;
    let started = std::time::Instant::now();
    let done = format!("SELECT count(*) FROM task WHERE step_id = {s1} AND status = 'S'");
    wait_until(
        Duration::from_secs(300),
        "every task of step one to succeed",
        || async { count(&db, &done).await == TASKS as i64 },
    )
    .await;
    eprintln!(
        "step one: {TASKS} tasks run by simulated workers in {:?}",
        started.elapsed()
    );
    let cloud = taskqueue::providers::fake::cloud(&cloud_id);
    assert_eq!(
        max_workers.load(Ordering::SeqCst),
        15,
        "the recruiter's maximum"
    );
    assert!(max_cpu_r1.load(Ordering::SeqCst) <= 40, "the r1 quota");
    assert_eq!(
        count(&db, "SELECT count(*) FROM worker w JOIN region r USING (region_id) WHERE r.region_name <> 'r1'").await,
        0,
        "no deployment where no quota is configured"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM worker w JOIN flavor f USING (flavor_id) WHERE f.flavor_name = 'big'").await, 0);
    assert_eq!(
        cloud.stats.vms_created.load(Ordering::SeqCst),
        15,
        "one machine per worker"
    );
    assert_eq!(cloud.workers.registered.load(Ordering::SeqCst), 15);
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(DISTINCT worker_id) FROM task WHERE step_id = {s1}")
        )
        .await,
        15,
        "every deployed worker ran tasks"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM task WHERE hidden OR status <> 'S'"
        )
        .await,
        0
    );

    // Step two gets work: idle workers of step one are recycled to it (max 5), none deployed.
    for _ in 0..50 {
        c.submit_task(pb::TaskRequest {
            step_id: Some(s2),
            ..task("true")
        })
        .await
        .unwrap();
    }
    let done2 = format!("SELECT count(*) FROM task WHERE step_id = {s2} AND status = 'S'");
    wait_until(
        Duration::from_secs(120),
        "every task of step two to succeed",
        || async { count(&db, &done2).await == 50 },
    )
    .await;
    let on_two = format!(
        "SELECT count(*) FROM worker WHERE step_id = {s2} AND concurrency = 2 AND prefetch = 0"
    );
    let recycled = count(&db, &on_two).await;
    assert!(
        (1..=5).contains(&recycled),
        "recycled workers on step two: {recycled}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM worker").await,
        15,
        "nothing new deployed"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM job WHERE action = 'C'").await,
        15
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM job WHERE status <> 'S'").await,
        0
    );
    stop.store(true, Ordering::SeqCst);
    driver.await.unwrap();

    // The queue is empty: the watchdog (idle timeout shortened to 1 s) schedules a delete job for
    // every idle worker, and the job runner stops each machine and removes its row.
    let mut idle = (*ctx.config).clone();
    idle.idle_timeout = Duration::from_secs(1);
    let idle_ctx = LeaderContext {
        db: ctx.db.clone(),
        config: Arc::new(idle),
        declared_providers: ctx.declared_providers.clone(),
        epoch: ctx.epoch,
    };
    wait_until(
        Duration::from_secs(120),
        "the watchdog and the job runner to delete every idle worker",
        || async {
            watchdog::run_once(&idle_ctx).await.unwrap();
            runner.run_once(&idle_ctx).await.unwrap();
            count(&db, "SELECT count(*) FROM worker").await == 0
        },
    )
    .await;
    runner.wait_idle().await;
    assert_eq!(cloud.vm_count(), 0, "every machine stopped");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM job WHERE action = 'D' AND status = 'S'"
        )
        .await,
        15,
        "one delete job per worker"
    );
    cloud.shutdown();
}

/// The fake provider at fleet scale: a thousand workers created through CreateWorker and the job
/// runner, each machine running a simulated worker that registers and pings over one channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_simulated_machines_deploy_register_and_ping() {
    const N: i32 = 1_000;
    let cloud_id = unique_cloud("scale");
    let yaml = format!(
        "fake:\n  scale:\n    cloud: {cloud_id}\n    regions: [r1]\n    auto_launch: true\n    ping_interval: 3s\n"
    );
    let (r, ctx) = fleet_support::fleet_replica_with(&yaml, |c| c.db_pool_size = 20).await;
    let mut admin = r.admin().await;
    let flavor_id = common::create_flavor(
        &mut admin,
        pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "scale".into(),
            flavor_name: "tiny".into(),
            cpu: 1,
            memory: 1.0,
            region_names: vec!["r1".into()],
            ..Default::default()
        },
    )
    .await;
    let region_id = common::region_id(&mut admin, "r1").await;
    let started = std::time::Instant::now();
    let created = admin
        .create_worker(pb::WorkerRequest {
            flavor_id,
            region_id,
            number: N,
            concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workers_details;
    assert_eq!(created.len(), N as usize);
    let runner = JobRunner::new(
        fleet_support::providers_of(&r),
        JobSettings {
            lease: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_running: 10,
            backoff: Duration::from_millis(100),
        },
    );
    let cloud = taskqueue::providers::fake::cloud(&cloud_id);
    wait_until(
        Duration::from_secs(240),
        "every machine to be created",
        || async {
            runner.run_once(&ctx).await.unwrap();
            cloud.stats.vms_created.load(Ordering::SeqCst) == N as u64
        },
    )
    .await;
    runner.wait_idle().await;
    let deployed = started.elapsed();
    wait_until(
        Duration::from_secs(120),
        "every simulated worker to register",
        || async { cloud.workers.registered.load(Ordering::SeqCst) == N as u64 },
    )
    .await;
    wait_until(Duration::from_secs(120), "two pings per worker", || async {
        cloud.workers.pings.load(Ordering::SeqCst) >= 2 * N as u64
    })
    .await;
    eprintln!(
        "{N} machines created through jobs in {deployed:?}; all registered and pinging after {:?}",
        started.elapsed()
    );
    let db = postgres().await.connect(r.database_url()).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM worker WHERE status = 'R'").await,
        N as i64
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM job WHERE status = 'S'").await,
        N as i64
    );
    assert_eq!(
        cloud.workers.errors.load(Ordering::SeqCst),
        0,
        "{:?}",
        cloud.workers.last_error.lock().unwrap()
    );
    cloud.shutdown();
}
