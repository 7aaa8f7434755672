//! REST helpers (stub: owned by web-session).
use std::sync::Arc;

use crate::server::state::AppState;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
}
