//! Provider jobs: CreateWorker (one transaction, quotas), the job runner with the fake provider
//! (claim, lease, retries, timeouts, at most ten at once, take-over after a runner died, fencing),
//! DeleteWorker and the job RPCs.

use crate::common;
use crate::fleet_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{register_worker, submit, task, wait_until, workflow_with_step};
use fleet_support::{count, fleet_replica_with, leader, providers_of, sql, unique_cloud};
use taskqueue::client::Client;
use taskqueue::loops::LeaderContext;
use taskqueue::loops::jobs::{JobRunner, JobSettings};
use taskqueue::proto as pb;
use taskqueue::providers::fake::{FakeCloud, cloud};
use tonic::Code;

/// A replica with provider `fake.test` (regions r1 with an 8-vCPU quota, r2 without), its flavors
/// small (2 vCPU) and big (8 vCPU) in both regions, and `extra` fake settings.
struct Fleet {
    replica: common::Replica,
    ctx: LeaderContext,
    cloud: Arc<FakeCloud>,
    small: i32,
    r1: i32,
    r2: i32,
}

async fn fleet(extra: &str) -> Fleet {
    fleet_with(extra, |_| {}).await
}

async fn fleet_with(extra: &str, tweak: impl FnOnce(&mut taskqueue::config::Config)) -> Fleet {
    let cloud_id = unique_cloud("jobs");
    let yaml = format!(
        "fake:\n  test:\n    cloud: {cloud_id}\n    regions: [r1, r2]\n    quotas: {{r1: {{cpu: 8}}}}\n{extra}\
         azure:\n  primary:\n    regions: [westeurope]\n"
    );
    // Flavor `here` is on the `local` provider, which is opt-in.
    let (replica, ctx) = fleet_replica_with(&yaml, |c| {
        c.local_provider = true;
        tweak(c)
    })
    .await;
    let mut admin = replica.admin().await;
    let flavor = |name: &str, cpu: i32, provider: &str, config: &str, region: &str| {
        let request = pb::FlavorCreateRequest {
            provider_name: provider.into(),
            config_name: config.into(),
            flavor_name: name.into(),
            cpu,
            memory: cpu as f32 * 4.0,
            disk: 20.0,
            region_names: if region == "both" {
                vec!["r1".into(), "r2".into()]
            } else {
                vec![region.into()]
            },
            ..Default::default()
        };
        let mut admin = admin.clone();
        async move {
            admin
                .create_flavor(request)
                .await
                .unwrap()
                .into_inner()
                .flavor_id
        }
    };
    let small = flavor("small", 2, "fake", "test", "both").await;
    flavor("big", 8, "fake", "test", "both").await;
    flavor("vm", 4, "azure", "primary", "westeurope").await;
    flavor("here", 4, "local", "local", "local").await;
    let regions = admin.list_regions(()).await.unwrap().into_inner().regions;
    let region = |name: &str| {
        regions
            .iter()
            .find(|r| r.region_name == name)
            .unwrap()
            .region_id
    };
    Fleet {
        r1: region("r1"),
        r2: region("r2"),
        cloud: cloud(&cloud_id),
        replica,
        ctx,
        small,
    }
}

impl Fleet {
    fn runner(&self, settings: JobSettings) -> JobRunner {
        JobRunner::new(providers_of(&self.replica), settings)
    }

