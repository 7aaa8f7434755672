//! Roles and ownership: a user's workflows, steps, tasks, recruiters, templates and template runs
//! are refused to other users and to the worker token, allowed to their owner and to admins; rows
//! without an owner are an admin's; users never act as workers; e-mail addresses of other users go
//! to admins only; providers without a quota are an admin's; the `local` provider is opt-in.

use crate::common;
use crate::fleet_support;

use std::time::Duration;

use common::{postgres, register_worker, spawn_replica, task, test_config, workflow_with_step};
use fleet_support::fleet_replica;
use taskqueue::client::Client;
use taskqueue::proto as pb;
use tonic::Code;

#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected PermissionDenied, got {v:?}"),
        Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}"),
    }
}

#[track_caller]
fn not_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    if let Err(e) = result {
        assert_ne!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
}

fn recruiter(step_id: i32, rank: i32) -> pb::Recruiter {
    pb::Recruiter {
        step_id,
        rank,
        protofilter: "cpu>=2".into(),
        concurrency: Some(1),
        prefetch: Some(0),
        rounds: 1,
        ..Default::default()
    }
}

fn recruiter_update(step_id: i32, rank: i32) -> pb::RecruiterUpdate {
    pb::RecruiterUpdate {
        step_id,
        rank,
        rounds: Some(2),
        ..Default::default()
    }
}

async fn submit(c: &mut Client, step: i32) -> i32 {
    let request = pb::TaskRequest {
        step_id: Some(step),
        ..task("true")
    };
    common::submit(c, request).await
}

#[tokio::test]
async fn workflows_steps_tasks_and_recruiters_belong_to_their_creator() {
    let r = common::replica().await;
    let mut admin = r.admin().await;
    let mut alice = r.plain_user("alice").await;
    let mut bob = r.plain_user("bob").await;
    let mut worker = r.worker();

    let (wf, step) = workflow_with_step(&mut alice, "alice-wf", "s1").await;
    let task_id = submit(&mut alice, step).await;
    alice.create_recruiter(recruiter(step, 1)).await.unwrap();

    for who in [&mut bob, &mut worker] {
        denied(
            who.delete_workflow(pb::WorkflowId { workflow_id: wf })
                .await,
            "DeleteWorkflow of another's workflow",
        );
        denied(
            who.delete_step(pb::StepId { step_id: step }).await,
            "DeleteStep",
        );
        denied(
            who.retry_task(pb::RetryTaskRequest {
                task_id,
                retry: None,
            })
            .await,
            "RetryTask",
        );
        denied(
            who.update_recruiter(recruiter_update(step, 1)).await,
            "UpdateRecruiter",
        );
        denied(
            who.delete_recruiter(pb::RecruiterId {
                step_id: step,
                rank: 1,
            })
            .await,
            "DeleteRecruiter",
        );
        denied(
            who.create_recruiter(recruiter(step, 2)).await,
            "CreateRecruiter on another's step",
        );
    }
    // The owner and admins pass the ownership rule (a pending task is not retried: not a refusal).
    not_denied(
        alice
            .retry_task(pb::RetryTaskRequest {
                task_id,
                retry: None,
            })
            .await,
        "the owner retries",
    );
    alice
        .update_recruiter(recruiter_update(step, 1))
        .await
        .unwrap();
    admin
        .update_recruiter(recruiter_update(step, 1))
        .await
        .unwrap();
    admin
        .delete_recruiter(pb::RecruiterId {
            step_id: step,
            rank: 1,
        })
        .await
        .unwrap();
    let (wf2, step2) = workflow_with_step(&mut alice, "alice-wf2", "s2").await;
    admin
        .delete_step(pb::StepId { step_id: step2 })
        .await
        .unwrap();
    admin
        .delete_workflow(pb::WorkflowId { workflow_id: wf2 })
        .await
        .unwrap();
    alice
        .delete_step(pb::StepId { step_id: step })
        .await
        .unwrap();
    alice
        .delete_workflow(pb::WorkflowId { workflow_id: wf })
        .await
        .unwrap();

    // The worker token owns what it creates, and users may not touch it.
    let (wwf, wstep) = workflow_with_step(&mut worker, "worker-wf", "s").await;
    let wtask = submit(&mut worker, wstep).await;
    denied(
        alice
            .delete_workflow(pb::WorkflowId { workflow_id: wwf })
            .await,
        "a user deletes the worker token's workflow",
    );
    denied(
        alice
            .retry_task(pb::RetryTaskRequest {
                task_id: wtask,
                retry: None,
            })
            .await,
        "a user retries the worker token's task",
    );
    worker
        .delete_workflow(pb::WorkflowId { workflow_id: wwf })
        .await
        .unwrap();

    // Rows without an owner (from before owners were recorded) are an admin's.
    let (lwf, _) = workflow_with_step(&mut alice, "legacy", "s").await;
    let db = postgres().await.connect(r.database_url()).await;
    db.execute(
        "UPDATE workflow SET owner_id = NULL WHERE workflow_id = $1",
        &[&lwf],
    )
    .await
    .unwrap();
    denied(
        alice
            .delete_workflow(pb::WorkflowId { workflow_id: lwf })
            .await,
        "an unowned workflow, as a user",
    );
    denied(
        worker
            .delete_workflow(pb::WorkflowId { workflow_id: lwf })
            .await,
        "an unowned workflow, as the worker token",
    );
    admin
        .delete_workflow(pb::WorkflowId { workflow_id: lwf })
        .await
        .unwrap();
}

