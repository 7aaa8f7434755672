//! What workers are handed to reach storage and registries, from the configuration: rclone remotes
//! (`rclone:`), docker registry credentials (`scitq.docker_credentials`, or the legacy single
//! pair), and workspace roots (`providers.<class>.<name>.local_workspaces`). The access rule
//! (worker token or admin for secrets) is the auth layer's.
//!
//! Cache: the built answers, for `SECRETS_CACHE_TTL`. Why it is safe: they derive only from the
//! configuration, which a replica never changes while it runs; the cache spares rebuilding the maps
//! for every worker that starts. Nothing invalidates it, nothing needs to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use moka::future::Cache;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto as pb;
use crate::telemetry::metrics::CACHE_REQUESTS;

pub const SECRETS_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
enum Answer {
    Rclone(pb::RcloneRemotes),
    Docker(pb::DockerCredentials),
}

#[derive(Clone)]
pub struct Secrets {
    config: Arc<Config>,
    cache: Cache<&'static str, Arc<Answer>>,
}

impl Secrets {
    pub fn new(config: Arc<Config>) -> Secrets {
        Secrets {
            config,
            cache: Cache::builder()
                .max_capacity(8)
                .time_to_live(SECRETS_CACHE_TTL)
                .build(),
        }
    }

    async fn cached(&self, key: &'static str, build: impl FnOnce() -> Answer) -> Arc<Answer> {
        if let Some(hit) = self.cache.get(&key).await {
            counter!(CACHE_REQUESTS, "cache" => "credentials", "result" => "hit").increment(1);
            return hit;
        }
        counter!(CACHE_REQUESTS, "cache" => "credentials", "result" => "miss").increment(1);
        let answer = Arc::new(build());
        self.cache.insert(key, answer.clone()).await;
        answer
    }

    /// The `rclone:` section, remote by remote.
    pub async fn rclone(&self) -> pb::RcloneRemotes {
        let config = &self.config;
        let answer = self
            .cached("rclone", || {
                Answer::Rclone(pb::RcloneRemotes {
                    remotes: config
                        .rclone
                        .iter()
                        .map(|(name, options)| {
                            let options: HashMap<String, String> = options
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            (name.clone(), pb::RcloneRemote { options })
                        })
                        .collect(),
                })
            })
            .await;
        match &*answer {
            Answer::Rclone(r) => r.clone(),
            Answer::Docker(_) => unreachable!("the rclone key holds rclone remotes"),
        }
    }

    /// Docker registry credentials (empty pairs were dropped when the configuration was read).
    pub async fn docker(&self) -> pb::DockerCredentials {
        let config = &self.config;
        let answer = self
            .cached("docker", || {
                Answer::Docker(pb::DockerCredentials {
                    credentials: config
                        .docker_credentials
                        .iter()
                        .map(|c| pb::DockerCredential {
                            registry: c.registry.clone(),
                            auth: c.secret.clone(),
                        })
                        .collect(),
                })
            })
            .await;
        match &*answer {
            Answer::Docker(d) => d.clone(),
            Answer::Rclone(_) => unreachable!("the docker key holds docker credentials"),
        }
    }

    /// The workspace root of a provider (`class.config`) in a region: the region's own entry,
    /// else the `*` entry; `NotFound` when the provider or both entries are missing.
    pub fn workspace_root(&self, provider: &str, region: &str) -> Result<String> {
        let cfg = provider
            .split_once('.')
            .and_then(|(class, name)| self.config.providers.get(class)?.get(name))
            .ok_or_else(|| Error::not_found(format!("provider {provider:?} is not configured")))?;
        cfg.local_workspaces
            .get(region)
            .or_else(|| cfg.local_workspaces.get("*"))
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "provider {provider} has no workspace for region {region:?} (nor a '*' entry)"
                ))
            })
    }
}
