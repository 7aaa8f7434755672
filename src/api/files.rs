//! Remote file listing RPCs (FetchList, FetchInfo), through the storage layer configured with the
//! `rclone:` remotes. Errors keep their kind: a bad or unknown location (a `..` segment, a glob
//! malformed or too large) → InvalidArgument, nothing there → NotFound ("object not found"), a
//! remote that does not answer → Unavailable, a listing that takes longer than `FETCH_TIMEOUT` →
//! DeadlineExceeded.

use std::future::Future;
use std::time::Duration;

use tonic::Request;

use crate::api::state::AppState;
use crate::error::{Code, Error, Result};
use crate::proto as pb;

/// Longest a listing or stat may take (a recursive listing of a huge tree is cut off here).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded<T>(uri: &str, f: impl Future<Output = crate::storage::Result<T>>) -> Result<T> {
    match tokio::time::timeout(FETCH_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::new(
            Code::DeadlineExceeded,
            format!("{uri}: no answer within {}s", FETCH_TIMEOUT.as_secs()),
        )),
    }
}

fn required_uri(request: &Request<pb::FetchListRequest>) -> Result<&str> {
    let uri = request.get_ref().uri.trim();
    if uri.is_empty() {
        return Err(Error::invalid("uri is required"));
    }
    Ok(uri)
}

/// FetchList: a directory recursively, a glob's matches (rclone's filter rules, as the original:
/// see `storage::Glob`), or a file alone; full locations in the form given, directories suffixed
/// with `/`.
pub async fn fetch_list(
    state: &AppState,
    request: Request<pb::FetchListRequest>,
) -> Result<pb::FetchListResponse> {
    let uri = required_uri(&request)?;
    let files = bounded(uri, state.storage.list(uri)).await?;
    Ok(pb::FetchListResponse { files })
}

/// FetchInfo: stat of one object; a directory (or object-store prefix) has `is_dir`.
pub async fn fetch_info(
    state: &AppState,
    request: Request<pb::FetchListRequest>,
) -> Result<pb::FetchInfoResponse> {
    let uri = required_uri(&request)?;
    let info = bounded(uri, state.storage.stat(uri)).await?;
    Ok(pb::FetchInfoResponse {
        uri: info.uri,
        filename: info.filename,
        description: info.modified.unwrap_or_default(),
        size: i64::try_from(info.size).unwrap_or(i64::MAX),
        is_file: !info.is_dir,
        is_dir: info.is_dir,
    })
}
