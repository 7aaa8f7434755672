//! The web listener (`--https-port`): what scitq's browser UI talks to. One port, the same on every
//! replica, serving
//! - gRPC-Web for `taskqueue.TaskQueue` at `POST /taskqueue.TaskQueue/<Method>` (`grpc-web-text`
//!   and `grpc-web+proto`, server streams included) through the very layers of the gRPC port
//!   (metrics, auth, panics), so an RPC has one access rule whichever port it comes by;
//! - the REST helpers of [`rest`] (`/login`, `/fetchCookie`, `/logout`, `/WorkerToken`);
//! - the WebSocket `/ws` of [`ws`];
//! - `GET /scitq-client?token=…`, the worker binary for cloud-init;
//! - the built UI's files from `--ui-dir` at the root (hashed `/assets/…` cached for a year,
//!   everything else revalidated).
//!
//! Protocols: HTTP/1.1 and HTTP/2 on every connection — under TLS offered by ALPN (`h2`,
//! `http/1.1`), in plain HTTP (behind a load balancer that terminates TLS) HTTP/2 by prior
//! knowledge. HTTP/2 matters in practice: the UI opens two log streams per running task it shows,
//! which exhaust a browser's six HTTP/1.1 connections per host. WebSocket upgrades work over
//! HTTP/1.1 and over HTTP/2 (extended CONNECT).
//!
//! CORS adds the headers of the one configured UI origin (`--ui-origin`, default
//! `https://<server fqdn>:5173`, the UI's development server) and answers every `OPTIONS` with 200;
//! it never refuses a request because of its `Origin` (browsers send one on same-origin POSTs and
//! WebSocket upgrades too): who may do what is the auth layer's business.

pub mod rest;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};

use crate::api::Service;
use crate::api::auth;
use crate::api::state::AppState;
use crate::config::Config;
use crate::proto::task_queue_server::TaskQueueServer;
use crate::server::panics;
use crate::telemetry::grpc::GrpcMetricsLayer;
use crate::telemetry::metrics as m;

/// Headers a cross-origin UI may send (those of the UI's gRPC-Web transport).
const CORS_HEADERS: [&str; 5] = [
    "content-type",
    "authorization",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
];
/// Headers a cross-origin UI may read (gRPC-Web puts a call's status in them).
const CORS_EXPOSED: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
/// How long a browser may reuse a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);
/// Longest a connection may take to send its request headers (slow-loris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The router of the web listener, `grpc` being the service of the gRPC port (shared, not copied).
pub fn router(state: Arc<AppState>, hub: ws::WsHub, grpc: TaskQueueServer<Service>) -> Router {
    let config = state.config.clone();
    let mut app: Router<Arc<AppState>> = Router::new()
        .merge(rest::routes())
        .merge(ws::routes(hub))
        .route("/scitq-client", axum::routing::get(client_download));
    if !config.disable_grpcweb {
        let grpc_web = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(GrpcMetricsLayer)
            .layer(auth::AuthLayer::new(state.auth.clone()))
            .layer(panics::layer())
            .service(grpc);
        app = app.route_service("/taskqueue.TaskQueue/{method}", grpc_web);
    }
    let app = match &config.ui_dir {
        Some(dir) => app.fallback_service(tower::ServiceExt::<Request<Body>>::map_response(
            ServeDir::new(dir).append_index_html_on_directories(true),
            cache_headers,
        )),
        None => app.fallback(not_found),
    };
    app.with_state(state)
        .layer(axum::middleware::from_fn(answer_options))
        .layer(cors(&config))
        .layer(axum::middleware::from_fn(count_requests))
}

/// CORS for the configured UI origin; other origins get no CORS headers (and no refusal).
fn cors(config: &Config) -> CorsLayer {
    let origin = HeaderValue::from_str(&config.ui_origin)
        .unwrap_or_else(|_| HeaderValue::from_static("null"));
    CorsLayer::new()
        .allow_origin(AllowOrigin::list([origin]))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(CORS_HEADERS.map(header::HeaderName::from_static))
        .expose_headers(CORS_EXPOSED.map(header::HeaderName::from_static))
        .max_age(CORS_MAX_AGE)
}

