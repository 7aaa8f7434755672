//! The only module that touches tokio-postgres/deadpool: the pool, the transaction helper, SQLSTATE
//! mapping, migrations, the embedded PostgreSQL, and one file of queries per table family.
//!
//! A deliberate shape: db/ holds *transaction scripts*. Each public function is one unit of work
//! against the database (its SQL, its parameters, its row mapping, in one [`Db::tx`] or
//! [`Db::run`]), and every decision in it that is not a query — which transition is allowed, what
//! an idle ping is, which statuses hold capacity — is a pure rule of `domain/` that the script
//! calls (the status sets are rendered into the SQL from `domain::status`). There is no ORM and no
//! repository layer: what a script does to the tables is read in one place. A
//! `tokio_postgres::Error` becomes the crate's [`Error`] through `?` (`From`, by [`pg_error`]).

pub mod batch;
pub mod catalog;
pub mod cluster_settings;
pub mod dependencies;
pub mod dispatch;
pub mod embedded;
pub mod events;
pub mod jobs;
pub mod leader;
pub mod locks;
pub mod logs;
pub mod migrate;
pub mod notify;
pub mod ownership;
pub mod recruiters;
pub mod secrets;
pub mod status_batch;
#[cfg(test)]
mod status_sets;
pub mod submit_batch;
pub mod tasks;
pub mod templates;
pub mod users;
pub mod watch;
pub mod watchdog;
pub mod workers;
pub mod workflows;
pub mod ws_events;

use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Transaction};
use metrics::{counter, gauge, histogram};
use scoped_futures::{ScopedBoxFuture, ScopedFutureExt as _};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Row};

use crate::error::{Code, Error, Result};
use crate::telemetry::metrics as m;

/// The transaction a multi-statement script runs in (see [`Db::tx`]).
pub type Tx<'a> = Transaction<'a>;

/// What a transaction is for: the label of its duration metric (a closed set, so label cardinality is
/// fixed) and the name in its tracing span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Migrate,
    Bootstrap,
    Auth,
    Login,
    Users,
    SubmitTask,
    ListTasks,
    UpdateTaskStatus,
    RetryTask,
    Ping,
    ClaimTasks,
    PingBatch,
    StatusBatch,
    SubmitBatch,
    Workers,
    Workflows,
    StepStats,
    Logs,
    LogIngest,
    LogFollow,
    Events,
    WsEvents,
    Jobs,
    Catalog,
    Recruiters,
    Templates,
    Leader,
    Watchdog,
    DependencySweep,
    JobRunner,
    RecruiterCycle,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::Migrate => "migrate",
            Op::Bootstrap => "bootstrap",
            Op::Auth => "auth",
            Op::Login => "login",
            Op::Users => "users",
            Op::SubmitTask => "submit_task",
            Op::ListTasks => "list_tasks",
            Op::UpdateTaskStatus => "update_task_status",
            Op::RetryTask => "retry_task",
            Op::Ping => "ping",
            Op::ClaimTasks => "claim_tasks",
            Op::PingBatch => "ping_batch",
            Op::StatusBatch => "status_batch",
            Op::SubmitBatch => "submit_batch",
            Op::Workers => "workers",
            Op::Workflows => "workflows",
            Op::StepStats => "step_stats",
            Op::Logs => "logs",
            Op::LogIngest => "log_ingest",
            Op::LogFollow => "log_follow",
            Op::Events => "events",
            Op::WsEvents => "ws_events",
            Op::Jobs => "jobs",
            Op::Catalog => "catalog",
            Op::Recruiters => "recruiters",
            Op::Templates => "templates",
            Op::Leader => "leader",
            Op::Watchdog => "watchdog",
            Op::DependencySweep => "dependency_sweep",
            Op::JobRunner => "job_runner",
            Op::RecruiterCycle => "recruiter_cycle",
        }
    }
}

/// How many times a transaction that hit a serialization failure or deadlock is run again.
const MAX_TX_RETRIES: u32 = 5;
/// How long a request waits for a pooled connection before answering `Unavailable`.
pub(crate) const POOL_WAIT: Duration = Duration::from_secs(10);

