//! `/metrics`, `/healthz` and `/readyz` on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::Error;
use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the API answered and the replica runs or stands by for the lease. A standby
    /// is ready too: otherwise a two-replica Deployment never finishes its rollout and
    /// `helm install --wait` hangs.
    pub ready: Arc<AtomicBool>,
    /// Whether this replica holds the lease and runs the controller (the `/readyz` body).
    pub leading: Arc<AtomicBool>,
}

/// Serve until the process ends.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<(), Error> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move { h.metrics.encode() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match (
                    h.ready.load(Ordering::Relaxed),
                    h.leading.load(Ordering::Relaxed),
                ) {
                    (true, true) => (StatusCode::OK, "ok: leading"),
                    (true, false) => (StatusCode::OK, "ok: standby"),
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
                }
            }),
        )
        .with_state(health);
    let serve_error = |source| Error::Serve {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(serve_error)?;
    axum::serve(listener, app).await.map_err(serve_error)
}
