//! Cross-cutting request handling: per-request timeout and JSON bodies for every error.

use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::error_response;

/// Settings a reload may change while requests are served.
#[derive(Debug)]
pub struct LiveSettings {
    pub request_timeout: std::sync::RwLock<Duration>,
}

/// Answers 503 when a handler runs longer than `http.request_timeout`. Streaming bodies
/// (log follow) are not cut here: the timeout covers producing the response head.
pub async fn request_timeout(
    State(live): State<Arc<LiveSettings>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = *live.request_timeout.read().expect("settings lock poisoned");
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                "request exceeded http.request_timeout ({}); answered 503",
                humantime::format_duration(limit)
            );
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took longer than http.request_timeout",
            )
        }
    }
}

/// Rewrites any error response that is not JSON (axum's rejections, 404 and 405 from the
/// router, 413 from the body limit) into the API's JSON error shape.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is not worth echoing.
    let text = to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut rewritten = error_response(status, &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The body was not read, so hyper closes the connection after this response; say
        // so, or a client reuses the connection and its next request fails.
        rewritten.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    rewritten
}
