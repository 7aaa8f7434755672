//! Server configuration: flags and `TASKQUEUE_*` environment variables (clap), then an optional YAML
//! file whose sections mirror the original's `scitq.yaml` (`scitq:`, `providers:`, `rclone:`), then
//! the documented defaults below. Names are fixed (docs/architecture.md#configuration). `Config` is
//! the validated result. An option is declared once, in `options!` (doc, flag, variable, YAML
//! key); it then takes a `Config` field, one `layer!` line in `Config::merge` and, when it has
//! one, a `defaults` const.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Defaults, each with the reason it has that value.
pub mod defaults {
    use std::time::Duration;
    /// Local only: a server reachable from the network is a choice made with `--listen`.
    pub const LISTEN: &str = "127.0.0.1:50051";
    /// Prometheus scrapes `/metrics` here.
    pub const METRICS_LISTEN: &str = "127.0.0.1:9090";
    pub const DATA_DIR: &str = "./taskqueue-data";
    pub const ADMIN_USER: &str = "admin";
    /// 16 shards keep 3 replicas × hundreds of workers from queueing on one pending-queue head.
    pub const ASSIGN_SHARDS: u16 = 16;
    /// etcd lease TTL: a dead leader is replaced within about this long.
    pub const LEADER_LEASE_TTL: Duration = Duration::from_secs(10);
    /// The original's watchdog timeouts (docs/architecture.md#background-loops).
    pub const OFFLINE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const NEW_WORKER_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
    pub const LOST_TIMEOUT: Duration = Duration::from_secs(300);
    /// The original's warm-worker extension of the idle timeout (task_download_timeout).
    pub const TASK_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
    /// Watchdog cadence: an offline worker is noticed within offline_timeout + this
    /// (docs/architecture.md#background-loops).
    pub const WATCHDOG_INTERVAL: Duration = Duration::from_secs(5);
    /// Dependency sweep cadence: how soon the dependents of a task that failed for good fail too
    /// (success promotes dependents at once, on the request path; the sweep is the safety net).
    /// A pass between full ones is an index probe (~5 ms with 100k waiting tasks).
    pub const DEPENDENCY_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
    /// Session tokens live as long as the original's (365 days): scripts keep them in SCITQ_TOKEN.
    pub const SESSION_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Connections per replica; Postgres' default max_connections (100) fits three replicas.
    pub const DB_POOL_SIZE: usize = 30;
    /// How long a graceful shutdown may take before in-flight work is abandoned.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
    /// The original's recruiter cadence.
    pub const RECRUITER_INTERVAL: Duration = Duration::from_secs(5);
    /// A running provider job's lease, renewed every third of it: a job whose replica died is
    /// taken over by the leader within about this long.
    pub const JOB_LEASE: Duration = Duration::from_secs(60);
    /// The original's limit on one provider call (creating a VM can take minutes).
    pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);
    /// The original's template script timeout (grpc_dsl_timeout).
    pub const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(1800);
    /// Template scripts are the original's Python DSL scripts.
    pub const TEMPLATE_INTERPRETER: &str = "python3";
    /// Prefix of server-created worker names (`<server_name>worker<id>`).
    pub const SERVER_NAME: &str = "taskqueue";
    /// Log follow streams (StreamTaskLogs*) one replica serves at once: each costs a few tens of KiB
    /// (a 64 KiB read page at most, plus transport buffers) and no database connection, so 20,000
    /// stay under ~1 GiB even when every client stalls mid-replay.
    pub const MAX_LOG_FOLLOWERS: usize = 20_000;
    /// The original's gRPC message limit (50 MiB): large submissions and log chunks fit.
    pub const MAX_MESSAGE_BYTES: usize = 50 << 20;
    /// Log bytes stored per task (1 GiB): a runaway task or a hostile stream cannot fill the
    /// database; past it one "truncated" line is stored and the rest dropped.
    pub const MAX_LOG_BYTES_PER_TASK: u64 = 1 << 30;
    /// Log follow streams one user holds at once on a replica: a web UI with many tabs open stays
    /// far below it, one user cannot take every follower slot.
    pub const MAX_LOG_FOLLOWERS_PER_USER: usize = 100;
    /// HTTP/2 streams one connection may open at once: far above what a client multiplexes
    /// (a worker uses a handful), low enough that one connection cannot pin unbounded state.
    pub const MAX_CONCURRENT_STREAMS: u32 = 10_240;
    /// The `local` provider runs workers as processes of the leader's host: opt-in.
    pub const LOCAL_PROVIDER: bool = false;
    /// Template scripts are other people's code: a server running as root runs them as this
    /// unprivileged user (created with `useradd --system` when missing), never as root.
    pub const SCRIPT_USER: &str = "taskqueue-script";
    /// No query of a request holds the database longer than this; a real request takes
    /// milliseconds, a large listing a few seconds.
    pub const STATEMENT_TIMEOUT: Duration = crate::db::DEFAULT_STATEMENT_TIMEOUT;
    /// Password hashes waiting for a free hashing slot; more logins at once are refused with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    pub const LOGIN_QUEUE: usize = 64;
    /// Batch loops per replica and kind (docs/architecture.md#group-commit), each on its own
    /// pooled connection: one runs the batch, the other steps in only when that batch is slow.
    pub const BATCH_LOOPS: usize = 2;
    /// Most pings in one batch: large enough that one statement serves a burst of a big fleet,
    /// small enough that one batch stays a short transaction.
    pub const BATCH_MAX: usize = 256;
    /// Password hashes computed at once: one per core keeps the rest of the server responsive
    /// (each argon2id hash takes ~19 MiB and a core for tens of milliseconds).
    pub fn login_concurrency() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Declares every option of `taskqueue serve` once, in `--help` order: its `///` doc (the help
/// text), its flag and `TASKQUEUE_*` variable (`#[arg]`), and its key in the YAML file's `scitq:`
/// section, which is the field's name (`#[serde(alias)]` adds the original's names;
/// `#[yaml_as(T)]` reads the key as `T`, converted with `Into`). `flag name: T` is a flag only,
/// `yaml name: T` a key only. Out of the list come `ServeArgs` (clap) and `ScitqSection` (serde),
/// every value optional in both so that `Config::merge` can take the flag's, else the file's,
/// else the default (`layer!`).
macro_rules! options {
    (@munch [$($flags:tt)*] [$($keys:tt)*]) => {
        /// Flags of `taskqueue serve` (and `taskqueue migrate`). Every value is optional here so that the
        /// YAML file can fill what flags and environment leave unset; defaults are applied afterwards.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct ServeArgs { $($flags)* }

        /// `scitq:` keys: our names (docs/architecture.md#configuration, snake_case) with the
        /// original's names as aliases.
        #[derive(Debug, Default, Deserialize)]
        struct ScitqSection { $($keys)* }
    };
    (@munch [$($flags:tt)*] [$($keys:tt)*]
        $(#[doc = $doc:literal])* #[arg($($arg:tt)*)] flag $field:ident: $ty:ty, $($rest:tt)*) => {
        options!(@munch [$($flags)* $(#[doc = $doc])* #[arg($($arg)*)] pub $field: $ty,]
            [$($keys)*] $($rest)*);
    };
    (@munch [$($flags:tt)*] [$($keys:tt)*]
        $(#[doc = $doc:literal])* $(#[serde($($serde:tt)*)])* yaml $field:ident: $ty:ty,
        $($rest:tt)*) => {
        options!(@munch [$($flags)*]
            [$($keys)* $(#[doc = $doc])* #[serde(default, deserialize_with = "yaml_value")]
             $(#[serde($($serde)*)])* $field: Option<$ty>,]
            $($rest)*);
    };
    (@munch [$($flags:tt)*] [$($keys:tt)*]
        $(#[doc = $doc:literal])* #[arg($($arg:tt)*)] $(#[serde($($serde:tt)*)])*
        $(#[yaml_as($as:ty)])? $field:ident: $ty:ty, $($rest:tt)*) => {
        options!(@munch [$($flags)* $(#[doc = $doc])* #[arg($($arg)*)] pub $field: Option<$ty>,]
            [$($keys)* #[serde(default, deserialize_with = "yaml_value")]
             $(#[serde($($serde)*)])* $field: Option<yaml_type!($ty $(, $as)?)>,]
            $($rest)*);
    };
    ($($options:tt)*) => { options!(@munch [] [] $($options)*); };
}

/// The type a YAML key is read as: the option's, or the one its `#[yaml_as]` names.
macro_rules! yaml_type {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $as:ty) => {
        $as
    };
}

options! {
    /// YAML configuration file (sections `scitq:`, `providers:`, `rclone:` as in scitq.yaml).
    #[arg(long, env = "TASKQUEUE_CONFIG")]
    flag config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "TASKQUEUE_LISTEN")]
    listen: SocketAddr,
    /// The original's gRPC port: listen on all interfaces at this port.
    yaml port: u16,
    /// Prometheus /metrics listen address, or "off" [default: 127.0.0.1:9090].
    #[arg(long, env = "TASKQUEUE_METRICS_LISTEN")]
    metrics_listen: String,
    /// Postgres URL or key=value string; none → a private PostgreSQL under the data dir.
    #[arg(long, env = "TASKQUEUE_DATABASE_URL")]
    #[serde(alias = "db_url")]
    database_url: String,
    /// Data folder: private PostgreSQL, generated worker token, self-signed certificate
    /// [default: ./taskqueue-data].
    #[arg(long, env = "TASKQUEUE_DATA_DIR")]
    data_dir: PathBuf,
    /// etcd endpoints, comma-separated; none → leadership by a Postgres advisory lock.
    #[arg(long, env = "TASKQUEUE_ETCD_ENDPOINTS", value_delimiter = ',')]
    #[yaml_as(StringOrList)]
    etcd_endpoints: Vec<String>,
    /// Token of workers; none → random, stored in the data dir and printed at first start.
    #[arg(long, env = "TASKQUEUE_WORKER_TOKEN", hide_env_values = true)]
    worker_token: String,
    /// File holding the worker token (read at start, trailing newline removed), so that the secret
    /// stays off command lines; not together with --worker-token.
    #[arg(long, env = "TASKQUEUE_WORKER_TOKEN_FILE")]
    worker_token_file: PathBuf,
    /// Name of the admin created when the user table is empty [default: admin].
    #[arg(long, env = "TASKQUEUE_ADMIN_USER")]
    admin_user: String,
    /// Password of that admin; none → random, printed once.
    #[arg(long, env = "TASKQUEUE_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: String,
    /// File holding that password (read at start, trailing newline removed); not together with
    /// --admin-password.
    #[arg(long, env = "TASKQUEUE_ADMIN_PASSWORD_FILE")]
    admin_password_file: PathBuf,
    /// A bcrypt or argon2 hash for the initial admin (the original's key).
    yaml admin_hashed_password: String,
    /// The initial admin's email (the original's key).
    yaml admin_email: String,
    /// TLS certificate (PEM) of the gRPC port.
    #[arg(long, env = "TASKQUEUE_TLS_CERT", requires = "tls_key")]
    #[serde(alias = "certificate_pem")]
    tls_cert: PathBuf,
    /// TLS private key (PEM) of the gRPC port.
    #[arg(long, env = "TASKQUEUE_TLS_KEY", requires = "tls_cert")]
    #[serde(alias = "certificate_key")]
    tls_key: PathBuf,
    /// Serve TLS with a certificate generated at first start (data dir tls/cert.pem, tls/key.pem).
    /// The default when the YAML file is in the original's format (a `scitq:` section) and names
    /// no certificate.
    #[arg(long, env = "TASKQUEUE_TLS_SELF_SIGNED", conflicts_with = "tls_cert",
          num_args = 0..=1, default_missing_value = "true")]
    tls_self_signed: bool,
    /// Serve plaintext even though the YAML file is in the original's format (a `scitq:` section),
    /// which otherwise means TLS (TLS terminated by a load balancer, local use).
    #[arg(long, env = "TASKQUEUE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_self_signed"],
          num_args = 0..=1, default_missing_value = "true")]
    plaintext: bool,
    /// Accept log streams without a token (legacy workers that send no header on streams).
    #[arg(long, env = "TASKQUEUE_ALLOW_UNAUTHENTICATED_LOG_STREAMS")]
    allow_unauthenticated_log_streams: bool,
    /// Shards of the pending-task queue, the same on every replica: the cluster's first replica
    /// stores its value in the database, a replica started with another refuses to start
    /// [default: 16].
    #[arg(long, env = "TASKQUEUE_ASSIGN_SHARDS")]
    assign_shards: u16,
    /// etcd leader lease TTL [default: 10s].
    #[arg(long, env = "TASKQUEUE_LEADER_LEASE_TTL", value_parser = humantime::parse_duration)]
    leader_lease_ttl: Duration,
    /// A worker without ping for this long goes offline [default: 30s].
    #[arg(long, env = "TASKQUEUE_OFFLINE_TIMEOUT", value_parser = humantime::parse_duration)]
    offline_timeout: Duration,
    /// An idle non-permanent worker is deleted after this long [default: 300s].
    #[arg(long, env = "TASKQUEUE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A new worker that never ran a task is deleted after this long [default: 900s].
    #[arg(long, env = "TASKQUEUE_NEW_WORKER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    new_worker_idle_timeout: Duration,
    /// An offline non-permanent worker is deleted after this long [default: 300s].
    #[arg(long, env = "TASKQUEUE_LOST_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(alias = "considered_lost_timeout")]
    lost_timeout: Duration,
    /// Extra idle time granted to a worker still holding assigned or downloading tasks
    /// (at least this, or the longest download_timeout of those tasks) [default: 600s].
    #[arg(long, env = "TASKQUEUE_TASK_DOWNLOAD_TIMEOUT", value_parser = humantime::parse_duration)]
    task_download_timeout: Duration,
    /// How often the leader's watchdog checks worker liveness and idleness [default: 5s].
    #[arg(long, env = "TASKQUEUE_WATCHDOG_INTERVAL", value_parser = humantime::parse_duration)]
    watchdog_interval: Duration,
    /// How often the leader promotes or fails tasks waiting on prerequisites [default: 2s].
    #[arg(long, env = "TASKQUEUE_DEPENDENCY_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    dependency_sweep_interval: Duration,
    /// Lifetime of session tokens issued by Login [default: 365 days].
    #[arg(long, env = "TASKQUEUE_SESSION_TTL", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Postgres connections per replica [default: 30].
    #[arg(long, env = "TASKQUEUE_DB_POOL_SIZE")]
    #[serde(alias = "max_db_concurrency")]
    db_pool_size: usize,
    /// Deadline of a graceful shutdown [default: 15s].
    #[arg(long, env = "TASKQUEUE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Log follow streams (StreamTaskLogsOutput/Err) one replica serves at once; more are refused
    /// with RESOURCE_EXHAUSTED [default: 20000].
    #[arg(long, env = "TASKQUEUE_MAX_LOG_FOLLOWERS")]
    max_log_followers: usize,
    /// Prefix of server-created worker names [default: taskqueue].
    #[arg(long, env = "TASKQUEUE_SERVER_NAME")]
    server_name: String,
    /// Lease of a running provider job; a job whose replica died is taken over after it [default: 60s].
    #[arg(long, env = "TASKQUEUE_JOB_LEASE", value_parser = humantime::parse_duration)]
    job_lease: Duration,
    /// Limit on one provider call (create, delete, restart a machine) [default: 600s].
    #[arg(long, env = "TASKQUEUE_JOB_TIMEOUT", value_parser = humantime::parse_duration)]
    job_timeout: Duration,
    /// The leader's recruiter cadence [default: 5s].
    yaml recruiter_interval: Duration,
    /// Name this replica gives itself in leadership records and logs [default: host:pid].
    #[arg(long, env = "TASKQUEUE_REPLICA_NAME")]
    replica_name: String,
    /// Never campaign for leadership: this replica serves RPCs only and never runs the leader loops
    /// (watchdog, sweeps, provider jobs, recruiters) — e.g. replicas in a region far from the database.
    #[arg(long, env = "TASKQUEUE_NO_LEADER")]
    flag no_leader: bool,
    /// Limit on one template script run (RunTemplate blocks this long at most) [default: 1800s].
    #[arg(long, env = "TASKQUEUE_TEMPLATE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(alias = "grpc_dsl_timeout")]
    template_timeout: Duration,
    /// Program that runs template scripts (`<interpreter> <script> --metadata|--params|--values`);
    /// words after the first are passed before the script [default: python3, or the python of
    /// `scitq.script_venv`].
    #[arg(long, env = "TASKQUEUE_TEMPLATE_INTERPRETER")]
    template_interpreter: String,
    /// Python virtual environment of template scripts (the original's `script_venv`): its
    /// `bin/python` runs them; created at start with `python3 -m venv` when missing.
    #[arg(long, env = "TASKQUEUE_SCRIPT_VENV")]
    script_venv: PathBuf,
    /// What `pip install` puts into --script-venv at start (paths, wheels or package names,
    /// comma-separated), e.g. the operator's copy of the `scitq2` package.
    #[arg(long, env = "TASKQUEUE_SCRIPT_PACKAGES", value_delimiter = ',')]
    script_packages: Vec<String>,
    /// Unprivileged user that template scripts run as (the server must run as root for this)
    /// [default: the server's own user].
    #[arg(long, env = "TASKQUEUE_TEMPLATE_RUN_AS")]
    #[serde(alias = "script_runner_user")]
    template_run_as: String,
    /// Registry credentials (GetDockerCredentials); the original's single-registry keys too.
    yaml docker_credentials: Vec<DockerCredential>,
    yaml docker_registry: String,
    yaml docker_authentication: String,
    /// Log bytes stored per task; past it one "truncated" line is stored and further lines are
    /// dropped [default: 1073741824].
    #[arg(long, env = "TASKQUEUE_MAX_LOG_BYTES_PER_TASK")]
    max_log_bytes_per_task: u64,
    /// Log follow streams (StreamTaskLogsOutput/Err) one user holds at once on a replica; more
    /// are refused with RESOURCE_EXHAUSTED [default: 100].
    #[arg(long, env = "TASKQUEUE_MAX_LOG_FOLLOWERS_PER_USER")]
    max_log_followers_per_user: usize,
    /// HTTP/2 streams one client connection may have open at once [default: 10240].
    #[arg(long, env = "TASKQUEUE_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: u32,
    /// Offer the `local` provider: CreateWorker on it starts worker processes on the leader's
    /// host, so it is off unless asked for [default: false, true when the file configures
    /// `providers.local`].
    #[arg(long, env = "TASKQUEUE_LOCAL_PROVIDER", num_args = 0..=1, default_missing_value = "true")]
    local_provider: bool,
    /// Unprivileged user that template scripts run as when the server runs as root (created with
    /// `useradd --system` when missing; a script never runs as root). A server not running as
    /// root runs scripts as its own user [default: taskqueue-script, or --template-run-as].
    #[arg(long, env = "TASKQUEUE_SCRIPT_USER")]
    script_user: String,
    /// Local folders FetchList/FetchInfo may reach (comma-separated), besides the providers'
    /// `local_workspaces`; links are resolved first, the data dir is never reachable
    /// [default: none].
    #[arg(long, env = "TASKQUEUE_FETCH_ROOTS", value_delimiter = ',')]
    fetch_roots: Vec<PathBuf>,
    /// Web hosts FetchList/FetchInfo may reach (comma-separated names or IP literals, `*.domain`
    /// for the names below a domain) [default: none].
    #[arg(long, env = "TASKQUEUE_FETCH_HTTP_HOSTS", value_delimiter = ',')]
    fetch_http_hosts: Vec<String>,
    /// Let those hosts be internal addresses (loopback, private, link-local such as
    /// 169.254.169.254) [default: false].
    #[arg(long, env = "TASKQUEUE_FETCH_ALLOW_PRIVATE", num_args = 0..=1,
          default_missing_value = "true")]
    fetch_allow_private: bool,
    /// Host folders below which a non-admin task's `-v`/`--mount` bind sources may be
    /// (comma-separated) [default: none].
    #[arg(long, env = "TASKQUEUE_DOCKER_VOLUME_ROOTS", value_delimiter = ',')]
    docker_volume_roots: Vec<PathBuf>,
    /// Container options a non-admin task may use besides the built-in allow-list
    /// (comma-separated, e.g. `--docker-allowed-options=--device,--runtime`) [default: none].
    #[arg(
        long,
        env = "TASKQUEUE_DOCKER_ALLOWED_OPTIONS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    docker_allowed_options: Vec<String>,
    /// Longest a database statement of a request may run before Postgres stops it; 0 = no limit.
    /// The leader's sweeps have their own (5 min) [default: 30s].
    #[arg(long, env = "TASKQUEUE_STATEMENT_TIMEOUT", value_parser = humantime::parse_duration)]
    statement_timeout: Duration,
    /// Password hashes (Login, ChangePassword) computed at once [default: the core count].
    #[arg(long, env = "TASKQUEUE_LOGIN_CONCURRENCY")]
    login_concurrency: usize,
    /// Logins waiting for a hashing slot; beyond, RESOURCE_EXHAUSTED [default: 64].
    #[arg(long, env = "TASKQUEUE_LOGIN_QUEUE")]
    login_queue: usize,
    /// Port of the web listener (gRPC-Web, REST helpers, /ws, the UI's files), on the --listen
    /// host and with its TLS; off when unset.
    #[arg(long, env = "TASKQUEUE_HTTPS_PORT")]
    https_port: u16,
    /// The original's switch of the web port: true turns a configured `https_port` off.
    yaml disable_https: bool,
    /// Folder of the built web UI, served at the web listener's root [default: none].
    #[arg(long, env = "TASKQUEUE_UI_DIR")]
    ui_dir: PathBuf,
    /// Do not serve gRPC-Web on the web listener.
    #[arg(long, env = "TASKQUEUE_DISABLE_GRPCWEB", num_args = 0..=1,
          default_missing_value = "true")]
    disable_grpcweb: bool,
    /// The server's public name: URLs given to workers, the TLS certificate, the UI origin.
    #[arg(long, env = "TASKQUEUE_SERVER_FQDN")]
    server_fqdn: String,
    /// Key signing session tokens (HS256); none → generated once and kept in the database.
    #[arg(long, env = "TASKQUEUE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// File holding that key; not together with --jwt-secret.
    #[arg(long, env = "TASKQUEUE_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    /// Origin allowed by CORS on the web listener [default: https://<server fqdn>:5173].
    #[arg(long, env = "TASKQUEUE_UI_ORIGIN")]
    ui_origin: String,
    /// Token of `GET /scitq-client?token=…` (the worker binary for cloud-init); none → not served.
    #[arg(long, env = "TASKQUEUE_CLIENT_DOWNLOAD_TOKEN", hide_env_values = true)]
    client_download_token: String,
    /// File holding that token; not together with --client-download-token.
    #[arg(long, env = "TASKQUEUE_CLIENT_DOWNLOAD_TOKEN_FILE")]
    client_download_token_file: PathBuf,
    /// The file served at /scitq-client [default: this taskqueue binary].
    #[arg(long, env = "TASKQUEUE_CLIENT_BINARY")]
    #[serde(alias = "client_binary_path")]
    client_binary: PathBuf,
    /// Batch loops (group commit) of each kind — pings, status updates, submissions — each holding
    /// one pooled connection; 0 = every request on its own [default: 2].
    #[arg(long, env = "TASKQUEUE_BATCH_LOOPS")]
    batch_loops: usize,
    /// Most requests served by one batch [default: 256].
    #[arg(long, env = "TASKQUEUE_BATCH_MAX")]
    batch_max: usize,
}

/// How the gRPC port is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext: TLS is terminated by a load balancer, or tests and local development.
    Plain,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated at first start into `<data_dir>/tls/`.
    SelfSigned,
}

/// The virtual environment of template scripts, made at start when missing (`scitq.script_venv`,
/// `scitq.script_packages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptVenv {
    pub dir: PathBuf,
    /// `pip install` arguments: paths, wheels or package names.
    pub packages: Vec<String>,
}

/// One docker registry credential (`scitq.docker_credentials`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DockerCredential {
    #[serde(default)]
    pub registry: String,
    #[serde(default)]
    pub secret: String,
}

