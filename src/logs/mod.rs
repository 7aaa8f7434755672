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
//!   `FOLLOW_POLL` as a safety net. `--max-log-followers` (20,000) streams per replica at most.

mod follow;
mod ingest;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::db::Db;
use crate::db::logs::NOTIFY_CHANNEL;
use crate::db::notify::Notifier;
use crate::telemetry::metrics as m;

pub use ingest::LogLine;

/// A SendTaskLogs stream writes what it received at least this often (design.md §6)…
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// …or as soon as this many bytes of lines are waiting (design.md §6).
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
    draining: CancellationToken,
    _stop_notifier: Arc<DropGuard>,
}

impl LogService {
    /// Starts the service (and its LISTEN session) on `db`.
    pub fn start(db: Db, max_followers: usize, draining: CancellationToken) -> LogService {
        let stop = draining.child_token();
        let notifier = Notifier::start(
            db.session_config("taskqueue-notify"),
            &[NOTIFY_CHANNEL],
            stop.clone(),
        );
        let pool = db.max_size().max(2);
        LogService {
            db,
            notifier,
            writers: Arc::new(Semaphore::new((pool / 2).max(1))),
            readers: Arc::new(Semaphore::new((pool / 3).max(1))),
            pages: Arc::default(),
            follow_slots: Arc::new(Semaphore::new(max_followers)),
            max_followers,
            draining,
            _stop_notifier: Arc::new(stop.drop_guard()),
        }
    }

    /// Whether the LISTEN session is up (tests wait for it).
    pub fn is_listening(&self) -> bool {
        self.notifier.is_listening()
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
