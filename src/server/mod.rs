//! `run(config, listeners, shutdown)`: wires a replica together — database (external or embedded),
//! migrations, first-start bootstrap, the TaskQueue service behind the auth and metrics layers,
//! health, reflection, the /metrics endpoint, and its membership in the leader election (started
//! once the server serves) — and shuts it down in order under one deadline: health NOT_SERVING →
//! stop accepting → drain in-flight RPCs → resign leadership → cancel the leader loops → close the
//! pool → stop the embedded database.

pub mod panics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::state::AppState;
use crate::api::{Service, auth};
use crate::config::Config;
use crate::db::embedded::{EmbeddedPostgres, Options as EmbeddedOptions};
use crate::db::{self, Db};
use crate::domain::catalog::{DeclaredProvider, DeclaredProviders};
use crate::domain::credentials;
use crate::domain::jwt::JwtKey;
use crate::domain::quota::Quota;
use crate::proto::task_queue_server::TaskQueueServer;
use crate::telemetry::grpc::GrpcMetricsLayer;
use crate::telemetry::metrics as m;

/// The sockets a replica serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
    /// The web listener (`--https-port`), if configured.
    pub web: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
            ),
            None => None,
        };
        let web = match config.web_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--https-port)"))?,
            ),
            None => None,
        };
        Ok(Listeners { grpc, metrics, web })
    }
}

/// The `providers:` section of `config` as the value `db` reads, built once here at the edge and
/// shared by the handlers and the leader loops (docs/architecture.md#layers).
pub fn declared_providers(config: &Config) -> DeclaredProviders {
    let providers = config.providers.iter().flat_map(|(class, configs)| {
        configs.iter().map(move |(name, cfg)| DeclaredProvider {
            class: class.clone(),
            name: name.clone(),
            regions: cfg.effective_regions(),
            default_region: cfg.default_region.clone(),
            quotas: cfg
                .quotas
                .iter()
                .map(|(region, q)| (region.clone(), Quota::new(q.cpu, q.mem)))
                .collect(),
        })
    });
    DeclaredProviders(providers.collect())
}

/// The application database of the embedded cluster.
const EMBEDDED_DATABASE: &str = "taskqueue";

/// Runs a replica until `shutdown` resolves, then shuts it down in order.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prometheus = m::install();
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(m::DRAINING).set(0.0);
    let config = Arc::new(config);
    let grpc_addr = listeners.grpc.local_addr()?;
    if let Some(venv) = &config.script_venv {
        crate::templates::venv::ensure(venv).await?;
    }

    let (database_url, embedded) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg =
                EmbeddedPostgres::start(EmbeddedOptions::new(config.data_dir.join("postgres")))
                    .await?;
            pg.ensure_database(EMBEDDED_DATABASE)
                .await
                .context("cannot create the embedded database")?;
            (pg.url(EMBEDDED_DATABASE), Some(pg))
        }
    };
    let result = serve(
        config,
        listeners,
        shutdown,
        &database_url,
        prometheus,
        grpc_addr,
    )
    .await;
    if let Some(pg) = embedded {
        pg.stop().await;
    }
    result
}

