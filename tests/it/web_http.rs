//! The web listener over real HTTP/1.1 and HTTP/2 clients: gRPC-Web in both encodings (unary and
//! a server stream of a log that grows while it is read), the same auth as the gRPC port, CORS
//! preflights and headers, the UI's static files and their cache headers, `/scitq-client`, and bad
//! input (malformed frames, oversize declared lengths, wrong content types, unknown paths).

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::web::{self, Mode, Web};
use common::{
    ADMIN_PASSWORD, ADMIN_USER, WORKER_TOKEN, postgres, set_status, spawn_replica, submit, task,
    test_config,
};
use http::{Request, Version};
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use taskqueue::proto as pb;

async fn web_replica(
    configure: impl FnOnce(&mut taskqueue::config::Config),
) -> (common::Replica, Web) {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    configure(&mut config);
    let replica = spawn_replica(config).await;
    let web = Web::new(replica.web_addr.expect("the web listener is on in tests"));
    (replica, web)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test]
async fn grpc_web_unary_in_both_encodings_over_http1_and_http2() {
    let (replica, web) = web_replica(|_| {}).await;
    let token = replica.login(ADMIN_USER, ADMIN_PASSWORD).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        for mode in [Mode::Text, Mode::Binary] {
            let reply = web
                .grpc_web(version, mode, "ListUsers", Some(&token), &())
                .await;
            assert_eq!(reply.http.status, 200, "{version:?} {mode:?}");
            assert_eq!(reply.http.version, version, "answered in the version asked");
            assert!(
                reply.http.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with(mode.content_type()),
                "{:?}",
                reply.http.headers["content-type"]
            );
            let users: pb::UsersList = reply.decode();
            assert!(
                users
                    .users
                    .iter()
                    .any(|u| u.username.as_deref() == Some(ADMIN_USER)),
                "{users:?}"
            );
        }
    }
}

#[tokio::test]
async fn grpc_web_has_the_auth_of_the_grpc_port() {
    let (replica, web) = web_replica(|_| {}).await;
    // No token: Unauthenticated, as on the gRPC port.
    let reply = web
        .grpc_web(Version::HTTP_11, Mode::Text, "ListUsers", None, &())
        .await;
    assert_eq!(
        reply.status(),
        tonic::Code::Unauthenticated as i32,
        "{reply:?}"
    );
    // A forged token: Unauthenticated too.
    let reply = web
        .grpc_web(
            Version::HTTP_11,
            Mode::Text,
            "ListUsers",
            Some("not-a-session"),
            &(),
        )
        .await;
    assert_eq!(reply.status(), tonic::Code::Unauthenticated as i32);
    // A plain user may not create users: PermissionDenied, and nothing is written.
    let _ = replica.plain_user("alice").await;
    let alice = replica.login("alice", "user-secret").await;
    let reply = web
        .grpc_web(
            Version::HTTP_2,
            Mode::Binary,
            "CreateUser",
            Some(&alice),
            &pb::CreateUserRequest {
                username: "mallory".into(),
                password: "pw-pw-pw-pw".into(),
                email: "m@example.org".into(),
                is_admin: true,
            },
        )
        .await;
    assert_eq!(
        reply.status(),
        tonic::Code::PermissionDenied as i32,
        "{reply:?}"
    );
    let users = replica
        .admin()
        .await
        .list_users(())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(
        users
            .iter()
            .all(|u| u.username.as_deref() != Some("mallory"))
    );
    // The worker token works as on the gRPC port.
    let reply = web
        .grpc_web(
            Version::HTTP_11,
            Mode::Text,
            "SubmitTask",
            Some(WORKER_TOKEN),
            &task("echo from the web"),
        )
        .await;
    let submitted: pb::TaskResponse = reply.decode();
    assert!(submitted.task_id > 0);
}

