//! The systemd-native lifecycle of an axum service: startup steps, readiness, signals,
//! reload, hand-over to a new process, watchdog, and the ordered, bounded stop.
//!
//! This crate knows nothing about jobs, routes or SQL, and names none of the application's
//! settings: an application hands it [`Settings`] (with their [`SettingNames`]), a
//! [`Router`], an [`App`] (report, reload, stop plan) and runs its startup steps through
//! [`Lifecycle::step`]. Signals and `$NOTIFY_SOCKET` are read here and nowhere else.
//!
//! The smallest use (`lifecycle/examples/minimal.rs` adds the hand-over):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use futures::future::{BoxFuture, FutureExt};
//! use shiftd_lifecycle::{
//!     App, Lifecycle, Notifier, Report, SettingNames, Settings, Stage, SystemdEnv,
//! };
//!
//! const SETTINGS: Settings = Settings {
//!     header_read_timeout: Duration::from_secs(10),
//!     step_timeout: Duration::from_secs(30),
//!     grace: Duration::from_secs(15),
//!     idle_close: Duration::from_millis(250),
//!     // What the warnings tell an operator to raise.
//!     names: SettingNames {
//!         listen: "listen",
//!         step_timeout: "step_timeout",
//!         grace: "grace",
//!     },
//! };
//!
//! struct Hello;
//!
//! impl App for Hello {
//!     fn report(&self) -> Report {
//!         Report {
//!             status_line: "saying hello".into(),
//!             details: String::new(),
//!         }
//!     }
//!
//!     fn reload(&self) -> BoxFuture<'_, Result<Settings, String>> {
//!         async { Ok(SETTINGS) }.boxed()
//!     }
//!
//!     fn stop_plan(&self) -> Vec<Stage> {
//!         vec![Stage::stop_accepting(), Stage::http_drain(Duration::from_secs(10))]
//!     }
//! }
//!
//! fn main() {
//!     // SAFETY: first thing in main, before any other thread exists. The name is the
//!     // variable a hand-over (`Lifecycle::enable_hand_over`) would pass to a new process.
//!     let systemd = unsafe { SystemdEnv::take("HELLO_HANDOVER") }.expect("read the environment");
//!     let runtime = tokio::runtime::Runtime::new().expect("start the runtime");
//!     runtime.block_on(async {
//!         let signals = shiftd_lifecycle::signals::os_signals().expect("install handlers");
//!         let mut life = Lifecycle::new(SETTINGS, systemd, Notifier::Systemd, signals);
//!         // Socket activation if systemd passed a socket, else a bind.
//!         let listener = life.listener("127.0.0.1:3000").await.expect("listen");
//!         let router = Router::new().route("/", get(|| async { "hello\n" }));
//!         // READY=1, then serve until SIGTERM; then the stop plan, in order.
//!         let report = life.serve(listener, router, Arc::new(Hello)).await;
//!         println!("stopped in {:?}, cut: {:?}", report.elapsed, report.cut);
//!     });
//! }
//! ```
//!
//! Tests drive a [`Lifecycle`] in-process with their own signal stream and, with the
//! `test-util` feature, `Notifier::Channel`, which records each datagram as the real
//! notifier would send it.

#![warn(missing_docs)]

pub mod control;
pub mod handover;
pub mod listener;
pub mod notify;
mod serve;
mod server;
pub mod signals;
pub mod stages;
mod stop;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use control::HandOverRequest;
pub use handover::{HandOverNames, HandOverSettings, StopRequest};
pub use listener::{ActivatedFds, Listener, Origin};
pub use notify::{Message, Notifier};
use server::Counters;
pub use signals::{Signal, SignalStream};
pub use stages::{
    explain_stop_budget, stop_budget, Stage, StageContext, StageOutcome, StageReport, StageSpec,
    StopCause, StopReport,
};

/// How often startup steps send `EXTEND_TIMEOUT_USEC`, and how far each extends.
const STARTUP_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const STARTUP_HEARTBEAT_EXTENDS: Duration = Duration::from_secs(3);

/// The name of the startup step [`Lifecycle::listener`] runs.
pub const LISTENER_STEP: &str = "listener";

/// What systemd (or the process this one took over from) passed in the environment, read
/// once before any thread starts and then removed, so job processes do not inherit it.
#[derive(Debug, Default)]
pub struct SystemdEnv {
    /// Sockets passed by systemd (`LISTEN_FDS`) or by the predecessor.
    pub fds: ActivatedFds,
    /// The watchdog's interval (`WATCHDOG_USEC`), if the unit sets one.
    pub watchdog: Option<Duration>,
    /// The channel to the process this one takes over from (see [`handover`]), if any.
    pub predecessor: Option<OwnedFd>,
}