/// Settings common to every provider of the `providers:` section (as in the original's scitq.yaml);
/// the provider-specific keys stay in `extra` for the provider implementation to read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderConfig {
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default, alias = "region")]
    pub default_region: Option<String>,
    #[serde(default)]
    pub quotas: BTreeMap<String, Quota>,
    #[serde(default)]
    pub local_workspaces: BTreeMap<String, String>,
    #[serde(default)]
    pub update_periodicity: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_yaml::Value>,
}

impl ProviderConfig {
    /// Regions as the original derives them: the list, else the quota keys, else the default region.
    pub fn effective_regions(&self) -> Vec<String> {
        if !self.regions.is_empty() {
            return self.regions.clone();
        }
        if !self.quotas.is_empty() {
            return self.quotas.keys().cloned().collect();
        }
        self.default_region.iter().cloned().collect()
    }
}

/// A provider/region quota: maximum vCPUs and, optionally, memory in GB.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub struct Quota {
    #[serde(default)]
    pub cpu: i64,
    #[serde(default)]
    pub mem: Option<f64>,
}

/// `providers.<class>.<config_name>`.
pub type Providers = BTreeMap<String, BTreeMap<String, ProviderConfig>>;
/// `rclone.<remote>.<option>` → value, served verbatim by GetRcloneConfig.
pub type RcloneRemotes = BTreeMap<String, BTreeMap<String, String>>;

