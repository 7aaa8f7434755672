//! `GET /ws`: the UI's WebSocket (the original UI's protocol; docs/architecture.md#web-surface),
//! with events from every replica.
//!
//! Events are published by PostgreSQL (`db::ws_events`, schema/0008_ws.sql) on channel `tq_ws`.
//! Each replica runs ONE fan-out task (`WsHub`) reading them from the replica's LISTEN session
//! (`db::notify`, shared with the log followers), fetching by-reference bodies, and handing each
//! event's envelope (serialized once) to the local sockets that may see it (`domain::ws`) and
//! subscribed to it. Each socket has a bounded buffer of `CLIENT_BUFFER` messages: a socket whose
//! buffer is still full `FULL_GRACE` after the others were served is disconnected — so a slow
//! reader delays the others at most once, by that grace, and never blocks them.
//!
//! Authentication: the upgrade needs a live, unscoped user session — the `session_token` cookie
//! (what the UI has after `/login`) or `Authorization: Bearer` — else 401 (the original
//! authenticates nothing here). A session revoked anywhere (Logout, user deletion) closes its
//! sockets at once on every replica (the `session/revoked` notification of the session row's
//! deletion), and every `SESSION_RECHECK` a socket checks its session again as a safety net (it
//! also closes when the user's admin flag changed: the UI reconnects with the new rights).
//!
//! Limits: `MAX_SOCKETS` per replica, `MAX_SOCKETS_PER_USER` per user and replica (refused with
//! 503 / 429); inbound messages of at most `MAX_INBOUND` (closed with 1009); a server ping every
//! `PING_INTERVAL`, closed when nothing arrived for `READ_DEADLINE`; a write stuck for
//! `WRITE_TIMEOUT` closes the socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use futures::{SinkExt as _, StreamExt as _};
use metrics::{counter, gauge};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{Authenticator, Caller};
use crate::api::state::AppState;
use crate::db::notify::{Message as Notification, Notifier};
use crate::db::watch::Watch;
use crate::db::{Db, ws_events};
use crate::domain::credentials::token_digest;
use crate::domain::ws::{self as rules, Audience, Body, Inbound, Notice, Subscriptions, Viewer};
use crate::error::Code;
use crate::telemetry::metrics as m;

/// Sockets one replica serves at once.
pub const MAX_SOCKETS: usize = 10_000;
/// Sockets one user may hold on one replica (a browser tab holds one).
pub const MAX_SOCKETS_PER_USER: usize = 32;
/// Messages waiting for one socket; a socket whose buffer is full is disconnected (Appendix A).
pub const CLIENT_BUFFER: usize = 256;
/// The server pings this often (Appendix A).
pub const PING_INTERVAL: Duration = Duration::from_secs(54);
/// A socket from which nothing (not even a pong) arrived for this long is closed (Appendix A).
pub const READ_DEADLINE: Duration = Duration::from_secs(60);
/// The largest inbound message (Appendix A).
pub const MAX_INBOUND: usize = 1 << 20;
/// A write to a socket that does not complete within this is given up (the socket is closed).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a socket checks again that its session is live (revocations also arrive at once).
pub const SESSION_RECHECK: Duration = Duration::from_secs(10);
/// How long the fan-out waits, once, for a socket whose buffer is full before disconnecting
/// it: a healthy reader that was not scheduled during a burst of thousands of events keeps its
/// socket; one that does not read loses it.
pub const FULL_GRACE: Duration = Duration::from_millis(250);
/// Events delivered between two yields of the fan-out (see `Hub::dispatch`).
const DELIVERY_SLICE: usize = 16;
/// How often the fan-out prunes stored (by-reference) event bodies.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// The session cookie the UI's `/login` sets.
pub const SESSION_COOKIE: &str = "session_token";

