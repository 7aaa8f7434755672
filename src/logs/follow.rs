//! StreamTaskLogsOutput / StreamTaskLogsErr: replay one output of a task from its first line, then
//! follow it live, and end once the task is terminal (S, F, X) or hidden AND everything committed
//! before that has been sent.
//!
//! Why no tail line is lost: each cycle reads the task's status and the new batches in one
//! statement (one snapshot), then further pages while they are full. Batches are numbered in commit
//! order (`db::logs`), so reading `seq > last` never skips one; and a snapshot that shows the status
//! terminal also shows every batch committed before it. The stream ends after such a cycle.
//!
//! Cost: a follower holds no connection while it waits or while its client reads; it wakes on
//! NOTIFY (new batch, terminal status, LISTEN reconnected) or on a slow poll, reads with short
//! pooled queries (at most a third of the pool at once; followers at the same place share one,
//! see `pages`), and keeps at most one page in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::{
    FOLLOW_PAGE_BYTES, FOLLOW_PAGE_ROWS, FOLLOW_POLL, FOLLOW_POLL_UNLISTENED, LogService,
    OpenStream,
};
use crate::db;
use crate::db::logs::{FollowPage, NOTIFY_CHANNEL};
use crate::db::notify::Subscription;
use crate::db::watch::WatchGuard;
use crate::domain::logs::{LogStream, body_lines};
use crate::error::{Code, Error, Result};
use crate::telemetry::metrics as m;

impl LogService {
    /// Opens a follow stream of one output of `task_id`: its lines, oldest first. Unknown task →
    /// `NotFound`; too many streams on this replica, or of this user (`user_id`, when the caller is
    /// a logged-in user) → `ResourceExhausted`. The stream ends with
    /// `Unavailable` when the replica drains (the client may reconnect elsewhere and skip what it
    /// already has), and with `NotFound` if the task is deleted meanwhile.
    pub async fn follow(
        &self,
        task_id: i32,
        stream: LogStream,
        user_id: Option<i32>,
    ) -> Result<BoxStream<'static, Result<String>>> {
        let user_slot = match user_id {
            Some(user_id) => Some(self.user_follows.acquire(user_id).ok_or_else(|| {
                metrics::counter!(m::LOG_STREAMS_REFUSED).increment(1);
                Error::new(
                    Code::ResourceExhausted,
                    format!(
                        "you already follow {} task logs on this replica \
                         (--max-log-followers-per-user): close some first",
                        self.user_follows.max
                    ),
                )
            })?),
            None => None,
        };
        let slot = self.follow_slots.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(m::LOG_STREAMS_REFUSED).increment(1);
            Error::new(
                Code::ResourceExhausted,
                format!(
                    "this replica already serves {} log follow streams (--max-log-followers): \
                     try again later or through another replica",
                    self.max_followers
                ),
            )
        })?;
        // Watched before the first read, so the task's end is announced (db::watch), and
        // subscribed before it, so no wake-up can fall between the two.
        let watching = self.log_watch.enter().await?;
        let subscription = self.notifier.subscribe(NOTIFY_CHANNEL, task_id.to_string());
        if db::logs::follow_ended(&self.db, task_id).await?.is_none() {
            return Err(Error::not_found(format!("task {task_id} not found")));
        }
        let follower = Follower {
            service: self.clone(),
            task_id,
            stream,
            subscription,
            _watching: watching,
        };
        Ok(follower.lines(slot, user_slot).boxed())
    }

    /// The next page of batches after `after_seq`, whether the follow ends (read in the same
    /// snapshot), and whether more batches may follow at once. `NotFound` when the task is gone.
    async fn next_page(
        &self,
        task_id: i32,
        stream: LogStream,
        after_seq: i32,
    ) -> Result<(Page, bool)> {
        let page = self
            .pages
            .read(&self.db, &self.readers, task_id, stream, after_seq)
            .await?;
        if page.is_none() {
            return Err(Error::not_found(format!("task {task_id} was deleted")));
        }
        let page = Page(page);
        // A page is cut only by its row limit or by its byte budget: a batch is left out only when
        // those before it already reach the budget.
        let bytes = page.batches.last().map_or(0, |b| b.page_bytes);
        let more = page.batches.len() as i64 >= FOLLOW_PAGE_ROWS || bytes >= FOLLOW_PAGE_BYTES;
        Ok((page, more))
    }

    fn draining_error() -> Error {
        Error::unavailable("replica shutting down: follow the log again through another replica")
    }
}

/// A page read for a task that exists (possibly shared with other followers).
struct Page(Arc<Option<FollowPage>>);

impl std::ops::Deref for Page {
    type Target = FollowPage;
    fn deref(&self) -> &FollowPage {
        Option::as_ref(&self.0).expect("a Page is built only for a task that exists")
    }
}

struct Follower {
    service: LogService,
    task_id: i32,
    stream: LogStream,
    subscription: Subscription,
    _watching: WatchGuard,
}

impl Follower {
    /// The follow loop, as a stream of lines (see the module doc).
    fn lines(
        self,
        slot: tokio::sync::OwnedSemaphorePermit,
        user_slot: Option<super::UserFollow>,
    ) -> impl Stream<Item = Result<String>> {
        let Follower {
            service,
            task_id,
            stream,
            mut subscription,
            _watching,
        } = self;
        async_stream::try_stream! {
            let _watching = _watching;
            let _slot = slot;
            let _user_slot = user_slot;
            let _open = OpenStream::new("follow");
            let mut last_seq = 0;
            // Batches read after the first catch-up are live: their lag is measured.
            let mut live = false;
            loop {
                if service.draining.is_cancelled() {
                    Err(LogService::draining_error())?;
                }
                subscription.mark_seen();
                // The first page's snapshot decides whether this is the last cycle; the pages
                // after it only see more.
                let mut ended = None;
                loop {
                    let (page, more) = service.next_page(task_id, stream, last_seq).await?;
                    ended.get_or_insert(page.ended);
                    let read_at = Instant::now();
                    for batch in &page.batches {
                        for line in body_lines(&batch.body) {
                            yield line.to_string();
                        }
                        if live {
                            let lag = batch.age_seconds.max(0.0) + read_at.elapsed().as_secs_f64();
                            metrics::histogram!(m::LOG_FOLLOW_LAG_SECONDS).record(lag);
                        }
                        last_seq = batch.seq;
                    }
                    if !more {
                        break;
                    }
                    if service.draining.is_cancelled() {
                        Err(LogService::draining_error())?;
                    }
                }
                if ended == Some(true) {
                    break;
                }
                live = true;
                let poll = if service.notifier.is_listening() {
                    jittered(FOLLOW_POLL)
                } else {
                    FOLLOW_POLL_UNLISTENED
                };
                tokio::select! {
                    _ = subscription.woken() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = service.draining.cancelled() => {}
                }
            }
        }
    }
}

/// `period` ± 20 %, so followers started together do not poll together.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::random_range(0.8..1.2))
}
