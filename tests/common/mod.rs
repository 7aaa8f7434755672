//! Test harness: one private PostgreSQL per test binary (started on first use, stopped when the
//! process exits), a fresh database per test cloned from a migrated template, etcd processes on free
//! loopback ports, and replicas started in-process on port 0 with authenticated clients. A panic
//! of server code (anything under `src/`) while a replica runs fails the test that owns the replica
//! when the replica stops or is dropped.
#![allow(dead_code)]

pub mod leader;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use taskqueue::client::{self, Client, Target};
use taskqueue::config::Config;
use taskqueue::db::embedded::{EmbeddedPostgres, Options};
use taskqueue::proto::task_queue_client::TaskQueueClient;
use taskqueue::server::{self, Listeners};
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const WORKER_TOKEN: &str = "worker-token-for-tests";
const TEMPLATE_DB: &str = "tq_template";

/// The shared PostgreSQL of this test process.
pub struct TestPostgres {
    pub pg: EmbeddedPostgres,
}

static PG: OnceCell<TestPostgres> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The process' PostgreSQL, started (with a migrated template database) on first use.
pub async fn postgres() -> &'static TestPostgres {
    PG.get_or_init(|| async {
        init_tracing();
        sweep_stale_dirs();
        let dir = std::env::temp_dir().join(format!("taskqueue-test-{}", std::process::id()));
        // Only the cluster's own folder: `tempdir()` folders of this process (an etcd started
        // before the first database) live beside it.
        let _ = std::fs::remove_dir_all(dir.join("pg"));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let mut options = Options::new(dir.join("pg"));
        options.durable = false;
        options.max_connections = 500;
        let pg = EmbeddedPostgres::start(options)
            .await
            .expect("start test PostgreSQL");
        pg.ensure_database(TEMPLATE_DB)
            .await
            .expect("create template database");
        let db = taskqueue::db::Db::connect(&pg.url(TEMPLATE_DB), 2).unwrap();
        taskqueue::db::migrate::migrate(&db)
            .await
            .expect("migrate template");
        db.close();
        drop(db);
        TestPostgres { pg }
    })
    .await
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes the folders of earlier test processes that are gone.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("taskqueue-test-")
            .and_then(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0 {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

pub fn init_tracing() {
    taskqueue::telemetry::init_tracing(taskqueue::telemetry::LogFormat::Text, "warn");
}

impl TestPostgres {
    /// A new database cloned from the migrated template; returns its connection string.
    pub async fn fresh_db(&self) -> String {
        let name = self.create_db(Some(TEMPLATE_DB)).await;
        self.pg.url(&name)
    }

    /// A new empty database (nothing migrated).
    pub async fn empty_db(&self) -> String {
        let name = self.create_db(None).await;
        self.pg.url(&name)
    }

    async fn create_db(&self, template: Option<&str>) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        let (client, conn) = self
            .pg
            .config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        // The template may still be in use for a moment after the migration pool closed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("being accessed") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("create database: {e}"),
            }
        }
        drop(client);
        let _ = task.await;
        name
    }

    /// A direct connection to a database, for assertions on stored rows.
    pub async fn connect(&self, url: &str) -> tokio_postgres::Client {
        let (client, conn) = url
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

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

/// This test process' temporary folder: every `tempdir()` is below it.
pub fn test_base() -> PathBuf {
    std::env::temp_dir().join(format!("taskqueue-test-{}", std::process::id()))
}

/// A fresh temporary folder, removed with the process' temp folder sweep.
pub fn tempdir() -> PathBuf {
    let base = test_base().join("dirs");
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join(format!("d{}", DB_COUNTER.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

    /// Stops the replica abruptly (its task is aborted: no drain, no resign).
    pub fn kill(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
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

/// A minimal HTTP/1.1 GET on loopback (for /metrics).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

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

/// A free loopback port for a child process we start right after.
///
/// Picked below the kernel's ephemeral range (32768–60999 on Linux): a port asked from the kernel
/// with `bind(0)` is released before the child binds it, and in that window any outgoing
/// connection (to etcd, to a replica) may be given the same port as its local end — which made
/// "Address already in use" flakes. Below the range only other listeners compete, and those are
/// ours: a per-process cursor (seeded by the pid, so concurrent test binaries start apart) never
/// hands out the same port twice, and a bind check skips ports someone holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000; // 10_000..32_000
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + CURSOR.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// An etcd process on free loopback ports, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempdir();
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
        };
        etcd.spawn();
        etcd
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Waits until etcd answers.
    pub async fn wait_ready(&self) {
        let endpoint = self.endpoint();
        wait_until(Duration::from_secs(30), "etcd to answer", || {
            let endpoint = endpoint.clone();
            async move {
                match etcd_client::Client::connect([endpoint], None).await {
                    Ok(mut c) => c.status().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills etcd (its data stays), to test running without it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_binary() -> PathBuf {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "etcd".into()
}

/// A task request with defaults (shell executor friendly): `command` in container `alpine`.
pub fn task(command: &str) -> taskqueue::proto::TaskRequest {
    taskqueue::proto::TaskRequest {
        command: command.into(),
        container: "alpine".into(),
        ..Default::default()
    }
}

/// Creates a workflow and one step in it; returns (workflow_id, step_id).
pub async fn workflow_with_step(client: &mut Client, workflow: &str, step: &str) -> (i32, i32) {
    use taskqueue::proto as pb;
    let wf = client
        .create_workflow(pb::WorkflowRequest {
            name: workflow.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let step = client
        .create_step(pb::StepRequest {
            name: step.into(),
            workflow_id: Some(wf),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    (wf, step)
}

/// Registers a worker and, when `step` is given, attaches it to that step.
pub async fn register_worker(
    client: &mut Client,
    name: &str,
    concurrency: i32,
    prefetch: i32,
    step: Option<i32>,
) -> i32 {
    use taskqueue::proto as pb;
    let id = client
        .register_worker(pb::WorkerInfo {
            name: name.into(),
            concurrency: Some(concurrency),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    if step.is_some() || prefetch != 0 {
        client
            .update_worker(pb::WorkerUpdateRequest {
                worker_id: id,
                step_id: step,
                prefetch: Some(prefetch),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    id
}

/// One ping without stats.
pub async fn ping(client: &mut Client, worker_id: i32) -> taskqueue::proto::TaskListAndOther {
    client
        .ping_and_take_new_tasks(taskqueue::proto::PingAndGetNewTasksRequest {
            worker_id,
            stats: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Sets a task's status, panicking on error.
pub async fn set_status(client: &mut Client, task_id: i32, status: &str) {
    client
        .update_task_status(taskqueue::proto::TaskStatusUpdate {
            task_id,
            new_status: status.into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap();
}

/// The status of a task as ListTasks shows it (hidden tasks included).
pub async fn status_of(client: &mut Client, task_id: i32) -> String {
    let tasks = client
        .list_tasks(taskqueue::proto::ListTasksRequest {
            show_hidden: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    tasks
        .into_iter()
        .find(|t| t.task_id == task_id)
        .map(|t| t.status)
        .unwrap_or_default()
}

/// A replica running as a child process of the `taskqueue` binary, for tests that kill, freeze
/// or signal a whole process (SIGKILL, SIGSTOP, SIGTERM). Its log goes to `log`; killed on drop.
pub struct ChildReplica {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl ChildReplica {
    /// Starts `taskqueue serve` on free loopback ports against `database_url`, with the test admin
    /// password and worker token, plus `extra` flags (e.g. `--etcd-endpoints`).
    pub fn spawn(name: &str, database_url: &str, extra: &[String]) -> ChildReplica {
        let port = free_port();
        let metrics_port = free_port();
        let dir = tempdir();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskqueue"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "TASKQUEUE_LOG",
                "info,taskqueue=debug,h2=warn,tower=warn,hyper=warn",
            )
            .arg("serve")
            .args(["--database-url", database_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--worker-token", WORKER_TOKEN])
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(["--replica-name", name])
            .args(["--shutdown-grace", "5s"])
            .args(["--db-pool-size", "5", "--batch-loops", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("start the taskqueue binary");
        ChildReplica {
            child: Some(child),
            name: name.to_string(),
            port,
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn channel(&self) -> Channel {
        Target::new(self.url()).channel().unwrap()
    }

    /// A client authenticated with the worker token.
    pub fn worker(&self) -> Client {
        client::with_token(self.channel(), Some(WORKER_TOKEN)).unwrap()
    }

    /// Waits until the replica reports SERVING on its health service.
    pub async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel());
            let check = health.check(tonic_health::pb::HealthCheckRequest {
                service: "taskqueue.TaskQueue".into(),
            });
            let serving = tokio::time::timeout(Duration::from_secs(2), check)
                .await
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                });
            if serving {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "replica {} exited ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "replica {} did not serve within 60s:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replica's /metrics text, or `None` if it does not answer within `timeout` (frozen,
    /// dead).
    pub async fn scrape(&self, timeout: Duration) -> Option<String> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.metrics_port).parse().unwrap();
        tokio::time::timeout(timeout, try_http_get(addr, "/metrics"))
            .await
            .ok()
            .flatten()
    }

    /// The value of an unlabelled metric (e.g. `taskqueue_leader`), if the replica answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.scrape(Duration::from_millis(500)).await?;
        metric_value(&text, name)
    }

    /// True when the replica answers and reports `taskqueue_leader 1`.
    pub async fn is_leader(&self) -> bool {
        self.metric("taskqueue_leader").await == Some(1.0)
    }

    /// Sends `signal` (libc::SIGSTOP, SIGCONT, SIGTERM …) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most `timeout`) for the process to exit; returns its exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be resumed to die cleanly.
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Like `http_get`, but `None` when the connection fails.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Some(
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(text),
    )
}

/// The recorded leadership term of a database: (epoch, holder), if any leader took office.
pub async fn office(database_url: &str) -> Option<(i64, String)> {
    let client = postgres().await.connect(database_url).await;
    client
        .query_opt("SELECT epoch, holder FROM cluster_leader WHERE id = 1", &[])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Indexes of the replicas that answer and report `taskqueue_leader 1`.
pub async fn leaders(replicas: &[ChildReplica]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if r.is_running() && r.is_leader().await {
            out.push(i);
        }
    }
    out
}

/// Waits until exactly one replica reports itself leader and the database records it as the
/// holder; returns its index and epoch.
pub async fn wait_one_leader(
    database_url: &str,
    replicas: &[ChildReplica],
    timeout: Duration,
) -> (usize, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = leaders(replicas).await;
        if let ([i], Some((epoch, holder))) = (found.as_slice(), office(database_url).await)
            && holder == replicas[*i].name
        {
            return (*i, epoch);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.name, r.log_text()))
                .collect();
            panic!(
                "no single leader after {timeout:?}: leaders {found:?}, office {:?}\n{}",
                office(database_url).await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
