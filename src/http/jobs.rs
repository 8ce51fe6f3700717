//! The jobs API: start, read, list, cancel, follow the log, list tasks.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::{AppState, Snapshot};
use crate::dbfault::{classify, FaultKind};
use crate::jobs::store::NewJob;
use crate::jobs::{Job, JobPage, JobState, ListFilter, OutputLine};

/// Lines of output included in `GET /v1/jobs/{id}`.
const TAIL_LINES: i64 = 20;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Lines read from the database at a time when a whole log streams: what one response
/// holds in memory, however long the log.
const LOG_PAGE_LINES: i64 = 1000;
/// Largest `limit` of a log page.
const MAX_LOG_LIMIT: i64 = 10_000;

/// The latest start a job can be given: 9999-12-31T23:59:59.999Z, the last time RFC 3339
/// can write. A later `run_at` or a longer `delay` is taken as this.
pub const LATEST_START_MS: i64 = 253_402_300_799_999;

/// The body of a start request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Parameter values by name; each must match the task's rule.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Start no earlier than this time (RFC 3339 with any offset, e.g.
    /// "2026-11-22T03:00:00+01:00"): the job is `scheduled` until then. A time in the past
    /// means now (as Sidekiq's `perform_at` and River's `ScheduledAt`). Not together with
    /// `delay`.
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Start after this long, e.g. "10m", "2h 30m" (numbers with ms, s, m, h or d; the
    /// server also takes longer unit names such as "2hours"). Not together with `run_at`.
    #[schema(
        pattern = r"^[0-9]{1,6}(ms|s|m|h|d)( [0-9]{1,6}(ms|s|m|h|d)){0,3}$",
        max_length = 64
    )]
    pub delay: Option<String>,
}

/// One job of a batch: its parameters and, optionally, its idempotency key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchJob {
    /// Parameter values by name; each must match the task's rule.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// As the `Idempotency-Key` header of a single start: the same key and parameters
    /// within 24 h name the same job, also within one batch (a repeat with other
    /// parameters is refused, 409). 1 to 200 visible ASCII characters; keys are per token.
    #[schema(pattern = "^[!-~]{1,200}$", min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
    /// As `run_at` of a single start.
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// As `delay` of a single start.
    #[schema(
        pattern = r"^[0-9]{1,6}(ms|s|m|h|d)( [0-9]{1,6}(ms|s|m|h|d)){0,3}$",
        max_length = 64
    )]
    pub delay: Option<String>,
}

/// The body of a batch start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobs {
    /// 1 to `jobs.batch_max` jobs (1000 by default), all of one task.
    #[schema(min_items = 1)]
    pub jobs: Vec<BatchJob>,
}

/// The jobs of a batch, in the order of the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreated {
    /// The id of each job, in the order of the request (an existing job's id for a
    /// replayed idempotency key).
    pub ids: Vec<i64>,
    /// How many of them this request added (the others existed already).
    pub created: usize,
}

/// A job with the end of its output.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// The last lines of output, oldest first.
    pub output_tail: Vec<String>,
}

/// A configured task, as clients see it (no environment values).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub name: String,
    pub command: Vec<String>,
    /// Parameter names and the regex each value must match in full.
    pub params: BTreeMap<String, String>,
    pub env_keys: Vec<String>,
    pub timeout_seconds: u64,
    pub concurrency: u32,
    pub max_attempts: u32,
    pub on_shutdown: String,
    /// Paused on every node (`POST /v1/tasks/{task}/pause`): its queued jobs wait.
    pub paused: bool,
    /// The cron expression jobs of this task are enqueued by, if any.
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in.
    pub timezone: String,
    /// The next occurrence of the schedule (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub next_run_at: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs of this task.
    pub task: Option<String>,
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `1` or `true`: keep the response open and send new lines until the job ends.
    #[param(value_type = Option<String>, pattern = "^(1|0|true|false)$")]
    pub follow: Option<String>,
    /// Only lines after this sequence number (0, the default: from the first line). A page
    /// ends at the `after` of its `Link: rel="next"`.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// At most this many lines, 1 to 10000. A full page has a `Link` header to the next
    /// one; the last page has none. Without `limit` the whole log streams. With `follow`,
    /// the stream ends after this many lines (or when the job ends).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