#[tokio::test]
async fn users_do_not_act_as_workers_admins_and_the_worker_token_do() {
    let r = common::replica().await;
    let mut alice = r.plain_user("alice").await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let (_, step) = workflow_with_step(&mut alice, "wf", "s").await;
    let task_id = submit(&mut alice, step).await;
    denied(
        alice
            .register_worker(pb::WorkerInfo {
                name: "fake-worker".into(),
                concurrency: Some(1),
                ..Default::default()
            })
            .await,
        "RegisterWorker as a user",
    );
    let id = register_worker(&mut worker, "w1", 1, 0, Some(step)).await;
    denied(
        alice
            .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
                worker_id: id,
                stats: None,
            })
            .await,
        "a ping as a user",
    );
    denied(
        alice
            .update_task_status(pb::TaskStatusUpdate {
                task_id,
                new_status: "S".into(),
                duration: None,
                free_retry: None,
            })
            .await,
        "UpdateTaskStatus as a user",
    );
    denied(
        alice
            .send_task_logs(futures::stream::iter(vec![pb::TaskLog {
                task_id,
                log_type: "stdout".into(),
                log_text: "forged".into(),
            }]))
            .await,
        "SendTaskLogs as a user",
    );
    register_worker(&mut admin, "w2", 1, 0, None).await;
    common::ping(&mut worker, id).await;
}

#[tokio::test]
async fn other_users_email_addresses_go_to_admins_only() {
    let r = common::replica().await;
    let mut alice = r.plain_user("alice").await;
    let _bob = r.plain_user("bob").await;
    let email = |list: &pb::UsersList, name: &str| {
        list.users
            .iter()
            .find(|u| u.username.as_deref() == Some(name))
            .and_then(|u| u.email.clone())
            .unwrap_or_default()
    };
    let seen = alice.list_users(()).await.unwrap().into_inner();
    assert_eq!(email(&seen, "alice"), "alice@example.org");
    assert_eq!(email(&seen, "bob"), "");
    assert_eq!(seen.users.len(), 3, "ListUsers stays open: {seen:?}");
    let seen = r.admin().await.list_users(()).await.unwrap().into_inner();
    assert_eq!(email(&seen, "bob"), "bob@example.org");
    let seen = r.worker().list_users(()).await.unwrap().into_inner();
    assert_eq!(email(&seen, "bob"), "");
}

/// A template script (interpreter `sh`) that describes itself and succeeds without calling back.
fn script(description: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\ncase \"$1\" in\n  --metadata) echo '{{\"name\":\"shared\",\"version\":\"1.0\",\"description\":\"{description}\"}}' ;;\n  --params) echo '[]' ;;\n  --values) exit 0 ;;\nesac\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn templates_are_replaced_only_by_their_uploader_or_an_admin_and_runs_are_their_runners() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.template_interpreter = "sh".into();
    config.template_timeout = Duration::from_secs(30);
    let r = spawn_replica(config).await;
    let mut alice = r.plain_user("alice").await;
    let mut bob = r.plain_user("bob").await;
    let mut admin = r.admin().await;
    let upload = |script: Vec<u8>| pb::UploadTemplateRequest {
        script,
        force: true,
    };
    let up = alice
        .upload_template(upload(script("by alice")))
        .await
        .unwrap()
        .into_inner();
    assert!(up.success, "{up:?}");
    let template_id = up.workflow_template_id.unwrap();
    denied(
        bob.upload_template(upload(script("by bob"))).await,
        "bob replaces alice's template",
    );
    denied(
        r.worker()
            .upload_template(upload(script("by the worker token")))
            .await,
        "the worker token replaces alice's template",
    );
    let again = alice
        .upload_template(upload(script("by alice again")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.success, "{again:?}");

    let run = alice
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: template_id,
            param_values_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let run_id = run.template_run_id;
    let note = |id| pb::UpdateTemplateRunRequest {
        template_run_id: id,
        workflow_id: None,
        error_message: Some("noted".into()),
    };
    denied(
        bob.update_template_run(note(run_id)).await,
        "UpdateTemplateRun of another's run",
    );
    denied(
        bob.delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: run_id,
        })
        .await,
        "DeleteTemplateRun of another's run",
    );
    alice.update_template_run(note(run_id)).await.unwrap();
    // Bob may run alice's template: the run is his.
    let bobs = bob
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: template_id,
            param_values_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    bob.delete_template_run(pb::DeleteTemplateRunRequest {
        template_run_id: bobs.template_run_id,
    })
    .await
    .unwrap();
    admin
        .delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: run_id,
        })
        .await
        .unwrap();
    let replaced = admin
        .upload_template(upload(script("by an admin")))
        .await
        .unwrap()
        .into_inner();
    assert!(replaced.success, "{replaced:?}");
}

