//! The stop, as an ordered list of stages with budgets, and the one loop that runs it.
//!
//! The application declares the list once (shiftd: `shiftd::service::stop_plan`); this module
//! runs each stage under its deadline, sends `EXTEND_TIMEOUT_USEC` heartbeats while the
//! stop is within `shutdown.grace`, logs each stage's duration and outcome, and turns a
//! second stop signal into "skip the waiting".

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::notify::{Message, Notifier};
use super::server::{DrainOutcome, Server};

/// How often a heartbeat goes out during the stop, and how far each one extends.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EXTENDS: Duration = Duration::from_secs(3);

/// After `http_drain`, the time the drain stage gets to close what is still open.
pub const HTTP_CUT_ALLOWANCE: Duration = Duration::from_secs(1);

/// What a custom stage does, given its context.
pub type StageFn = Box<dyn FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send>;

enum Work {
    StopAccepting,
    HttpDrain,
    Custom(StageFn),
}

/// One step of the stop.
pub struct Stage {
    /// Shown in logs and STATUS=.
    pub name: &'static str,
    /// The setting that sets `budget`, named in the warning when the stage is cut.
    pub setting: &'static str,
    /// How long the stage may wait for work to finish before it is told to cut.
    pub budget: Duration,
    /// How long, after being told to cut, it may take to stop what remains.
    pub cut_allowance: Duration,
    /// A waiting stage is cut at once by a fast stop; a non-waiting one (flush, close) still runs.
    pub waits: bool,
    /// After a hand-over, this stage waits with no budget until a stop arrives (the jobs
    /// stage: running jobs finish in the old process, bounded by their own timeouts).
    pub outlasts_hand_over: bool,
    work: Work,
}

impl Stage {
    /// STOPPING=1 has been sent and readiness fails; this stops `accept()`.
    pub fn stop_accepting() -> Self {
        Self {
            name: "stop-accepting",
            setting: "",
            budget: Duration::ZERO,
            cut_allowance: Duration::from_secs(1),
            waits: false,
            outlasts_hand_over: false,
            work: Work::StopAccepting,
        }
    }

    /// In-flight requests finish; idle connections get `idle_close`; the rest is cut.
    pub fn http_drain(budget: Duration) -> Self {
        Self {
            name: "http-drain",
            setting: "shutdown.http_drain",
            budget,
            cut_allowance: HTTP_CUT_ALLOWANCE,
            waits: true,
            outlasts_hand_over: false,
            work: Work::HttpDrain,
        }
    }

    /// A stage that waits for work to finish (cut at its budget, or at once on a fast stop).
    pub fn waiting(
        name: &'static str,
        setting: &'static str,
        budget: Duration,
        cut_allowance: Duration,
        work: impl FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send + 'static,
    ) -> Self {
        Self {
            name,
            setting,
            budget,
            cut_allowance,
            waits: true,
            outlasts_hand_over: false,
            work: Work::Custom(Box::new(work)),
        }
    }

    /// A stage that must run even on a fast stop (flush, close), bounded by its budget.
    pub fn finishing(
        name: &'static str,
        setting: &'static str,
        budget: Duration,
        work: impl FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send + 'static,
    ) -> Self {
        Self {
            name,
            setting,
            budget,
            cut_allowance: Duration::ZERO,
            waits: false,
            outlasts_hand_over: false,
            work: Work::Custom(Box::new(work)),
        }
    }

    /// Marks a waiting stage as one that, after a hand-over, waits for its work with no
    /// budget until a stop arrives; from then on its budget applies as in any stop.
    pub fn outlasting_hand_over(mut self) -> Self {
        self.outlasts_hand_over = true;
        self
    }
}

/// Given to a custom stage.
pub struct StageContext {
    /// Cancelled when the stage must stop waiting and cut what remains.
    pub cut: CancellationToken,
    /// When `cut` fires (unless a fast stop comes first). After a hand-over, while
    /// `patience` is not cancelled, this is far away.
    pub deadline: Instant,
    /// Only after a hand-over, for a stage that outlasts it: cancelled when a stop arrives.
    /// Until then the stage lets its work finish undisturbed (no requeue, no cut).
    pub patience: Option<CancellationToken>,
    notifier: Notifier,
}

