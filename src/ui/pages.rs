//! The page frame, the login and error pages, the jobs list and a job's page.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::session::{page_viewer, Viewer};
use crate::http::{ApiError, AppState};
use crate::jobs::store::format_ms;
use crate::jobs::{Job, JobPage, JobState, ListFilter, OutputLine};

/// Jobs on one page of the list.
const PAGE_JOBS: i64 = 50;
/// Lines of a job's log shown with its page (the newest); the stream adds the rest.
pub const LOG_LINES: i64 = 500;

/// Every page's frame: navigation, logout, the read-only banner and the flash message.
pub fn layout(
    page: &str,
    title: &str,
    viewer: Option<&Viewer>,
    flash: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · shiftd" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body data-page=(page) {
                header {
                    nav {
                        strong { "shiftd" }
                        a #nav-overview href="/ui/" { "Overview" }
                        a #nav-jobs href="/ui/jobs" { "Jobs" }
                        a #nav-tasks href="/ui/tasks" { "Tasks" }
                    }
                    @if let Some(session) = viewer.and_then(|v| v.session.as_ref()) {
                        form #logout method="post" action="/ui/logout" {
                            span.who { (session.name) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                @if viewer.is_some_and(Viewer::read_only) {
                    p #readonly { (super::READ_ONLY) }
                }
                @if let Some(flash) = flash.filter(|f| !f.is_empty()) {
                    p #flash { (flash) }
                }
                main { (body) }
            }
        }
    }
}

/// The login page, with the refusal of the last try if there was one.
pub fn login_page(error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Log in" }
        form #login method="post" action="/ui/login" {
            label for="token" { "Token" }
            input #token name="token" type="password" autocomplete="current-password" required autofocus;
            button #login-submit type="submit" { "Log in" }
        }
        @if let Some(error) = error {
            p #login-error .error { (error) }
        }
    };
    layout("login", "Log in", None, None, body)
}

pub fn error_markup(status: StatusCode, message: &str) -> Markup {
    let body = html! {
        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
        p.error { (message) }
        p { a href="/ui/" { "Back to the overview" } }
    };
    layout("error", "Error", None, None, body)
}

#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    pub task: Option<String>,
    pub state: Option<String>,
    pub before: Option<String>,
    pub partial: Option<String>,
    pub msg: Option<String>,
}

impl JobsQuery {
    fn filter(&self, viewer: &Viewer) -> ListFilter {
        ListFilter {
            task: self.task.clone().filter(|t| !t.is_empty()),
            tasks: viewer.caller.readable_tasks().map(<[String]>::to_vec),
            state: self.state.as_deref().and_then(JobState::parse),
            before_id: self.before.as_deref().and_then(|b| b.parse().ok()),
            limit: PAGE_JOBS,
        }
    }

    /// The query string of these filters, with `extra` appended.
    fn link(&self, extra: &str) -> String {
        let mut parts = Vec::new();
        for (key, value) in [("task", &self.task), ("state", &self.state)] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{key}={}", urlencode(v)));
            }
        }
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        format!("/ui/jobs?{}", parts.join("&"))
    }
}

/// %-encodes a query value.
pub fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A job list page of `/ui/jobs` (newest first), or with `?partial=rows` only its rows,
/// which the page's script fetches every 2 s.
pub async fn jobs_page(
    State(state): State<AppState>,
    Query(q): Query<JobsQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match page_viewer(&state, &headers) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let filter = q.filter(&viewer);
    let page = match state.jobs.store.list(&filter).await {
        Ok(page) => page,
        Err(e) => return super::api_error_page(ApiError::from(e)),
    };
    if q.partial.as_deref() == Some("rows") {
        return super::html(job_rows(&page.jobs));
    }
    let body = jobs_body(&state, &viewer, &q, &page);
    super::html(layout(
        "jobs",
        "Jobs",
        Some(&viewer),
        q.msg.as_deref(),
        body,
    ))
}

