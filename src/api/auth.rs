//! Authentication and authorization of every RPC of `taskqueue.TaskQueue`, unary and streaming alike
//! (docs/architecture.md#roles-and-ownership), as a tower layer in front of the service. It reads
//! `authorization: Bearer <token>`, resolves it to a `Caller` (the worker token, compared in
//! constant time, or a live session), applies the access rule of `rpcs` (roles; the per-object
//! rules of `Owned` and `Machines` are checked by the handlers, which know the object), and hands
//! the `Caller` to the handler as a request extension. Health and reflection are not authenticated
//! (load balancers, ghz). A template script's scoped session reaches only `rpcs::SCRIPT_RPCS`, and
//! never as an admin.
//!
//! Cache: token digest → user, for `TOKEN_CACHE_TTL`. What may be stale: a Logout, DeleteUser or
//! UpdateUser made through another replica takes effect here within that TTL (on this replica, at
//! once; a deleted session also at once on every replica while its LISTEN session is up, through
//! the `session/revoked` event the WebSocket fan-out reads). Nothing else is cached; a session's expiry is checked by SQL on every cache refresh.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use metrics::counter;
use moka::future::Cache;

use crate::db::{self, Db, users::User};
use crate::domain::credentials::{token_digest, worker_token_matches};
use crate::domain::jwt::{self, JwtKey};
use crate::domain::ownership::Actor;
use crate::error::{Error, Result};
use crate::rpcs::{self, Access};
use crate::telemetry::metrics::CACHE_REQUESTS;
use crate::templates::SessionCache;

/// How long a token → user lookup is reused (the staleness documented above).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
const TOKEN_CACHE_CAPACITY: u64 = 100_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The configured worker token: workers, and the original's scripts that use it. Not an admin,
    /// but may read storage and registry secrets.
    WorkerToken,
    /// A logged-in user.
    User(User),
    /// No token: public RPCs, and log streams when legacy unauthenticated streams are allowed.
    Anonymous,
    /// No token on SendTaskLogs, legacy unauthenticated streams not allowed: may only append lines
    /// of tasks a worker holds (`LogAccess::HeldTasks`). This is how the original Go worker's logs
    /// arrive: its token interceptor is unary-only, so its streams carry no `authorization` header.
    AnonymousLogWriter,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::User(u) if u.is_admin)
    }
    pub fn user_id(&self) -> Option<i32> {
        match self {
            Caller::User(u) => Some(u.user_id),
            _ => None,
        }
    }
    /// The caller as the ownership and machines rules see it.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::User(u) if u.is_admin => Actor::Admin(u.user_id),
            Caller::User(u) => Actor::User(u.user_id),
            Caller::WorkerToken => Actor::WorkerToken,
            Caller::Anonymous | Caller::AnonymousLogWriter => Actor::Nobody,
        }
    }
    /// Reads the caller a request was authenticated as.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous)
    }
}

/// Resolves tokens to callers.
pub struct Authenticator {
    db: Db,
    worker_token: String,
    /// Checks the signature and expiry of JWT session tokens before their database lookup.
    jwt: JwtKey,
    allow_anonymous_log_streams: bool,
    cache: Cache<[u8; 32], Option<User>>,
}

impl Authenticator {
    pub fn new(
        db: Db,
        worker_token: String,
        jwt: JwtKey,
        allow_anonymous_log_streams: bool,
    ) -> Authenticator {
        let cache = Cache::builder()
            .max_capacity(TOKEN_CACHE_CAPACITY)
            .time_to_live(TOKEN_CACHE_TTL)
            .build();
        Authenticator {
            db,
            worker_token,
            jwt,
            allow_anonymous_log_streams,
            cache,
        }
    }

