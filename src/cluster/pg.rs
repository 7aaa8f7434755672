//! Postgres-lock leadership (no etcd): the session advisory lock `(NS_LEADER, 0)` held on one
//! dedicated connection, outside the pool. The lock dies with the connection, so two replicas can
//! never both hold it. The session runs with `idle_session_timeout` = lease TTL and the holder
//! sends a heartbeat every TTL/3: a frozen holder's session is ended by the server and the lock
//! passes on, while the holder stops trusting it (lease deadline) before that can happen.
//! Epochs come from `cluster_epoch_seq`, allocated while holding the lock. This file is the
//! election's logic; the session and its statements are `db::leader::LockSession`.

use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::lease::{LeaseClock, safety_margin};
use super::{Election, Term};
use crate::db::Db;
use crate::db::leader::{LockSession, LockSessionConfig, SessionProbe};

/// How often a follower tries the lock: the failover time after a leader's connection closes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The longest one statement on the leadership session may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgLockElection {
    pg: LockSessionConfig,
    db: Db,
    ttl: Duration,
    session: Option<Session>,
}

/// The dedicated connection, and the heartbeat task while it holds the lock.
struct Session {
    db: LockSession,
    heartbeat: Option<AbortOnDropHandle<()>>,
}

impl PgLockElection {
    pub fn new(database_url: &str, db: Db, ttl: Duration) -> anyhow::Result<PgLockElection> {
        let pg = LockSessionConfig::new(database_url, STATEMENT_TIMEOUT)
            .context("invalid database URL for the leadership session")?;
        Ok(PgLockElection {
            pg,
            db,
            ttl,
            session: None,
        })
    }

    async fn open(&self) -> anyhow::Result<Session> {
        let db = tokio::time::timeout(STATEMENT_TIMEOUT, self.pg.connect())
            .await
            .context("leadership session: connect timed out")?
            .context("leadership session: connect")?;
        let session = Session {
            db,
            heartbeat: None,
        };
        // Postgres 14+: the server ends the session (and its lock) when the holder goes silent.
        if let Err(e) = session.db.set_idle_session_timeout(self.ttl).await {
            tracing::warn!(error = %e, "idle_session_timeout unsupported: a frozen leader keeps the lock until its connection closes");
        }
        Ok(session)
    }

    /// Tries the lock once; returns when this was sent and whether it was taken.
    async fn try_lock(&mut self) -> anyhow::Result<(Instant, bool)> {
        if self.session.as_ref().is_none_or(|s| s.db.is_closed()) {
            self.session = Some(self.open().await?);
        }
        let session = self.session.as_ref().expect("opened above");
        let sent = Instant::now();
        let got = tokio::time::timeout(STATEMENT_TIMEOUT, session.db.try_lock()).await;
        match got {
            Ok(Ok(locked)) => Ok((sent, locked)),
            Ok(Err(e)) => {
                self.session = None;
                Err(e).context("leadership session: try lock")
            }
            Err(_) => {
                self.session = None;
                anyhow::bail!("leadership session: try lock timed out")
            }
        }
    }
}

impl Election for PgLockElection {
    fn mode(&self) -> &'static str {
        "postgres-lock"
    }

    async fn campaign(&mut self) -> anyhow::Result<Term> {
        let sent = loop {
            let (sent, got) = self.try_lock().await?;
            if got {
                break sent;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let clock = LeaseClock::new(sent, sent + self.ttl - safety_margin(self.ttl));
        let session = self.session.as_mut().expect("locked on this session");
        session.heartbeat = Some(AbortOnDropHandle::new(tokio::spawn(heartbeat(
            session.db.probe(),
            self.ttl,
            clock.clone(),
        ))));
        let epoch = tokio::select! {
            e = crate::db::leader::next_local_epoch(&self.db) => e.context("allocate a leadership epoch")?,
            why = clock.lost() => anyhow::bail!("leadership lock lost before taking office: {why}"),
        };
        Ok(Term {
            epoch,
            lease: clock,
        })
    }

    async fn resign(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        drop(session.heartbeat);
        // Unlocking explicitly hands over at once; closing the connection would too.
        let unlock = tokio::time::timeout(STATEMENT_TIMEOUT, session.db.unlock_all()).await;
        if !matches!(unlock, Ok(Ok(_))) {
            tracing::debug!("leadership unlock failed; closing the session releases the lock");
        }
    }
}

/// Proves the session alive every TTL/3; each answer pushes the clock's deadline. A failed
/// heartbeat or a closed connection ends the clock: the lock is gone (or about to be).
async fn heartbeat(session: SessionProbe, ttl: Duration, clock: LeaseClock) {
    let period = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = clock.renewal_requested() => {}
            _ = session.closed() => {
                clock.end("the leadership session's connection closed");
                return;
            }
        }
        let sent = Instant::now();
        match tokio::time::timeout(period, session.ping()).await {
            Ok(Ok(_)) => clock.renewed(sent, sent + ttl - safety_margin(ttl)),
            Ok(Err(e)) => {
                clock.end(format!("leadership session heartbeat failed: {e}"));
                return;
            }
            Err(_) => {
                clock.end("leadership session heartbeat timed out");
                return;
            }
        }
    }
}
