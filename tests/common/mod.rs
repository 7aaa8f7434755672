//! Test harness: one PostgreSQL per test process (started on first use, stopped when the process
//! exits), a fresh database per test cloned from a migrated template, etcd processes on free
//! loopback ports, and replicas started in-process on port 0 with authenticated clients. A panic
//! of server code (anything under `src/`) while a replica runs fails the test that owns the replica
//! when the replica stops or is dropped.
//!
//! One module per concern; everything is re-exported here, so tests write `common::replica()`.

pub mod child;
pub mod dirs;
pub mod etcd;
pub mod leader;
pub mod net;
pub mod postgres;
pub mod replica;
pub mod rpc;
pub mod web;

pub use child::*;
pub use dirs::*;
pub use etcd::*;
pub use net::*;
pub use postgres::*;
pub use replica::*;
pub use rpc::*;

use std::time::{Duration, Instant};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const WORKER_TOKEN: &str = "worker-token-for-tests";

/// Waits until `check` returns true, polling every 20 ms, for at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
