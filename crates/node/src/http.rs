//! The node's HTTP server on the console address: the JSON API ([`crate::api`]) and the
//! operator console ([`crate::console`]) side by side, with `/healthz`, one body limit and
//! the console's security headers on every answer. The only module that knows both
//! presentations.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::{middleware, Router};
use tokio::net::TcpListener;

use crate::{api, console, Shared};

/// Request bodies accepted, at most (a batch of sends is the largest).
const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Every route the node serves over HTTP.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api::routes(shared.clone()))
        .merge(console::router())
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn(console::security_headers))
        .with_state(shared)
}

/// Serve until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.clone();
    let app = router(shared).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}
