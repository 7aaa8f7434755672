//! Group commit (docs/architecture.md#group-commit): requests of one kind that wait together are served by one
//! database round trip. A [`Batcher`] owns a bounded queue and a few loops, each on its own
//! connection taken from the pool once (and taken again after the connection broke). A loop takes
//! everything waiting, up to `max`, runs ONE [`BatchFn::run`] for all of it and answers every caller.
//! There is no timer: a lone request goes at once; under load, batches form by themselves while the
//! previous ones are in flight.
//!
//! One batch in flight at a time, normally: a loop that finds a request while another loop's batch
//! is in flight waits for that batch to end and then takes everything queued, as that loop would
//! have; only when the batch in flight is slow (`spare_after`, e.g. a claim waiting on a lock) does
//! it go meanwhile. Two loops running side by side split the requests into batches of half the
//! size, and every batch pays the same fixed cost in PostgreSQL: measured on the 2-core bench,
//! one batch at a time gave +35 % idle pings, +45 % assigning pings and a lower p99 than two
//! loops taking batches freely, and the spare keeps one stuck batch from stalling the replica.
//!
//! What it guarantees: each request is answered exactly once, with its own answer or with the
//! batch's error (a failed batch fails every request in it; a conflict or deadlock runs the whole
//! batch again first, as `Db::tx` does); a request that finds the queue full waits up to
//! `queue_wait` for a place, then gets UNAVAILABLE ("… queue full …": the database is behind, the
//! caller tries again later, as with an exhausted pool); after `shutdown` starts, new requests get
//! UNAVAILABLE and everything already queued is still run. What it does not do: decide anything
//! about the requests (that is the `BatchFn`), or cancel a batch whose callers went away (the
//! batch is shared; their answers are dropped).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use metrics::{counter, histogram};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Client, Db, Op, retry_allowed};
use crate::error::{Code, Error, Result};
use crate::telemetry::metrics as m;

/// The work of one kind of batch: answers `reqs` in one database round trip (or a few pipelined
/// statements), one answer per request, in order. A per-request failure belongs in `Resp` (e.g.
/// `Result<…>`); an `Err` fails the whole batch. It may be run again on the same requests after a
/// retryable error, so it must not have committed anything when it returns one.
#[async_trait::async_trait]
pub trait BatchFn<Req, Resp>: Send + Sync + 'static {
    async fn run(&self, client: &mut Client, reqs: &[Req]) -> Result<Vec<Resp>>;
}

/// How a batcher runs.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// The `kind` label of the batch metrics (a closed set: one per batcher).
    pub kind: &'static str,
    /// The `op` label of the transaction metrics of each batch.
    pub op: Op,
    /// Batch loops, each on its own connection (at least 1).
    pub loops: usize,
    /// Most requests in one batch (at least 1); the queue holds `loops × max`.
    pub max: usize,
    /// How long a request waits for a place in a full queue before UNAVAILABLE.
    pub queue_wait: Duration,
    /// Plan the loop's statements once (`plan_cache_mode = force_generic_plan` on its
    /// connection): a batch's statements take arrays of ids (`= ANY($1)`), for which PostgreSQL
    /// otherwise plans every execution anew (a custom plan each time; measured: planning was 56 %
    /// of PostgreSQL's CPU during idle pings). Only for statements whose status and index
    /// conditions are literals, so the generic plan uses the same (partial) indexes. The
    /// connection then never returns to the pool: it is closed when the loop ends.
    pub generic_plans: bool,
    /// How long a loop that has requests waits for another loop's batch in flight to end before
    /// it goes anyway (see the module doc).
    pub spare_after: Duration,
}

impl BatchConfig {
    /// The configuration of a batcher of RPC requests: a request waits for a place in the queue as
    /// long as it would wait for a pooled connection, and the loops plan their statements once.
    pub fn requests(kind: &'static str, op: Op, loops: usize, max: usize) -> BatchConfig {
        BatchConfig {
            kind,
            op,
            loops,
            max,
            queue_wait: super::POOL_WAIT,
            generic_plans: true,
            spare_after: SPARE_AFTER,
        }
    }
}

/// A batch in flight longer than this is slow: a waiting loop goes meanwhile. Above the time of a
/// busy batch (a few ms on the bench's saturated 2 cores), below the p99 a ping may take (10 ms).
pub const SPARE_AFTER: Duration = Duration::from_millis(8);

/// What the loop's connection runs first when `generic_plans` is set.
const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

struct Job<Req, Resp> {
    req: Req,
    queued: Instant,
    reply: oneshot::Sender<Result<Resp>>,
}

type Queue<Req, Resp> = Arc<tokio::sync::Mutex<mpsc::Receiver<Job<Req, Resp>>>>;

