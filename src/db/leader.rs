//! The leadership record (`cluster_leader`) and fencing (design.md §4): a leader writes its epoch
//! on taking office; every leader-only mutation checks, in its own transaction, that the epoch is
//! still its own, holding a share lock on the record so a new leader's takeover waits for it.

use super::pg_error;
use crate::error::{Error, Result};

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
        .await
        .map_err(pg_error)?;
    Ok(n == 1)
}

/// Fencing: fails with `FailedPrecondition` unless `epoch` is the recorded term. Call it first in
/// every leader-only transaction; the share lock it takes is held to the end of the transaction.
pub async fn assert_epoch(tx: &deadpool_postgres::Transaction<'_>, epoch: i64) -> Result<()> {
    let stmt = tx
        .prepare_cached("SELECT epoch FROM cluster_leader WHERE id = 1 FOR SHARE")
        .await
        .map_err(pg_error)?;
    let current: Option<i64> = tx
        .query_opt(&stmt, &[])
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0));
    match current {
        Some(e) if e == epoch => Ok(()),
        other => Err(Error::failed_precondition(format!(
            "no longer leader: this replica's epoch is {epoch}, the recorded one is {}",
            other.map_or("none".to_string(), |e| e.to_string())
        ))),
    }
}
