//! Foundation: authentication of every RPC, users and sessions, health, reflection, metrics,
//! migrations under concurrency, TLS.

use crate::common;

use std::time::Duration;

use common::{
    ADMIN_PASSWORD, ADMIN_USER, WORKER_TOKEN, postgres, replica, spawn_replica, test_config,
    wait_until,
};
use taskqueue::proto as pb;
use taskqueue::rpcs::{Access, Kind, RPCS, Rpc};
use tonic::Code;
use tonic::transport::Channel;

/// Calls `rpc` with an empty request (valid for every proto3 message) and returns the status code.
async fn call_raw(channel: Channel, rpc: &Rpc, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        http::uri::PathAndQuery::from_maybe_shared(format!("/taskqueue.TaskQueue/{}", rpc.name))
            .unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut request = tonic::Request::new(());
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let code_of = |r: Result<(), tonic::Status>| r.err().map(|s| s.code()).unwrap_or(Code::Ok);
    match rpc.kind {
        Kind::Unary => code_of(grpc.unary(request, path, codec).await.map(|_| ())),
        Kind::ClientStream => {
            let request = request.map(|()| tokio_stream::empty::<()>());
            code_of(
                grpc.client_streaming(request, path, codec)
                    .await
                    .map(|_| ()),
            )
        }
        Kind::ServerStream => match grpc.server_streaming(request, path, codec).await {
            Err(s) => s.code(),
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(r) => code_of(r.map(|_| ())),
                    Err(_) => Code::Ok, // a live stream that waits for data: it was admitted
                }
            }
        },
    }
}

