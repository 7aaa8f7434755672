//! Catalog and credential RPCs (as the original scitq's): ListFlavors, ListProviders,
//! ListRegions, CreateFlavor (admin — the auth layer checks), GetRcloneConfig and
//! GetDockerCredentials (worker token or admin), GetWorkspaceRoot.

use tonic::Request;

use crate::api::state::AppState;
use crate::db::catalog::{self, Flavor, NewFlavor};
use crate::domain::catalog::LOCAL_PROVIDER;
use crate::domain::{limits, protofilter};
use crate::error::{Error, Result};
use crate::proto as pb;

fn flavor_to_pb(f: &Flavor) -> pb::Flavor {
    pb::Flavor {
        flavor_id: f.flavor_id,
        flavor_name: f.flavor_name.clone(),
        provider_id: f.provider_id,
        provider: f.provider.clone(),
        cpu: f.cpu,
        mem: f.mem as f32,
        disk: f.disk as f32,
        bandwidth: f.bandwidth,
        gpu: f.gpu.clone(),
        gpumem: f.gpumem,
        has_gpu: f.has_gpu,
        has_quick_disks: f.has_quick_disks,
        region_id: f.region_id,
        region: f.region.clone(),
        eviction: f.eviction as f32,
        cost: f.cost as f32,
    }
}

pub async fn list_flavors(
    state: &AppState,
    request: Request<pb::ListFlavorsRequest>,
) -> Result<pb::FlavorsList> {
    let req = request.into_inner();
    if req.limit < 0 {
        return Err(Error::invalid(format!(
            "limit must not be negative (got {})",
            req.limit
        )));
    }
    let filter = protofilter::parse(&req.filter)?;
    let rows = state
        .flavors
        .list(
            &state.db,
            &req.filter,
            &filter,
            i64::from(req.limit).min(limits::LIST_FLAVORS.max),
        )
        .await?;
    Ok(pb::FlavorsList {
        flavors: rows.iter().map(flavor_to_pb).collect(),
    })
}

pub async fn list_providers(state: &AppState, _request: Request<()>) -> Result<pb::ProviderList> {
    let providers = catalog::list_providers(&state.db).await?;
    // A `local` row stays in the table from when it was offered; it is listed only while it is.
    let offered = |p: &catalog::Provider| {
        state.config.local_provider
            || (p.provider_name.as_str(), p.config_name.as_str()) != LOCAL_PROVIDER
    };
    Ok(pb::ProviderList {
        providers: providers
            .into_iter()
            .filter(offered)
            .map(|p| pb::Provider {
                provider_id: p.provider_id,
                provider_name: p.provider_name,
                config_name: p.config_name,
            })
            .collect(),
    })
}

pub async fn list_regions(state: &AppState, _request: Request<()>) -> Result<pb::RegionList> {
    let regions = catalog::list_regions(&state.db).await?;
    Ok(pb::RegionList {
        regions: regions
            .into_iter()
            .map(|r| pb::Region {
                region_id: r.region_id,
                provider_id: r.provider_id,
                region_name: r.region_name,
                is_default: r.is_default,
            })
            .collect(),
    })
}

impl TryFrom<pb::FlavorCreateRequest> for NewFlavor {
    type Error = Error;

    fn try_from(r: pb::FlavorCreateRequest) -> Result<NewFlavor> {
        for (field, value) in [
            ("provider_name", &r.provider_name),
            ("config_name", &r.config_name),
            ("flavor_name", &r.flavor_name),
        ] {
            if value.trim().is_empty() {
                return Err(Error::invalid(format!("{field} is required")));
            }
        }
        if r.region_names.is_empty() {
            return Err(Error::invalid(
                "region_names: at least one region is required",
            ));
        }
        let n = r.region_names.len();
        for (field, list) in [("costs", &r.costs), ("evictions", &r.evictions)] {
            if !list.is_empty() && list.len() != n {
                return Err(Error::invalid(format!(
                    "{field} has {} values for {n} regions: give one per region, or none",
                    list.len()
                )));
            }
            if list.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(Error::invalid(format!(
                    "{field} must be non-negative numbers"
                )));
            }
        }
        if r.cpu < 0
            || !(r.memory.is_finite() && r.memory >= 0.0)
            || !(r.disk.is_finite() && r.disk >= 0.0)
        {
            return Err(Error::invalid("cpu, memory and disk must be non-negative"));
        }
        if r.bandwidth.is_some_and(|b| b < 0) || r.gpumem.is_some_and(|g| g < 0) {
            return Err(Error::invalid("bandwidth and gpumem must be non-negative"));
        }
        let regions = r
            .region_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let cost = r.costs.get(i).copied().unwrap_or(0.0);
                let eviction = r.evictions.get(i).copied().unwrap_or(0.0);
                (name.clone(), f64::from(cost), f64::from(eviction))
            })
            .collect();
        Ok(NewFlavor {
            provider_name: r.provider_name,
            config_name: r.config_name,
            flavor_name: r.flavor_name,
            cpu: r.cpu,
            mem: f64::from(r.memory),
            disk: f64::from(r.disk),
            bandwidth: r.bandwidth,
            gpu: r.gpu,
            gpumem: r.gpumem,
            has_gpu: r.has_gpu.unwrap_or(false),
            has_quick_disks: r.has_quick_disks.unwrap_or(false),
            regions,
        })
    }
}

pub async fn create_flavor(
    state: &AppState,
    request: Request<pb::FlavorCreateRequest>,
) -> Result<pb::FlavorId> {
    let flavor = NewFlavor::try_from(request.into_inner())?;
    let flavor_id = catalog::create_flavor(&state.db, &flavor).await?;
    state.flavors.invalidate();
    tracing::info!(flavor_id, flavor = %flavor.flavor_name, provider = %format!("{}.{}", flavor.provider_name, flavor.config_name), "flavor created");
    Ok(pb::FlavorId { flavor_id })
}

pub async fn get_rclone_config(
    state: &AppState,
    _request: Request<()>,
) -> Result<pb::RcloneRemotes> {
    Ok(state.secrets.rclone().await)
}

pub async fn get_docker_credentials(
    state: &AppState,
    _request: Request<()>,
) -> Result<pb::DockerCredentials> {
    Ok(state.secrets.docker().await)
}

pub async fn get_workspace_root(
    state: &AppState,
    request: Request<pb::WorkspaceRootRequest>,
) -> Result<pb::WorkspaceRootResponse> {
    let req = request.into_inner();
    if req.provider.trim().is_empty() {
        return Err(Error::invalid("provider is required (e.g. azure.primary)"));
    }
    let root_uri = state.secrets.workspace_root(&req.provider, &req.region)?;
    Ok(pb::WorkspaceRootResponse { root_uri })
}