/// The validated configuration of a replica.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub etcd_endpoints: Vec<String>,
    pub worker_token: Option<String>,
    pub admin_user: String,
    pub admin_password: Option<String>,
    /// A bcrypt or argon2 hash for the initial admin (`scitq.admin_hashed_password`).
    pub admin_hashed_password: Option<String>,
    pub admin_email: Option<String>,
    pub tls: TlsMode,
    pub allow_unauthenticated_log_streams: bool,
    pub assign_shards: u16,
    pub leader_lease_ttl: Duration,
    pub offline_timeout: Duration,
    pub idle_timeout: Duration,
    pub new_worker_idle_timeout: Duration,
    pub lost_timeout: Duration,
    pub task_download_timeout: Duration,
    pub watchdog_interval: Duration,
    pub dependency_sweep_interval: Duration,
    pub session_ttl: Duration,
    pub db_pool_size: usize,
    pub shutdown_grace: Duration,
    pub max_log_followers: usize,
    pub server_name: String,
    pub server_fqdn: Option<String>,
    pub replica_name: String,
    /// False with `--no-leader`: the replica never campaigns.
    pub leader_eligible: bool,
    pub recruiter_interval: Duration,
    pub job_lease: Duration,
    pub job_timeout: Duration,
    pub template_timeout: Duration,
    pub template_interpreter: String,
    pub template_run_as: Option<String>,
    /// Set when template scripts run with the venv's python (not an explicit interpreter).
    pub script_venv: Option<ScriptVenv>,
    pub docker_credentials: Vec<DockerCredential>,
    pub providers: Providers,
    pub rclone: RcloneRemotes,
    pub max_log_bytes_per_task: u64,
    pub max_log_followers_per_user: usize,
    pub max_concurrent_streams: u32,
    /// `--local-provider`: the `local` provider is offered (listed, usable by CreateWorker).
    pub local_provider: bool,
    /// `--script-user`; `None` means `template_run_as`, else `defaults::SCRIPT_USER`.
    pub script_user: Option<String>,
    /// Files secrets were read from (the YAML file, worker token and admin password files):
    /// hidden from template scripts.
    pub secret_files: Vec<PathBuf>,
    /// Local folders FetchList/FetchInfo may reach (with the providers' `local_workspaces`).
    pub fetch_roots: Vec<PathBuf>,
    /// Web hosts FetchList/FetchInfo may reach.
    pub fetch_http_hosts: Vec<String>,
    pub fetch_allow_private: bool,
    /// Bind-mount roots of non-admin tasks' container options.
    pub docker_volume_roots: Vec<PathBuf>,
    /// Container options allowed beyond the built-in list (normalised: `--name` or `-n`).
    pub docker_allowed_options: Vec<String>,
    pub statement_timeout: Duration,
    pub login_concurrency: usize,
    pub login_queue: usize,
    /// The web listener (`--https-port` on the --listen host), or none.
    pub web_listen: Option<SocketAddr>,
    pub ui_dir: Option<PathBuf>,
    pub disable_grpcweb: bool,
    /// The configured session-token key; none → the one kept in the database.
    pub jwt_secret: Option<String>,
    /// The CORS origin of the web listener.
    pub ui_origin: String,
    pub client_download_token: Option<String>,
    pub client_binary: Option<PathBuf>,
    pub batch_loops: usize,
    pub batch_max: usize,
}

