//! The lifecycle of the real `shiftd` binary, as systemd sees it: notify messages and their
//! order, socket activation and restarts with zero resets, signals, the bounded stop, exit
//! codes, bad configuration and unreachable databases, on SQLite and PostgreSQL.
//!
//! Slow suites (many restarts) run with `SLOW_TESTS=1`; without it they run a short version.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// A task the slow-request tests use: an idempotent replay of its job answers 200.
const NOOP_TASK: &str = "[tasks.noop]\ncommand = [\"/bin/true\"]\nkill_grace = \"1s\"\n";

/// Budgets small enough that a cut shows within seconds, and consistent (they fit `grace`).
fn short_budgets(builder: ShiftdBuilder, http_drain: &str) -> ShiftdBuilder {
    builder
        .set("shutdown.grace", "20s")
        .set("shutdown.http_drain", http_drain)
        .set("shutdown.jobs_drain", "2s")
        .set("shutdown.flush", "1s")
        .set("shutdown.db_close", "1s")
}

async fn get_ok(addr: std::net::SocketAddr, path: &str) -> RawResponse {
    let response = http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(response.status, 200, "GET {path}: {}", response.body_text());
    response
}

/// Polls `/v1/status` until `n` requests besides the poll itself are in flight.
async fn wait_in_flight(addr: std::net::SocketAddr, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = get_ok(addr, "/v1/status").await;
        let json: serde_json::Value = serde_json::from_slice(&status.body).expect("status is JSON");
        let in_flight = json["in_flight_requests"]
            .as_u64()
            .expect("in_flight_requests");
        if in_flight > n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} requests were not in flight within {timeout:?} (last status: {json})"
        );
        tokio::time::sleep(millis(20)).await;
    }
}

/// Sends a POST head declaring a body of `length` bytes and `sent` of them: the server's
/// handler is then in flight, waiting for the rest.
async fn start_slow_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
    length: usize,
    sent: &str,
) -> tokio::net::TcpStream {
    let mut stream = connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{headers}\r\n{sent}"
    );
    send(&mut stream, &head).await.expect("send the head");
    stream
}

// ---------------------------------------------------------------------------------------
// Notify messages and their order.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ready_only_after_bind_and_migrations_then_stopping_on_sigterm() {
    let app = Shiftd::builder().spawn().await;

    let first = app
        .notify
        .wait_for("a first datagram", START_TIMEOUT, |_| true)
        .await;
    assert_eq!(
        first.value("STATUS"),
        Some("starting"),
        "the first message says the service is starting"
    );
    for step in [
        "starting: listener",
        "starting: database connect",
        "starting: migrate",
    ] {
        app.notify
            .wait_for(step, START_TIMEOUT, |d| d.value("STATUS") == Some(step))
            .await;
    }
    let ready = app.notify.wait_line("READY=1", START_TIMEOUT).await;
    assert!(
        ready
            .value("STATUS")
            .is_some_and(|s| s.starts_with("ready")),
        "READY=1 carries STATUS=ready…: {ready:?}"
    );

    // Right when READY arrives the port answers and the database is migrated.
    let readyz = http_get(app.addr, "/readyz")
        .await
        .expect("the port accepts at READY=1");
    assert_eq!(
        readyz.status,
        200,
        "/readyz at READY=1: {}",
        readyz.body_text()
    );
    let db = app.workdir().path().join("shiftd-data/shiftd.db");
    let migrations = count_sqlite_migrations(&db).await;
    assert!(
        migrations > 0,
        "migrations were applied before READY=1 ({db:?})"
    );
    assert!(
        app.notify
            .all()
            .iter()
            .take_while(|d| !d.has("READY=1"))
            .all(|d| !d.has("STOPPING=1") && !d.has("RELOADING=1")),
        "nothing but STATUS (and EXTEND) before READY"
    );

    app.sigterm();
    let stopping = app.notify.wait_line("STOPPING=1", secs(5)).await;
    assert!(
        stopping
            .value("STATUS")
            .is_some_and(|s| s.starts_with("draining")),
        "STOPPING=1 carries STATUS=draining…: {stopping:?}"
    );
    app.notify
        .wait_for("STATUS=stopped…", secs(5), |d| {
            d.value("STATUS").is_some_and(|s| s.starts_with("stopped"))
        })
        .await;
    assert_eq!(app.wait_exit(secs(5)).await, 0);
    assert!(
        !app.stderr.contains(" ERROR "),
        "a normal stop logs no error:\n{}",
        app.stderr.dump()
    );
}