impl SystemdEnv {
    /// Reads and unsets `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, `WATCHDOG_USEC`/`WATCHDOG_PID`
    /// and `hand_over_var`, the application's hand-over variable (see
    /// [`HandOverNames::env_var`]).
    ///
    /// # Safety
    /// Must be called before any other thread exists (it calls `std::env::remove_var`):
    /// call it first thing in `main`, before the tokio runtime is built.
    pub unsafe fn take(hand_over_var: &str) -> std::io::Result<Self> {
        let inherited = handover::take_inherited(hand_over_var)?;
        let listen = sd_notify::listen_fds_with_names_and_unset_env()?.collect();
        let watchdog = sd_notify::watchdog_enabled_and_unset_env();
        Ok(match inherited {
            Some(inherited) => {
                let handover::Inherited { fds, channel } = inherited;
                Self {
                    fds,
                    watchdog,
                    predecessor: Some(channel),
                }
            }
            None => Self {
                fds: ActivatedFds(listen),
                watchdog,
                predecessor: None,
            },
        })
    }

    /// Tells the process this one was to take over from that it could not start (e.g. a
    /// configuration error before the runtime exists), so its `systemctl reload` fails with
    /// the reason. Does nothing when there is no such process.
    pub fn report_failure(&self, why: &str) {
        if let Some(channel) = &self.predecessor {
            handover::report_failure(channel, why);
        }
    }
}

/// The settings the lifecycle itself uses. A reload may change them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long a new connection may take to send its first request's headers.
    pub header_read_timeout: Duration,
    /// The bound of each startup step, a reload and a hand-over.
    pub step_timeout: Duration,
    /// The bound of the whole stop.
    pub grace: Duration,
    /// How long, during the drain, an idle keep-alive connection may take to send another request.
    pub idle_close: Duration,
    /// What the application calls these settings, for the messages that name them.
    pub names: SettingNames,
}

/// The application's names for the settings the lifecycle's messages ask an operator to
/// change, as in "raise shutdown.grace". The lifecycle has no configuration file of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingNames {
    /// The address to bind when no socket is passed, e.g. `http.listen`.
    pub listen: &'static str,
    /// The bound of each startup step, a reload and a hand-over, e.g. `startup.step_timeout`.
    pub step_timeout: &'static str,
    /// The bound of the whole stop, e.g. `shutdown.grace`; also named when a stage without
    /// a setting of its own is cut.
    pub grace: &'static str,
}

/// Where the service is in its life; shown by STATUS=, `/readyz` and `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum State {
    /// Startup steps run; not ready yet.
    Starting = 0,
    /// Serving.
    Ready = 1,
    /// A reload or a hand-over is in progress; still serving.
    Reloading = 2,
    /// The stop has begun: see [`Handle::is_stopping`].
    Draining = 3,
    /// The stop is over (shown as "stopping": the process is about to exit).
    #[serde(rename = "stopping")]
    Stopped = 4,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Reloading,
            3 => State::Draining,
            _ => State::Stopped,
        }
    }

    /// The name shown in STATUS=, `/readyz` and status documents.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Reloading => "reloading",
            State::Draining => "draining",
            State::Stopped => "stopping",
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

    /// A handle to no running lifecycle: "starting", never stopping, no requests. For
    /// tests of code that takes a handle (an application's routes) without serving.
    ///
    /// ```
    /// let handle = shiftd_lifecycle::Handle::detached();
    /// assert_eq!(handle.state(), shiftd_lifecycle::State::Starting);
    /// assert!(!handle.is_stopping());
    /// ```
    pub fn detached() -> Self {
        Self::new()
    }

    /// Where the service is in its life.
    pub fn state(&self) -> State {
        State::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: State) {
        self.inner.state.store(state as u8, Ordering::Release);
    }

    /// True from the moment the stop begins ([`State::Draining`], then [`State::Stopped`]).
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }

    /// Resolves when the stop begins. Long-lived responses (streams) end on it.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.stopping.clone().cancelled_owned()
    }

    /// Time since the lifecycle (or this handle) was created.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Requests whose response is not finished.
    pub fn in_flight(&self) -> usize {
        self.inner.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Open connections.
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
    /// A failure stops the start.
    Required,
    /// A failure is logged; the start goes on without it.
    Optional,
}

/// Why startup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The step's work failed.
    #[error("startup step `{step}` failed: {message}")]
    Failed {
        /// The step's name.
        step: &'static str,
        /// What went wrong, and the hint.
        message: String,
    },
    #[error("startup step `{step}` did not finish within {limit}; {hint}, or raise {setting}")]
    /// The step did not finish within the step timeout.
    TimedOut {
        /// The step's name.
        step: &'static str,
        /// The step timeout, for the message.
        limit: String,
        /// What to check.
        hint: String,
        /// The application's name for the step timeout ([`SettingNames::step_timeout`]).
        setting: &'static str,
    },
    #[error("a stop was requested during startup step `{step}`")]
    /// A stop signal arrived while the step ran.
    Interrupted {
        /// The step that was running.
        step: &'static str,
    },
}

