//! The tasks page: the configured tasks the viewer may use (no env values), their next
//! scheduled run, pause/resume, and a start form built from each task's parameter rules.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};

use super::pages::{layout, MsgQuery};
use super::session::{page_viewer, Viewer};
use crate::http::{ApiError, AppState};
use crate::jobs::schedule::{rfc3339_ms, Schedule};
use crate::jobs::Task;

/// `/ui/tasks`.
pub async fn tasks_page(
    State(state): State<AppState>,
    Query(q): Query<MsgQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match page_viewer(&state, &headers) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    // The pause table itself (a few rows), not the cached view: a pause just made shows.
    let paused = match state.jobs.store.paused().await {
        Ok(paused) => paused,
        Err(e) => return super::api_error_page(ApiError::from(e)),
    };
    let snapshot = state.snapshot();
    let tasks = &snapshot.tasks;
    let now = crate::jobs::store::now_ms();
    let body = html! {
        h1 { "Tasks" }
        table #tasks {
            thead { tr { th { "Task" } th { "Command" } th { "Schedule" } th { "Next run" } th { "Paused" } th { "" } } }
            tbody {
                @for task in tasks.values().filter(|t| viewer.caller.allows(&t.name)) {
                    (task_row(&viewer, task, paused.contains_key(&task.name), now))
                }
            }
        }
    };
    super::html(layout(
        "tasks",
        "Tasks",
        Some(&viewer),
        q.msg.as_deref(),
        body,
    ))
}

fn task_row(viewer: &Viewer, task: &Task, paused: bool, now: i64) -> Markup {
    let c = &task.config;
    let next = Schedule::of(c)
        .ok()
        .flatten()
        .and_then(|s| s.next_after(now))
        .map(rfc3339_ms);
    let action = |what: &str| format!("/ui/tasks/{}/{what}", task.name);
    html! {
        tr.task data-task=(task.name) {
            td.name { a href={ "/ui/jobs?task=" (task.name) } { (task.name) } }
            td.command { code { (c.command.join(" ")) } }
            td.schedule { (c.schedule.as_deref().unwrap_or("-")) @if c.schedule.is_some() { " (" (c.timezone) ")" } }
            td.next-run { (next.unwrap_or_else(|| "-".into())) }
            td.paused { @if paused { "yes" } @else { "no" } }
            td.actions {
                @if viewer.may_act(&task.name) {
                    @if paused {
                        form.resume method="post" action=(action("resume")) {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            button type="submit" { "Resume" }
                        }
                    } @else {
                        form.pause method="post" action=(action("pause")) {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            button type="submit" { "Pause" }
                        }
                    }
                    (start_form(viewer, task, &action("start")))
                }
            }
        }
    }
}

/// The start form: one input per parameter, with its rule as the browser's own check
/// (`pattern`, when the rule converts safely) and as the input's title.
fn start_form(viewer: &Viewer, task: &Task, action: &str) -> Markup {
    let required = task.required_params();
    html! {
        form.start method="post" action=(action) data-task=(task.name) {
            input type="hidden" name="csrf" value=(viewer.csrf());
            @for (name, rule) in &task.config.params {
                label {
                    (name) " "
                    input type="text" name={ "param." (name) }
                        pattern=[super::pattern::html_pattern(rule)]
                        title={ "must match " (rule) }
                        required[required.contains(&name.as_str())];
                    " " small.rule { "rule: " code { (rule) } }
                }
            }
            button.start-job type="submit" { "Start job" }
        }
    }
}
