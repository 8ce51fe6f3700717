//! Liveness, readiness and status.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::error_response;
use super::AppState;
use crate::config::fmt_duration;
use crate::jobs::JobState;

/// 200 while the process serves at all.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, description = "Serving")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 only when the database answers and the service is not stopping.
#[utoipa::path(get, path = "/readyz", tag = "service", responses((status = 200, description = "Ready"), (status = 503, description = "Draining, or the database does not answer", body = super::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.lifecycle.is_stopping() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this process is stopping",
        );
    }
    // A database that answers reads but cannot write (disk full, read-only) is not ready.
    if let Some(fault) = state.jobs.runner.storage_fault() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &fault.reason);
    }
    // How long a readiness probe may wait for the database.
    let probe_timeout = state.snapshot().config.database.connect_timeout;
    if !state.db.ping(probe_timeout).await {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "database: it did not answer; check database.url and the server",
        );
    }
    Json(json!({ "status": "ready" })).into_response()
}

/// The state of this process, for people and monitors.
#[utoipa::path(get, path = "/v1/status", tag = "service", responses((status = 200, description = "State, budgets, pool, queue depth and running jobs")))]
pub async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let snapshot = state.snapshot();
    let config = &snapshot.config;
    let s = &config.shutdown;
    let view = state.jobs.runner.view();
    Json(json!({
        "state": state.lifecycle.state(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.lifecycle.uptime().as_secs(),
        "in_flight_requests": state.lifecycle.in_flight(),
        "open_connections": state.lifecycle.connections(),
        "database": {
            "backend": format!("{:?}", state.db.backend).to_lowercase(),
            "location": state.db.location,
            "pool": state.db.stats(),
            "size_bytes": view.size_bytes,
        },
        "storage": state.jobs.runner.storage_fault().map(|f| json!({ "kind": f.kind, "reason": f.reason })),
        "budgets": {
            "grace": fmt_duration(s.grace),
            "http_drain": fmt_duration(s.http_drain),
            "idle_close": fmt_duration(s.idle_close),
            "jobs_drain": fmt_duration(s.jobs_drain),
            "flush": fmt_duration(s.flush),
            "db_close": fmt_duration(s.db_close),
            "stop_total": fmt_duration(config.stop_budget()),
            "request_timeout": fmt_duration(config.http.request_timeout),
        },
        "unserved": view.unserved,
        "jobs": JobState::ALL.iter().map(|st| (st.as_str().to_string(), json!(view.counts.iter().filter(|(_, s, _)| s == st).map(|(_, _, n)| n).sum::<i64>()))).collect::<serde_json::Map<_, _>>(),
        "node": state.jobs.runner.node(),
        "paused": view.paused.iter().map(|(task, at)| (task.clone(), json!(crate::jobs::store::format_ms(*at)))).collect::<serde_json::Map<_, _>>(),
        "queue": view.depth.into_iter().map(|(task, (queued, running))| (task, json!({ "queued": queued, "running": running }))).collect::<serde_json::Map<_, _>>(),
        "running_jobs": state.jobs.runner.running(),
        "buffered_output_lines": state.jobs.runner.buffered_lines(),
        "auth": if snapshot.auth.enabled() { "tokens" } else { "open" },
    }))
}