async fn count_sqlite_migrations(path: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("open the SQLite file");
    let count: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("read _sqlx_migrations");
    count.0
}

#[tokio::test]
async fn sighup_sends_reloading_with_monotonic_usec_then_ready_and_applies_the_log_level() {
    let app = Shiftd::builder().set("log.level", "info").start().await;
    get_ok(app.addr, "/healthz").await;
    assert!(
        !app.stderr.contains("DEBUG"),
        "no debug lines at level info:\n{}",
        app.stderr.dump()
    );

    let mut config = std::fs::read_to_string(&app.config_path).unwrap();
    config = config.replace("level = \"info\"", "level = \"debug\"");
    assert!(config.contains("level = \"debug\""), "{config}");
    app.rewrite_config(&config);
    let before = monotonic_usec();
    app.signal(Signal::SIGHUP);

    let reloading = app.notify.wait_line("RELOADING=1", secs(5)).await;
    assert_eq!(
        reloading.value("STATUS"),
        Some("reloading"),
        "{reloading:?}"
    );
    let monotonic: u64 = reloading
        .value("MONOTONIC_USEC")
        .unwrap_or_else(|| {
            panic!("MONOTONIC_USEC in the same datagram as RELOADING=1: {reloading:?}")
        })
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        monotonic >= before && monotonic <= monotonic_usec(),
        "MONOTONIC_USEC={monotonic} is CLOCK_MONOTONIC at the reload"
    );
    app.notify.wait_line("READY=1", secs(5)).await;
    app.stderr
        .wait_contains("configuration reloaded", secs(5))
        .await;

    // The new level is in force: a request now logs at debug.
    get_ok(app.addr, "/healthz").await;
    app.stderr.wait_contains("DEBUG", secs(5)).await;

    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
}

fn monotonic_usec() -> u64 {
    // sd-notify reads CLOCK_MONOTONIC just as the binary does.
    let now = sd_notify::NotifyState::monotonic_usec_now()
        .expect("clock_gettime")
        .to_string();
    now.strip_prefix("MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC=<n>")
}

#[tokio::test]
async fn sighup_with_a_bad_config_is_rejected_and_the_service_keeps_serving() {
    let app = Shiftd::builder().start().await;
    let good = std::fs::read_to_string(&app.config_path).unwrap();
    app.rewrite_config(&format!("{good}\n[bogus]\nkey = 1\n"));
    app.signal(Signal::SIGHUP);

    app.notify.wait_line("RELOADING=1", secs(5)).await;
    app.notify.wait_line("READY=1", secs(5)).await;
    let warning = app.stderr.wait_contains("reload rejected", secs(5)).await;
    assert!(
        warning.text.contains("WARN") && warning.text.contains("bogus"),
        "the warning names the key: {}",
        warning.text
    );
    get_ok(app.addr, "/healthz").await;
    get_ok(app.addr, "/readyz").await;

    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
}

#[tokio::test]
async fn watchdog_pings_at_half_the_interval_when_watchdog_usec_is_set_for_this_pid() {
    // WATCHDOG_PID names this very process, as systemd sets it.
    let app = Shiftd::builder()
        .env("WATCHDOG_USEC", 400_000)
        .env_own_pid("WATCHDOG_PID")
        .start()
        .await;
    let environ = std::fs::read(format!("/proc/{}/environ", app.pid)).unwrap();
    let own = format!("WATCHDOG_PID={}", app.pid);
    assert!(
        environ.split(|b| *b == 0).any(|v| v == own.as_bytes()),
        "the process got {own}"
    );
    let first = app.notify.wait_line("WATCHDOG=1", secs(5)).await;
    let mut last = first.clone();
    for _ in 0..3 {
        last = app.notify.wait_line("WATCHDOG=1", secs(2)).await;
    }
    let average = (last.at - first.at) / 3;
    println!("watchdog: WATCHDOG_USEC=400000, pings every {average:?} on average");
    assert!(
        average >= millis(150) && average <= millis(300),
        "pings at about half of 400ms, got {average:?}"
    );
    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
}

