//! The leadership record (`cluster_leader`) and fencing (docs/architecture.md#leadership): a leader
//! writes its epoch on taking office; every leader-only mutation checks, in its own transaction,
//! that the epoch is still its own, holding a share lock on the record so a new leader's takeover
//! waits for it. Also the epochs of the Postgres-lock mode. Elections themselves live in `cluster`.

use std::time::Duration;

use scoped_futures::ScopedFutureExt as _;

use super::{Db, Op};
use crate::error::{Error, Result};

/// Marks a fencing refusal: the error's source when `assert_epoch` finds a newer term recorded.
/// Loops recognise it with [`is_deposed`] and step down instead of retrying.
#[derive(Debug, thiserror::Error)]
#[error("deposed: epoch {ours} is not the recorded epoch {recorded:?}")]
pub struct Deposed {
    pub ours: i64,
    pub recorded: Option<i64>,
}

/// True when `e` is a fencing refusal: this replica's term is over.
pub fn is_deposed(e: &Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<Deposed>())
}

/// Records `epoch` as the current term if it is newer than the recorded one. Returns false when a
/// newer (or equal) epoch is already recorded: the caller is not the current leader.
pub async fn take_office(
    tx: &deadpool_postgres::Transaction<'_>,
    epoch: i64,
    holder: &str,
) -> Result<bool> {
    let n = tx
        .execute(
            "INSERT INTO cluster_leader (id, epoch, holder, since) VALUES (1, $1, $2, now())
             ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, holder = EXCLUDED.holder, since = now()
             WHERE cluster_leader.epoch < EXCLUDED.epoch",
            &[&epoch, &holder],
        )
        .await?;
    Ok(n == 1)
}

/// Fencing: fails with `FailedPrecondition` (source [`Deposed`]) unless `epoch` is the recorded
/// term. Call it first in every leader-only transaction; the share lock it takes is held to the
/// end of the transaction.
pub async fn assert_epoch(tx: &deadpool_postgres::Transaction<'_>, epoch: i64) -> Result<()> {
    let stmt = tx
        .prepare_cached("SELECT epoch FROM cluster_leader WHERE id = 1 FOR SHARE")
        .await?;
    let current: Option<i64> = tx.query_opt(&stmt, &[]).await?.map(|r| r.get(0));
    match current {
        Some(e) if e == epoch => Ok(()),
        recorded => Err(Error::failed_precondition(format!(
            "no longer leader: this replica's epoch is {epoch}, the recorded one is {}",
            recorded.map_or("none".to_string(), |e| e.to_string())
        ))
        .with_source(Deposed {
            ours: epoch,
            recorded,
        })),
    }
}

/// Bounds how long this transaction may sit idle between statements: Postgres ends the session
/// after `limit`. A leader frozen mid-transaction (SIGSTOP, VM pause) would otherwise hold the
/// share lock of [`assert_epoch`] forever and block its successor's [`take_office`]. Also gives the
/// transaction the leader's statement timeout ([`super::LEADER_STATEMENT_TIMEOUT`]).
pub async fn limit_idle_in_transaction(
    tx: &deadpool_postgres::Transaction<'_>,
    limit: Duration,
) -> Result<()> {
    let millis = limit.as_millis().clamp(1, i32::MAX as u128).to_string();
    // The leader's sweeps get their own statement timeout, longer than a request's.
    let statement_millis = super::LEADER_STATEMENT_TIMEOUT.as_millis().to_string();
    let stmt = tx
        .prepare_cached(
            "SELECT set_config('idle_in_transaction_session_timeout', $1, true),
                    set_config('statement_timeout', $2, true)",
        )
        .await?;
    tx.execute(&stmt, &[&millis, &statement_millis]).await?;
    Ok(())
}

/// A new epoch for the Postgres-lock mode, newer than any recorded term (even one recorded by an
/// etcd-mode cluster on the same database). Call it only while holding the leadership lock.
pub async fn next_local_epoch(db: &Db) -> Result<i64> {
    db.run(Op::Leader, |c| {
        async move {
            let row = c
                .query_one(
                    "SELECT setval('cluster_epoch_seq', greatest(
                         nextval('cluster_epoch_seq'),
                         coalesce((SELECT epoch + 1 FROM cluster_leader WHERE id = 1), 1)))",
                    &[],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        }
        .scope_boxed()
    })
    .await
}

/// The recorded term: epoch, holder (replica name) and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Office {
    pub epoch: i64,
    pub holder: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Reads the recorded term, if any leader ever took office.
pub async fn current(db: &Db) -> Result<Option<Office>> {
    db.run(Op::Leader, |c| {
        async move {
            let row = c
                .query_opt(
                    "SELECT epoch, holder, since FROM cluster_leader WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.map(|r| Office {
                epoch: r.get(0),
                holder: r.get(1),
                since: r.get(2),
            }))
        }
        .scope_boxed()
    })
    .await
}
