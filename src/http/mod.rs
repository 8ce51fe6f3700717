//! The HTTP API: a router built from the application state, so tests can call it directly.

pub mod error;
pub mod health;
pub mod middleware;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, Request};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::db::Db;
use crate::lifecycle::Handle;

pub use error::ApiError;
pub use middleware::LiveSettings;

/// Everything a handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub lifecycle: Handle,
    pub db: Db,
    pub live: Arc<LiveSettings>,
    /// The configuration in force (replaced on reload).
    pub config: Arc<std::sync::RwLock<Arc<Config>>>,
}

impl AppState {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock poisoned").clone()
    }

    /// How long a readiness probe may wait for the database.
    pub fn probe_timeout(&self) -> Duration {
        self.config().database.connect_timeout
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API with its middleware.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let live = state.live.clone();
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/status", get(health::status))
        .with_state(state);
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request<_>| {
                        let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                        tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
                    })
                    .on_request(())
                    .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG))
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(axum::middleware::from_fn(middleware::json_errors))
            .layer(axum::extract::DefaultBodyLimit::max(body_limit))
            .layer(axum::middleware::from_fn_with_state(live, middleware::request_timeout)),
    )
}
