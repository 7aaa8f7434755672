//! Remote file listing RPCs (FetchList, FetchInfo).

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "remote file listing (templates issue)";

pub async fn fetch_list(
    _state: &AppState,
    _request: Request<pb::FetchListRequest>,
) -> Result<pb::FetchListResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn fetch_info(
    _state: &AppState,
    _request: Request<pb::FetchListRequest>,
) -> Result<pb::FetchInfoResponse> {
    Err(Error::unimplemented(AREA))
}