/// The lifecycle of one process.
pub struct Lifecycle {
    notifier: Notifier,
    signals: SignalStream,
    systemd: SystemdEnv,
    settings: Settings,
    handle: Handle,
    /// Set by [`Lifecycle::enable_hand_over`]: how to start a successor.
    hand_over: Option<HandOverSettings>,
    control: Option<control::ControlSocket>,
    /// After [`Lifecycle::take_over`]: the process this one took over from, told `main`.
    predecessor: Option<handover::Predecessor>,
    /// A process started by a hand-over is not the main one until it has taken over: with
    /// `NotifyAccess=main` systemd would refuse (and log) what it says before. Its notifier
    /// waits here, muted, until then.
    held_notifier: Option<Notifier>,
}

impl Lifecycle {
    /// Starts the lifecycle: STATUS=starting.
    pub fn new(
        settings: Settings,
        systemd: SystemdEnv,
        notifier: Notifier,
        signals: SignalStream,
    ) -> Self {
        let (notifier, held_notifier) = if systemd.predecessor.is_some() {
            (Notifier::Muted, Some(notifier))
        } else {
            (notifier, None)
        };
        notifier.status("starting");
        Self {
            notifier,
            signals,
            systemd,
            settings,
            handle: Handle::new(),
            hand_over: None,
            control: None,
            predecessor: None,
            held_notifier,
        }
    }

    /// Lets this process hand over to a new one (the application's reload command, SIGUSR2): binds the control
    /// socket, or takes the one the predecessor passed. Without it, only SIGHUP's in-process
    /// reload exists. A control socket that cannot be bound is a warning, not a failed start:
    /// the service serves, and SIGUSR2 still hands over.
    pub fn enable_hand_over(&mut self, settings: HandOverSettings) {
        let inherited = self
            .systemd
            .fds
            .0
            .iter()
            .find(|(_, name)| name == "control")
            .map(|(fd, _)| *fd);
        match control::ControlSocket::acquire(inherited, &settings.control_path) {
            Ok(socket) => self.control = Some(socket),
            Err(e) => tracing::warn!(
                path = %settings.control_path.display(),
                "cannot listen on the control socket {}: {e}; `{}` will not reach this process (SIGUSR2 still hands over)",
                settings.control_path.display(),
                settings.names.reload_command
            ),
        }
        self.hand_over = Some(settings);
    }

    /// When this process was started by a hand-over: tells the predecessor it is ready and
    /// waits until it is made the main process. Call it after every step that can fail and
    /// before any work starts (the runner, accepting): until then the predecessor may still
    /// kill it. Does nothing for a process systemd started.
    pub async fn take_over(&mut self) -> Result<(), StartupError> {
        let Some(channel) = self.systemd.predecessor.take() else {
            return Ok(());
        };
        let step = "take over";
        let mut predecessor =
            handover::Predecessor::new(channel).map_err(|e| StartupError::Failed {
                step,
                message: format!("cannot use the channel to the previous process: {e}"),
            })?;
        let limit = self.settings.step_timeout;
        let result = tokio::select! {
            result = tokio::time::timeout(limit, predecessor.ready()) => match result {
                Ok(result) => result,
                Err(_) => Err(format!("the previous process did not hand over within {}", humantime::format_duration(limit))),
            },
            _ = wait_for_stop(&mut self.signals) => {
                return Err(StartupError::Interrupted { step });
            }
        };
        result.map_err(|message| StartupError::Failed { step, message })?;
        if let Some(notifier) = self.held_notifier.take() {
            self.notifier = notifier;
        }
        tracing::info!("the previous process handed over; this process is the main one now");
        self.predecessor = Some(predecessor);
        Ok(())
    }

    /// Tells the predecessor (if this process was started by a hand-over) why the start
    /// failed, so the reload it is running fails with that reason.
    pub async fn report_startup_failure(&mut self, error: &StartupError) {
        if let Some(predecessor) = &mut self.predecessor {
            predecessor.failed(&error.to_string()).await;
        } else {
            self.systemd.report_failure(&error.to_string());
        }
    }

    /// A handle for the application (routes, reports); cheap to clone.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Where this process's notifications go (muted until a hand-over completes).
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

