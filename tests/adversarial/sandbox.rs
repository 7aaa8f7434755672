//! A template script's scoped token (issue 13 item 3): while a run is in progress its script holds
//! a session of the runner (here an admin), limited to the RPCs the DSL needs. Every other RPC —
//! admin ones, secrets, workers' RPCs, deletions, template upload and runs, streams — answers
//! `PermissionDenied`, and so does updating another run; nothing changes in the database. At the
//! run's end the token no longer authenticates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use taskqueue::proto as pb;
use taskqueue::rpcs::{self, Access};
use tonic::Code;

use crate::common::{Replica, postgres, spawn_replica, tempdir, test_config};
use crate::every_rpc::call;
use crate::guard::{Guard, refused};

/// A template whose `--values` run hands its token and run id to the test through `exchange`,
/// then waits (at most a minute) for the test to create `exchange/go`.
pub fn spy_script(exchange: &Path) -> Vec<u8> {
    let x = exchange.display();
    format!(
        r#"#!/bin/sh
case "$1" in
  --metadata) echo '{{"name":"spy","version":"1"}}' ;;
  --params) echo '[]' ;;
  --values)
    printf '%s' "$TASKQUEUE_TEMPLATE_RUN_ID" > {x}/run
    printf '%s' "$TASKQUEUE_TOKEN" > {x}/token.part && mv {x}/token.part {x}/token
    i=0
    while [ ! -e {x}/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    ;;
esac
"#
    )
    .into_bytes()
}

/// A folder the script user can write to, outside the data dir.
pub fn exchange_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempdir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Starts a run of `template` by `client` and waits until its script published its token.
pub async fn start_spy_run(
    client: &taskqueue::client::Client,
    template: i32,
    exchange: &Path,
) -> (
    tokio::task::JoinHandle<Result<pb::TemplateRun, tonic::Status>>,
    String,
    i32,
) {
    let mut c = client.clone();
    let run = tokio::spawn(async move {
        c.run_template(pb::RunTemplateRequest {
            workflow_template_id: template,
            param_values_json: "{}".into(),
        })
        .await
        .map(|r| r.into_inner())
    });
    let token_file = exchange.join("token");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !token_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the script never published its token"
        );
        assert!(!run.is_finished(), "the run ended early: {:?}", run.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let run_id = std::fs::read_to_string(exchange.join("run"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(!token.is_empty(), "the script got no token");
    (run, token, run_id)
}

async fn sandbox_replica() -> Replica {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.template_interpreter = "sh".into();
    config.template_timeout = Duration::from_secs(120);
    spawn_replica(config).await
}

#[tokio::test]
async fn a_scripts_token_reaches_only_the_dsl_rpcs() {
    let r = sandbox_replica().await;
    let mut admin = r.admin().await;
    let exchange = exchange_dir();
    let template = admin
        .upload_template(pb::UploadTemplateRequest {
            script: spy_script(&exchange),
            force: false,
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_template_id
        .expect("uploaded");
    let (run, token, run_id) = start_spy_run(&admin, template, &exchange).await;
    assert_ne!(
        token,
        r.login("admin", crate::common::ADMIN_PASSWORD).await,
        "not a copy of the caller's session"
    );
    let guard = Guard::new(&r).await;

    // Every RPC outside the script list, called with an empty request.
    for rpc in rpcs::RPCS {
        if rpc.access == Access::Public || rpcs::script_may_call(rpc.name) {
            continue;
        }
        refused(
            call(r.channel(), rpc, Some(&token)).await,
            Code::PermissionDenied,
            &format!("{} with a template script's token", rpc.name),
        );
    }
    // The same refusals with requests that would succeed for the (admin) runner.
    let mut spy = r.with_token(&token);
    refused(
        spy.create_user(pb::CreateUserRequest {
            username: "backdoor".into(),
            password: "pw".into(),
            email: String::new(),
            is_admin: true,
        })
        .await,
        Code::PermissionDenied,
        "CreateUser (admin) with the script token of an admin's run",
    );
    refused(
        spy.list_users(()).await,
        Code::PermissionDenied,
        "ListUsers with a script token",
    );
    refused(
        spy.update_user(pb::User {
            user_id: 1,
            is_admin: Some(true),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "UpdateUser with a script token",
    );
    refused(
        spy.get_rclone_config(()).await,
        Code::PermissionDenied,
        "GetRcloneConfig with a script token",
    );
    refused(
        spy.run_template(pb::RunTemplateRequest {
            workflow_template_id: template,
            param_values_json: "{}".into(),
        })
        .await,
        Code::PermissionDenied,
        "RunTemplate (recursion) with a script token",
    );
    refused(
        spy.upload_template(pb::UploadTemplateRequest {
            script: spy_script(&exchange),
            force: true,
        })
        .await,
        Code::PermissionDenied,
        "UploadTemplate with force with a script token",
    );
    refused(
        spy.delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: run_id,
        })
        .await,
        Code::PermissionDenied,
        "DeleteTemplateRun of its own run with a script token",
    );
    for other in [run_id + 1, run_id + 1000, i32::MAX] {
        refused(
            spy.update_template_run(pb::UpdateTemplateRunRequest {
                template_run_id: other,
                workflow_id: None,
                error_message: Some("hijacked".into()),
            })
            .await,
            Code::PermissionDenied,
            "UpdateTemplateRun of another run with a script token",
        );
    }
    guard
        .assert_unchanged("requests with a template script's token")
        .await;

    // What the DSL needs works, as the runner.
    let wf = spy
        .create_workflow(pb::WorkflowRequest {
            name: "built-by-script".into(),
            ..Default::default()
        })
        .await
        .expect("CreateWorkflow with a script token")
        .into_inner()
        .workflow_id;
    spy.update_template_run(pb::UpdateTemplateRunRequest {
        template_run_id: run_id,
        workflow_id: Some(wf),
        error_message: None,
    })
    .await
    .expect("UpdateTemplateRun of its own run");

    std::fs::write(exchange.join("go"), b"").unwrap();
    let finished = run.await.unwrap().expect("the run ends");
    assert_eq!(finished.status, "S", "{finished:?}");
    refused(
        r.with_token(&token)
            .list_workflows(pb::WorkflowFilter::default())
            .await,
        Code::Unauthenticated,
        "a template script's token after its run ended",
    );
    let db = postgres().await.connect(r.database_url()).await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM scitq_user_session WHERE scoped", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "scoped sessions are deleted when their run ends");
}