/// StreamTaskLogsOutput over gRPC-Web text: lines written while the stream is read arrive as they
/// are written, and the stream ends (with status OK) when the task ends.
#[tokio::test]
async fn grpc_web_server_stream_follows_a_growing_log() {
    let (replica, web) = web_replica(|_| {}).await;
    let token = replica.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let mut worker = replica.worker();
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let t = submit(&mut worker, task("echo")).await;
        let request = web::grpc_web_request(
            Mode::Text,
            "StreamTaskLogsOutput",
            Some(&token),
            web::frame(0, &pb::TaskId { task_id: t }.encode_to_vec()),
        );
        let response = web.send(version, request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let mut stream = Stream {
            body: response.into_body(),
            text: Vec::new(),
            messages: Vec::new(),
            trailers: HashMap::new(),
        };
        // Write a line, read it back through the open stream, five times; then end the task.
        let mut expected = Vec::new();
        for i in 0..5 {
            let line = format!("line {i} over {version:?}");
            worker
                .send_task_logs(tokio_stream::iter([pb::TaskLog {
                    task_id: t,
                    log_type: "stdout".into(),
                    log_text: line.clone(),
                }]))
                .await
                .unwrap();
            expected.push(line);
            stream.read_until(|s| s.messages.len() == i + 1).await;
        }
        set_status(&mut worker, t, "S").await;
        stream.read_until(|s| !s.trailers.is_empty()).await;
        let lines: Vec<String> = stream
            .messages
            .iter()
            .map(|m| pb::TaskLog::decode(m.clone()).unwrap().log_text)
            .collect();
        assert_eq!(lines, expected);
        assert_eq!(
            stream.trailers.get("grpc-status").map(String::as_str),
            Some("0"),
            "{:?}",
            stream.trailers
        );
    }
}

/// A grpc-web-text answer read as it arrives.
struct Stream {
    body: hyper::body::Incoming,
    text: Vec<u8>,
    messages: Vec<Bytes>,
    trailers: HashMap<String, String>,
}

impl Stream {
    async fn read_until(&mut self, done: impl Fn(&Stream) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(self) {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("the stream keeps up with the writes")
                .expect("the stream goes on")
                .expect("no transport error");
            if let Ok(data) = frame.into_data() {
                self.text.extend_from_slice(&data);
                // Decode what is complete so far (text chunks are padded base64 groups).
                let whole = self.text.len() / 4 * 4;
                let decoded = web::decode_text(&self.text[..whole]);
                self.messages.clear();
                self.trailers.clear();
                web::split_frames(&decoded, &mut self.messages, &mut self.trailers);
            }
        }
    }
}