    /// Runs one startup step under the step timeout ([`Settings::step_timeout`]), logging
    /// its duration.
    ///
    /// A failing required step is an error; a failing optional one logs a warning and
    /// gives `Ok(None)`. While it runs, `EXTEND_TIMEOUT_USEC` keeps systemd's start
    /// timeout from firing on a slow but progressing step. A stop signal interrupts it.
    pub async fn step<T, E: std::fmt::Display>(
        &mut self,
        name: &'static str,
        kind: Step,
        hint: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, StartupError> {
        let started = Instant::now();
        let err = match self.run_step(name, work).await? {
            StepEnd::Done(value) => {
                let took = started.elapsed();
                tracing::info!(
                    step = name,
                    duration_ms = took.as_millis() as u64,
                    "startup step {name} done in {took:.0?}"
                );
                return Ok(Some(value));
            }
            StepEnd::Failed(message) => StartupError::Failed {
                step: name,
                message: format!("{message}; {hint}"),
            },
            StepEnd::TimedOut => StartupError::TimedOut {
                step: name,
                limit: humantime::format_duration(self.settings.step_timeout).to_string(),
                hint: hint.to_string(),
                setting: self.settings.names.step_timeout,
            },
        };
        match kind {
            Step::Required => Err(err),
            Step::Optional => {
                tracing::warn!(
                    step = name,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "{err}; continuing without it"
                );
                Ok(None)
            }
        }
    }

    /// Runs `work` until it ends or its deadline passes, sending heartbeats; a stop signal
    /// interrupts it (`Err`).
    async fn run_step<T, E: std::fmt::Display>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<StepEnd<T>, StartupError> {
        self.notifier.status(format!("starting: {name}"));
        let started = Instant::now();
        let deadline = started + self.settings.step_timeout;
        tokio::pin!(work);
        let mut heartbeat = tokio::time::interval(STARTUP_HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                result = work.as_mut() => return Ok(match result {
                    Ok(value) => StepEnd::Done(value),
                    Err(e) => StepEnd::Failed(e.to_string()),
                }),
                _ = tokio::time::sleep_until(deadline) => return Ok(StepEnd::TimedOut),
                _ = heartbeat.tick() => {
                    if started.elapsed() >= STARTUP_HEARTBEAT_EVERY {
                        self.notifier.send(&[Message::ExtendTimeout(STARTUP_HEARTBEAT_EXTENDS)]);
                    }
                }
                signal = self.signals.next() => match (asked(signal), signal) {
                    (Asked::Stop(_), _) | (_, None) => {
                        tracing::info!(step = name, "stop requested during startup; exiting");
                        return Err(StartupError::Interrupted { step: name });
                    }
                    (_, Some(other)) => tracing::info!(step = name, signal = ?other, "ignoring {other:?} during startup"),
                },
            }
        }
    }

    /// Takes the socket systemd passed, or binds `listen`: the `listener` startup step.
    pub async fn listener(&mut self, listen: &str) -> Result<Listener, StartupError> {
        let fds = self.systemd.fds.clone();
        let listen = listen.to_string();
        let setting = self.settings.names.listen;
        let listener = self
            .step(
                LISTENER_STEP,
                Step::Required,
                &format!("check {setting} and the .socket unit"),
                async move { listener::acquire(&fds, &listen, setting).await },
            )
            .await?
            .expect("a required step gives a value");
        tracing::info!(addr = %listener.local_addr, origin = ?listener.origin, "listening on {}", listener.local_addr);
        Ok(listener)
    }

    /// Serves `router` on `listener` until a stop signal or a hand-over, then runs the app's
    /// stop plan.
    ///
    /// Sends READY=1 first (after a hand-over, the predecessor sent it with `MAINPID=`): call
    /// it only once every startup step is done.
    pub async fn serve(self, listener: Listener, router: Router, app: Arc<dyn App>) -> StopReport {
        let mut serving = serve::Serving::begin(self, listener, router, app).await;
        let kind = serving.serve_until_stop().await;
        serving.stop(kind).await
    }
}

/// How a startup step's work ended.
enum StepEnd<T> {
    Done(T),
    Failed(String),
    TimedOut,
}

/// What a signal asks of the lifecycle. The one place signals get their meaning; what each
/// phase does with it (serving, a reload, a hand-over, the stop) is that phase's business.
pub(crate) enum Asked {
    /// A stop signal, or the end of the signal stream (a graceful stop).
    Stop(serve::StopKind),
    Report,
    Reload,
    HandOver,
}

pub(crate) fn asked(signal: Option<Signal>) -> Asked {
    match signal {
        Some(Signal::Stop) | None => Asked::Stop(serve::StopKind::Graceful),
        Some(Signal::FastStop) => Asked::Stop(serve::StopKind::Fast),
        Some(Signal::Report) => Asked::Report,
        Some(Signal::Reload) => Asked::Reload,
        Some(Signal::HandOver) => Asked::HandOver,
    }
}

/// Waits until `signals` yields a stop (or ends); other signals are logged and ignored.
async fn wait_for_stop(signals: &mut SignalStream) {
    while let Some(signal) = signals.next().await {
        match asked(Some(signal)) {
            Asked::Stop(_) => return,
            _ => tracing::info!(signal = ?signal, "ignoring {signal:?} during startup"),
        }
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