#[tokio::test]
async fn every_rpc_requires_a_valid_token_and_the_right_role() {
    let r = replica().await;
    let _plain = r.plain_user("alice").await;
    let alice = r.login("alice", "user-secret").await;
    let admin = r.login(ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(RPCS.len(), 59);
    for rpc in RPCS {
        let public = rpc.access == Access::Public;
        for (who, token) in [
            ("no token", None),
            ("bad token", Some("not-a-valid-token")),
            ("empty bearer", Some("")),
        ] {
            let code = call_raw(r.channel(), rpc, token).await;
            if public {
                assert_ne!(code, Code::Unauthenticated, "{} with {who}", rpc.name);
            } else {
                assert_eq!(code, Code::Unauthenticated, "{} with {who}", rpc.name);
            }
        }
        let as_alice = call_raw(r.channel(), rpc, Some(&alice)).await;
        let as_worker = call_raw(r.channel(), rpc, Some(WORKER_TOKEN)).await;
        let as_admin = call_raw(r.channel(), rpc, Some(&admin)).await;
        assert_ne!(as_admin, Code::Unauthenticated, "{} as admin", rpc.name);
        assert_ne!(as_admin, Code::PermissionDenied, "{} as admin", rpc.name);
        match rpc.access {
            Access::Admin => {
                assert_eq!(
                    as_alice,
                    Code::PermissionDenied,
                    "{} as a plain user",
                    rpc.name
                );
                assert_eq!(
                    as_worker,
                    Code::PermissionDenied,
                    "{} with the worker token",
                    rpc.name
                );
            }
            Access::Secrets => {
                assert_eq!(
                    as_alice,
                    Code::PermissionDenied,
                    "{} as a plain user",
                    rpc.name
                );
                assert_ne!(
                    as_worker,
                    Code::PermissionDenied,
                    "{} with the worker token",
                    rpc.name
                );
            }
            // Worker RPCs: the worker token (and admins), never a plain user.
            Access::Worker | Access::LogWrite => {
                assert_eq!(
                    as_alice,
                    Code::PermissionDenied,
                    "{} as a plain user",
                    rpc.name
                );
                assert_ne!(
                    as_worker,
                    Code::PermissionDenied,
                    "{} with the worker token",
                    rpc.name
                );
            }
            // Per-object rules (owner, provider quota) are decided by the handler on a real
            // object: tests/adversarial/roles.rs checks them; here only the token is checked.
            Access::Owned | Access::Machines | Access::OwnedMachines => {
                for (who, code) in [("a plain user", as_alice), ("the worker token", as_worker)] {
                    assert_ne!(code, Code::Unauthenticated, "{} as {who}", rpc.name);
                }
            }
            _ => {
                for (who, code) in [("a plain user", as_alice), ("the worker token", as_worker)] {
                    assert_ne!(code, Code::Unauthenticated, "{} as {who}", rpc.name);
                    assert_ne!(code, Code::PermissionDenied, "{} as {who}", rpc.name);
                }
            }
        }
    }
}

#[tokio::test]
async fn login_logout_and_sessions() {
    let r = replica().await;
    let mut anon = r.anonymous();
    let login = |u: &str, p: &str| pb::LoginRequest {
        username: u.into(),
        password: p.into(),
    };

    let err = anon.login(login(ADMIN_USER, "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anon.login(login("nobody", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anon.login(login("", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let token = anon
        .login(login(ADMIN_USER, ADMIN_PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert!(token.len() >= 43);
    let mut client = r.with_token(&token);
    client.list_users(()).await.unwrap();

    // Only the SHA-256 of the token is stored.
    let db = postgres().await.connect(r.database_url()).await;
    let digest: Vec<u8> = {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).to_vec()
    };
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM scitq_user_session WHERE token_sha256 = $1",
            &[&digest],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let leaked: i64 = db
        .query_one("SELECT count(*) FROM scitq_user_session WHERE encode(token_sha256, 'escape') LIKE '%' || $1 || '%'", &[&token])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);

    let err = client
        .logout(pb::Token {
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    client
        .logout(pb::Token {
            token: token.clone(),
        })
        .await
        .unwrap();
    let err = client.list_users(()).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a logged-out token is refused at once on this replica"
    );
}

#[tokio::test]
async fn sessions_expire() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    // Not 1 s: a JWT's expiry is in whole seconds, so a 1 s session may already be over at the
    // first call on a loaded machine.
    config.session_ttl = Duration::from_secs(3);
    let r = spawn_replica(config).await;
    let token = r.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let mut client = r.with_token(&token);
    client.list_users(()).await.unwrap();
    // After the TTL (and the lookup cache's few seconds), the token is refused.
    wait_until(Duration::from_secs(20), "the session to expire", || {
        let mut client = client.clone();
        async move {
            client
                .list_users(())
                .await
                .is_err_and(|e| e.code() == Code::Unauthenticated)
        }
    })
    .await;
}

#[tokio::test]
async fn user_management_validates_and_changes_nothing_on_failure() {
    let r = replica().await;
    let mut admin = r.admin().await;
    let user = |name: &str, admin: bool| pb::CreateUserRequest {
        username: name.into(),
        password: "pw".into(),
        email: format!("{name}@example.org"),
        is_admin: admin,
    };
    let bob = admin
        .create_user(user("bob", false))
        .await
        .unwrap()
        .into_inner()
        .user_id;
    let count = |admin: &mut common_client::Client| {
        let mut admin = admin.clone();
        async move { admin.list_users(()).await.unwrap().into_inner().users.len() }
    };
    let before = count(&mut admin).await;
    assert_eq!(
        admin
            .create_user(user("bob", true))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        admin.create_user(user("", false)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        admin
            .create_user(user("  ", false))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut no_password = user("carol", false);
    no_password.password.clear();
    assert_eq!(
        admin.create_user(no_password).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        count(&mut admin).await,
        before,
        "failed creations left nothing behind"
    );

    let users = admin.list_users(()).await.unwrap().into_inner().users;
    let listed = users.iter().find(|u| u.user_id == bob).unwrap();
    assert_eq!(listed.username.as_deref(), Some("bob"));
    assert_eq!(listed.email.as_deref(), Some("bob@example.org"));
    assert_eq!(listed.is_admin, Some(false));

    // UpdateUser
    let update = |id, name: Option<&str>, is_admin| pb::User {
        user_id: id,
        username: name.map(str::to_string),
        email: None,
        is_admin,
    };
    assert_eq!(
        admin
            .update_user(update(bob, None, None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        admin
            .update_user(update(99_999, Some("x"), None))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        admin
            .update_user(update(bob, Some(ADMIN_USER), None))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        admin
            .update_user(update(bob, Some(""), None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    admin
        .update_user(update(bob, Some("robert"), Some(true)))
        .await
        .unwrap();
    let token = r.login("robert", "pw").await;
    let mut robert = r.with_token(&token);
    robert
        .create_user(user("dave", false))
        .await
        .expect("robert is admin now");

    // The last admin cannot lose admin rights or be deleted.
    let admin_id = users
        .iter()
        .find(|u| u.username.as_deref() == Some(ADMIN_USER))
        .unwrap()
        .user_id;
    admin
        .update_user(update(bob, None, Some(false)))
        .await
        .unwrap();
    assert_eq!(
        admin
            .update_user(update(admin_id, None, Some(false)))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        admin
            .delete_user(pb::UserId { user_id: admin_id })
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );

    // DeleteUser
    assert_eq!(
        admin
            .delete_user(pb::UserId { user_id: 99_999 })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    admin
        .delete_user(pb::UserId { user_id: bob })
        .await
        .unwrap();
    assert_eq!(
        robert.list_users(()).await.unwrap_err().code(),
        Code::Unauthenticated,
        "a deleted user's session ends"
    );
}

mod common_client {
    pub use taskqueue::client::Client;
}

#[tokio::test]
async fn change_password() {
    let r = replica().await;
    r.plain_user("erin").await;
    let mut anon = r.anonymous();
    let change = |old: &str, new: &str| pb::ChangePasswordRequest {
        username: "erin".into(),
        old_password: old.into(),
        new_password: new.into(),
    };
    assert_eq!(
        anon.change_password(change("wrong", "n"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        anon.change_password(change("user-secret", ""))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut unknown = change("user-secret", "n");
    unknown.username = "nobody".into();
    assert_eq!(
        anon.change_password(unknown).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    anon.change_password(change("user-secret", "new-secret"))
        .await
        .unwrap();
    let err = anon
        .login(pb::LoginRequest {
            username: "erin".into(),
            password: "user-secret".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    r.login("erin", "new-secret").await;
}

#[tokio::test]
async fn health_serves_and_reports_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut r = replica().await;
    let mut health = HealthClient::new(r.channel());
    for service in ["", "taskqueue.TaskQueue"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "taskqueue.TaskQueue".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    r.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a status change");
    if let Ok(Some(msg)) = next {
        assert_eq!(msg.status, ServingStatus::NotServing as i32);
    }
    // Either NOT_SERVING was delivered or the stream was closed by the drain; both mean "do not route here".
}

#[tokio::test]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tokio_stream::StreamExt as _;
    let r = replica().await;
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(r.channel());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected answer")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"taskqueue.TaskQueue"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        // The descriptor of the service resolves (what ghz and grpcurl need).
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "taskqueue.TaskQueue".into(),
            )),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        assert!(matches!(
            resp.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ));
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(r.channel());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected answer")
        };
        assert!(list.service.iter().any(|s| s.name == "taskqueue.TaskQueue"));
    }
}

#[tokio::test]
async fn metrics_count_handled_rpcs_by_code() {
    let r = replica().await;
    let mut anon = r.anonymous();
    let _ = anon
        .login(pb::LoginRequest {
            username: "x".into(),
            password: "y".into(),
        })
        .await;
    let _ = anon.list_users(()).await;
    let text = r.metrics().await;
    let has = |needle: &str| {
        text.lines()
            .any(|l| !l.starts_with('#') && needle.split('*').all(|part| l.contains(part)))
    };
    assert!(
        has("grpc_server_handled_total*grpc_method=\"Login\"*grpc_code=\"Unauthenticated\""),
        "{text}"
    );
    assert!(
        has("grpc_server_handled_total*grpc_method=\"ListUsers\"*grpc_code=\"Unauthenticated\""),
        "{text}"
    );
    assert!(
        has("grpc_server_started_total*grpc_method=\"Login\""),
        "{text}"
    );
    assert!(
        has("grpc_server_handling_seconds_bucket*grpc_method=\"Login\"*le=\"0.005\""),
        "explicit buckets: {text}"
    );
    assert!(has("taskqueue_db_pool_max_connections"), "{text}");
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn migrations_run_once_when_replicas_start_together() {
    let pg = postgres().await;
    let url = pg.empty_db().await;
    // Three migrators at once: exactly one applies.
    let dbs: Vec<_> = (0..3)
        .map(|_| taskqueue::db::Db::connect(&url, 2).unwrap())
        .collect();
    let reports = futures::future::join_all(dbs.iter().map(taskqueue::db::migrate::migrate)).await;
    let applied: Vec<_> = reports
        .into_iter()
        .map(|r| r.unwrap())
        .filter(|r| !r.applied.is_empty())
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "exactly one migrator applied the migrations"
    );
    assert_eq!(
        applied[0].applied.len(),
        taskqueue::db::migrate::MIGRATIONS.len()
    );

    // Three replicas starting at once on a brand-new database all come up, with one initial admin.
    let url = pg.empty_db().await;
    let replicas =
        futures::future::join_all((0..3).map(|_| spawn_replica(test_config(&url)))).await;
    let db = pg.connect(&url).await;
    let rows = db
        .query(
            "SELECT version, count(*) FROM taskqueue_migration GROUP BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), taskqueue::db::migrate::MIGRATIONS.len());
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) == 1));
    let admins: i64 = db
        .query_one("SELECT count(*) FROM scitq_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
    for r in &replicas {
        r.admin().await.list_users(()).await.unwrap();
    }
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = pg.connect(&url).await;
    db.execute(
        "UPDATE taskqueue_migration SET checksum = 'edited' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let pool = taskqueue::db::Db::connect(&url, 2).unwrap();
    let err = taskqueue::db::migrate::migrate(&pool).await.unwrap_err();
    assert!(err.message.contains("forward-only"), "{}", err.message);
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.tls = taskqueue::config::TlsMode::SelfSigned;
    let data_dir = config.data_dir.clone();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    config.metrics_listen = None;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(taskqueue::server::run(
        config,
        taskqueue::server::Listeners {
            grpc,
            metrics: None,
            web: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    let cert = data_dir.join("tls/cert.pem");
    wait_until(Duration::from_secs(30), "the certificate", || {
        let cert = cert.clone();
        async move { cert.exists() }
    })
    .await;
    let target = taskqueue::client::Target {
        server: format!("https://localhost:{port}"),
        ca_file: Some(cert),
        ..Default::default()
    };
    let mut token = None;
    for _ in 0..100 {
        if let Ok(channel) = target.connect().await {
            let mut anon = taskqueue::proto::task_queue_client::TaskQueueClient::new(channel);
            if let Ok(resp) = anon
                .login(pb::LoginRequest {
                    username: ADMIN_USER.into(),
                    password: ADMIN_PASSWORD.into(),
                })
                .await
            {
                token = Some(resp.into_inner().token);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(token.is_some(), "login over TLS");
    // Plaintext to the TLS port does not work.
    let plain = taskqueue::client::Target::new(format!("http://127.0.0.1:{port}"))
        .channel()
        .unwrap();
    let mut anon = taskqueue::proto::task_queue_client::TaskQueueClient::new(plain);
    assert!(
        anon.login(pb::LoginRequest {
            username: ADMIN_USER.into(),
            password: ADMIN_PASSWORD.into()
        })
        .await
        .is_err()
    );
    let _ = tx.send(());
    handle.await.unwrap().unwrap();
}
