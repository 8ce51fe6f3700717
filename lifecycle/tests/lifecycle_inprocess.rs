//! The lifecycle in-process: `shiftd_lifecycle::Lifecycle` serving a small axum app, with
//! notifications on a channel and signals fed from a channel, so the drain, the stage
//! budgets, the heartbeats and startup steps can be held and released exactly.
//!
//! Handlers that must stay in flight wait on a `tokio::sync::Notify`, as in axum's
//! graceful-shutdown example test; nothing here sleeps to make something happen.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use shiftd_lifecycle::{
    App, Handle, Lifecycle, Notifier, Report, SettingNames, Settings, Signal, Stage, StageOutcome,
    StageSpec, StartupError, Step, StopReport, SystemdEnv,
};
use testkit::*;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// The rig: a lifecycle whose notifications, signals and logs the test holds.
// ---------------------------------------------------------------------------------------

/// The names a configuration file would give the settings (the messages name them).
const NAMES: SettingNames = SettingNames {
    listen: "http.listen",
    step_timeout: "startup.step_timeout",
    grace: "shutdown.grace",
};

fn settings(grace: Duration) -> Settings {
    Settings {
        header_read_timeout: secs(10),
        step_timeout: secs(5),
        grace,
        idle_close: millis(250),
        names: NAMES,
    }
}

/// Builds the stop plan each time the stop begins.
type PlanFn = Box<dyn Fn() -> Vec<Stage> + Send + Sync>;

struct TestApp {
    plan: PlanFn,
    /// What the next reload answers.
    reload: Mutex<Result<Settings, String>>,
}

impl App for TestApp {
    fn report(&self) -> Report {
        Report {
            status_line: "test: serving".into(),
            details: "answer=42".into(),
        }
    }

    fn reload(&self) -> BoxFuture<'_, Result<Settings, String>> {
        let result = self.reload.lock().unwrap().clone();
        async move { result }.boxed()
    }

    fn stop_plan(&self) -> Vec<Stage> {
        (self.plan)()
    }
}

/// The HTTP drain stage, its budget named as a configuration file would name it.
fn http_drain_stage(budget: Duration) -> Stage {
    StageSpec::http_drain("shutdown.http_drain", budget).into_stage()
}

/// The default plan: stop accepting, then drain HTTP for `http_drain`.
fn http_plan(http_drain: Duration) -> PlanFn {
    Box::new(move || vec![Stage::stop_accepting(), http_drain_stage(http_drain)])
}

