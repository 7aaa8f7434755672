//! etcd election (docs/architecture.md#leadership): campaign on a lease of `--leader-lease-ttl`,
//! kept alive every TTL/3 by its own task. Two clients, both `with_require_leader` (a partitioned
//! etcd member answers nothing rather than stale data): one with a request timeout for short calls
//! (grant, resign, revoke), one without for the campaign — which blocks until this replica is
//! elected — and the keep-alive stream. The term's epoch is the revision of the leader key, which
//! grows with every election. The replica counts itself leader only after a keep-alive sent after
//! the campaign returned, and stops when the local lease deadline passes (see `lease`).

use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Client, ConnectOptions, LeaderKey, ResignOptions};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::lease::{LeaseClock, safety_margin};
use super::{Election, Term};

/// The longest a short etcd call (grant, resign, revoke) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a connection attempt to an etcd endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct EtcdElection {
    /// Short calls, with a request timeout.
    client: Client,
    /// The campaign and the keep-alive stream: no request timeout.
    session: Client,
    ttl: Duration,
    /// The election name (key prefix) shared by the replicas of one cluster.
    name: String,
    /// This replica's name, the value of its candidacy.
    candidate: String,
    lease: Option<Lease>,
    leader_key: Option<LeaderKey>,
    /// Leases whose revocation failed (etcd unreachable): revoked before the next grant, so a key
    /// they still hold does not delay the next election by a whole TTL.
    orphans: Vec<i64>,
}

/// A granted lease and the task keeping it alive.
struct Lease {
    id: i64,
    clock: LeaseClock,
    _keeper: AbortOnDropHandle<()>,
}

impl EtcdElection {
    /// Prepares the clients; etcd is contacted only when campaigning (connections are lazy), so
    /// a replica starts and serves while etcd is down.
    pub async fn connect(
        endpoints: &[String],
        ttl: Duration,
        election_name: String,
        candidate: String,
    ) -> anyhow::Result<EtcdElection> {
        let base = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(CONNECT_TIMEOUT.min(ttl / 3))
            .with_keep_alive(ttl / 3, ttl / 3)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(
            endpoints,
            Some(base.clone().with_timeout(REQUEST_TIMEOUT.min(ttl / 2))),
        )
        .await
        .context("invalid --etcd-endpoints")?;
        let session = Client::connect(endpoints, Some(base))
            .await
            .context("invalid --etcd-endpoints")?;
        Ok(EtcdElection {
            client,
            session,
            ttl,
            name: election_name,
            candidate,
            lease: None,
            leader_key: None,
            orphans: Vec::new(),
        })
    }

    async fn grant(&mut self) -> anyhow::Result<LeaseClock> {
        let sent = Instant::now();
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let granted = self
            .client
            .lease_grant(ttl_secs, None)
            .await
            .context("etcd lease grant")?;
        let ttl = Duration::from_secs(granted.ttl().max(0) as u64);
        let clock = LeaseClock::new(sent, sent + ttl.saturating_sub(safety_margin(ttl)));
        let keeper = tokio::spawn(keep_alive(
            self.session.clone(),
            granted.id(),
            self.ttl,
            clock.clone(),
        ));
        self.lease = Some(Lease {
            id: granted.id(),
            clock: clock.clone(),
            _keeper: AbortOnDropHandle::new(keeper),
        });
        tracing::debug!(
            lease = granted.id(),
            ttl = granted.ttl(),
            "etcd lease granted"
        );
        Ok(clock)
    }
}

impl Election for EtcdElection {
    fn mode(&self) -> &'static str {
        "etcd"
    }

    async fn campaign(&mut self) -> anyhow::Result<Term> {
        // A leftover candidacy (resign failed) is given up first: its lease may still hold a key.
        if self.lease.is_some() || self.leader_key.is_some() {
            self.resign().await;
        }
        self.revoke_orphans().await;
        let clock = self.grant().await?;
        let id = self.lease.as_ref().map(|l| l.id).unwrap_or_default();
        let mut session = self.session.clone();
        let elected = tokio::select! {
            r = session.campaign(self.name.as_bytes(), self.candidate.as_bytes(), id) => {
                r.context("etcd campaign")?
            }
            why = clock.lost() => anyhow::bail!("lease lost while campaigning: {why}"),
        };
        let key = elected
            .leader()
            .cloned()
            .context("etcd campaign answered without a leader key")?;
        self.leader_key = Some(key.clone());
        // Act only on a lease confirmed alive after the election.
        if !clock.renew_fresh().await {
            anyhow::bail!("lease lost right after the election");
        }
        Ok(Term {
            epoch: key.rev(),
            lease: clock,
        })
    }

    async fn resign(&mut self) {
        if let Some(key) = self.leader_key.take() {
            let r = self
                .client
                .resign(Some(ResignOptions::new().with_leader(key)))
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "etcd resign failed; the lease revocation or expiry ends the term");
            }
        }
        if let Some(lease) = self.lease.take() {
            lease.clock.end("resigned");
            drop(lease._keeper);
            if let Err(e) = self.client.lease_revoke(lease.id).await {
                tracing::debug!(lease = lease.id, error = %e, "etcd lease revoke failed; retried before the next campaign");
                self.orphans.push(lease.id);
            }
        }
    }
}

impl EtcdElection {
    async fn revoke_orphans(&mut self) {
        let mut left = Vec::new();
        for id in std::mem::take(&mut self.orphans) {
            match self.client.lease_revoke(id).await {
                Ok(_) => tracing::debug!(lease = id, "revoked an earlier etcd lease"),
                // Gone already (expired): nothing to do.
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {}
                Err(e) if e.to_string().contains("lease not found") => {}
                Err(_) => left.push(id),
            }
        }
        self.orphans = left;
    }
}

/// Keeps lease `id` alive: a keep-alive every TTL/3 (or at once when the clock asks), each
/// success pushing the clock's deadline to send time + granted TTL − margin. A stream error is
/// retried soon on a new stream; an answer with TTL 0 (the lease is gone) ends the clock.
async fn keep_alive(session: Client, id: i64, ttl: Duration, clock: LeaseClock) {
    let period = ttl / 3;
    let retry = (period / 4).max(Duration::from_millis(100));
    let mut lease_client = session.lease_client();
    let mut stream = None;
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(period, async {
            match &mut stream {
                None => {
                    // Opening the stream sends the first keep-alive and checks the lease exists.
                    let opened = lease_client.keep_alive(id).await;
                    match opened {
                        Ok(pair) => {
                            stream = Some(pair);
                            Ok(Some(ttl.as_secs() as i64))
                        }
                        Err(etcd_client::Error::LeaseKeepAliveError(m))
                            if m.contains("not found") =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                }
                Some((keeper, responses)) => {
                    keeper.keep_alive().await?;
                    match responses.message().await? {
                        Some(r) => Ok(Some(r.ttl())),
                        None => Err(etcd_client::Error::LeaseKeepAliveError(
                            "keep-alive stream closed".into(),
                        )),
                    }
                }
            }
        })
        .await;
        let next = match attempt {
            Ok(Ok(Some(granted))) if granted > 0 => {
                let granted = Duration::from_secs(granted as u64);
                clock.renewed(sent, sent + granted.saturating_sub(safety_margin(granted)));
                sent + period
            }
            Ok(Ok(_)) => {
                clock.end("the etcd lease expired");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(lease = id, error = %e, "etcd keep-alive failed");
                stream = None;
                sent + retry
            }
            Err(_) => {
                tracing::debug!(lease = id, "etcd keep-alive timed out");
                stream = None;
                sent + retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = clock.renewal_requested() => {}
        }
    }
}
