//! The overview: this process's state, the queue per task, paused tasks, the database's
//! size, the finished-jobs chart and the last stops of this host.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use super::overview::{overview, Overview, StopEntry};
use super::pages::layout;
use super::session::{page_viewer, Viewer};
use crate::http::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct OverviewQuery {
    pub msg: Option<String>,
    /// `live`: only the part the page's script refreshes every 2 s.
    pub partial: Option<String>,
}

/// `/ui/`: the overview (the login page first when a session is needed). The page's
/// script fetches `?partial=live` every 2 s, so a restart can be watched as it happens.
pub async fn overview_page(
    State(state): State<AppState>,
    Query(q): Query<OverviewQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match page_viewer(&state, &headers) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let data = match overview(&state, viewer.caller.readable_tasks()).await {
        Ok(data) => data,
        Err(e) => return super::api_error_page(e),
    };
    let live = overview_live(&viewer, &data);
    if q.partial.as_deref() == Some("live") {
        return super::html(live);
    }
    let body = html! {
        h1 { "Overview" }
        div #overview-live data-refresh="/ui/?partial=live" { (live) }
    };
    super::html(layout(
        "overview",
        "Overview",
        Some(&viewer),
        q.msg.as_deref(),
        body,
    ))
}

/// A byte count as people read it.
fn bytes_text(n: u64) -> String {
    crate::config::ByteSize(n).to_string()
}

/// A duration in whole seconds, as "3d 4h 5m 6s".
fn uptime_text(d: std::time::Duration) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// What the overview shows, refreshed in place by the page's script.
fn overview_live(viewer: &Viewer, o: &Overview) -> Markup {
    html! {
        dl #service {
            dt { "State" } dd { span #state class={ "state " (o.state) } { (o.state) } }
            dt { "Version" } dd #version { (o.version) }
            dt { "Uptime" } dd #uptime { (uptime_text(o.uptime)) }
            dt { "Requests in flight" } dd #in-flight { (o.in_flight) }
            dt { "Database size" } dd #db-size { (o.db_size_bytes.map(bytes_text).unwrap_or_else(|| "-".into())) }
        }
        h2 { "Queue" }
        table #queue {
            thead { tr { th { "Task" } th { "Queued" } th { "Running" } th { "Scheduled" } } }
            tbody {
                @for q in o.queue.iter().filter(|q| viewer.caller.allows(&q.task)) {
                    tr data-task=(q.task) {
                        td { a href={ "/ui/jobs?task=" (super::pages::urlencode(&q.task)) } { (q.task) } }
                        td.queued { (q.queued) }
                        td.running { (q.running) }
                        td.scheduled { (q.scheduled) }
                    }
                }
            }
        }
        h2 { "Paused tasks" }
        ul #paused {
            @for task in &o.paused { li { (task) } }
        }
        @if o.paused.is_empty() { p.none { "none" } }
        h2 { "Jobs finished per minute, last hour" }
        div #chart {
            @if o.chart_svg.is_empty() {
                svg #finished-chart xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 120" width="600" height="120" {}
            } @else {
                // Drawn by the server from numbers and fixed names only.
                (PreEscaped(&o.chart_svg))
            }
        }
        h2 { "Last stops of this host" }
        div #stops { @for stop in &o.stops { (stop_section(stop)) } }
        @if o.stops.is_empty() { p.none { "no stop recorded yet" } }
    }
}

fn ms_text(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// One stop: each stage's time against its budget, cut work in red with the setting to raise.
fn stop_section(stop: &StopEntry) -> Markup {
    let at = crate::jobs::store::format_ms(stop.at.saturating_mul(1000));
    html! {
        section.stop data-kind=(stop.kind) {
            h3 { (stop.kind) " at " (at) " · version " (stop.version) " · " (ms_text(stop.elapsed_ms)) }
            @for stage in &stop.stages {
                @let width = (stage.took_ms * 100).checked_div(stage.budget_ms).unwrap_or(100).min(100);
                div.stage data-stage=(stage.name) {
                    span.name { (stage.name) }
                    div.budget {
                        div class={ "bar" @if stage.cut { " cut" } } data-width=(width) {}
                    }
                    span.took { (ms_text(stage.took_ms)) " / " (ms_text(stage.budget_ms)) }
                    span.note { (stage.note) }
                    @if stage.cut { span.raise { "raise " (stage.setting) } }
                }
            }
        }
    }
}