#[tokio::test]
async fn no_watchdog_pings_when_watchdog_pid_is_another_process_or_the_interval_is_zero() {
    // WATCHDOG_PID=1: the setting is for another process.
    let other = Shiftd::builder()
        .env("WATCHDOG_USEC", 100_000)
        .env("WATCHDOG_PID", 1)
        .start()
        .await;
    // WATCHDOG_USEC=0 is not a watchdog (libsystemd rejects it); it must not panic either.
    let zero = Shiftd::builder().env("WATCHDOG_USEC", 0).start().await;
    // Ten intervals of the first one: a ping would have come by now.
    for app in [&other, &zero] {
        let ping = app
            .notify
            .try_wait_for(secs(1), |d| d.has("WATCHDOG=1"))
            .await;
        assert!(ping.is_none(), "no WATCHDOG=1 expected: {ping:?}");
        get_ok(app.addr, "/healthz").await;
        app.sigterm();
        assert_eq!(app.wait_exit(secs(5)).await, 0);
        assert!(!app.stderr.contains("panicked"), "{}", app.stderr.dump());
    }
}

#[tokio::test]
async fn sigusr1_writes_a_status_report_to_the_log_and_status() {
    let app = Shiftd::builder().start().await;
    app.signal(Signal::SIGUSR1);
    let line = app.stderr.wait_contains("status report", secs(5)).await;
    assert!(
        line.text.contains("ready") && line.text.contains("grace="),
        "the report shows state and budgets: {}",
        line.text
    );
    app.notify
        .wait_for("a STATUS after the report", secs(5), |d| {
            d.has_key("STATUS")
        })
        .await;
    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
}

// ---------------------------------------------------------------------------------------
// The stop.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn idle_sigterm_exits_fast() {
    let app = Shiftd::builder().start().await;
    get_ok(app.addr, "/healthz").await;
    let sent = Instant::now();
    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
    let took = sent.elapsed();
    println!("idle stop: SIGTERM to exit in {took:?}");
    assert!(
        took < secs(1),
        "an idle service exits at once, took {took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_cleanly_and_does_not_hold_the_stop() {
    let app = Shiftd::builder()
        .set("shutdown.idle_close", "250ms")
        .start()
        .await;
    let mut conn = connect(app.addr).await.unwrap();
    send(
        &mut conn,
        &format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr),
    )
    .await
    .unwrap();
    let first = read_response(&mut conn, secs(5)).await.unwrap();
    assert_eq!(first.status, 200);
    assert!(!first.closes(), "keep-alive before the stop");

    let sent = Instant::now();
    app.sigterm();
    wait_closed(&mut conn, secs(5))
        .await
        .expect("the idle connection is closed");
    assert_eq!(app.wait_exit(secs(5)).await, 0);
    let took = sent.elapsed();
    println!("stop with one idle keep-alive connection (idle_close 250ms): {took:?}");
    assert!(took < secs(2), "took {took:?}");
}

