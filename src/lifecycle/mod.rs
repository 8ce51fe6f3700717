//! The systemd-native lifecycle of an axum service: startup steps, readiness, signals,
//! reload, watchdog, and the ordered, bounded stop.
//!
//! This module knows nothing about jobs, routes or SQL. An application hands it a
//! [`Router`], an [`App`] (reload, report, stop plan) and its startup steps; see
//! `examples/minimal.rs` for the smallest one. Signals and `$NOTIFY_SOCKET` are read here
//! and nowhere else.

pub mod listener;
pub mod notify;
pub mod server;
pub mod signals;
pub mod stages;

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use listener::{ActivatedFds, Listener, Origin};
pub use notify::{Message, Notifier};
pub use server::{ConnectionSettings, Counters};
pub use signals::{Signal, SignalStream};
pub use stages::{Stage, StageContext, StageOutcome, StopReport};

use server::Server;

/// How often startup steps send `EXTEND_TIMEOUT_USEC`, and how far each extends.
const STARTUP_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const STARTUP_HEARTBEAT_EXTENDS: Duration = Duration::from_secs(3);

/// How often STATUS= is refreshed from the app's report while serving (sent only if changed).
const STATUS_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// What systemd passed in the environment, read once before any thread starts and then
/// removed, so job processes do not inherit it.
#[derive(Debug, Clone, Default)]
pub struct SystemdEnv {
    pub fds: ActivatedFds,
    pub watchdog: Option<Duration>,
}

impl SystemdEnv {
    /// Reads and unsets `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` and `WATCHDOG_USEC`/`WATCHDOG_PID`.
    ///
    /// # Safety
    /// Must be called before any other thread exists (it calls `std::env::remove_var`):
    /// call it first thing in `main`, before the tokio runtime is built.
    pub unsafe fn take() -> std::io::Result<Self> {
        let fds = sd_notify::listen_fds_with_names_and_unset_env()?.collect();
        let watchdog = sd_notify::watchdog_enabled_and_unset_env();
        Ok(Self {
            fds: ActivatedFds(fds),
            watchdog,
        })
    }
}

/// The settings the lifecycle itself uses. A reload may change them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub header_read_timeout: Duration,
    pub step_timeout: Duration,
    pub grace: Duration,
    pub idle_close: Duration,
}

/// Where the service is in its life; shown by STATUS=, `/readyz` and `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Ready = 1,
    Reloading = 2,
    Draining = 3,
    Stopping = 4,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Reloading,
            3 => State::Draining,
            _ => State::Stopping,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Reloading => "reloading",
            State::Draining => "draining",
            State::Stopping => "stopping",
        }
    }
}

/// A cheap handle the application keeps to ask about the lifecycle.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: AtomicU8,
    started: Instant,
    counters: Arc<Counters>,
    /// Cancelled when the stop begins: readiness fails, streams should end.
    stopping: CancellationToken,
}

impl Handle {
    fn new() -> Self {
        Self {
            inner: Arc::new(HandleInner {
                state: AtomicU8::new(State::Starting as u8),
                started: Instant::now(),
                counters: Arc::new(Counters::default()),
                stopping: CancellationToken::new(),
            }),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: State) {
        self.inner.state.store(state as u8, Ordering::Release);
    }

    /// True from the moment the stop begins.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }

    /// Resolves when the stop begins. Long-lived responses (streams) end on it.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.stopping.clone().cancelled_owned()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn in_flight(&self) -> usize {
        self.inner.counters.in_flight.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.inner.counters.connections.load(Ordering::Relaxed)
    }
}

/// A report for STATUS= and the SIGUSR1 log line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One line, e.g. "ready: 3 jobs queued, 1 running".
    pub status_line: String,
    /// Everything else worth logging, as `key=value` pairs.
    pub details: String,
}

/// What the lifecycle asks of the application while it serves.
pub trait App: Send + Sync + 'static {
    /// The current report (called on state changes and SIGUSR1).
    fn report(&self) -> Report;
    /// Re-reads the configuration and applies it; returns the lifecycle's new settings,
    /// or a message saying why the new configuration was rejected (the old one stays).
    fn reload(&self) -> BoxFuture<'_, Result<Settings, String>>;
    /// The stop, in order (see [`Stage`]). Called when the stop begins, so reloaded budgets count.
    fn stop_plan(&self) -> Vec<Stage>;
}

/// Whether a startup step may fail without stopping the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Required,
    Optional,
}

