//! The systemd-native lifecycle of an axum service: startup steps, readiness, signals,
//! reload, watchdog, and the ordered, bounded stop.
//!
//! This module knows nothing about jobs, routes or SQL. An application hands it a
//! [`Router`], an [`App`] (reload, report, stop plan) and its startup steps; see
//! `lifecycle/examples/minimal.rs` for the smallest one. Signals and `$NOTIFY_SOCKET` are read here
//! and nowhere else.

pub mod control;
pub mod handover;
pub mod listener;
pub mod notify;
pub mod server;
pub mod signals;
pub mod stages;

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use control::HandOverRequest;
pub use handover::{HandOverSettings, StopRequest};
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

/// What systemd (or the process this one took over from) passed in the environment, read
/// once before any thread starts and then removed, so job processes do not inherit it.
#[derive(Debug, Default)]
pub struct SystemdEnv {
    pub fds: ActivatedFds,
    pub watchdog: Option<Duration>,
    /// The channel to the process this one takes over from (see [`handover`]), if any.
    pub predecessor: Option<OwnedFd>,
}

impl SystemdEnv {
    /// Reads and unsets `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, `WATCHDOG_USEC`/`WATCHDOG_PID`
    /// and `SHIFTD_HANDOVER`.
    ///
    /// # Safety
    /// Must be called before any other thread exists (it calls `std::env::remove_var`):
    /// call it first thing in `main`, before the tokio runtime is built.
    pub unsafe fn take() -> std::io::Result<Self> {
        let inherited = handover::take_inherited()?;
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

/// How the serving phase ended.
enum End {
    Stop { fast: bool },
    HandedOver(handover::SuccessorLink),
}

/// How a hand-over attempt ended.
enum HandOverEnd {
    Done(handover::SuccessorLink),
    Failed(String),
    Stopped { fast: bool },
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

    /// Lets this process hand over to a new one (`shiftd reload`, SIGUSR2): binds the control
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
                "cannot listen on the control socket {}: {e}; `shiftd reload` will not reach this process (SIGUSR2 still hands over)",
                settings.control_path.display()
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

    /// Serves `router` on `listener` until a stop signal or a hand-over, then runs the app's
    /// stop plan.
    ///
    /// Sends READY=1 first (after a hand-over, the predecessor sent it with `MAINPID=`): call
    /// it only once every startup step is done.
    pub async fn serve(self, listener: Listener, router: Router, app: Arc<dyn App>) -> StopReport {
        let Lifecycle {
            mut notifier,
            mut signals,
            systemd,
            mut settings,
            handle,
            hand_over,
            control,
            predecessor,
            held_notifier: _,
        } = self;
        let http_fd = listener.socket.as_raw_fd();
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
        // This process accepts now; the predecessor may stop accepting.
        let predecessor = match predecessor {
            Some(p) => Some(p.serving().await),
            None => None,
        };
        let control_fd = control.as_ref().map(|c| c.listener.as_raw_fd());
        let control_stop = CancellationToken::new();
        let (control_tx, mut control_rx) = tokio::sync::mpsc::channel::<HandOverRequest>(4);
        if let Some(control) = control {
            control.spawn(control_tx, control_stop.clone());
        }
        // WATCHDOG_USEC=0 is no watchdog (libsystemd rejects it), and a zero period would
        // panic in `tokio::time::interval`.
        let watchdog_interval = systemd.watchdog.filter(|interval| !interval.is_zero());
        let mut watchdog_task =
            watchdog_interval.map(|interval| tokio::spawn(watchdog(notifier.clone(), interval)));

        handle.set_state(State::Ready);
        if predecessor.is_some() {
            // READY=1 went out with MAINPID= in the predecessor's last message.
            notifier.send(&[Message::Status(app.report().status_line)]);
            tracing::info!(
                uptime_ms = handle.uptime().as_millis() as u64,
                "took over; serving"
            );
        } else {
            notifier.send(&[Message::Ready, Message::Status(app.report().status_line)]);
            tracing::info!(uptime_ms = handle.uptime().as_millis() as u64, "ready");
        }

        let mut status_line = app.report().status_line;
        let mut status_refresh = tokio::time::interval(STATUS_REFRESH_EVERY);
        let end = loop {
            let (signal, request) = tokio::select! {
                signal = signals.next() => (Some(signal), None),
                Some(request) = control_rx.recv() => (None, Some(request)),
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
            let reply = match (signal, request) {
                (Some(Some(Signal::Stop) | None), _) => break End::Stop { fast: false },
                (Some(Some(Signal::FastStop)), _) => break End::Stop { fast: true },
                (Some(Some(Signal::Report)), _) => {
                    log_report(&handle, &notifier, &*app);
                    continue;
                }
                (Some(Some(Signal::Reload)), _) => {
                    match reload_in_process(&handle, &notifier, &mut signals, &*app, settings).await
                    {
                        Ok(new) => {
                            settings = new;
                            *connection_settings.write().expect("settings lock poisoned") =
                                ConnectionSettings {
                                    header_read_timeout: new.header_read_timeout,
                                    idle_close: new.idle_close,
                                };
                        }
                        Err(fast) => break End::Stop { fast },
                    }
                    continue;
                }
                (Some(Some(Signal::HandOver)), _) => None,
                (None, Some(request)) => Some(request.reply),
                (None, None) => continue,
            };
            let mut fds = vec![("http", http_fd)];
            if let Some(fd) = control_fd {
                fds.push(("control", fd));
            }
            let outcome = hand_over_to_new_process(
                hand_over.as_ref(),
                &fds,
                watchdog_interval,
                &handle,
                &notifier,
                &mut signals,
                &mut control_rx,
                &*app,
                settings.step_timeout,
            )
            .await;
            match outcome {
                HandOverEnd::Done(link) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(format!(
                            "pid {} took over from pid {}",
                            link.pid,
                            std::process::id()
                        )));
                    }
                    break End::HandedOver(link);
                }
                HandOverEnd::Failed(why) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(format!(
                            "{why}; pid {} keeps serving",
                            std::process::id()
                        )));
                    }
                }
                HandOverEnd::Stopped { fast } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err("a stop arrived during the hand-over".into()));
                    }
                    break End::Stop { fast };
                }
            }
        };
        control_stop.cancel();
        // Requests that arrived meanwhile go to the new process if there is one.
        control_rx.close();
        while let Ok(request) = control_rx.try_recv() {
            let _ = request.reply.send(Err(match &end {
                End::HandedOver(link) => format!(
                    "pid {} had just handed over to pid {}; run the reload again to hand over from it",
                    std::process::id(),
                    link.pid
                ),
                End::Stop { .. } => "the service is stopping".to_string(),
            }));
        }

        // The stop. Signals keep being read: a second stop signal means "stop fast".
        handle.set_state(State::Draining);
        handle.inner.stopping.cancel();
        let fast_token = CancellationToken::new();
        // Cancelled when a stop is in force: at once, or after a hand-over when one arrives.
        let stop_now = CancellationToken::new();
        // When the stop came into force: the grace counts from then, for the wait on a
        // predecessor too.
        let stop_started = {
            let stop_now = stop_now.clone();
            tokio::spawn(async move {
                stop_now.cancelled().await;
                Instant::now()
            })
        };
        let mut successor_tasks = Vec::new();
        let retiring = match end {
            End::Stop { fast } => {
                stop_now.cancel();
                if fast {
                    fast_token.cancel();
                }
                notifier.send(&[
                    Message::Stopping,
                    Message::Status(format!(
                        "draining: {} requests in flight",
                        handle.in_flight()
                    )),
                ]);
                tracing::info!(fast, grace = %humantime::format_duration(settings.grace), "stop requested; draining");
                None
            }
            End::HandedOver(link) => {
                // Not the main process any more: systemd would refuse (and log) whatever
                // this process sent, and the successor pings the watchdog now.
                notifier = Notifier::Muted;
                if let Some(w) = watchdog_task.take() {
                    w.abort();
                }
                tracing::info!(
                    successor = link.pid,
                    "handed over to pid {}; draining requests here and letting running jobs finish",
                    link.pid
                );
                let (stop_now, fast_token) = (stop_now.clone(), fast_token.clone());
                let pid = link.pid;
                successor_tasks.push(tokio::spawn(async move {
                    link.stop.cancelled().await;
                    if !stop_now.is_cancelled() {
                        tracing::info!(
                            successor = pid,
                            "stop forwarded by pid {pid}; applying the stop plan"
                        );
                    }
                    stop_now.cancel();
                    link.fast.cancelled().await;
                    fast_token.cancel();
                }));
                Some(pid)
            }
        };
        // The process this one took over from (still finishing its jobs) stops with it.
        if let Some(link) = &predecessor {
            let link_stop = stop_now.clone();
            let link_fast = fast_token.clone();
            let link = link.clone();
            successor_tasks.push(tokio::spawn(async move {
                link_stop.cancelled().await;
                link.forward(StopRequest::Graceful).await;
                link_fast.cancelled().await;
                link.forward(StopRequest::Fast).await;
            }));
        }
        let signal_task = {
            let fast_token = fast_token.clone();
            let stop_now = stop_now.clone();
            let handle = handle.clone();
            let notifier = notifier.clone();
            let app = app.clone();
            tokio::spawn(async move {
                while let Some(signal) = signals.next().await {
                    match signal {
                        Signal::Stop | Signal::FastStop if !stop_now.is_cancelled() => {
                            tracing::info!("stop requested; applying the stop plan");
                            stop_now.cancel();
                            if signal == Signal::FastStop {
                                fast_token.cancel();
                            }
                        }
                        Signal::Stop | Signal::FastStop => {
                            if !fast_token.is_cancelled() {
                                tracing::warn!("second stop signal: stopping fast (skipping the waits; still flushing and closing)");
                                fast_token.cancel();
                            }
                        }
                        Signal::Report => log_report(&handle, &notifier, &*app),
                        Signal::Reload | Signal::HandOver => {
                            tracing::info!("ignoring {signal:?} during the stop")
                        }
                    }
                }
            })
        };
        let mut report = stages::run_plan(
            app.stop_plan(),
            &mut server,
            settings.grace,
            fast_token.clone(),
            &notifier,
            retiring.map(|_| stop_now.clone()),
        )
        .await;
        if let Some(link) = &predecessor {
            wait_for_predecessor(link, stop_started, settings.grace, &notifier, &mut report).await;
        }
        signal_task.abort();
        for task in successor_tasks {
            task.abort();
        }
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

