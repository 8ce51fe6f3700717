//! The HTTP API: a router built from the application state, so tests can call it directly.

pub mod auth;
pub mod error;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod tasks;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderName, Request};
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::db::Db;
use crate::jobs::{Runner, Store, Task};
use crate::lifecycle::Handle;

pub use auth::Auth;
pub use error::ApiError;
pub use metrics::Metrics;
pub use middleware::LiveSettings;

/// The job parts handlers use.
#[derive(Clone)]
pub struct JobsState {
    pub store: Store,
    pub runner: Runner,
    /// Enqueues the occurrences of the tasks' schedules.
    pub scheduler: crate::jobs::Scheduler,
}

/// A value a reload replaces; readers take a cheap `Arc` of the current one.
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: T) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(value))))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().expect("lock poisoned").clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().expect("lock poisoned") = Arc::new(value);
    }
}

/// Everything a handler may need. One `Arc`, because axum clones the state for every
/// request (bench/run measured the clone of nine `Arc`s at 5 % of a `/healthz`).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppStateInner {
    pub lifecycle: Handle,
    pub db: Db,
    pub live: Arc<LiveSettings>,
    /// The configuration in force (replaced on reload), with what is derived from it.
    pub config: Arc<Swap<Config>>,
    pub tasks: Arc<Swap<BTreeMap<String, Arc<Task>>>>,
    pub auth: Arc<Swap<Auth>>,
    pub jobs: JobsState,
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document of the routes, which `/v1/openapi.json` writes out per task.
    pub openapi: openapi::BaseDoc,
}

impl AppStateInner {
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn tasks(&self) -> Arc<BTreeMap<String, Arc<Task>>> {
        self.tasks.get()
    }

    pub fn task(&self, name: &str) -> Option<Arc<Task>> {
        self.tasks().get(name).cloned()
    }

    pub fn auth(&self) -> Arc<Auth> {
        self.auth.get()
    }

    /// How long a readiness probe may wait for the database.
    pub fn probe_timeout(&self) -> Duration {
        self.config().database.connect_timeout
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(title = "shiftd", description = "Durable jobs over HTTP. Every error is {\"error\": code, \"message\": text}."),
    modifiers(&BearerAuth),
    tags((name = "jobs", description = "Start and follow jobs"), (name = "service", description = "Health and status"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI document made from the same list, so they cannot drift apart.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::status))
        .routes(routes!(jobs::create_job))
        .routes(routes!(jobs::create_jobs_batch))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::job_log))
        .routes(routes!(jobs::list_tasks))
        .routes(routes!(tasks::pause_task))
        .routes(routes!(tasks::resume_task))
        .split_for_parts()
}

/// The OpenAPI document served at `/v1/openapi.json`: the routes' own entries, plus the
/// two routes that are not handlers with a schema.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::{OperationBuilder, PathItem};
    use utoipa::openapi::{HttpMethod, ResponseBuilder};
    let (_, mut doc) = api();
    for (path, summary, body) in [
        ("/v1/openapi.json", "This document", "OpenAPI 3 document"),
        ("/metrics", "Prometheus metrics", "OpenMetrics text"),
    ] {
        let operation = OperationBuilder::new()
            .tag("service")
            .summary(Some(summary))
            .response("200", ResponseBuilder::new().description(body));
        doc.paths
            .paths
            .insert(path.into(), PathItem::new(HttpMethod::Get, operation));
    }
    doc
}

/// The whole API with its middleware.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let live = state.live.clone();
    let metrics = state.metrics.clone();
    let (routes, _) = api();
    let routes = routes
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics::render))
        .merge(crate::ui::routes())
        .with_state(state);
    let edge = Arc::new(middleware::Edge {
        live,
        metrics,
        body_limit,
    });
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, middleware::SequentialRequestId::new()))
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
            .layer(axum::extract::DefaultBodyLimit::max(body_limit))
            .layer(axum::middleware::from_fn_with_state(edge, middleware::edge)),
    )
}