/// The delayed start of a job from its `run_at` or `delay` (ms since the epoch), or `None`
/// to start now. `at` names the job in the message ("" or "jobs[3]: ").
fn start_time(
    run_at: Option<&str>,
    delay: Option<&str>,
    at: &str,
) -> Result<Option<i64>, ApiError> {
    let now = crate::jobs::store::now_ms();
    match (run_at, delay) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::Unprocessable(format!(
            "{at}give either `run_at` or `delay`, not both"
        ))),
        (Some(raw), None) => {
            let t = chrono::DateTime::parse_from_rfc3339(raw)
                .map_err(|e| {
                    ApiError::Unprocessable(format!(
                        "{at}`run_at` `{raw}` is not an RFC 3339 time ({e}); write e.g. \"2026-11-22T03:00:00Z\" or use `delay`"
                    ))
                })?
                .timestamp_millis();
            // A time that has passed means now.
            Ok((t > now).then_some(t.min(LATEST_START_MS)))
        }
        (None, Some(raw)) => {
            let d = humantime::parse_duration(raw).map_err(|e| {
                ApiError::Unprocessable(format!(
                    "{at}`delay` `{raw}` is not a duration ({e}); write e.g. \"10m\" or \"2h 30m\""
                ))
            })?;
            let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Ok((d > 0).then_some(now.saturating_add(d).min(LATEST_START_MS)))
        }
    }
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`{raw}` is not a job id; job ids are positive integers"
        ))
    })
}

/// Runs a read, and runs it once more when it failed because the database connection was
/// lost (a PostgreSQL backend terminated mid-request, a restarted server): a read is safe
/// to repeat, and the pool hands the second try a fresh connection.
async fn read<T, F, Fut>(query: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match query().await {
        Err(e) if classify(&e).is_some_and(|f| f.kind == FaultKind::Unavailable) => {
            tracing::debug!(error = %e, "a read lost its database connection; trying it once more");
            query().await
        }
        done => done,
    }
}

/// The job `raw_id`, if the caller may see it. A job of a task the caller may not use is
/// "no job", exactly as a missing one, so ids say nothing about other tasks' jobs.
async fn load_job(state: &AppState, raw_id: &str, caller: &Caller) -> Result<Job, ApiError> {
    let id = parse_id(raw_id)?;
    let store = &state.jobs.store;
    read(|| store.get(id))
        .await?
        .filter(|job| caller.allows(&job.task))
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Start a job of a task.
///
/// Now, or later: `run_at` (RFC 3339) or `delay` ("10m") makes the job `scheduled` until
/// that time; it then starts within about `jobs.poll_interval`. A `run_at` in the past
/// means now; one past 9999-12-31 is taken as that day. Unparsable, or both fields given:
/// 422 naming the field.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}/jobs",
    tag = "jobs",
    params(
        ("task" = String, Path, description = "Task name"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", max_length = 200, min_length = 1, description = "Repeating a request with the same key and parameters within 24 h returns the same job (200); the same key with other parameters is refused (409). Keys are per token.")
    ),
    request_body(content = CreateJob, description = "Parameters (the body may be empty)"),
    responses(
        (status = 202, description = "Queued (state `queued`), or `scheduled` until its `run_at`", body = Job),
        (status = 200, description = "The job made earlier with this Idempotency-Key", body = Job),
        (status = 400, description = "Malformed body or header", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Token may not start this task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with other parameters", body = ErrorBody),
        (status = 422, description = "Parameters refused, or `run_at`/`delay` refused (unparsable, or both given)", body = ErrorBody),
        (status = 503, description = "Stopping or database unavailable", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn create_job(
    State(state): State<AppState>,
    Path(task_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (caller, task) = caller_and_task(&state.snapshot(), &headers, &task_name)?;
    let request: CreateJob = if body.iter().all(u8::is_ascii_whitespace) {
        CreateJob {
            params: serde_json::Map::new(),
            run_at: None,
            delay: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("the body is not valid JSON for this request: {e}"))
        })?
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().ok().filter(|k| valid_key(k)).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?),
    };
    let params = task
        .check_params(&request.params)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let params = serde_json::to_value(params).map_err(|e| ApiError::Internal(e.into()))?;
    let run_after = start_time(request.run_at.as_deref(), request.delay.as_deref(), "")?;
    let (job, created) = state
        .jobs
        .store
        .enqueue_at(
            &task_name,
            &params,
            i64::from(task.config.max_attempts),
            key,
            caller.name.as_deref(),
            run_after,
        )
        .await?;
    if !created && job.params != params {
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key `{}` was used for job {} with different parameters; use a new key",
            key.unwrap_or_default(),
            job.id
        )));
    }
    if created {
        state.jobs.runner.wake();
        tracing::info!(job = job.id, task = %task_name, token = caller.name.as_deref().unwrap_or("-"), state = job.state.as_str(), "job queued");
    }
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(job),
    )
        .into_response())
}

