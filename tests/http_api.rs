//! The service endpoints and the middleware every route goes through, called on the real
//! router (`shiftd::http::router`) with `tower::ServiceExt::oneshot` over a real SQLite
//! database: health, readiness (ready, database gone, draining), status, request ids,
//! JSON errors, the body limit and the per-request timeout.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use common::*;
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use shiftd::config::{Config, DatabaseConfig};
use shiftd::db::Db;
use shiftd::http::{AppState, Auth};
use shiftd::lifecycle::{
    self, App, Handle, Lifecycle, Notifier, Report, Signal, Stage, SystemdEnv,
};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// A database in a temp dir that lives as long as the value.
struct TestDb {
    db: Db,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let config = DatabaseConfig {
        url: format!("sqlite://{}/api.db?mode=rwc", dir.path().display()),
        ..DatabaseConfig::default()
    };
    let db = shiftd::db::connect(&config, shiftd::config::Backend::Sqlite)
        .await
        .expect("open SQLite");
    db.migrate().await.expect("migrate");
    TestDb { db, _dir: dir }
}

/// A lifecycle that is not serving: its handle says "starting", never "stopping".
fn idle_lifecycle(config: &Config) -> Lifecycle {
    let (tx, _) = mpsc::unbounded_channel();
    Lifecycle::new(
        shiftd::service::lifecycle_settings(config),
        SystemdEnv::default(),
        Notifier::Channel(tx),
        futures::stream::pending().boxed(),
    )
}

/// The application state as `shiftd::service::serve` builds it.
fn state(config: Config, db: &Db, lifecycle: Handle) -> AppState {
    let auth = Auth::from_config(&config.auth).expect("no tokens");
    shiftd::service::app_state(config, db.clone(), lifecycle, auth).expect("app state")
}

async fn app_with(config: Config, body_limit: usize) -> (Router, TestDb, Lifecycle) {
    let db = sqlite().await;
    let life = idle_lifecycle(&config);
    let router = shiftd::http::router(state(config, &db.db, life.handle()), body_limit);
    (router, db, life)
}

async fn app() -> (Router, TestDb, Lifecycle) {
    app_with(Config::default(), 1 << 20).await
}