/// The YAML file: the original's sections; unknown keys are ignored so an existing scitq.yaml loads.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    /// Present means the file is in the original's format: TLS unless told otherwise.
    scitq: Option<ScitqSection>,
    #[serde(default)]
    providers: Providers,
    #[serde(default)]
    rclone: BTreeMap<String, BTreeMap<String, serde_yaml::Value>>,
}

/// `etcd_endpoints` in YAML: a list, or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl From<StringOrList> for Vec<String> {
    fn from(value: StringOrList) -> Vec<String> {
        match value {
            StringOrList::One(one) => one.split(',').map(str::to_string).collect(),
            StringOrList::Many(many) => many,
        }
    }
}

/// How a YAML value becomes an option's value: as serde reads the type (`Raw = Self`), except
/// durations, which are a number of seconds (the original's form) or a humantime string ("30s").
trait FromYaml: Sized {
    type Raw: serde::de::DeserializeOwned;
    fn from_raw(raw: Self::Raw) -> Result<Self, String>;
}

macro_rules! from_yaml_as_serde {
    ($($ty:ty),*) => {$(
        impl FromYaml for $ty {
            type Raw = $ty;
            fn from_raw(raw: $ty) -> Result<$ty, String> {
                Ok(raw)
            }
        }
    )*};
}
from_yaml_as_serde! {
    bool, u16, u32, u64, usize, String, PathBuf, SocketAddr,
    Vec<String>, Vec<PathBuf>, Vec<DockerCredential>, StringOrList
}

/// A duration as the file writes it (named `Raw` in serde's messages, as it always was).
#[derive(Deserialize)]
#[serde(untagged, rename = "Raw")]
enum RawDuration {
    Secs(f64),
    Text(String),
}

impl FromYaml for Duration {
    type Raw = RawDuration;
    fn from_raw(raw: RawDuration) -> Result<Duration, String> {
        match raw {
            RawDuration::Secs(s) => {
                Duration::try_from_secs_f64(s).map_err(|_| format!("invalid duration {s}"))
            }
            RawDuration::Text(t) => {
                humantime::parse_duration(&t).map_err(|e| format!("invalid duration {t:?}: {e}"))
            }
        }
    }
}

/// Reads every `scitq:` key (`deserialize_with`): absent or null is `None`.
fn yaml_value<'de, D: serde::Deserializer<'de>, T: FromYaml>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T::Raw>::deserialize(d)?
        .map(T::from_raw)
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// The TLS mode one level of configuration (flags and environment, or the YAML file) asks for, if
/// it asks for one.
fn tls_choice(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: Option<bool>,
    plaintext: Option<bool>,
) -> anyhow::Result<Option<TlsMode>> {
    let plaintext = plaintext == Some(true);
    let chosen = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsMode::Files { cert, key }),
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!(
                "--tls-cert and --tls-key (certificate_pem, certificate_key) must be given together"
            )
        }
        (None, None) if self_signed == Some(true) => Some(TlsMode::SelfSigned),
        (None, None) => None,
    };
    match chosen {
        Some(_) if plaintext => {
            anyhow::bail!("plaintext cannot be combined with a TLS certificate or tls_self_signed")
        }
        Some(mode) => Ok(Some(mode)),
        None if plaintext => Ok(Some(TlsMode::Plain)),
        None => Ok(None),
    }
}

