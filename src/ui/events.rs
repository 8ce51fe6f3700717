//! A job's log as Server-Sent Events: `event: line` per output line (`id:` its sequence
//! number, so the browser's `Last-Event-ID` on reconnect resumes after the last line
//! shown), `event: state` with the job's JSON when it changes, `event: end` once the job
//! is final and every line is sent. The stream also ends, without `end`, when this
//! process begins to stop (a stop is never held) or after `http.follow_max`; the
//! browser's EventSource then reconnects by itself, to the next process after a restart.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::pages::visible_job;
use super::session::viewer;
use crate::http::AppState;
use crate::jobs::{Job, OutputLine};

/// Lines read from the database per step of the stream.
const BATCH: i64 = 500;

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    /// Start after this line (the last one the page showed); `Last-Event-ID` wins.
    pub after: Option<String>,
}

/// Where to resume: the `Last-Event-ID` the browser resends, else `?after=`, else 0.
fn resume_after(headers: &HeaderMap, q: &EventsQuery) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.after.as_deref())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .unwrap_or(0)
}

/// How long the browser waits before reconnecting a stream that ended.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// `GET /ui/jobs/{id}/events`.
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(viewer) = viewer(&state, &headers) else {
        return super::error_page(StatusCode::UNAUTHORIZED, "log in first");
    };
    let job = match visible_job(&state, &viewer, &id).await {
        Ok(job) => job,
        Err(page) => return *page,
    };
    let after = resume_after(&headers, &q);
    // A restart ends the stream; the browser reconnects after `retry` (its own default is
    // 3 s), and the next process usually serves within a few hundred milliseconds.
    let retry = futures::stream::once(std::future::ready(Ok(
        Event::default().retry(RECONNECT_AFTER)
    )));
    let mut response = Sse::new(retry.chain(job_stream(state, job.id, after)))
        .keep_alive(KeepAlive::default())
        .into_response();
    // nginx buffers proxied responses by default; an event must pass at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// What the stream has sent so far.
struct Progress {
    state: AppState,
    job_id: i64,
    after: i64,
    /// The last job JSON sent as `state`, to send it again only when it changed.
    shown: Option<serde_json::Value>,
    done: bool,
    until: tokio::time::Instant,
    poll: Duration,
}

fn line_event(line: &OutputLine) -> Event {
    let data = serde_json::json!({ "seq": line.seq, "stream": line.stream, "text": line.line });
    Event::default()
        .event("line")
        .id(line.seq.to_string())
        .data(data.to_string())
}

fn job_stream(
    state: AppState,
    job_id: i64,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let snapshot = state.snapshot();
    let config = &snapshot.config;
    let progress = Progress {
        until: tokio::time::Instant::now() + config.http.follow_max,
        poll: config
            .jobs
            .log_flush_interval
            .max(Duration::from_millis(100)),
        state,
        job_id,
        after,
        shown: None,
        done: false,
    };
    futures::stream::unfold(progress, |mut p| async move {
        let events = step(&mut p).await?;
        Some((futures::stream::iter(events.into_iter().map(Ok)), p))
    })
    .flatten()
}

/// The next events: new lines, a changed state, the end; `None` ends the stream.
async fn step(p: &mut Progress) -> Option<Vec<Event>> {
    if p.done {
        return None;
    }
    loop {
        if p.state.lifecycle.is_stopping() || tokio::time::Instant::now() >= p.until {
            return None;
        }
        let store = &p.state.jobs.store;
        // The job first, then the lines: lines written before a final state are stored
        // before it (the runner writes output first), so none is missed at the end.
        let job = store.get(p.job_id).await.ok().flatten()?;
        let lines = store.output(p.job_id, p.after, BATCH).await.ok()?;
        let mut events: Vec<Event> = lines.iter().map(line_event).collect();
        if let Some(last) = lines.last() {
            p.after = last.seq;
        }
        if let Some(event) = state_event(p, &job) {
            events.push(event);
        }
        if job.state.is_final() && (lines.len() as i64) < BATCH {
            events.push(Event::default().event("end").data(job.state.as_str()));
            p.done = true;
        }
        if !events.is_empty() {
            return Some(events);
        }
        tokio::select! {
            _ = p.state.lifecycle.stopping() => return None,
            _ = tokio::time::sleep_until(p.until) => return None,
            _ = tokio::time::sleep(p.poll) => {}
        }
    }
}

/// `event: state` with the job's JSON, when it differs from the last one sent.
fn state_event(p: &mut Progress, job: &Job) -> Option<Event> {
    let mut value = serde_json::to_value(job).ok()?;
    value["exit"] = serde_json::Value::String(super::pages::exit_text(job));
    // `updated_at` moves with every lease renewal; it is no change to show.
    let mut compared = value.clone();
    compared["updated_at"] = serde_json::Value::Null;
    if p.shown.as_ref() == Some(&compared) {
        return None;
    }
    p.shown = Some(compared);
    Some(Event::default().event("state").data(value.to_string()))
}
