//! The catalog (`provider`, `region`, `flavor`, `flavor_region`): synchronisation from the
//! configuration, flavor listing through a compiled protofilter, CreateFlavor, the provider
//! catalogue refresh (docs/architecture.md#background-loops), and the cache of flavor listings.
//!
//! Protofilter → SQL: [`filter_sql`] emits only fixed fragments chosen by the parsed enums, and
//! every value as a `$n` parameter; no text of the filter reaches the SQL string.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use moka::future::Cache;
use scoped_futures::ScopedFutureExt as _;
use tokio_postgres::types::ToSql;

use super::locks::NS_CATALOG;
use super::{Db, Op, pg_error};
use crate::domain::catalog::{CatalogFlavor, DeclaredProviders, LOCAL_PROVIDER, LOCAL_REGION};
use crate::domain::limits;
use crate::domain::protofilter::Filter;
use crate::error::{Error, Result};
use crate::telemetry::metrics::CACHE_REQUESTS;

mod filter;

pub use filter::{Param, filter_sql};

/// A flavor offered in a region, as ListFlavors shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    pub flavor_id: i32,
    pub flavor_name: String,
    pub provider_id: i32,
    pub provider: String,
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
    pub bandwidth: i32,
    pub gpu: String,
    pub gpumem: i32,
    pub has_gpu: bool,
    pub has_quick_disks: bool,
    pub region_id: i32,
    pub region: String,
    pub eviction: f64,
    pub cost: f64,
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub provider_id: i32,
    pub provider_name: String,
    pub config_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub region_id: i32,
    pub provider_id: i32,
    pub region_name: String,
    pub is_default: bool,
}

/// Flavor × region × provider: one row per flavor per region where it is offered.
const FLAVOR_FROM: &str = "
      FROM flavor f
      JOIN flavor_region fr ON fr.flavor_id = f.flavor_id
      JOIN region r ON r.region_id = fr.region_id
      JOIN provider p ON p.provider_id = f.provider_id";

fn flavor_from_row(r: &tokio_postgres::Row) -> Flavor {
    Flavor {
        flavor_id: r.get("flavor_id"),
        flavor_name: r.get("flavor_name"),
        provider_id: r.get("provider_id"),
        provider: r.get("provider"),
        cpu: r.get("cpu"),
        mem: r.get("mem"),
        disk: r.get("disk"),
        bandwidth: r.get("bandwidth"),
        gpu: r.get("gpu"),
        gpumem: r.get("gpumem"),
        has_gpu: r.get("has_gpu"),
        has_quick_disks: r.get("has_quick_disks"),
        region_id: r.get("region_id"),
        region: r.get("region_name"),
        eviction: r.get("eviction"),
        cost: r.get("cost"),
        available: r.get("available"),
    }
}

fn flavor_query(filter: &Filter) -> (String, Vec<Param>) {
    let (cond, params) = filter_sql(filter, 2);
    let sql = format!(
        "SELECT f.flavor_id, f.flavor_name, p.provider_id,
                p.provider_name || '.' || p.config_name AS provider,
                f.cpu, f.mem, f.disk, COALESCE(f.bandwidth, 0) AS bandwidth,
                COALESCE(f.gpu, '') AS gpu, COALESCE(f.gpumem, 0) AS gpumem,
                f.has_gpu, f.has_quick_disks, r.region_id, r.region_name,
                fr.eviction, fr.cost, fr.available
         {FLAVOR_FROM}
         WHERE {cond}
         ORDER BY fr.cost, f.flavor_id, r.region_id
         LIMIT $1"
    );
    (sql, params)
}

/// Flavors matching `filter`, cheapest first, at most `limit` rows (one per flavor and region).
pub async fn list_flavors(db: &Db, filter: &Filter, limit: i64) -> Result<Vec<Flavor>> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let (sql, params) = flavor_query(filter);
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    values.extend(params.iter().map(Param::as_sql));
    db.query(Op::Catalog, sql.as_str(), &values, flavor_from_row)
        .await
}