#[tokio::test]
async fn sigterm_during_a_slow_request_lets_it_finish_and_serves_no_new_connection() {
    let socket = ActivationSocket::bind();
    let builder = short_budgets(Shiftd::builder().socket(&socket).toml(NOOP_TASK), "10s");
    let a = builder.clone().start().await;

    // A job to replay: the same Idempotency-Key again answers 200 with that job.
    let mut create = connect(socket.addr).await.unwrap();
    send(&mut create, "POST /v1/tasks/noop/jobs HTTP/1.1\r\nHost: x\r\nIdempotency-Key: slow-1\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    let created = read_response(&mut create, secs(5)).await.unwrap();
    assert_eq!(created.status, 202, "{}", created.body_text());

    let mut slow = start_slow_post(
        socket.addr,
        "/v1/tasks/noop/jobs",
        "Idempotency-Key: slow-1\r\n",
        2,
        "{",
    )
    .await;
    wait_in_flight(socket.addr, 1, secs(5)).await;

    a.sigterm();
    a.notify.wait_line("STOPPING=1", secs(5)).await;
    a.stderr
        .wait_contains("shutdown stage stop-accepting done", secs(5))
        .await;
    // A connection made during the drain waits in the backlog: this process must not serve it.
    let mut late = connect(socket.addr)
        .await
        .expect("the socket still accepts into its backlog");
    send(&mut late, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    send(&mut slow, "}").await.unwrap();
    let response = read_response(&mut slow, secs(5))
        .await
        .expect("the slow request completes");
    let answered = Instant::now();
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert!(
        response.closes(),
        "a response during the drain carries Connection: close: {:?}",
        response.headers
    );
    assert_eq!(
        a.wait_exit(secs(5)).await,
        0,
        "a drain that finished in time exits 0"
    );
    println!(
        "exit {:?} after the slow request was answered",
        answered.elapsed()
    );
    assert!(
        answered.elapsed() < secs(2),
        "exits right after the last request"
    );

    let mut byte = [0u8; 1];
    match late.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the old process must not touch a connection it never accepted: {other:?}"),
    }
    // The next process serves it from the backlog.
    let b = builder.start().await;
    let late_response = read_response(&mut late, secs(10))
        .await
        .expect("served by the next process");
    assert_eq!(late_response.status, 200);
    b.sigterm();
    assert_eq!(b.wait_exit(secs(5)).await, 0);
}

#[tokio::test]
async fn a_request_slower_than_http_drain_is_cut_at_the_budget_with_exit_75() {
    let app = short_budgets(Shiftd::builder().toml(NOOP_TASK), "1s")
        .start()
        .await;
    let mut slow = start_slow_post(app.addr, "/v1/tasks/noop/jobs", "", 100, "{").await;
    wait_in_flight(app.addr, 1, secs(5)).await;

    let sent = Instant::now();
    app.sigterm();
    wait_closed(&mut slow, secs(5))
        .await
        .expect("the connection is cut");
    let cut_after = sent.elapsed();
    let code = app.wait_exit(secs(20)).await;
    let exited_after = sent.elapsed();
    println!("slow request: cut after {cut_after:?}, exit {code} after {exited_after:?} (http_drain 1s, grace 20s)");
    assert_eq!(code, 75, "a cut stage exits with the documented code 75");
    assert!(
        cut_after >= millis(900) && cut_after < millis(2500),
        "cut at the 1s budget, not before and not much after: {cut_after:?}"
    );
    assert!(
        exited_after < secs(4),
        "exits soon after the cut, well within grace: {exited_after:?}"
    );
    // The real notifier's heartbeats: EXTEND_TIMEOUT_USEC during the stop.
    let stopping = app.notify.wait_line("STOPPING=1", secs(1)).await;
    let heartbeats: Vec<Datagram> = app
        .notify
        .all()
        .into_iter()
        .filter(|d| d.at >= stopping.at && d.has_key("EXTEND_TIMEOUT_USEC"))
        .collect();
    assert!(
        !heartbeats.is_empty(),
        "heartbeats while the drain waits:\n{}",
        app.notify.dump()
    );
    assert!(
        heartbeats
            .iter()
            .all(|d| d.value("EXTEND_TIMEOUT_USEC") == Some("3000000")),
        "{heartbeats:?}"
    );
    let warning = app
        .stderr
        .wait_contains("shutdown.http_drain", secs(1))
        .await;
    assert!(
        warning.text.contains("WARN"),
        "the cut is a warning naming the setting to raise: {}",
        warning.text
    );
    assert!(
        !app.stderr.contains(" ERROR "),
        "a cut is not an error:\n{}",
        app.stderr.dump()
    );
}

#[tokio::test]
async fn a_second_sigterm_skips_the_drain() {
    let app = short_budgets(Shiftd::builder().toml(NOOP_TASK), "10s")
        .start()
        .await;
    let mut slow = start_slow_post(app.addr, "/v1/tasks/noop/jobs", "", 100, "{").await;
    wait_in_flight(app.addr, 1, secs(5)).await;

    app.sigterm();
    app.notify.wait_line("STOPPING=1", secs(5)).await;
    assert_eq!(
        app.exit_code(),
        None,
        "the first SIGTERM drains: still running"
    );
    let second = Instant::now();
    app.sigterm();
    let code = app.wait_exit(secs(5)).await;
    let took = second.elapsed();
    println!("second SIGTERM: exit {code} after {took:?} (http_drain 10s)");
    assert!(
        took < secs(3),
        "the fast stop skips the 10s drain: {took:?}"
    );
    assert_eq!(code, 75, "the in-flight request was cut");
    wait_closed(&mut slow, secs(1))
        .await
        .expect("the slow connection was closed");
    app.stderr
        .wait_contains("second stop signal", secs(1))
        .await;
    // Flush and close still ran, in order.
    let flush = app
        .stderr
        .wait_contains("shutdown stage flush", secs(1))
        .await;
    let close = app
        .stderr
        .wait_contains("shutdown stage db-close", secs(1))
        .await;
    assert!(flush.at <= close.at);
}

#[tokio::test]
async fn sigquit_stops_fast_and_sigint_stops_gracefully() {
    let quit = short_budgets(Shiftd::builder().toml(NOOP_TASK), "10s")
        .start()
        .await;
    let _slow = start_slow_post(quit.addr, "/v1/tasks/noop/jobs", "", 100, "{").await;
    wait_in_flight(quit.addr, 1, secs(5)).await;
    let sent = Instant::now();
    quit.signal(Signal::SIGQUIT);
    assert_eq!(quit.wait_exit(secs(5)).await, 75, "SIGQUIT cuts the drain");
    assert!(
        sent.elapsed() < secs(3),
        "SIGQUIT skips the 10s drain: {:?}",
        sent.elapsed()
    );

    let int = Shiftd::builder().start().await;
    int.signal(Signal::SIGINT);
    int.notify.wait_line("STOPPING=1", secs(5)).await;
    assert_eq!(int.wait_exit(secs(5)).await, 0);
}

// ---------------------------------------------------------------------------------------
// Socket activation and restarts.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_activated_socket_is_used_and_its_backlog_is_served_by_the_next_process() {
    let socket = ActivationSocket::bind();
    // http.listen names a port the test holds: binding it would fail, so serving proves fd 3 is used.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let builder = Shiftd::builder()
        .socket(&socket)
        .set("http.listen", taken.local_addr().unwrap().to_string());
    let a = builder.clone().start().await;
    get_ok(socket.addr, "/healthz").await;
    a.stderr
        .wait_contains(&format!("listening on {}", socket.addr), secs(1))
        .await;

    a.sigterm();
    assert_eq!(a.wait_exit(secs(5)).await, 0);

    // No process now: the connection completes in the kernel and waits in the backlog.
    let mut waiting = connect(socket.addr)
        .await
        .expect("connections queue while no process runs");
    send(&mut waiting, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let b = builder.start().await;
    let response = read_response(&mut waiting, secs(10))
        .await
        .expect("the next process serves the backlog");
    assert_eq!(response.status, 200);
    b.sigterm();
    assert_eq!(b.wait_exit(secs(5)).await, 0);
}

#[tokio::test]
async fn among_several_activated_sockets_the_one_named_http_is_served() {
    let metrics = ActivationSocket::bind();
    let http = ActivationSocket::bind();
    let app = Shiftd::builder()
        .named_socket(&metrics, "metrics")
        .named_socket(&http, "http")
        .start()
        .await;
    assert_eq!(app.addr, http.addr);
    get_ok(http.addr, "/healthz").await;
    app.stderr
        .wait_contains(&format!("listening on {}", http.addr), secs(1))
        .await;
    app.sigterm();
    assert_eq!(app.wait_exit(secs(5)).await, 0);
}

#[tokio::test]
async fn several_activated_sockets_without_one_named_http_exit_69_saying_how_to_name_it() {
    let (a, b) = (ActivationSocket::bind(), ActivationSocket::bind());
    let app = Shiftd::builder()
        .named_socket(&a, "a")
        .named_socket(&b, "b")
        .spawn()
        .await;
    assert_eq!(app.wait_exit(secs(10)).await, 69);
    app.stderr
        .wait_contains("FileDescriptorName=http", secs(1))
        .await;
}

/// Totals of the hammer, shared by its client tasks.
#[derive(Default)]
struct Hammer {
    ok: AtomicU64,
    failed: AtomicU64,
    max_latency_us: AtomicU64,
    errors: Mutex<Vec<String>>,
    progress: tokio::sync::Notify,
}

impl Hammer {
    async fn wait_ok(&self, at_least: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.progress.notified();
            if self.ok.load(Ordering::Relaxed) >= at_least {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} of {at_least} responses within {timeout:?}",
                    self.ok.load(Ordering::Relaxed)
                );
            }
        }
    }
}