/// Waits until `signals` yields a stop (or ends); other signals are logged and ignored.
async fn wait_for_stop(signals: &mut SignalStream) {
    while let Some(signal) = signals.next().await {
        match signal {
            Signal::Stop | Signal::FastStop => return,
            other => tracing::info!(signal = ?other, "ignoring {other:?} during startup"),
        }
    }
}

/// SIGHUP: the application re-reads its configuration in this process. `Err(fast)` when a
/// stop arrived meanwhile (the reload is abandoned and the stop begins).
async fn reload_in_process(
    handle: &Handle,
    notifier: &Notifier,
    signals: &mut SignalStream,
    app: &dyn App,
    settings: Settings,
) -> Result<Settings, bool> {
    handle.set_state(State::Reloading);
    notifier.send(&[Message::Reloading, Message::Status("reloading".into())]);
    // Signals are read during the reload too: a stop must not wait for it.
    let reload = tokio::time::timeout(settings.step_timeout, app.reload());
    tokio::pin!(reload);
    let result = loop {
        tokio::select! {
            result = &mut reload => break result,
            signal = signals.next() => match signal {
                Some(Signal::Stop) | None => {
                    tracing::warn!("stop requested during a reload; the reload was abandoned, stopping on the previous configuration");
                    return Err(false);
                }
                Some(Signal::FastStop) => {
                    tracing::warn!("stop requested during a reload; the reload was abandoned, stopping on the previous configuration");
                    return Err(true);
                }
                Some(Signal::Report) => log_report(handle, notifier, app),
                Some(Signal::Reload | Signal::HandOver) => tracing::info!("a reload is already in progress"),
            },
        }
    };
    let settings = match result {
        Ok(Ok(new)) => {
            tracing::info!("configuration reloaded");
            new
        }
        Ok(Err(message)) => {
            tracing::warn!(
                "reload rejected, still running on the previous configuration: {message}"
            );
            settings
        }
        Err(_) => {
            tracing::warn!(
                "reload did not finish within startup.step_timeout; still running on the previous configuration"
            );
            settings
        }
    };
    handle.set_state(State::Ready);
    notifier.send(&[Message::Ready, Message::Status(app.report().status_line)]);
    Ok(settings)
}

