//! taskqueue: a Postgres-backed, multi-replica server for the scitq task queue.
//!
//! The map of the house:
//! - [`proto`]: the generated wire types of `taskqueue.TaskQueue` (the only `include_proto!`).
//! - [`error`]: the crate error and its one mapping to `tonic::Status`.
//! - [`config`]: flags, `TASKQUEUE_*` environment, optional YAML; validated `Config`.
//! - [`server`]: `run(config, listeners, shutdown)` — wiring, health, reflection, metrics, shutdown.
//! - [`api`]: gRPC adapters, one file per area, their shared `AppState` and the auth layer.
//! - [`domain`]: pure rules (statuses, credentials, capacity …), no I/O.
//! - [`db`]: the only module that talks to Postgres: pool, transactions, migrations, embedded server.
//! - [`cluster`]: leadership — etcd election or Postgres lock, `Role`, fencing epochs.
//! - [`loops`]: leader-only background loops and their fenced transactions.
//! - [`logs`]: task log streams: batched ingest, live follow (LISTEN fan-out), and their bounds.
//! - [`providers`]: sources of worker machines (`local` processes, `fake` simulated VMs) and worker secrets.
//! - [`client`]: connecting to a server (channel + bearer token) for workers, commands and tests.
//! - [`storage`]: the one storage layer (local, file://, http, rclone remotes over opendal).
//! - [`templates`]: workflow templates — scripts stored in Postgres, run in a private temp folder.
//! - [`worker`]: the worker agent (`taskqueue worker`): ping loop, executors, staging, log shipping.
//! - [`cli`]: client commands for people (`taskqueue task …`, `taskqueue workers …`, …).
//! - [`secret_files`]: files created 0600 at open, and private folders of predictable names.
//! - [`rpcs`]: the table of the 59 RPCs: streaming shape and access rule of each.
//! - [`telemetry`]: tracing setup, metric names and buckets, the gRPC metrics layer.
//! - [`web`]: the web listener — gRPC-Web, REST helpers, `/ws`, the UI's files, `/scitq-client`.

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod logs;
pub mod loops;
pub mod proto;
pub mod providers;
pub mod rpcs;
pub mod secret_files;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod templates;
pub mod web;
pub mod worker;

pub use error::{Error, Result};