/// Every `OPTIONS` is answered 200 (a preflight was already answered by the CORS layer, which
/// adds its headers to this answer too).
async fn answer_options(request: Request<Body>, next: axum::middleware::Next) -> Response {
    if request.method() == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    next.run(request).await
}

/// `taskqueue_web_requests_total{kind, code}`: the web listener's requests by kind (grpc-web,
/// rest, ws, files) and HTTP status.
async fn count_requests(request: Request<Body>, next: axum::middleware::Next) -> Response {
    let kind = request_kind(request.uri().path());
    let response = next.run(request).await;
    metrics::counter!(m::WEB_REQUESTS, "kind" => kind, "code" => response.status().as_str().to_string())
        .increment(1);
    response
}

fn request_kind(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/taskqueue.TaskQueue/") => "grpc-web",
        "/login" | "/logout" | "/fetchCookie" | "/WorkerToken" => "rest",
        "/ws" => "ws",
        "/scitq-client" => "client",
        _ => "files",
    }
}

/// Hashed build assets never change under their name; everything else (index.html) is
/// revalidated so a new UI build is picked up at once.
fn cache_headers<B>(mut response: http::Response<B>) -> http::Response<B> {
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        let value = if response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"))
        {
            "no-cache"
        } else {
            "public, max-age=31536000, immutable"
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    response
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found (no UI is served here: start the server with --ui-dir)\n",
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct DownloadQuery {
    token: Option<String>,
}

/// `GET /scitq-client?token=<client_download_token>`: the worker binary (our `taskqueue`, or
/// `--client-binary`). Not served at all without a configured token.
async fn client_download(
    State(state): State<Arc<AppState>>,
    Query(query): Query<DownloadQuery>,
    request: Request<Body>,
) -> Response {
    let Some(expected) = state.config.client_download_token.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            "the worker binary is not served here (no --client-download-token)\n",
        )
            .into_response();
    };
    let given = query.token.unwrap_or_default();
    if !crate::domain::credentials::worker_token_matches(&given, expected) {
        return (StatusCode::UNAUTHORIZED, "invalid or missing token\n").into_response();
    }
    let path = match client_binary(&state.config) {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!(error = %e, "cannot find the worker binary to serve");
            return (
                StatusCode::NOT_FOUND,
                "the worker binary is not available\n",
            )
                .into_response();
        }
    };
    let mut response = match ServeFile::new(&path).oneshot(request).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"scitq-client\""),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn client_binary(config: &Config) -> anyhow::Result<PathBuf> {
    match &config.client_binary {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe().context("cannot locate the running binary"),
    }
}

/// TLS of the web listener: the gRPC port's certificate, offering h2 and http/1.1 by ALPN.
pub fn tls_config(config: &Config) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let Some((cert, key)) = crate::server::tls::certificate_files(config)? else {
        return Ok(None);
    };
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid TLS certificate {}", cert.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("cannot read TLS key {}", key.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not match")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tls)))
}

/// Serves `app` on `listener` until `draining` is cancelled: then stops accepting and lets every
/// open connection finish its requests (long-lived streams end on `draining` themselves).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    draining: CancellationToken,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, tls = tls.is_some(), "serving the web listener (gRPC-Web, REST, /ws, UI)");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "web listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = draining.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let draining = draining.clone();
        connections.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, remote, local, app, draining).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %remote, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, remote, local, app, draining).await,
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection<IO>(
    io: IO,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    app: Router,
    draining: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The peer's address, where tonic handlers look for it (login throttling, logs).
    let info = tonic::transport::server::TcpConnectInfo {
        local_addr: local,
        remote_addr: Some(remote),
    };
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(info.clone());
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        let app = app.clone();
        async move {
            let response = match app.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(e) => match e {},
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(Some(1000));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %remote, error = %e, "web connection ended with an error");
            }
        }
        _ = draining.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
