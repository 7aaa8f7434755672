//! The `local` provider: CreateWorker on `local.local` starts a real worker process on this host
//! (here a script standing in for `taskqueue worker`, given the same arguments and environment),
//! idempotently by name; DeleteWorker stops it and removes the row.

mod common;
mod fleet_support;

use std::path::Path;
use std::time::Duration;

use common::{WORKER_TOKEN, wait_until};
use fleet_support::{count, fleet_replica_with, providers_of, sql};
use taskqueue::loops::jobs::{JobRunner, JobSettings};
use taskqueue::proto as pb;
use taskqueue::providers::{FlavorSpec, VmSpec};

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

#[tokio::test]
async fn local_workers_are_real_processes_started_and_stopped_by_jobs() {
    common::postgres().await; // first: it clears this process' temporary folder
    let scripts = common::tempdir();
    let script = scripts.join("worker.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         out=\"$(dirname \"$0\")\"\n\
         echo \"$@\" > \"$out/$4.args\"\n\
         echo \"$TASKQUEUE_SERVER $TASKQUEUE_TOKEN\" > \"$out/$4.env\"\n\
         while true; do sleep 1; done\n",
    )
    .unwrap();
    let yaml = format!(
        "local:\n  local:\n    stop_grace: 2s\n    worker_command: [/bin/sh, {}, --server, '{{server}}', --name, '{{name}}', \
         --concurrency, '{{concurrency}}', --job, '{{job_id}}']\n",
        script.display()
    );
    let (r, ctx) = fleet_replica_with(&yaml, |_| {}).await;
    let workers_dir = r.config.data_dir.join("local-workers");
    let mut admin = r.admin().await;
    let flavor_id = admin
        .create_flavor(pb::FlavorCreateRequest {
            provider_name: "local".into(),
            config_name: "local".into(),
            flavor_name: "host".into(),
            cpu: 2,
            memory: 2.0,
            region_names: vec!["local".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .flavor_id;
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
    let name = created.worker_name.clone();

    let providers = providers_of(&r);
    let runner = JobRunner::new(
        providers.clone(),
        JobSettings {
            lease: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
            max_running: 10,
            backoff: Duration::from_millis(50),
        },
    );
    let c = r.worker();
    let job_status = |job_id: i32| {
        let mut c = c.clone();
        async move {
            c.get_job_statuses(pb::JobStatusRequest {
                job_ids: vec![job_id],
            })
            .await
            .unwrap()
            .into_inner()
            .statuses[0]
                .status
                .clone()
        }
    };
    wait_until(Duration::from_secs(30), "the create job", || async {
        runner.run_once(&ctx).await.unwrap();
        job_status(created.job_id).await == "S"
    })
    .await;
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
    wait_until(Duration::from_secs(30), "the delete job", || async {
        runner.run_once(&ctx).await.unwrap();
        job_status(job_id).await == "S"
    })
    .await;
    assert!(!alive(restarted), "the worker process is stopped");
    assert!(pid_of(&workers_dir, &name).is_none());
    assert_eq!(count(&sql(&r).await, "worker").await, 0);
    assert!(local.list("local").await.unwrap().is_empty());
    // Deleting again is a no-op.
    local.delete(&name, "local").await.unwrap();
}
