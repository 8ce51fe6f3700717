//! The stop: the app's plan run in order, with the links to a successor (after a hand-over)
//! and to a predecessor (still finishing its jobs) carrying it along the chain.

use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handover::{PredecessorLink, StopRequest, SuccessorLink};
use crate::notify::{Message, Notifier};
use crate::serve::{Serving, StopKind};
use crate::signals::SignalStream;
use crate::stages::{self, StageReport, StopCause, StopReport};
use crate::{asked, log_report, App, Asked, Handle, State};

/// The two moments of a stop that may come after it began.
#[derive(Clone, Default)]
struct StopTokens {
    /// Cancelled when a stop is in force: at once, or after a hand-over when one arrives.
    now: CancellationToken,
    /// Cancelled when the stop is a fast one: SIGQUIT, a second stop signal, a forwarded `fast`.
    fast: CancellationToken,
}

impl StopTokens {
    /// Resolves to the moment the stop came into force: the grace counts from then, for the
    /// wait on a predecessor too.
    fn in_force_at(&self) -> JoinHandle<Instant> {
        let now = self.now.clone();
        tokio::spawn(async move {
            now.cancelled().await;
            Instant::now()
        })
    }
}

impl Serving {
    /// Runs the app's stop plan; `kind` says how serving ended. Signals keep being read: a
    /// second stop signal means "stop fast".
    pub(crate) async fn stop(mut self, kind: StopKind) -> StopReport {
        let began = std::time::SystemTime::now();
        let handed_over = matches!(kind, StopKind::HandedOver(_));
        self.handle.set_state(State::Draining);
        self.handle.inner.stopping.cancel();
        let tokens = StopTokens::default();
        let in_force_at = tokens.in_force_at();
        let mut tasks = Vec::new();
        let patience = match kind {
            StopKind::Graceful => self.stop_in_force(false, &tokens),
            StopKind::Fast => self.stop_in_force(true, &tokens),
            StopKind::HandedOver(link) => {
                tasks.push(self.retire(link, &tokens));
                Some(tokens.now.clone())
            }
        };
        // The process this one took over from (still finishing its jobs) stops with it.
        if let Some(link) = &self.predecessor {
            tasks.push(forward_stops(link.clone(), tokens.clone()));
        }
        let signals = std::mem::replace(&mut self.signals, futures::stream::empty().boxed());
        tasks.push(read_signals(
            signals,
            tokens.clone(),
            self.handle.clone(),
            self.notifier.clone(),
            self.app.clone(),
        ));
        let plan = self.app.stop_plan();
        let mut report = stages::run_plan(
            plan,
            &mut self.server,
            &self.settings,
            tokens.fast.clone(),
            &self.notifier,
            patience,
        )
        .await;
        report.started_at = began;
        report.cause = if handed_over {
            StopCause::HandOver
        } else if tokens.fast.is_cancelled() {
            StopCause::Fast
        } else {
            StopCause::Graceful
        };
        match &self.predecessor {
            Some(link) => {
                wait_for_predecessor(
                    link,
                    in_force_at,
                    &self.settings,
                    &self.notifier,
                    &mut report,
                )
                .await
            }
            None => in_force_at.abort(),
        }
        for task in tasks {
            task.abort();
        }
        if let Some(w) = self.watchdog_task.take() {
            w.abort();
        }
        self.handle.set_state(State::Stopped);
        announce_stopped(&self.notifier, &report);
        report
    }

    /// A stop asked for by a signal: in force at once. Nothing to be patient for.
    fn stop_in_force(&self, fast: bool, tokens: &StopTokens) -> Option<CancellationToken> {
        tokens.now.cancel();
        if fast {
            tokens.fast.cancel();
        }
        self.notifier.send(&[
            Message::Stopping,
            Message::Status(format!(
                "draining: {} requests in flight",
                self.handle.in_flight()
            )),
        ]);
        tracing::info!(fast, grace = %humantime::format_duration(self.settings.grace), "stop requested; draining");
        None
    }