/// Starts a new process of the same program with this one's sockets and makes it the main
/// process once it is ready. See [`handover`].
#[allow(clippy::too_many_arguments)]
async fn hand_over_to_new_process(
    settings: Option<&HandOverSettings>,
    fds: &[(&str, std::os::fd::RawFd)],
    watchdog: Option<Duration>,
    handle: &Handle,
    notifier: &Notifier,
    signals: &mut SignalStream,
    requests: &mut tokio::sync::mpsc::Receiver<HandOverRequest>,
    app: &dyn App,
    step_timeout: Duration,
) -> HandOverEnd {
    let Some(settings) = settings else {
        let why = "this process cannot hand over (it was not given a program to start)".to_string();
        tracing::warn!("hand-over refused: {why}");
        return HandOverEnd::Failed(why);
    };
    handle.set_state(State::Reloading);
    notifier.send(&[
        Message::Reloading,
        Message::Status("reloading: starting a new process to hand over to".into()),
    ]);
    tracing::info!(program = %settings.program.display(), "hand-over: starting {}", settings.program.display());
    let started = Instant::now();
    let start = handover::start(settings, fds, watchdog);
    tokio::pin!(start);
    let result = loop {
        tokio::select! {
            result = &mut start => break result,
            signal = signals.next() => match signal {
                Some(Signal::Stop) | None => {
                    tracing::warn!("stop requested during a hand-over; the new process is abandoned");
                    return HandOverEnd::Stopped { fast: false };
                }
                Some(Signal::FastStop) => {
                    tracing::warn!("stop requested during a hand-over; the new process is abandoned");
                    return HandOverEnd::Stopped { fast: true };
                }
                Some(Signal::Report) => log_report(handle, notifier, app),
                Some(Signal::Reload | Signal::HandOver) => tracing::info!("a hand-over is already in progress"),
            },
            Some(request) = requests.recv() => {
                // One hand-over at a time.
                let _ = request.reply.send(Err("a hand-over is already in progress".into()));
            }
        }
    };
    match result {
        Ok(successor) => {
            let pid = successor.pid;
            // The last message of this process as the main one: name the successor, and say
            // the reload is done, in one datagram (MAINPID= is applied first).
            notifier.send(&[
                Message::MainPid(pid as u32),
                Message::Ready,
                Message::Status(format!("ready: took over from pid {}", std::process::id())),
            ]);
            let link = successor.confirm(step_timeout).await;
            tracing::info!(
                successor = pid,
                duration_ms = started.elapsed().as_millis() as u64,
                "hand-over to pid {pid} done in {:.0?}",
                started.elapsed()
            );
            HandOverEnd::Done(link)
        }
        Err(e) => {
            tracing::warn!(
                "hand-over failed: {e}; this process (pid {}) keeps serving",
                std::process::id()
            );
            handle.set_state(State::Ready);
            notifier.send(&[Message::Ready, Message::Status(app.report().status_line)]);
            HandOverEnd::Failed(e.to_string())
        }
    }
}

