//! Serving, and the two ways out of it that keep serving when they fail: the in-process
//! reload (SIGHUP) and the hand-over to a new process (SIGUSR2, `shiftd reload`). Serving
//! ends with a [`StopKind`]; [`Serving::stop`](crate::stop) takes it from there.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use crate::control::{ControlSocket, HandOverRequest};
use crate::handover::{self, HandOverSettings, PredecessorLink, SuccessorLink};
use crate::notify::{Message, Notifier};
use crate::server::{ConnectionSettings, Server};
use crate::signals::SignalStream;
use crate::{asked, log_report, App, Asked, Handle, Lifecycle, Listener, Settings, State};

/// How often STATUS= is refreshed from the app's report while serving (sent only if changed).
const STATUS_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// How serving ended, and so which stop follows.
pub(crate) enum StopKind {
    /// A stop signal, or the end of the signal stream: the stages wait within their budgets.
    Graceful,
    /// SIGQUIT: the waiting stages are cut at once; flush and close still run.
    Fast,
    /// This process handed over to a successor: requests drain, and the stages that outlast
    /// a hand-over wait without a budget until the successor forwards a stop.
    HandedOver(SuccessorLink),
}

/// The answer to whoever asked for a hand-over on the control socket.
type Reply = oneshot::Sender<Result<String, String>>;

/// What the serving loop reacts to.
enum Event {
    Signal(Asked),
    /// A hand-over asked for on the control socket.
    Requested(Reply),
    RefreshStatus,
}

/// Why a hand-over did not happen.
enum NotHandedOver {
    /// This process keeps serving; the text says why.
    Failed(String),
    /// A stop arrived meanwhile; the new process is abandoned.
    Stopped(StopKind),
}

/// What is in progress while signals are still read: a reload or a hand-over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Busy {
    Reload,
    HandOver,
}

impl Busy {
    fn in_progress(self) -> &'static str {
        match self {
            Busy::Reload => "a reload is already in progress",
            Busy::HandOver => "a hand-over is already in progress",
        }
    }

    fn abandoned(self) -> &'static str {
        match self {
            Busy::Reload => "stop requested during a reload; the reload was abandoned, stopping on the previous configuration",
            Busy::HandOver => "stop requested during a hand-over; the new process is abandoned",
        }
    }
}

/// A process that serves: what the serving loop, the reload, the hand-over and the stop share.
pub(crate) struct Serving {
    pub(crate) notifier: Notifier,
    pub(crate) signals: SignalStream,
    pub(crate) settings: Settings,
    pub(crate) handle: Handle,
    pub(crate) app: Arc<dyn App>,
    pub(crate) server: Server,
    connection_settings: Arc<RwLock<ConnectionSettings>>,
    hand_over: Option<HandOverSettings>,
    /// The process this one took over from, which may still be finishing its jobs.
    pub(crate) predecessor: Option<PredecessorLink>,
    control: Control,
    watchdog: Option<Duration>,
    pub(crate) watchdog_task: Option<JoinHandle<()>>,
    /// The last STATUS= line sent by the refresh.
    status_line: String,
}

fn connection_settings(settings: &Settings) -> ConnectionSettings {
    ConnectionSettings {
        header_read_timeout: settings.header_read_timeout,
        idle_close: settings.idle_close,
    }
}