/// The `/ws` route, its sockets registered with `hub`.
pub fn routes(hub: WsHub) -> Router<Arc<AppState>> {
    // `any`: HTTP/1.1 upgrades are GETs, HTTP/2 ones (RFC 8441) are CONNECTs.
    Router::new()
        .route("/ws", any(upgrade))
        .layer(Extension(hub))
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    Extension(hub): Extension<WsHub>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(token) = session_token(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in first: /ws needs the session_token cookie or an Authorization: Bearer token",
        );
    };
    let viewer = match resolve(&state, &token).await {
        Ok(viewer) => viewer,
        Err(refusal) => return refusal.into_response(),
    };
    let slot = match hub.register(viewer, token_digest(&token)) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    // Watched before the upgrade completes, so every event of a change the UI can read after it
    // reaches this socket (db::watch).
    let watching = match hub.hub.watch.enter().await {
        Ok(watching) => watching,
        Err(e) => {
            tracing::warn!(error = %e, "web socket refused: its watch could not be entered");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable: try again in a moment",
            );
        }
    };
    ws.max_message_size(MAX_INBOUND)
        .max_frame_size(MAX_INBOUND)
        .on_upgrade(move |socket| async move {
            let _watching = watching;
            serve(state, socket, slot, token).await
        })
}

/// The session token of a request: the `session_token` cookie, else a bearer token.
fn session_token(headers: &HeaderMap) -> Option<String> {
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"').to_string());
    let from_header = || {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        Some(token.trim().to_string())
    };
    from_cookie
        .or_else(from_header)
        .filter(|t| !t.is_empty() && t.len() <= 4096)
}

/// The user behind `token`, or the refusal to send.
async fn resolve(state: &AppState, token: &str) -> Result<Viewer, Refusal> {
    let unauthorized = |why: &str| Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", why);
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Err(unauthorized("invalid session token"));
    };
    match state.auth.authenticate(Some(&bearer)).await {
        Ok(Caller::User(u)) if u.scoped => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a template script's session may not open /ws",
        )),
        Ok(Caller::User(u)) => Ok(Viewer {
            user_id: u.user_id,
            is_admin: u.is_admin,
        }),
        Ok(_) => Err(unauthorized("/ws needs a user session: log in")),
        Err(e) if e.code == Code::Unauthenticated => Err(unauthorized(&e.message)),
        Err(e) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("cannot check the session now: {}", e.message),
        )),
    }
}

fn refuse(status: StatusCode, reason: &'static str, message: &str) -> Response {
    Refusal::new(status, reason, message).into_response()
}

