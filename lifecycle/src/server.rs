//! HTTP/1 serving with a drain that answers every connection it accepted.
//!
//! axum's own `serve` closes idle connections at once when asked to shut down, and a
//! connection whose request bytes are still in flight looks idle: that is the reset a bare
//! axum server shows under restarts. Here each connection has its own task that knows
//! whether a request is in progress. When the drain starts, responses carry
//! `Connection: close`; a keep-alive connection with no request in progress gets
//! `shutdown.idle_close` to send one before it is closed. A connection that has not sent
//! its first request yet is never closed that way: it was accepted, so its request is on
//! its way (only `http.header_read_timeout` and the drain budget bound it). Whatever is
//! still open when the stage's budget runs out is cut.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::listener::Listener;

/// Live numbers the application may show (e.g. in `/v1/status`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests whose response (body included) is not finished.
    pub in_flight: AtomicUsize,
    /// Connections open.
    pub connections: AtomicUsize,
}

/// Timing the connection tasks read when they start or drain.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_close: Duration,
}

/// The running server: an accept loop plus one task per connection.
pub struct Server {
    accept_stop: CancellationToken,
    accept_task: Option<JoinHandle<()>>,
    /// Cancelled when the drain starts; shared with the application (streams end on it).
    draining: CancellationToken,
    /// Cancelled when the drain budget is spent: every open connection is dropped.
    cut: CancellationToken,
    connections: TaskTracker,
    counters: Arc<Counters>,
}

/// What the drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished on its own.
    Drained,
    /// These many connections were still open at the deadline and were closed.
    Cut { open: usize, in_flight: usize },
}

impl Server {
    /// Starts accepting on `listener`, serving `router`.
    pub fn spawn(
        listener: Listener,
        router: Router,
        settings: Arc<std::sync::RwLock<ConnectionSettings>>,
        draining: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        let accept_stop = CancellationToken::new();
        let cut = CancellationToken::new();
        let connections = TaskTracker::new();
        let shared = Arc::new(Shared {
            router,
            settings,
            draining: draining.clone(),
            cut: cut.clone(),
            counters: counters.clone(),
        });
        let accept_task = tokio::spawn(accept_loop(
            listener,
            shared,
            connections.clone(),
            accept_stop.clone(),
        ));
        Self {
            accept_stop,
            accept_task: Some(accept_task),
            draining,
            cut,
            connections,
            counters,
        }
    }

    /// Stops calling `accept()`. Connections still in the kernel's backlog stay there: with
    /// socket activation the next process serves them.
    pub async fn stop_accepting(&mut self) {
        self.accept_stop.cancel();
        if let Some(task) = self.accept_task.take() {
            // The loop checks the token before every accept, so this returns at once.
            let _ = task.await;
        }
    }

    /// Requests in progress right now.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Lets open connections finish until `cut` is cancelled, then closes the rest.
    pub async fn drain(&self, cut: CancellationToken) -> DrainOutcome {
        self.draining.cancel();
        self.connections.close();
        tokio::select! {
            _ = self.connections.wait() => DrainOutcome::Drained,
            _ = cut.cancelled() => {
                let outcome = DrainOutcome::Cut {
                    open: self.counters.connections.load(Ordering::Relaxed),
                    in_flight: self.counters.in_flight.load(Ordering::Relaxed),
                };
                self.cut.cancel();
                // Each task drops its connection as soon as it sees the token.
                self.connections.wait().await;
                outcome
            }
        }
    }
}

struct Shared {
    router: Router,
    settings: Arc<std::sync::RwLock<ConnectionSettings>>,
    draining: CancellationToken,
    cut: CancellationToken,
    counters: Arc<Counters>,
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, shared.clone()));
            }
            Err(e) => {
                // EMFILE, ENOBUFS, ECONNABORTED: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed; retrying shortly (raise LimitNOFILE= if this says too many open files)");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    // Dropping the listener closes this process's descriptor only; it never calls
    // shutdown(), so a socket systemd passed us keeps its backlog for the next process.
    drop(listener);
}

/// Per-connection bookkeeping: is a request in progress right now, and was there one yet?
#[derive(Default)]
struct ConnectionState {
    busy: AtomicUsize,
    /// Requests started on this connection. Zero means a fresh connection whose first
    /// request may still be on the wire: closing it then would fail that request.
    requests: AtomicUsize,
}

/// Held while a request is in progress, body included.
struct BusyGuard {
    connection: Arc<ConnectionState>,
    counters: Arc<Counters>,
}

impl BusyGuard {
    fn new(connection: &Arc<ConnectionState>, counters: &Arc<Counters>) -> Self {
        connection.busy.fetch_add(1, Ordering::AcqRel);
        connection.requests.fetch_add(1, Ordering::AcqRel);
        counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            connection: connection.clone(),
            counters: counters.clone(),
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.connection.busy.fetch_sub(1, Ordering::AcqRel);
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct GuardedBody {
    inner: Body,
    _guard: BusyGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct OpenConnection(Arc<Counters>);

impl OpenConnection {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.connections.fetch_add(1, Ordering::AcqRel);
        Self(counters.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let _open = OpenConnection::new(&shared.counters);
    let settings = *shared.settings.read().expect("settings lock poisoned");
    let state = Arc::new(ConnectionState::default());
    let service = {
        let state = state.clone();
        let shared = shared.clone();
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let guard = BusyGuard::new(&state, &shared.counters);
            // One reference count for the request; a `CancellationToken` clone would take
            // its tree's lock twice per request.
            let shared = shared.clone();
            async move {
                let response = shared
                    .router
                    .clone()
                    .oneshot(request.map(Body::new))
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                // hyper takes any body: the guard rides along without a second box.
                let mut response = response.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                });
                if shared.draining.is_cancelled() {
                    // hyper closes the connection after writing a response that says so.
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let idle_check = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(idle_check);
    let mut drain_seen = false;
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shared.draining.cancelled(), if !drain_seen => {
                drain_seen = true;
                idle_check.as_mut().reset(Instant::now() + settings.idle_close);
            }
            _ = idle_check.as_mut(), if drain_seen && !closing => {
                let idle = state.busy.load(Ordering::Acquire) == 0;
                let served = state.requests.load(Ordering::Acquire) > 0;
                if idle && served {
                    // A keep-alive connection sent no new request within the window: close
                    // it (hyper closes an idle HTTP/1 connection at once).
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    // A response in progress carries `Connection: close`; a fresh
                    // connection's first request is on its way and will get that answer
                    // too. Look again later.
                    idle_check.as_mut().reset(Instant::now() + settings.idle_close);
                }
            }
            _ = shared.cut.cancelled() => break,
        }
    }
}