fn jobs_body(state: &AppState, viewer: &Viewer, q: &JobsQuery, page: &JobPage) -> Markup {
    let snapshot = state.snapshot();
    let tasks = &snapshot.tasks;
    let task_now = q.task.as_deref().unwrap_or("");
    let state_now = q.state.as_deref().unwrap_or("");
    // Only the first page follows new jobs; older pages stay as they are.
    let rows_url = q.before.is_none().then(|| q.link("partial=rows"));
    html! {
        h1 { "Jobs" }
        form #filters method="get" action="/ui/jobs" {
            label { "Task "
                select name="task" {
                    option value="" { "any" }
                    @for name in tasks.keys().filter(|t| viewer.caller.allows(t)) {
                        option value=(name) selected[name == task_now] { (name) }
                    }
                }
            }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for st in JobState::ALL {
                        option value=(st.as_str()) selected[st.as_str() == state_now] { (st.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        table #jobs {
            thead { tr { th { "Job" } th { "Task" } th { "State" } th { "Attempts" } th { "Created" } th { "Finished" } } }
            tbody #job-rows data-rows-url=[rows_url] { (job_rows(&page.jobs)) }
        }
        @if let Some(cursor) = &page.next_cursor {
            p { a #next-page href=(q.link(&format!("before={cursor}"))) { "Older jobs →" } }
        }
    }
}

/// The rows of the jobs table.
pub fn job_rows(jobs: &[Job]) -> Markup {
    html! {
        @for job in jobs {
            tr.job data-id=(job.id) data-state=(job.state.as_str()) {
                td { a.job-link href={ "/ui/jobs/" (job.id) } { "#" (job.id) } }
                td.task { (job.task) }
                td.state { span class={ "state " (job.state.as_str()) } { (job.state.as_str()) } }
                td.attempts { (job.attempts) " / " (job.max_attempts) }
                td.created { (format_ms(job.created_at)) }
                td.finished { (job.finished_at.map(format_ms).unwrap_or_default()) }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct MsgQuery {
    pub msg: Option<String>,
}

/// A job the viewer may see, or the page saying there is none.
pub async fn visible_job(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
) -> Result<Job, Box<Response>> {
    let not_found = || {
        Box::new(super::error_page(
            StatusCode::NOT_FOUND,
            &format!("no job {raw}"),
        ))
    };
    let id: i64 = raw
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(not_found)?;
    match state.jobs.store.get(id).await {
        Ok(Some(job)) if viewer.caller.allows(&job.task) => Ok(job),
        Ok(_) => Err(not_found()),
        Err(e) => Err(Box::new(super::api_error_page(ApiError::from(e)))),
    }
}

/// `/ui/jobs/{id}`: the job and the newest lines of its log; the script streams the rest.
pub async fn job_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MsgQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match page_viewer(&state, &headers) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let job = match visible_job(&state, &viewer, &id).await {
        Ok(job) => job,
        Err(page) => return *page,
    };
    let lines = match newest_lines(&state, job.id).await {
        Ok(lines) => lines,
        Err(e) => return super::api_error_page(ApiError::from(e)),
    };
    let title = format!("Job {}", job.id);
    let body = job_body(&viewer, &job, &lines);
    super::html(layout("job", &title, Some(&viewer), q.msg.as_deref(), body))
}

/// The last [`LOG_LINES`] lines of a job's log (lines are numbered without gaps).
async fn newest_lines(state: &AppState, job_id: i64) -> Result<Vec<OutputLine>, sqlx::Error> {
    let store = &state.jobs.store;
    let last = store.last_seq(job_id).await?;
    store
        .output(job_id, (last - LOG_LINES).max(0), LOG_LINES)
        .await
}

/// How a job's last attempt ended, as text.
pub fn exit_text(job: &Job) -> String {
    match (job.exit_code, job.exit_signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "-".to_string(),
    }
}

fn job_body(viewer: &Viewer, job: &Job, lines: &[OutputLine]) -> Markup {
    let last_seq = lines.last().map_or(0, |l| l.seq);
    let final_state = job.state.is_final();
    html! {
        h1 { "Job " (job.id) }
        dl #job {
            dt { "State" } dd { span #job-state class={ "state " (job.state.as_str()) } { (job.state.as_str()) } }
            dt { "Task" } dd #job-task { (job.task) }
            dt { "Attempts" } dd #job-attempts { (job.attempts) " / " (job.max_attempts) }
            dt { "Exit" } dd #job-exit { (exit_text(job)) }
            dt { "Parameters" } dd #job-params { code { (job.params) } }
            dt { "Created" } dd { (format_ms(job.created_at)) }
            dt { "Started" } dd #job-started { (job.started_at.map(format_ms).unwrap_or_default()) }
            dt { "Finished" } dd #job-finished { (job.finished_at.map(format_ms).unwrap_or_default()) }
            @if let Some(error) = &job.error { dt { "Error" } dd #job-error { (error) } }
        }
        @if !final_state && viewer.may_act(&job.task) {
            form #cancel method="post" action={ "/ui/jobs/" (job.id) "/cancel" } {
                input type="hidden" name="csrf" value=(viewer.csrf());
                button type="submit" { "Cancel job" }
            }
        }
        h2 { "Log " small { "(" span #stream-status { @if final_state { "ended" } @else { "live" } } ")" } }
        pre #log data-events={ "/ui/jobs/" (job.id) "/events?after=" (last_seq) } data-final=(final_state) {
            @for line in lines {
                span.line data-seq=(line.seq) data-stream=(line.stream) { (line.line) "\n" }
            }
        }
    }
}