/// An upgrade refused: its status and message (counted by reason when built).
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: &str) -> Refusal {
        counter!(m::WS_REFUSED, "reason" => reason).increment(1);
        Refusal {
            status,
            message: message.to_string(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// Why the server closes a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Its buffer was full.
    Slow,
    /// Its session was revoked or expired, or the user's rights changed.
    Revoked,
    /// An inbound message over `MAX_INBOUND`.
    TooBig,
    /// Nothing arrived within `READ_DEADLINE`.
    Idle,
    /// The replica is shutting down.
    Draining,
    /// The client went away, closed, or broke the protocol; a write failed or got stuck.
    Gone,
}

impl Close {
    fn label(self) -> &'static str {
        match self {
            Close::Slow => "slow",
            Close::Revoked => "revoked",
            Close::TooBig => "too_big",
            Close::Idle => "idle",
            Close::Draining => "draining",
            Close::Gone => "gone",
        }
    }

    fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Slow => (
                close_code::POLICY,
                "too slow: more than 256 messages waiting",
            ),
            Close::Revoked => (close_code::POLICY, "session revoked: log in again"),
            Close::TooBig => (close_code::SIZE, "message over 1 MiB"),
            Close::Idle => (close_code::POLICY, "nothing received for 60 s"),
            Close::Draining => (close_code::AWAY, "server shutting down: reconnect"),
            Close::Gone => return None,
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

/// Asks a socket's task to close, once, with a reason.
#[derive(Default)]
struct Closer {
    token: CancellationToken,
    reason: OnceLock<Close>,
}

impl Closer {
    fn close(&self, reason: Close) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Close {
        self.reason.get().copied().unwrap_or(Close::Gone)
    }
}

/// One socket as the fan-out sees it.
struct Entry {
    viewer: Viewer,
    digest: [u8; 32],
    subscriptions: Arc<Mutex<Subscriptions>>,
    tx: mpsc::Sender<Utf8Bytes>,
    closer: Arc<Closer>,
}

#[derive(Default)]
struct Clients {
    by_id: HashMap<u64, Entry>,
    per_user: HashMap<i32, usize>,
}

struct Hub {
    db: Db,
    /// Entered by every socket: web events are published while one is (db::watch).
    watch: Watch,
    /// Told of sessions revoked through other replicas, so its cache forgets them at once.
    auth: Arc<Authenticator>,
    clients: Mutex<Clients>,
    next_id: AtomicU64,
}

/// The replica's WebSocket fan-out. Cheap to clone; its task stops with the `stop` token.
#[derive(Clone)]
pub struct WsHub {
    hub: Arc<Hub>,
}

/// A registered socket: its receiving end and subscriptions. Dropping it unregisters.
struct Slot {
    hub: Arc<Hub>,
    id: u64,
    viewer: Viewer,
    rx: mpsc::Receiver<Utf8Bytes>,
    subscriptions: Arc<Mutex<Subscriptions>>,
    closer: Arc<Closer>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = lock(&self.hub.clients);
        clients.by_id.remove(&self.id);
        if let Some(n) = clients.per_user.get_mut(&self.viewer.user_id) {
            *n -= 1;
            if *n == 0 {
                clients.per_user.remove(&self.viewer.user_id);
            }
        }
        gauge!(m::WS_SOCKETS).set(clients.by_id.len() as f64);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WsHub {
    /// Starts the fan-out of `tq_ws` notifications from `notifier` until `stop`.
    pub fn start(
        db: Db,
        notifier: &Notifier,
        watch: Watch,
        auth: Arc<Authenticator>,
        stop: CancellationToken,
    ) -> WsHub {
        let hub = Arc::new(Hub {
            db,
            watch,
            auth,
            clients: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        // Receive from now on: events committed after the replica started reach its sockets.
        let rx = notifier.messages(ws_events::CHANNEL);
        tokio::spawn(fan_out(hub.clone(), rx, stop));
        WsHub { hub }
    }

    /// Sockets open on this replica.
    pub fn sockets(&self) -> usize {
        lock(&self.hub.clients).by_id.len()
    }

    fn register(&self, viewer: Viewer, digest: [u8; 32]) -> Result<Slot, Refusal> {
        let mut clients = lock(&self.hub.clients);
        if clients.by_id.len() >= MAX_SOCKETS {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica_full",
                "this replica serves its maximum of WebSockets: try another replica",
            ));
        }
        let mine = clients.per_user.entry(viewer.user_id).or_default();
        if *mine >= MAX_SOCKETS_PER_USER {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "user_full",
                &format!(
                    "you already hold {MAX_SOCKETS_PER_USER} WebSockets on this replica: close some"
                ),
            ));
        }
        *mine += 1;
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let subscriptions = Arc::new(Mutex::new(Subscriptions::default()));
        let closer = Arc::new(Closer::default());
        clients.by_id.insert(
            id,
            Entry {
                viewer,
                digest,
                subscriptions: subscriptions.clone(),
                tx,
                closer: closer.clone(),
            },
        );
        gauge!(m::WS_SOCKETS).set(clients.by_id.len() as f64);
        Ok(Slot {
            hub: self.hub.clone(),
            id,
            viewer,
            rx,
            subscriptions,
            closer,
        })
    }
}

/// The replica's one fan-out loop: every `tq_ws` notification to the sockets that want it.
async fn fan_out(
    hub: Arc<Hub>,
    mut rx: broadcast::Receiver<Notification>,
    stop: CancellationToken,
) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = prune.tick() => {
                let db = hub.db.clone();
                tokio::spawn(async move {
                    if let Err(e) = ws_events::prune(&db).await {
                        tracing::debug!(error = %e, "could not prune stored websocket events");
                    }
                });
            }
            message = rx.recv() => match message {
                Ok(Notification::Payload(body)) => hub.dispatch(&body).await,
                Ok(Notification::Reconnected) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counter!(m::WS_EVENTS, "kind" => "lost").increment(n);
                    tracing::warn!(lost = n, "websocket fan-out fell behind: events lost");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

impl Hub {
    async fn dispatch(&self, body: &str) {
        let events = match Body::parse(body) {
            Ok(Body::Events(events)) => {
                counter!(m::WS_EVENTS, "kind" => "inline").increment(events.len() as u64);
                events
            }
            Ok(Body::Ref(event_id)) => {
                let events = self.fetch(event_id).await;
                counter!(m::WS_EVENTS, "kind" => "ref").increment(events.len() as u64);
                events
            }
            Err(e) => {
                counter!(m::WS_EVENTS, "kind" => "bad").increment(1);
                tracing::warn!(error = %e, "unreadable websocket event");
                return;
            }
        };
        for (i, notice) in events.iter().enumerate() {
            if notice.audience == Audience::Internal {
                self.internal(notice).await;
            } else {
                self.deliver(notice).await;
            }
            // One statement's events may be thousands: let the sockets write between slices.
            if i % DELIVERY_SLICE == DELIVERY_SLICE - 1 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Queues one event to every local socket that may see it and subscribed to it. A socket
    /// whose buffer is full gets `FULL_GRACE` to make room (the others are already served),
    /// then is disconnected; a disconnected socket is skipped, so each slow socket delays the
    /// fan-out at most once.
    async fn deliver(&self, notice: &Notice) {
        let envelope = Utf8Bytes::from(notice.envelope());
        let mut late = Vec::new();
        {
            let clients = lock(&self.clients);
            for entry in clients.by_id.values() {
                if entry.closer.token.is_cancelled()
                    || !rules::may_receive(entry.viewer, notice.audience, notice.owner)
                    || !lock(&entry.subscriptions).wants(&notice.kind, notice.id)
                {
                    continue;
                }
                match entry.tx.try_send(envelope.clone()) {
                    Ok(()) => counter!(m::WS_MESSAGES_SENT).increment(1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        late.push((entry.tx.clone(), entry.closer.clone()))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        for (tx, closer) in late {
            match tokio::time::timeout(FULL_GRACE, tx.send(envelope.clone())).await {
                Ok(Ok(())) => counter!(m::WS_MESSAGES_SENT).increment(1),
                Ok(Err(_)) => {}
                Err(_) => closer.close(Close::Slow),
            }
        }
    }

    /// The events of a stored body (over 8 kB); none when it cannot be read.
    async fn fetch(&self, event_id: i64) -> Vec<Notice> {
        match ws_events::fetch(&self.db, event_id).await {
            Ok(Some(body)) => match Body::parse(&body) {
                Ok(Body::Events(events)) => events,
                _ => {
                    tracing::warn!(event_id, "unreadable stored websocket event");
                    Vec::new()
                }
            },
            Ok(None) => {
                tracing::warn!(event_id, "stored websocket event already pruned");
                Vec::new()
            }
            Err(e) => {
                counter!(m::WS_EVENTS, "kind" => "lost").increment(1);
                tracing::warn!(event_id, error = %e, "could not read a stored websocket event");
                Vec::new()
            }
        }
    }

    /// Replica-internal signals: a revoked session closes its sockets, and this replica's
    /// session cache forgets it.
    async fn internal(&self, notice: &Notice) {
        if (notice.kind.as_str(), notice.action.as_str()) != ("session", "revoked") {
            return;
        }
        let Some(digest) = notice
            .payload
            .get("tokenSha256")
            .and_then(|v| v.as_str())
            .and_then(|h| hex::decode(h).ok())
        else {
            return;
        };
        let Ok(digest) = <[u8; 32]>::try_from(digest) else {
            return;
        };
        self.auth.forget_digest(&digest).await;
        for entry in lock(&self.clients).by_id.values() {
            if entry.digest == digest {
                entry.closer.close(Close::Revoked);
            }
        }
    }
}

/// One socket's life: forwards its buffered events, answers its messages, pings, and closes it
/// for the first reason that comes (see `Close`).
async fn serve(state: Arc<AppState>, socket: WebSocket, mut slot: Slot, token: String) {
    let (mut sink, mut stream) = socket.split();
    let start = Instant::now();
    let mut ping = tokio::time::interval_at(start + PING_INTERVAL, PING_INTERVAL);
    let mut recheck = tokio::time::interval_at(start + SESSION_RECHECK, SESSION_RECHECK);
    let mut deadline = start + READ_DEADLINE;
    let closer = slot.closer.clone();
    let reason = loop {
        let outgoing = tokio::select! {
            biased;
            _ = closer.token.cancelled() => break closer.reason(),
            _ = state.draining.cancelled() => break Close::Draining,
            _ = tokio::time::sleep_until(deadline) => break Close::Idle,
            inbound = stream.next() => {
                deadline = Instant::now() + READ_DEADLINE;
                match inbound {
                    Some(Ok(Message::Text(text))) => answer(&slot, &text),
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => answer(&slot, text),
                        Err(_) => Some(rules::error_reply("messages are UTF-8 JSON text")),
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_))) | None => break Close::Gone,
                    Some(Err(e)) => break inbound_error(&e),
                }.map(|reply| Message::Text(reply.into()))
            }
            event = slot.rx.recv() => match event {
                Some(text) => {
                    // Write what is waiting in one go (one flush), so a burst drains faster
                    // than the fan-out fills the buffer.
                    if !write_burst(&mut sink, &mut slot.rx, text).await {
                        break Close::Gone;
                    }
                    None
                }
                None => break Close::Gone,
            },
            _ = ping.tick() => Some(Message::Ping(Default::default())),
            _ = recheck.tick() => {
                if !session_still_valid(&state, &token, slot.viewer).await {
                    break Close::Revoked;
                }
                None
            }
        };
        if let Some(message) = outgoing {
            match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
                Ok(Ok(())) => {}
                _ => break Close::Gone,
            }
        }
    };
    counter!(m::WS_CLOSED, "reason" => reason.label()).increment(1);
    tracing::debug!(
        user_id = slot.viewer.user_id,
        reason = reason.label(),
        "websocket closed"
    );
    if let Some(frame) = reason.frame() {
        let close = sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }
}

/// Most messages written before one flush.
const WRITE_BURST: usize = 64;

/// Writes `first` and whatever else is already waiting (up to `WRITE_BURST`), then flushes;
/// false when the socket failed or the write took longer than `WRITE_TIMEOUT`.
async fn write_burst(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> bool {
    let write = async {
        sink.feed(Message::Text(first)).await?;
        for _ in 1..WRITE_BURST {
            match rx.try_recv() {
                Ok(text) => sink.feed(Message::Text(text)).await?,
                Err(_) => break,
            }
        }
        sink.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// The reply to a client's text message, if any.
fn answer(slot: &Slot, text: &str) -> Option<String> {
    match Inbound::parse(text) {
        Ok(Inbound::Ping) => Some(rules::PONG.to_string()),
        Ok(Inbound::Subscribe { event, ids }) => lock(&slot.subscriptions)
            .subscribe(&event, &ids)
            .err()
            .map(|e| rules::error_reply(&e)),
        Ok(Inbound::Unsubscribe { event }) => {
            lock(&slot.subscriptions).unsubscribe(&event);
            None
        }
        Err(e) => Some(rules::error_reply(&e)),
    }
}

/// How a failed read closes the socket: a message over the limit is told so (1009).
fn inbound_error(e: &axum::Error) -> Close {
    // tungstenite's capacity errors ("Space limit exceeded: Message too long …") are not
    // reachable as a type through axum.
    let text = e.to_string();
    if text.contains("too long") || text.contains("Space limit") {
        Close::TooBig
    } else {
        Close::Gone
    }
}

/// Whether the socket's session is still live with the same rights. A database error keeps the
/// socket open (the next check decides).
async fn session_still_valid(state: &AppState, token: &str, viewer: Viewer) -> bool {
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return false;
    };
    match state.auth.authenticate(Some(&bearer)).await {
        Ok(Caller::User(u)) => u.user_id == viewer.user_id && u.is_admin == viewer.is_admin,
        Ok(_) => false,
        Err(e) => e.code != Code::Unauthenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_cookie_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(session_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(session_token(&h).as_deref(), Some("abc"));
        h.insert(
            header::COOKIE,
            "theme=dark; session_token=xyz.1; other=2".parse().unwrap(),
        );
        assert_eq!(
            session_token(&h).as_deref(),
            Some("xyz.1"),
            "the cookie first"
        );
        h.insert(header::COOKIE, "session_token=".parse().unwrap());
        assert_eq!(session_token(&h), None);
    }

    #[test]
    fn close_frames() {
        assert_eq!(Close::TooBig.frame().unwrap().code, close_code::SIZE);
        assert_eq!(Close::Slow.frame().unwrap().code, close_code::POLICY);
        assert!(Close::Gone.frame().is_none());
    }
}