/// After its own stop plan, a process started by a hand-over waits for its predecessor to
/// exit, so the service's processes all end within the stop: with no stop in force (a
/// retirement), for as long as it takes; once a stop is in force, up to `grace` from then.
async fn wait_for_predecessor(
    link: &handover::PredecessorLink,
    stop_started: tokio::task::JoinHandle<Instant>,
    grace: Duration,
    notifier: &Notifier,
    report: &mut StopReport,
) {
    let gone = link.gone();
    if gone.is_cancelled() {
        stop_started.abort();
        return;
    }
    let started = Instant::now();
    tracing::info!("waiting for the previous process to finish its jobs and exit");
    tokio::pin!(stop_started);
    let stop_started = tokio::select! {
        _ = gone.cancelled() => None,
        at = &mut stop_started => at.ok(),
    };
    let done = match stop_started {
        None => true,
        Some(at) => {
            // Within the grace that began when the stop came into force.
            let deadline = at + grace;
            let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = gone.cancelled() => break true,
                    _ = tokio::time::sleep_until(deadline) => break gone.is_cancelled(),
                    _ = heartbeat.tick() => notifier.send(&[Message::ExtendTimeout(Duration::from_secs(3))]),
                }
            }
        }
    };
    let took = started.elapsed();
    report.stages.push(("predecessor", took));
    report.elapsed += took;
    if done {
        tracing::info!(
            duration_ms = took.as_millis() as u64,
            "the previous process exited"
        );
    } else {
        report.cut.push("predecessor");
        tracing::warn!(
            "the previous process did not exit within shutdown.grace ({}); systemd stops it with this unit",
            humantime::format_duration(grace)
        );
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
