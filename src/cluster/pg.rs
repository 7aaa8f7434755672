//! Postgres-lock leadership (no etcd): the session advisory lock `(NS_LEADER, 0)` held on one
//! dedicated connection, outside the pool. The lock dies with the connection, so two replicas can
//! never both hold it. The session runs with `idle_session_timeout` = lease TTL and the holder
//! sends a heartbeat every TTL/3: a frozen holder's session is ended by the server and the lock
//! passes on, while the holder stops trusting it (lease deadline) before that can happen.
//! Epochs come from `cluster_epoch_seq`, allocated while holding the lock.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::lease::{LeaseClock, safety_margin};
use super::{Election, Term};
use crate::db::Db;
use crate::db::locks::NS_LEADER;

/// How often a follower tries the lock: the failover time after a leader's connection closes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The longest one statement on the leadership session may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgLockElection {
    pg: tokio_postgres::Config,
    db: Db,
    ttl: Duration,
    session: Option<Session>,
}

/// The dedicated connection, and the heartbeat task while it holds the lock.
struct Session {
    client: Arc<tokio_postgres::Client>,
    /// Cancelled when the connection ends.
    closed: CancellationToken,
    _connection: AbortOnDropHandle<()>,
    heartbeat: Option<AbortOnDropHandle<()>>,
}

impl PgLockElection {
    pub fn new(database_url: &str, db: Db, ttl: Duration) -> anyhow::Result<PgLockElection> {
        let mut pg = tokio_postgres::Config::from_str(database_url)
            .context("invalid database URL for the leadership session")?;
        pg.application_name("taskqueue-leadership")
            .connect_timeout(STATEMENT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        Ok(PgLockElection {
            pg,
            db,
            ttl,
            session: None,
        })
    }

    async fn open(&self) -> anyhow::Result<Session> {
        let (client, connection) =
            tokio::time::timeout(STATEMENT_TIMEOUT, self.pg.connect(tokio_postgres::NoTls))
                .await
                .context("leadership session: connect timed out")?
                .context("leadership session: connect")?;
        let closed = CancellationToken::new();
        let on_close = closed.clone();
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "leadership session connection ended");
            }
            on_close.cancel();
        });
        let session = Session {
            client: Arc::new(client),
            closed,
            _connection: AbortOnDropHandle::new(connection),
            heartbeat: None,
        };
        // Postgres 14+: the server ends the session (and its lock) when the holder goes silent.
        let idle = format!("{}ms", self.ttl.as_millis());
        if let Err(e) = session
            .client
            .execute(
                "SELECT set_config('idle_session_timeout', $1, false)",
                &[&idle],
            )
            .await
        {
            tracing::warn!(error = %e, "idle_session_timeout unsupported: a frozen leader keeps the lock until its connection closes");
        }
        Ok(session)
    }

    /// Tries the lock once; returns when this was sent and whether it was taken.
    async fn try_lock(&mut self) -> anyhow::Result<(Instant, bool)> {
        if self
            .session
            .as_ref()
            .is_none_or(|s| s.closed.is_cancelled())
        {
            self.session = Some(self.open().await?);
        }
        let session = self.session.as_ref().expect("opened above");
        let sent = Instant::now();
        let got = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            session
                .client
                .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&NS_LEADER]),
        )
        .await;
        match got {
            Ok(Ok(row)) => Ok((sent, row.get::<_, bool>(0))),
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
            session.client.clone(),
            session.closed.clone(),
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
        let unlock = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            session
                .client
                .execute("SELECT pg_advisory_unlock_all()", &[]),
        )
        .await;
        if !matches!(unlock, Ok(Ok(_))) {
            tracing::debug!("leadership unlock failed; closing the session releases the lock");
        }
    }
}

/// Proves the session alive every TTL/3; each answer pushes the clock's deadline. A failed
/// heartbeat or a closed connection ends the clock: the lock is gone (or about to be).
async fn heartbeat(
    client: Arc<tokio_postgres::Client>,
    closed: CancellationToken,
    ttl: Duration,
    clock: LeaseClock,
) {
    let period = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = clock.renewal_requested() => {}
            _ = closed.cancelled() => {
                clock.end("the leadership session's connection closed");
                return;
            }
        }
        let sent = Instant::now();
        match tokio::time::timeout(period, client.simple_query("SELECT 1")).await {
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
