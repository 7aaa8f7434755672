//! Leadership (docs/architecture.md#leadership): which replica runs the leader loops. With
//! `--etcd-endpoints`, an etcd election on a lease; without, a Postgres session advisory lock.
//! Either way the replica acts as leader only while its lease is trusted (see `lease`), records its
//! term's epoch in `cluster_leader` on taking office (refused if a newer one is recorded), and
//! hands the loops a `LeaderContext` whose writes are fenced by that epoch. Losing the lease, a
//! fencing refusal or a failing loop ends the term: the loops are cancelled at once and awaited
//! within a bound.
//!
//! Leadership never blocks the request path: RPCs are served whatever the role, and a replica
//! starts and serves while etcd is unreachable. Not here: the loops themselves (`loops`).

mod etcd;
mod lease;
mod pg;
mod role;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scoped_futures::ScopedFutureExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Config;
use crate::db::{Db, Op};
use crate::domain::catalog::DeclaredProviders;
use crate::loops::{LeaderContext, LeaderLoop};

pub use lease::{LeaseClock, safety_margin};
pub use role::{Escalation, LOOP_STOP_TIMEOUT, LeaderTasks, Role};

/// The most a replica waits between failed attempts to lead (etcd or the database unreachable).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The pause after stepping down before campaigning again, so a replica whose loops fail gives
/// the others a chance first.
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

/// This replica's role as others may observe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// The epoch of the term this replica leads, or `None` for a follower.
    pub leading: Option<i64>,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.leading.is_some()
    }
}

/// A term obtained from an election: its epoch, and the lease that says until when it holds.
pub struct Term {
    pub epoch: i64,
    pub lease: LeaseClock,
}

/// A way of electing one replica.
trait Election: Send {
    fn mode(&self) -> &'static str;
    /// Waits until this replica holds office and its lease is confirmed alive.
    fn campaign(&mut self) -> impl Future<Output = anyhow::Result<Term>> + Send;
    /// Gives up the office or the candidacy, best effort and bounded; the next campaign starts
    /// clean.
    fn resign(&mut self) -> impl Future<Output = ()> + Send;
}

/// What a membership needs besides its election.
#[derive(Clone)]
pub struct Membership {
    pub db: Db,
    pub config: Arc<Config>,
    /// The `providers:` section as a value, handed to each term's loops.
    pub declared_providers: Arc<DeclaredProviders>,
    /// The loops a term runs (`loops::leader_loops` in a server).
    pub loops: Vec<LeaderLoop>,
}

/// A replica's membership in the election, running in the background.
pub struct Cluster {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    stop_deadline: Arc<OnceLock<Instant>>,
    task: Option<AbortOnDropHandle<()>>,
}

/// The election name (etcd key prefix) of a cluster: replicas with the same `server_name` on one
/// etcd elect one leader among themselves.
pub fn election_name(config: &Config) -> String {
    format!("/taskqueue/{}/leader", config.server_name)
}

/// Joins the election: etcd when endpoints are configured, else the Postgres lock on
/// `database_url`. Returns at once; campaigning happens in the background.
pub async fn start(membership: Membership, database_url: &str) -> anyhow::Result<Cluster> {
    let config = membership.config.clone();
    metrics::gauge!(crate::telemetry::metrics::LEADER).set(0.0);
    let (status_tx, status) = watch::channel(Status::default());
    let stop = CancellationToken::new();
    let stop_deadline = Arc::new(OnceLock::new());
    let task = if config.etcd_endpoints.is_empty() {
        let election =
            pg::PgLockElection::new(database_url, membership.db.clone(), config.leader_lease_ttl)?;
        tokio::spawn(run(
            election,
            membership,
            status_tx,
            stop.clone(),
            stop_deadline.clone(),
        ))
    } else {
        let election = etcd::EtcdElection::connect(
            &config.etcd_endpoints,
            config.leader_lease_ttl,
            election_name(&config),
            config.replica_name.clone(),
        )
        .await?;
        tokio::spawn(run(
            election,
            membership,
            status_tx,
            stop.clone(),
            stop_deadline.clone(),
        ))
    };
    Ok(Cluster {
        status,
        stop,
        stop_deadline,
        task: Some(AbortOnDropHandle::new(task)),
    })
}

impl Cluster {
    /// This replica's role, updated as it changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader()
    }

    /// Leaves the election: resigns (a successor can start at once; any late write of ours is
    /// fenced), cancels the loops and waits for them — all by `deadline`, after which whatever
    /// is left is aborted.
    pub async fn shutdown(mut self, deadline: Instant) {
        let _ = self.stop_deadline.set(deadline);
        self.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout_at(deadline, &mut task).await.is_err()
        {
            tracing::warn!("leadership did not shut down in time; aborting it");
            task.abort();
        }
        metrics::gauge!(crate::telemetry::metrics::LEADER).set(0.0);
    }
}

