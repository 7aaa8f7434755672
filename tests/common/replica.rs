//! Replicas started in this process on port 0 (`server::run` in a task of the test's runtime),
//! with authenticated clients, and the watch on server panics that fails the test owning them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use taskqueue::client::{self, Client, Target};
use taskqueue::config::Config;
use taskqueue::proto::task_queue_client::TaskQueueClient;
use taskqueue::server::{self, Listeners};
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{ADMIN_PASSWORD, ADMIN_USER, WORKER_TOKEN, http_get, postgres, tempdir, test_base};

/// A test configuration for `database_url`: known admin password and worker token, ports 0,
/// a private data dir.
pub fn test_config(database_url: &str) -> Config {
    let mut c = Config::for_database(database_url);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    // The web listener (gRPC-Web, REST, /ws), plain HTTP like the gRPC port of tests.
    c.web_listen = Some("127.0.0.1:0".parse().unwrap());
    c.admin_password = Some(ADMIN_PASSWORD.into());
    c.worker_token = Some(WORKER_TOKEN.into());
    c.data_dir = tempdir();
    c.shutdown_grace = Duration::from_secs(5);
    c.db_pool_size = 10;
    // Every replica runs the leader loops: keep the watchdog from deleting the idle workers of a
    // long test. Tests of the watchdog set the clocks they need.
    c.idle_timeout = Duration::from_secs(3600);
    c.new_worker_idle_timeout = Duration::from_secs(3600);
    // FetchList/FetchInfo reach this process' temporary folders (the data dir stays refused).
    c.fetch_roots = vec![test_base()];
    c
}

/// A replica running in this process.
pub struct Replica {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The web listener's address (`Config::web_listen`), when it has one.
    pub web_addr: Option<SocketAddr>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    admin_token: OnceCell<String>,
}

/// Panics raised in the crate's own code (a location under `src/`) in this test process: a
/// server task that panicked, whether or not the panic layer caught it.
static SERVER_PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts panics of server code (see [`SERVER_PANICS`]), keeping the default report.
fn watch_server_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().starts_with("src/"))
            {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Fails the calling test if server code panicked (a test already failing is left to report its
/// own failure).
pub fn assert_no_server_panic() {
    let panics = SERVER_PANICS.load(Ordering::SeqCst) + taskqueue::server::panics::caught();
    if panics > 0 && !std::thread::panicking() {
        panic!("the server panicked {panics} time(s) during this test process; see the log above");
    }
}

/// Starts a replica with `config` (its listen addresses are bound here) and waits until it serves.
pub async fn spawn_replica(config: Config) -> Replica {
    watch_server_panics();
    let grpc = TcpListener::bind(config.listen).await.unwrap();
    let metrics = match config.metrics_listen {
        Some(a) => Some(TcpListener::bind(a).await.unwrap()),
        None => None,
    };
    let web = match config.web_listen {
        Some(a) => Some(TcpListener::bind(a).await.unwrap()),
        None => None,
    };
    let addr = grpc.local_addr().unwrap();
    let metrics_addr = metrics.as_ref().map(|m| m.local_addr().unwrap());
    let web_addr = web.as_ref().map(|w| w.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run(
        config.clone(),
        Listeners { grpc, metrics, web },
        async move {
            let _ = rx.await;
        },
    ));
    let replica = Replica {
        addr,
        metrics_addr,
        web_addr,
        config,
        shutdown: Some(tx),
        handle: Some(handle),
        admin_token: OnceCell::new(),
    };
    replica.wait_serving().await;
    replica
}

/// A fresh database and one replica on it.
pub async fn replica() -> Replica {
    let url = postgres().await.fresh_db().await;
    spawn_replica(test_config(&url)).await
}

impl Replica {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn database_url(&self) -> &str {
        self.config.database_url.as_deref().unwrap()
    }

    pub fn channel(&self) -> Channel {
        Target::new(self.url()).channel().unwrap()
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel());
            let ok = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "taskqueue.TaskQueue".into(),
                })
                .await
                .map(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(h) = &self.handle
                && h.is_finished()
            {
                panic!("replica exited before serving");
            }
            assert!(
                Instant::now() < deadline,
                "replica did not start serving within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client with no token.
    pub fn anonymous(&self) -> TaskQueueClient<Channel> {
        TaskQueueClient::new(self.channel())
    }

    /// A client with `token`.
    pub fn with_token(&self, token: &str) -> Client {
        client::with_token(self.channel(), Some(token)).unwrap()
    }

    /// A client authenticated with the worker token.
    pub fn worker(&self) -> Client {
        self.with_token(WORKER_TOKEN)
    }

    /// A client logged in as the initial admin.
    pub async fn admin(&self) -> Client {
        let token = self
            .admin_token
            .get_or_init(|| async { self.login(ADMIN_USER, ADMIN_PASSWORD).await })
            .await;
        self.with_token(token)
    }

    /// Logs in and returns the session token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        self.anonymous()
            .login(taskqueue::proto::LoginRequest {
                username: user.into(),
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Creates a non-admin user and returns a client logged in as them.
    pub async fn plain_user(&self, name: &str) -> Client {
        self.admin()
            .await
            .create_user(taskqueue::proto::CreateUserRequest {
                username: name.into(),
                password: "user-secret".into(),
                email: format!("{name}@example.org"),
                is_admin: false,
            })
            .await
            .unwrap();
        let token = self.login(name, "user-secret").await;
        self.with_token(&token)
    }

    /// The replica's /metrics text.
    pub async fn metrics(&self) -> String {
        let addr = self.metrics_addr.expect("metrics enabled");
        http_get(addr, "/metrics").await
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        let result = self.handle.take().unwrap().await.unwrap();
        assert_no_server_panic();
        result
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        assert_no_server_panic();
    }
}