/// The statement timeout of pooled sessions when none is configured: no request holds the database
/// longer than this.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The statement timeout of the leader loops' transactions (set with `SET LOCAL` in each): sweeps
/// over a large fleet may legitimately take longer than a request, but never hold the database forever.
pub const LEADER_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);

pub type Client = deadpool_postgres::Client;

/// The connection pool of a replica.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// How the pool connects, kept for dedicated sessions (LISTEN, session locks).
    pg: tokio_postgres::Config,
}

impl Db {
    /// Builds a pool for `url` (a `postgres://` URL or a `key=value` string) with the default
    /// statement timeout. Connections are made lazily; `ping` checks that the database answers.
    pub fn connect(url: &str, pool_size: usize) -> Result<Db> {
        Db::connect_with(url, pool_size, DEFAULT_STATEMENT_TIMEOUT)
    }

    /// Builds a pool whose sessions start with `statement_timeout` (zero: no limit), set in the
    /// connection's startup options so that every pooled session has it before its first query.
    pub fn connect_with(url: &str, pool_size: usize, statement_timeout: Duration) -> Result<Db> {
        let mut pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::invalid(format!("invalid database URL: {e}")))?;
        if pg.get_application_name().is_none() {
            pg.application_name("taskqueue");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let mut pooled = pg.clone();
        let timeout = format!("-c statement_timeout={}", statement_timeout.as_millis());
        let options = match pg.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeout}"),
            _ => timeout,
        };
        pooled.options(&options);
        let manager = Manager::from_config(
            pooled,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the database pool: {e}")))?;
        gauge!(m::DB_POOL_MAX).set(pool_size as f64);
        Ok(Db { pool, pg })
    }

    /// The connection settings of the pool, for a dedicated session outside it (the LISTEN
    /// connection of `notify`), named `application_name` so it can be told apart.
    pub fn session_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.application_name(application_name);
        pg
    }

    /// The pool's maximum size.
    pub fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Client> {
        Ok(self.pool.get().await?)
    }

    /// Waits until the database answers a query, for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = async {
                self.client()
                    .await?
                    .simple_query("SELECT 1")
                    .await
                    .map_err(pg_error)
            }
            .await;
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for the database");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` in a transaction: checks out a connection, begins, commits; runs it again (up to
    /// `MAX_TX_RETRIES` times) when it failed on a serialization failure or deadlock; records the
    /// duration under `op`. An error from `f` rolls everything back.
    ///
    /// Write the body as `|tx| async move { … }.scope_boxed()` (`scoped_futures::ScopedFutureExt`):
    /// it may borrow from the caller and from `tx`.
    pub async fn tx<'env, T, F>(&self, op: Op, mut f: F) -> Result<T>
    where
        F: for<'a> FnMut(&'a Tx<'a>) -> ScopedBoxFuture<'env, 'a, Result<T>> + Send + 'env,
        T: Send + 'env,
    {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let mut checkout = Checkout::new(self.client().await?);
            let result: Result<T> = async {
                let tx = checkout.client_mut().transaction().await?;
                let value = f(&tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            .await;
            checkout.release();
            match result {
                Err(e) if retry_allowed(op, &mut attempt, &e).await => {}
                result => {
                    histogram!(m::DB_TX_SECONDS, "op" => op.label())
                        .record(start.elapsed().as_secs_f64());
                    if result.is_err() {
                        counter!(m::DB_TX_ERRORS, "op" => op.label()).increment(1);
                    }
                    return result;
                }
            }
        }
    }

    /// Runs `f` on a pooled connection without an explicit transaction (each statement commits on
    /// its own): for reads and single-statement writes. Records the duration under `op`.
    pub async fn run<'env, T, F>(&self, op: Op, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c Client) -> ScopedBoxFuture<'env, 'c, Result<T>> + Send + 'env,
        T: Send + 'env,
    {
        let start = Instant::now();
        let checkout = Checkout::new(self.client().await?);
        let result = f(checkout.client()).await;
        checkout.release();
        histogram!(m::DB_TX_SECONDS, "op" => op.label()).record(start.elapsed().as_secs_f64());
        if result.is_err() {
            counter!(m::DB_TX_ERRORS, "op" => op.label()).increment(1);
        }
        result
    }

    /// One statement on a pooled connection, measured as `op`: how many rows it changed.
    pub async fn execute(&self, op: Op, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.run(op, |c| {
            async move { Ok(c.execute(sql, params).await?) }.scope_boxed()
        })
        .await
    }

    /// One query on a pooled connection, measured as `op`: its rows, each through `map`.
    pub async fn query<T: Send>(
        &self,
        op: Op,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnMut(&Row) -> T + Send,
    ) -> Result<Vec<T>> {
        self.run(op, |c| {
            async move { Ok(c.query(sql, params).await?.iter().map(map).collect()) }.scope_boxed()
        })
        .await
    }

    /// One query on a pooled connection, measured as `op`: its one row, through `map` (no row, or
    /// several, is an error, as `tokio_postgres::Client::query_one`).
    pub async fn query_one<T: Send>(
        &self,
        op: Op,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnOnce(&Row) -> T + Send,
    ) -> Result<T> {
        self.run(op, |c| {
            async move { Ok(map(&c.query_one(sql, params).await?)) }.scope_boxed()
        })
        .await
    }

    /// One query on a pooled connection, measured as `op`: its row if any, through `map`.
    pub async fn query_opt<T: Send>(
        &self,
        op: Op,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnOnce(&Row) -> T + Send,
    ) -> Result<Option<T>> {
        self.run(op, |c| {
            async move { Ok(c.query_opt(sql, params).await?.as_ref().map(map)) }.scope_boxed()
        })
        .await
    }

    /// [`Db::execute`] for a statement that must change a row: none changed is the error
    /// `missing()`, counted as a failure of `op` like an error of the statement.
    pub async fn execute_found(
        &self,
        op: Op,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        missing: impl FnOnce() -> Error + Send,
    ) -> Result<u64> {
        self.run(op, |c| {
            async move {
                match c.execute(sql, params).await? {
                    0 => Err(missing()),
                    n => Ok(n),
                }
            }
            .scope_boxed()
        })
        .await
    }

    /// [`Db::query_opt`] for a row that must exist: none is the error `missing()`, counted as a
    /// failure of `op` like an error of the query.
    pub async fn query_found<T: Send>(
        &self,
        op: Op,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnOnce(&Row) -> T + Send,
        missing: impl FnOnce() -> Error + Send,
    ) -> Result<T> {
        self.run(op, |c| {
            async move {
                match c.query_opt(sql, params).await? {
                    Some(row) => Ok(map(&row)),
                    None => Err(missing()),
                }
            }
            .scope_boxed()
        })
        .await
    }

    /// Publishes the pool's state as gauges (called before each metrics scrape).
    pub fn record_pool_metrics(&self) {
        let status = self.pool.status();
        let idle = status.available as f64;
        let size = status.size as f64;
        gauge!(m::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
        gauge!(m::DB_POOL_CONNECTIONS, "state" => "in_use").set((size - idle).max(0.0));
        gauge!(m::DB_POOL_WAITING).set(status.waiting as f64);
    }

    /// Closes the pool: idle connections are dropped, checked-out ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// A pooled connection lent to one piece of work. Dropped before [`Checkout::release`] — the
/// request that used it was dropped (its client went away) while a query may still be running — it
/// asks the server to cancel that query and takes the connection out of the pool, so a connection
/// is never handed to another request mid-query.
struct Checkout {
    /// `Some` until released or dropped.
    client: Option<Client>,
    cancel: CancelToken,
}

impl Checkout {
    fn new(client: Client) -> Checkout {
        let cancel = client.cancel_token();
        Checkout {
            client: Some(client),
            cancel,
        }
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a checkout holds its client until released")
    }

    fn client_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a checkout holds its client until released")
    }

    /// The work finished (successfully or not): the connection goes back to the pool.
    fn release(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        counter!(m::DB_QUERIES_ABANDONED).increment(1);
        // Out of the pool: dropping it closes the connection once the server answers.
        drop(deadpool_postgres::Client::take(client));
        let cancel = self.cancel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
                    tracing::warn!(error = %e, "could not cancel the query of a dropped request");
                }
            });
        }
    }
}

