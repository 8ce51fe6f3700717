//! Cross-cutting request handling: the request body (size and time limits), the
//! per-request timeout, JSON bodies for every error, metrics, request ids and log spans.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::logging::{self, RequestTag};
use arc_swap::ArcSwap;
use axum::body::{to_bytes, Body};
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::ServiceExt as _;

use super::error::error_response;
use super::metrics::Metrics;
use super::Snapshot;

/// What the edge layer needs.
pub struct Edge {
    /// What a reload replaces; the edge reads its timeouts from it.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// `http.body_limit` in bytes (a restart setting).
    pub body_limit: usize,
    pub ids: RequestIds,
}

/// Every request passes here once: its request id and log tag, the body read, the
/// per-request timeout, the JSON error rewrite, and the metrics. One layer rather than
/// five, because each layer wraps the request's future (and tower-http's trace layer its
/// body too), and a plain tower layer rather than axum's `from_fn`, which boxes the inner
/// service as well as the future per request (bench/run: the middleware was the whole gap
/// between shiftd and a bare axum server).
#[derive(Clone)]
pub struct EdgeLayer(pub Arc<Edge>);

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            edge: self.0.clone(),
        }
    }
}

/// A route's service with the edge around it (see [`EdgeLayer`]).
#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    edge: Arc<Edge>,
}

impl<S> tower::Service<Request> for EdgeService<S>
where
    S: tower::Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The one made ready is the one that serves; a clone waits for the next request.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let edge = self.edge.clone();
        let tag = RequestTag {
            id: edge.ids.of(request.headers()),
            method: request.method().clone(),
            uri: request.uri().clone(),
        };
        Box::pin(async move {
            let handled = handle(&edge, inner, request);
            let (mut response, tag) = logging::in_request(tag, handled).await;
            response.headers_mut().insert(REQUEST_ID, tag.id);
            Ok(response)
        })
    }
}

/// What the edge does with the request's tag in place (its log lines carry it).
async fn handle<S>(edge: &Edge, inner: S, request: Request) -> Response
where
    S: tower::Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| super::metrics::route_label(p.as_str()));
    let started = Instant::now();
    // Both timeouts from one snapshot, read once (the guard is dropped before any await).
    let (limit, body_timeout) = {
        let snapshot = edge.snapshot.load();
        let http = &snapshot.config.http;
        (http.request_timeout, http.body_read_timeout)
    };
    let handled = async {
        match read_body(edge, body_timeout, request).await {
            Ok(request) => {
                let Ok(response) = inner.oneshot(request).await;
                json_errors(response.into_response()).await
            }
            Err(refused) => refused,
        }
    };
    let response = match tokio::time::timeout(limit, handled).await {
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
    };
    let took = started.elapsed();
    let status = response.status().as_u16();
    tracing::debug!(status, took = ?took, "finished processing request");
    edge.metrics
        .request(route.unwrap_or("unmatched"), status, took);
    response
}

/// Reads the whole request body under `http.body_limit` and `http.body_read_timeout`, so
/// a handler gets a complete body and a client that declares too much or sends too slowly
/// is answered at once (413) or at the timeout (408) instead of holding the request until
/// `http.request_timeout`. The refusals close the connection: the rest of the body is
/// never read, so the connection cannot carry another request.
async fn read_body(edge: &Edge, timeout: Duration, request: Request) -> Result<Request, Response> {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = edge.body_limit;
    let too_large = || {
        closing(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than http.body_limit ({}); send a smaller body",
                crate::config::ByteSize(limit as u64)
            ),
        ))
    };
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        // Closing a connection with unread data makes the kernel reset it, and the client
        // may lose the 413 with it. A body of modest size is read and thrown away first
        // (bounded by its size and http.body_read_timeout), as nginx's lingering close does.
        if declared <= DISCARD_AT_MOST {
            discard(request.into_body(), timeout).await;
        }
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(closing(error_response(
            StatusCode::BAD_REQUEST,
            &format!("the request body could not be read: {e}; send it again"),
        ))),
        Err(_) => {
            tracing::info!(
                "a request body took longer than http.body_read_timeout ({}); answered 408",
                humantime::format_duration(timeout)
            );
            Err(closing(error_response(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within http.body_read_timeout ({}); send it in one go or ask the operator to raise the setting",
                    humantime::format_duration(timeout)
                ),
            )))
        }
    }
}

/// The largest refused body that is read and thrown away before the 413 (see `read_body`).
const DISCARD_AT_MOST: u64 = 16 << 20;

/// A refused body stops being thrown away once the client pauses this long: one that is
/// sending gets its 413 intact, one that declared a size and sends nothing gets it at once.
const DISCARD_IDLE: Duration = Duration::from_millis(200);

/// Reads a body to its end, keeping nothing, for at most `timeout` and while it keeps coming.
async fn discard(mut body: Body, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DISCARD_IDLE, body.frame()).await {}
    })
    .await;
}

/// Marks a response as the last on its connection.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: the one the request brings in `X-Request-Id` (nginx's `$request_id`, a
/// client's own), or `<process prefix>-<counter>`, unique per process and across restarts
/// (the prefix is random) without a system call per request as random UUIDs need.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        Self {
            prefix: format!("{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
        }
    }

    /// The id of the request with these headers: the one it carries, or a new one.
    pub fn of(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(given) = headers.get(REQUEST_ID) {
            return given.clone();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = String::with_capacity(self.prefix.len() + 21);
        text.push_str(&self.prefix);
        let _ = write!(text, "-{n}");
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .expect("hex digits, a dash and digits are a valid header value")
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Rewrites any error response that is not JSON (axum's rejections, 404 and 405 from the
/// router, 413 from the body limit) into the API's JSON error shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_formed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The dashboard's (src/ui) error pages are HTML for a browser, and stay so.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_formed {
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
        return closing(rewritten);
    }
    rewritten
}
