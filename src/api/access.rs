//! The per-object half of the access table (`rpcs::Access::Owned` and `Machines`): handlers call
//! these with the object they are about to change. The rules are `domain::ownership`; the
//! lookups `db::ownership`.

use tonic::Request;

use crate::api::auth::Caller;
use crate::api::state::AppState;
use crate::db::ownership::{self, Object, Placement};
use crate::domain::catalog::LOCAL_PROVIDER;
use crate::domain::ownership::{Actor, Owner, may_manage_machines};
use crate::error::{Error, Result};

/// Who sent `request`.
pub fn actor<T>(request: &Request<T>) -> Actor {
    Caller::of(request).actor()
}

/// The owner an object created by the sender of `request` records.
pub fn new_owner<T>(request: &Request<T>) -> Owner {
    Owner::of(actor(request))
}

/// `PermissionDenied` unless `actor` owns `object` or is an admin (missing objects pass).
pub async fn owned(state: &AppState, actor: Actor, object: Object<'_>) -> Result<()> {
    ownership::check(&state.db, actor, object).await
}

/// The machines a request acts on.
#[derive(Debug, Clone, Copy)]
pub enum Machines {
    /// New workers of this flavor in this region.
    New { flavor_id: i32, region_id: i32 },
    /// An existing worker.
    Worker(i32),
    /// Whatever a recruiter may deploy: any offered provider.
    AnyProvider,
}

/// Refuses plain users where a provider without a quota (for the region concerned, when known)
/// is involved, or a self-registered worker (`PermissionDenied`); refuses the `local`
/// provider unless `--local-provider` is set (`FailedPrecondition`). Unknown flavors, regions and
/// workers, and mismatched ones, pass: the RPC itself refuses them.
pub async fn machines(state: &AppState, actor: Actor, target: Machines) -> Result<()> {
    let placements: Vec<Placement> = match target {
        Machines::New {
            flavor_id,
            region_id,
        } => {
            let by_region = ownership::region_placement(&state.db, region_id).await?;
            let by_flavor = ownership::flavor_placement(&state.db, flavor_id).await?;
            if let (Some(r), Some(f)) = (&by_region, &by_flavor)
                && (&r.provider, &r.config) != (&f.provider, &f.config)
            {
                // A flavor of another provider than the region's: CreateWorker refuses it.
                return Ok(());
            }
            by_region.into_iter().chain(by_flavor).collect()
        }
        Machines::Worker(id) => match ownership::worker_placement(&state.db, id).await? {
            // No such worker: the RPC answers NotFound.
            None => return Ok(()),
            Some(Some(p)) => vec![p],
            // Self-registered: nothing bounds what is done to it.
            Some(None) if actor.is_admin() || actor == Actor::WorkerToken => return Ok(()),
            Some(None) => return Err(admin_only()),
        },
        Machines::AnyProvider => offered(state),
    };
    let is_local = |p: &Placement| (p.provider.as_str(), p.config.as_str()) == LOCAL_PROVIDER;
    if matches!(target, Machines::New { .. })
        && !state.config.local_provider
        && placements.iter().any(is_local)
    {
        return Err(Error::failed_precondition(
            "the local provider is not offered: start the server with --local-provider \
             (TASKQUEUE_LOCAL_PROVIDER, local_provider) to run workers on its host",
        ));
    }
    let has_quota = placements.iter().all(|p| has_quota(state, p));
    if may_manage_machines(actor, has_quota) {
        return Ok(());
    }
    Err(admin_only())
}

fn admin_only() -> Error {
    Error::permission_denied(
        "these machines are on a provider without a quota: only an admin may manage them",
    )
}

/// The providers the configuration offers, `local.local` included when enabled.
fn offered(state: &AppState) -> Vec<Placement> {
    let mut out: Vec<Placement> = state
        .config
        .providers
        .iter()
        .filter(|(class, _)| class.as_str() != LOCAL_PROVIDER.0 || state.config.local_provider)
        .flat_map(|(class, configs)| {
            configs.keys().map(move |name| Placement {
                provider: class.clone(),
                config: name.clone(),
                region: None,
            })
        })
        .collect();
    let local = Placement {
        provider: LOCAL_PROVIDER.0.to_string(),
        config: LOCAL_PROVIDER.1.to_string(),
        region: None,
    };
    if state.config.local_provider && !out.contains(&local) {
        out.push(local);
    }
    out
}

/// A quota bounds the placement: the provider has quotas, and (region known) one for its region.
fn has_quota(state: &AppState, p: &Placement) -> bool {
    let Some(cfg) = state
        .config
        .providers
        .get(&p.provider)
        .and_then(|configs| configs.get(&p.config))
    else {
        return false;
    };
    match &p.region {
        Some(region) => cfg.quotas.contains_key(region),
        None => !cfg.quotas.is_empty(),
    }
}