/// The batches in flight of one batcher's loops, and a signal when one ends.
#[derive(Default)]
struct InFlight {
    running: AtomicUsize,
    ended: Notify,
}

/// One batch in flight: counted from before its loop lets go of the queue until it answered.
struct Running<'a>(&'a InFlight);

impl<'a> Running<'a> {
    fn start(f: &'a InFlight) -> Running<'a> {
        f.running.fetch_add(1, Ordering::SeqCst);
        Running(f)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

/// A group-commit queue and its loops (see the module doc). Dropping it ends the loops once the
/// queue is empty; [`Batcher::shutdown`] does the same and waits for them.
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Job<Req, Resp>>,
    closing: CancellationToken,
    loops: Mutex<Vec<JoinHandle<()>>>,
    cfg: BatchConfig,
}

impl<Req: Send + Sync + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts `cfg.loops` loops running `f` on connections of `db` (taken when the first batch
    /// comes). Must be called inside a tokio runtime.
    pub fn start(db: Db, cfg: BatchConfig, f: impl BatchFn<Req, Resp>) -> Batcher<Req, Resp> {
        let cfg = BatchConfig {
            loops: cfg.loops.max(1),
            max: cfg.max.max(1),
            ..cfg
        };
        let (tx, rx) = mpsc::channel(cfg.loops.saturating_mul(cfg.max));
        let queue: Queue<Req, Resp> = Arc::new(tokio::sync::Mutex::new(rx));
        let f: Arc<dyn BatchFn<Req, Resp>> = Arc::new(f);
        let closing = CancellationToken::new();
        let in_flight = Arc::new(InFlight::default());
        let loops = (0..cfg.loops)
            .map(|_| {
                tokio::spawn(run_loop(
                    db.clone(),
                    cfg,
                    f.clone(),
                    queue.clone(),
                    in_flight.clone(),
                    closing.clone(),
                ))
            })
            .collect();
        Batcher {
            tx,
            closing,
            loops: Mutex::new(loops),
            cfg,
        }
    }

    /// [`Batcher::start`], or `None` when `cfg.loops` is 0 (batching off: each request on its
    /// own).
    pub fn start_unless_off(db: Db, cfg: BatchConfig, f: impl BatchFn<Req, Resp>) -> Option<Self> {
        (cfg.loops > 0).then(|| Batcher::start(db, cfg, f))
    }

    /// Queues `req` and waits for its answer.
    pub async fn submit(&self, req: Req) -> Result<Resp> {
        if self.closing.is_cancelled() {
            return Err(self.shutting_down());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            req,
            queued: Instant::now(),
            reply,
        };
        match tokio::time::timeout(self.cfg.queue_wait, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.shutting_down()),
            Err(_) => {
                counter!(m::BATCH_REFUSED, "kind" => self.cfg.kind).increment(1);
                return Err(Error::unavailable(format!(
                    "{} queue full: the database is behind; try again shortly",
                    self.cfg.kind
                )));
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::unavailable(format!(
                "the {} batch loop stopped before answering; try again",
                self.cfg.kind
            )))
        })
    }

    fn shutting_down(&self) -> Error {
        Error::unavailable(format!(
            "shutting down: no new {} requests on this replica",
            self.cfg.kind
        ))
    }

    /// Refuses new requests, runs what is queued, and waits for the loops to end (their
    /// connections go back to the pool).
    pub async fn shutdown(&self) {
        self.closing.cancel();
        let loops = std::mem::take(&mut *self.loops.lock().expect("batcher loops lock"));
        for l in loops {
            match l.await {
                Ok(()) => {}
                // The runtime is shutting down under us: nothing was lost that it does not lose.
                Err(e) if e.is_cancelled() => {}
                Err(e) => tracing::error!(kind = self.cfg.kind, error = %e, "a batch loop failed"),
            }
        }
    }
}