#[tokio::test]
async fn cors_answers_preflights_and_never_refuses_an_origin() {
    let (replica, web) = web_replica(|c| c.ui_origin = "https://ui.example.org:5173".into()).await;
    let token = replica.login(ADMIN_USER, ADMIN_PASSWORD).await;
    // The UI's preflight of a gRPC-Web call.
    let (parts, _) = web
        .fetch(
            Version::HTTP_11,
            Request::options("/taskqueue.TaskQueue/ListUsers")
                .header("origin", "https://ui.example.org:5173")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,authorization,x-grpc-web,x-user-agent,grpc-timeout",
                )
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(parts.status, 200);
    let h = &parts.headers;
    assert_eq!(
        h["access-control-allow-origin"],
        "https://ui.example.org:5173"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    for m in ["GET", "POST", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "content-type",
        "authorization",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(headers.contains(name), "{headers}");
    }
    // Another origin: 200, no CORS headers (the browser then refuses to hand the answer over).
    let (parts, _) = web
        .fetch(
            Version::HTTP_11,
            Request::options("/login")
                .header("origin", "https://evil.example.com")
                .header("access-control-request-method", "POST")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(parts.status, 200);
    assert!(!parts.headers.contains_key("access-control-allow-origin"));
    // A plain OPTIONS (no preflight headers) is answered 200 too.
    let (parts, _) = web
        .fetch(
            Version::HTTP_11,
            Request::options("/anything").body(empty()).unwrap(),
        )
        .await;
    assert_eq!(parts.status, 200);
    // A same-origin POST carries an Origin too: it is served whatever the Origin.
    let mut request =
        web::grpc_web_request(Mode::Text, "ListUsers", Some(&token), web::frame(0, &[]));
    request
        .headers_mut()
        .insert("origin", "https://somewhere.else".parse().unwrap());
    let (parts, body) = web.fetch(Version::HTTP_11, request).await;
    let reply = web::GrpcWebReply::parse(parts, &body, Mode::Text);
    assert_eq!(reply.status(), 0);
    // The configured origin gets the headers on the real request too.
    let mut request =
        web::grpc_web_request(Mode::Text, "ListUsers", Some(&token), web::frame(0, &[]));
    request
        .headers_mut()
        .insert("origin", "https://ui.example.org:5173".parse().unwrap());
    let (parts, _) = web.fetch(Version::HTTP_2, request).await;
    assert_eq!(
        parts.headers["access-control-allow-origin"],
        "https://ui.example.org:5173"
    );
    let exposed = parts.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("grpc-status"), "{exposed}");
}

#[tokio::test]
async fn static_files_of_the_ui_with_cache_headers() {
    let dir = common::tempdir().join("ui");
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><script src=\"/assets/index-4f3a.js\"></script>",
    )
    .unwrap();
    std::fs::write(dir.join("assets/index-4f3a.js"), "console.log('ui')").unwrap();
    let secret = common::tempdir().join("secret.txt");
    std::fs::write(&secret, "do not serve").unwrap();
    let (_replica, web) = web_replica(|c| c.ui_dir = Some(dir.clone())).await;

    let (parts, body) = web.get("/").await;
    assert_eq!(parts.status, 200);
    assert!(body.starts_with(b"<!doctype html>"));
    assert_eq!(parts.headers["cache-control"], "no-cache");
    let (parts, body) = web.get("/assets/index-4f3a.js").await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"console.log('ui')");
    assert_eq!(
        parts.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        parts.headers["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let (parts, _) = web.get("/assets/missing.js").await;
    assert_eq!(parts.status, 404);
    // Nothing outside the folder: not by `..`, not encoded.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
    ] {
        let (parts, body) = web.get(path).await;
        assert_ne!(parts.status, 200, "{path}");
        assert!(!body.windows(12).any(|w| w == b"do not serve"), "{path}");
    }
    // Without --ui-dir: a 404 that says why.
    let (_replica, web) = web_replica(|_| {}).await;
    let (parts, body) = web.get("/").await;
    assert_eq!(parts.status, 404);
    assert!(String::from_utf8_lossy(&body).contains("--ui-dir"));
}

#[tokio::test]
async fn scitq_client_download_needs_the_token() {
    let binary = common::tempdir().join("scitq-client");
    std::fs::write(&binary, b"\x7fELF a worker binary").unwrap();
    let (_replica, web) = web_replica(|c| {
        c.client_download_token = Some("download-me".into());
        c.client_binary = Some(binary.clone());
    })
    .await;
    let (parts, _) = web.get("/scitq-client").await;
    assert_eq!(parts.status, 401);
    let (parts, _) = web.get("/scitq-client?token=wrong").await;
    assert_eq!(parts.status, 401);
    let (parts, body) = web.get("/scitq-client?token=download-me").await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"\x7fELF a worker binary");
    assert_eq!(parts.headers["content-type"], "application/octet-stream");
    // No token configured: not served at all.
    let (_replica, web) = web_replica(|_| {}).await;
    let (parts, _) = web.get("/scitq-client?token=").await;
    assert_eq!(parts.status, 404);
}