/// A secret given literally or as a file (read now, trailing newline removed). Flags and
/// environment win over the YAML file; within one of them, giving both is refused.
fn secret(
    what: &str,
    flags: (Option<String>, Option<&Path>),
    file: (Option<String>, Option<&Path>),
) -> anyhow::Result<Option<String>> {
    let flag_name = what.replace(' ', "-");
    let key_name = what.replace(' ', "_");
    let level = |(literal, path): (Option<String>, Option<&Path>),
                 literal_name: String,
                 file_name: String|
     -> anyhow::Result<Option<String>> {
        let literal = literal.filter(|l| !l.is_empty());
        match (literal, path) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give {literal_name} or {file_name}, not both")
            }
            (Some(literal), None) => Ok(Some(literal)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read {file_name} {}: {e}", path.display())
                })?;
                let value = text.trim_end_matches(['\n', '\r']);
                anyhow::ensure!(!value.is_empty(), "{file_name} {} is empty", path.display());
                Ok(Some(value.to_string()))
            }
            (None, None) => Ok(None),
        }
    };
    let from_flags = level(
        flags,
        format!("--{flag_name}"),
        format!("--{flag_name}-file"),
    )?;
    if from_flags.is_some() {
        return Ok(from_flags);
    }
    level(file, key_name.clone(), format!("{key_name}_file"))
}

