//! Prometheus metrics: requests by route and status, latency, jobs by task and state, job
//! durations, the previous stop's stage durations, and pool stats.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

/// A route pattern as a label, kept once for the life of the process, so counting a
/// request allocates nothing. The patterns are the router's own (a request's raw path
/// never gets here), so what is kept is bounded by the routes.
pub fn route_label(route: &str) -> &'static str {
    static SEEN: std::sync::RwLock<std::collections::BTreeSet<&'static str>> =
        std::sync::RwLock::new(std::collections::BTreeSet::new());
    if let Some(seen) = SEEN.read().expect("poisoned").get(route) {
        return seen;
    }
    let mut seen = SEEN.write().expect("poisoned");
    if let Some(kept) = seen.get(route) {
        return kept;
    }
    let kept: &'static str = Box::leak(route.to_owned().into_boxed_str());
    seen.insert(kept);
    kept
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskState {
    task: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    state: String,
}

/// The registry of one process (no globals, so tests can run several).
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<Route, Histogram>,
    jobs: Family<TaskState, Gauge>,
    job_duration: Family<TaskState, Histogram>,
    stop_stage: Family<StageLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pool: Family<PoolState, Gauge>,
    database_size: Gauge,
    unserved: Family<Task, Gauge>,
    paused: Family<Task, Gauge>,
    storage_fault: Gauge,
    /// Notice deliveries by task and outcome (delivered, retried, given_up).
    notices: Family<TaskState, Counter>,
    notices_pending: Gauge,
    /// One render at a time, so no scrape sees another's half-set gauges.
    render: std::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Task {
    task: String,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 1800.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("shiftd"),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(buckets())),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            stop_stage: Family::default(),
            pool: Family::default(),
            database_size: Gauge::default(),
            unserved: Family::default(),
            paused: Family::default(),
            storage_fault: Gauge::default(),
            notices: Family::default(),
            notices_pending: Gauge::default(),
            render: std::sync::Mutex::new(()),
        };
        metrics.register();
        metrics
    }
}

impl Metrics {
    /// Names and describes every metric, in the order `/metrics` lists them.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "notices",
            "Notice deliveries by task and outcome: delivered, retried (a try failed), given_up",
            self.notices.clone(),
        );
        r.register(
            "notices_pending",
            "Notices in the outbox, of all nodes sharing the database (read every 10 s)",
            self.notices_pending.clone(),
        );
        r.register(
            "database_size_bytes",
            "Size of the database on disk",
            self.database_size.clone(),
        );
        r.register(
            "jobs_unserved",
            "Queued jobs of tasks that no live node serves",
            self.unserved.clone(),
        );
        r.register(
            "task_paused",
            "1 for a configured task that is paused (its queued jobs wait), else 0",
            self.paused.clone(),
        );
        r.register(
            "storage_fault",
            "1 while writes to the database fail (disk full, read-only, unavailable)",
            self.storage_fault.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to produce the response head",
            self.latency.clone(),
        );
        r.register(
            "jobs",
            "Jobs by task and state (all processes sharing the database)",
            self.jobs.clone(),
        );
        r.register(
            "job_attempt_duration_seconds",
            "Job attempts by task and outcome",
            self.job_duration.clone(),
        );
        r.register(
            "previous_stop_stage_seconds",
            "How long each shutdown stage took in the stop before this process started",
            self.stop_stage.clone(),
        );
        r.register(
            "db_pool_connections",
            "Database pool connections by state",
            self.pool.clone(),
        );
    }

    /// Records one job attempt.
    pub fn job_attempt(&self, task: &str, outcome: &str, took: Duration) {
        self.job_duration
            .get_or_create(&TaskState {
                task: task.into(),
                state: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one notice delivery try's outcome.
    pub fn notice(&self, task: &str, outcome: &str) {
        self.notices
            .get_or_create(&TaskState {
                task: task.into(),
                state: outcome.into(),
            })
            .inc();
    }

    /// Notices waiting in the outbox.
    pub fn notices_pending(&self, n: i64) {
        self.notices_pending.set(n);
    }

    /// Counts and times one request by its route pattern (not its raw path).
    /// `route` is a [`route_label`] or a fixed text.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.latency
            .get_or_create(&Route { route })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
    }

    /// Records the stage durations of the previous stop (read from the state directory).
    pub fn previous_stop(&self, stages: &[(String, f64)]) {
        for (stage, seconds) in stages {
            self.stop_stage
                .get_or_create(&StageLabel {
                    stage: stage.clone(),
                })
                .set(*seconds);
        }
    }
}

/// `GET /metrics` in the Prometheus text format. Served from memory: the job counts and
/// the database size are what the runner's upkeep loop last read (every few seconds), so a
/// scrape costs no query however large the jobs table is.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let view = state.jobs.runner.view();
    let one_render = metrics.render.lock().expect("metrics lock poisoned");
    metrics.database_size.set(view.size_bytes.unwrap_or(0));
    metrics.unserved.clear();
    for (task, n) in view.unserved {
        metrics.unserved.get_or_create(&Task { task }).set(n);
    }
    metrics.paused.clear();
    for task in state.snapshot().tasks.keys() {
        metrics
            .paused
            .get_or_create(&Task { task: task.clone() })
            .set(i64::from(view.paused.contains_key(task)));
    }
    metrics
        .storage_fault
        .set(i64::from(state.jobs.runner.storage_fault().is_some()));
    metrics.jobs.clear();
    for (task, job_state, n) in view.counts {
        metrics
            .jobs
            .get_or_create(&TaskState {
                task,
                state: job_state.as_str().into(),
            })
            .set(n);
    }
    let pool = state.db.stats();
    metrics
        .pool
        .get_or_create(&PoolState {
            state: "idle".into(),
        })
        .set(i64::from(pool.idle));
    metrics
        .pool
        .get_or_create(&PoolState {
            state: "in_use".into(),
        })
        .set(i64::from(pool.size.saturating_sub(pool.idle)));
    metrics
        .pool
        .get_or_create(&PoolState {
            state: "max".into(),
        })
        .set(i64::from(pool.max));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .map_err(|e| ApiError::Internal(e.into()))?;
    drop(one_render);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