#[tokio::test]
async fn bad_grpc_web_input_gets_clear_errors_and_writes_nothing() {
    let (replica, web) = web_replica(|_| {}).await;
    let token = replica.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let before = replica
        .admin()
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len();

    // A truncated frame (declares 100 bytes, carries 3).
    let mut truncated = web::frame(0, &task("echo").encode_to_vec());
    truncated[1..5].copy_from_slice(&100u32.to_be_bytes());
    truncated.truncate(8);
    for mode in [Mode::Binary, Mode::Text] {
        let request = web::grpc_web_request(mode, "SubmitTask", Some(&token), truncated.clone());
        let (parts, body) = web.fetch(Version::HTTP_11, request).await;
        let reply = web::GrpcWebReply::parse(parts, &body, mode);
        assert_ne!(reply.status(), 0, "{mode:?}: {reply:?}");
    }
    // A frame declaring more than the 50 MiB limit: refused at once, with tonic's code for it
    // (OutOfRange, as on the gRPC port).
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(60u32 << 20).to_be_bytes());
    huge.extend_from_slice(b"abc");
    let request = web::grpc_web_request(Mode::Binary, "SubmitTask", Some(&token), huge);
    let (parts, body) = web.fetch(Version::HTTP_2, request).await;
    let reply = web::GrpcWebReply::parse(parts, &body, Mode::Binary);
    assert_eq!(reply.status(), tonic::Code::OutOfRange as i32, "{reply:?}");
    assert!(reply.message().contains("too%20large"), "{reply:?}");
    // Garbage protobuf in a well-formed frame.
    let request = web::grpc_web_request(
        Mode::Binary,
        "SubmitTask",
        Some(&token),
        web::frame(0, &[0xff; 16]),
    );
    let (parts, body) = web.fetch(Version::HTTP_11, request).await;
    let reply = web::GrpcWebReply::parse(parts, &body, Mode::Binary);
    assert_eq!(reply.status(), tonic::Code::Internal as i32, "{reply:?}");
    // Invalid base64 in a text request.
    let mut request = web::grpc_web_request(Mode::Text, "ListUsers", Some(&token), Vec::new());
    *request.body_mut() = Full::new(Bytes::from_static(b"!!!not base64!!!"));
    let (parts, body) = web.fetch(Version::HTTP_11, request).await;
    assert!(
        parts.status != 200 || web::GrpcWebReply::parse(parts, &body, Mode::Text).status() != 0,
        "invalid base64 is refused"
    );
    // An unknown method: Unimplemented.
    let reply = web
        .grpc_web(
            Version::HTTP_11,
            Mode::Text,
            "NoSuchMethod",
            Some(&token),
            &(),
        )
        .await;
    assert_eq!(
        reply.status(),
        tonic::Code::Unimplemented as i32,
        "{reply:?}"
    );
    // Not gRPC-Web over HTTP/1.1: 400; a GET of an RPC path: refused.
    let (parts, _) = web
        .fetch(
            Version::HTTP_11,
            Request::post("/taskqueue.TaskQueue/ListUsers")
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap(),
        )
        .await;
    assert_eq!(parts.status, 400);
    let (parts, _) = web.get("/taskqueue.TaskQueue/ListUsers").await;
    assert!(parts.status.is_client_error(), "{:?}", parts.status);
    // Unknown paths: 404.
    let (parts, _) = web.get("/no/such/page").await;
    assert_eq!(parts.status, 404);

    let after = replica
        .admin()
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len();
    assert_eq!(before, after, "no bad request wrote a task");
    // And the listener still serves.
    let reply = web
        .grpc_web(Version::HTTP_2, Mode::Text, "ListUsers", Some(&token), &())
        .await;
    assert_eq!(reply.status(), 0);
    let metrics = replica.metrics().await;
    assert!(
        metrics.contains("taskqueue_web_requests_total{kind=\"grpc-web\""),
        "web requests are counted"
    );
}

/// Under TLS the web listener offers HTTP/2 and HTTP/1.1 by ALPN, with the gRPC port's
/// certificate (here the generated self-signed one), and serves both.
#[tokio::test]
async fn tls_offers_h2_and_http1_by_alpn() {
    use rustls::pki_types::pem::PemObject as _;
    let mut config = test_config("postgres://unused");
    config.tls = taskqueue::config::TlsMode::SelfSigned;
    let tls = taskqueue::web::tls_config(&config)
        .unwrap()
        .expect("TLS is configured");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(taskqueue::web::serve(
        listener,
        app,
        Some(tls),
        stop.clone(),
    ));

    let cert = config.data_dir.join("tls/cert.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    for (offered, expected) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".to_vec()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".to_vec()),
    ] {
        let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        client.alpn_protocols = offered;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("the TLS handshake succeeds");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&expected[..]));
        // And a request over what was negotiated is served.
        let io = hyper_util::rt::TokioIo::new(stream);
        let request = Request::get("https://localhost/").body(empty()).unwrap();
        let response = if expected == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send.send_request(request).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(request).await.unwrap()
        };
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the listener stops when draining")
        .unwrap();
}
