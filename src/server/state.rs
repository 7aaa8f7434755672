//! What every handler of a replica shares. Only handles live here (pool, configuration, caches with
//! documented staleness): the state itself is in Postgres.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use crate::config::Config;
use crate::db::Db;
use crate::db::dispatch::DispatchConfig;

pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    /// Settings of ping-and-assign.
    pub dispatch: DispatchConfig,
    /// Cancelled when the replica starts draining: long-lived streams end so the drain can finish.
    pub draining: CancellationToken,
}

impl AppState {
    pub fn new(db: Db, config: Arc<Config>, worker_token: String) -> AppState {
        let auth = Arc::new(Authenticator::new(
            db.clone(),
            worker_token,
            config.allow_unauthenticated_log_streams,
        ));
        let dispatch = DispatchConfig {
            shards: config.assign_shards,
            last_ping_write_interval: config.last_ping_write_interval(),
        };
        AppState {
            db,
            config,
            auth,
            dispatch,
            draining: CancellationToken::new(),
        }
    }
}
