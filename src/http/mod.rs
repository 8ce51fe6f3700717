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
use std::sync::Arc;

use arc_swap::ArcSwap;

use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
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

/// The job parts handlers use.
#[derive(Clone)]
pub struct JobsState {
    pub store: Store,
    pub runner: Runner,
    /// Enqueues the occurrences of the tasks' schedules.
    pub scheduler: crate::jobs::Scheduler,
}

/// Everything a handler may need. One `Arc`, because axum clones the state for every
/// request (bench/run measured the clone of nine `Arc`s at 5 % of a `/healthz`).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    /// The state, with the runner and the scheduler built but not started: building it has
    /// no effect beyond the objects themselves, so a test can build a router without jobs
    /// running, and the service starts them as it begins to serve ([`AppState::start_work`]).
    pub fn new(
        lifecycle: Handle,
        db: Db,
        snapshot: Snapshot,
        jobs: JobsState,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self(Arc::new(AppStateInner {
            lifecycle,
            db,
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            jobs,
            metrics,
            openapi: openapi::BaseDoc::new(),
            working: std::sync::Once::new(),
        }))
    }

    /// Starts the runner (claiming, flushing, upkeep) and the scheduler, which ends as the
    /// stop begins. Once; later calls do nothing.
    pub fn start_work(&self) {
        self.working.call_once(|| {
            self.jobs.runner.start();
            self.jobs.scheduler.start(self.lifecycle.stopping());
        });
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// Everything a reload replaces, as one immutable value: a request reads one snapshot and
/// sees the configuration, tasks and tokens of one moment, never new tokens beside old tasks.
pub struct Snapshot {
    /// The configuration in force (also the request and body-read timeouts the edge applies).
    pub config: Config,
    pub tasks: BTreeMap<String, Arc<Task>>,
    pub auth: Auth,
}

impl Snapshot {
    pub fn task(&self, name: &str) -> Option<&Arc<Task>> {
        self.tasks.get(name)
    }
}

/// What [`AppState`] holds.
pub struct AppStateInner {
    pub lifecycle: Handle,
    pub db: Db,
    /// What a reload replaces, swapped at once. Reads are lock-free; a request loads it once.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub jobs: JobsState,
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document of the routes, which `/v1/openapi.json` writes out per task.
    pub openapi: openapi::BaseDoc,
    /// Set once the runner and the scheduler have been started (see [`AppState::start_work`]).
    pub(crate) working: std::sync::Once,
}

impl AppStateInner {
    /// The snapshot in force, for use within one request that does not await while it
    /// holds it (a cheap guard, no reference count touched).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The snapshot in force, to keep across awaits.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces what a reload replaces, all at once.
    pub fn replace(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}

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
    let snapshot = state.snapshot.clone();
    let metrics = state.metrics.clone();
    let (routes, _) = api();
    let routes = routes
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics::render))
        .merge(crate::ui::routes())
        .with_state(state);
    let edge = Arc::new(middleware::Edge {
        snapshot,
        metrics,
        body_limit,
        ids: middleware::RequestIds::new(),
    });
    routes.layer(
        ServiceBuilder::new()
            .layer(axum::extract::DefaultBodyLimit::max(body_limit))
            .layer(middleware::EdgeLayer(edge)),
    )
}