async fn hammer_client(addr: std::net::SocketAddr, hammer: Arc<Hammer>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        // A fresh connection per request, as nginx makes without upstream keepalive.
        let result = async {
            let mut stream = connect(addr).await?;
            send(
                &mut stream,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await?;
            read_response(&mut stream, HTTP_TIMEOUT).await
        }
        .await;
        match result {
            Ok(r) if r.status == 200 => {
                hammer.ok.fetch_add(1, Ordering::Relaxed);
                hammer
                    .max_latency_us
                    .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Ok(r) => {
                hammer.failed.fetch_add(1, Ordering::Relaxed);
                hammer.errors.lock().unwrap().push(format!(
                    "status {}: {}",
                    r.status,
                    r.body_text()
                ));
            }
            Err(e) => {
                hammer.failed.fetch_add(1, Ordering::Relaxed);
                hammer.errors.lock().unwrap().push(e);
            }
        }
        hammer.progress.notify_waiters();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_a_hammer_of_fresh_connections_reset_nothing() {
    const CLIENTS: usize = 50;
    let restarts = if slow_tests_enabled() { 20 } else { 3 };
    let socket = ActivationSocket::bind();
    let builder = Shiftd::builder().socket(&socket).set(
        "shutdown.idle_close",
        std::env::var("EXPERIMENT_IDLE_CLOSE").unwrap_or("250ms".into()),
    );
    let mut current = builder.clone().start().await;

    let hammer = Arc::new(Hammer::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(hammer_client(socket.addr, hammer.clone(), stop.clone())))
        .collect();
    hammer.wait_ok(200, secs(10)).await;

    let mut stop_times = Vec::new();
    for _ in 0..restarts {
        // As `systemctl restart` with a .socket unit: stop the old process, then start the
        // new one on the same socket; clients queue in the backlog meanwhile.
        let sent = Instant::now();
        current.sigterm();
        let code = current.wait_exit(secs(15)).await;
        stop_times.push(sent.elapsed());
        assert_eq!(
            code,
            0,
            "a stop under load that finished within budget exits 0:\n{}",
            current.stderr.dump()
        );
        current = builder.clone().start().await;
        let seen = hammer.ok.load(Ordering::Relaxed);
        hammer.wait_ok(seen + 200, secs(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    current.sigterm();
    assert_eq!(current.wait_exit(secs(5)).await, 0);

    let ok = hammer.ok.load(Ordering::Relaxed);
    let failed = hammer.failed.load(Ordering::Relaxed);
    let longest_stop = stop_times.iter().max().unwrap();
    println!(
        "zero-reset hammer: {CLIENTS} clients, {restarts} restarts: {ok} responses 200, {failed} failed; \
         max latency {:?}, longest stop {longest_stop:?}",
        Duration::from_micros(hammer.max_latency_us.load(Ordering::Relaxed))
    );
    let errors = hammer.errors.lock().unwrap();
    assert_eq!(
        failed,
        0,
        "every request gets a 200; failures: {:?}",
        &errors[..errors.len().min(20)]
    );
}

// ---------------------------------------------------------------------------------------
// Bad configuration and unreachable dependencies.
// ---------------------------------------------------------------------------------------

async fn assert_config_error(builder: ShiftdBuilder, key: &str) {
    let port = builder.addr();
    let dir = builder.workdir().clone();
    let app = builder.spawn().await;
    assert_eq!(
        app.wait_exit(secs(10)).await,
        78,
        "a bad config exits 78:\n{}",
        app.dump()
    );
    let line = app.stderr.wait_contains(key, secs(1)).await;
    println!("{key}: {}", line.text);
    assert!(
        app.notify.any(|d| d.has("READY=1")).is_none(),
        "nothing started"
    );
    assert!(
        !dir.path().join("shiftd-data").exists(),
        "no database was created"
    );
    std::net::TcpListener::bind(port).expect("the port was never bound");
}

#[tokio::test]
async fn an_unknown_key_exits_78_naming_it() {
    assert_config_error(
        Shiftd::builder().toml("[shutdown]\nhttp_drian = \"1s\"\n"),
        "http_drian",
    )
    .await;
}

#[tokio::test]
async fn a_bad_duration_exits_78_naming_the_key() {
    assert_config_error(
        Shiftd::builder().set("shutdown.grace", "soon"),
        "shutdown.grace",
    )
    .await;
}

#[tokio::test]
async fn stage_budgets_over_grace_exit_78_naming_grace() {
    assert_config_error(
        Shiftd::builder()
            .set("shutdown.grace", "5s")
            .set("shutdown.http_drain", "10s"),
        "raise shutdown.grace",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_environment_override_exits_78_naming_it() {
    assert_config_error(
        Shiftd::builder().env("SHIFTD_HTTP__LISTNE", "127.0.0.1:1"),
        "listne",
    )
    .await;
}

#[tokio::test]
async fn a_sigterm_during_a_startup_step_exits_at_once() {
    // A "database" that accepts connections (the kernel does, from the backlog) and never
    // says a word: startup is stuck in the connect step.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Shiftd::builder()
        .set(
            "database.url",
            format!("postgres://postgres@{}/x", silent.local_addr().unwrap()),
        )
        .set("startup.step_timeout", "20s")
        .set("database.connect_timeout", "20s")
        .spawn()
        .await;
    app.notify
        .wait_for("the database step", secs(10), |d| {
            d.value("STATUS") == Some("starting: database connect")
        })
        .await;
    let sent = Instant::now();
    app.sigterm();
    let code = app.wait_exit(secs(5)).await;
    println!(
        "SIGTERM during startup: exit {code} after {:?}",
        sent.elapsed()
    );
    assert_eq!(code, 0, "a stop during startup is a clean stop");
    assert!(sent.elapsed() < secs(1), "{:?}", sent.elapsed());
    assert!(app.notify.any(|d| d.has("READY=1")).is_none());
}

#[tokio::test]
async fn an_unreachable_database_fails_the_named_step_within_the_step_timeout_with_69() {
    let app = Shiftd::builder()
        .set("database.url", "postgres://postgres@127.0.0.1:1/x")
        .set("startup.step_timeout", "3s")
        .spawn()
        .await;
    let code = app.wait_exit(secs(10)).await;
    let took = app.spawned_at.elapsed();
    println!("unreachable database: exit {code} after {took:?} (step_timeout 3s)");
    assert_eq!(code, 69, "a failed required step exits 69");
    assert!(took < secs(5), "bounded by startup.step_timeout: {took:?}");
    let line = app.stderr.wait_contains("database connect", secs(1)).await;
    assert!(
        line.text.contains("ERROR") && line.text.contains("database.url"),
        "the error names the step and what to check: {}",
        line.text
    );
    assert!(app.notify.any(|d| d.has("READY=1")).is_none());
}

// ---------------------------------------------------------------------------------------
// Storage on both backends.
// ---------------------------------------------------------------------------------------

async fn starts_migrates_and_serves(builder: ShiftdBuilder, backend: &str) {
    // Twice on the same database: the second start finds the migrations applied.
    for round in 0..2 {
        let app = builder.clone().start().await;
        get_ok(app.addr, "/readyz").await;
        let status = get_ok(app.addr, "/v1/status").await;
        let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        assert_eq!(
            json["database"]["backend"], backend,
            "round {round}: {json}"
        );
        app.sigterm();
        assert_eq!(app.wait_exit(secs(5)).await, 0, "round {round}");
    }
}

#[tokio::test]
async fn storage_on_embedded_sqlite() {
    let builder = Shiftd::builder();
    starts_migrates_and_serves(builder.clone(), "sqlite").await;
    assert!(
        builder
            .workdir()
            .path()
            .join("shiftd-data/shiftd.db")
            .exists(),
        "the default database is ./shiftd-data/shiftd.db"
    );
}

#[tokio::test]
async fn storage_on_a_fresh_postgresql_database() {
    let db = TestDatabase::create().await;
    starts_migrates_and_serves(
        Shiftd::builder().set("database.url", db.url.as_str()),
        "postgres",
    )
    .await;
}
