//! Refusals that hold since the first issues: missing or bad tokens, plain users on admin RPCs,
//! unknown ids. They also check the guard itself (a success or a database change fails a case).

use taskqueue::proto as pb;
use tonic::Code;

use crate::common::{replica, workflow_with_step};
use crate::guard::{Guard, refused};

#[tokio::test]
async fn tokens_and_admin_rpcs() {
    let r = replica().await;
    let mut user = r.plain_user("mallory").await;
    let mut admin = r.admin().await;
    workflow_with_step(&mut admin, "wf", "st").await;
    let guard = Guard::new(&r).await;

    let mut anon = r.anonymous();
    refused(
        anon.list_tasks(pb::ListTasksRequest::default()).await,
        Code::Unauthenticated,
        "ListTasks without a token",
    );
    refused(
        anon.delete_workflow(pb::WorkflowId { workflow_id: 1 })
            .await,
        Code::Unauthenticated,
        "DeleteWorkflow without a token",
    );
    for token in ["nope", "Bearer", &"x".repeat(4096)] {
        let mut bad = r.with_token(token);
        refused(
            bad.list_workflows(pb::WorkflowFilter::default()).await,
            Code::Unauthenticated,
            "ListWorkflows with a bad token",
        );
    }
    refused(
        user.create_user(pb::CreateUserRequest {
            username: "eve".into(),
            password: "pw".into(),
            email: String::new(),
            is_admin: true,
        })
        .await,
        Code::PermissionDenied,
        "CreateUser as a plain user",
    );
    refused(
        user.delete_user(pb::UserId { user_id: 1 }).await,
        Code::PermissionDenied,
        "DeleteUser as a plain user",
    );
    refused(
        user.get_rclone_config(()).await,
        Code::PermissionDenied,
        "GetRcloneConfig as a plain user",
    );
    refused(
        user.get_docker_credentials(()).await,
        Code::PermissionDenied,
        "GetDockerCredentials as a plain user",
    );
    guard.assert_unchanged("token and admin refusals").await;
}

#[tokio::test]
async fn unknown_ids() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let guard = Guard::new(&r).await;
    for id in [0, -1, i32::MAX, i32::MIN] {
        refused(
            admin
                .delete_workflow(pb::WorkflowId { workflow_id: id })
                .await,
            Code::NotFound,
            "DeleteWorkflow of an unknown id",
        );
        refused(
            admin
                .retry_task(pb::RetryTaskRequest {
                    task_id: id,
                    retry: None,
                })
                .await,
            Code::NotFound,
            "RetryTask of an unknown id",
        );
    }
    guard.assert_unchanged("unknown ids").await;
}

/// The guard notices a change: a success under it must fail the check.
#[tokio::test]
#[should_panic(expected = "the database changed")]
async fn guard_sees_changes() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let guard = Guard::new(&r).await;
    workflow_with_step(&mut admin, "wf2", "st").await;
    guard.assert_unchanged("a real change").await;
}