/// An idempotency key as accepted: 1 to 200 visible ASCII characters.
fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
}

/// Who is asking, and the task they may start: 401/403 for the token, 404 for the task.
pub(super) fn caller_and_task(
    snapshot: &Snapshot,
    headers: &HeaderMap,
    task_name: &str,
) -> Result<(crate::http::auth::Caller, std::sync::Arc<crate::jobs::Task>), ApiError> {
    let caller = snapshot.auth.authenticate(headers)?;
    let task = snapshot.task(task_name).cloned().ok_or_else(|| {
        ApiError::NotFound(format!(
            "no task named `{task_name}`; GET /v1/tasks lists them"
        ))
    })?;
    caller.may_use(task_name)?;
    Ok((caller, task))
}

/// Start several jobs of a task with one commit.
///
/// All or nothing: every job is checked first, and the first one refused names its index
/// (422); then all are stored by one commit, or none is. Each job may carry its own
/// idempotency key, as the `Idempotency-Key` header of a single start: a key used by the
/// same token within 24 h with the same parameters names the job made then (its id is in
/// the answer, nothing is added); with other parameters the batch is refused (409).
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}/jobs:batch",
    tag = "jobs",
    params(("task" = String, Path, description = "Task name")),
    request_body(content = CreateJobs, description = "The jobs, in order"),
    responses(
        (status = 202, description = "Queued (some may have existed already)", body = BatchCreated),
        (status = 200, description = "Every job existed already (each idempotency key was seen before)", body = BatchCreated),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Token may not start this task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 413, description = "More jobs than jobs.batch_max, or a body over http.body_limit", body = ErrorBody),
        (status = 409, description = "An idempotency_key was used with other parameters (the message names its index); nothing was queued", body = ErrorBody),
        (status = 422, description = "A job refused (the message names its index); nothing was queued", body = ErrorBody),
        (status = 503, description = "Stopping or database unavailable", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn create_jobs_batch(
    State(state): State<AppState>,
    Path(task_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (caller, task, max) = {
        let snapshot = state.snapshot();
        let (caller, task) = caller_and_task(&snapshot, &headers, &task_name)?;
        (caller, task, snapshot.config.jobs.batch_max as usize)
    };
    let request = parse_batch(&body, max)?;
    let batch = check_batch(&task, &request.jobs)?;
    let done = state
        .jobs
        .store
        .enqueue_batch(
            &task_name,
            &batch.jobs,
            i64::from(task.config.max_attempts),
            caller.name.as_deref(),
        )
        .await?;
    let done = done.map_err(|conflict| {
        ApiError::Conflict(format!(
            "jobs[{}]: idempotency_key `{}` was used for job {} with different parameters; use a new key; nothing was queued",
            batch.first_index[conflict.index],
            batch.jobs[conflict.index].idempotency_key.as_deref().unwrap_or_default(),
            conflict.id
        ))
    })?;
    let created = done.iter().filter(|e| e.existing_params.is_none()).count();
    if created > 0 {
        state.jobs.runner.wake();
        tracing::info!(task = %task_name, jobs = done.len(), created, token = caller.name.as_deref().unwrap_or("-"), "batch of jobs queued");
    }
    let status = if created > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(BatchCreated {
            ids: batch.slots.iter().map(|&slot| done[slot].id).collect(),
            created,
        }),
    )
        .into_response())
}

/// A batch's body, refused when it is not JSON, has more than `max` jobs or none.
fn parse_batch(body: &[u8], max: usize) -> Result<CreateJobs, ApiError> {
    let request: CreateJobs = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("the body is not valid JSON for this request: {e}"))
    })?;
    if request.jobs.len() > max {
        return Err(ApiError::TooLarge(format!(
            "{} jobs in one batch; at most {max} (jobs.batch_max) per request",
            request.jobs.len()
        )));
    }
    if request.jobs.is_empty() {
        return Err(ApiError::Unprocessable(
            "`jobs` is empty; a batch holds 1 or more jobs".into(),
        ));
    }
    Ok(request)
}

