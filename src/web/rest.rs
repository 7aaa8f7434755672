//! The REST helpers of the web listener (`/login`, `/fetchCookie`, `/logout`, `/WorkerToken`).

use std::sync::Arc;

use axum::Router;

use crate::server::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
