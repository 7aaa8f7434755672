//! Follower page reads, coalesced: when followers of the same output at the same position need a
//! page while an identical read is still waiting for a reader permit, they join that read instead
//! of queueing their own — a hundred people following one task cost one query per new batch.
//!
//! Why joining never hides anything: a read leaves the table the moment it gets its permit, before
//! its query takes a snapshot. A follower joins only reads still in the table, so the snapshot its
//! page comes from is always taken after it joined — after it marked its wake-ups seen — and
//! therefore shows every batch and status it was woken for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared, WeakShared};
use tokio::sync::Semaphore;

use super::{FOLLOW_PAGE_BYTES, FOLLOW_PAGE_ROWS};
use crate::db::logs::FollowPage;
use crate::db::{self, Db};
use crate::domain::logs::LogStream;
use crate::error::{Code, Error, Result};

/// (task, output, last seq read).
type Key = (i32, LogStream, i32);
/// A page read shared by its followers; `None` when the task is gone.
type Read = BoxFuture<'static, Result<Arc<Option<FollowPage>>, ReadError>>;

/// The crate error is not `Clone`; a shared read hands each follower a copy of its parts.
#[derive(Debug, Clone)]
struct ReadError {
    code: Code,
    message: String,
}

/// Reads waiting for a permit, by key. Entries do not keep reads alive: a read whose followers all
/// left is dropped, and its entry pruned later.
#[derive(Default)]
pub(super) struct PageReads {
    pending: Mutex<HashMap<Key, (u64, WeakShared<Read>)>>,
    next_id: AtomicU64,
}

/// Dead entries are pruned when the table grows past this.
const PRUNE_ABOVE: usize = 1024;

impl PageReads {
    /// The page of `task_id`'s `stream` after `after_seq`: a pending identical read joined, or a
    /// new one started. At most `readers` permits' worth of reads run at once.
    pub(super) async fn read(
        self: &Arc<Self>,
        db: &Db,
        readers: &Arc<Semaphore>,
        task_id: i32,
        stream: LogStream,
        after_seq: i32,
    ) -> Result<Arc<Option<FollowPage>>> {
        let key = (task_id, stream, after_seq);
        let read = {
            let mut pending = self.pending.lock().expect("page reads lock");
            match pending.get(&key).and_then(|(_, weak)| weak.upgrade()) {
                Some(read) => read,
                None => {
                    if pending.len() > PRUNE_ABOVE {
                        pending.retain(|_, (_, weak)| weak.upgrade().is_some());
                    }
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let read: Shared<Read> =
                        run(Arc::downgrade(self), db.clone(), readers.clone(), key, id)
                            .boxed()
                            .shared();
                    if let Some(weak) = read.downgrade() {
                        pending.insert(key, (id, weak));
                    }
                    read
                }
            }
        };
        read.await.map_err(|e| Error::new(e.code, e.message))
    }

    /// Takes a read that got its permit off the table (if it is still the one there).
    fn leave(&self, key: Key, id: u64) {
        let mut pending = self.pending.lock().expect("page reads lock");
        if pending.get(&key).is_some_and(|(entry, _)| *entry == id) {
            pending.remove(&key);
        }
    }
}

/// One read: wait for a permit, leave the table, query.
async fn run(
    table: Weak<PageReads>,
    db: Db,
    readers: Arc<Semaphore>,
    key: Key,
    id: u64,
) -> Result<Arc<Option<FollowPage>>, ReadError> {
    let _permit = readers.acquire_owned().await.map_err(|_| ReadError {
        code: Code::Unavailable,
        message: "shutting down".into(),
    })?;
    if let Some(table) = table.upgrade() {
        table.leave(key, id);
    }
    let (task_id, stream, after_seq) = key;
    db::logs::read_after(
        &db,
        task_id,
        stream,
        after_seq,
        FOLLOW_PAGE_ROWS,
        FOLLOW_PAGE_BYTES,
    )
    .await
    .map(Arc::new)
    .map_err(|e| ReadError {
        code: e.code,
        message: e.message,
    })
}
