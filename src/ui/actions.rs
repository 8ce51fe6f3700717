//! The dashboard's form actions: cancel a job, pause/resume a task, start a job. Each
//! needs a session and its CSRF token, is checked against the token's tasks exactly as
//! the API checks it, goes through the same `Store`/`Runner` methods as the API, and
//! answers 303 back to the page it came from with a flash message (`?msg=`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;

use super::pages::{urlencode, visible_job};
use super::session::{actor, CsrfForm, Viewer};
use crate::http::{ApiError, AppState};
use crate::jobs::Task;

/// 303 to `page` with a flash message.
fn back(page: &str, msg: &str) -> Response {
    Redirect::to(&format!("{page}?msg={}", urlencode(msg))).into_response()
}

/// The task `name`, if it exists and the viewer's token may use it.
fn usable_task(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
) -> Result<std::sync::Arc<Task>, Box<Response>> {
    let task = state.snapshot().task(name).cloned().ok_or_else(|| {
        Box::new(super::error_page(
            StatusCode::NOT_FOUND,
            &format!("no task named `{name}`"),
        ))
    })?;
    viewer
        .caller
        .may_use(name)
        .map_err(|e| Box::new(super::api_error_page(e)))?;
    Ok(task)
}

fn token(viewer: &Viewer) -> &str {
    viewer.caller.name.as_deref().unwrap_or("-")
}

/// `POST /ui/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match actor(&state, &headers, &form.csrf) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    let job = match visible_job(&state, &viewer, &id).await {
        Ok(job) => job,
        Err(page) => return *page,
    };
    let page = format!("/ui/jobs/{}", job.id);
    if let Err(e) = viewer.caller.may_use(&job.task) {
        return super::api_error_page(e);
    }
    if job.state.is_final() {
        return back(
            &page,
            &format!("job {} already ended: {}", job.id, job.state.as_str()),
        );
    }
    match state.jobs.store.cancel(job.id).await {
        Ok(_) => {
            state.jobs.runner.cancel_local(job.id);
            tracing::info!(
                job = job.id,
                token = token(&viewer),
                "job cancel requested (dashboard)"
            );
            back(&page, &format!("cancel of job {} requested", job.id))
        }
        Err(e) => super::api_error_page(ApiError::from(e)),
    }
}

/// `POST /ui/tasks/{task}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match actor(&state, &headers, &form.csrf) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    let task = match usable_task(&state, &viewer, &name) {
        Ok(task) => task,
        Err(refused) => return *refused,
    };
    match state.jobs.runner.pause(&task.name).await {
        Ok(_) => {
            tracing::info!(task = %task.name, token = token(&viewer), "task paused (dashboard): its queued jobs wait until it is resumed");
            back("/ui/tasks", &format!("task {} paused", task.name))
        }
        Err(e) => super::api_error_page(ApiError::from(e)),
    }
}

/// `POST /ui/tasks/{task}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match actor(&state, &headers, &form.csrf) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    let task = match usable_task(&state, &viewer, &name) {
        Ok(task) => task,
        Err(refused) => return *refused,
    };
    match state.jobs.runner.resume(&task.name).await {
        Ok(was_paused) => {
            if was_paused {
                tracing::info!(task = %task.name, token = token(&viewer), "task resumed (dashboard)");
            }
            back("/ui/tasks", &format!("task {} resumed", task.name))
        }
        Err(e) => super::api_error_page(ApiError::from(e)),
    }
}

/// The parameters of a start form (`param.NAME` fields): an empty field of a parameter the
/// command does not need is left out, as a JSON request would leave it out.
fn form_params(
    task: &Task,
    fields: &[(String, String)],
) -> serde_json::Map<String, serde_json::Value> {
    let required = task.required_params();
    fields
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix("param.")?, value)))
        .filter(|(name, value)| !value.is_empty() || required.contains(name))
        .map(|(name, value)| (name.to_string(), serde_json::Value::String(value.clone())))
        .collect()
}

/// `POST /ui/tasks/{task}/start`: checked by the task's rules exactly as `POST
/// /v1/tasks/{task}/jobs` checks them; a refusal comes back as the flash message.
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let viewer = match actor(&state, &headers, csrf) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
    let task = match usable_task(&state, &viewer, &name) {
        Ok(task) => task,
        Err(refused) => return *refused,
    };
    let params = match task.check_params(&form_params(&task, &fields)) {
        Ok(params) => params,
        Err(e) => return back("/ui/tasks", &format!("job not started: {e}")),
    };
    let params = serde_json::to_value(params).unwrap_or_default();
    let max_attempts = i64::from(task.config.max_attempts);
    let enqueued = state
        .jobs
        .store
        .enqueue_at(
            &task.name,
            &params,
            max_attempts,
            None,
            viewer.caller.name.as_deref(),
            None,
        )
        .await;
    match enqueued {
        Ok((job, _)) => {
            state.jobs.runner.wake();
            tracing::info!(job = job.id, task = %task.name, token = token(&viewer), "job queued (dashboard)");
            back("/ui/tasks", &format!("job {} queued", job.id))
        }
        Err(e) => super::api_error_page(ApiError::from(e)),
    }
}
