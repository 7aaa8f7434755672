//! Catalog and credential RPCs: flavors, providers, regions, rclone and docker secrets, workspace roots.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "catalog and credentials (fleet issue)";

pub async fn list_flavors(
    _state: &AppState,
    _request: Request<pb::ListFlavorsRequest>,
) -> Result<pb::FlavorsList> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_providers(_state: &AppState, _request: Request<()>) -> Result<pb::ProviderList> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_regions(_state: &AppState, _request: Request<()>) -> Result<pb::RegionList> {
    Err(Error::unimplemented(AREA))
}

pub async fn create_flavor(
    _state: &AppState,
    _request: Request<pb::FlavorCreateRequest>,
) -> Result<pb::FlavorId> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_rclone_config(
    _state: &AppState,
    _request: Request<()>,
) -> Result<pb::RcloneRemotes> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_docker_credentials(
    _state: &AppState,
    _request: Request<()>,
) -> Result<pb::DockerCredentials> {
    Err(Error::unimplemented(AREA))
}

pub async fn get_workspace_root(
    _state: &AppState,
    _request: Request<pb::WorkspaceRootRequest>,
) -> Result<pb::WorkspaceRootResponse> {
    Err(Error::unimplemented(AREA))
}
