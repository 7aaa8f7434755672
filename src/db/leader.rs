//! The leadership record (`cluster_leader`) and fencing (docs/architecture.md#leadership): a leader
//! writes its epoch on taking office; every leader-only mutation checks, in its own transaction,
//! that the epoch is still its own, holding a share lock on the record so a new leader's takeover
//! waits for it. Also the epochs of the Postgres-lock mode and the statements of its dedicated
//! session ([`LockSession`]). Elections themselves (when to try, the lease, the heartbeat's
//! period) live in `cluster`.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::locks::NS_LEADER;
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
pub async fn take_office(tx: &super::Tx<'_>, epoch: i64, holder: &str) -> Result<bool> {
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
pub async fn assert_epoch(tx: &super::Tx<'_>, epoch: i64) -> Result<()> {
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
pub async fn limit_idle_in_transaction(tx: &super::Tx<'_>, limit: Duration) -> Result<()> {
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
    db.query_one(
        Op::Leader,
        "SELECT setval('cluster_epoch_seq', greatest(
             nextval('cluster_epoch_seq'),
             coalesce((SELECT epoch + 1 FROM cluster_leader WHERE id = 1), 1)))",
        &[],
        |r| r.get::<_, i64>(0),
    )
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
    db.query_opt(
        Op::Leader,
        "SELECT epoch, holder, since FROM cluster_leader WHERE id = 1",
        &[],
        |r| Office {
            epoch: r.get(0),
            holder: r.get(1),
            since: r.get(2),
        },
    )
    .await
}

/// Where the Postgres-lock election's dedicated session connects: the database URL, with the
/// session's own application name and keepalives. The session lives outside the pool, because the
/// session advisory lock `(NS_LEADER, 0)` dies with its connection.
pub struct LockSessionConfig {
    pg: tokio_postgres::Config,
}

impl LockSessionConfig {
    pub fn new(
        database_url: &str,
        connect_timeout: Duration,
    ) -> Result<LockSessionConfig, tokio_postgres::Error> {
        let mut pg = tokio_postgres::Config::from_str(database_url)?;
        pg.application_name("taskqueue-leadership")
            .connect_timeout(connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        Ok(LockSessionConfig { pg })
    }

    /// Opens a new session. Its connection runs on a task of its own, aborted with the session.
    pub async fn connect(&self) -> Result<LockSession, tokio_postgres::Error> {
        let (client, connection) = self.pg.connect(tokio_postgres::NoTls).await?;
        let closed = CancellationToken::new();
        let on_close = closed.clone();
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "leadership session connection ended");
            }
            on_close.cancel();
        });
        Ok(LockSession {
            probe: SessionProbe {
                client: Arc::new(client),
                closed,
            },
            _connection: AbortOnDropHandle::new(connection),
        })
    }
}

/// The Postgres-lock election's dedicated connection and its statements.
pub struct LockSession {
    probe: SessionProbe,
    _connection: AbortOnDropHandle<()>,
}

impl LockSession {
    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.probe.closed.is_cancelled()
    }

    /// Postgres 14+: the server ends the session (and its lock) after `timeout` of silence.
    pub async fn set_idle_session_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let idle = format!("{}ms", timeout.as_millis());
        self.probe
            .client
            .execute(
                "SELECT set_config('idle_session_timeout', $1, false)",
                &[&idle],
            )
            .await?;
        Ok(())
    }

    /// Tries the leadership lock once: true when this session holds it.
    pub async fn try_lock(&self) -> Result<bool, tokio_postgres::Error> {
        let row = self
            .probe
            .client
            .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&NS_LEADER])
            .await?;
        Ok(row.get::<_, bool>(0))
    }

    /// Releases every lock of the session, which hands leadership over at once.
    pub async fn unlock_all(&self) -> Result<(), tokio_postgres::Error> {
        self.probe
            .client
            .execute("SELECT pg_advisory_unlock_all()", &[])
            .await?;
        Ok(())
    }

    /// A handle for the heartbeat task. It shares the session's connection: once the session is
    /// dropped, the connection is aborted and the probe's statements fail.
    pub fn probe(&self) -> SessionProbe {
        self.probe.clone()
    }
}

/// What a heartbeat needs of a [`LockSession`]: a statement that proves the session alive, and
/// the end of its connection.
#[derive(Clone)]
pub struct SessionProbe {
    client: Arc<tokio_postgres::Client>,
    closed: CancellationToken,
}

impl SessionProbe {
    /// One round trip on the session.
    pub async fn ping(&self) -> Result<(), tokio_postgres::Error> {
        self.client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Resolves when the session's connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}