/// Turns a YAML scalar into the string rclone expects (`true`, `42`, text).
fn yaml_scalar_to_string(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

impl ServeArgs {
    /// Merges flags/env, the YAML file and the defaults, and validates the result.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(self, file)
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
}

/// The value of one level of configuration (flags and environment) when it has one, else the
/// next level's (the YAML file's).
fn layered<T, Y: Into<T>>(flag: Option<T>, yaml: Option<Y>) -> Option<T> {
    flag.or_else(|| yaml.map(Into::into))
}

impl Config {
    fn merge(args: &ServeArgs, file: FileConfig) -> anyhow::Result<Config> {
        let original_format = file.scitq.is_some();
        let a = args.clone();
        let s = file.scitq.unwrap_or_default();
        // An option's value from flags and environment, else from the YAML file.
        macro_rules! layer {
            ($field:ident) => {
                layered(a.$field, s.$field)
            };
        }
        let listen = match (a.listen, s.listen, s.port) {
            (Some(addr), _, _) | (None, Some(addr), _) => addr,
            (None, None, Some(port)) => SocketAddr::from(([0, 0, 0, 0], port)),
            (None, None, None) => defaults::LISTEN.parse()?,
        };
        let metrics_raw =
            layer!(metrics_listen).unwrap_or_else(|| defaults::METRICS_LISTEN.to_string());
        let metrics_listen = match metrics_raw.trim() {
            "off" | "none" | "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|e| anyhow::anyhow!("invalid --metrics-listen {addr:?}: {e}"))?,
            ),
        };
        let flag_tls = tls_choice(a.tls_cert, a.tls_key, a.tls_self_signed, a.plaintext)?;
        let file_tls = tls_choice(
            s.tls_cert.filter(|p| !p.as_os_str().is_empty()),
            s.tls_key.filter(|p| !p.as_os_str().is_empty()),
            s.tls_self_signed,
            s.plaintext,
        )?;
        // The original serves TLS only, with its embedded self-signed certificate when
        // `certificate_pem`/`certificate_key` are empty, and its clients
        // speak TLS only: a file in its format means TLS, with our generated certificate.
        let tls = flag_tls.or(file_tls).unwrap_or(if original_format {
            TlsMode::SelfSigned
        } else {
            TlsMode::Plain
        });
        let server_fqdn = layer!(server_fqdn).filter(|f| !f.trim().is_empty());
        // The original's `https_port` defaults to 443; ours is off unless a port is given, and
        // `disable_https` turns a configured one off.
        let web_port = match a.https_port {
            Some(port) => Some(port),
            None if s.disable_https == Some(true) => None,
            None => s.https_port,
        };
        let web_listen = web_port.map(|port| SocketAddr::new(listen.ip(), port));
        let etcd_endpoints: Vec<String> = layer!(etcd_endpoints)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();

        let mut docker_credentials: Vec<DockerCredential> = s
            .docker_credentials
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.registry.is_empty() && !c.secret.is_empty())
            .collect();
        if docker_credentials.is_empty()
            && let (Some(registry), Some(secret)) = (s.docker_registry, s.docker_authentication)
            && !registry.is_empty()
            && !secret.is_empty()
        {
            docker_credentials.push(DockerCredential { registry, secret });
        }

        let mut rclone = RcloneRemotes::new();
        for (remote, options) in file.rclone {
            let mut out = BTreeMap::new();
            for (k, v) in options {
                let v = yaml_scalar_to_string(&v).ok_or_else(|| {
                    anyhow::anyhow!("rclone.{remote}.{k}: expected a scalar value")
                })?;
                out.insert(k, v);
            }
            rclone.insert(remote, out);
        }

        let script_packages = layer!(script_packages).unwrap_or_default();
        let (template_interpreter, script_venv) =
            match (layer!(template_interpreter), layer!(script_venv)) {
                (Some(interpreter), _) => (interpreter, None),
                (None, Some(dir)) => (
                    dir.join("bin/python").to_string_lossy().into_owned(),
                    Some(ScriptVenv {
                        dir,
                        packages: script_packages.clone(),
                    }),
                ),
                (None, None) => (defaults::TEMPLATE_INTERPRETER.into(), None),
            };
        anyhow::ensure!(
            script_packages.is_empty() || script_venv.is_some(),
            "script_packages are installed into script_venv: give --script-venv \
             (and no --template-interpreter)"
        );

        let secret_files: Vec<PathBuf> = [
            // The YAML file may hold the secrets inline (the original's scitq.yaml does).
            a.config.clone(),
            a.worker_token_file.clone(),
            s.worker_token_file.clone(),
            a.admin_password_file.clone(),
            s.admin_password_file.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let local_configured = file.providers.contains_key("local");
        let config = Config {
            listen,
            metrics_listen,
            database_url: layer!(database_url).filter(|u| !u.trim().is_empty()),
            data_dir: layer!(data_dir).unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            etcd_endpoints,
            worker_token: secret(
                "worker token",
                (a.worker_token, a.worker_token_file.as_deref()),
                (s.worker_token, s.worker_token_file.as_deref()),
            )?,
            admin_user: layer!(admin_user).unwrap_or_else(|| defaults::ADMIN_USER.into()),
            admin_password: secret(
                "admin password",
                (a.admin_password, a.admin_password_file.as_deref()),
                (s.admin_password, s.admin_password_file.as_deref()),
            )?,
            admin_hashed_password: s.admin_hashed_password.filter(|p| !p.is_empty()),
            admin_email: s.admin_email,
            tls,
            allow_unauthenticated_log_streams: layer!(allow_unauthenticated_log_streams)
                .unwrap_or(false),
            assign_shards: layer!(assign_shards).unwrap_or(defaults::ASSIGN_SHARDS),
            leader_lease_ttl: layer!(leader_lease_ttl).unwrap_or(defaults::LEADER_LEASE_TTL),
            offline_timeout: layer!(offline_timeout).unwrap_or(defaults::OFFLINE_TIMEOUT),
            idle_timeout: layer!(idle_timeout).unwrap_or(defaults::IDLE_TIMEOUT),
            new_worker_idle_timeout: layer!(new_worker_idle_timeout)
                .unwrap_or(defaults::NEW_WORKER_IDLE_TIMEOUT),
            lost_timeout: layer!(lost_timeout).unwrap_or(defaults::LOST_TIMEOUT),
            task_download_timeout: layer!(task_download_timeout)
                .unwrap_or(defaults::TASK_DOWNLOAD_TIMEOUT),
            watchdog_interval: layer!(watchdog_interval).unwrap_or(defaults::WATCHDOG_INTERVAL),
            dependency_sweep_interval: layer!(dependency_sweep_interval)
                .unwrap_or(defaults::DEPENDENCY_SWEEP_INTERVAL),
            session_ttl: layer!(session_ttl).unwrap_or(defaults::SESSION_TTL),
            db_pool_size: layer!(db_pool_size).unwrap_or(defaults::DB_POOL_SIZE),
            max_log_followers: layer!(max_log_followers).unwrap_or(defaults::MAX_LOG_FOLLOWERS),
            shutdown_grace: layer!(shutdown_grace).unwrap_or(defaults::SHUTDOWN_GRACE),
            server_name: layer!(server_name).unwrap_or_else(|| defaults::SERVER_NAME.into()),
            server_fqdn: server_fqdn.clone(),
            replica_name: layer!(replica_name).unwrap_or_else(default_replica_name),
            leader_eligible: !a.no_leader,
            recruiter_interval: s.recruiter_interval.unwrap_or(defaults::RECRUITER_INTERVAL),
            job_lease: layer!(job_lease).unwrap_or(defaults::JOB_LEASE),
            job_timeout: layer!(job_timeout).unwrap_or(defaults::JOB_TIMEOUT),
            template_timeout: layer!(template_timeout).unwrap_or(defaults::TEMPLATE_TIMEOUT),
            template_interpreter,
            template_run_as: layer!(template_run_as).filter(|u| !u.trim().is_empty()),
            script_venv,
            docker_credentials,
            providers: file.providers,
            rclone,
            max_log_bytes_per_task: layer!(max_log_bytes_per_task)
                .unwrap_or(defaults::MAX_LOG_BYTES_PER_TASK),
            max_log_followers_per_user: layer!(max_log_followers_per_user)
                .unwrap_or(defaults::MAX_LOG_FOLLOWERS_PER_USER),
            max_concurrent_streams: layer!(max_concurrent_streams)
                .unwrap_or(defaults::MAX_CONCURRENT_STREAMS),
            // A `providers.local` section in the file is an explicit choice too.
            local_provider: layer!(local_provider)
                .unwrap_or(defaults::LOCAL_PROVIDER || local_configured),
            script_user: layer!(script_user).filter(|u| !u.trim().is_empty()),
            secret_files,
            fetch_roots: layer!(fetch_roots).unwrap_or_default(),
            fetch_http_hosts: layer!(fetch_http_hosts)
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            fetch_allow_private: layer!(fetch_allow_private).unwrap_or(false),
            docker_volume_roots: layer!(docker_volume_roots).unwrap_or_default(),
            docker_allowed_options: layer!(docker_allowed_options)
                .unwrap_or_default()
                .iter()
                .filter_map(|o| crate::domain::docker_options::option_name(o))
                .collect(),
            statement_timeout: layer!(statement_timeout).unwrap_or(defaults::STATEMENT_TIMEOUT),
            login_concurrency: layer!(login_concurrency)
                .unwrap_or_else(defaults::login_concurrency),
            login_queue: layer!(login_queue).unwrap_or(defaults::LOGIN_QUEUE),
            web_listen,
            ui_dir: layer!(ui_dir),
            disable_grpcweb: layer!(disable_grpcweb).unwrap_or(false),
            jwt_secret: secret(
                "jwt secret",
                (a.jwt_secret, a.jwt_secret_file.as_deref()),
                (s.jwt_secret, s.jwt_secret_file.as_deref()),
            )?,
            ui_origin: layer!(ui_origin).unwrap_or_else(|| {
                format!(
                    "https://{}:5173",
                    server_fqdn.as_deref().unwrap_or("localhost")
                )
            }),
            client_download_token: secret(
                "client download token",
                (
                    a.client_download_token,
                    a.client_download_token_file.as_deref(),
                ),
                (
                    s.client_download_token,
                    s.client_download_token_file.as_deref(),
                ),
            )?,
            client_binary: layer!(client_binary),
            batch_loops: layer!(batch_loops).unwrap_or(defaults::BATCH_LOOPS),
            batch_max: layer!(batch_max).unwrap_or(defaults::BATCH_MAX),
        };
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests and embedding: defaults everywhere, no YAML.
    pub fn for_database(database_url: impl Into<String>) -> Config {
        let mut c = Config::merge(&ServeArgs::default(), FileConfig::default())
            .expect("defaults are valid");
        c.database_url = Some(database_url.into());
        c
    }

    /// Checks relations between values that no single flag can check.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(web) = self.web_listen {
            anyhow::ensure!(
                web.port() == 0 || web.port() != self.listen.port(),
                "--https-port must differ from the gRPC port of --listen"
            );
        }
        anyhow::ensure!(
            !self.template_interpreter.trim().is_empty(),
            "--template-interpreter must not be empty"
        );
        anyhow::ensure!(
            !self.template_timeout.is_zero(),
            "--template-timeout must be more than 0s"
        );
        anyhow::ensure!(
            self.assign_shards >= 1,
            "--assign-shards must be at least 1"
        );
        anyhow::ensure!(
            self.assign_shards <= 1024,
            "--assign-shards must be at most 1024"
        );
        anyhow::ensure!(self.db_pool_size >= 2, "--db-pool-size must be at least 2");
        anyhow::ensure!(
            self.login_concurrency >= 1,
            "--login-concurrency must be at least 1"
        );
        anyhow::ensure!(
            3 * self.batch_loops < self.db_pool_size,
            "--batch-loops must be below a third of --db-pool-size: each batch loop (of pings, status updates and submissions) holds a pooled connection"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_max),
            "--batch-max must be between 1 and 10000"
        );
        anyhow::ensure!(
            self.max_log_followers >= 1,
            "--max-log-followers must be at least 1"
        );
        anyhow::ensure!(
            self.leader_lease_ttl >= Duration::from_secs(2),
            "--leader-lease-ttl must be at least 2s (keep-alives run every TTL/3)"
        );
        anyhow::ensure!(
            self.offline_timeout >= Duration::from_secs(1),
            "--offline-timeout must be at least 1s"
        );
        for (flag, interval) in [
            ("--watchdog-interval", self.watchdog_interval),
            (
                "--dependency-sweep-interval",
                self.dependency_sweep_interval,
            ),
        ] {
            anyhow::ensure!(
                interval >= Duration::from_millis(10),
                "{flag} must be at least 10ms"
            );
        }
        anyhow::ensure!(
            self.job_lease >= Duration::from_millis(300),
            "--job-lease must be at least 300ms (it is renewed every third of it)"
        );
        anyhow::ensure!(
            !self.job_timeout.is_zero(),
            "--job-timeout must be positive"
        );
        anyhow::ensure!(
            !self.admin_user.trim().is_empty(),
            "--admin-user must not be empty"
        );
        anyhow::ensure!(
            !self.server_name.is_empty()
                && self
                    .server_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "server_name must be letters, digits or '-' (it prefixes worker host names)"
        );
        anyhow::ensure!(
            self.max_log_bytes_per_task >= 1024,
            "--max-log-bytes-per-task must be at least 1024"
        );
        anyhow::ensure!(
            self.max_log_followers_per_user >= 1,
            "--max-log-followers-per-user must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_streams >= 1,
            "--max-concurrent-streams must be at least 1"
        );
        for (class, configs) in &self.providers {
            anyhow::ensure!(
                matches!(class.as_str(), "local" | "fake" | "azure" | "openstack"),
                "providers.{class}: unknown provider class (expected local, fake, azure or openstack)"
            );
            if class == "local" {
                for name in configs.keys() {
                    anyhow::ensure!(
                        name == "local",
                        "providers.local.{name}: the local provider is named 'local'"
                    );
                }
            }
        }
        Ok(())
    }

    /// What FetchList/FetchInfo may reach: `fetch_roots` and the providers' local workspaces
    /// (those that are local paths), never the data dir; the allow-listed web hosts.
    pub fn fetch_policy(&self) -> crate::domain::fetch_policy::FetchPolicy {
        let mut roots = self.fetch_roots.clone();
        for configs in self.providers.values() {
            for cfg in configs.values() {
                for ws in cfg.local_workspaces.values() {
                    let local = ws.strip_prefix("file://").unwrap_or(ws);
                    if local.starts_with('/') {
                        roots.push(PathBuf::from(local));
                    }
                }
            }
        }
        crate::domain::fetch_policy::FetchPolicy {
            local_roots: roots,
            denied: vec![self.data_dir.clone()],
            http_hosts: self.fetch_http_hosts.clone(),
            allow_private: self.fetch_allow_private,
            ..crate::domain::fetch_policy::FetchPolicy::server()
        }
    }

    /// What container options a non-admin task may carry.
    pub fn docker_policy(&self) -> crate::domain::docker_options::DockerPolicy {
        crate::domain::docker_options::DockerPolicy {
            volume_roots: self.docker_volume_roots.clone(),
            extra_allowed: self.docker_allowed_options.clone(),
        }
    }

    /// Where a value that replicas must share but may be generated (worker token) is kept.
    pub fn worker_token_path(&self) -> PathBuf {
        self.data_dir.join("worker-token")
    }

    /// The PEM file clients are given to trust when the gRPC port speaks TLS (the self-signed one is
    /// generated at first start, see `server::tls`).
    pub fn tls_certificate(&self) -> Option<PathBuf> {
        match &self.tls {
            TlsMode::Plain => None,
            TlsMode::Files { cert, .. } => Some(cert.clone()),
            TlsMode::SelfSigned => Some(self.data_dir.join("tls").join("cert.pem")),
        }
    }

    /// How stale `worker.last_ping_at` may get before a ping rewrites it
    /// (docs/architecture.md#idle-pings-write-nothing).
    pub fn last_ping_write_interval(&self) -> Duration {
        self.offline_timeout / 3
    }
}

fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(yaml: &str, args: ServeArgs) -> anyhow::Result<Config> {
        let file: FileConfig = serde_yaml::from_str(yaml)?;
        Config::merge(&args, file)
    }

    #[test]
    fn defaults_match_the_design() {
        let c = from_yaml("{}", ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(c.assign_shards, 16);
        assert_eq!(c.offline_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.new_worker_idle_timeout, Duration::from_secs(900));
        assert_eq!(c.lost_timeout, Duration::from_secs(300));
        assert_eq!(c.leader_lease_ttl, Duration::from_secs(10));
        assert_eq!(c.task_download_timeout, Duration::from_secs(600));
        assert_eq!(c.watchdog_interval, Duration::from_secs(5));
        assert_eq!(c.dependency_sweep_interval, Duration::from_secs(2));
        assert_eq!(c.template_timeout, Duration::from_secs(1800));
        assert_eq!(c.template_interpreter, "python3");
        assert!(c.template_run_as.is_none());
        assert_eq!(c.tls, TlsMode::Plain);
        assert!(c.database_url.is_none());
        assert!(c.etcd_endpoints.is_empty());
    }

    #[test]
    fn limits_come_from_flags_yaml_or_defaults() {
        let c = from_yaml("{}", ServeArgs::default()).unwrap();
        assert_eq!(c.max_log_bytes_per_task, 1 << 30);
        assert_eq!(c.max_log_followers_per_user, 100);
        assert_eq!(c.max_concurrent_streams, 10_240);
        let yaml = "scitq:\n  max_log_bytes_per_task: 4096\n  max_log_followers_per_user: 7\n  \
                    max_concurrent_streams: 64\n";
        let c = from_yaml(yaml, ServeArgs::default()).unwrap();
        assert_eq!(
            (
                c.max_log_bytes_per_task,
                c.max_log_followers_per_user,
                c.max_concurrent_streams
            ),
            (4096, 7, 64)
        );
        let flags = ServeArgs {
            max_log_followers_per_user: Some(3),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_yaml(yaml, flags).unwrap().max_log_followers_per_user,
            3
        );
        assert!(
            from_yaml(
                "scitq:\n  max_log_bytes_per_task: 10\n",
                ServeArgs::default()
            )
            .is_err()
        );
    }

    #[test]
    fn batch_settings_come_from_flags_yaml_or_defaults() {
        let c = from_yaml("{}", ServeArgs::default()).unwrap();
        assert_eq!((c.batch_loops, c.batch_max), (2, 256));
        let yaml = "scitq:\n  batch_loops: 3\n  batch_max: 64\n";
        let c = from_yaml(yaml, ServeArgs::default()).unwrap();
        assert_eq!((c.batch_loops, c.batch_max), (3, 64));
        let flags = ServeArgs {
            batch_loops: Some(0),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_yaml(yaml, flags).unwrap().batch_loops,
            0,
            "0 turns batching off"
        );
        assert!(from_yaml("scitq:\n  batch_max: 0\n", ServeArgs::default()).is_err());
        assert!(
            from_yaml("scitq:\n  batch_loops: 30\n", ServeArgs::default()).is_err(),
            "the loops' connections must leave room in the pool (30 by default)"
        );
    }

    #[test]
    fn reads_an_original_scitq_yaml() {
        let yaml = r#"
scitq:
  port: 50051
  db_url: postgres://localhost/scitq2?sslmode=disable
  worker_token: wt
  jwt_secret: ignored
  log_root: /var/lib/scitq/tasks
  idle_timeout: 120
  considered_lost_timeout: 60
  certificate_pem: /etc/cert.pem
  certificate_key: /etc/key.pem
  docker_registry: registry.example
  docker_authentication: c2VjcmV0
  grpc_dsl_timeout: 600
  script_venv: /opt/scitq/venv
  script_runner_user: scitq
providers:
  fake:
    test:
      regions: [r1, r2]
      quotas: {r1: {cpu: 8, mem: 32}}
      auto_launch: true
rclone:
  s3:
    type: s3
    chunk_size: 5
    env_auth: false
"#;
        let c = from_yaml(yaml, ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(
            c.database_url.as_deref(),
            Some("postgres://localhost/scitq2?sslmode=disable")
        );
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.lost_timeout, Duration::from_secs(60));
        assert_eq!(
            c.tls,
            TlsMode::Files {
                cert: "/etc/cert.pem".into(),
                key: "/etc/key.pem".into()
            }
        );
        assert_eq!(c.docker_credentials.len(), 1);
        let fake = &c.providers["fake"]["test"];
        assert_eq!(fake.effective_regions(), vec!["r1", "r2"]);
        assert_eq!(fake.quotas["r1"].cpu, 8);
        assert!(fake.extra.contains_key("auto_launch"));
        assert_eq!(c.rclone["s3"]["chunk_size"], "5");
        assert_eq!(c.rclone["s3"]["env_auth"], "false");
        assert_eq!(c.template_timeout, Duration::from_secs(600));
        assert_eq!(c.template_interpreter, "/opt/scitq/venv/bin/python");
        assert_eq!(c.template_run_as.as_deref(), Some("scitq"));
    }

    #[test]
    fn an_original_yaml_means_tls_unless_told_plaintext() {
        let tls = |yaml: &str, args: ServeArgs| from_yaml(yaml, args).map(|c| c.tls);
        // A `scitq:` section without a certificate: TLS with the generated certificate.
        assert_eq!(
            tls(
                "scitq: {port: 50051, worker_token: wt}",
                ServeArgs::default()
            )
            .unwrap(),
            TlsMode::SelfSigned
        );
        // The original's empty certificate keys mean "none" as well.
        assert_eq!(
            tls(
                "scitq: {certificate_pem: '', certificate_key: ''}",
                ServeArgs::default()
            )
            .unwrap(),
            TlsMode::SelfSigned
        );
        assert_eq!(
            tls("scitq: {plaintext: true}", ServeArgs::default()).unwrap(),
            TlsMode::Plain
        );
        let plaintext_flag = ServeArgs {
            plaintext: Some(true),
            ..Default::default()
        };
        assert_eq!(
            tls(
                "scitq: {certificate_pem: /c, certificate_key: /k}",
                plaintext_flag
            )
            .unwrap(),
            TlsMode::Plain
        );
        let self_signed_flag = ServeArgs {
            tls_self_signed: Some(true),
            ..Default::default()
        };
        assert_eq!(
            tls("scitq: {plaintext: true}", self_signed_flag).unwrap(),
            TlsMode::SelfSigned
        );
        // No `scitq:` section, or no file: plaintext stays the default.
        assert_eq!(
            tls("providers: {fake: {f: {}}}", ServeArgs::default()).unwrap(),
            TlsMode::Plain
        );
        assert_eq!(tls("{}", ServeArgs::default()).unwrap(), TlsMode::Plain);
        let err = tls(
            "scitq: {plaintext: true, certificate_pem: /c, certificate_key: /k}",
            ServeArgs::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plaintext"), "{err}");
    }

    #[test]
    fn the_tls_flags_parse_without_a_value() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["serve", "--tls-self-signed"]).unwrap();
        assert_eq!(cli.serve.tls_self_signed, Some(true));
        let cli = Cli::try_parse_from(["serve", "--plaintext", "--listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(cli.serve.plaintext, Some(true));
        assert!(Cli::try_parse_from(["serve", "--plaintext", "--tls-self-signed"]).is_err());
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let password = dir.path().join("password");
        let empty = dir.path().join("empty");
        std::fs::write(&token, "file-token\n").unwrap();
        std::fs::write(&password, "pass word\r\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let yaml = format!(
            "scitq: {{worker_token_file: {}, admin_password_file: {}}}",
            token.display(),
            password.display()
        );
        let c = from_yaml(&yaml, ServeArgs::default()).unwrap();
        assert_eq!(c.worker_token.as_deref(), Some("file-token"));
        assert_eq!(c.admin_password.as_deref(), Some("pass word"));

        // A flag wins over the YAML file, literal or file.
        let args = ServeArgs {
            worker_token: Some("flag-token".into()),
            ..Default::default()
        };
        let c = from_yaml(&yaml, args).unwrap();
        assert_eq!(c.worker_token.as_deref(), Some("flag-token"));

        let both = ServeArgs {
            worker_token: Some("flag-token".into()),
            worker_token_file: Some(token.clone()),
            ..Default::default()
        };
        let err = from_yaml("{}", both).unwrap_err().to_string();
        assert!(err.contains("--worker-token-file"), "{err}");
        let both_in_yaml = format!(
            "scitq: {{admin_password: x, admin_password_file: {}}}",
            password.display()
        );
        let err = from_yaml(&both_in_yaml, ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_password_file"), "{err}");
        let empty_file = ServeArgs {
            admin_password_file: Some(empty.clone()),
            ..Default::default()
        };
        let err = from_yaml("{}", empty_file).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let missing = ServeArgs {
            worker_token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(from_yaml("{}", missing).is_err());
    }

    #[test]
    fn script_venv_and_its_packages() {
        let c = from_yaml(
            "scitq: {script_venv: /v, script_packages: [/src/scitq2, requests]}",
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.template_interpreter, "/v/bin/python");
        assert_eq!(
            c.script_venv,
            Some(ScriptVenv {
                dir: "/v".into(),
                packages: vec!["/src/scitq2".into(), "requests".into()]
            })
        );
        // An explicit interpreter: the venv is not used, so it is not made.
        let args = ServeArgs {
            template_interpreter: Some("python3.12".into()),
            ..Default::default()
        };
        let c = from_yaml("scitq: {script_venv: /v}", args).unwrap();
        assert_eq!(c.template_interpreter, "python3.12");
        assert!(c.script_venv.is_none());
        let err = from_yaml("scitq: {script_packages: [x]}", ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("script_venv"), "{err}");
    }

    #[test]
    fn script_user_and_hidden_secret_files() {
        let c = from_yaml("{}", ServeArgs::default()).unwrap();
        assert!(c.script_user.is_none() && c.secret_files.is_empty());
        let c = from_yaml("scitq: {script_user: tq-scripts}", ServeArgs::default()).unwrap();
        assert_eq!(c.script_user.as_deref(), Some("tq-scripts"));
        let args = ServeArgs {
            script_user: Some("from-flag".into()),
            ..Default::default()
        };
        let c = from_yaml("scitq: {script_user: tq-scripts}", args).unwrap();
        assert_eq!(c.script_user.as_deref(), Some("from-flag"));
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let args = ServeArgs {
            worker_token_file: Some(token.clone()),
            ..Default::default()
        };
        let c = from_yaml("{}", args).unwrap();
        assert_eq!(c.secret_files, vec![token]);
    }

    #[test]
    fn flags_win_over_yaml() {
        let args = ServeArgs {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            offline_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let c = from_yaml("scitq: {port: 9999, offline_timeout: 100s}", args).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.offline_timeout, Duration::from_secs(5));
    }

    #[test]
    fn fetch_and_docker_policies() {
        let yaml = r#"
scitq:
  data_dir: /var/lib/tq
  fetch_roots: [/data, /srv/share]
  fetch_http_hosts: [example.org, "*.mirror.example"]
  docker_volume_roots: [/data/ref]
  docker_allowed_options: [device, "--runtime"]
providers:
  fake:
    f:
      local_workspaces: {"*": /scratch, r2: "s3://bucket/ws", r3: "file:///mnt/ws"}
"#;
        let c = from_yaml(yaml, ServeArgs::default()).unwrap();
        let p = c.fetch_policy();
        let roots: Vec<String> = p
            .local_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        assert_eq!(roots, ["/data", "/srv/share", "/scratch", "/mnt/ws"]);
        assert_eq!(p.denied, [PathBuf::from("/var/lib/tq")]);
        assert_eq!(p.http_hosts, ["example.org", "*.mirror.example"]);
        assert!(!p.allow_private);
        let d = c.docker_policy();
        assert_eq!(d.volume_roots, [PathBuf::from("/data/ref")]);
        assert_eq!(d.extra_allowed, ["--device", "--runtime"]);
        let none = from_yaml("{}", ServeArgs::default()).unwrap();
        assert!(none.fetch_policy().local_roots.is_empty());
        assert!(none.fetch_policy().http_hosts.is_empty());

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "serve",
            "--fetch-roots",
            "/a,/b",
            "--fetch-allow-private",
            "--docker-allowed-options=--device,--runtime",
        ])
        .unwrap();
        assert_eq!(cli.serve.fetch_roots.unwrap().len(), 2);
        assert_eq!(cli.serve.fetch_allow_private, Some(true));
        assert_eq!(
            cli.serve.docker_allowed_options.unwrap(),
            ["--device", "--runtime"]
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let err = from_yaml("scitq: {assign_shards: 0}", ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("assign-shards"), "{err}");
        let err = from_yaml("providers: {local: {other: {}}}", ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("local"), "{err}");
        assert!(from_yaml("scitq: {idle_timeout: soon}", ServeArgs::default()).is_err());
        let args = ServeArgs {
            metrics_listen: Some("off".into()),
            ..Default::default()
        };
        assert!(from_yaml("{}", args).unwrap().metrics_listen.is_none());
    }

    #[test]
    fn web_surface_options_from_yaml_and_flags() {
        // Off by default, with the UI's development origin.
        let c = from_yaml("{}", ServeArgs::default()).unwrap();
        assert!(c.web_listen.is_none());
        assert_eq!(c.ui_origin, "https://localhost:5173");
        assert!(!c.disable_grpcweb && c.jwt_secret.is_none() && c.client_download_token.is_none());
        // The original's keys.
        let yaml = "scitq:
  port: 50051
  https_port: 8443
  server_fqdn: scitq.example.org
  disable_grpcweb: true
  jwt_secret: s3cret
  client_download_token: dl
  client_binary_path: /usr/local/bin/scitq-client
  ui_dir: /srv/ui
";
        let c = from_yaml(yaml, ServeArgs::default()).unwrap();
        assert_eq!(c.web_listen.unwrap().to_string(), "0.0.0.0:8443");
        assert_eq!(c.ui_origin, "https://scitq.example.org:5173");
        assert!(c.disable_grpcweb);
        assert_eq!(c.jwt_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.client_download_token.as_deref(), Some("dl"));
        assert_eq!(
            c.client_binary.as_deref(),
            Some(Path::new("/usr/local/bin/scitq-client"))
        );
        assert_eq!(c.ui_dir.as_deref(), Some(Path::new("/srv/ui")));
        // disable_https turns the file's port off; a flag wins over both.
        let off = "scitq: {https_port: 8443, disable_https: true}";
        assert!(
            from_yaml(off, ServeArgs::default())
                .unwrap()
                .web_listen
                .is_none()
        );
        let args = ServeArgs {
            https_port: Some(9443),
            ui_origin: Some("https://ui.example.org".into()),
            ..Default::default()
        };
        let c = from_yaml(off, args).unwrap();
        assert_eq!(c.web_listen.unwrap().to_string(), "127.0.0.1:9443");
        assert_eq!(c.ui_origin, "https://ui.example.org");
        // The web port may not be the gRPC port.
        let args = ServeArgs {
            https_port: Some(50051),
            ..Default::default()
        };
        assert!(from_yaml("{}", args).is_err());
        // A secret given twice is refused.
        let args = ServeArgs {
            jwt_secret: Some("a".into()),
            jwt_secret_file: Some(PathBuf::from("/nonexistent")),
            ..Default::default()
        };
        assert!(from_yaml("{}", args).is_err());
    }
}
