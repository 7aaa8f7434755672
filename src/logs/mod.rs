//! The server side of task log streams, shared by every handler of a replica: ingesting
//! SendTaskLogs streams in batches (`ingest`) and serving live StreamTaskLogs* followers
//! (`follow`). It owns the replica's LISTEN session (`db::notify`) and the bounds that keep many
//! streams from exhausting memory or the connection pool. Queries are in `db::logs`, pure rules in
//! `domain::logs`; the gRPC adapters in `api::logs`.
//!
//! Limits (README):
//! - SendTaskLogs buffers per stream at most `FLUSH_BYTES` (64 KiB) of lines plus one message, and
//!   flushes every `FLUSH_INTERVAL` (100 ms) or when full; it does not read the next message while
//!   a flush is written (back-pressure reaches the worker through HTTP/2 flow control). At most
//!   half the pool writes log batches at once. A line may be as long as a gRPC message (50 MiB).
//! - A follow stream holds no database connection while it waits or sends; it reads pages of at
//!   most `FOLLOW_PAGE_BYTES` (64 KiB, or one larger batch) with short pooled queries, at most a
//!   third of the pool at once, and wakes on NOTIFY (one LISTEN connection per replica) or every
//!   `FOLLOW_POLL` as a safety net. `--max-log-followers` (20,000) streams per replica at most,
//!   `--max-log-followers-per-user` (100) of them for one logged-in user.
//! - A task stores at most `--max-log-bytes-per-task` (1 GiB) of log, counted in the database so
//!   the bound holds across replicas; past it one "truncated" line is stored and the rest dropped.

mod follow;
mod ingest;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::db::Db;
use crate::db::logs::NOTIFY_CHANNEL;
use crate::db::notify::Notifier;
use crate::db::watch::Watch;
use crate::telemetry::metrics as m;

pub use ingest::LogLine;

/// A SendTaskLogs stream writes what it received at least this often
/// (docs/architecture.md#task-logs)…
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// …or as soon as this many bytes of lines are waiting (docs/architecture.md#task-logs).
pub const FLUSH_BYTES: usize = 64 << 10;
/// …or as soon as this many (task, output) pairs are waiting, whatever their size.
pub const FLUSH_KEYS: usize = 256;
/// A follower reads at most this many bytes of log per query (one larger batch is read alone).
pub const FOLLOW_PAGE_BYTES: i64 = 64 << 10;
/// A follower reads at most this many batches per query.
pub const FOLLOW_PAGE_ROWS: i64 = 256;
/// How often an idle follower looks again without a wake-up: a safety net only (NOTIFY wakes it
/// on new lines and on terminal statuses; a reconnected LISTEN session wakes everyone).
pub const FOLLOW_POLL: Duration = Duration::from_secs(10);
/// The poll of followers while the LISTEN session is down.
pub const FOLLOW_POLL_UNLISTENED: Duration = Duration::from_secs(1);

/// The log streaming service of a replica. Cheap to clone; the LISTEN session stops when the
/// replica drains or when the last clone is dropped.
#[derive(Clone)]
pub struct LogService {
    db: Db,
    notifier: Notifier,
    /// SendTaskLogs flushes writing at once: the rest of the pool stays free for pings.
    writers: Arc<Semaphore>,
    /// Follower queries running at once, so followers cannot starve the pool.
    readers: Arc<Semaphore>,
    /// Follower page reads waiting for a permit, shared by followers at the same place.
    pages: Arc<pages::PageReads>,
    /// Follow streams open on this replica.
    follow_slots: Arc<Semaphore>,
    max_followers: usize,
    /// Follow streams open on this replica per logged-in user.
    user_follows: UserFollows,
    /// Log bytes one task may store.
    max_log_bytes_per_task: u64,
    draining: CancellationToken,
    /// Task-end wake-ups are sent while this replica has followers (schema/0015_watch.sql).
    log_watch: Watch,
    /// Web events are built and sent while this replica has web sockets (held by `web::ws`).
    ws_watch: Watch,
    _stop_notifier: Arc<DropGuard>,
}

impl LogService {
    /// Starts the service (and its LISTEN session) on `db`.
    pub fn start(db: Db, limits: LogLimits, draining: CancellationToken) -> LogService {
        let max_followers = limits.max_followers;
        let stop = draining.child_token();
        let notifier = Notifier::start(
            db.session_config("taskqueue-notify"),
            &[NOTIFY_CHANNEL, crate::db::ws_events::CHANNEL],
            stop.clone(),
        );
        let pool = db.max_size().max(2);
        let log_watch = Watch::start(db.clone(), NOTIFY_CHANNEL, stop.clone());
        let ws_watch = Watch::start(db.clone(), crate::db::ws_events::CHANNEL, stop.clone());
        LogService {
            db,
            notifier,
            writers: Arc::new(Semaphore::new((pool / 2).max(1))),
            readers: Arc::new(Semaphore::new((pool / 3).max(1))),
            pages: Arc::default(),
            follow_slots: Arc::new(Semaphore::new(max_followers)),
            max_followers,
            user_follows: UserFollows::new(limits.max_followers_per_user),
            max_log_bytes_per_task: limits.max_log_bytes_per_task,
            draining,
            log_watch,
            ws_watch,
            _stop_notifier: Arc::new(stop.drop_guard()),
        }
    }

    /// The watch of web events (`tq_ws`), entered by every web socket (`web::ws`).
    pub fn ws_watch(&self) -> &Watch {
        &self.ws_watch
    }

    /// The replica's LISTEN session, shared with the WebSocket fan-out (`web::ws`).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Whether the LISTEN session is up (tests wait for it).
    pub fn is_listening(&self) -> bool {
        self.notifier.is_listening()
    }
}

/// The configured bounds of the log service.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Follow streams on this replica (`--max-log-followers`).
    pub max_followers: usize,
    /// Follow streams of one user on this replica (`--max-log-followers-per-user`).
    pub max_followers_per_user: usize,
    /// Log bytes one task stores (`--max-log-bytes-per-task`).
    pub max_log_bytes_per_task: u64,
}

/// Follow streams open per logged-in user. Callers without a user (the worker token, anonymous
/// legacy streams) are bounded by the replica-wide cap only.
#[derive(Clone)]
struct UserFollows {
    open: Arc<Mutex<HashMap<i32, usize>>>,
    max: usize,
}

/// One open follow stream of a user, given back when dropped.
struct UserFollow {
    open: Arc<Mutex<HashMap<i32, usize>>>,
    user_id: i32,
}

impl UserFollows {
    fn new(max: usize) -> UserFollows {
        UserFollows {
            open: Arc::default(),
            max,
        }
    }

    /// Takes one of `user_id`'s follow slots; `None` when all are taken.
    fn acquire(&self, user_id: i32) -> Option<UserFollow> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user_id).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UserFollow {
            open: self.open.clone(),
            user_id,
        })
    }
}

impl Drop for UserFollow {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

/// Counts an open stream in `LOG_STREAMS_ACTIVE` while it lives.
struct OpenStream(&'static str);

impl OpenStream {
    fn new(kind: &'static str) -> OpenStream {
        metrics::gauge!(m::LOG_STREAMS_ACTIVE, "kind" => kind).increment(1.0);
        OpenStream(kind)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(m::LOG_STREAMS_ACTIVE, "kind" => self.0).decrement(1.0);
    }
}