/// The jobs a batch stores: each distinct one once, in the order of the request.
struct CheckedBatch {
    jobs: Vec<NewJob>,
    /// For each job of the request, its place in `jobs`.
    slots: Vec<usize>,
    /// For each of `jobs`, the index in the request of the job that put it there.
    first_index: Vec<usize>,
}

/// Checks every job of a batch before anything is stored; the first one refused names its
/// index. A key names one job, within a batch as across requests: a repeat with the same
/// parameters is that job again (its id twice in the answer), with others a conflict.
fn check_batch(task: &crate::jobs::Task, request: &[BatchJob]) -> Result<CheckedBatch, ApiError> {
    let mut seen: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    let mut batch = CheckedBatch {
        jobs: Vec::with_capacity(request.len()),
        slots: Vec::with_capacity(request.len()),
        first_index: Vec::with_capacity(request.len()),
    };
    for (i, job) in request.iter().enumerate() {
        let new = check_batch_job(task, i, job)?;
        if let Some(key) = job.idempotency_key.as_deref() {
            if let Some(&(first, slot)) = seen.get(key) {
                if batch.jobs[slot].params != new.params {
                    return Err(ApiError::Conflict(format!(
                        "jobs[{i}]: idempotency_key `{key}` is also the key of jobs[{first}], with different parameters; use a new key; nothing was queued"
                    )));
                }
                batch.slots.push(slot);
                continue;
            }
            seen.insert(key, (i, batch.jobs.len()));
        }
        batch.slots.push(batch.jobs.len());
        batch.first_index.push(i);
        batch.jobs.push(new);
    }
    Ok(batch)
}

/// One job of a batch (index `i`) as it would be stored: its key, parameters and start.
fn check_batch_job(task: &crate::jobs::Task, i: usize, job: &BatchJob) -> Result<NewJob, ApiError> {
    if let Some(key) = job.idempotency_key.as_deref() {
        if !valid_key(key) {
            return Err(ApiError::Unprocessable(format!(
                "jobs[{i}]: idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters; nothing was queued"
            )));
        }
    }
    let params = task
        .check_params(&job.params)
        .map_err(|e| ApiError::Unprocessable(format!("jobs[{i}]: {e}; nothing was queued")))?;
    let run_after = start_time(
        job.run_at.as_deref(),
        job.delay.as_deref(),
        &format!("jobs[{i}]: "),
    )
    .map_err(|e| match e {
        ApiError::Unprocessable(m) => ApiError::Unprocessable(format!("{m}; nothing was queued")),
        e => e,
    })?;
    let params = serde_json::to_value(params).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(NewJob {
        params,
        idempotency_key: job.idempotency_key.clone(),
        run_after,
    })
}

/// One job, with the end of its output.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = i64, Path, minimum = 1, description = "Job id (a positive integer)")),
    responses(
        (status = 200, body = JobView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<JobView>, ApiError> {
    let job = load_job(&state, &id, &caller).await?;
    let store = &state.jobs.store;
    let output_tail = read(|| store.output_tail(job.id, TAIL_LINES)).await?;
    Ok(Json(JobView { job, output_tail }))
}

/// Jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    caller: Caller,
) -> Result<Json<JobPage>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit `{raw}` must be a number from 1 to 500"))
            })?,
    };
    let state_filter = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(JobState::parse(raw).ok_or_else(|| {
            let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("state `{raw}` is not one of {}", states.join(", ")))
        })?),
    };
    let before_id = match q.cursor.as_deref() {
        None => None,
        Some(raw) => Some(parse_id(raw).map_err(|_| {
            ApiError::BadRequest(format!("cursor `{raw}` is not one this API gave out"))
        })?),
    };
    let filter = ListFilter {
        task: q.task,
        tasks: caller.readable_tasks().map(<[String]>::to_vec),
        state: state_filter,
        before_id,
        limit,
    };
    let store = &state.jobs.store;
    Ok(Json(read(|| store.list(&filter)).await?))
}