/// The same listing inside a transaction (recruiter candidates, cheapest first).
pub async fn matching_flavors(
    tx: &super::Tx<'_>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Flavor>> {
    let (sql, params) = flavor_query(filter);
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    values.extend(params.iter().map(Param::as_sql));
    let rows = tx.query(sql.as_str(), &values).await?;
    Ok(rows.iter().map(flavor_from_row).collect())
}

/// Cache of ListFlavors answers, keyed by (filter text, limit).
///
/// Why it is safe: flavors change rarely (CreateFlavor, the periodic catalogue refresh), and a
/// listing a few seconds old misleads no one; CreateFlavor on this replica clears it at once, and
/// other replicas see the change within `FLAVOR_CACHE_TTL`. No dispatch or recruitment decision
/// reads it: recruiters query the database.
#[derive(Clone)]
pub struct FlavorCache {
    cache: Cache<(String, i64), Arc<Vec<Flavor>>>,
}

pub const FLAVOR_CACHE_TTL: Duration = Duration::from_secs(5);
const FLAVOR_CACHE_CAPACITY: u64 = 1_000;

impl Default for FlavorCache {
    fn default() -> Self {
        FlavorCache {
            cache: Cache::builder()
                .max_capacity(FLAVOR_CACHE_CAPACITY)
                .time_to_live(FLAVOR_CACHE_TTL)
                .build(),
        }
    }
}

impl FlavorCache {
    /// ListFlavors through the cache (the filter is parsed by the caller: a bad filter never
    /// reaches the cache).
    pub async fn list(
        &self,
        db: &Db,
        raw: &str,
        filter: &Filter,
        limit: i64,
    ) -> Result<Arc<Vec<Flavor>>> {
        let key = (raw.to_string(), limit);
        if let Some(hit) = self.cache.get(&key).await {
            counter!(CACHE_REQUESTS, "cache" => "flavors", "result" => "hit").increment(1);
            return Ok(hit);
        }
        counter!(CACHE_REQUESTS, "cache" => "flavors", "result" => "miss").increment(1);
        let rows = Arc::new(list_flavors(db, filter, limit).await?);
        self.cache.insert(key, rows.clone()).await;
        Ok(rows)
    }

    pub fn invalidate(&self) {
        self.cache.invalidate_all();
    }
}

pub async fn list_providers(db: &Db) -> Result<Vec<Provider>> {
    db.query(
        Op::Catalog,
        "SELECT provider_id, provider_name, config_name FROM provider ORDER BY provider_id LIMIT $1",
        &[&limits::LIST_PROVIDERS.max],
        |r| Provider {
            provider_id: r.get(0),
            provider_name: r.get(1),
            config_name: r.get(2),
        },
    )
    .await
}

pub async fn list_regions(db: &Db) -> Result<Vec<Region>> {
    db.query(
        Op::Catalog,
        "SELECT region_id, provider_id, region_name, is_default FROM region
          ORDER BY region_id LIMIT $1",
        &[&limits::LIST_REGIONS.max],
        |r| Region {
            region_id: r.get(0),
            provider_id: r.get(1),
            region_name: r.get(2),
            is_default: r.get(3),
        },
    )
    .await
}

/// CreateFlavor's input, validated by the caller.
#[derive(Debug, Clone, Default)]
pub struct NewFlavor {
    pub provider_name: String,
    pub config_name: String,
    pub flavor_name: String,
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
    pub bandwidth: Option<i32>,
    pub gpu: Option<String>,
    pub gpumem: Option<i32>,
    pub has_gpu: bool,
    pub has_quick_disks: bool,
    /// (region name, cost, eviction)
    pub regions: Vec<(String, f64, f64)>,
}

