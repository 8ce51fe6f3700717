//! The dashboard at `/ui/`: server-rendered pages (maud), one small script, a session
//! cookie per token, and Server-Sent Events for a job's log.
//!
//! It is served by the same router as the API, so its requests drain like every other;
//! it reads through the same `Store` with bounded queries and acts through the same
//! `Store`/`Runner` methods the API handlers call, with the same `Caller` checks. None of
//! it is in the OpenAPI document, and none of its layers wraps a `/v1` route.

mod actions;
pub mod chart;
pub mod events;
pub mod overview;
mod pages;
mod pages_overview;
mod pages_tasks;
mod pattern;
pub mod session;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use crate::http::AppState;

/// The banner of a dashboard without tokens, and why its forms are gone.
pub const READ_ONLY: &str = "read-only: no tokens are configured (auth.tokens)";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const UI_JS: &str = include_str!("assets/ui.js");
const UI_CSS: &str = include_str!("assets/ui.css");

/// The dashboard's routes, merged into the app's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages_overview::overview_page))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/jobs", get(pages::jobs_page))
        .route("/ui/jobs/{id}", get(pages::job_page))
        .route("/ui/jobs/{id}/events", get(events::job_events))
        .route("/ui/jobs/{id}/cancel", post(actions::cancel))
        .route("/ui/tasks", get(pages_tasks::tasks_page))
        .route("/ui/tasks/{task}/pause", post(actions::pause))
        .route("/ui/tasks/{task}/resume", post(actions::resume))
        .route("/ui/tasks/{task}/start", post(actions::start))
        .route("/ui/assets/ui.js", get(|| asset(UI_JS, "text/javascript")))
        .route("/ui/assets/ui.css", get(|| asset(UI_CSS, "text/css")))
        .route(
            "/ui/{*rest}",
            get(|| async { error_page(StatusCode::NOT_FOUND, "no such page") }),
        )
        .layer(axum::middleware::from_fn(headers))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The headers of every dashboard response: a strict CSP (no inline script or style, no
/// other origin), no sniffing, no referrer to other sites, and no caching of pages.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A rendered page as a response.
pub fn html(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page saying why a request was refused.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    (status, html(pages::error_markup(status, message))).into_response()
}

/// An API error as a page.
pub fn api_error_page(e: crate::http::ApiError) -> Response {
    if let crate::http::ApiError::Internal(e) = &e {
        tracing::error!(error = ?e, "dashboard request failed");
    }
    error_page(e.status(), &e.to_string())
}
