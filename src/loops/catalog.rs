//! Catalog upkeep (leader only): on taking office, synchronise providers and regions with the
//! configuration ([`take_office`]); then keep the flavor catalogue of providers that publish one
//! current (docs/architecture.md#background-loops, [`CatalogRefresher`]) — once per term, then
//! every `update_periodicity` of the provider.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scoped_futures::ScopedFutureExt as _;

use super::LeaderContext;
use crate::db::Op;
use crate::db::catalog::{self, SyncReport};
use crate::error::Result;
use crate::providers::Providers;

/// How often the refresher checks whether a catalogue is due.
pub const CATALOG_INTERVAL: Duration = Duration::from_secs(30);

/// Synchronises providers and regions with the configuration (idempotent, serialised across
/// replicas, fenced).
pub async fn take_office(ctx: &LeaderContext) -> Result<SyncReport> {
    let (declared, offer_local) = (ctx.declared_providers.clone(), ctx.config.local_provider);
    let report = ctx
        .fenced_tx(Op::Catalog, |tx| {
            let providers = &*declared;
            async move { catalog::sync_from_config(tx, providers, offer_local).await }.scope_boxed()
        })
        .await?;
    if !report.providers_added.is_empty() || !report.regions_added.is_empty() {
        tracing::info!(providers = ?report.providers_added, regions = ?report.regions_added, "catalog: added from the configuration");
    }
    if !report.regions_removed.is_empty() {
        tracing::info!(regions = ?report.regions_removed, "catalog: removed regions no longer configured");
    }
    if !report.regions_kept.is_empty() {
        tracing::warn!(
            regions = ?report.regions_kept,
            "catalog: regions no longer configured are kept because workers use them"
        );
    }
    Ok(report)
}

/// Catalogue upkeep as a leader loop: providers and regions synchronised with the configuration
/// when the term starts, then catalogues refreshed when due (checked every [`CATALOG_INTERVAL`]).
pub fn leader_loop(providers: Providers) -> super::LeaderLoop {
    super::LeaderLoop::long_running("catalog", CATALOG_INTERVAL, move |ctx, cancel| {
        let providers = providers.clone();
        async move {
            take_office(&ctx).await?;
            let refresher = CatalogRefresher::new();
            let mut tick = tokio::time::interval(CATALOG_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                refresher.run_once(&ctx, &providers).await?;
            }
        }
    })
    .on_cancel(super::OnCancel::Abandon)
}

/// Refreshes provider catalogues when due. One per term: a new term refreshes every catalogue.
#[derive(Default)]
pub struct CatalogRefresher {
    last: Mutex<HashMap<String, Instant>>,
}

impl CatalogRefresher {
    pub fn new() -> CatalogRefresher {
        CatalogRefresher::default()
    }

    fn period(ctx: &LeaderContext, full_name: &str) -> Option<Duration> {
        let (class, name) = full_name.split_once('.')?;
        let raw = ctx
            .config
            .providers
            .get(class)?
            .get(name)?
            .update_periodicity
            .as_deref()?;
        match humantime::parse_duration(raw) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                tracing::warn!(
                    provider = full_name,
                    value = raw,
                    "invalid update_periodicity; refreshing once per term"
                );
                None
            }
        }
    }

    /// Refreshes every catalogue that is due; returns how many were applied. A provider's error
    /// is logged and does not stop the others.
    pub async fn run_once(&self, ctx: &LeaderContext, providers: &Providers) -> Result<usize> {
        let mut applied = 0;
        for provider in providers.all() {
            let full = provider.full_name().to_string();
            let due = match self.last.lock().unwrap().get(&full) {
                None => true,
                Some(at) => Self::period(ctx, &full).is_some_and(|p| at.elapsed() >= p),
            };
            if !due {
                continue;
            }
            self.last
                .lock()
                .unwrap()
                .insert(full.clone(), Instant::now());
            let flavors = match provider.catalog().await {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(provider = %full, error = %e, "cannot fetch the flavor catalogue");
                    continue;
                }
            };
            let Some((class, name)) = full.split_once('.') else {
                continue;
            };
            let listed = ctx
                .fenced_tx(Op::Catalog, |tx| {
                    let flavors = &flavors;
                    async move { catalog::apply_catalog(tx, (class, name), flavors).await }
                        .scope_boxed()
                })
                .await;
            match listed {
                Ok(n) => {
                    applied += 1;
                    tracing::info!(provider = %full, flavors = n, "flavor catalogue refreshed");
                }
                Err(e) => {
                    tracing::warn!(provider = %full, error = %e, "cannot apply the flavor catalogue")
                }
            }
        }
        Ok(applied)
    }
}