    async fn flavor_id(&self, name: &str) -> i32 {
        sql(&self.replica)
            .await
            .query_one(
                "SELECT flavor_id FROM flavor WHERE flavor_name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0)
    }
}

fn settings() -> JobSettings {
    JobSettings {
        lease: Duration::from_millis(600),
        timeout: Duration::from_secs(10),
        max_running: 10,
        backoff: Duration::from_millis(50),
    }
}

fn request(flavor_id: i32, region_id: i32, number: i32) -> pb::WorkerRequest {
    pb::WorkerRequest {
        provider_id: 0,
        flavor_id,
        region_id,
        number,
        concurrency: 2,
        prefetch: 1,
        step_id: None,
    }
}

async fn create(
    c: &mut Client,
    flavor_id: i32,
    region_id: i32,
    number: i32,
) -> Vec<pb::WorkerDetails> {
    c.create_worker(request(flavor_id, region_id, number))
        .await
        .unwrap()
        .into_inner()
        .workers_details
}

async fn job(c: &mut Client, job_id: i32) -> pb::Job {
    c.list_jobs(pb::ListJobsRequest {
        limit: Some(100_000),
        offset: None,
    })
    .await
    .unwrap()
    .into_inner()
    .jobs
    .into_iter()
    .find(|j| j.job_id == job_id)
    .unwrap_or_else(|| panic!("job {job_id} not listed"))
}

/// Runs the runner until every listed job has one of `statuses`.
async fn drive(
    runner: &JobRunner,
    ctx: &LeaderContext,
    c: &mut Client,
    ids: &[i32],
    statuses: &str,
) {
    wait_until(Duration::from_secs(60), "jobs to finish", || {
        let mut c = c.clone();
        async move {
            runner.run_once(ctx).await.unwrap();
            let st = c
                .get_job_statuses(pb::JobStatusRequest {
                    job_ids: ids.to_vec(),
                })
                .await
                .unwrap()
                .into_inner()
                .statuses;
            st.iter().all(|s| statuses.contains(s.status.as_str()))
        }
    })
    .await;
    runner.wait_idle().await;
}

#[tokio::test]
async fn create_worker_inserts_workers_and_create_jobs() {
    let f = fleet("").await;
    let mut c = f.replica.worker();
    let (_, step) = workflow_with_step(&mut c, "wf", "s1").await;
    let mut req = request(f.small, f.r1, 3);
    req.step_id = Some(step);
    let created = c
        .create_worker(req)
        .await
        .unwrap()
        .into_inner()
        .workers_details;
    assert_eq!(created.len(), 3);
    for w in &created {
        assert_eq!(w.worker_name, format!("taskqueueworker{}", w.worker_id));
    }
    let db = sql(&f.replica).await;
    let rows = db
        .query(
            "SELECT w.status, w.step_id, w.concurrency, w.prefetch, w.is_permanent, j.action, j.status, j.retry
               FROM worker w JOIN job j USING (worker_id) ORDER BY w.worker_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r.get::<_, String>(0), "I");
        assert_eq!(r.get::<_, Option<i32>>(1), Some(step));
        assert_eq!((r.get::<_, i32>(2), r.get::<_, i32>(3)), (2, 1));
        assert!(!r.get::<_, bool>(4));
        assert_eq!(
            (r.get::<_, String>(5), r.get::<_, String>(6)),
            ("C".into(), "P".into())
        );
        assert_eq!(r.get::<_, i32>(7), 3);
    }
    let statuses = c
        .get_job_statuses(pb::JobStatusRequest {
            job_ids: vec![created[0].job_id, 999_999],
        })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(statuses[0].status, "P");
    assert_eq!(statuses[1].status, "unknown");
    let listed = c
        .list_jobs(pb::ListJobsRequest {
            limit: Some(2),
            offset: Some(1),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let ids: Vec<i32> = listed.iter().map(|j| j.job_id).collect();
    assert_eq!(
        ids,
        vec![created[1].job_id, created[0].job_id],
        "newest first, paged"
    );
    assert!(listed[0].created_at.ends_with('Z'));
    let all = c
        .list_jobs(pb::ListJobsRequest {
            limit: Some(0),
            offset: Some(-5),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(all.len(), 1, "limit < 1 means 1");

    // A region without quota is free for a person's CreateWorker.
    assert_eq!(create(&mut c, f.small, f.r2, 10).await.len(), 10);
}

#[tokio::test]
async fn create_worker_bad_input_changes_nothing() {
    let f = fleet("").await;
    let mut c = f.replica.plain_user("alice").await;
    let db = sql(&f.replica).await;
    let big = f.flavor_id("big").await;
    let azure_vm = f.flavor_id("vm").await;
    create(&mut c, f.small, f.r1, 2).await; // 4 of the 8 vCPUs of r1
    let cases: Vec<(pb::WorkerRequest, Code)> = vec![
        (request(f.small, f.r1, 0), Code::InvalidArgument),
        (request(f.small, f.r1, -3), Code::InvalidArgument),
        (request(0, f.r1, 1), Code::InvalidArgument),
        (request(f.small, 0, 1), Code::InvalidArgument),
        (
            pb::WorkerRequest {
                concurrency: -1,
                ..request(f.small, f.r1, 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::WorkerRequest {
                step_id: Some(-2),
                ..request(f.small, f.r1, 1)
            },
            Code::InvalidArgument,
        ),
        (request(424_242, f.r1, 1), Code::NotFound),
        (request(f.small, 424_242, 1), Code::NotFound),
        (
            pb::WorkerRequest {
                step_id: Some(424_242),
                ..request(f.small, f.r1, 1)
            },
            Code::NotFound,
        ),
        (request(azure_vm, f.r1, 1), Code::InvalidArgument),
        (
            pb::WorkerRequest {
                provider_id: 424_242,
                ..request(f.small, f.r1, 1)
            },
            Code::InvalidArgument,
        ),
        (request(big, f.r1, 1), Code::ResourceExhausted),
        (request(f.small, f.r1, 3), Code::ResourceExhausted),
    ];
    for (req, code) in cases {
        let e = c.create_worker(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {}", e.message());
        if code == Code::ResourceExhausted {
            assert!(e.message().contains("quota"), "{}", e.message());
        }
    }
    assert_eq!(count(&db, "worker").await, 2);
    assert_eq!(count(&db, "job").await, 2);
    // Exactly up to the quota is fine.
    assert_eq!(create(&mut c, f.small, f.r1, 2).await.len(), 2);
}

#[tokio::test]
async fn concurrent_create_workers_never_exceed_a_quota() {
    let f = fleet("").await;
    let c = f.replica.worker();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        let (small, r1) = (f.small, f.r1);
        calls.push(tokio::spawn(async move {
            c.create_worker(request(small, r1, 1)).await
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
    }
    assert_eq!(ok, 4, "8 vCPUs of quota, 2 per worker");
}

#[tokio::test]
async fn the_runner_creates_each_machine_once_and_records_its_address() {
    let f = fleet("").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r1, 3).await;
    let ids: Vec<i32> = created.iter().map(|w| w.job_id).collect();
    let runner = f.runner(settings());
    drive(&runner, &f.ctx, &mut c, &ids, "S").await;
    for w in &created {
        let j = job(&mut c, w.job_id).await;
        assert_eq!(j.progression, 100);
        assert!(j.log.contains("created at 10."), "{}", j.log);
    }
    let db = sql(&f.replica).await;
    let with_ip: i64 = db
        .query_one(
            "SELECT count(*) FROM worker WHERE ipv4 IS NOT NULL AND status = 'I'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_ip, 3);
    assert_eq!(f.cloud.stats.vms_created.load(Ordering::SeqCst), 3);
    assert_eq!(f.cloud.vm_count(), 3);
    assert_eq!(
        runner.run_once(&f.ctx).await.unwrap(),
        0,
        "nothing left to claim"
    );
    let metrics = f.replica.metrics().await;
    assert!(
        metrics.contains("taskqueue_jobs_total{action=\"C\",status=\"S\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("taskqueue_job_duration_seconds_bucket{action=\"C\""));
}

#[tokio::test]
async fn failed_attempts_are_retried_then_the_job_fails() {
    let f = fleet("    create_failure_rate: 1.0\n").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r1, 1).await;
    let runner = f.runner(settings());
    drive(&runner, &f.ctx, &mut c, &[created[0].job_id], "F").await;
    let j = job(&mut c, created[0].job_id).await;
    assert_eq!(j.retry, 0);
    assert_eq!(j.log.matches("retrying").count(), 3, "{}", j.log);
    let last = j.log.lines().last().unwrap();
    assert!(
        last.ends_with("Z failed: simulated failure creating taskqueueworker1"),
        "{}",
        j.log
    );
    assert_eq!(f.cloud.stats.create_calls.load(Ordering::SeqCst), 4);
    assert_eq!(f.cloud.vm_count(), 0);
}

#[tokio::test]
async fn timeouts_are_retried_without_a_second_machine() {
    let f = fleet("    create_delay: 700ms\n").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r1, 1).await;
    let runner = f.runner(JobSettings {
        timeout: Duration::from_millis(300),
        ..settings()
    });
    drive(&runner, &f.ctx, &mut c, &[created[0].job_id], "SF").await;
    let j = job(&mut c, created[0].job_id).await;
    assert_eq!(j.status, "S", "{}", j.log);
    assert!(j.log.contains("timed out"), "{}", j.log);
    assert_eq!(f.cloud.stats.vms_created.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn at_most_ten_provider_calls_run_at_once() {
    let f = fleet("    create_delay: 300ms\n").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r2, 25).await;
    let ids: Vec<i32> = created.iter().map(|w| w.job_id).collect();
    let runner = f.runner(settings());
    assert_eq!(runner.run_once(&f.ctx).await.unwrap(), 10);
    assert_eq!(runner.run_once(&f.ctx).await.unwrap(), 0, "no free slot");
    assert_eq!(runner.running(), 10);
    drive(&runner, &f.ctx, &mut c, &ids, "S").await;
    assert_eq!(f.cloud.stats.max_in_flight.load(Ordering::SeqCst), 10);
    assert_eq!(f.cloud.stats.vms_created.load(Ordering::SeqCst), 25);
}

#[tokio::test]
async fn a_job_whose_runner_died_is_taken_over_and_completes_once() {
    let f = fleet("    create_delay: 1500ms\n").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r1, 1).await;
    let job_id = created[0].job_id;
    let dying = f.runner(settings());
    assert_eq!(dying.run_once(&f.ctx).await.unwrap(), 1);
    wait_until(
        Duration::from_secs(10),
        "the create call to start",
        || async { f.cloud.stats.create_calls.load(Ordering::SeqCst) == 1 },
    )
    .await;
    drop(dying); // the replica dies mid-call: its tasks stop, the lease is no longer renewed

    let ctx2 = leader(&f.replica.config, 2).await;
    let next = f.runner(settings());
    assert_eq!(
        next.run_once(&ctx2).await.unwrap(),
        0,
        "the lease has not expired yet"
    );
    drive(&next, &ctx2, &mut c, &[job_id], "S").await;
    let j = job(&mut c, job_id).await;
    assert!(j.log.contains("taken over by"), "{}", j.log);
    assert_eq!(
        j.log.matches("created at").count(),
        1,
        "completed once: {}",
        j.log
    );
    assert_eq!(f.cloud.stats.create_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        f.cloud.stats.vms_created.load(Ordering::SeqCst),
        1,
        "one machine"
    );
    let attempt: i32 = sql(&f.replica)
        .await
        .query_one("SELECT attempt FROM job WHERE job_id = $1", &[&job_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempt, 2);
}

#[tokio::test]
async fn a_deposed_runner_records_nothing() {
    let f = fleet("    create_delay: 1200ms\n").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r1, 1).await;
    let job_id = created[0].job_id;
    let old = f.runner(settings());
    assert_eq!(old.run_once(&f.ctx).await.unwrap(), 1);
    let ctx2 = leader(&f.replica.config, 2).await; // a new term starts: the old leader is fenced
    old.wait_idle().await; // its lease renewal is refused: it stops without recording anything
    let statuses = c
        .get_job_statuses(pb::JobStatusRequest {
            job_ids: vec![job_id],
        })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(statuses[0].status, "R");
    assert!(
        old.run_once(&f.ctx).await.is_err(),
        "the old term cannot claim"
    );
    let new = f.runner(settings());
    drive(&new, &ctx2, &mut c, &[job_id], "S").await;
    let j = job(&mut c, job_id).await;
    assert_eq!(j.log.matches("created at").count(), 1, "{}", j.log);
    assert_eq!(f.cloud.stats.vms_created.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jobs_of_providers_not_built_in_fail_clearly() {
    let f = fleet("").await;
    let mut c = f.replica.worker();
    let vm = f.flavor_id("vm").await;
    let regions = c.list_regions(()).await.unwrap().into_inner().regions;
    let westeurope = regions
        .iter()
        .find(|r| r.region_name == "westeurope")
        .unwrap()
        .region_id;
    let created = create(&mut c, vm, westeurope, 1).await;
    let runner = f.runner(settings());
    drive(&runner, &f.ctx, &mut c, &[created[0].job_id], "F").await;
    let j = job(&mut c, created[0].job_id).await;
    assert!(
        j.log
            .contains("azure.primary is not built into this server"),
        "{}",
        j.log
    );
    assert!(!j.log.contains("retrying"), "not retried: {}", j.log);
}

#[tokio::test]
async fn delete_worker_deletes_the_machine_then_the_row_and_retries_its_tasks() {
    let f = fleet("").await;
    let mut c = f.replica.worker();
    let (_, step) = workflow_with_step(&mut c, "wf", "s").await;
    let created = create(&mut c, f.small, f.r1, 1).await;
    let runner = f.runner(settings());
    drive(&runner, &f.ctx, &mut c, &[created[0].job_id], "S").await;
    // The machine's worker registers and gets a task.
    let worker_id = c
        .register_worker(pb::WorkerInfo {
            name: created[0].worker_name.clone(),
            concurrency: Some(1),
            provider: Some("fake.test".into()),
            region: Some("r1".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    assert_eq!(worker_id, created[0].worker_id);
    c.update_worker(pb::WorkerUpdateRequest {
        worker_id,
        step_id: Some(step),
        ..Default::default()
    })
    .await
    .unwrap();
    let task_id = submit(
        &mut c,
        pb::TaskRequest {
            step_id: Some(step),
            ..task("true")
        },
    )
    .await;
    let pinged = common::ping(&mut c, worker_id).await;
    assert_eq!(pinged.tasks.len(), 1);

    let job_id = c
        .delete_worker(pb::WorkerDeletion {
            worker_id,
            undeployed: None,
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert!(job_id > 0);
    let again = c
        .delete_worker(pb::WorkerDeletion {
            worker_id,
            undeployed: None,
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(again, job_id, "one delete job per worker");
    let db = sql(&f.replica).await;
    let status: String = db
        .query_one(
            "SELECT status FROM worker WHERE worker_id = $1",
            &[&worker_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "D");
    let retried = db
        .query_one(
            "SELECT t.status, t.hidden, c.status, c.retry_count FROM task t
               JOIN task c ON c.previous_task_id = t.task_id WHERE t.task_id = $1",
            &[&task_id],
        )
        .await
        .unwrap();
    assert_eq!(retried.get::<_, String>(0), "F");
    assert!(retried.get::<_, bool>(1));
    assert_eq!(retried.get::<_, String>(2), "P");

    drive(&runner, &f.ctx, &mut c, &[job_id], "S").await;
    assert_eq!(count(&db, "worker").await, 0);
    assert_eq!(f.cloud.vm_count(), 0);
    assert!(job(&mut c, job_id).await.log.contains("deleted"));
}

#[tokio::test]
async fn delete_worker_rules_and_bad_input() {
    let f = fleet("    create_delay: 60s\n").await;
    // An admin: users may not register workers, nor delete self-registered ones.
    let mut c = f.replica.admin().await;
    let db = sql(&f.replica).await;
    let delete = |worker_id: i32, undeployed: Option<bool>| pb::WorkerDeletion {
        worker_id,
        undeployed,
    };

    assert_eq!(
        c.delete_worker(delete(0, None)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.delete_worker(delete(424_242, None))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.delete_worker(delete(424_242, Some(true)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A permanent worker is deleted only when offline or installing.
    let permanent = c
        .register_worker(pb::WorkerInfo {
            name: "perm".into(),
            concurrency: Some(1),
            is_permanent: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let e = c.delete_worker(delete(permanent, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("permanent"), "{}", e.message());
    db.execute(
        "UPDATE worker SET status = 'O' WHERE worker_id = $1",
        &[&permanent],
    )
    .await
    .unwrap();
    assert_eq!(
        c.delete_worker(delete(permanent, None))
            .await
            .unwrap()
            .into_inner()
            .job_id,
        0
    );

    // A hand-registered worker has no region nor flavor: still deletable (the original could not).
    let manual = register_worker(&mut c, "manual", 1, 0, None).await;
    let job_id = c
        .delete_worker(delete(manual, None))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert!(job_id > 0);
    let runner = f.runner(settings());
    drive(&runner, &f.ctx, &mut c, &[job_id], "S").await;

    // Deleting a worker whose machine is still being created cancels the create job.
    let created = create(&mut c, f.small, f.r1, 1).await;
    assert_eq!(runner.run_once(&f.ctx).await.unwrap(), 1);
    let job_id = c
        .delete_worker(delete(created[0].worker_id, None))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    drive(&runner, &f.ctx, &mut c, &[created[0].job_id, job_id], "SX").await;
    assert_eq!(job(&mut c, created[0].job_id).await.status, "X");
    assert_eq!(job(&mut c, job_id).await.status, "S");
    assert_eq!(f.cloud.vm_count(), 0);

    // undeployed = true: the row goes at once.
    let created = create(&mut c, f.small, f.r1, 1).await;
    let id = c
        .delete_worker(delete(created[0].worker_id, Some(true)))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(id, 0);
    assert_eq!(count(&db, "worker").await, 0);
    assert_eq!(job(&mut c, created[0].job_id).await.status, "X");
}

#[tokio::test]
async fn job_rpcs_and_their_bad_input() {
    let f = fleet("").await;
    let mut c = f.replica.worker();
    let created = create(&mut c, f.small, f.r2, 2).await;
    let job_id = created[0].job_id;
    let update =
        |status: Option<&str>, log: Option<&str>, progression: Option<i32>| pb::JobUpdate {
            job_id,
            status: status.map(Into::into),
            append_log: log.map(Into::into),
            progression,
        };
    c.update_job(update(None, Some("  downloading client  "), Some(40)))
        .await
        .unwrap();
    c.update_job(update(Some("R"), Some("   "), Some(150)))
        .await
        .unwrap();
    c.update_job(update(Some(""), Some("installed"), Some(-5)))
        .await
        .unwrap();
    let j = job(&mut c, job_id).await;
    assert_eq!((j.status.as_str(), j.progression), ("R", 0));
    let lines: Vec<&str> = j.log.lines().collect();
    assert_eq!(lines.len(), 2, "{}", j.log);
    assert!(lines[0].ends_with("Z downloading client"), "{}", lines[0]);
    assert!(lines[1].ends_with("Z installed"));

    let e = c
        .update_job(update(Some("Q"), None, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_job(update(Some("SS"), None, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_job(pb::JobUpdate {
            job_id: 0,
            ..update(None, None, None)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_job(pb::JobUpdate {
            job_id: 424_242,
            ..update(Some("S"), None, None)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        job(&mut c, job_id).await.status,
        "R",
        "unchanged by the bad updates"
    );

    assert_eq!(
        c.delete_job(pb::JobId { job_id: 0 })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.delete_job(pb::JobId { job_id: 424_242 })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    c.delete_job(pb::JobId { job_id }).await.unwrap();
    let st = c
        .get_job_statuses(pb::JobStatusRequest {
            job_ids: vec![job_id, created[1].job_id],
        })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(
        (st[0].status.as_str(), st[1].status.as_str()),
        ("unknown", "P")
    );
    let db = sql(&f.replica).await;
    assert_eq!(count(&db, "job").await, 1);
    assert_eq!(
        count(&db, "worker").await,
        2,
        "deleting a job leaves its worker"
    );
}

/// With leadership on (the default), nothing is driven by the test: the elected replica syncs the
/// catalogue, runs the create job, and after DeleteWorker the delete job removes machine and row.
#[tokio::test]
async fn the_elected_leader_runs_catalog_sync_and_provider_jobs_by_itself() {
    let cloud_id = unique_cloud("leader");
    let url = common::postgres().await.fresh_db().await;
    let mut config = common::test_config(&url);
    config.providers = fleet_support::providers(&format!(
        "fake:\n  test:\n    cloud: {cloud_id}\n    regions: [r1]\n"
    ));
    let replica = common::spawn_replica(config).await;
    let mut admin = replica.admin().await;
    let region = |admin: &Client| {
        let mut admin = admin.clone();
        async move {
            let regions = admin.list_regions(()).await.unwrap().into_inner().regions;
            regions
                .into_iter()
                .find(|r| r.region_name == "r1")
                .map(|r| r.region_id)
        }
    };
    wait_until(
        Duration::from_secs(60),
        "the leader to sync the catalogue",
        || async { region(&admin).await.is_some() },
    )
    .await;
    let r1 = region(&admin).await.unwrap();
    let flavor_id = common::create_flavor(
        &mut admin,
        pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "test".into(),
            flavor_name: "small".into(),
            cpu: 2,
            memory: 8.0,
            disk: 20.0,
            region_names: vec!["r1".into()],
            ..Default::default()
        },
    )
    .await;
    let created = create(&mut admin, flavor_id, r1, 1).await;
    let watcher = admin.clone();
    let status_of_job = move |job_id: i32| {
        let mut admin = watcher.clone();
        async move {
            admin
                .get_job_statuses(pb::JobStatusRequest {
                    job_ids: vec![job_id],
                })
                .await
                .unwrap()
                .into_inner()
                .statuses
                .first()
                .map(|s| s.status.clone())
        }
    };
    wait_until(Duration::from_secs(60), "the create job to succeed", || {
        let f = status_of_job(created[0].job_id);
        async move { f.await.as_deref() == Some("S") }
    })
    .await;
    assert_eq!(cloud(&cloud_id).vm_count(), 1);

    let delete_job = admin
        .delete_worker(pb::WorkerDeletion {
            worker_id: created[0].worker_id,
            undeployed: None,
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    wait_until(Duration::from_secs(60), "the delete job to succeed", || {
        let f = status_of_job(delete_job);
        async move { f.await.as_deref() == Some("S") }
    })
    .await;
    assert_eq!(cloud(&cloud_id).vm_count(), 0);
    let rows = count(
        &sql(&replica).await,
        &format!("worker WHERE worker_id = {}", created[0].worker_id),
    )
    .await;
    assert_eq!(rows, 0, "the delete job removes the row");
}