/// Campaigns, leads, steps down, campaigns again — until `stop`.
async fn run<E: Election>(
    mut election: E,
    membership: Membership,
    status: watch::Sender<Status>,
    stop: CancellationToken,
    stop_deadline: Arc<OnceLock<Instant>>,
) {
    let Membership {
        db,
        config,
        declared_providers,
        loops,
    } = membership;
    let replica = config.replica_name.clone();
    let mode = election.mode();
    if !config.leader_eligible {
        tracing::info!(replica = %replica, "--no-leader: this replica never campaigns for leadership");
        stop.cancelled().await;
        return;
    }
    tracing::info!(mode, replica = %replica, "joining the leader election");
    let mut failures: u32 = 0;
    let mut role = Role::Follower;
    loop {
        let term = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            t = election.campaign() => t,
        };
        let term = match term {
            Ok(term) => term,
            Err(e) => {
                failures += 1;
                log_failure(failures, "cannot campaign for leadership", &e);
                election.resign().await;
                if !pause(backoff(failures, &config), &stop).await {
                    break;
                }
                continue;
            }
        };
        let epoch = term.epoch;
        let taken = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                election.resign().await;
                break;
            }
            why = term.lease.lost() => Err(anyhow::anyhow!("lease lost before taking office: {why}")),
            r = take_office(&db, epoch, &replica) => r,
        };
        match taken {
            Ok(true) => {}
            Ok(false) => {
                failures += 1;
                tracing::error!(
                    epoch,
                    mode,
                    "elected, but cluster_leader records a newer epoch: another replica leads with \
                     a newer term, or etcd was reset / the cluster switched leadership mode. If no \
                     other replica leads, delete the cluster_leader row"
                );
                election.resign().await;
                if !pause(backoff(failures, &config).max(RECAMPAIGN_PAUSE), &stop).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                failures += 1;
                log_failure(failures, "elected, but cannot take office", &e);
                election.resign().await;
                if !pause(backoff(failures, &config), &stop).await {
                    break;
                }
                continue;
            }
        }
        failures = 0;
        let ctx = LeaderContext {
            db: db.clone(),
            config: config.clone(),
            declared_providers: declared_providers.clone(),
            epoch,
        };
        role = Role::lead(ctx, &loops);
        status.send_replace(Status {
            leading: Some(epoch),
        });
        tracing::info!(epoch, mode, replica = %replica, "leading: leader loops started");

        let ended = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            why = term.lease.lost() => Some(format!("lease lost: {why}")),
            escalation = role.escalation() => Some(escalation.to_string()),
        };
        match ended {
            None => {
                // Shutdown: resign first so a successor starts at once; our loops' late writes
                // are refused by the fencing.
                election.resign().await;
                status.send_replace(Status::default());
                let deadline = stop_deadline
                    .get()
                    .copied()
                    .unwrap_or_else(|| Instant::now() + LOOP_STOP_TIMEOUT);
                role.step_down(deadline).await;
                tracing::info!(epoch, "resigned leadership");
                break;
            }
            Some(why) => {
                status.send_replace(Status::default());
                tracing::warn!(epoch, reason = %why, "stepping down");
                role.step_down(Instant::now() + LOOP_STOP_TIMEOUT).await;
                election.resign().await;
                if !pause(RECAMPAIGN_PAUSE, &stop).await {
                    break;
                }
            }
        }
    }
    // Stopped while campaigning: give up the candidacy too (an etcd key left behind would be
    // elected after the leader and hold the office, idle, until its lease expired).
    election.resign().await;
    role.step_down(Instant::now()).await;
    status.send_replace(Status::default());
}

/// Records the term in `cluster_leader`; false when a newer one is recorded.
async fn take_office(db: &Db, epoch: i64, replica: &str) -> anyhow::Result<bool> {
    let taken = db
        .tx(Op::Leader, |tx| {
            async move { crate::db::leader::take_office(tx, epoch, replica).await }.scope_boxed()
        })
        .await?;
    Ok(taken)
}

/// Sleeps `d` unless `stop` fires first; false when stopping.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// 250 ms, 500 ms, 1 s … up to the smaller of 5 s and the lease TTL.
fn backoff(failures: u32, config: &Config) -> Duration {
    let exp = Duration::from_millis(250).saturating_mul(1 << failures.saturating_sub(1).min(8));
    exp.min(MAX_BACKOFF).min(config.leader_lease_ttl)
}

/// Logs the first failure in a row and then less and less often while it persists.
fn log_failure(failures: u32, what: &str, e: &anyhow::Error) {
    if failures.is_power_of_two() {
        tracing::warn!(failures, error = format!("{e:#}"), "{what}");
    } else {
        tracing::debug!(failures, error = format!("{e:#}"), "{what}");
    }
}