async fn run_loop<Req: Send + Sync + 'static, Resp: Send + 'static>(
    db: Db,
    cfg: BatchConfig,
    f: Arc<dyn BatchFn<Req, Resp>>,
    queue: Queue<Req, Resp>,
    in_flight: Arc<InFlight>,
    closing: CancellationToken,
) {
    let mut client: Option<Client> = None;
    let mut jobs = Vec::with_capacity(cfg.max);
    loop {
        let running = {
            // One loop waits on the queue at a time; the others run their batches meanwhile.
            let mut rx = queue.lock().await;
            let n = tokio::select! {
                biased;
                n = rx.recv_many(&mut jobs, cfg.max) => n,
                () = closing.cancelled() => {
                    // Refuse new requests, then drain what is queued.
                    rx.close();
                    rx.recv_many(&mut jobs, cfg.max).await
                }
            };
            if n == 0 {
                // Closed and empty. A connection with the loop's own settings is not handed on.
                if let Some(c) = client.take().filter(|_| cfg.generic_plans) {
                    drop(deadpool_postgres::Client::take(c));
                }
                return;
            }
            if n < cfg.max {
                // Another loop's batch in flight: wait for it (then take what queued meanwhile)
                // unless it is slow. Registered before the check, so its end is not missed.
                let ended = in_flight.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if in_flight.running.load(Ordering::SeqCst) > 0 && !closing.is_cancelled() {
                    let _ = tokio::time::timeout(cfg.spare_after, ended).await;
                    let _ = rx.recv_many(&mut jobs, cfg.max - n).now_or_never();
                }
            }
            Running::start(&in_flight)
        };
        run_batch(
            &db,
            &cfg,
            f.as_ref(),
            &mut client,
            std::mem::take(&mut jobs),
        )
        .await;
        drop(running);
    }
}

async fn run_batch<Req: Send + Sync + 'static, Resp: Send + 'static>(
    db: &Db,
    cfg: &BatchConfig,
    f: &dyn BatchFn<Req, Resp>,
    client: &mut Option<Client>,
    jobs: Vec<Job<Req, Resp>>,
) {
    let started = Instant::now();
    histogram!(m::BATCH_SIZE, "kind" => cfg.kind).record(jobs.len() as f64);
    let wait = histogram!(m::BATCH_WAIT_SECONDS, "kind" => cfg.kind);
    let (reqs, replies): (Vec<Req>, Vec<_>) = jobs
        .into_iter()
        .map(|j| {
            wait.record(started.duration_since(j.queued).as_secs_f64());
            (j.req, j.reply)
        })
        .unzip();

    let mut attempt = 0;
    let result = loop {
        let result = run_once(db, cfg, f, client, &reqs).await;
        match result {
            Err(e) if retry_allowed(cfg.op, &mut attempt, &e).await => {}
            Ok(answers) if answers.len() != reqs.len() => {
                break Err(Error::internal(format!(
                    "a {} batch gave {} answers to {} requests",
                    cfg.kind,
                    answers.len(),
                    reqs.len()
                )));
            }
            result => break result,
        }
    };
    histogram!(m::DB_TX_SECONDS, "op" => cfg.op.label()).record(started.elapsed().as_secs_f64());
    match result {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away does not take its answer: nothing to do.
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            counter!(m::DB_TX_ERRORS, "op" => cfg.op.label()).increment(1);
            tracing::warn!(kind = cfg.kind, requests = replies.len(), error = %e, "a batch failed");
            for reply in replies {
                let _ = reply.send(Err(same_error(&e)));
            }
        }
    }
}

/// One run of the batch on the loop's connection (taken from the pool when it has none, given up
/// when it broke or the run panicked).
async fn run_once<Req: Send + Sync + 'static, Resp: Send + 'static>(
    db: &Db,
    cfg: &BatchConfig,
    f: &dyn BatchFn<Req, Resp>,
    client: &mut Option<Client>,
    reqs: &[Req],
) -> Result<Vec<Resp>> {
    let c = match client {
        Some(c) => c,
        None => {
            let c = db.client().await?;
            if cfg.generic_plans {
                if let Err(e) = c.batch_execute(GENERIC_PLANS).await {
                    // Not back to the pool half set up.
                    drop(deadpool_postgres::Client::take(c));
                    return Err(e.into());
                }
            }
            client.insert(c)
        }
    };
    let result = AssertUnwindSafe(f.run(c, reqs)).catch_unwind().await;
    match result {
        Ok(result) => {
            if result.is_err() && c.is_closed() {
                *client = None;
            }
            result
        }
        Err(_) => {
            // The connection may be mid-statement: out of the pool with it.
            if let Some(c) = client.take() {
                drop(deadpool_postgres::Client::take(c));
            }
            counter!(m::GRPC_PANICS).increment(1);
            tracing::error!("a batch panicked; its requests were answered INTERNAL");
            Err(Error::internal("internal error while serving a batch"))
        }
    }
}

/// The error of a failed batch, for each of its callers (the crate error is not `Clone`: its
/// source is not).
pub(crate) fn same_error(e: &Error) -> Error {
    let mut copy = Error::new(e.code, e.message.clone());
    copy.retryable = e.retryable && e.code == Code::Aborted;
    copy
}

/// Records how many requests one statement of a batch served (the `rows_per_statement` metric):
/// a `BatchFn` calls it for each statement it runs.
pub fn record_statement(kind: &'static str, rows: usize) {
    histogram!(m::BATCH_ROWS_PER_STATEMENT, "kind" => kind).record(rows as f64);
}
