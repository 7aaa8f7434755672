//! WebSocket `/ws` (stub: owned by the web-ws area).

use std::sync::Arc;

use crate::server::state::AppState;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
}
