//! What every handler of a replica shares. Only handles live here (pool, configuration, caches with
//! documented staleness): the state itself is in Postgres.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use super::login_gate::LoginGate;
use crate::config::Config;
use crate::db::Db;
use crate::db::catalog::FlavorCache;
use crate::db::dispatch::{DispatchConfig, Pings};
use crate::db::status_batch::StatusUpdates;
use crate::db::submit_batch::Submissions;
use crate::domain::catalog::DeclaredProviders;
use crate::domain::jwt::JwtKey;
use crate::logs::{LogLimits, LogService};
use crate::providers::secrets::Secrets;
use crate::storage::Storage;
use crate::templates::Templates;

pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    /// The `providers:` section as a value (made once by the server from `config`).
    pub declared_providers: Arc<DeclaredProviders>,
    pub auth: Arc<Authenticator>,
    /// Settings of ping-and-assign.
    pub dispatch: DispatchConfig,
    /// ListFlavors answers (a few seconds stale at most; see `FlavorCache`).
    pub flavors: FlavorCache,
    /// Rclone remotes, docker credentials and workspace roots from the configuration.
    pub secrets: Secrets,
    /// Cancelled when the replica starts draining: long-lived streams end so the drain can finish.
    pub draining: CancellationToken,
    /// Task log ingest and follow streams (owns the replica's LISTEN session).
    pub logs: LogService,
    /// FetchList / FetchInfo: the storage layer with the `rclone:` remotes, reaching only what
    /// `Config::fetch_policy` allows.
    pub storage: Storage,
    /// Template upload and runs (scripts call this replica back at its gRPC address).
    pub templates: Templates,
    /// Throttles Login and ChangePassword (password hashes).
    pub login_gate: LoginGate,
    /// Signs the session tokens Login issues (the cluster's key: configured, or kept in Postgres).
    pub jwt: JwtKey,
    /// PingAndTakeNewTasks: the ping batcher (group commit) or the one-by-one path.
    pub pings: Pings,
    /// UpdateTaskStatus: the status batcher (group commit) or the one-by-one path.
    pub status_updates: StatusUpdates,
    /// SubmitTask: the submission batcher (group commit) or one transaction each.
    pub submissions: Submissions,
}

impl AppState {
    pub fn new(
        db: Db,
        config: Arc<Config>,
        declared_providers: Arc<DeclaredProviders>,
        worker_token: String,
        jwt: JwtKey,
        grpc_addr: SocketAddr,
    ) -> AppState {
        let auth = Arc::new(Authenticator::new(
            db.clone(),
            worker_token,
            jwt.clone(),
            config.allow_unauthenticated_log_streams,
        ));
        let dispatch = DispatchConfig {
            shards: config.assign_shards,
            last_ping_write_interval: config.last_ping_write_interval(),
        };
        let draining = CancellationToken::new();
        let log_limits = LogLimits {
            max_followers: config.max_log_followers,
            max_followers_per_user: config.max_log_followers_per_user,
            max_log_bytes_per_task: config.max_log_bytes_per_task,
        };
        let logs = LogService::start(db.clone(), log_limits, draining.clone());
        let secrets = Secrets::new(config.clone());
        let storage = Storage::with_policy(config.rclone.clone(), config.fetch_policy());
        let templates = Templates::new(&config, grpc_addr, auth.clone());
        let login_gate = LoginGate::new(config.login_concurrency, config.login_queue);
        let pings = Pings::start(db.clone(), dispatch, config.batch_loops, config.batch_max);
        let status_updates = StatusUpdates::start(
            db.clone(),
            config.assign_shards,
            config.batch_loops,
            config.batch_max,
        );
        let submissions = Submissions::start(
            db.clone(),
            config.assign_shards,
            config.batch_loops,
            config.batch_max,
        );
        AppState {
            db,
            config,
            declared_providers,
            auth,
            dispatch,
            flavors: FlavorCache::default(),
            secrets,
            draining,
            logs,
            storage,
            templates,
            login_gate,
            jwt,
            pings,
            status_updates,
            submissions,
        }
    }
}
