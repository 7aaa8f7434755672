//! `Role { Follower, Leader(LeaderTasks) }`: leadership as a type. `LeaderTasks` owns the leader
//! loops of one term (their cancellation token and join set); stepping down cancels them and waits
//! for them until a deadline, then aborts what is left. Dropping it aborts them all.

use std::time::Duration;

use metrics::{counter, gauge};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::loops::{LeaderContext, LeaderLoop, LoopExit, spawn_loop};
use crate::telemetry::metrics as m;

/// How long stepping down waits for the loops of a lost term to notice their cancellation before
/// aborting them. Safety does not depend on it (their writes are fenced); it bounds how long a
/// step-down takes.
pub const LOOP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What this replica is.
pub enum Role {
    Follower,
    Leader(LeaderTasks),
}

/// The leader loops of one term.
pub struct LeaderTasks {
    epoch: i64,
    cancel: CancellationToken,
    loops: JoinSet<(&'static str, LoopExit)>,
}

/// Why the loops of a term asked to end it.
#[derive(Debug)]
pub enum Escalation {
    /// A fenced write was refused: a newer term exists.
    Deposed { r#loop: &'static str, error: String },
    /// A loop that declared `OnError::StepDown` failed, or a loop task died.
    Failed { r#loop: &'static str, error: String },
}

impl std::fmt::Display for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Escalation::Deposed { r#loop, error } => {
                write!(f, "loop {loop} was refused a fenced write: {error}")
            }
            Escalation::Failed { r#loop, error } => write!(f, "loop {loop} failed: {error}"),
        }
    }
}

impl LeaderTasks {
    /// Starts every loop of `loops` for the term of `ctx.epoch`.
    pub fn start(ctx: LeaderContext, loops: &[LeaderLoop]) -> LeaderTasks {
        let cancel = CancellationToken::new();
        let mut set = JoinSet::new();
        for spec in loops {
            spawn_loop(&mut set, ctx.clone(), cancel.child_token(), spec);
        }
        LeaderTasks {
            epoch: ctx.epoch,
            cancel,
            loops: set,
        }
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Resolves when a loop ends on its own and asks to end the term. Cancel-safe; pending
    /// forever when the loops run normally.
    pub async fn escalation(&mut self) -> Escalation {
        loop {
            match self.loops.join_next().await {
                None => std::future::pending::<()>().await,
                Some(Ok((_, LoopExit::Cancelled))) => {}
                Some(Ok((name, LoopExit::Deposed(e)))) => {
                    return Escalation::Deposed {
                        r#loop: name,
                        error: e.to_string(),
                    };
                }
                Some(Ok((name, LoopExit::Failed(e)))) => {
                    return Escalation::Failed {
                        r#loop: name,
                        error: e.to_string(),
                    };
                }
                Some(Err(e)) => {
                    return Escalation::Failed {
                        r#loop: "unknown",
                        error: format!("loop task died: {e}"),
                    };
                }
            }
        }
    }

    /// Cancels the loops: they stop acting at their next await point (or after their iteration,
    /// for `OnCancel::Finish`).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancels the loops and waits for them until `deadline`, then aborts the rest.
    pub async fn stop(mut self, deadline: Instant) {
        self.cancel.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            while self.loops.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                epoch = self.epoch,
                left = self.loops.len(),
                "leader loops did not stop in time; aborting them"
            );
            self.loops.shutdown().await;
        }
    }
}

impl Drop for LeaderTasks {
    fn drop(&mut self) {
        // The join set aborts its tasks on drop; cancel first so none starts a new iteration.
        self.cancel.cancel();
    }
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader(_))
    }

    /// Becomes leader for the term of `ctx`, starting the loops.
    pub fn lead(ctx: LeaderContext, loops: &[LeaderLoop]) -> Role {
        let epoch = ctx.epoch;
        let role = Role::Leader(LeaderTasks::start(ctx, loops));
        gauge!(m::LEADER).set(1.0);
        gauge!(m::LEADER_EPOCH).set(epoch as f64);
        counter!(m::LEADER_TRANSITIONS, "to" => "leader").increment(1);
        role
    }

    /// Resolves when the loops of the current term ask to end it; pending for a follower.
    pub async fn escalation(&mut self) -> Escalation {
        match self {
            Role::Leader(tasks) => tasks.escalation().await,
            Role::Follower => std::future::pending().await,
        }
    }

    /// Becomes a follower: the loops are cancelled at once (the replica stops acting), then
    /// awaited until `deadline`. A no-op for a follower.
    pub async fn step_down(&mut self, deadline: Instant) {
        let Role::Leader(tasks) = std::mem::replace(self, Role::Follower) else {
            return;
        };
        tasks.cancel();
        gauge!(m::LEADER).set(0.0);
        gauge!(m::LEADER_EPOCH).set(0.0);
        counter!(m::LEADER_TRANSITIONS, "to" => "follower").increment(1);
        tasks.stop(deadline).await;
    }
}
