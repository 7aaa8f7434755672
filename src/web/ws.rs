//! The WebSocket `/ws` of the web listener (behavior.md Appendix A).

use std::sync::Arc;

use axum::Router;

use crate::server::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