/// Why startup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("startup step `{step}` failed: {message}")]
    Failed { step: &'static str, message: String },
    #[error("startup step `{step}` did not finish within {limit}; {hint}, or raise startup.step_timeout")]
    TimedOut {
        step: &'static str,
        limit: String,
        hint: &'static str,
    },
    #[error("a stop was requested during startup step `{step}`")]
    Interrupted { step: &'static str },
}

/// The lifecycle of one process.
pub struct Lifecycle {
    notifier: Notifier,
    signals: SignalStream,
    systemd: SystemdEnv,
    settings: Settings,
    handle: Handle,
}

impl Lifecycle {
    /// Starts the lifecycle: STATUS=starting.
    pub fn new(
        settings: Settings,
        systemd: SystemdEnv,
        notifier: Notifier,
        signals: SignalStream,
    ) -> Self {
        notifier.status("starting");
        Self {
            notifier,
            signals,
            systemd,
            settings,
            handle: Handle::new(),
        }
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Logs a step that already ran (configuration is loaded before the lifecycle exists).
    pub fn record_step(&self, name: &'static str, took: Duration) {
        tracing::info!(
            step = name,
            duration_ms = took.as_millis() as u64,
            "startup step {name} done in {took:.0?}"
        );
    }

    /// Runs one startup step under `startup.step_timeout`, logging its duration.
    ///
    /// A failing required step is an error; a failing optional one logs a warning and
    /// gives `Ok(None)`. While it runs, `EXTEND_TIMEOUT_USEC` keeps systemd's start
    /// timeout from firing on a slow but progressing step. A stop signal interrupts it.
    pub async fn step<T, E: std::fmt::Display>(
        &mut self,
        name: &'static str,
        kind: Step,
        hint: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, StartupError> {
        self.notifier.status(format!("starting: {name}"));
        let started = Instant::now();
        let deadline = started + self.settings.step_timeout;
        tokio::pin!(work);
        let mut heartbeat = tokio::time::interval(STARTUP_HEARTBEAT_EVERY);
        let result = loop {
            tokio::select! {
                result = work.as_mut() => break result.map_err(|e| e.to_string()),
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(String::new());
                }
                _ = heartbeat.tick() => {
                    if started.elapsed() >= STARTUP_HEARTBEAT_EVERY {
                        self.notifier.send(&[Message::ExtendTimeout(STARTUP_HEARTBEAT_EXTENDS)]);
                    }
                }
                signal = self.signals.next() => match signal {
                    Some(Signal::Stop | Signal::FastStop) | None => {
                        tracing::info!(step = name, "stop requested during startup; exiting");
                        return Err(StartupError::Interrupted { step: name });
                    }
                    Some(other) => tracing::info!(step = name, signal = ?other, "ignoring {other:?} during startup"),
                },
            }
        };
        let took = started.elapsed();
        match result {
            Ok(value) => {
                tracing::info!(
                    step = name,
                    duration_ms = took.as_millis() as u64,
                    "startup step {name} done in {took:.0?}"
                );
                Ok(Some(value))
            }
            Err(message) => {
                let err = if message.is_empty() {
                    StartupError::TimedOut {
                        step: name,
                        limit: humantime::format_duration(self.settings.step_timeout).to_string(),
                        hint,
                    }
                } else {
                    StartupError::Failed {
                        step: name,
                        message: format!("{message}; {hint}"),
                    }
                };
                match kind {
                    Step::Required => Err(err),
                    Step::Optional => {
                        tracing::warn!(
                            step = name,
                            duration_ms = took.as_millis() as u64,
                            "{err}; continuing without it"
                        );
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Takes the socket systemd passed, or binds `listen`: the `listener` startup step.
    pub async fn listener(&mut self, listen: &str) -> Result<Listener, StartupError> {
        let fds = self.systemd.fds.clone();
        let listen = listen.to_string();
        let listener = self
            .step(
                "listener",
                Step::Required,
                "check http.listen and the .socket unit",
                async move { listener::acquire(&fds, &listen).await },
            )
            .await?
            .expect("a required step gives a value");
        tracing::info!(addr = %listener.local_addr, origin = ?listener.origin, "listening on {}", listener.local_addr);
        Ok(listener)
    }

    /// Serves `router` on `listener` until a stop signal, then runs the app's stop plan.
    ///
    /// Sends READY=1 first: call it only once every startup step is done.
    pub async fn serve(self, listener: Listener, router: Router, app: Arc<dyn App>) -> StopReport {
        let Lifecycle {
            notifier,
            mut signals,
            systemd,
            mut settings,
            handle,
        } = self;
        let connection_settings = Arc::new(RwLock::new(ConnectionSettings {
            header_read_timeout: settings.header_read_timeout,
            idle_close: settings.idle_close,
        }));
        let mut server = Server::spawn(
            listener,
            router,
            connection_settings.clone(),
            handle.inner.stopping.clone(),
            handle.inner.counters.clone(),
        );
        // WATCHDOG_USEC=0 is no watchdog (libsystemd rejects it), and a zero period would
        // panic in `tokio::time::interval`.
        let watchdog_task = systemd
            .watchdog
            .filter(|interval| !interval.is_zero())
            .map(|interval| tokio::spawn(watchdog(notifier.clone(), interval)));

        handle.set_state(State::Ready);
        notifier.send(&[Message::Ready, Message::Status(app.report().status_line)]);
        tracing::info!(uptime_ms = handle.uptime().as_millis() as u64, "ready");

        let mut status_line = app.report().status_line;
        let mut status_refresh = tokio::time::interval(STATUS_REFRESH_EVERY);
        let fast = loop {
            let signal = tokio::select! {
                signal = signals.next() => signal,
                _ = status_refresh.tick() => {
                    // STATUS= tells the truth between state changes too (queue depth, jobs).
                    let line = app.report().status_line;
                    if line != status_line {
                        notifier.status(line.clone());
                        status_line = line;
                    }
                    continue;
                }
            };
            match signal {
                Some(Signal::Stop) | None => break false,
                Some(Signal::FastStop) => break true,
                Some(Signal::Report) => log_report(&handle, &notifier, &*app),
                Some(Signal::Reload) => {
                    handle.set_state(State::Reloading);
                    notifier.send(&[Message::Reloading, Message::Status("reloading".into())]);
                    // Signals are read during the reload too: a stop must not wait for it.
                    let reload = tokio::time::timeout(settings.step_timeout, app.reload());
                    tokio::pin!(reload);
                    let result = loop {
                        tokio::select! {
                            result = &mut reload => break Ok(result),
                            signal = signals.next() => match signal {
                                Some(Signal::Stop) | None => break Err(false),
                                Some(Signal::FastStop) => break Err(true),
                                Some(Signal::Report) => log_report(&handle, &notifier, &*app),
                                Some(Signal::Reload) => tracing::info!("a reload is already in progress"),
                            },
                        }
                    };
                    let result = match result {
                        Ok(result) => result,
                        Err(fast) => {
                            tracing::warn!("stop requested during a reload; the reload was abandoned, stopping on the previous configuration");
                            break fast;
                        }
                    };
                    match result {
                        Ok(Ok(new)) => {
                            settings = new;
                            *connection_settings.write().expect("settings lock poisoned") =
                                ConnectionSettings { header_read_timeout: new.header_read_timeout, idle_close: new.idle_close };
                            tracing::info!("configuration reloaded");
                        }
                        Ok(Err(message)) => {
                            tracing::warn!("reload rejected, still running on the previous configuration: {message}");
                        }
                        Err(_) => tracing::warn!(
                            "reload did not finish within startup.step_timeout; still running on the previous configuration"
                        ),
                    }
                    handle.set_state(State::Ready);
                    notifier.send(&[Message::Ready, Message::Status(app.report().status_line)]);
                }
            }
        };

        // The stop. Signals keep being read: a second stop signal means "stop fast".
        handle.set_state(State::Draining);
        handle.inner.stopping.cancel();
        notifier.send(&[
            Message::Stopping,
            Message::Status(format!(
                "draining: {} requests in flight",
                handle.in_flight()
            )),
        ]);
        tracing::info!(fast, grace = %humantime::format_duration(settings.grace), "stop requested; draining");
        let fast_token = CancellationToken::new();
        if fast {
            fast_token.cancel();
        }
        let signal_task = {
            let fast_token = fast_token.clone();
            let handle = handle.clone();
            let notifier = notifier.clone();
            let app = app.clone();
            tokio::spawn(async move {
                while let Some(signal) = signals.next().await {
                    match signal {
                        Signal::Stop | Signal::FastStop => {
                            if !fast_token.is_cancelled() {
                                tracing::warn!("second stop signal: stopping fast (skipping the waits; still flushing and closing)");
                                fast_token.cancel();
                            }
                        }
                        Signal::Report => log_report(&handle, &notifier, &*app),
                        Signal::Reload => tracing::info!("ignoring reload during the stop"),
                    }
                }
            })
        };
        let report = stages::run_plan(
            app.stop_plan(),
            &mut server,
            settings.grace,
            fast_token,
            &notifier,
        )
        .await;
        signal_task.abort();
        if let Some(w) = watchdog_task {
            w.abort();
        }
        handle.set_state(State::Stopping);
        if report.cut.is_empty() {
            notifier.status(format!("stopped in {:.0?}", report.elapsed));
            tracing::info!(
                duration_ms = report.elapsed.as_millis() as u64,
                "stopped in {:.0?}",
                report.elapsed
            );
        } else {
            notifier.status(format!(
                "stopped in {:.0?}; cut: {}",
                report.elapsed,
                report.cut.join(", ")
            ));
            tracing::warn!(
                duration_ms = report.elapsed.as_millis() as u64,
                "stopped in {:.0?}, but these stages had to cut work: {}",
                report.elapsed,
                report.cut.join(", ")
            );
        }
        report
    }
}

fn log_report(handle: &Handle, notifier: &Notifier, app: &dyn App) {
    let report = app.report();
    tracing::info!(
        state = handle.state().as_str(),
        in_flight = handle.in_flight(),
        connections = handle.connections(),
        uptime_s = handle.uptime().as_secs(),
        "status report: {}; {}",
        report.status_line,
        report.details
    );
    notifier.status(report.status_line);
}

/// Pings the watchdog at half its interval. It runs as an ordinary task, so a stuck
/// runtime stops the pings and systemd restarts the service.
async fn watchdog(notifier: Notifier, interval: Duration) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        notifier.send(&[Message::Watchdog]);
    }
}