/// Inserts a flavor and its offers in each region, in one transaction.
pub async fn create_flavor(db: &Db, f: &NewFlavor) -> Result<i32> {
    db.tx(Op::Catalog, |tx| {
        async move {
            let provider_id: i32 = tx
                .query_opt(
                    "SELECT provider_id FROM provider WHERE provider_name = $1 AND config_name = $2",
                    &[&f.provider_name, &f.config_name],
                )
                .await?
                .map(|r| r.get(0))
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "provider {}.{} not found",
                        f.provider_name, f.config_name
                    ))
                })?;
            let flavor_id: i32 = tx
                .query_one(
                    "INSERT INTO flavor (provider_id, flavor_name, cpu, mem, disk, bandwidth, gpu,
                                         gpumem, has_gpu, has_quick_disks)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     RETURNING flavor_id",
                    &[
                        &provider_id,
                        &f.flavor_name,
                        &f.cpu,
                        &f.mem,
                        &f.disk,
                        &f.bandwidth,
                        &f.gpu,
                        &f.gpumem,
                        &f.has_gpu,
                        &f.has_quick_disks,
                    ],
                )
                .await
                .map_err(|e| {
                    let e = pg_error(e);
                    if e.code == crate::error::Code::AlreadyExists {
                        Error::already_exists(format!(
                            "flavor {} already exists for provider {}.{}",
                            f.flavor_name, f.provider_name, f.config_name
                        ))
                    } else {
                        e
                    }
                })?
                .get(0);
            for (region, cost, eviction) in &f.regions {
                let region_id: i32 = tx
                    .query_opt(
                        "SELECT region_id FROM region WHERE provider_id = $1 AND region_name = $2",
                        &[&provider_id, region],
                    )
                    .await?
                    .map(|r| r.get(0))
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "region {region} not found for provider {}.{}",
                            f.provider_name, f.config_name
                        ))
                    })?;
                tx.execute(
                    "INSERT INTO flavor_region (flavor_id, region_id, cost, eviction)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (flavor_id, region_id)
                     DO UPDATE SET cost = EXCLUDED.cost, eviction = EXCLUDED.eviction",
                    &[&flavor_id, &region_id, cost, eviction],
                )
                .await?;
            }
            Ok(flavor_id)
        }
        .scope_boxed()
    })
    .await
}

/// What a catalog synchronisation changed or refused to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub providers_added: Vec<String>,
    pub regions_added: Vec<String>,
    pub regions_removed: Vec<String>,
    /// Regions gone from the configuration but kept because workers use them.
    pub regions_kept: Vec<String>,
}

/// The providers and regions the configuration declares (plus `local.local` / `local` when
/// `offer_local`; without it, not even a configured `local` section), with each provider's
/// default region.
pub fn declared(
    config: &DeclaredProviders,
    offer_local: bool,
) -> Vec<(String, String, Vec<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut has_local = !offer_local;
    for p in &config.0 {
        let (class, name) = (&p.class, &p.name);
        if class == LOCAL_PROVIDER.0 && !offer_local {
            continue;
        }
        let mut regions: Vec<String> = p.regions.clone();
        let mut default = p.default_region.clone();
        if (class.as_str(), name.as_str()) == LOCAL_PROVIDER {
            has_local = true;
            if !regions.iter().any(|r| r == LOCAL_REGION) {
                regions.push(LOCAL_REGION.to_string());
            }
            default.get_or_insert_with(|| LOCAL_REGION.to_string());
        }
        let unique: BTreeSet<String> = regions.into_iter().collect();
        out.push((
            class.clone(),
            name.clone(),
            unique.into_iter().collect(),
            default,
        ));
    }
    if !has_local {
        out.push((
            LOCAL_PROVIDER.0.to_string(),
            LOCAL_PROVIDER.1.to_string(),
            vec![LOCAL_REGION.to_string()],
            Some(LOCAL_REGION.to_string()),
        ));
    }
    out
}

