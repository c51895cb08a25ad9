//! The ops HTTP port: `/healthz` (the process answers), `/readyz` (store
//! reachable, gRPC listener serving, not draining) and `/metrics`
//! (Prometheus text). No secrets and no per-agent detail here.

use axum::{
    Router,
    extract::State as AxumState,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Serves the ops port until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn readyz(AxumState(state): AxumState<Shared>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if !state.is_serving() {
        problems.push("the gRPC listener is not serving (starting or draining)".to_owned());
    }
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: the store does not answer");
        problems.push("the store does not answer".to_owned());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

async fn metrics(AxumState(state): AxumState<Shared>) -> impl IntoResponse {
    let interval = state.config.heartbeat_interval;
    let sessions = state.registry.all();
    let oldest = sessions
        .iter()
        .map(|s| s.heartbeat().at.elapsed().as_secs_f64())
        .fold(0.0_f64, f64::max);
    let stale = sessions.iter().filter(|s| s.is_stale(interval)).count();
    state
        .metrics
        .set_heartbeat_ages(oldest, i64::try_from(stale).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
