//! The web UI's REST helpers through a real HTTP/1.1 client: `/login` (cookie attributes, JWT
//! contents as the browser's `atob` reads them, bad and oversize input, the shared login gate),
//! `/fetchCookie` (good, forged, expired, logged-out cookies), `/logout` (revokes the session for
//! gRPC too), `/WorkerToken` (admins only), JWTs forged with another key refused on gRPC even with
//! a session row, and the generated key shared by two replicas on one database.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use common::{
    ADMIN_PASSWORD, ADMIN_USER, Replica, WORKER_TOKEN, postgres, spawn_replica, test_config,
};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taskqueue::domain::credentials::token_digest;
use taskqueue::domain::jwt::{Claims, JwtKey};
use taskqueue::proto as pb;
use tonic::Code;

/// The browser's `atob`: standard alphabet, padding optional.
const ATOB: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The web listener of a replica.
fn web(r: &Replica) -> SocketAddr {
    r.web_addr
        .expect("the test configuration turns the web listener on")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

impl Answer {
    fn set_cookie(&self) -> &str {
        self.headers
            .get(header::SET_COOKIE)
            .expect("a Set-Cookie header")
            .to_str()
            .unwrap()
    }
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    call_with(false, addr, method, path, headers, body).await
}

/// `call` over HTTP/2 (prior knowledge, as behind a TLS-terminating balancer) when `h2`.
async fn call_with(
    h2: bool,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: HttpClient<HttpConnector, Full<Bytes>> = HttpClient::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Answer {
        status,
        headers,
        body,
    }
}

async fn login(addr: SocketAddr, username: &str, password: &str) -> Answer {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    call(
        addr,
        Method::POST,
        "/login",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// Logs in through `/login` and returns the session token.
async fn token_of(addr: SocketAddr, username: &str, password: &str) -> String {
    let a = login(addr, username, password).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["token"].as_str().unwrap().to_string()
}

fn cookie(token: &str) -> String {
    format!("other=1; session_token={token}")
}

async fn fetch_cookie(addr: SocketAddr, token: &str) -> Answer {
    call(
        addr,
        Method::GET,
        "/fetchCookie",
        &[("cookie", &cookie(token))],
        "",
    )
    .await
}

/// What the UI does with a token: the middle part through `atob` (bytes as Latin-1 characters)
/// and `JSON.parse`.
fn claims_as_the_ui_reads_them(token: &str) -> serde_json::Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    for part in &parts[..2] {
        assert!(
            !part.contains('-') && !part.contains('_'),
            "atob would misread {part}"
        );
    }
    let bytes = ATOB.decode(parts[1]).expect("atob accepts the payload");
    assert!(bytes.is_ascii());
    let text: String = bytes.iter().map(|&b| b as char).collect();
    serde_json::from_str(&text).expect("JSON.parse accepts the payload")
}

/// The cluster's generated key, as every replica on the database reads it.
async fn cluster_key(r: &Replica) -> JwtKey {
    let db = taskqueue::db::Db::connect_with(r.database_url(), 1, Duration::from_secs(10)).unwrap();
    let secret = taskqueue::db::secrets::get_or_create(
        &db,
        taskqueue::db::secrets::JWT_KEY,
        &JwtKey::generate_secret(),
    )
    .await
    .unwrap();
    db.close();
    JwtKey::new(&secret).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn create_user(r: &Replica, name: &str, admin: bool) {
    r.admin()
        .await
        .create_user(pb::CreateUserRequest {
            username: name.into(),
            password: "user-secret".into(),
            email: String::new(),
            is_admin: admin,
        })
        .await
        .unwrap();
}

/// gRPC refuses `token` (revoked through the web listener of the same replica: at once).
async fn refused(r: &Replica, token: &str) {
    assert_eq!(grpc_works(r, token).await, Err(Code::Unauthenticated));
}

async fn grpc_works(r: &Replica, token: &str) -> Result<(), Code> {
    r.with_token(token)
        .list_users(())
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[tokio::test]
async fn login_sets_a_readable_session_cookie() {
    let r = common::replica().await;
    let addr = web(&r);
    let a = login(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let token = a.body["token"].as_str().unwrap().to_string();
    let set_cookie = a.set_cookie().to_string();
    let mut attributes = set_cookie.split("; ");
    assert_eq!(
        attributes.next(),
        Some(format!("session_token={token}").as_str())
    );
    let mut rest: Vec<&str> = attributes.collect();
    rest.sort();
    assert_eq!(
        rest,
        [
            "HttpOnly",
            "Max-Age=86400",
            "Path=/",
            "SameSite=None",
            "Secure"
        ]
    );
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");

    // The UI's reading of the token.
    let claims = claims_as_the_ui_reads_them(&token);
    let users = r
        .admin()
        .await
        .list_users(())
        .await
        .unwrap()
        .into_inner()
        .users;
    let admin = users
        .iter()
        .find(|u| u.username.as_deref() == Some(ADMIN_USER))
        .unwrap();
    assert_eq!(claims["user_id"], admin.user_id);
    assert_eq!(claims["userId"], admin.user_id);
    assert_eq!(claims["username"], ADMIN_USER);
    let exp = claims["exp"].as_i64().unwrap();
    let year = 365 * 24 * 3600;
    assert!(
        (now() + year - 60..=now() + year + 60).contains(&exp),
        "{exp}"
    );
    assert!(token.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));

    // The same token works for gRPC, and two logins give two sessions.
    grpc_works(&r, &token).await.unwrap();
    let again = token_of(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_ne!(again, token);
    grpc_works(&r, &again).await.unwrap();

    // Login through gRPC issues the same kind of token.
    let rpc_token = r.login(ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(
        claims_as_the_ui_reads_them(&rpc_token)["userId"],
        admin.user_id
    );
}

#[tokio::test]
async fn the_cookie_flow_works_over_http2() {
    let r = common::replica().await;
    let addr = web(&r);
    let body = serde_json::json!({ "username": ADMIN_USER, "password": ADMIN_PASSWORD });
    let a = call_with(true, addr, Method::POST, "/login", &[], body.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let token = a.body["token"].as_str().unwrap().to_string();
    assert!(
        a.set_cookie()
            .starts_with(&format!("session_token={token};"))
    );
    // HTTP/2 clients may send each cookie in its own header.
    let headers = [
        ("cookie", "a=1"),
        ("cookie", &format!("session_token={token}")),
    ];
    let a = call_with(true, addr, Method::GET, "/fetchCookie", &headers, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["token"], token.as_str());
    let a = call_with(true, addr, Method::POST, "/logout", &headers, "").await;
    assert_eq!(a.status, StatusCode::OK);
    refused(&r, &token).await;
}

#[tokio::test]
async fn unicode_usernames_survive_atob() {
    let r = common::replica().await;
    let addr = web(&r);
    for name in ["Zoé 日本語", "crab 🦀 >?~ \"quoted\" \\", "~~~>>>???"] {
        create_user(&r, name, false).await;
        let token = token_of(addr, name, "user-secret").await;
        let claims = claims_as_the_ui_reads_them(&token);
        assert_eq!(claims["username"], name);
        assert_eq!(claims["user_id"], claims["userId"]);
        grpc_works(&r, &token).await.unwrap();
    }
}

#[tokio::test]
async fn bad_logins_are_refused_with_clear_errors() {
    let r = common::replica().await;
    let addr = web(&r);
    let a = login(addr, ADMIN_USER, "wrong").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.error(), "invalid credentials");
    assert!(a.headers.get(header::SET_COOKIE).is_none());
    let a = login(addr, "nobody", "wrong").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    for body in [
        "",
        "not json",
        "{\"username\": \"admin\"}",
        "{\"password\": \"x\"}",
        "[\"admin\", \"x\"]",
        "{\"username\": 1, \"password\": 2}",
        "{\"username\": \"\", \"password\": \"\"}",
    ] {
        let a = call(addr, Method::POST, "/login", &[], body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(!a.error().is_empty(), "{body}");
    }
    // The UI may post without a JSON content type: the body decides.
    let body =
        serde_json::json!({ "username": ADMIN_USER, "password": ADMIN_PASSWORD }).to_string();
    let a = call(
        addr,
        Method::POST,
        "/login",
        &[("content-type", "text/plain")],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    let huge = format!(
        "{{\"username\": \"admin\", \"password\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let a = call(addr, Method::POST, "/login", &[], huge).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert!(!a.error().is_empty());
    // Under the body cap but over the credential cap: refused before hashing.
    let long = serde_json::json!({ "username": ADMIN_USER, "password": "x".repeat(2000) });
    let a = call(addr, Method::POST, "/login", &[], long.to_string()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);

    let a = call(addr, Method::GET, "/login", &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!a.error().is_empty());
}

#[tokio::test]
async fn rest_and_rpc_logins_share_the_login_gate() {
    let r = common::replica().await;
    let addr = web(&r);
    create_user(&r, "target", false).await;
    for _ in 0..taskqueue::server::login_gate::USER_FAILURES_BEFORE_BACKOFF {
        assert_eq!(
            login(addr, "target", "wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Backed off now, even with the right password.
    let a = login(addr, "target", "user-secret").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert!(!a.error().is_empty());
    // And for the Login RPC: the same gate.
    let err = r
        .anonymous()
        .login(pb::LoginRequest {
            username: "target".into(),
            password: "user-secret".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn fetch_cookie_hands_back_only_live_sessions() {
    let r = common::replica().await;
    let addr = web(&r);
    let token = token_of(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    let a = fetch_cookie(addr, &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, serde_json::json!({ "token": token }));

    // No cookie, an empty one, garbage.
    let a = call(addr, Method::GET, "/fetchCookie", &[], "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(!a.error().is_empty());
    for bad in ["", "garbage", "a.b.c", &format!("{token}x")] {
        assert_eq!(
            fetch_cookie(addr, bad).await.status,
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
    // The worker token is not a user session.
    assert_eq!(
        fetch_cookie(addr, WORKER_TOKEN).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Signed with another key; signed with the cluster's key but expired.
    let claims = Claims {
        user_id: 1,
        username: Some(ADMIN_USER.into()),
        exp: now() + 3600,
        jti: "forged".into(),
    };
    let forged = JwtKey::new(b"not the cluster key").unwrap().encode(&claims);
    assert_eq!(
        fetch_cookie(addr, &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    let key = cluster_key(&r).await;
    let expired = key.encode(&Claims {
        exp: now() - 1,
        ..claims.clone()
    });
    assert_eq!(
        fetch_cookie(addr, &expired).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Signed with the cluster's key and unexpired, but no session: the database decides.
    let sessionless = key.encode(&claims);
    assert_eq!(
        fetch_cookie(addr, &sessionless).await.status,
        StatusCode::UNAUTHORIZED
    );

    // After logout.
    let a = call(
        addr,
        Method::POST,
        "/logout",
        &[("cookie", &cookie(&token))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        fetch_cookie(addr, &token).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logout_revokes_the_session_everywhere() {
    let r = common::replica().await;
    let addr = web(&r);
    let token = token_of(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    let other = token_of(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    grpc_works(&r, &token).await.unwrap();

    let a = call(
        addr,
        Method::POST,
        "/logout",
        &[("cookie", &cookie(&token))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let expired = a.set_cookie();
    assert!(expired.starts_with("session_token=;"), "{expired}");
    assert!(expired.contains("Max-Age=0"), "{expired}");
    assert!(expired.contains("Path=/"), "{expired}");
    refused(&r, &token).await;
    // Only that session ended.
    grpc_works(&r, &other).await.unwrap();

    // Without a session, with an unknown one, twice: still 200, the cookie expired.
    for headers in [
        vec![],
        vec![("cookie", "session_token=unknown")],
        vec![("cookie", "session_token=")],
    ] {
        let a = call(addr, Method::POST, "/logout", &headers, "").await;
        assert_eq!(a.status, StatusCode::OK, "{headers:?}");
        assert!(a.set_cookie().contains("Max-Age=0"));
    }
    // A Bearer token is logged out too (the UI's gRPC-Web calls carry one).
    let bearer = format!("Bearer {other}");
    let a = call(
        addr,
        Method::POST,
        "/logout",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    refused(&r, &other).await;
}

#[tokio::test]
async fn worker_token_goes_to_admins_only() {
    let r = common::replica().await;
    let addr = web(&r);
    let admin = token_of(addr, ADMIN_USER, ADMIN_PASSWORD).await;
    let a = call(
        addr,
        Method::GET,
        "/WorkerToken",
        &[("cookie", &cookie(&admin))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["token"], WORKER_TOKEN);
    assert_eq!(a.body["worker_token"], WORKER_TOKEN);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    let bearer = format!("Bearer {admin}");
    let a = call(
        addr,
        Method::GET,
        "/WorkerToken",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);

    create_user(&r, "plain", false).await;
    let plain = token_of(addr, "plain", "user-secret").await;
    let a = call(
        addr,
        Method::GET,
        "/WorkerToken",
        &[("cookie", &cookie(&plain))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(!a.body.to_string().contains(WORKER_TOKEN));
    assert!(!a.error().is_empty());

    let a = call(addr, Method::GET, "/WorkerToken", &[], "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let forged = JwtKey::new(b"other").unwrap().encode(&Claims {
        user_id: 1,
        username: Some(ADMIN_USER.into()),
        exp: now() + 60,
        jti: "x".into(),
    });
    let a = call(
        addr,
        Method::GET,
        "/WorkerToken",
        &[("cookie", &cookie(&forged))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // The worker token itself does not fetch the worker token.
    let bearer = format!("Bearer {WORKER_TOKEN}");
    let a = call(
        addr,
        Method::GET,
        "/WorkerToken",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forged_and_expired_jwts_are_refused_on_grpc_even_with_a_session_row() {
    let r = common::replica().await;
    let users = r
        .admin()
        .await
        .list_users(())
        .await
        .unwrap()
        .into_inner()
        .users;
    let admin_id = users[0].user_id;
    let claims = Claims {
        user_id: admin_id,
        username: Some(ADMIN_USER.into()),
        exp: now() + 3600,
        jti: "forged".into(),
    };
    let forged = JwtKey::new(b"an attacker's key").unwrap().encode(&claims);
    let expired = cluster_key(&r).await.encode(&Claims {
        exp: now() - 10,
        jti: "expired".into(),
        ..claims.clone()
    });
    let good = cluster_key(&r).await.encode(&Claims {
        jti: "good".into(),
        ..claims.clone()
    });
    // Give all three a live session row, as if they had been stored: only the signature and
    // expiry checks stand between the first two and the admin account.
    let pg = postgres().await.connect(r.database_url()).await;
    for token in [&forged, &expired, &good] {
        pg.execute(
            "INSERT INTO scitq_user_session (token_sha256, user_id, expires_at, last_used)
             VALUES ($1, $2, now() + interval '1 day', now())",
            &[&token_digest(token).as_slice(), &admin_id],
        )
        .await
        .unwrap();
    }
    let err = r.with_token(&forged).list_users(()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("signature"), "{}", err.message());
    let err = r.with_token(&expired).list_users(()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    grpc_works(&r, &good).await.unwrap();
    // The web helpers agree.
    let addr = web(&r);
    assert_eq!(
        fetch_cookie(addr, &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        fetch_cookie(addr, &expired).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fetch_cookie(addr, &good).await.status, StatusCode::OK);

    // Other tokens keep working: the worker token, and random (non-JWT) session tokens such as
    // template scripts' scoped ones.
    r.worker()
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap();
    let random = taskqueue::domain::credentials::new_session_token();
    pg.execute(
        "INSERT INTO scitq_user_session (token_sha256, user_id, expires_at, last_used)
         VALUES ($1, $2, now() + interval '1 day', now())",
        &[&token_digest(&random).as_slice(), &admin_id],
    )
    .await
    .unwrap();
    grpc_works(&r, &random).await.unwrap();
}

#[tokio::test]
async fn replicas_on_one_database_share_the_generated_key() {
    let url = postgres().await.fresh_db().await;
    let (a, b) = tokio::join!(
        spawn_replica(test_config(&url)),
        spawn_replica(test_config(&url))
    );
    // Logged in through A's Login RPC: B's authenticator checks A's signature.
    let rpc_token = a.login(ADMIN_USER, ADMIN_PASSWORD).await;
    grpc_works(&b, &rpc_token).await.unwrap();
    let (web_a, web_b) = (web(&a), web(&b));
    let token = token_of(web_a, ADMIN_USER, ADMIN_PASSWORD).await;
    grpc_works(&b, &token).await.unwrap();
    assert_eq!(fetch_cookie(web_b, &token).await.status, StatusCode::OK);
    let other = token_of(web_b, ADMIN_USER, ADMIN_PASSWORD).await;
    grpc_works(&a, &other).await.unwrap();
    // Logged out through B: A refuses it too (A's cache may keep it for its short TTL).
    let h = cookie(&token);
    let out = call(web_b, Method::POST, "/logout", &[("cookie", &h)], "").await;
    assert_eq!(out.status, StatusCode::OK);
    common::wait_until(
        taskqueue::server::auth::TOKEN_CACHE_TTL + Duration::from_secs(5),
        "logout through B reaches A",
        || async { grpc_works(&a, &token).await == Err(Code::Unauthenticated) },
    )
    .await;
}

#[tokio::test]
async fn a_configured_jwt_secret_signs_the_tokens() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.jwt_secret = Some("configured secret for tests".into());
    let r = spawn_replica(config).await;
    let token = r.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let key = JwtKey::new(b"configured secret for tests").unwrap();
    let claims = key.verify(&token, now()).unwrap();
    assert_eq!(claims.username.as_deref(), Some(ADMIN_USER));
    assert!(cluster_key(&r).await.verify(&token, now()).is_err());
    grpc_works(&r, &token).await.unwrap();
}
