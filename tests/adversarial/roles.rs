//! The role × RPC matrix: every one of the 59 RPCs (from `api::rpcs::RPCS`, streams included)
//! called as anonymous, with a forged token, as a plain user, as another user, with the worker
//! token and as an admin; each refusal asserts its exact status and that nothing changed.
//! Generic empty requests reach the role rules of the auth layer; typed requests naming another
//! user's objects, or machines of a provider without a quota, reach the ownership and machines
//! rules of the handlers.

use std::time::Duration;

use taskqueue::api::rpcs::{self, Access};
use taskqueue::client::Client;
use taskqueue::proto as pb;
use tonic::Code;

use crate::common::{
    self, ADMIN_USER, Replica, WORKER_TOKEN, postgres, submit, task, wait_until, workflow_with_step,
};
use crate::every_rpc::call;
use crate::fleet_support::fleet_replica_with;
use crate::guard::{Guard, refused};

/// `fake.open` has no quota: its machines are an admin's.
const PROVIDERS: &str = "
fake:
  open:
    regions: [r1]
";

const TEMPLATE: &str = "#!/bin/sh\ncase \"$1\" in\n  --metadata) echo '{\"name\":\"alices\",\"version\":\"1.0\",\"description\":\"x\"}' ;;\n  --params) echo '[]' ;;\n  *) exit 0 ;;\nesac\n";

/// A non-admin user; returns their session token.
async fn user(r: &Replica, name: &str) -> String {
    r.admin()
        .await
        .create_user(pb::CreateUserRequest {
            username: name.into(),
            password: "user-secret".into(),
            email: format!("{name}@example.org"),
            is_admin: false,
        })
        .await
        .unwrap();
    r.login(name, "user-secret").await
}

/// What alice owns (and a worker of the quota-less provider).
struct Objects {
    workflow: i32,
    step: i32,
    task: i32,
    run: i32,
    worker: i32,
    flavor: i32,
    region: i32,
}