/// Cancel a job: a queued one never runs; a running one is stopped.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = i64, Path, minimum = 1, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled, or flagged for its runner to stop", body = Job),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<Job>, ApiError> {
    let job = load_job(&state, &id, &caller).await?;
    caller.may_use(&job.task)?;
    if job.state.is_final() {
        return Err(ApiError::Conflict(format!(
            "job {} already ended: {}",
            job.id,
            job.state.as_str()
        )));
    }
    let job = state
        .jobs
        .store
        .cancel(job.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    state.jobs.runner.cancel_local(job.id);
    tracing::info!(
        job = job.id,
        token = caller.name.as_deref().unwrap_or("-"),
        "job cancel requested"
    );
    Ok(Json(job))
}

/// A job's output as text, one line per line. The whole log streams from the database a
/// page at a time; `after` and `limit` give one page; with `follow=1`, new lines stream
/// until the job ends.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/log",
    tag = "jobs",
    params(("id" = i64, Path, minimum = 1, description = "Job id"), LogQuery),
    responses(
        (status = 200, description = "Output lines", content_type = "text/plain", body = String,
            headers(("Link" = String, description = "With `limit`, when the page is full: `</v1/jobs/ID/log?after=SEQ&limit=N>; rel=\"next\"`, the next page. Absent on the last page."))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn job_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The token and the follow limits from one snapshot, read before any await.
    let (caller, follow_limits) = {
        let snapshot = state.snapshot();
        let caller = snapshot.auth.authenticate(&headers)?;
        (caller, FollowLimits::of(&snapshot.config))
    };
    let job = load_job(&state, &id, &caller).await?;
    let follow = match q.follow.as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "follow `{other}` must be 1 or 0"
            )))
        }
    };
    let after = match q.after.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "after `{raw}` must be a line sequence number (0 or more)"
            ))
        })?,
    };
    let limit = match q.limit.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LOG_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "limit `{raw}` must be a number from 1 to {MAX_LOG_LIMIT}"
                    ))
                })?,
        ),
    };
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let store = state.jobs.store.clone();
    if let Some(limit) = limit.filter(|_| !follow) {
        let lines = read(|| store.output(job.id, after, limit)).await?;
        let mut body = String::new();
        push_lines(&mut body, &lines);
        let mut response = (text, body).into_response();
        if let Some(last) = lines.last().filter(|_| lines.len() as i64 == limit) {
            let next = format!(
                "</v1/jobs/{}/log?after={}&limit={limit}>; rel=\"next\"",
                job.id, last.seq
            );
            if let Ok(value) = header::HeaderValue::from_str(&next) {
                response.headers_mut().insert(header::LINK, value);
            }
        }
        return Ok(response);
    }
    if !follow {
        // The first page before the answer, so a database that is down is a 503 rather
        // than a 200 whose body breaks off.
        let first = read(|| store.output(job.id, after, LOG_PAGE_LINES)).await?;
        return Ok((text, Body::from_stream(log_pages(store, job.id, first))).into_response());
    }
    Ok((
        text,
        [(header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(follow_stream(state, follow_limits, job.id, after, limit)),
    )
        .into_response())
}

/// A whole log, a page of [`LOG_PAGE_LINES`] at a time from the database, starting with
/// `first` (already read): memory stays at one page however long the log.
fn log_pages(
    store: crate::jobs::Store,
    job_id: i64,
    first: Vec<OutputLine>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(first), move |page| {
        let store = store.clone();
        async move {
            let lines = page?;
            let last = lines.last()?.seq;
            let mut chunk = String::new();
            push_lines(&mut chunk, &lines);
            let next = if (lines.len() as i64) < LOG_PAGE_LINES {
                Some(Vec::new())
            } else {
                match read(|| store.output(job_id, last, LOG_PAGE_LINES)).await {
                    Ok(next) => Some(next),
                    Err(e) => {
                        // The head is sent: all that is left is to break the body off, so
                        // the client sees an incomplete response, not a short log.
                        tracing::warn!(job = job_id, error = %e, "reading the log failed mid-response");
                        return Some((Err(std::io::Error::other(e)), None));
                    }
                }
            };
            Some((Ok(Bytes::from(chunk)), next))
        }
    })
}

/// Appends output lines as text, one per line.
fn push_lines(text: &mut String, lines: &[OutputLine]) {
    for l in lines {
        text.push_str(&l.line);
        text.push('\n');
    }
}

/// How a followed log is read: how often to look for new lines, and for how long at most.
#[derive(Clone, Copy)]
struct FollowLimits {
    poll: Duration,
    follow_max: Duration,
}

impl FollowLimits {
    fn of(config: &crate::config::Config) -> Self {
        Self {
            poll: config
                .jobs
                .log_flush_interval
                .max(Duration::from_millis(100)),
            follow_max: config.http.follow_max,
        }
    }
}

