//! Prometheus metrics: requests by route and status, latency, jobs by task and state, job
//! durations, the previous stop's stage durations, and pool stats.

use std::time::{Duration, Instant};

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
use crate::jobs::JobState;

/// How long the job counts of `/metrics` are reused. Counting groups every job in the
/// database (45 ms at 160k jobs); scrapes come every 15 s or so, and a scraper, or anyone
/// who can reach the unauthenticated port, must not be able to make the database count
/// once per request.
pub const JOB_COUNTS_TTL: Duration = Duration::from_secs(5);

/// Jobs by task and state, as the store counts them.
type JobCounts = Vec<(String, JobState, i64)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
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
    /// The last job counts and when they were read. The lock is held across the query, so
    /// however many scrapes arrive at once, one query is in flight and the rest reuse it.
    job_counts: tokio::sync::Mutex<Option<(Instant, JobCounts)>>,
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
        let mut registry = Registry::with_prefix("shiftd");
        let requests = Family::<RouteStatus, Counter>::default();
        let latency =
            Family::<Route, Histogram>::new_with_constructor(|| Histogram::new(buckets()));
        let jobs = Family::<TaskState, Gauge>::default();
        let job_duration =
            Family::<TaskState, Histogram>::new_with_constructor(|| Histogram::new(buckets()));
        let stop_stage = Family::<StageLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let pool = Family::<PoolState, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response head",
            latency.clone(),
        );
        registry.register(
            "jobs",
            "Jobs by task and state (all processes sharing the database)",
            jobs.clone(),
        );
        registry.register(
            "job_attempt_duration_seconds",
            "Job attempts by task and outcome",
            job_duration.clone(),
        );
        registry.register(
            "previous_stop_stage_seconds",
            "How long each shutdown stage took in the stop before this process started",
            stop_stage.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state",
            pool.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            jobs,
            job_duration,
            stop_stage,
            pool,
            job_counts: tokio::sync::Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Records one job attempt.
    pub fn job_attempt(&self, task: &str, outcome: &str, took: Duration) {
        self.job_duration
            .get_or_create(&TaskState {
                task: task.into(),
                state: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts and times one request by its route pattern (not its raw path).
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.latency
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status,
            })
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

/// `GET /metrics` in the Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    // Held to the end: one render at a time, so no scrape sees another's half-set gauges.
    let mut cached = metrics.job_counts.lock().await;
    let fresh = matches!(&*cached, Some((at, _)) if at.elapsed() < JOB_COUNTS_TTL);
    if !fresh {
        let counts = state.jobs.store.counts().await?;
        metrics.jobs.clear();
        for (task, job_state, n) in &counts {
            metrics
                .jobs
                .get_or_create(&TaskState {
                    task: task.clone(),
                    state: job_state.as_str().into(),
                })
                .set(*n);
        }
        *cached = Some((Instant::now(), counts));
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
    drop(cached);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
