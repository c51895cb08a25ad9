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

use std::collections::{BTreeMap, HashMap};

use crate::{
    metrics::PoolSnapshot,
    state::{Shared, now_ms},
    store::PoolRecord,
};

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

/// Per-pool health from this replica's sessions (connected, stale,
/// draining, samples, drift) and the store (offline, revoked: the same on
/// every replica).
async fn pool_snapshots(state: &Shared) -> Vec<PoolSnapshot> {
    let interval = state.config.heartbeat_interval;
    let now = now_ms();
    let mut pools: BTreeMap<(String, String), PoolSnapshot> = BTreeMap::new();
    let mut pins: HashMap<String, HashMap<String, PoolRecord>> = HashMap::new();
    let entry = |pools: &mut BTreeMap<(String, String), PoolSnapshot>, org: &str, pool: &str| {
        pools
            .entry((org.to_owned(), pool.to_owned()))
            .or_insert_with(|| PoolSnapshot {
                org: org.to_owned(),
                pool: pool.to_owned(),
                ..PoolSnapshot::default()
            })
            .clone()
    };
    for s in state.registry.all() {
        if s.connection.is_closed() {
            continue;
        }
        if !pins.contains_key(&s.org_id) {
            let list = state.store.list_pools(&s.org_id).await.unwrap_or_default();
            pins.insert(
                s.org_id.clone(),
                list.into_iter().map(|p| (p.name.clone(), p)).collect(),
            );
        }
        let mut p = entry(&mut pools, &s.org_id, &s.pool);
        let st = if s.is_stale(interval) {
            "stale"
        } else if s.is_draining() {
            "draining"
        } else {
            "connected"
        };
        *p.states.entry(st).or_default() += 1;
        let pin = pins.get(&s.org_id).and_then(|m| m.get(&s.pool));
        if pin.is_some_and(|pin| {
            (!pin.pinned_version.is_empty() && pin.pinned_version != s.hello.version)
                || (!pin.pinned_config_hash.is_empty()
                    && pin.pinned_config_hash != s.hello.config_hash)
        }) {
            p.drifted += 1;
        }
        if let Some(h) = s.heartbeat().sample {
            let cpu = h.process_cpu_percent / 100.0;
            p.cpu_max_ratio = Some(p.cpu_max_ratio.map_or(cpu, |m| m.max(cpu)));
            p.memory_max_bytes = Some(p.memory_max_bytes.unwrap_or(0).max(h.process_rss_bytes));
            if h.workspace_disk_total_bytes > 0 {
                p.disk_free_min_bytes = Some(
                    p.disk_free_min_bytes
                        .map_or(h.workspace_disk_free_bytes, |m| {
                            m.min(h.workspace_disk_free_bytes)
                        }),
                );
            }
            if h.workspace_inodes_total > 0 {
                p.inodes_free_min = Some(
                    p.inodes_free_min
                        .map_or(h.workspace_inodes_free, |m| m.min(h.workspace_inodes_free)),
                );
            }
            if h.certificate_not_after_unix_ms > 0 {
                let left = (h.certificate_not_after_unix_ms - now) as f64 / 1000.0;
                p.certificate_expiry_min_seconds = Some(
                    p.certificate_expiry_min_seconds
                        .map_or(left, |m| m.min(left)),
                );
            }
            if !h.problem_code.is_empty() {
                *p.problems.entry(h.problem_code.clone()).or_default() += 1;
            }
        }
        pools.insert((s.org_id.clone(), s.pool.clone()), p);
    }
    let offline_before =
        now.saturating_sub(i64::try_from((interval * 3).as_millis()).unwrap_or(i64::MAX));
    match state.store.agent_counts(offline_before).await {
        Ok(counts) => {
            for (org, pool, offline, revoked) in counts {
                let mut p = entry(&mut pools, &org, &pool);
                p.states
                    .insert("offline", i64::try_from(offline).unwrap_or(i64::MAX));
                p.states
                    .insert("revoked", i64::try_from(revoked).unwrap_or(i64::MAX));
                pools.insert((org, pool), p);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count agents in the store"),
    }
    pools.into_values().collect()
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// text format otherwise (promtool, curl, older scrapers).
async fn metrics(
    AxumState(state): AxumState<Shared>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    state.metrics.set_pools(&pool_snapshots(&state).await);
    match state.store.job_counts().await {
        Ok(counts) => state.metrics.set_jobs(&counts),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count jobs in the store"),
    }
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
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_prometheus_text(),
        )
    }
}