/// New lines as they are written, until the job ends, `limit` lines were sent,
/// `http.follow_max` passed, or this process starts to stop (the stream then ends cleanly;
/// a client asks again from its last line, at the next process after a stop).
fn follow_stream(
    state: AppState,
    limits: FollowLimits,
    job_id: i64,
    after: i64,
    limit: Option<i64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let poll = limits.poll;
    // Every wait has an end: past http.follow_max the stream ends cleanly, and a client
    // asks again from its last line (as after a restart).
    let until = tokio::time::Instant::now() + limits.follow_max;
    futures::stream::unfold(
        (state, after, false, limit.unwrap_or(i64::MAX)),
        move |(state, after, ended, left)| async move {
            if ended || left <= 0 {
                return None;
            }
            loop {
                let lines = match state.jobs.store.output(job_id, after, left.min(500)).await {
                    Ok(lines) => lines,
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e)), (state, after, true, left)))
                    }
                };
                if let Some(last) = lines.last() {
                    let next = last.seq;
                    let mut chunk = String::new();
                    push_lines(&mut chunk, &lines);
                    let left = left - lines.len() as i64;
                    return Some((Ok(Bytes::from(chunk)), (state, next, false, left)));
                }
                let finished = matches!(state.jobs.store.get(job_id).await, Ok(Some(job)) if job.state.is_final());
                // Lines written before the final state are in the database already (the
                // runner writes output first), so one more empty read means we have them all.
                if finished
                    && state
                        .jobs
                        .store
                        .output(job_id, after, 1)
                        .await
                        .map(|l| l.is_empty())
                        .unwrap_or(true)
                {
                    return None;
                }
                if state.lifecycle.is_stopping() {
                    return None;
                }
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                tokio::select! {
                    _ = state.lifecycle.stopping() => return None,
                    _ = tokio::time::sleep_until(until) => return None,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        },
    )
}

/// The configured tasks this caller may use.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "jobs",
    responses((status = 200, body = Vec<TaskView>), (status = 401, body = ErrorBody), (status = 503, description = "Database unavailable; retry", body = ErrorBody)),
    security((), ("bearer" = []))
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    // Kept across the read below: the tasks listed are those of the token's snapshot.
    let snapshot = state.snapshot_full();
    let caller = snapshot.auth.authenticate(&headers)?;
    let store = &state.jobs.store;
    let paused = read(|| store.paused()).await?;
    let now = crate::jobs::store::now_ms();
    Ok(Json(
        snapshot
            .tasks
            .values()
            .filter(|t| caller.allows(&t.name))
            .map(|t| TaskView {
                name: t.name.clone(),
                command: t.config.command.clone(),
                params: t.config.params.clone(),
                env_keys: t.config.env.keys().cloned().collect(),
                timeout_seconds: t.config.timeout.as_secs(),
                concurrency: t.config.concurrency,
                max_attempts: t.config.max_attempts,
                on_shutdown: format!("{:?}", t.config.on_shutdown).to_lowercase(),
                paused: paused.contains_key(&t.name),
                schedule: t.config.schedule.clone(),
                timezone: t.config.timezone.clone(),
                next_run_at: crate::jobs::schedule::Schedule::of(&t.config)
                    .ok()
                    .flatten()
                    .and_then(|s| s.next_after(now))
                    .map(crate::jobs::schedule::rfc3339_ms),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `read` over a query that fails with `first` once and then succeeds; returns the
    /// result and how many times the query ran.
    async fn read_after(first: sqlx::Error) -> (Result<u8, sqlx::Error>, usize) {
        let calls = AtomicUsize::new(0);
        let first = std::sync::Mutex::new(Some(first));
        let result = read(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            let failure = first.lock().unwrap().take();
            async move {
                match failure {
                    Some(e) => Err(e),
                    None => Ok(7),
                }
            }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    /// Finding 13: a read that lost its connection is run once more and succeeds.
    #[tokio::test]
    async fn a_read_that_lost_its_connection_is_retried_once() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let (result, calls) = read_after(lost).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 2);
    }

    /// Finding 13: other errors are not retried (a statement's own failure would fail again).
    #[tokio::test]
    async fn other_read_errors_are_not_retried() {
        let (result, calls) = read_after(sqlx::Error::RowNotFound).await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