    /// After a hand-over: this process is not the main one any more. Its stop comes into
    /// force when the successor forwards one (or exits).
    fn retire(&mut self, link: SuccessorLink, tokens: &StopTokens) -> JoinHandle<()> {
        // systemd would refuse (and log) whatever this process sent, and the successor
        // pings the watchdog now.
        self.notifier = Notifier::Muted;
        if let Some(w) = self.watchdog_task.take() {
            w.abort();
        }
        tracing::info!(
            successor = link.pid,
            "handed over to pid {}; draining requests here and letting running jobs finish",
            link.pid
        );
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let SuccessorLink { pid, stop, fast } = link;
            stop.cancelled().await;
            if !tokens.now.is_cancelled() {
                tracing::info!(
                    successor = pid,
                    "stop forwarded by pid {pid}; applying the stop plan"
                );
            }
            tokens.now.cancel();
            fast.cancelled().await;
            tokens.fast.cancel();
        })
    }
}

/// Passes this process's stop on to the predecessor, as it comes into force and if it
/// turns fast.
fn forward_stops(link: PredecessorLink, tokens: StopTokens) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokens.now.cancelled().await;
        link.forward(StopRequest::Graceful).await;
        tokens.fast.cancelled().await;
        link.forward(StopRequest::Fast).await;
    })
}

/// Signals during the stop: the first stop signal puts a stop in force (after a hand-over),
/// a later one makes it fast; a report is logged; reloads are ignored.
fn read_signals(
    mut signals: SignalStream,
    tokens: StopTokens,
    handle: Handle,
    notifier: Notifier,
    app: std::sync::Arc<dyn App>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            match asked(Some(signal)) {
                Asked::Stop(kind) if !tokens.now.is_cancelled() => {
                    tracing::info!("stop requested; applying the stop plan");
                    tokens.now.cancel();
                    if matches!(kind, StopKind::Fast) {
                        tokens.fast.cancel();
                    }
                }
                Asked::Stop(_) => {
                    if !tokens.fast.is_cancelled() {
                        tracing::warn!("second stop signal: stopping fast (skipping the waits; still flushing and closing)");
                        tokens.fast.cancel();
                    }
                }
                Asked::Report => log_report(&handle, &notifier, &*app),
                Asked::Reload | Asked::HandOver => {
                    tracing::info!("ignoring {signal:?} during the stop")
                }
            }
        }
    })
}

/// After its own stop plan, a process started by a hand-over waits for its predecessor to
/// exit, so the service's processes all end within the stop: with no stop in force (a
/// retirement), for as long as it takes; once a stop is in force, up to the grace from then.
async fn wait_for_predecessor(
    link: &PredecessorLink,
    in_force_at: JoinHandle<Instant>,
    settings: &crate::Settings,
    notifier: &Notifier,
    report: &mut StopReport,
) {
    let gone = link.gone();
    if gone.is_cancelled() {
        in_force_at.abort();
        return;
    }
    let started = Instant::now();
    tracing::info!("waiting for the previous process to finish its jobs and exit");
    tokio::pin!(in_force_at);
    let in_force_at = tokio::select! {
        _ = gone.cancelled() => None,
        at = &mut in_force_at => at.ok(),
    };
    let done = match in_force_at {
        None => true,
        // Within the grace that began when the stop came into force.
        Some(at) => exited_by(&gone, at + settings.grace, notifier).await,
    };
    let took = started.elapsed();
    report.elapsed += took;
    report.push(StageReport {
        name: "predecessor",
        setting: settings.names.grace,
        budget: settings.grace,
        took,
        cut: !done,
        note: if done {
            "the previous process exited".into()
        } else {
            "the previous process did not exit in time".into()
        },
    });
    if done {
        tracing::info!(
            duration_ms = took.as_millis() as u64,
            "the previous process exited"
        );
    } else {
        tracing::warn!(
            "the previous process did not exit within {} ({}); systemd stops it with this unit",
            settings.names.grace,
            humantime::format_duration(settings.grace)
        );
    }
}

/// Waits for `gone` until `deadline`, extending the stop timeout meanwhile; true if it came.
async fn exited_by(gone: &CancellationToken, deadline: Instant, notifier: &Notifier) -> bool {
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = gone.cancelled() => break true,
            _ = tokio::time::sleep_until(deadline) => break gone.is_cancelled(),
            _ = heartbeat.tick() => notifier.send(&[Message::ExtendTimeout(Duration::from_secs(3))]),
        }
    }
}

/// The last STATUS= and log line: how long the stop took, and what had to be cut.
fn announce_stopped(notifier: &Notifier, report: &StopReport) {
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
}
