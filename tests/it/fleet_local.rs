//! The `local` provider: CreateWorker on `local.local` starts a real worker process on this host
//! (`taskqueue worker`, through a script that records its arguments and environment first),
//! idempotently by name; its create job succeeds only once the worker registered, and fails with
//! the process' output when it exits at once; DeleteWorker stops it and removes the row.

use crate::common;
use crate::fleet_support;

use std::path::Path;
use std::time::Duration;

use common::{WORKER_TOKEN, wait_until};
use fleet_support::{count, fleet_replica_with, providers_of, sql};
use taskqueue::domain::catalog::FlavorSpec;
use taskqueue::loops::jobs::{JobRunner, JobSettings};
use taskqueue::proto as pb;
use taskqueue::providers::VmSpec;

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // A zombie (exited, not yet reaped) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn pid_of(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The real worker binary.
const TASKQUEUE: &str = env!("CARGO_BIN_EXE_taskqueue");

/// CreateWorker of one worker (concurrency 3) on `local.local`, on a replica whose `local`
/// provider has `worker_command: [<command>]`.
async fn local_worker(
    command: &str,
) -> (
    common::Replica,
    taskqueue::loops::LeaderContext,
    pb::WorkerDetails,
) {
    let yaml = format!(
        "local:\n  local:\n    stop_grace: 5s\n    register_timeout: 15s\n    worker_command: [{command}]\n"
    );
    let (r, ctx) = fleet_replica_with(&yaml, |_| {}).await;
    let mut admin = r.admin().await;
    let flavor_id = common::create_flavor(
        &mut admin,
        pb::FlavorCreateRequest {
            provider_name: "local".into(),
            config_name: "local".into(),
            flavor_name: "host".into(),
            cpu: 2,
            memory: 2.0,
            region_names: vec!["local".into()],
            ..Default::default()
        },
    )
    .await;
    let region_id = admin.list_regions(()).await.unwrap().into_inner().regions[0].region_id;
    let created = admin
        .create_worker(pb::WorkerRequest {
            flavor_id,
            region_id,
            number: 1,
            concurrency: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workers_details
        .remove(0);
    (r, ctx, created)
}

fn runner(r: &common::Replica) -> JobRunner {
    JobRunner::new(
        providers_of(r),
        JobSettings {
            lease: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_running: 10,
            backoff: Duration::from_millis(50),
        },
    )
}

async fn job_status(r: &common::Replica, job_id: i32) -> String {
    r.worker()
        .get_job_statuses(pb::JobStatusRequest {
            job_ids: vec![job_id],
        })
        .await
        .unwrap()
        .into_inner()
        .statuses[0]
        .status
        .clone()
}

/// Runs the job runner until job `job_id` ends (S or F); returns its status and log.
async fn run_job(
    r: &common::Replica,
    ctx: &taskqueue::loops::LeaderContext,
    runner: &JobRunner,
    job_id: i32,
) -> (String, String) {
    wait_until(Duration::from_secs(60), "the job to end", || async {
        runner.run_once(ctx).await.unwrap();
        runner.wait_idle().await;
        matches!(job_status(r, job_id).await.as_str(), "S" | "F")
    })
    .await;
    let row = sql(r)
        .await
        .query_one("SELECT status, log FROM job WHERE job_id = $1", &[&job_id])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn local_workers_are_real_processes_started_and_stopped_by_jobs() {
    common::postgres().await; // first: it clears this process' temporary folder
    let scripts = common::tempdir();
    let script = scripts.join("worker.sh");
    // Records what it was given, then becomes the real worker (same pid, same arguments).
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             out=\"$(dirname \"$0\")\"\n\
             echo \"$@\" > \"$out/$4.args\"\n\
             echo \"$TASKQUEUE_SERVER $TASKQUEUE_TOKEN\" > \"$out/$4.env\"\n\
             exec {TASKQUEUE} worker \"$@\" --store \"$out/store-$4\" --executor shell \
             --builtin-link \"$out/builtin\" --ping-interval 1s\n"
        ),
    )
    .unwrap();
    let (r, ctx, created) = local_worker(&format!(
        "/bin/sh, {}, --server, '{{server}}', --name, '{{name}}', \
         --concurrency, '{{concurrency}}', --job, '{{job_id}}'",
        script.display()
    ))
    .await;
    let workers_dir = r.config.data_dir.join("local-workers");
    let name = created.worker_name.clone();
    let providers = providers_of(&r);
    let runner = runner(&r);
    let c = r.worker();
    let (status, log) = run_job(&r, &ctx, &runner, created.job_id).await;
    let output = || std::fs::read_to_string(workers_dir.join(format!("{name}.log")));
    assert_eq!(status, "S", "{log}; the worker's output: {:?}", output());
    // The job succeeded because the worker registered: its row is R, and it said so in the log.
    let db = sql(&r).await;
    let worker_status: String = db
        .query_one(
            "SELECT status FROM worker WHERE worker_id = $1",
            &[&created.worker_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(worker_status, "R");
    assert!(
        log.contains(&format!(
            "worker {name} registered (worker id {})",
            created.worker_id
        )),
        "{log}"
    );
    // The real worker wrote its helpers into its store and linked them where it was told.
    let link = std::fs::read_link(scripts.join("builtin")).unwrap();
    assert_eq!(
        link,
        scripts
            .join(format!("store-{name}"))
            .canonicalize()
            .unwrap()
            .join("builtin")
    );
    assert!(link.join("std.sh").is_file());
    let pid = pid_of(&workers_dir, &name).unwrap_or_else(|| {
        let log = std::fs::read_to_string(workers_dir.join(format!("{name}.log")));
        panic!("no pid file; the worker's output: {log:?}")
    });
    assert!(alive(pid));
    wait_until(
        Duration::from_secs(10),
        "the worker to write its arguments",
        || async { scripts.join(format!("{name}.env")).exists() },
    )
    .await;
    let args = std::fs::read_to_string(scripts.join(format!("{name}.args"))).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "--server http://{} --name {name} --concurrency 3 --job {}",
            r.addr, created.job_id
        )
    );
    let env = std::fs::read_to_string(scripts.join(format!("{name}.env"))).unwrap();
    assert_eq!(env.trim(), format!("http://{} {WORKER_TOKEN}", r.addr));
    assert!(
        !args.contains(WORKER_TOKEN),
        "the token is not on the command line"
    );

    // Idempotent by name: a second create finds the running process.
    let local = providers.get("local.local").unwrap();
    let spec = VmSpec {
        worker_name: name.clone(),
        region: "local".into(),
        provider: "local.local".into(),
        flavor: FlavorSpec::default(),
        concurrency: 3,
        ..VmSpec::default()
    };
    let vm = local.create(&spec).await.unwrap();
    assert_eq!(vm.ipv4.unwrap().to_string(), "127.0.0.1");
    assert_eq!(pid_of(&workers_dir, &name), Some(pid));
    assert_eq!(local.list("local").await.unwrap().len(), 1);

    // Restart: a new process with the same command.
    local.restart(&name, "local").await.unwrap();
    let restarted = pid_of(&workers_dir, &name).unwrap();
    assert_ne!(restarted, pid);
    assert!(!alive(pid) && alive(restarted));

    let job_id = c
        .clone()
        .delete_worker(pb::WorkerDeletion {
            worker_id: created.worker_id,
            undeployed: None,
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(run_job(&r, &ctx, &runner, job_id).await.0, "S");
    assert!(!alive(restarted), "the worker process is stopped");
    assert!(pid_of(&workers_dir, &name).is_none());
    assert_eq!(count(&sql(&r).await, "worker").await, 0);
    assert!(local.list("local").await.unwrap().is_empty());
    // Deleting again is a no-op.
    local.delete(&name, "local").await.unwrap();
}

#[tokio::test]
async fn a_worker_command_that_exits_at_once_fails_its_create_job_with_its_output() {
    common::postgres().await;
    let (r, ctx, created) = local_worker(&format!(
        "{TASKQUEUE}, worker, --server, '{{server}}', --name, '{{name}}', --no-such-flag"
    ))
    .await;
    let runner = runner(&r);
    let (status, log) = run_job(&r, &ctx, &runner, created.job_id).await;
    assert_eq!(status, "F", "{log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.contains(&format!(
            "failed: local worker {} exited before it registered (exit status: ",
            created.worker_name
        )) && last.contains("--no-such-flag"),
        "{log}"
    );
    // Retried as any failed create (the original's 3 retries), then F.
    assert_eq!(
        log.matches("exited before it registered").count(),
        4,
        "{log}"
    );
    assert_eq!(count(&sql(&r).await, "worker").await, 1);
}
