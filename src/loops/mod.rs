//! Leader-only background loops: watchdog, dependency sweep, catalogue sync, provider job runner,
//! recruiter.
//! They run only while this replica holds office (`cluster::Role::Leader` owns them), and every
//! mutation they make goes through [`LeaderContext::fenced_tx`], so a deposed leader's write is
//! refused by SQL. No loop asks "am I leader?": losing office cancels it.
//!
//! To add a loop, write a module with a `leader_loop(config) -> LeaderLoop` and list it in
//! [`leader_loops`]. [`spawn_loop`] runs it: one span per loop, `select! { tick, cancel }`, a
//! duration histogram and an error counter labelled with the loop's name, and the declared
//! [`OnError`] / [`OnCancel`] behaviour. A fencing refusal always ends the term.

pub mod catalog;
pub mod dependencies;
pub mod jobs;
pub mod recruiter;
pub mod watchdog;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use metrics::{counter, histogram};
use scoped_futures::ScopedBoxFuture;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Config;
use crate::db::{Db, Op};
use crate::domain::catalog::DeclaredProviders;
use crate::error::{Error, Result};
use crate::providers::Providers;
use crate::telemetry::metrics as m;

/// The leader loops of a replica, in start order. Register a new loop here, one line each.
/// `providers` are the machine sources the job runner and the catalogue refresher call.
pub fn leader_loops(config: &Config, providers: Providers) -> Vec<LeaderLoop> {
    vec![
        watchdog::leader_loop(config),
        dependencies::leader_loop(config),
        catalog::leader_loop(providers.clone()),
        jobs::leader_loop(config, providers),
        recruiter::leader_loop(config),
    ]
}

/// What a leader loop gets: the pool, the configuration (and its `providers:` section as a value),
/// and the epoch of the term it runs in.
#[derive(Clone)]
pub struct LeaderContext {
    pub db: Db,
    pub config: Arc<Config>,
    /// The `providers:` section as a value (made once by the server from `config`).
    pub declared_providers: Arc<DeclaredProviders>,
    pub epoch: i64,
}

impl LeaderContext {
    /// A transaction that first checks this term is still current (fencing): a deposed leader's
    /// write is refused with `FailedPrecondition` (see `db::leader::is_deposed`) and changes
    /// nothing. The transaction may not sit idle longer than the lease TTL, so a leader frozen
    /// half-way cannot block its successor for longer than that.
    pub async fn fenced_tx<'env, T, F>(&self, op: Op, mut f: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a crate::db::Tx<'a>) -> ScopedBoxFuture<'env, 'a, Result<T>>
            + Send
            + 'env,
        T: Send + 'env,
    {
        use scoped_futures::ScopedFutureExt as _;
        let epoch = self.epoch;
        let idle_limit = self.config.leader_lease_ttl;
        self.db
            .tx(op, move |tx| {
                let body = f(tx);
                async move {
                    crate::db::leader::limit_idle_in_transaction(tx, idle_limit).await?;
                    crate::db::leader::assert_epoch(tx, epoch).await?;
                    body.await
                }
                .scope_boxed()
            })
            .await
    }
}

/// What a loop does when an iteration fails (other than by a fencing refusal, which always ends
/// the term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Count it, log it, and try again at the next tick: transient trouble (a database hiccup)
    /// must not cost the cluster its leader.
    Continue,
    /// Give up office: this replica cannot do the loop's work, another one may.
    StepDown,
}

/// What the end of the term does to an iteration in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// Drop the iteration at its next await point: right for iterations made of fenced
    /// transactions only (a dropped transaction rolls back).
    Abandon,
    /// Let the iteration finish (bounded by the stop deadline of `cluster::LeaderTasks`): for
    /// iterations with outside side effects that must not be cut half-way (provider calls).
    Finish,
}

type TickFn = dyn Fn(LeaderContext) -> BoxFuture<'static, Result<()>> + Send + Sync;
type RunFn =
    dyn Fn(LeaderContext, CancellationToken) -> BoxFuture<'static, Result<()>> + Send + Sync;

#[derive(Clone)]
enum Body {
    /// One iteration per tick.
    Tick(Arc<TickFn>),
    /// Runs until its cancellation token fires (its own cadence, e.g. a job runner with calls
    /// in flight); if it returns early it is started again after the interval.
    Run(Arc<RunFn>),
}

/// A registered leader loop: its name (the `loop` metric label), cadence, declared behaviour
/// and body.
#[derive(Clone)]
pub struct LeaderLoop {
    pub name: &'static str,
    pub interval: Duration,
    pub on_error: OnError,
    pub on_cancel: OnCancel,
    body: Body,
}

