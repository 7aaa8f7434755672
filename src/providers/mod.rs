//! Providers of worker machines behind one trait: `local` (real worker processes on this host) and
//! `fake` (simulated VMs, optionally with simulated workers that talk gRPC). Azure and OpenStack
//! are not built here (no network), but the trait and the `providers:` configuration admit them:
//! their jobs fail with a message saying so. Every operation is idempotent by worker name, so a job
//! retried after a timeout or taken over from a dead replica never makes a second machine.
//!
//! This module does not touch the database: the job runner (`loops::jobs`) calls providers and
//! records what they did.

pub mod fake;
pub mod local;
pub mod secrets;
pub mod simworker;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ProviderConfig};
use crate::domain::catalog::{CatalogFlavor, FlavorSpec};

/// What a create call needs: the worker the machine will run, and where.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmSpec {
    pub worker_name: String,
    pub worker_id: i32,
    pub job_id: i32,
    /// Full provider name (`class.config`).
    pub provider: String,
    pub region: String,
    pub flavor: FlavorSpec,
    pub concurrency: i32,
}

/// A machine as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    pub name: String,
    pub region: String,
    pub ipv4: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The operation failed; it may succeed if retried.
    #[error("{0}")]
    Failed(String),
    /// The provider cannot do this at all.
    #[error("not supported: {0}")]
    Unsupported(String),
}

pub type ProviderResult<T> = std::result::Result<T, ProviderError>;

/// A source of worker machines. Implementations must be idempotent by worker name: `create` of an
/// existing machine returns it, `delete` of a missing one succeeds.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// `class.config`, e.g. `fake.test`, `local.local`.
    fn full_name(&self) -> &str;
    /// Creates (or finds) the machine `spec.worker_name` and starts its worker.
    async fn create(&self, spec: &VmSpec) -> ProviderResult<Vm>;
    /// Deletes the machine; a machine that does not exist is already deleted.
    async fn delete(&self, worker_name: &str, region: &str) -> ProviderResult<()>;
    /// Restarts the machine.
    async fn restart(&self, worker_name: &str, region: &str) -> ProviderResult<()>;
    /// The machines of a region.
    async fn list(&self, region: &str) -> ProviderResult<Vec<Vm>>;
    /// How long a create job waits, once `create` returned, for the machine's worker to register
    /// (its row pinged) before the job succeeds. `None`: the job succeeds when `create` returns
    /// (a cloud VM's installer reports through UpdateJob instead).
    fn registration_timeout(&self) -> Option<Duration> {
        None
    }
    /// While a create job waits for registration: `Err` when the worker can no longer register
    /// (its process exited), saying what it printed.
    async fn check_starting(&self, _worker_name: &str) -> ProviderResult<()> {
        Ok(())
    }
    /// The provider's flavor catalogue, for providers that publish one (refreshed by the leader,
    /// docs/architecture.md#background-loops).
    async fn catalog(&self) -> ProviderResult<Option<Vec<CatalogFlavor>>> {
        Ok(None)
    }
}

/// What providers need to know about the replica that runs them.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Address workers use to reach the server (`http://127.0.0.1:50051`).
    pub server_url: String,
    pub worker_token: String,
    /// The replica's data folder (local worker pid files and logs).
    pub data_dir: PathBuf,
    /// The PEM workers trust when the server speaks TLS (`--ca-file`).
    pub ca_file: Option<PathBuf>,
}

impl Environment {
    /// The environment of a replica serving on `grpc_addr`: workers started on this host reach it
    /// on loopback when it listens on all interfaces.
    /// Over TLS they use `localhost`, the name every certificate of a local server carries (the
    /// original's embedded one names nothing else), rather than the loopback address.
    pub fn for_replica(config: &Config, grpc_addr: SocketAddr, worker_token: &str) -> Environment {
        let ca_file = config.tls_certificate();
        let host = match grpc_addr.ip() {
            ip if ca_file.is_some() && (ip.is_unspecified() || ip.is_loopback()) => {
                "localhost".to_string()
            }
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let scheme = if ca_file.is_some() { "https" } else { "http" };
        Environment {
            server_url: format!("{scheme}://{host}:{}", grpc_addr.port()),
            worker_token: worker_token.to_string(),
            data_dir: config.data_dir.clone(),
            ca_file,
        }
    }
}

/// The providers of a replica, by full name.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Providers").field("names", &names).finish()
    }
}

impl Providers {
    /// Builds the providers of the configuration; `local.local` exists exactly when
    /// `--local-provider` is set.
    pub fn from_config(config: &Config, env: &Environment) -> anyhow::Result<Providers> {
        let mut providers = Providers::default();
        for (class, configs) in &config.providers {
            for (name, cfg) in configs {
                match class.as_str() {
                    "local" if !config.local_provider => tracing::warn!(
                        "providers.local is configured but --local-provider is off: not offered"
                    ),
                    "local" => {
                        providers.insert(Arc::new(local::LocalProvider::from_config(cfg, env)?))
                    }
                    "fake" => {
                        providers.insert(Arc::new(fake::FakeProvider::from_config(name, cfg, env)?))
                    }
                    other => tracing::warn!(
                        provider = %format!("{other}.{name}"),
                        "provider class not built into this server: its jobs will fail"
                    ),
                }
            }
        }
        if config.local_provider && providers.get("local.local").is_none() {
            providers.insert(Arc::new(local::LocalProvider::from_config(
                &ProviderConfig::default(),
                env,
            )?));
        }
        Ok(providers)
    }

    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        self.by_name
            .insert(provider.full_name().to_string(), provider);
    }

    pub fn get(&self, full_name: &str) -> Option<Arc<dyn Provider>> {
        self.by_name.get(full_name).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.by_name.values()
    }
}

/// Reads an optional duration from a provider's extra keys: seconds (number) or humantime ("2s").
pub(crate) fn extra_duration(cfg: &ProviderConfig, key: &str) -> anyhow::Result<Option<Duration>> {
    match cfg.extra.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::Number(n)) => {
            let secs = n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| anyhow::anyhow!("{key}: invalid duration {n}"))?;
            Ok(Some(secs))
        }
        Some(serde_yaml::Value::String(s)) => humantime::parse_duration(s)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{key}: invalid duration {s:?}: {e}")),
        Some(other) => anyhow::bail!("{key}: expected a duration, got {other:?}"),
    }
}

pub(crate) fn extra_f64(cfg: &ProviderConfig, key: &str) -> anyhow::Result<Option<f64>> {
    match cfg.extra.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => anyhow::bail!("{key}: expected a number, got {other:?}"),
    }
}

pub(crate) fn extra_bool(cfg: &ProviderConfig, key: &str) -> anyhow::Result<Option<bool>> {
    match cfg.extra.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => anyhow::bail!("{key}: expected true or false, got {other:?}"),
    }
}

/// A string or a list of strings.
pub(crate) fn extra_strings(
    cfg: &ProviderConfig,
    key: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    match cfg.extra.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|v| match v {
                serde_yaml::Value::String(s) => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                other => anyhow::bail!("{key}: expected strings, got {other:?}"),
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some),
        Some(other) => anyhow::bail!("{key}: expected a string or a list, got {other:?}"),
    }
}