impl Serving {
    /// Starts accepting, the control socket and the watchdog, and says READY=1.
    pub(crate) async fn begin(
        life: Lifecycle,
        listener: Listener,
        router: Router,
        app: Arc<dyn App>,
    ) -> Self {
        let Lifecycle {
            notifier,
            signals,
            systemd,
            settings,
            handle,
            hand_over,
            control,
            predecessor,
            held_notifier: _,
        } = life;
        let http_fd = listener.socket.as_raw_fd();
        let connection_settings = Arc::new(RwLock::new(connection_settings(&settings)));
        let server = Server::spawn(
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
        // WATCHDOG_USEC=0 is no watchdog (libsystemd rejects it), and a zero period would
        // panic in `tokio::time::interval`.
        let watchdog = systemd.watchdog.filter(|interval| !interval.is_zero());
        let watchdog_task =
            watchdog.map(|interval| tokio::spawn(crate::watchdog(notifier.clone(), interval)));
        let mut serving = Self {
            notifier,
            signals,
            settings,
            handle,
            app,
            server,
            connection_settings,
            hand_over,
            predecessor,
            control: Control::start(control, http_fd),
            watchdog,
            watchdog_task,
            status_line: String::new(),
        };
        serving.announce_ready();
        serving
    }

    fn announce_ready(&mut self) {
        self.handle.set_state(State::Ready);
        if self.predecessor.is_some() {
            // READY=1 went out with MAINPID= in the predecessor's last message.
            self.notifier
                .send(&[Message::Status(self.app.report().status_line)]);
            tracing::info!(
                uptime_ms = self.handle.uptime().as_millis() as u64,
                "took over; serving"
            );
        } else {
            self.notifier.send(&[
                Message::Ready,
                Message::Status(self.app.report().status_line),
            ]);
            tracing::info!(uptime_ms = self.handle.uptime().as_millis() as u64, "ready");
        }
        self.status_line = self.app.report().status_line;
    }

    /// Serves until a stop signal or a hand-over; reloads and failed hand-overs keep serving.
    pub(crate) async fn serve_until_stop(&mut self) -> StopKind {
        let mut refresh = tokio::time::interval(STATUS_REFRESH_EVERY);
        let kind = loop {
            let outcome = match self.next_event(&mut refresh).await {
                Event::Signal(Asked::Stop(kind)) => Err(kind),
                Event::Signal(Asked::Report) => {
                    self.log_report();
                    Ok(())
                }
                Event::Signal(Asked::Reload) => self.reload().await,
                Event::Signal(Asked::HandOver) => self.hand_over(None).await,
                Event::Requested(reply) => self.hand_over(Some(reply)).await,
                Event::RefreshStatus => {
                    self.refresh_status();
                    Ok(())
                }
            };
            if let Err(kind) = outcome {
                break kind;
            }
        };
        self.control.close(&kind);
        kind
    }

    async fn next_event(&mut self, refresh: &mut Interval) -> Event {
        tokio::select! {
            signal = self.signals.next() => Event::Signal(asked(signal)),
            Some(request) = self.control.requests.recv() => Event::Requested(request.reply),
            _ = refresh.tick() => Event::RefreshStatus,
        }
    }

    /// STATUS= tells the truth between state changes too (queue depth, jobs).
    fn refresh_status(&mut self) {
        let line = self.app.report().status_line;
        if line != self.status_line {
            self.notifier.status(line.clone());
            self.status_line = line;
        }
    }

    pub(crate) fn log_report(&self) {
        log_report(&self.handle, &self.notifier, &*self.app);
    }

    /// Runs `work` while signals (and, during a hand-over, control requests) keep being
    /// read: a stop abandons the work and is returned, a report is logged, a second reload
    /// or hand-over is refused.
    async fn while_busy<T>(
        &mut self,
        busy: Busy,
        work: impl Future<Output = T>,
    ) -> Result<T, StopKind> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return Ok(result),
                signal = self.signals.next() => match asked(signal) {
                    Asked::Stop(kind) => {
                        tracing::warn!("{}", busy.abandoned());
                        return Err(kind);
                    }
                    Asked::Report => self.log_report(),
                    Asked::Reload | Asked::HandOver => tracing::info!("{}", busy.in_progress()),
                },
                Some(request) = self.control.requests.recv(), if busy == Busy::HandOver => {
                    // One hand-over at a time.
                    let _ = request.reply.send(Err(busy.in_progress().into()));
                }
            }
        }
    }

    /// SIGHUP: the application re-reads its configuration in this process. A stop that
    /// arrives meanwhile abandons the reload (`Err`).
    async fn reload(&mut self) -> Result<(), StopKind> {
        self.handle.set_state(State::Reloading);
        self.notifier
            .send(&[Message::Reloading, Message::Status("reloading".into())]);
        let app = self.app.clone();
        let reload = tokio::time::timeout(self.settings.step_timeout, app.reload());
        match self.while_busy(Busy::Reload, reload).await? {
            Ok(Ok(new)) => {
                tracing::info!("configuration reloaded");
                self.settings = new;
                *self
                    .connection_settings
                    .write()
                    .expect("settings lock poisoned") = connection_settings(&new);
            }
            Ok(Err(message)) => tracing::warn!(
                "reload rejected, still running on the previous configuration: {message}"
            ),
            Err(_) => tracing::warn!(
                "reload did not finish within {}; still running on the previous configuration",
                self.settings.names.step_timeout
            ),
        }
        self.back_to_ready();
        Ok(())
    }

    fn back_to_ready(&self) {
        self.handle.set_state(State::Ready);
        self.notifier.send(&[
            Message::Ready,
            Message::Status(self.app.report().status_line),
        ]);
    }

    /// SIGUSR2 or `shiftd reload`: hands over to a new process and answers `reply`. `Err`
    /// when serving ends: handed over, or a stop arrived meanwhile.
    async fn hand_over(&mut self, reply: Option<Reply>) -> Result<(), StopKind> {
        let pid = std::process::id();
        let (answer, outcome) = match self.try_hand_over().await {
            Ok(link) => (
                Ok(format!("pid {} took over from pid {pid}", link.pid)),
                Err(StopKind::HandedOver(link)),
            ),
            Err(NotHandedOver::Failed(why)) => {
                (Err(format!("{why}; pid {pid} keeps serving")), Ok(()))
            }
            Err(NotHandedOver::Stopped(kind)) => {
                (Err("a stop arrived during the hand-over".into()), Err(kind))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
        outcome
    }

    /// Starts a new process of the same program with this one's sockets and makes it the
    /// main process once it is ready. See [`handover`].
    async fn try_hand_over(&mut self) -> Result<SuccessorLink, NotHandedOver> {
        let Some(settings) = self.hand_over.clone() else {
            let why =
                "this process cannot hand over (it was not given a program to start)".to_string();
            tracing::warn!("hand-over refused: {why}");
            return Err(NotHandedOver::Failed(why));
        };
        self.handle.set_state(State::Reloading);
        self.notifier.send(&[
            Message::Reloading,
            Message::Status("reloading: starting a new process to hand over to".into()),
        ]);
        tracing::info!(program = %settings.program.display(), "hand-over: starting {}", settings.program.display());
        let started = Instant::now();
        let fds = self.control.fds();
        let start = handover::start(&settings, &fds, self.watchdog);
        let successor = match self.while_busy(Busy::HandOver, start).await {
            Err(kind) => return Err(NotHandedOver::Stopped(kind)),
            Ok(Err(e)) => {
                tracing::warn!(
                    "hand-over failed: {e}; this process (pid {}) keeps serving",
                    std::process::id()
                );
                self.back_to_ready();
                return Err(NotHandedOver::Failed(e.to_string()));
            }
            Ok(Ok(successor)) => successor,
        };
        let pid = successor.pid;
        // The last message of this process as the main one: name the successor, and say the
        // reload is done, in one datagram (MAINPID= is applied first).
        self.notifier.send(&[
            Message::MainPid(pid as u32),
            Message::Ready,
            Message::Status(format!("ready: took over from pid {}", std::process::id())),
        ]);
        let link = successor.confirm(self.settings.step_timeout).await;
        tracing::info!(
            successor = pid,
            duration_ms = started.elapsed().as_millis() as u64,
            "hand-over to pid {pid} done in {:.0?}",
            started.elapsed()
        );
        Ok(link)
    }
}

/// The control socket's side of serving: the requests it passes on, and the descriptors a
/// successor inherits.
struct Control {
    http_fd: RawFd,
    fd: Option<RawFd>,
    stop: CancellationToken,
    requests: mpsc::Receiver<HandOverRequest>,
}

impl Control {
    fn start(socket: Option<ControlSocket>, http_fd: RawFd) -> Self {
        let fd = socket.as_ref().map(|c| c.listener.as_raw_fd());
        let stop = CancellationToken::new();
        let (tx, requests) = mpsc::channel::<HandOverRequest>(4);
        if let Some(socket) = socket {
            socket.spawn(tx, stop.clone());
        }
        Self {
            http_fd,
            fd,
            stop,
            requests,
        }
    }

    /// The sockets a successor takes over, by name.
    fn fds(&self) -> Vec<(&'static str, RawFd)> {
        let mut fds = vec![("http", self.http_fd)];
        if let Some(fd) = self.fd {
            fds.push(("control", fd));
        }
        fds
    }

    /// Stops listening; requests that arrived meanwhile are told why there is no hand-over
    /// here (and to ask the new process, if there is one).
    fn close(&mut self, kind: &StopKind) {
        self.stop.cancel();
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            let _ = request.reply.send(Err(match kind {
                StopKind::HandedOver(link) => format!(
                    "pid {} had just handed over to pid {}; run the reload again to hand over from it",
                    std::process::id(),
                    link.pid
                ),
                StopKind::Graceful | StopKind::Fast => "the service is stopping".to_string(),
            }));
        }
    }
}
