//! A notice receiver for tests: a small HTTP server in the test process that records every
//! POST it gets (headers, body, whether it was answered 2xx), and can be told to fail the
//! next N requests (500) or to hang (never answer) until told otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub json: Value,
    /// Answered 2xx (counted as delivered by the sender).
    pub accepted: bool,
}

impl Received {
    pub fn id(&self) -> &str {
        self.json["id"].as_str().unwrap_or("")
    }
    pub fn event(&self) -> &str {
        self.json["event"].as_str().unwrap_or("")
    }
    pub fn job_id(&self) -> i64 {
        self.json["job_id"].as_i64().unwrap_or(-1)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Received>>,
    /// Requests that arrived, answered or not (a hanging one counts at arrival).
    arrived: AtomicUsize,
    /// The notice id of each request, in order of arrival (also those never answered).
    arrivals: Mutex<Vec<String>>,
    fail_next: AtomicUsize,
    hang: AtomicBool,
    changed: Notify,
    released: Notify,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner
        .arrivals
        .lock()
        .unwrap()
        .push(json["id"].as_str().unwrap_or("").to_string());
    inner.arrived.fetch_add(1, Ordering::SeqCst);
    inner.changed.notify_waiters();
    while inner.hang.load(Ordering::SeqCst) {
        let released = inner.released.notified();
        if !inner.hang.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let fail = inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    inner.got.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
        json,
        accepted: !fail,
    });
    inner.changed.notify_waiters();
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// Listens on a free port (or `port`, to come back on the same address).
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/notice", post(handle))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/notice", self.addr)
    }

    /// Answers the next `n` requests 500.
    pub fn fail_next(&self, n: usize) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Holds every request unanswered until [`release`](Self::release).
    pub fn hang(&self) {
        self.inner.hang.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.inner.hang.store(false, Ordering::SeqCst);
        self.inner.released.notify_waiters();
    }

    pub fn arrived(&self) -> usize {
        self.inner.arrived.load(Ordering::SeqCst)
    }

    /// Notice ids in order of arrival, answered or not.
    pub fn arrivals(&self) -> Vec<String> {
        self.inner.arrivals.lock().unwrap().clone()
    }

    pub fn all(&self) -> Vec<Received> {
        self.inner.got.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.accepted).collect()
    }

    /// Waits until `pred` holds over everything received so far; fails the test after
    /// `timeout` with what was received.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Receiver) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            if pred(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(
                    pred(self),
                    "receiver: not {what} within {timeout:?}; received:\n{}",
                    self.dump()
                );
                return;
            }
        }
    }

    pub fn dump(&self) -> String {
        self.all()
            .iter()
            .map(|r| {
                format!(
                    "  accepted={} {}",
                    r.accepted,
                    String::from_utf8_lossy(&r.body)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
