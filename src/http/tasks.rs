//! Pause and resume a task. The state lives in the database (`paused_tasks`), so every
//! node sharing it and every later process honours it: no claim statement takes a paused
//! task's jobs. Queued jobs stay queued; running ones go on.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::error::ErrorBody;
use super::jobs::caller_and_task;
use super::AppState;

/// Whether a task is paused.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPause {
    pub task: String,
    pub paused: bool,
    /// When it was paused (the first pause, if it was paused twice); null when not paused.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub paused_at: Option<String>,
}

fn view(task: &str, paused_at: Option<i64>) -> TaskPause {
    TaskPause {
        task: task.to_string(),
        paused: paused_at.is_some(),
        paused_at: paused_at.map(crate::jobs::store::format_ms),
    }
}

/// Pause a task on every node: its queued jobs stay queued, and none is claimed until it
/// is resumed; running jobs go on. Pausing a paused task changes nothing.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}/pause",
    tag = "jobs",
    params(("task" = String, Path, description = "Task name")),
    responses(
        (status = 200, description = "Paused", body = TaskPause),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Token may not use this task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn pause_task(
    State(state): State<AppState>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TaskPause>, ApiError> {
    let (caller, task) = caller_and_task(&state.snapshot(), &headers, &task)?;
    let at = state.jobs.runner.pause(&task.name).await?;
    tracing::info!(
        task = %task.name,
        token = caller.name.as_deref().unwrap_or("-"),
        "task paused: its queued jobs wait until it is resumed"
    );
    Ok(Json(view(&task.name, Some(at))))
}

/// Resume a paused task: its queued jobs are claimed again at once. Resuming a task that
/// is not paused changes nothing.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}/resume",
    tag = "jobs",
    params(("task" = String, Path, description = "Task name")),
    responses(
        (status = 200, description = "Not paused (any more)", body = TaskPause),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Token may not use this task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn resume_task(
    State(state): State<AppState>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TaskPause>, ApiError> {
    let (caller, task) = caller_and_task(&state.snapshot(), &headers, &task)?;
    if state.jobs.runner.resume(&task.name).await? {
        tracing::info!(
            task = %task.name,
            token = caller.name.as_deref().unwrap_or("-"),
            "task resumed"
        );
    }
    Ok(Json(view(&task.name, None)))
}