    /// The caller behind an `authorization` header value.
    pub async fn authenticate(&self, header: Option<&http::HeaderValue>) -> Result<Caller> {
        let header = header.ok_or_else(|| {
            Error::unauthenticated("missing token: send 'authorization: Bearer <token>'")
        })?;
        let value = header
            .to_str()
            .map_err(|_| Error::unauthenticated("invalid token: not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::unauthenticated("invalid token: expected 'Bearer <token>'"))?;
        self.authenticate_token(token).await
    }

    /// The caller behind a bare token (the worker token, or a session's). A token shaped like our
    /// JWTs must carry a valid signature and be unexpired before its session is looked up; other
    /// session tokens (template scripts') go straight to the lookup.
    pub async fn authenticate_token(&self, token: &str) -> Result<Caller> {
        if worker_token_matches(token, &self.worker_token) {
            return Ok(Caller::WorkerToken);
        }
        if jwt::looks_like_jwt(token) {
            let now = chrono::Utc::now().timestamp();
            if let Err(e) = self.jwt.verify(token, now) {
                return Err(Error::unauthenticated(format!(
                    "invalid session token ({e}): log in again"
                )));
            }
        }
        let digest = token_digest(token);
        let hit = self.cache.contains_key(&digest);
        counter!(CACHE_REQUESTS, "cache" => "session", "result" => if hit { "hit" } else { "miss" }).increment(1);
        let db = self.db.clone();
        let user = self
            .cache
            .try_get_with(digest, async move {
                db::users::session_user(&db, &digest).await
            })
            .await
            .map_err(|e: Arc<Error>| Error::new(e.code, e.message.clone()))?;
        user.map(Caller::User)
            .ok_or_else(|| Error::unauthenticated("invalid or expired session: log in again"))
    }

    /// The configured worker token (for `/WorkerToken`, admins only).
    pub fn worker_token(&self) -> &str {
        &self.worker_token
    }

    /// Forgets a token on this replica at once (Logout).
    pub async fn forget(&self, token: &str) {
        self.cache.invalidate(&token_digest(token)).await;
    }

    /// Forgets a session by its digest on this replica (a session deleted through another
    /// replica, announced by `session/revoked`: see `web::ws`).
    pub async fn forget_digest(&self, digest: &[u8; 32]) {
        self.cache.invalidate(digest).await;
    }

    /// Forgets every cached session on this replica (user changed or deleted).
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    /// Decides whether `caller` may call `access`-protected RPCs.
    fn authorize(&self, access: Access, caller: &Caller, method: &str) -> Result<()> {
        if let Caller::User(u) = caller
            && u.scoped
            && !rpcs::script_may_call(method)
        {
            return Err(Error::permission_denied(format!(
                "{method} is not open to a template script's token (it may only build its workflow)"
            )));
        }
        match access {
            Access::Admin if !caller.is_admin() => Err(Error::permission_denied(format!(
                "{method} requires an admin user"
            ))),
            Access::Secrets if !(caller.is_admin() || *caller == Caller::WorkerToken) => {
                Err(Error::permission_denied(format!(
                    "{method} returns secrets: only the worker token or an admin may call it"
                )))
            }
            Access::Worker | Access::LogWrite
                if !(caller.is_admin() || *caller == Caller::WorkerToken) =>
            {
                Err(Error::permission_denied(format!(
                    "{method} is a worker RPC: call it with the worker token, not a user session"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Template scripts' sessions are forgotten through the same cache as a Logout.
impl SessionCache for Authenticator {
    fn forget<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Authenticator::forget(self, token))
    }
}

/// The tower layer; see the module documentation.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(rpc) = rpcs::lookup(req.uri().path()) else {
            return Box::pin(inner.call(req));
        };
        let auth = self.auth.clone();
        Box::pin(async move {
            let header = req.headers().get(http::header::AUTHORIZATION).cloned();
            let caller = match (rpc.access, header) {
                (Access::Public, _) => Ok(Caller::Anonymous),
                (Access::LogStream | Access::LogWrite, None)
                    if auth.allow_anonymous_log_streams =>
                {
                    Ok(Caller::Anonymous)
                }
                (Access::LogWrite, None) => Ok(Caller::AnonymousLogWriter),
                (access, header) => match auth.authenticate(header.as_ref()).await {
                    Ok(caller) => auth.authorize(access, &caller, rpc.name).map(|()| caller),
                    Err(e) => Err(e),
                },
            };
            match caller {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(e) => Ok(tonic::Status::from(e).into_http()),
            }
        })
    }
}