async fn serve(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    database_url: &str,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    grpc_addr: SocketAddr,
) -> anyhow::Result<()> {
    let db = Db::connect_with(database_url, config.db_pool_size, config.statement_timeout)?;
    db.wait_ready(Duration::from_secs(60))
        .await
        .context("the database does not answer")?;
    let report = db::migrate::migrate(&db)
        .await
        .context("migrations failed")?;
    tracing::info!(applied = ?report.applied, schema_version = report.current, "schema is current");
    check_cluster_settings(&db, &config).await?;
    bootstrap_admin(&db, &config).await?;
    let worker_token = resolve_worker_token(&config)?;
    let jwt = jwt_key(&db, &config).await?;
    let providers = crate::providers::Providers::from_config(
        &config,
        &crate::providers::Environment::for_replica(&config, grpc_addr, &worker_token),
    )
    .context("invalid provider configuration")?;
    let declared = Arc::new(declared_providers(&config));

    let state = Arc::new(AppState::new(
        db.clone(),
        config.clone(),
        declared.clone(),
        worker_token,
        jwt,
        grpc_addr,
    ));
    // Every replica runs the WebSocket fan-out (it also prunes stored events), web listener or not.
    let ws_hub = crate::web::ws::WsHub::start(
        db.clone(),
        state.logs.notifier(),
        state.logs.ws_watch().clone(),
        state.auth.clone(),
        state.draining.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TaskQueueServer<Service>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = TaskQueueServer::new(Service::new(state.clone()))
        .max_decoding_message_size(crate::config::defaults::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::config::defaults::MAX_MESSAGE_BYTES);

    let web_task = match listeners.web {
        Some(listener) => {
            let app = crate::web::router(state.clone(), ws_hub, service.clone());
            let tls = crate::web::tls_config(&config)?;
            Some(tokio::spawn(crate::web::serve(
                listener,
                app,
                tls,
                state.draining.clone(),
            )))
        }
        None => None,
    };
    let metrics_task = listeners.metrics.map(|listener| {
        let db = db.clone();
        tokio::spawn(serve_metrics(
            listener,
            prometheus,
            db,
            state.draining.clone(),
        ))
    });

    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(config.max_concurrent_streams));
    if let Some(tls) = tls::server_tls(&config)? {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .layer(GrpcMetricsLayer)
        .layer(auth::AuthLayer::new(state.auth.clone()))
        .layer(panics::layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);

    // Shutdown, step 1: on the signal, report NOT_SERVING and end long-lived streams; then the server
    // stops accepting and drains in-flight RPCs.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Instant>();
    let draining = state.draining.clone();
    let health_for_drain = health.clone();
    let stop_signal = async move {
        shutdown.await;
        let started = Instant::now();
        tracing::info!("shutting down: draining");
        metrics::gauge!(m::DRAINING).set(1.0);
        health_for_drain
            .set_not_serving::<TaskQueueServer<Service>>()
            .await;
        health_for_drain
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        draining.cancel();
        let _ = stop_tx.send(started);
    };
    match config.tls_certificate() {
        Some(cert) => {
            tracing::info!(addr = %grpc_addr, certificate = %cert.display(), "serving taskqueue.TaskQueue over TLS; clients trust the certificate")
        }
        None => tracing::info!(addr = %grpc_addr, tls = false, "serving taskqueue.TaskQueue"),
    }
    // TCP_NODELAY on every accepted connection: the builder's `tcp_nodelay` applies only to
    // listeners tonic binds itself, not to ours. Without it, a reply written in two pieces (the
    // message, then the trailers) waits for the client's delayed ACK: 40 ms stalls, measured as a
    // p99 of 20–30 ms for idle pings at 2,000/s.
    let incoming =
        tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let server = router.serve_with_incoming_shutdown(incoming, stop_signal);
    tokio::pin!(server);

    // The listener is bound and the service is ready: join the leader election. Campaigning runs
    // in the background and never holds up requests (etcd may well be down).
    let cluster = crate::cluster::start(
        crate::cluster::Membership {
            db: db.clone(),
            config: config.clone(),
            declared_providers: declared,
            loops: crate::loops::leader_loops(&config, providers),
        },
        database_url,
    )
    .await
    .context("cannot join the leader election")?;

    // Serve until the signal; after it, give the drain what is left of the grace period.
    let mut stop_rx = stop_rx;
    let mut deadline = None;
    let served = tokio::select! {
        r = &mut server => r.map_err(anyhow::Error::from),
        started = &mut stop_rx => {
            let until = started.unwrap_or_else(|_| Instant::now()) + config.shutdown_grace;
            deadline = Some(until);
            match tokio::time::timeout_at(until.into(), &mut server).await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!(grace = ?config.shutdown_grace, "drain deadline passed; abandoning open RPCs");
                    Ok(())
                }
            }
        }
    };

    // Remaining steps, against the same deadline: resign and stop the leader loops, then the
    // metrics endpoint and the pool.
    let deadline = deadline.unwrap_or_else(|| Instant::now() + config.shutdown_grace);
    if let Some(mut task) = web_task {
        // The web listener drains on the same signal (its streams end on `draining`).
        state.draining.cancel();
        if tokio::time::timeout_at(deadline.into(), &mut task)
            .await
            .is_err()
        {
            tracing::warn!("web listener drain deadline passed; closing its connections");
            task.abort();
        }
    }
    let batches = futures::future::join3(
        state.pings.shutdown(),
        state.status_updates.shutdown(),
        state.submissions.shutdown(),
    );
    if tokio::time::timeout_at(deadline.into(), batches)
        .await
        .is_err()
    {
        tracing::warn!("ping, status or submission batches still running at the drain deadline");
    }
    cluster.shutdown(deadline.into()).await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    db.close();
    tracing::info!("stopped");
    served
}