async fn setup(r: &Replica) -> Objects {
    let mut admin = r.admin().await;
    wait_until(Duration::from_secs(30), "fake.open is synchronised", || {
        let mut admin = admin.clone();
        async move {
            let list = admin.list_providers(()).await.unwrap().into_inner();
            list.providers.iter().any(|p| p.config_name == "open")
        }
    })
    .await;
    admin
        .create_flavor(pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "open".into(),
            flavor_name: "open-small".into(),
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
        .find(|f| f.flavor_name == "open-small")
        .unwrap();
    let (flavor, region) = (f.flavor_id, f.region_id);
    let created = admin
        .create_worker(pb::WorkerRequest {
            provider_id: 0,
            flavor_id: flavor,
            region_id: region,
            number: 1,
            concurrency: 1,
            prefetch: 0,
            step_id: None,
        })
        .await
        .unwrap()
        .into_inner();

    let mut alice = r.with_token(&user(r, "alice").await);
    let (workflow, step) = workflow_with_step(&mut alice, "alice-wf", "s").await;
    let task = submit(
        &mut alice,
        pb::TaskRequest {
            step_id: Some(step),
            ..task("true")
        },
    )
    .await;
    let up = alice
        .upload_template(pb::UploadTemplateRequest {
            script: TEMPLATE.as_bytes().to_vec(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(up.success, "{up:?}");
    let run = alice
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: up.workflow_template_id.unwrap(),
            param_values_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .template_run_id;
    // Alice may not create a recruiter here (fake.open has no quota): one is recorded as hers.
    let db = postgres().await.connect(r.database_url()).await;
    db.execute(
        "INSERT INTO recruiter (step_id, rank, protofilter, owner_id)
         SELECT $1, 1, 'cpu>=2', user_id FROM scitq_user WHERE username = 'alice'",
        &[&step],
    )
    .await
    .unwrap();
    Objects {
        workflow,
        step,
        task,
        run,
        worker: created.workers_details[0].worker_id,
        flavor,
        region,
    }
}

/// The expected refusal of an empty request to `rpc` by a role, `None` when the role rule lets
/// it through (the handler then judges the request).
fn layer_refusal(access: Access, role: &str) -> Option<Code> {
    match (role, access) {
        ("anonymous", Access::Public) => Some(Code::InvalidArgument),
        ("forged", Access::Public) => None,
        ("anonymous" | "forged", _) => Some(Code::Unauthenticated),
        ("user", Access::Admin | Access::Secrets | Access::Worker | Access::LogWrite) => {
            Some(Code::PermissionDenied)
        }
        ("worker token", Access::Admin) => Some(Code::PermissionDenied),
        _ => None,
    }
}

#[tokio::test]
async fn every_role_on_every_rpc() {
    // No leader loops run (they would change the database under the guard); the catalog is
    // synchronised by the helper.
    let (r, _ctx) = fleet_replica_with(PROVIDERS, |c| c.template_interpreter = "sh".into()).await;
    let objects = setup(&r).await;
    let bob_token = user(&r, "bob").await;
    let admin_token = r.login(ADMIN_USER, common::ADMIN_PASSWORD).await;
    let mut guard = Guard::new(&r).await;

    // Role rules, every RPC, generic empty requests.
    let forged = "0".repeat(64);
    let roles: [(&str, Option<&str>); 4] = [
        ("anonymous", None),
        ("forged", Some(&forged)),
        ("user", Some(&bob_token)),
        ("worker token", Some(WORKER_TOKEN)),
    ];
    for (role, token) in roles {
        for rpc in rpcs::RPCS {
            let Some(code) = layer_refusal(rpc.access, role) else {
                continue;
            };
            refused(
                call(r.channel(), rpc, token).await,
                code,
                &format!("{} as {role}", rpc.name),
            );
        }
    }
    guard.assert_unchanged("the role rules of every RPC").await;

    // Admins pass every role rule (worker RPCs included: an admin may act for a worker). An
    // empty request is invalid for all but ReportWorkerEvent, which would record an event.
    let worker_rpcs = rpcs::RPCS
        .iter()
        .filter(|r| r.access == Access::Worker && r.name != "ReportWorkerEvent");
    for rpc in worker_rpcs {
        if let Err(e) = call(r.channel(), rpc, Some(&admin_token)).await {
            assert!(
                !matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{} as an admin: {e:?}",
                rpc.name
            );
        }
    }
    guard.rebase().await;

    // Ownership: alice's objects, as bob and as the worker token.
    let mut bob = r.with_token(&bob_token);
    let mut worker = r.worker();
    for (who, c) in [
        ("another user", &mut bob),
        ("the worker token", &mut worker),
    ] {
        owned_refusals(c, who, &objects).await;
    }
    // Machines of a provider without a quota, as a plain user.
    machine_refusals(&mut bob, &objects).await;
    guard
        .assert_unchanged("ownership and machines refusals")
        .await;
}

async fn owned_refusals(c: &mut Client, who: &str, o: &Objects) {
    let denied = Code::PermissionDenied;
    refused(
        c.delete_workflow(pb::WorkflowId {
            workflow_id: o.workflow,
        })
        .await,
        denied,
        &format!("DeleteWorkflow of alice's workflow as {who}"),
    );
    refused(
        c.delete_step(pb::StepId { step_id: o.step }).await,
        denied,
        &format!("DeleteStep of alice's step as {who}"),
    );
    refused(
        c.retry_task(pb::RetryTaskRequest {
            task_id: o.task,
            retry: Some(3),
        })
        .await,
        denied,
        &format!("RetryTask of alice's task as {who}"),
    );
    refused(
        c.update_template_run(pb::UpdateTemplateRunRequest {
            template_run_id: o.run,
            workflow_id: None,
            error_message: Some("hijacked".into()),
        })
        .await,
        denied,
        &format!("UpdateTemplateRun of alice's run as {who}"),
    );
    refused(
        c.delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: o.run,
        })
        .await,
        denied,
        &format!("DeleteTemplateRun of alice's run as {who}"),
    );
    refused(
        c.upload_template(pb::UploadTemplateRequest {
            script: TEMPLATE.replace("exit 0", "echo pwned").into_bytes(),
            force: true,
        })
        .await,
        denied,
        &format!("UploadTemplate force over alice's version as {who}"),
    );
    refused(
        c.update_recruiter(pb::RecruiterUpdate {
            step_id: o.step,
            rank: 1,
            rounds: Some(9),
            ..Default::default()
        })
        .await,
        denied,
        &format!("UpdateRecruiter of alice's recruiter as {who}"),
    );
    refused(
        c.delete_recruiter(pb::RecruiterId {
            step_id: o.step,
            rank: 1,
        })
        .await,
        denied,
        &format!("DeleteRecruiter of alice's recruiter as {who}"),
    );
}

async fn machine_refusals(c: &mut Client, o: &Objects) {
    let denied = Code::PermissionDenied;
    refused(
        c.create_worker(pb::WorkerRequest {
            provider_id: 0,
            flavor_id: o.flavor,
            region_id: o.region,
            number: 1000,
            concurrency: 1,
            prefetch: 0,
            step_id: None,
        })
        .await,
        denied,
        "CreateWorker without a quota as a user",
    );
    refused(
        c.update_worker(pb::WorkerUpdateRequest {
            worker_id: o.worker,
            concurrency: Some(4),
            ..Default::default()
        })
        .await,
        denied,
        "UpdateWorker concurrency as a user",
    );
    refused(
        c.update_worker_status(pb::WorkerStatus {
            worker_id: o.worker,
            status: "P".into(),
        })
        .await,
        denied,
        "UpdateWorkerStatus as a user",
    );
    refused(
        c.delete_worker(pb::WorkerDeletion {
            worker_id: o.worker,
            undeployed: Some(true),
        })
        .await,
        denied,
        "DeleteWorker without a quota as a user",
    );
    refused(
        c.create_recruiter(pb::Recruiter {
            step_id: o.step,
            rank: 5,
            protofilter: "cpu>=1".into(),
            concurrency: Some(1),
            prefetch: Some(0),
            rounds: 1,
            ..Default::default()
        })
        .await,
        denied,
        "CreateRecruiter with a provider without a quota as a user",
    );
}