/// Synchronises providers and regions with the configuration (leader, on taking office).
/// Idempotent, and serialised by an advisory lock so two replicas running it cannot interleave.
/// Regions no longer configured are deleted only when no worker uses them (deleting would orphan
/// workers); providers are never deleted (their flavors and jobs refer to them).
pub async fn sync_from_config(
    tx: &super::Tx<'_>,
    config: &DeclaredProviders,
    offer_local: bool,
) -> Result<SyncReport> {
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&NS_CATALOG])
        .await?;
    let mut report = SyncReport::default();
    let mut configured: HashMap<i32, Vec<String>> = HashMap::new();
    for (class, name, regions, default) in declared(config, offer_local) {
        let full = format!("{class}.{name}");
        let row = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO provider (provider_name, config_name) VALUES ($1, $2)
                     ON CONFLICT (provider_name, config_name) DO NOTHING
                     RETURNING provider_id)
                 SELECT provider_id, true FROM ins
                 UNION ALL
                 SELECT provider_id, false FROM provider WHERE provider_name = $1 AND config_name = $2
                 LIMIT 1",
                &[&class, &name],
            )
            .await?;
        let provider_id: i32 = row.get(0);
        if row.get::<_, bool>(1) {
            report.providers_added.push(full.clone());
        }
        let added = tx
            .query(
                "INSERT INTO region (provider_id, region_name, is_default)
                 SELECT $1, name, name = $3 FROM unnest($2::text[]) AS name
                 ON CONFLICT (provider_id, region_name) DO NOTHING
                 RETURNING region_name",
                &[&provider_id, &regions, &default.clone().unwrap_or_default()],
            )
            .await?;
        report.regions_added.extend(
            added
                .iter()
                .map(|r| format!("{full}:{}", r.get::<_, String>(0))),
        );
        tx.execute(
            "UPDATE region SET is_default = (region_name = $2)
              WHERE provider_id = $1 AND is_default <> (region_name = $2)",
            &[&provider_id, &default.unwrap_or_default()],
        )
        .await?;
        configured.insert(provider_id, regions);
    }
    // Regions of every provider, configured or not, that the configuration no longer lists.
    let providers = tx
        .query(
            "SELECT provider_id, provider_name || '.' || config_name FROM provider",
            &[],
        )
        .await?;
    for p in providers {
        let provider_id: i32 = p.get(0);
        let full: String = p.get(1);
        let keep = configured.remove(&provider_id).unwrap_or_default();
        let removed = tx
            .query(
                "DELETE FROM region r
                  WHERE r.provider_id = $1 AND NOT (r.region_name = ANY($2::text[]))
                    AND NOT EXISTS (SELECT 1 FROM worker w WHERE w.region_id = r.region_id)
                 RETURNING region_name",
                &[&provider_id, &keep],
            )
            .await?;
        report.regions_removed.extend(
            removed
                .iter()
                .map(|r| format!("{full}:{}", r.get::<_, String>(0))),
        );
        let kept = tx
            .query(
                "SELECT region_name FROM region
                  WHERE provider_id = $1 AND NOT (region_name = ANY($2::text[]))",
                &[&provider_id, &keep],
            )
            .await?;
        report.regions_kept.extend(
            kept.iter()
                .map(|r| format!("{full}:{}", r.get::<_, String>(0))),
        );
    }
    Ok(report)
}

