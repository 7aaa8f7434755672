//! Leader-only background loops (watchdog, dependency sweep, jobs, recruiter …). They run only while
//! this replica holds office, and every mutation they make is fenced by the leadership epoch.

pub mod catalog;
pub mod jobs;
pub mod recruiter;

use std::sync::Arc;

use scoped_futures::ScopedBoxFuture;

use crate::config::Config;
use crate::db::{Db, Op};
use crate::error::Result;

/// What a leader loop gets: the pool, the configuration, and the epoch of the term it runs in.
#[derive(Clone)]
pub struct LeaderContext {
    pub db: Db,
    pub config: Arc<Config>,
    pub epoch: i64,
}

impl LeaderContext {
    /// A transaction that first checks this term is still current (fencing): a deposed leader's
    /// write is refused with `FailedPrecondition` and changes nothing.
    pub async fn fenced_tx<'env, T, F>(&self, op: Op, mut f: F) -> Result<T>
    where
        F: for<'a> FnMut(
                &'a deadpool_postgres::Transaction<'a>,
            ) -> ScopedBoxFuture<'env, 'a, Result<T>>
            + Send
            + 'env,
        T: Send + 'env,
    {
        use scoped_futures::ScopedFutureExt as _;
        let epoch = self.epoch;
        self.db
            .tx(op, move |tx| {
                let body = f(tx);
                async move {
                    crate::db::leader::assert_epoch(tx, epoch).await?;
                    body.await
                }
                .scope_boxed()
            })
            .await
    }
}