/// Captured log lines (tracing's fmt output without colours), for this test's thread.
/// `#[tokio::test]` runs every task on the test's own thread, so a thread-local default
/// subscriber sees everything the lifecycle logs.
#[derive(Clone)]
struct LogWriter(Arc<Record<Line>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines() {
            self.0.push(Line {
                at: Instant::now(),
                text: line.to_string(),
            });
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A lifecycle starting up: the test runs steps on `life`, then calls [`Rig::serve`].
struct Rig {
    life: Lifecycle,
    signals: mpsc::UnboundedSender<Signal>,
    notify: Arc<Record<Datagram>>,
    log: Arc<Record<Line>>,
    returned_tx: watch::Sender<Option<i32>>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

/// A lifecycle serving, in a task.
struct Running {
    addr: SocketAddr,
    handle: Handle,
    signals: mpsc::UnboundedSender<Signal>,
    notify: Arc<Record<Datagram>>,
    log: Arc<Record<Line>>,
    serving: JoinHandle<StopReport>,
    /// When the test sent the first stop signal.
    stop_sent: Option<Instant>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

impl Rig {
    fn new(settings: Settings, systemd: SystemdEnv) -> Self {
        let (returned_tx, returned_rx) = watch::channel(None);
        let notify = Record::new("notify", returned_rx.clone());
        let log = Record::new("log", returned_rx);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer({
                let log = log.clone();
                move || LogWriter(log.clone())
            })
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);

        let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<String>();
        {
            let notify = notify.clone();
            tokio::spawn(async move {
                while let Some(text) = notify_rx.recv().await {
                    notify.push(Datagram {
                        at: Instant::now(),
                        text,
                    });
                }
            });
        }
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let stream = futures::stream::unfold(signal_rx, |mut rx| async move {
            rx.recv().await.map(|s| (s, rx))
        })
        .boxed();
        let life = Lifecycle::new(settings, systemd, Notifier::Channel(notify_tx), stream);
        Self {
            life,
            signals,
            notify,
            log,
            returned_tx,
            _log_guard: log_guard,
        }
    }

    /// Binds 127.0.0.1:0 and serves `router` with `app` in a task; READY=1 has been sent
    /// when this returns.
    async fn serve(mut self, router: Router, app: TestApp) -> Running {
        let listener = self
            .life
            .listener("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr;
        let handle = self.life.handle();
        let returned = self.returned_tx;
        let life = self.life;
        let serving = tokio::spawn(async move {
            let report = life.serve(listener, router, Arc::new(app)).await;
            let _ = returned.send(Some(if report.cut.is_empty() { 0 } else { 75 }));
            report
        });
        self.notify.wait_line("READY=1", secs(5)).await;
        Running {
            addr,
            handle,
            signals: self.signals,
            notify: self.notify,
            log: self.log,
            serving,
            stop_sent: None,
            _log_guard: self._log_guard,
        }
    }
}

impl Running {
    async fn start(router: Router, app: TestApp, grace: Duration) -> Self {
        Self::start_with(router, app, settings(grace)).await
    }

    async fn start_with(router: Router, app: TestApp, settings: Settings) -> Self {
        Rig::new(settings, SystemdEnv::default())
            .serve(router, app)
            .await
    }

    fn signal(&mut self, signal: Signal) {
        self.stop_sent.get_or_insert_with(Instant::now);
        self.signals
            .send(signal)
            .expect("the lifecycle reads signals");
    }

    /// Waits for the stop to end; returns the report and the time since the first stop signal.
    async fn stopped(self, timeout: Duration) -> (StopReport, Duration) {
        let report = match tokio::time::timeout(timeout, self.serving).await {
            Ok(report) => report.expect("serve does not panic"),
            Err(_) => panic!(
                "the stop did not end within {timeout:?}; log:\n{}",
                self.log.dump()
            ),
        };
        (
            report,
            self.stop_sent.expect("a stop signal was sent").elapsed(),
        )
    }
}

/// A route that reports when it is entered and answers only once released.
#[derive(Clone, Default)]
struct Held {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Held {
    fn route(&self) -> Router {
        let held = self.clone();
        Router::new().route(
            "/held",
            get(move || {
                let held = held.clone();
                async move {
                    held.entered.notify_one();
                    held.release.notified().await;
                    "released"
                }
            }),
        )
    }
}

fn fast_route() -> Router {
    Router::new().route("/fast", get(|| async { "fast" }))
}

/// Spawns a client that sends `GET path` on a fresh connection and reads the response.
fn spawn_get(addr: SocketAddr, path: &'static str) -> JoinHandle<Result<RawResponse, String>> {
    tokio::spawn(async move { http_get(addr, path).await })
}

async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {timeout:?}"))
}

// ---------------------------------------------------------------------------------------
// The drain.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_drain_waits_for_a_request_in_flight_and_ends_when_it_is_answered() {
    let held = Held::default();
    let app = TestApp {
        plan: http_plan(secs(10)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Running::start(held.route().merge(fast_route()), app, secs(20)).await;

    let client = spawn_get(rig.addr, "/held");
    within("the handler is entered", secs(5), held.entered.notified()).await;
    rig.signal(Signal::Stop);
    rig.notify.wait_line("STOPPING=1", secs(5)).await;
    rig.log
        .wait_contains("shutdown stage stop-accepting done", secs(5))
        .await;
    assert!(rig.handle.is_stopping());

    // No longer accepting: this process bound the socket, so new connections are refused.
    let refused = tokio::net::TcpStream::connect(rig.addr).await;
    assert!(
        refused.is_err(),
        "a connection after stop-accepting is refused: {refused:?}"
    );
    assert!(
        !rig.serving.is_finished(),
        "the drain waits for the held request"
    );

    held.release.notify_one();
    let response = within("the held response", secs(5), client)
        .await
        .unwrap()
        .expect("the held request is answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "released");
    assert!(
        response.closes(),
        "answered during the drain with Connection: close: {:?}",
        response.headers
    );

    let (report, took) = rig.stopped(secs(5)).await;
    println!("drain with one held request: stopped {took:?} after SIGTERM");
    assert!(report.cut.is_empty(), "nothing was cut: {report:?}");
    let names: Vec<_> = report.stages.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["stop-accepting", "http-drain"]);
    let drain = &report.details[1];
    assert_eq!(
        drain.note, "every connection finished; 1 requests drained",
        "{report:?}"
    );
    assert_eq!(drain.took, report.stages[1].1);
}

#[tokio::test]
async fn an_idle_stop_takes_milliseconds() {
    let app = TestApp {
        plan: http_plan(secs(10)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Running::start(fast_route(), app, secs(20)).await;
    let response = http_get(rig.addr, "/fast").await.unwrap();
    assert_eq!(response.status, 200);
    rig.signal(Signal::Stop);
    let (report, took) = rig.stopped(secs(5)).await;
    println!(
        "in-process idle stop: {took:?} ({:?} in the stages)",
        report.elapsed
    );
    assert!(report.cut.is_empty());
    assert!(
        took < millis(500),
        "no connection open: no budget is waited out ({took:?})"
    );
}

#[tokio::test]
async fn keep_alive_connections_get_connection_close_in_the_window_and_fresh_ones_are_always_served(
) {
    let app = TestApp {
        plan: http_plan(secs(10)),
        reload: Mutex::new(Err("unused".into())),
    };
    let settings = Settings {
        idle_close: secs(1),
        ..settings(secs(20))
    };
    let mut rig = Running::start_with(fast_route(), app, settings).await;
    let request = format!("GET /fast HTTP/1.1\r\nHost: {}\r\n\r\n", rig.addr);

    // Two keep-alive connections that served a request, and one fresh connection.
    let mut reused = connect(rig.addr).await.unwrap();
    let mut idle = connect(rig.addr).await.unwrap();
    for conn in [&mut reused, &mut idle] {
        send(conn, &request).await.unwrap();
        let r = read_response(conn, secs(5)).await.unwrap();
        assert!(
            r.status == 200 && !r.closes(),
            "keep-alive before the stop: {r:?}"
        );
    }
    let mut fresh = connect(rig.addr).await.unwrap();
    // The fresh connection is accepted before the stop (the server counts it).
    within("the fresh connection is accepted", secs(5), async {
        while rig.handle.connections() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    rig.signal(Signal::Stop);
    rig.notify.wait_line("STOPPING=1", secs(5)).await;

    // Within the window a keep-alive connection is answered, with Connection: close.
    send(&mut reused, &request).await.unwrap();
    let r = read_response(&mut reused, secs(5)).await.unwrap();
    assert!(
        r.status == 200 && r.closes(),
        "answered and told to close: {r:?}"
    );
    wait_closed(&mut reused, secs(5))
        .await
        .expect("closed after that response");

    // One that stays idle is closed once the window has passed.
    wait_closed(&mut idle, secs(5))
        .await
        .expect("an idle keep-alive connection is closed after idle_close");
    let window_passed = rig.stop_sent.unwrap().elapsed();
    assert!(
        window_passed >= millis(900),
        "not before idle_close: {window_passed:?}"
    );

    // The fresh connection's first request comes after the window: it is still served.
    send(&mut fresh, &request).await.unwrap();
    let r = read_response(&mut fresh, secs(5))
        .await
        .expect("a fresh connection is served even after idle_close");
    assert!(r.status == 200 && r.closes(), "{r:?}");

    let (report, took) = rig.stopped(secs(5)).await;
    assert!(report.cut.is_empty(), "{report:?}");
    println!("stop with keep-alive and fresh connections (idle_close 1s): {took:?}");
}

#[tokio::test]
async fn an_endless_streaming_response_is_cut_at_the_http_drain_budget() {
    let endless = Router::new().route(
        "/stream",
        get(|| async {
            let ticks = futures::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(millis(50)).await;
                Some((Ok::<_, std::io::Error>(format!("tick {n}\n")), n + 1))
            });
            Body::from_stream(ticks)
        }),
    );
    let app = TestApp {
        plan: http_plan(secs(1)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Running::start(endless, app, secs(20)).await;

    let mut stream = connect(rig.addr).await.unwrap();
    send(&mut stream, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let n = within(
        "the first chunk",
        secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut first),
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));

    rig.signal(Signal::Stop);
    let sent = rig.stop_sent.unwrap();
    let log = rig.log.clone();
    // The stream keeps flowing until the cut; then the connection closes.
    let mut buf = [0u8; 4096];
    let closed_after = within("the stream is cut", secs(5), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return sent.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    let (report, took) = rig.stopped(secs(5)).await;
    println!("endless stream: cut after {closed_after:?}, stop took {took:?} (http_drain 1s)");
    assert!(
        closed_after >= millis(900),
        "the stream runs until the budget: {closed_after:?}"
    );
    assert!(
        took < millis(2500),
        "the stream does not hold the stop past the budget (+1s to cut): {took:?}"
    );
    assert_eq!(report.cut, ["http-drain"]);
    let warning = log
        .wait_contains("shutdown stage http-drain cut", secs(1))
        .await;
    assert!(
        warning.text.contains("WARN") && warning.text.contains("raise shutdown.http_drain"),
        "{}",
        warning.text
    );
}

#[tokio::test]
async fn a_stream_that_ends_when_the_stop_begins_does_not_wait_for_the_budget() {
    let handle_slot: Arc<Mutex<Option<Handle>>> = Arc::default();
    let router = {
        let slot = handle_slot.clone();
        Router::new().route(
            "/events",
            get(move || {
                let handle = slot
                    .lock()
                    .unwrap()
                    .clone()
                    .expect("the handle is set before requests");
                async move {
                    // An SSE-like stream that ends as the stop begins (Handle::stopping).
                    let ticks = futures::stream::unfold(0u64, |n| async move {
                        tokio::time::sleep(millis(50)).await;
                        Some((Ok::<_, std::io::Error>(format!("tick {n}\n")), n + 1))
                    })
                    .take_until(handle.stopping());
                    Body::from_stream(ticks)
                }
            }),
        )
    };
    let app = TestApp {
        plan: http_plan(secs(10)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Running::start(router, app, secs(20)).await;
    *handle_slot.lock().unwrap() = Some(rig.handle.clone());

    let mut stream = connect(rig.addr).await.unwrap();
    send(&mut stream, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    within(
        "the first chunk",
        secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut first),
    )
    .await
    .unwrap();
    rig.signal(Signal::Stop);
    let (report, took) = rig.stopped(secs(5)).await;
    println!("stream ending on Handle::stopping: stop took {took:?} (http_drain 10s)");
    assert!(report.cut.is_empty(), "{report:?}");
    assert!(took < secs(1), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// Budgets, heartbeats, fast stop.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn heartbeats_extend_the_stop_while_it_runs_and_stop_at_the_grace_deadline() {
    let grace = millis(2500);
    let plan: PlanFn = Box::new(|| {
        vec![
            Stage::stop_accepting(),
            // A stage that never finishes and ignores being told to cut.
            Stage::waiting("stuck", "shutdown.stuck", secs(60), secs(1), |_ctx| {
                futures::future::pending::<StageOutcome>().boxed()
            }),
        ]
    });
    let mut rig = Running::start(
        fast_route(),
        TestApp {
            plan,
            reload: Mutex::new(Err("unused".into())),
        },
        grace,
    )
    .await;
    rig.signal(Signal::Stop);
    let sent = rig.stop_sent.unwrap();
    let notify = rig.notify.clone();
    let log = rig.log.clone();
    let (report, took) = rig.stopped(grace + secs(2)).await;

    let heartbeats: Vec<(Duration, String)> = notify
        .all()
        .into_iter()
        .filter_map(|d| {
            d.value("EXTEND_TIMEOUT_USEC")
                .map(|v| (d.at.duration_since(sent), v.to_string()))
        })
        .collect();
    println!(
        "stop with a stuck stage, grace {grace:?}: ended after {took:?}; heartbeats at {:?}",
        heartbeats.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    assert!(
        heartbeats.len() >= 2,
        "a heartbeat about every second while the stop runs: {heartbeats:?}"
    );
    for (at, value) in &heartbeats {
        assert!(
            *at < grace,
            "no heartbeat after the grace deadline: one at {at:?}"
        );
        let usec: u64 = value.parse().unwrap();
        assert!(
            (2_000_000..=10_000_000).contains(&usec),
            "each extends a few seconds: {usec}"
        );
    }
    for pair in heartbeats.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap <= millis(1500),
            "heartbeats come about every second: gap {gap:?}"
        );
    }
    assert!(
        took >= grace - millis(100) && took < grace + millis(500),
        "the stop is bounded by grace: {took:?}"
    );
    assert_eq!(report.cut, ["stuck"]);
    // The report keeps, per stage, what a history of stops shows.
    assert_eq!(report.cause, shiftd_lifecycle::StopCause::Graceful);
    let stuck = &report.details[1];
    assert_eq!(
        (stuck.name, stuck.setting, stuck.budget, stuck.cut),
        ("stuck", "shutdown.stuck", secs(60), true),
        "{report:?}"
    );
    assert_eq!(stuck.note, "did not finish in time and was abandoned");
    assert_eq!(report.details[0].name, "stop-accepting");
    assert!(!report.details[0].cut);
    let warning = log.wait_contains("shutdown stage stuck cut", secs(1)).await;
    assert!(
        warning.text.contains("WARN") && warning.text.contains("shutdown.stuck"),
        "{}",
        warning.text
    );
    // The lifecycle has returned: nothing more can arrive.
    assert!(notify
        .all()
        .iter()
        .filter(|d| d.has_key("EXTEND_TIMEOUT_USEC"))
        .all(|d| d.at.duration_since(sent) < grace));
}

#[tokio::test]
async fn a_second_stop_signal_skips_the_waiting_but_still_runs_finishing_stages_in_order() {
    let held = Held::default();
    let flushed = Arc::new(AtomicBool::new(false));
    let plan: PlanFn = {
        let flushed = flushed.clone();
        Box::new(move || {
            let flushed = flushed.clone();
            vec![
                Stage::stop_accepting(),
                http_drain_stage(secs(30)),
                Stage::waiting("jobs", "shutdown.jobs_drain", secs(30), secs(1), |ctx| {
                    async move {
                        ctx.cut.cancelled().await;
                        StageOutcome::Cut("stopped the jobs".into())
                    }
                    .boxed()
                }),
                Stage::finishing("flush", "shutdown.flush", secs(5), move |_ctx| {
                    async move {
                        flushed.store(true, Ordering::SeqCst);
                        StageOutcome::Done("flushed".into())
                    }
                    .boxed()
                }),
            ]
        })
    };
    let mut rig = Running::start(
        held.route(),
        TestApp {
            plan,
            reload: Mutex::new(Err("unused".into())),
        },
        secs(80),
    )
    .await;
    let client = spawn_get(rig.addr, "/held");
    within("the handler is entered", secs(5), held.entered.notified()).await;

    rig.signal(Signal::Stop);
    rig.log
        .wait_contains("shutdown stage stop-accepting done", secs(5))
        .await;
    let second = Instant::now();
    rig.signal(Signal::Stop);
    let log = rig.log.clone();
    let (report, _) = rig.stopped(secs(5)).await;
    let took = second.elapsed();
    println!("second stop signal: stopped {took:?} after it (http_drain and jobs_drain 30s)");
    assert!(
        took < millis(1500),
        "waiting stages are cut at once: {took:?}"
    );
    assert_eq!(report.cut, ["http-drain", "jobs"]);
    assert!(
        flushed.load(Ordering::SeqCst),
        "the finishing stage still ran"
    );
    let names: Vec<_> = report.stages.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["stop-accepting", "http-drain", "jobs", "flush"]);
    log.wait_contains("second stop signal", secs(1)).await;
    let outcome = within("the held client", secs(5), client).await.unwrap();
    assert!(outcome.is_err(), "the held request was cut: {outcome:?}");
}

#[tokio::test]
async fn sigquit_stops_fast_from_the_start() {
    let held = Held::default();
    let app = TestApp {
        plan: http_plan(secs(30)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Running::start(held.route(), app, secs(60)).await;
    let _client = spawn_get(rig.addr, "/held");
    within("the handler is entered", secs(5), held.entered.notified()).await;
    rig.signal(Signal::FastStop);
    let (report, took) = rig.stopped(secs(5)).await;
    assert!(took < millis(1500), "{took:?}");
    assert_eq!(report.cut, ["http-drain"]);
    assert_eq!(report.cause, shiftd_lifecycle::StopCause::Fast);
}

// ---------------------------------------------------------------------------------------
// Reload, report, watchdog.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reload_sends_reloading_and_monotonic_usec_in_one_datagram_then_ready() {
    let app = TestApp {
        plan: http_plan(secs(1)),
        reload: Mutex::new(Ok(settings(secs(30)))),
    };
    let mut rig = Running::start(fast_route(), app, secs(20)).await;
    rig.signals.send(Signal::Reload).unwrap();
    let reloading = rig.notify.wait_line("RELOADING=1", secs(5)).await;
    assert!(
        reloading.has_key("MONOTONIC_USEC"),
        "same datagram: {reloading:?}"
    );
    rig.notify.wait_line("READY=1", secs(5)).await;
    rig.log
        .wait_contains("configuration reloaded", secs(5))
        .await;

    rig.signals.send(Signal::Report).unwrap();
    let report = rig.log.wait_contains("status report", secs(5)).await;
    assert!(
        report.text.contains("answer=42") && report.text.contains("state=\"ready\""),
        "{}",
        report.text
    );

    rig.signal(Signal::Stop);
    rig.stopped(secs(5)).await;
}

#[tokio::test]
async fn a_rejected_reload_keeps_serving_and_still_sends_ready() {
    let app = TestApp {
        plan: http_plan(secs(1)),
        reload: Mutex::new(Err("`log.level`: no such level".into())),
    };
    let mut rig = Running::start(fast_route(), app, secs(20)).await;
    rig.signals.send(Signal::Reload).unwrap();
    rig.notify.wait_line("RELOADING=1", secs(5)).await;
    rig.notify.wait_line("READY=1", secs(5)).await;
    let warning = rig.log.wait_contains("reload rejected", secs(5)).await;
    assert!(
        warning.text.contains("WARN") && warning.text.contains("log.level"),
        "{}",
        warning.text
    );
    assert_eq!(http_get(rig.addr, "/fast").await.unwrap().status, 200);
    rig.signal(Signal::Stop);
    rig.stopped(secs(5)).await;
}

/// An application whose reload never finishes (a config file on a hung mount, say).
struct HangingReload;

impl App for HangingReload {
    fn report(&self) -> Report {
        Report::default()
    }

    fn reload(&self) -> BoxFuture<'_, Result<Settings, String>> {
        futures::future::pending().boxed()
    }

    fn stop_plan(&self) -> Vec<Stage> {
        vec![Stage::stop_accepting(), http_drain_stage(secs(1))]
    }
}

#[tokio::test]
async fn a_stop_signal_during_a_hung_reload_stops_at_once() {
    let mut rig = Rig::new(settings(secs(20)), SystemdEnv::default());
    let listener = rig.life.listener("127.0.0.1:0").await.unwrap();
    let Rig {
        life,
        signals,
        notify,
        log,
        _log_guard,
        ..
    } = rig;
    let serving = tokio::spawn(life.serve(listener, fast_route(), Arc::new(HangingReload)));
    notify.wait_line("READY=1", secs(5)).await;
    signals.send(Signal::Reload).unwrap();
    notify.wait_line("RELOADING=1", secs(5)).await;

    let sent = Instant::now();
    signals.send(Signal::Stop).unwrap();
    let report = match tokio::time::timeout(secs(10), serving).await {
        Ok(report) => report.unwrap(),
        Err(_) => panic!("no stop; log:\n{}", log.dump()),
    };
    let took = sent.elapsed();
    println!("stop during a hung reload: {took:?} (step_timeout 5s)");
    assert!(
        took < secs(1),
        "SIGTERM does not wait for the reload (up to startup.step_timeout): {took:?}"
    );
    assert!(report.cut.is_empty(), "{report:?}");
    assert!(notify.any(|d| d.has("STOPPING=1")).is_some());
}

#[tokio::test]
async fn the_watchdog_pings_while_serving() {
    let systemd = SystemdEnv {
        watchdog: Some(millis(200)),
        ..SystemdEnv::default()
    };
    let app = TestApp {
        plan: http_plan(secs(1)),
        reload: Mutex::new(Err("unused".into())),
    };
    let mut rig = Rig::new(settings(secs(20)), systemd)
        .serve(fast_route(), app)
        .await;
    let first = rig.notify.wait_line("WATCHDOG=1", secs(2)).await;
    let second = rig.notify.wait_line("WATCHDOG=1", secs(2)).await;
    let gap = second.at - first.at;
    assert!(
        gap >= millis(80) && gap <= millis(200),
        "half of 200ms: {gap:?}"
    );
    rig.signal(Signal::Stop);
    rig.stopped(secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Startup steps.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_startup_step_extends_the_start_timeout_while_it_runs() {
    let mut rig = Rig::new(settings(secs(20)), SystemdEnv::default());
    let value = rig
        .life
        .step(
            "slow migrate",
            Step::Required,
            "check the database",
            async {
                tokio::time::sleep(millis(1300)).await;
                Ok::<_, String>(7)
            },
        )
        .await
        .expect("the step succeeds");
    assert_eq!(value, Some(7));
    let extend = rig
        .notify
        .wait_for("EXTEND_TIMEOUT_USEC", secs(1), |d| {
            d.has_key("EXTEND_TIMEOUT_USEC")
        })
        .await;
    println!("slow step: {extend:?}");
    assert!(rig
        .notify
        .any(|d| d.value("STATUS") == Some("starting: slow migrate"))
        .is_some());
    rig.log
        .wait_contains("startup step slow migrate done", secs(1))
        .await;
}

#[tokio::test]
async fn a_step_over_the_step_timeout_fails_naming_the_step() {
    let mut rig = Rig::new(
        Settings {
            step_timeout: millis(300),
            ..settings(secs(20))
        },
        SystemdEnv::default(),
    );
    let started = Instant::now();
    let err = rig
        .life
        .step(
            "database connect",
            Step::Required,
            "check database.url",
            futures::future::pending::<Result<(), String>>(),
        )
        .await
        .expect_err("a step that never ends times out");
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            StartupError::TimedOut {
                step: "database connect",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("database connect")
            && message.contains("startup.step_timeout")
            && message.contains("check database.url"),
        "{message}"
    );
    assert!(took >= millis(300) && took < millis(1000), "{took:?}");
}

#[tokio::test]
async fn optional_steps_degrade_and_a_stop_interrupts_startup() {
    let mut rig = Rig::new(settings(secs(20)), SystemdEnv::default());
    let skipped = rig
        .life
        .step("warm-up", Step::Optional, "probes may be slow", async {
            Err::<(), _>("cold cache")
        })
        .await
        .expect("an optional step never fails the start");
    assert_eq!(skipped, None);
    let warning = rig
        .log
        .wait_contains("continuing without it", secs(1))
        .await;
    assert!(
        warning.text.contains("WARN") && warning.text.contains("cold cache"),
        "{}",
        warning.text
    );

    rig.signals.send(Signal::Stop).unwrap();
    let err = rig
        .life
        .step(
            "migrate",
            Step::Required,
            "check the database",
            futures::future::pending::<Result<(), String>>(),
        )
        .await
        .expect_err("a stop signal interrupts a step");
    assert!(
        matches!(err, StartupError::Interrupted { step: "migrate" }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Connections.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed_after_header_read_timeout() {
    let app = TestApp {
        plan: http_plan(secs(1)),
        reload: Mutex::new(Err("unused".into())),
    };
    let settings = Settings {
        header_read_timeout: millis(300),
        ..settings(secs(20))
    };
    let mut rig = Running::start_with(fast_route(), app, settings).await;
    let mut slow = connect(rig.addr).await.unwrap();
    send(&mut slow, "GET /fast HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let mut received = Vec::new();
    within(
        "the connection is closed",
        secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut received),
    )
    .await
    .ok();
    let took = sent.elapsed();
    println!("unfinished headers: closed after {took:?} (header_read_timeout 300ms)");
    assert!(took >= millis(250) && took < secs(2), "{took:?}");
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 408"),
        "closed, at most with a 408: {text:?}"
    );
    rig.signal(Signal::Stop);
    rig.stopped(secs(5)).await;
}