impl LeaderLoop {
    /// A loop that calls `tick` every `interval` (the first time at once), continuing after
    /// errors and abandoning an iteration when the term ends; change either with the builders.
    pub fn every<F, Fut>(name: &'static str, interval: Duration, tick: F) -> LeaderLoop
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        LeaderLoop {
            name,
            interval,
            on_error: OnError::Continue,
            on_cancel: OnCancel::Abandon,
            body: Body::Tick(Arc::new(move |ctx| tick(ctx).boxed())),
        }
    }

    /// A loop that runs `run(ctx, cancel)` for the whole term; it must return soon after
    /// `cancel` fires. Returning early (Ok) restarts it after `restart_after`.
    pub fn long_running<F, Fut>(name: &'static str, restart_after: Duration, run: F) -> LeaderLoop
    where
        F: Fn(LeaderContext, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        LeaderLoop {
            name,
            interval: restart_after,
            on_error: OnError::Continue,
            on_cancel: OnCancel::Finish,
            body: Body::Run(Arc::new(move |ctx, cancel| run(ctx, cancel).boxed())),
        }
    }

    pub fn on_error(mut self, on_error: OnError) -> LeaderLoop {
        self.on_error = on_error;
        self
    }

    pub fn on_cancel(mut self, on_cancel: OnCancel) -> LeaderLoop {
        self.on_cancel = on_cancel;
        self
    }
}

/// How a loop ended.
#[derive(Debug)]
pub enum LoopExit {
    /// The term ended (its token was cancelled).
    Cancelled,
    /// A fenced write was refused: another replica holds a newer term.
    Deposed(Error),
    /// An iteration failed and the loop declared [`OnError::StepDown`].
    Failed(Error),
}

/// Runs `spec` in `set` until `cancel` fires or it escalates; the task yields the loop's name and
/// how it ended.
pub fn spawn_loop(
    set: &mut JoinSet<(&'static str, LoopExit)>,
    ctx: LeaderContext,
    cancel: CancellationToken,
    spec: &LeaderLoop,
) {
    let spec = spec.clone();
    let span = tracing::info_span!("leader_loop", r#loop = spec.name, epoch = ctx.epoch);
    set.spawn(
        async move {
            let exit = run_loop(&spec, ctx, cancel).await;
            (spec.name, exit)
        }
        .instrument(span),
    );
}

async fn run_loop(spec: &LeaderLoop, ctx: LeaderContext, cancel: CancellationToken) -> LoopExit {
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut consecutive_errors: u32 = 0;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return LoopExit::Cancelled,
            _ = ticker.tick() => {}
        }
        let iteration = match &spec.body {
            Body::Tick(tick) => tick(ctx.clone()),
            Body::Run(run) => run(ctx.clone(), cancel.clone()),
        };
        // A panic in an iteration is handled like an error, per the loop's declaration.
        let iteration = AssertUnwindSafe(iteration).catch_unwind().map(|r| {
            r.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::internal(format!("iteration panicked: {what}")))
            })
        });
        let started = Instant::now();
        let result = match spec.on_cancel {
            OnCancel::Finish => iteration.await,
            OnCancel::Abandon => tokio::select! {
                biased;
                _ = cancel.cancelled() => return LoopExit::Cancelled,
                r = iteration => r,
            },
        };
        histogram!(m::LEADER_LOOP_SECONDS, "loop" => spec.name)
            .record(started.elapsed().as_secs_f64());
        let Err(e) = result else {
            if consecutive_errors > 0 {
                tracing::info!(after = consecutive_errors, "leader loop recovered");
            }
            consecutive_errors = 0;
            continue;
        };
        counter!(m::LEADER_LOOP_ERRORS, "loop" => spec.name).increment(1);
        if crate::db::leader::is_deposed(&e) {
            tracing::warn!(error = %e, "leader write refused: this term is over");
            return LoopExit::Deposed(e);
        }
        if cancel.is_cancelled() {
            // The failure is most likely the term ending under it (e.g. a dropped connection).
            return LoopExit::Cancelled;
        }
        match spec.on_error {
            OnError::StepDown => {
                tracing::error!(error = %e, "leader loop failed; giving up office");
                return LoopExit::Failed(e);
            }
            OnError::Continue => {
                consecutive_errors = consecutive_errors.saturating_add(1);
                // Log the first failure and then less and less often while it persists.
                if consecutive_errors.is_power_of_two() {
                    tracing::warn!(error = %e, consecutive = consecutive_errors, "leader loop iteration failed; retrying at the next tick");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn ctx() -> LeaderContext {
        // The pool connects lazily: these loops never touch it.
        let config = Config::for_database("postgres://nobody@127.0.0.1:1/none");
        LeaderContext {
            db: Db::connect("postgres://nobody@127.0.0.1:1/none", 2).unwrap(),
            config: Arc::new(config),
            declared_providers: Arc::default(),
            epoch: 7,
        }
    }

    fn counting(counter: &Arc<AtomicU32>, fail_from: u32, err: fn() -> Error) -> LeaderLoop {
        let counter = counter.clone();
        LeaderLoop::every("test", Duration::from_secs(1), move |_ctx| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { if n >= fail_from { Err(err()) } else { Ok(()) } }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_at_its_interval_and_stops_when_cancelled() {
        let n = Arc::new(AtomicU32::new(0));
        let spec = counting(&n, u32::MAX, || Error::internal("never"));
        let mut set = JoinSet::new();
        let cancel = CancellationToken::new();
        spawn_loop(&mut set, ctx(), cancel.clone(), &spec);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 4, "ticks at 0, 1, 2, 3 s");
        cancel.cancel();
        let (name, exit) = set.join_next().await.unwrap().unwrap();
        assert_eq!(name, "test");
        assert!(matches!(exit, LoopExit::Cancelled));
    }

    #[tokio::test(start_paused = true)]
    async fn continue_keeps_ticking_after_errors() {
        let n = Arc::new(AtomicU32::new(0));
        let spec = counting(&n, 1, || Error::unavailable("database down"));
        let mut set = JoinSet::new();
        let cancel = CancellationToken::new();
        spawn_loop(&mut set, ctx(), cancel.clone(), &spec);
        tokio::time::sleep(Duration::from_millis(5500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 6);
        assert!(set.try_join_next().is_none(), "the loop is still running");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn step_down_ends_the_loop_on_error() {
        let n = Arc::new(AtomicU32::new(0));
        let spec = counting(&n, 3, || Error::internal("broken")).on_error(OnError::StepDown);
        let mut set = JoinSet::new();
        spawn_loop(&mut set, ctx(), CancellationToken::new(), &spec);
        let (_, exit) = set.join_next().await.unwrap().unwrap();
        assert!(matches!(exit, LoopExit::Failed(_)), "{exit:?}");
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fencing_refusal_always_ends_the_term() {
        let n = Arc::new(AtomicU32::new(0));
        let spec = counting(&n, 2, || {
            Error::failed_precondition("no longer leader").with_source(crate::db::leader::Deposed {
                ours: 7,
                recorded: Some(8),
            })
        });
        assert_eq!(spec.on_error, OnError::Continue);
        let mut set = JoinSet::new();
        spawn_loop(&mut set, ctx(), CancellationToken::new(), &spec);
        let (_, exit) = set.join_next().await.unwrap().unwrap();
        assert!(matches!(exit, LoopExit::Deposed(_)), "{exit:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_an_error_of_the_iteration() {
        let spec = LeaderLoop::every("panics", Duration::from_secs(1), |_ctx| async {
            panic!("boom")
        })
        .on_error(OnError::StepDown);
        let mut set = JoinSet::new();
        spawn_loop(&mut set, ctx(), CancellationToken::new(), &spec);
        let (_, exit) = set.join_next().await.unwrap().unwrap();
        match exit {
            LoopExit::Failed(e) => assert!(e.message.contains("boom"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abandon_drops_an_iteration_in_progress_finish_waits_for_it() {
        let finished = Arc::new(AtomicU32::new(0));
        let slow = |finished: Arc<AtomicU32>| {
            move |_ctx: LeaderContext| {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        };
        for (on_cancel, expect) in [(OnCancel::Abandon, 0), (OnCancel::Finish, 1)] {
            finished.store(0, Ordering::SeqCst);
            let spec = LeaderLoop::every("slow", Duration::from_secs(1), slow(finished.clone()))
                .on_cancel(on_cancel);
            let mut set = JoinSet::new();
            let cancel = CancellationToken::new();
            spawn_loop(&mut set, ctx(), cancel.clone(), &spec);
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
            let (_, exit) = set.join_next().await.unwrap().unwrap();
            assert!(matches!(exit, LoopExit::Cancelled));
            assert_eq!(finished.load(Ordering::SeqCst), expect, "{on_cancel:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_running_loop_gets_the_cancellation_token() {
        let spec = LeaderLoop::long_running(
            "runner",
            Duration::from_secs(1),
            |_ctx, cancel| async move {
                cancel.cancelled().await;
                Ok(())
            },
        );
        let mut set = JoinSet::new();
        let cancel = CancellationToken::new();
        spawn_loop(&mut set, ctx(), cancel.clone(), &spec);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(set.try_join_next().is_none());
        cancel.cancel();
        let (_, exit) = set.join_next().await.unwrap().unwrap();
        assert!(matches!(exit, LoopExit::Cancelled));
    }
}
