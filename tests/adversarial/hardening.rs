//! Hardening (issue 13 items 7 and 9): text filters over the cap, megabyte credentials, bursts of
//! wrong passwords. Every refusal is answered before any query or password hash runs.

use taskqueue::proto as pb;
use tonic::Code;

use crate::common::replica;
use crate::guard::{Guard, refused};

fn list(command_filter: String) -> pb::ListTasksRequest {
    pb::ListTasksRequest {
        command_filter: Some(command_filter),
        ..Default::default()
    }
}

#[tokio::test]
async fn long_text_filters() {
    let r = replica().await;
    let mut user = r.plain_user("mallory").await;
    let guard = Guard::new(&r).await;
    for filter in [
        "x".repeat(257),
        "%".repeat(257),
        "é".repeat(129),
        "a%_".repeat(1000),
        "y".repeat(300_000),
    ] {
        refused(
            user.list_tasks(list(filter)).await,
            Code::InvalidArgument,
            "ListTasks with a command_filter over 256 bytes",
        );
    }
    for class in ["c".repeat(257), "c".repeat(100_000)] {
        refused(
            user.list_worker_events(pb::WorkerEventFilter {
                class: Some(class),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "ListWorkerEvents with a class filter over 256 bytes",
        );
    }
    refused(
        user.prune_worker_events(pb::WorkerEventPruneFilter {
            class: Some("c".repeat(1000)),
            dry_run: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "PruneWorkerEvents with a class filter over 256 bytes",
    );
    for filter in [
        format!("flavor~{}", "%".repeat(300)),
        format!("region={}", "r".repeat(300)),
        format!("provider~{}", "_%".repeat(200)),
        format!("gpu={}", "g".repeat(257)),
    ] {
        refused(
            user.list_flavors(pb::ListFlavorsRequest { limit: 0, filter })
                .await,
            Code::InvalidArgument,
            "ListFlavors with a protofilter text value over 256 bytes",
        );
    }
    guard.assert_unchanged("long text filters").await;
}

#[tokio::test]
async fn oversized_credentials() {
    let r = replica().await;
    r.plain_user("mallory").await;
    let mut admin = r.admin().await;
    let guard = Guard::new(&r).await;
    let mut anon = r.anonymous();
    let mib = "p".repeat(1 << 20);
    for (username, password) in [
        ("mallory".to_string(), mib.clone()),
        ("mallory".to_string(), "p".repeat(1025)),
        ("mallory".to_string(), "é".repeat(513)),
        (mib.clone(), "pw".to_string()),
        ("u".repeat(1025), "pw".to_string()),
    ] {
        refused(
            anon.login(pb::LoginRequest { username, password }).await,
            Code::InvalidArgument,
            "Login with credentials over 1 KiB",
        );
    }
    for (old, new, username) in [
        (mib.clone(), "n".to_string(), "mallory".to_string()),
        (
            "user-secret".to_string(),
            mib.clone(),
            "mallory".to_string(),
        ),
        ("user-secret".to_string(), "n".to_string(), mib.clone()),
    ] {
        refused(
            anon.change_password(pb::ChangePasswordRequest {
                username,
                old_password: old,
                new_password: new,
            })
            .await,
            Code::InvalidArgument,
            "ChangePassword with credentials over 1 KiB",
        );
    }
    refused(
        admin
            .create_user(pb::CreateUserRequest {
                username: "big".into(),
                password: mib.clone(),
                email: String::new(),
                is_admin: false,
            })
            .await,
        Code::InvalidArgument,
        "CreateUser with a 1 MiB password",
    );
    refused(
        anon.login(pb::LoginRequest {
            username: String::new(),
            password: "pw".into(),
        })
        .await,
        Code::InvalidArgument,
        "Login without a username",
    );
    guard.assert_unchanged("oversized credentials").await;
}

#[tokio::test]
async fn wrong_password_bursts() {
    let r = replica().await;
    r.plain_user("mallory").await;
    let guard = Guard::new(&r).await;
    let mut anon = r.anonymous();
    let login = |password: &str| pb::LoginRequest {
        username: "mallory".into(),
        password: password.into(),
    };
    for i in 0..5 {
        refused(
            anon.login(login(&format!("guess-{i}"))).await,
            Code::Unauthenticated,
            "Login with a wrong password",
        );
    }
    for i in 5..9 {
        let status = refused(
            anon.login(login(&format!("guess-{i}"))).await,
            Code::ResourceExhausted,
            "Login with a wrong password after 5 failures (back-off)",
        );
        assert!(
            status.message().contains("retry in"),
            "{}",
            status.message()
        );
    }
    refused(
        anon.login(login("user-secret")).await,
        Code::ResourceExhausted,
        "Login with the right password while in back-off",
    );
    refused(
        anon.change_password(pb::ChangePasswordRequest {
            username: "mallory".into(),
            old_password: "user-secret".into(),
            new_password: "taken-over".into(),
        })
        .await,
        Code::ResourceExhausted,
        "ChangePassword while the user is in back-off",
    );
    // Unknown users are throttled the same way (no hint that they do not exist).
    for i in 0..5 {
        refused(
            anon.login(pb::LoginRequest {
                username: "ghost".into(),
                password: format!("guess-{i}"),
            })
            .await,
            Code::Unauthenticated,
            "Login of an unknown user",
        );
    }
    refused(
        anon.login(pb::LoginRequest {
            username: "ghost".into(),
            password: "again".into(),
        })
        .await,
        Code::ResourceExhausted,
        "Login of an unknown user after 5 failures",
    );
    guard.assert_unchanged("wrong-password bursts").await;
}