/// Serves `/metrics` (Prometheus text format) until the replica drains.
async fn serve_metrics(
    listener: TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    db: Db,
    draining: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let prometheus = prometheus.clone();
            let db = db.clone();
            async move {
                db.record_pool_metrics();
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    prometheus.render(),
                )
            }
        }),
    );
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { draining.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

/// On a database without users, creates the admin of the configuration — or, without a configured
/// password, with a random one printed once (only by the replica that created it).
async fn bootstrap_admin(db: &Db, config: &Config) -> anyhow::Result<()> {
    if !db::users::no_users(db).await? {
        return Ok(());
    }
    let (hash, generated) = match (&config.admin_hashed_password, &config.admin_password) {
        (Some(hash), _) => (hash.clone(), None),
        (None, Some(password)) => (hash_blocking(password.clone()).await?, None),
        (None, None) => {
            let password = credentials::random_secret(16);
            (hash_blocking(password.clone()).await?, Some(password))
        }
    };
    let created = db::users::ensure_initial_admin(
        db,
        &config.admin_user,
        &hash,
        config.admin_email.as_deref(),
    )
    .await?;
    if created {
        tracing::info!(user = %config.admin_user, "created the initial admin user");
        if let Some(password) = generated {
            // Printed once, on stdout, for the person starting the server.
            println!(
                "taskqueue: initial admin user '{}' created with password: {password}",
                config.admin_user
            );
        }
    }
    Ok(())
}

async fn hash_blocking(password: String) -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(move || credentials::hash_password(&password)).await??)
}

/// Refuses to start a replica whose `--assign-shards` differs from the cluster's: the value the
/// first replica stored in the database (a task keeps the shard it was stored in; a replica that
/// counts shards differently would leave tasks no one claims, or scan shards no one fills).
pub async fn check_cluster_settings(db: &Db, config: &Config) -> anyhow::Result<()> {
    let mine = config.assign_shards.to_string();
    let stored = db::cluster_settings::get_or_store(db, db::cluster_settings::ASSIGN_SHARDS, &mine)
        .await
        .context("cannot read or store the cluster's assign_shards")?;
    anyhow::ensure!(
        stored == mine,
        "--assign-shards {mine} disagrees with {stored} stored in the database: every replica \
         must use the same value; start this replica with --assign-shards {stored} (the cluster's \
         first replica fixed it)"
    );
    Ok(())
}

/// The key of session tokens: `jwt_secret` when configured, else the cluster's generated key,
/// created in the database by the first replica that needs it and read back by every other.
pub async fn jwt_key(db: &Db, config: &Config) -> anyhow::Result<JwtKey> {
    let secret = match &config.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => db::secrets::get_or_create(db, db::secrets::JWT_KEY, &JwtKey::generate_secret())
            .await
            .context("cannot read or store the generated JWT key")?,
    };
    JwtKey::new(&secret).context("invalid jwt_secret")
}

/// The worker token: configured, or the one kept in the data dir, or a new one written there (0600)
/// and printed once. Replicas of one cluster must share it: give them `--worker-token`.
fn resolve_worker_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.worker_token {
        return Ok(token.clone());
    }
    let path = config.worker_token_path();
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let token = credentials::random_secret(32);
    crate::secret_files::write_private(&path, token.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "taskqueue: generated worker token (kept in {}): {token}",
        path.display()
    );
    if config.database_url.is_some() {
        tracing::warn!(
            "no --worker-token given: replicas sharing this database must all be given the same one"
        );
    }
    Ok(token)
}
