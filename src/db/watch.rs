//! Whether anybody watches a notification channel (schema/0015_watch.sql): the task triggers build
//! and send web events (`tq_ws`) and task-end wake-ups (`task_log`) only while some replica holds
//! a live row in `tq_watch` for that channel.
//!
//! A replica keeps one `Watch` per channel. Each web socket or log follower holds a `WatchGuard`
//! from `Watch::enter`; while any guard is held the row is renewed every `RENEW` (it lives `TTL`
//! ahead); afterwards it lapses by itself (so does the row of a replica that died).
//!
//! Why nothing is lost: when `enter` makes the row live (it was not, as far as this replica knows),
//! it then waits until every transaction that was running at that moment has ended
//! (`wait_for_running`). A trigger that found no live row ran in such a transaction, so its change
//! is committed before the watcher's first read, which therefore shows it; every later trigger
//! sees the row and publishes. The wait is bounded by `SETTLE_LIMIT`: a transaction left open
//! longer than that (none of ours is) could still hide one change from a watcher that joined while
//! it ran.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Db;
use crate::error::Result;

/// How far ahead a renewal sets the row's `until`.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a watched channel's row is renewed.
pub const RENEW: Duration = Duration::from_secs(15);
/// The longest `enter` waits for the transactions running when the row went live.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How often that wait looks again.
const SETTLE_POLL: Duration = Duration::from_millis(5);
/// A row this replica renewed is trusted to be live until `TTL` minus this after the renewal
/// started (the database's clock and ours need not agree to the millisecond).
const MARGIN: Duration = Duration::from_secs(10);

const RENEW_SQL: &str = "
    INSERT INTO tq_watch (replica, channel, until) VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (replica, channel) DO UPDATE SET until = EXCLUDED.until";

// Rows of replicas gone for an hour.
const PRUNE_SQL: &str = "DELETE FROM tq_watch WHERE until < now() - interval '1 hour'";

// The snapshot's xmax: every transaction that was running, or had begun writing, when this
// statement started has an id below it.
const HORIZON_SQL: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint";

// Whether every transaction with an id below $1 has ended.
const SETTLED_SQL: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= $1";

/// One channel's watch on this replica. Cheap to clone.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    replica: String,
    channel: &'static str,
    /// Guards held now.
    holders: AtomicUsize,
    /// Until when this replica's row is surely live (None: not known to be).
    live_until: Mutex<Option<Instant>>,
    /// One renewal at a time.
    renewing: tokio::sync::Mutex<()>,
}

/// Held by a watcher (a socket, a follower); dropping it lets the row lapse once none is held.
pub struct WatchGuard {
    inner: Arc<Inner>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.inner.holders.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watch {
    /// The watch of `channel` (`tq_ws` or `task_log`) for this replica, renewed until `stop`.
    pub fn start(db: Db, channel: &'static str, stop: CancellationToken) -> Watch {
        let replica = format!("{:016x}", rand::random::<u64>());
        let watch = Watch {
            inner: Arc::new(Inner {
                db,
                replica,
                channel,
                holders: AtomicUsize::new(0),
                live_until: Mutex::new(None),
                renewing: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(watch.clone().renew_loop(stop));
        watch
    }

    /// Marks one more watcher. Returns once the channel's notifications are published and every
    /// change made before they were is committed (see the module doc).
    pub async fn enter(&self) -> Result<WatchGuard> {
        self.inner.holders.fetch_add(1, Ordering::SeqCst);
        let guard = WatchGuard {
            inner: self.inner.clone(),
        };
        if !self.surely_live(MARGIN) {
            self.renew(false).await?;
        }
        Ok(guard)
    }

    /// Guards held now.
    pub fn holders(&self) -> usize {
        self.inner.holders.load(Ordering::SeqCst)
    }

    fn surely_live(&self, ahead: Duration) -> bool {
        let live = *self.inner.live_until.lock().expect("watch lock");
        live.is_some_and(|until| until > Instant::now() + ahead)
    }

    /// Renews the row (unless `always` is false and it is surely live); when it was not known to
    /// be live, then waits for the transactions that were running.
    async fn renew(&self, always: bool) -> Result<()> {
        let _one = self.inner.renewing.lock().await;
        if !always && self.surely_live(MARGIN) {
            return Ok(());
        }
        let was_live = self.surely_live(Duration::ZERO);
        let started = Instant::now();
        let client = self.inner.db.client().await?;
        let ttl = TTL.as_secs_f64();
        client
            .execute(RENEW_SQL, &[&self.inner.replica, &self.inner.channel, &ttl])
            .await?;
        *self.inner.live_until.lock().expect("watch lock") = Some(started + TTL - MARGIN);
        if !was_live {
            wait_for_running(&client).await?;
        }
        Ok(())
    }

    /// Every `RENEW`: renews the row while guards are held; prunes rows of long-gone replicas.
    async fn renew_loop(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.holders() == 0 {
                continue;
            }
            // Renewed well before the margin, so a held watch never looks lapsed to `enter`.
            if let Err(e) = self.renew(true).await {
                tracing::warn!(channel = self.inner.channel, error = %e, "watch renewal failed");
                continue;
            }
            if let Ok(client) = self.inner.db.client().await {
                let _ = client.execute(PRUNE_SQL, &[]).await;
            }
        }
    }
}

/// Waits until every transaction running now has ended, for at most `SETTLE_LIMIT`.
async fn wait_for_running(client: &tokio_postgres::Client) -> Result<()> {
    let horizon: i64 = client.query_one(HORIZON_SQL, &[]).await?.get(0);
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        let settled: bool = client.query_one(SETTLED_SQL, &[&horizon]).await?.get(0);
        if settled {
            break;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    Ok(())
}
