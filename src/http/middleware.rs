//! Cross-cutting request handling: per-request timeout, JSON bodies for every error,
//! metrics, request ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::to_bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, RequestId};

use super::error::error_response;
use super::metrics::Metrics;

/// Settings a reload may change while requests are served.
#[derive(Debug)]
pub struct LiveSettings {
    pub request_timeout: std::sync::RwLock<Duration>,
}

/// What the edge layer needs.
pub struct Edge {
    pub live: Arc<LiveSettings>,
    pub metrics: Arc<Metrics>,
}

/// Every request passes here once: the per-request timeout, the JSON error rewrite, and the
/// metrics. One layer rather than three, because each `from_fn` layer boxes a future and
/// clones the inner service per request (bench/run: the middleware was the whole gap
/// between shiftd and a bare axum server).
pub async fn edge(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let limit = *edge
        .live
        .request_timeout
        .read()
        .expect("settings lock poisoned");
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => json_errors(response).await,
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
    };
    edge.metrics.request(
        route.as_deref().unwrap_or("unmatched"),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Request ids `<process prefix>-<counter>`: unique per process and across restarts (the
/// prefix is random), without a system call per request as random UUIDs need.
#[derive(Clone)]
pub struct SequentialRequestId {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl SequentialRequestId {
    pub fn new() -> Self {
        Self {
            prefix: format!("{:08x}", rand::random::<u32>()).into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Default for SequentialRequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// Rewrites any error response that is not JSON (axum's rejections, 404 and 405 from the
/// router, 413 from the body limit) into the API's JSON error shape.
async fn json_errors(response: Response) -> Response {
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