impl StageContext {
    /// Updates STATUS=, e.g. "draining: 2 jobs running, longest 41s".
    pub fn status(&self, line: impl Into<String>) {
        self.notifier.status(line);
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// Everything finished; the text says what was done.
    Done(String),
    /// Work was cut short; the text says what.
    Cut(String),
}

/// The result of the whole stop.
#[derive(Debug, Clone, Default)]
pub struct StopReport {
    /// Names of the stages that had to cut work.
    pub cut: Vec<&'static str>,
    /// Every stage run, with how long it took.
    pub stages: Vec<(&'static str, Duration)>,
    pub elapsed: Duration,
}

/// How far away "no deadline" is: longer than any job's timeout.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Runs `plan` in order within `grace`. `fast` is cancelled by a second stop signal.
///
/// `patience` is `Some` after a hand-over: until it is cancelled (a stop arrived) stages that
/// outlast a hand-over have no budget and the grace has not begun; from the moment it is
/// cancelled, the grace and each remaining budget run as in any stop.
pub(crate) async fn run_plan(
    plan: Vec<Stage>,
    server: &mut Server,
    grace: Duration,
    fast: CancellationToken,
    notifier: &Notifier,
    patience: Option<CancellationToken>,
) -> StopReport {
    let started = Instant::now();
    let mut grace_deadline = started + grace;
    let mut patient = patience.clone().filter(|p| !p.is_cancelled());
    if patient.is_some() {
        grace_deadline = started + FAR;
    }
    let mut report = StopReport::default();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    for stage in plan {
        let stage_started = Instant::now();
        let waits_patiently = patient.is_some() && stage.outlasts_hand_over;
        let budget = if waits_patiently { FAR } else { stage.budget };
        let soft = (stage_started + budget).min(grace_deadline);
        let mut hard = (soft + stage.cut_allowance).min(grace_deadline.max(soft));
        let cut = CancellationToken::new();
        if stage.waits && fast.is_cancelled() {
            cut.cancel();
            hard = hard.min(stage_started + stage.cut_allowance);
        }
        let ctx = StageContext {
            cut: cut.clone(),
            deadline: soft,
            patience: if waits_patiently {
                patience.clone()
            } else {
                None
            },
            notifier: notifier.clone(),
        };
        let name = stage.name;
        let work: BoxFuture<'_, StageOutcome> = match stage.work {
            Work::StopAccepting => Box::pin(async {
                server.stop_accepting().await;
                StageOutcome::Done("no longer accepting connections".into())
            }),
            Work::HttpDrain => {
                let cut = ctx.cut.clone();
                let server = &mut *server;
                Box::pin(async move {
                    // A plan without `stop_accepting` first must not drain while accepting.
                    server.stop_accepting().await;
                    match server.drain(cut).await {
                        DrainOutcome::Drained => {
                            StageOutcome::Done("every connection finished".into())
                        }
                        DrainOutcome::Cut { open, in_flight } => StageOutcome::Cut(format!(
                            "closed {open} connections with {in_flight} requests still in progress"
                        )),
                    }
                })
            }
            Work::Custom(f) => f(ctx),
        };
        tokio::pin!(work);
        let soft_sleep = tokio::time::sleep_until(soft);
        tokio::pin!(soft_sleep);
        let hard_sleep = tokio::time::sleep_until(hard);
        tokio::pin!(hard_sleep);
        let mut cut_by_fast = cut.is_cancelled();
        let outcome = loop {
            tokio::select! {
                outcome = work.as_mut() => break outcome,
                _ = async { patient.as_ref().expect("guarded").cancelled().await }, if patient.is_some() => {
                    // The stop after a hand-over: from now on the grace and the budgets count.
                    let now = Instant::now();
                    patient = None;
                    grace_deadline = now + grace;
                    let soft = (now + stage.budget).min(grace_deadline);
                    let new_hard = (soft + stage.cut_allowance).min(grace_deadline.max(soft));
                    if waits_patiently && !cut.is_cancelled() {
                        hard = new_hard;
                        soft_sleep.as_mut().reset(soft);
                        hard_sleep.as_mut().reset(new_hard);
                    }
                }
                _ = soft_sleep.as_mut(), if !cut.is_cancelled() => cut.cancel(),
                _ = fast.cancelled(), if stage.waits && !cut.is_cancelled() => {
                    cut_by_fast = true;
                    cut.cancel();
                    hard_sleep.as_mut().reset((Instant::now() + stage.cut_allowance).min(hard));
                }
                _ = hard_sleep.as_mut(), if cut.is_cancelled() || stage.cut_allowance.is_zero() => {
                    break StageOutcome::Cut("did not finish in time and was abandoned".into());
                }
                _ = heartbeat.tick() => {
                    // A heartbeat proves this loop still runs; past the grace it stops, so a
                    // stuck stop is killed by systemd soon after instead of hanging on.
                    if Instant::now() < grace_deadline {
                        notifier.send(&[Message::ExtendTimeout(HEARTBEAT_EXTENDS)]);
                    }
                }
            }
        };
        let took = stage_started.elapsed();
        report.stages.push((name, took));
        match &outcome {
            StageOutcome::Done(what) => {
                tracing::info!(
                    stage = name,
                    duration_ms = took.as_millis() as u64,
                    outcome = "done",
                    "shutdown stage {name} done in {took:.0?}: {what}"
                );
            }
            StageOutcome::Cut(what) if cut_by_fast => {
                report.cut.push(name);
                tracing::warn!(
                    stage = name,
                    duration_ms = took.as_millis() as u64,
                    outcome = "cut",
                    "shutdown stage {name} cut by a fast stop after {took:.0?}: {what}"
                );
            }
            StageOutcome::Cut(what) => {
                report.cut.push(name);
                tracing::warn!(
                    stage = name,
                    duration_ms = took.as_millis() as u64,
                    outcome = "cut",
                    "shutdown stage {name} cut after {took:.0?}: {what}; raise {} (now {}) if this work should finish",
                    if stage.setting.is_empty() { "shutdown.grace" } else { stage.setting },
                    humantime::format_duration(stage.budget)
                );
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}
