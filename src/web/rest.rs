//! The web UI's REST helpers (docs/architecture.md#web-surface, issue 15): `POST /login` (sets the
//! `session_token` cookie), `GET /fetchCookie` (hands the UI its token when the cookie holds a live
//! session), `POST /logout` (ends the session, expires the cookie) and `GET /WorkerToken` (admins
//! only; the original hands it to any user). Adapters over `api::users` and the authenticator: the
//! same login gate, session table and revocation as the gRPC Login/Logout.
//!
//! Bounds: bodies over [`MAX_BODY_BYTES`] → 413, tokens over `jwt::MAX_TOKEN_BYTES` are never
//! looked up. Errors are JSON `{"error": "…"}` with the HTTP status of the crate error's code;
//! internal details stay in the log.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use crate::api::auth::Caller;
use crate::api::state::AppState;
use crate::api::users;
use crate::domain::jwt::MAX_TOKEN_BYTES;
use crate::error::{Code, Error};

/// Largest request body accepted (a login is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The cookie holding the session token.
pub const SESSION_COOKIE: &str = "session_token";
/// Lifetime of the cookie (the original's day; the session row itself lives `--session-ttl`).
pub const COOKIE_MAX_AGE_SECS: u64 = 24 * 3600;

type Shared = Arc<AppState>;
type Reply = Result<Response, ApiError>;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/login", only(post(login)))
        .route("/fetchCookie", only(get(fetch_cookie)))
        .route("/logout", only(post(logout).get(logout)))
        .route("/WorkerToken", only(get(worker_token)))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// A method router whose other methods get a JSON 405.
fn only(router: MethodRouter<Shared>) -> MethodRouter<Shared> {
    router.fallback(|| async {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response()
    })
}

#[derive(serde::Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// The credentials of a login body: a JSON object (serde would also take a `[username,
/// password]` array), other members ignored.
fn login_body(body: &[u8]) -> serde_json::Result<LoginBody> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("not an object"));
    }
    serde_json::from_value(value)
}

async fn login(
    State(state): State<Shared>,
    Peer(peer): Peer,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let creds = login_body(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object {{\"username\": …, \"password\": …}}: {e}"),
        )
    })?;
    let token = users::start_session(&state, &creds.username, &creds.password, peer).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=None; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}"
    );
    Ok(private([set_cookie(cookie)?], json!({ "token": token })))
}

async fn fetch_cookie(State(state): State<Shared>, headers: HeaderMap) -> Reply {
    let token = session_cookie(&headers)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no session cookie: log in"))?;
    match state.auth.authenticate_token(token).await? {
        Caller::User(_) => Ok(private([], json!({ "token": token }))),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the cookie holds no user session",
        )),
    }
}

async fn logout(State(state): State<Shared>, headers: HeaderMap) -> Reply {
    if let Some(token) = session_cookie(&headers).or_else(|| bearer_token(&headers)) {
        users::end_session(&state, token).await?;
    }
    let expired = format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=None; Path=/; Max-Age=0");
    Ok(private([set_cookie(expired)?], json!({ "success": true })))
}

async fn worker_token(State(state): State<Shared>, headers: HeaderMap) -> Reply {
    let token = session_cookie(&headers)
        .or_else(|| bearer_token(&headers))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no session: send the session cookie or 'authorization: Bearer <token>'",
            )
        })?;
    let caller = state.auth.authenticate_token(token).await?;
    if !caller.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the worker token is given to admins only",
        ));
    }
    let worker_token = state.auth.worker_token();
    // `worker_token` is the original's key; `token` that of the other helpers.
    Ok(private(
        [],
        json!({ "token": worker_token, "worker_token": worker_token }),
    ))
}

/// A JSON answer that caches must not keep (it holds a token).
fn private<const N: usize>(
    headers: [(header::HeaderName, HeaderValue); N],
    body: serde_json::Value,
) -> Response {
    let no_store = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (headers, [no_store], Json(body)).into_response()
}

fn set_cookie(value: String) -> Result<(header::HeaderName, HeaderValue), ApiError> {
    let value = HeaderValue::try_from(value)
        .map_err(|_| ApiError::from(Error::internal("session token is not a header value")))?;
    Ok((header::SET_COOKIE, value))
}

/// The `session_token` cookie's value, if the request has a plausible one (HTTP/2 may split
/// cookies over several headers). Whether it is a live session is for
/// `Authenticator::authenticate_token` to say (`/ws` uses both too).
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"'))
        .find(|v| !v.is_empty())
        .filter(|v| v.len() <= MAX_TOKEN_BYTES)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty() && token.len() <= MAX_TOKEN_BYTES).then_some(token)
}

/// The peer address of the connection, for the login gate's per-address accounting (as the
/// listener records it: axum's `ConnectInfo`, or tonic's `TcpConnectInfo`).
struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let axum_peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let tonic_peer = || {
            parts
                .extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.ip())
        };
        Ok(Peer(axum_peer.or_else(tonic_peer)))
    }
}

/// An error answer: `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match e.code {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, %status, "web request failed");
            return ApiError::new(status, "the server could not answer: try again later");
        }
        ApiError::new(status, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn finds_the_session_cookie() {
        let h = headers(&[("cookie", "a=1; session_token=abc.def; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc.def"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "session_token=x")]);
        assert_eq!(session_cookie(&h), Some("x"));
        let h = headers(&[("cookie", "session_token=; session_tokenx=y")]);
        assert_eq!(session_cookie(&h), None);
        let h = headers(&[("cookie", "xsession_token=y")]);
        assert_eq!(session_cookie(&h), None);
        let long = format!("session_token={}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(session_cookie(&headers(&[("cookie", &long)])), None);
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn finds_the_bearer_token() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer t0k")])),
            Some("t0k")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic x")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer  ")])),
            None
        );
    }

    #[test]
    fn internal_errors_are_not_shown() {
        let e = ApiError::from(Error::internal("relation \"x\" does not exist"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("relation"));
        let e = ApiError::from(Error::unauthenticated("invalid credentials"));
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.message, "invalid credentials");
    }
}