#[tokio::test]
async fn the_local_provider_is_opt_in() {
    let r = common::replica().await;
    let mut admin = r.admin().await;
    let mut worker = r.worker();
    let providers = admin.list_providers(()).await.unwrap().into_inner();
    assert!(
        !providers
            .providers
            .iter()
            .any(|p| p.provider_name == "local"),
        "{providers:?}"
    );
    // A self-registered worker's hardware becomes a flavor of `local`; it cannot be deployed.
    let id = register_worker(&mut worker, "laptop", 1, 0, None).await;
    worker
        .register_specifications(pb::ResourceSpec {
            worker_id: id.to_string(),
            cpu: 4,
            mem: 8.0,
            disk: 50.0,
        })
        .await
        .unwrap();
    let db = postgres().await.connect(r.database_url()).await;
    let row = db
        .query_one(
            "SELECT flavor_id, region_id FROM worker WHERE worker_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (flavor_id, region_id): (Option<i32>, Option<i32>) = (row.get(0), row.get(1));
    let err = admin
        .create_worker(pb::WorkerRequest {
            provider_id: 0,
            flavor_id: flavor_id.unwrap(),
            region_id: region_id.unwrap(),
            number: 1,
            concurrency: 1,
            prefetch: 0,
            step_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--local-provider"), "{err:?}");

    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.local_provider = true;
    let enabled = spawn_replica(config).await;
    let mut admin = enabled.admin().await;
    common::wait_until(Duration::from_secs(30), "local is listed", || {
        let mut admin = admin.clone();
        async move {
            let list = admin.list_providers(()).await.unwrap().into_inner();
            list.providers.iter().any(|p| p.provider_name == "local")
        }
    })
    .await;
    let _ = &mut admin;
}

const PROVIDERS: &str = "
fake:
  bounded:
    regions: [r1]
    quotas: {r1: {cpu: 64}}
  open:
    regions: [r1]
";

async fn flavor(admin: &mut Client, config: &str) -> (i32, i32) {
    admin
        .create_flavor(pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: config.into(),
            flavor_name: format!("{config}-small"),
            cpu: 2,
            memory: 4.0,
            disk: 10.0,
            region_names: vec!["r1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let flavors = admin
        .list_flavors(pb::ListFlavorsRequest {
            limit: 100,
            filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .flavors;
    let f = flavors
        .iter()
        .find(|f| f.flavor_name == format!("{config}-small"))
        .unwrap();
    (f.flavor_id, f.region_id)
}

#[tokio::test]
async fn machines_of_providers_without_a_quota_are_an_admins() {
    let (r, _ctx) = fleet_replica(PROVIDERS).await;
    let mut admin = r.admin().await;
    let mut alice = r.plain_user("alice").await;
    let bounded = flavor(&mut admin, "bounded").await;
    let open = flavor(&mut admin, "open").await;
    let request = |(flavor_id, region_id): (i32, i32)| pb::WorkerRequest {
        provider_id: 0,
        flavor_id,
        region_id,
        number: 1,
        concurrency: 1,
        prefetch: 0,
        step_id: None,
    };
    denied(
        alice.create_worker(request(open)).await,
        "CreateWorker without a quota",
    );
    alice.create_worker(request(bounded)).await.unwrap();
    let created = admin
        .create_worker(request(open))
        .await
        .unwrap()
        .into_inner();
    let worker_id = created.workers_details[0].worker_id;
    denied(
        alice
            .update_worker(pb::WorkerUpdateRequest {
                worker_id,
                concurrency: Some(4),
                ..Default::default()
            })
            .await,
        "UpdateWorker concurrency of an admin's worker",
    );
    denied(
        alice
            .update_worker_status(pb::WorkerStatus {
                worker_id,
                status: "P".into(),
            })
            .await,
        "UpdateWorkerStatus",
    );
    denied(
        alice
            .delete_worker(pb::WorkerDeletion {
                worker_id,
                undeployed: None,
            })
            .await,
        "DeleteWorker",
    );
    // Recruiters deploy on any offered provider: `open` has no quota.
    let (_, step) = workflow_with_step(&mut alice, "wf", "s").await;
    denied(
        alice.create_recruiter(recruiter(step, 1)).await,
        "CreateRecruiter with a provider without a quota",
    );
    admin.create_recruiter(recruiter(step, 1)).await.unwrap();
    admin
        .update_worker_status(pb::WorkerStatus {
            worker_id,
            status: "P".into(),
        })
        .await
        .unwrap();
}