/// Flavors a provider stopped listing are deleted after this long unless a worker uses them.
pub const FLAVOR_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// Applies a provider's catalogue (docs/architecture.md#background-loops): upserts its flavors,
/// updates cost and eviction per region, marks offers that disappeared unavailable (and available
/// again when they return), and deletes flavors unlisted for `FLAVOR_RETENTION` that no worker
/// uses. Offers in regions the catalog does not know are ignored. Returns the number of flavors
/// listed.
pub async fn apply_catalog(
    tx: &super::Tx<'_>,
    provider: (&str, &str),
    flavors: &[CatalogFlavor],
) -> Result<usize> {
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&NS_CATALOG])
        .await?;
    let Some(provider_id) = tx
        .query_opt(
            "SELECT provider_id FROM provider WHERE provider_name = $1 AND config_name = $2",
            &[&provider.0, &provider.1],
        )
        .await?
        .map(|r| r.get::<_, i32>(0))
    else {
        return Err(Error::not_found(format!(
            "provider {}.{} not found",
            provider.0, provider.1
        )));
    };
    let upsert = tx
        .prepare_cached(
            "INSERT INTO flavor (provider_id, flavor_name, cpu, mem, disk, bandwidth, gpu, gpumem,
                                 has_gpu, has_quick_disks, seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
             ON CONFLICT (provider_id, flavor_name) DO UPDATE SET
                 cpu = EXCLUDED.cpu, mem = EXCLUDED.mem, disk = EXCLUDED.disk,
                 bandwidth = EXCLUDED.bandwidth, gpu = EXCLUDED.gpu, gpumem = EXCLUDED.gpumem,
                 has_gpu = EXCLUDED.has_gpu, has_quick_disks = EXCLUDED.has_quick_disks,
                 seen_at = now()
             RETURNING flavor_id",
        )
        .await?;
    let mut listed: Vec<i32> = Vec::with_capacity(flavors.len());
    for f in flavors {
        let flavor_id: i32 = tx
            .query_one(
                &upsert,
                &[
                    &provider_id,
                    &f.name,
                    &f.cpu,
                    &f.mem,
                    &f.disk,
                    &f.bandwidth,
                    &f.gpu,
                    &f.gpumem,
                    &f.has_gpu,
                    &f.has_quick_disks,
                ],
            )
            .await?
            .get(0);
        listed.push(flavor_id);
        let names: Vec<&str> = f.offers.iter().map(|o| o.0.as_str()).collect();
        let costs: Vec<f64> = f.offers.iter().map(|o| o.1).collect();
        let evictions: Vec<f64> = f.offers.iter().map(|o| o.2).collect();
        tx.execute(
            "INSERT INTO flavor_region (flavor_id, region_id, cost, eviction, available)
             SELECT $1, r.region_id, o.cost, o.eviction, true
               FROM unnest($3::text[], $4::float8[], $5::float8[]) AS o(name, cost, eviction)
               JOIN region r ON r.provider_id = $2 AND r.region_name = o.name
             ON CONFLICT (flavor_id, region_id) DO UPDATE SET
                 cost = EXCLUDED.cost, eviction = EXCLUDED.eviction, available = true",
            &[&flavor_id, &provider_id, &names, &costs, &evictions],
        )
        .await?;
        tx.execute(
            "UPDATE flavor_region fr SET available = false
               FROM region r
              WHERE fr.flavor_id = $1 AND r.region_id = fr.region_id AND fr.available
                AND NOT (r.region_name = ANY($2::text[]))",
            &[&flavor_id, &names],
        )
        .await?;
    }
    // Flavors the provider no longer lists: unavailable everywhere, deleted after the retention.
    tx.execute(
        "UPDATE flavor_region fr SET available = false
           FROM flavor f
          WHERE f.flavor_id = fr.flavor_id AND f.provider_id = $1 AND fr.available
            AND f.seen_at IS NOT NULL AND NOT (f.flavor_id = ANY($2::int4[]))",
        &[&provider_id, &listed],
    )
    .await?;
    let retention = FLAVOR_RETENTION.as_secs_f64();
    tx.execute(
        "DELETE FROM flavor f
          WHERE f.provider_id = $1 AND NOT (f.flavor_id = ANY($2::int4[]))
            AND f.seen_at < now() - make_interval(secs => $3)
            AND NOT EXISTS (SELECT 1 FROM worker w WHERE w.flavor_id = f.flavor_id)",
        &[&provider_id, &listed, &retention],
    )
    .await?;
    Ok(listed.len())
}