/// The retry policy of work that hit a serialization failure or deadlock: true (after counting the
/// retry and backing off) when it may run again, at most `MAX_TX_RETRIES` times.
pub(crate) async fn retry_allowed(op: Op, attempt: &mut u32, e: &Error) -> bool {
    if !e.retryable || *attempt >= MAX_TX_RETRIES {
        return false;
    }
    *attempt += 1;
    counter!(m::DB_TX_RETRIES, "op" => op.label()).increment(1);
    tracing::debug!(op = op.label(), attempt = *attempt, error = %e, "running it again after a conflict");
    tokio::time::sleep(Duration::from_millis(5 * u64::from(*attempt))).await;
    true
}

/// Maps a Postgres error to the crate error: the ONE place SQLSTATEs are interpreted. The message
/// a client sees is Postgres' primary message only — never its DETAIL, which quotes stored
/// values — cut to `MAX_ECHO_BYTES` (the full error stays the source, for the server's log).
/// Unique violations keep their literal text (`duplicate key value violates unique constraint`):
/// the original's clients match it.
pub fn pg_error(e: tokio_postgres::Error) -> Error {
    let mut err = pg_error_unbounded(&e);
    err.message = crate::domain::limits::excerpt(&err.message);
    err.with_source(e)
}

fn pg_error_unbounded(e: &tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        if e.is_closed() {
            return Error::unavailable("database connection lost");
        }
        return Error::unavailable(format!("database unavailable: {e}"));
    };
    let code = db.code().clone();
    let text = db.message().to_string();
    match code {
        c if c == SqlState::UNIQUE_VIOLATION => Error::new(Code::AlreadyExists, text),
        c if c == SqlState::FOREIGN_KEY_VIOLATION => Error::new(Code::NotFound, text),
        c if c == SqlState::CHECK_VIOLATION
            || c == SqlState::NOT_NULL_VIOLATION
            || c == SqlState::STRING_DATA_RIGHT_TRUNCATION
            || c == SqlState::INVALID_TEXT_REPRESENTATION
            || c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            || c == SqlState::INVALID_PARAMETER_VALUE
            || c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || c == SqlState::UNTRANSLATABLE_CHARACTER
            || c == SqlState::INVALID_DATETIME_FORMAT
            || c == SqlState::DATETIME_FIELD_OVERFLOW =>
        {
            Error::new(Code::InvalidArgument, text)
        }
        c if c == SqlState::PROGRAM_LIMIT_EXCEEDED => Error::new(
            Code::InvalidArgument,
            format!("a value is too large for the database: {text}"),
        ),
        c if c == SqlState::T_R_SERIALIZATION_FAILURE || c == SqlState::T_R_DEADLOCK_DETECTED => {
            let mut e = Error::new(
                Code::Aborted,
                format!("transaction conflict, try again: {text}"),
            );
            e.retryable = true;
            e
        }
        c if c == SqlState::QUERY_CANCELED => Error::new(
            Code::DeadlineExceeded,
            format!("the database query ran past the statement timeout and was stopped: {text}"),
        ),
        c if c == SqlState::ADMIN_SHUTDOWN
            || c == SqlState::CRASH_SHUTDOWN
            || c == SqlState::CANNOT_CONNECT_NOW
            || c == SqlState::TOO_MANY_CONNECTIONS
            || c.code().starts_with("08") =>
        {
            Error::new(Code::Unavailable, format!("database unavailable: {text}"))
        }
        _ => Error::new(Code::Internal, format!("database error: {text}")),
    }
}

/// `?` on a Postgres error maps it with [`pg_error`]; the impl lives here because only `db` may know
/// tokio-postgres.
impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_error(e)
    }
}

/// `?` on a pool checkout error maps it with [`pool_error`].
impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        pool_error(e)
    }
}

/// Maps a failed pool checkout: a backend error goes through [`pg_error`], a timeout or a closed
/// pool is `Unavailable`.
fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => {
            Error::unavailable("database busy: no connection became free in time")
        }
        PoolError::Closed => Error::unavailable("shutting down: the database pool is closed"),
        other => Error::unavailable(format!("database unavailable: {other}")),
    }
}