/// Sends one request through the router; returns status, headers and the body as JSON
/// (or `Value::Null` when it is not JSON).
async fn call(
    router: &Router,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let response = tokio::time::timeout(secs(10), router.clone().oneshot(request))
        .await
        .expect("the router answers")
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("read the body").to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn assert_json_error(status: StatusCode, body: &serde_json::Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "every error is {{error, message}}: {body}"
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_the_database_answers() {
    let (router, _db, _life) = app().await;
    let (status, _, body) = call(&router, get("/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(&router, get("/readyz")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn readyz_is_503_with_a_reason_when_the_database_does_not_answer() {
    let (router, db, _life) = app().await;
    db.db.pool.close().await;
    let (status, _, body) = call(&router, get("/readyz")).await;
    assert_json_error(status, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["message"].as_str().unwrap().contains("database"),
        "{body}"
    );
    // Liveness is not readiness: the process still serves.
    assert_eq!(call(&router, get("/healthz")).await.0, 200);
}

#[tokio::test]
async fn status_shows_state_version_uptime_requests_pool_and_budgets() {
    let (router, _db, _life) = app().await;
    let (status, _, body) = call(&router, get("/v1/status")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "starting", "not serving yet: {body}");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64(), "{body}");
    assert!(body["in_flight_requests"].is_u64(), "{body}");
    assert_eq!(body["database"]["backend"], "sqlite", "{body}");
    assert!(body["database"]["pool"]["max"].is_u64(), "{body}");
    for budget in [
        "grace",
        "http_drain",
        "idle_close",
        "jobs_drain",
        "flush",
        "db_close",
        "stop_total",
        "request_timeout",
    ] {
        assert!(
            body["budgets"][budget].is_string(),
            "budgets.{budget}: {body}"
        );
    }
    assert_eq!(body["budgets"]["grace"], "1m", "{body}");
}

#[tokio::test]
async fn a_request_id_is_made_when_missing_and_kept_when_sent() {
    let (router, _db, _life) = app().await;
    let (_, headers, _) = call(&router, get("/healthz")).await;
    let made = headers
        .get("x-request-id")
        .expect("an X-Request-Id is added")
        .to_str()
        .unwrap();
    let (_, again, _) = call(&router, get("/healthz")).await;
    let second = again
        .get("x-request-id")
        .expect("an X-Request-Id is added")
        .to_str()
        .unwrap();
    assert_ne!(made, second, "each request gets its own id");
    let (prefix, n) = made.split_once('-').expect("<process prefix>-<counter>");
    assert_eq!(prefix.len(), 8, "{made}");
    assert!(n.parse::<u64>().is_ok(), "{made}");

    let request = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&router, request).await;
    assert_eq!(headers.get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test]
async fn request_ids_are_on_the_log_lines_of_the_request() {
    let lines = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer({
            let lines = lines.clone();
            move || SharedBuf(lines.clone())
        })
        .finish();
    // The service's own wrapper, which gives a request's lines its span.
    let _guard = tracing::subscriber::set_default(shiftd::logging::RequestScoped::new(subscriber));
    let (router, _db, _life) = app().await;
    let request = Request::get("/no/such/route")
        .header("x-request-id", "trace-me-42")
        .body(Body::empty())
        .unwrap();
    call(&router, request).await;
    let log = String::from_utf8_lossy(&lines.lock().unwrap()).into_owned();
    assert!(
        log.lines().any(|l| l.contains("request_id=trace-me-42")),
        "the request's lines carry its id:\n{log}"
    );
}

/// The span of a request costs it its creation, its fields' formatting and an enter and
/// exit on every poll, so it is made only for the lines a request logs: none for a request
/// that logs nothing (at `info`, a `GET /healthz`), one per line otherwise (at `debug`, the
/// edge's "finished processing request").
#[tokio::test]
async fn a_request_that_logs_nothing_opens_no_span() {
    use tracing_subscriber::layer::SubscriberExt;
    for (level, spans) in [
        (tracing_subscriber::filter::LevelFilter::INFO, 0),
        (tracing_subscriber::filter::LevelFilter::DEBUG, 1),
    ] {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let subscriber = tracing_subscriber::registry()
            .with(level)
            .with(SpanNames(seen.clone()));
        let _guard =
            tracing::subscriber::set_default(shiftd::logging::RequestScoped::new(subscriber));
        let (router, _db, _life) = app().await;
        seen.lock().unwrap().clear();
        let (status, _, _) = call(&router, get("/healthz")).await;
        assert_eq!(status, StatusCode::OK);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), spans, "at {level}: {seen:?}");
        assert!(seen.iter().all(|s| s == "request"), "{seen:?}");
    }
}

/// Records the name of every span made.
struct SpanNames(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanNames {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(attrs.metadata().name().to_string());
    }
}

struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (router, _db, _life) = app().await;
    let (status, _, body) = call(&router, get("/no/such/route")).await;
    assert_json_error(status, &body, StatusCode::NOT_FOUND);
    let (status, _, body) = call(
        &router,
        Request::post("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_json_error(status, &body, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_json() {
    let mut config = Config::default();
    config.tasks.insert(
        "noop".into(),
        toml::from_str("command = [\"/bin/true\"]").unwrap(),
    );
    let (router, _db, _life) = app_with(config, 64).await;
    let big = format!("{{\"params\": {{\"x\": \"{}\"}}}}", "a".repeat(1000));
    let request = Request::post("/v1/tasks/noop/jobs")
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = call(&router, request).await;
    assert_json_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_request_over_request_timeout_is_answered_503_json() {
    let mut config = Config::default();
    config.http.request_timeout = millis(300);
    config.tasks.insert(
        "noop".into(),
        toml::from_str("command = [\"/bin/true\"]").unwrap(),
    );
    let (router, _db, _life) = app_with(config, 1 << 20).await;
    // A body that never ends keeps the handler waiting.
    let endless = Body::from_stream(futures::stream::pending::<
        Result<bytes::Bytes, std::io::Error>,
    >());
    let request = Request::post("/v1/tasks/noop/jobs")
        .header("content-type", "application/json")
        .body(endless)
        .unwrap();
    let started = tokio::time::Instant::now();
    let (status, _, body) = call(&router, request).await;
    let took = started.elapsed();
    assert_json_error(status, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http.request_timeout"),
        "{body}"
    );
    assert!(took >= millis(300) && took < secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// Readiness during the stop: the real router served by the lifecycle.
// ---------------------------------------------------------------------------------------

struct DrainOnly;

impl App for DrainOnly {
    fn report(&self) -> Report {
        Report::default()
    }

    fn reload(&self) -> BoxFuture<'_, Result<lifecycle::Settings, String>> {
        async { Err("not in this test".to_string()) }.boxed()
    }

    fn stop_plan(&self) -> Vec<Stage> {
        vec![Stage::stop_accepting(), Stage::http_drain(secs(10))]
    }
}

#[tokio::test]
async fn readyz_is_503_draining_as_soon_as_the_stop_begins() {
    let mut config = Config::default();
    // A long keep-alive window: the connection below stays usable during the drain.
    config.shutdown.idle_close = secs(5);
    let db = sqlite().await;
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<String>();
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let signals = futures::stream::unfold(signal_rx, |mut rx| async move {
        rx.recv().await.map(|s| (s, rx))
    })
    .boxed();
    let mut life = Lifecycle::new(
        shiftd::service::lifecycle_settings(&config),
        SystemdEnv::default(),
        Notifier::Channel(notify_tx),
        signals,
    );
    let listener = life.listener("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr;
    let router = shiftd::http::router(state(config, &db.db, life.handle()), 1 << 20);
    let serving = tokio::spawn(life.serve(listener, router, Arc::new(DrainOnly)));
    wait_for_line(&mut notify_rx, "READY=1").await;

    let mut conn = connect(addr).await.unwrap();
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    send(&mut conn, &request).await.unwrap();
    let before = read_response(&mut conn, secs(5)).await.unwrap();
    assert_eq!(before.status, 200, "{}", before.body_text());

    signal_tx.send(Signal::Stop).unwrap();
    wait_for_line(&mut notify_rx, "STOPPING=1").await;
    send(&mut conn, &request).await.unwrap();
    let during = read_response(&mut conn, secs(5)).await.unwrap();
    assert_eq!(during.status, 503, "{}", during.body_text());
    let body: serde_json::Value = serde_json::from_slice(&during.body).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("draining"),
        "{body}"
    );
    assert!(during.closes(), "and the connection is told to close");

    let report = tokio::time::timeout(secs(5), serving)
        .await
        .expect("the stop ends once the connection closed")
        .unwrap();
    assert!(report.cut.is_empty(), "{report:?}");
}

/// Waits for a notification with the line `needle` on the lifecycle's channel.
async fn wait_for_line(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) {
    loop {
        let text = tokio::time::timeout(secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {needle} within 5s"))
            .expect("notifier open");
        if text.lines().any(|l| l == needle) {
            return;
        }
    }
}
