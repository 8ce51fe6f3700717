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
use super::Settings;

/// How often a heartbeat goes out during the stop, and how far each one extends.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_EXTENDS: Duration = Duration::from_secs(3);

/// After `http_drain`, the time the drain stage gets to close what is still open.
const HTTP_CUT_ALLOWANCE: Duration = Duration::from_secs(1);

/// What a custom stage does, given its context.
type StageFn = Box<dyn FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send>;

enum Work {
    StopAccepting,
    HttpDrain,
    /// A stage described but given no work: it is done at once.
    Nothing,
    Custom(StageFn),
}

/// Which of the lifecycle's own stages a [`StageSpec`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BuiltIn {
    StopAccepting,
    HttpDrain,
}

/// What a stage of the stop is, without its work: enough to run it, and to size and
/// explain the stop's budget before anything runs (see [`stop_budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// Shown in logs and STATUS=.
    pub name: &'static str,
    /// The application's setting that sets `budget`, named in the warning when the stage is
    /// cut and in the budget's explanation. Empty: none (the grace's name is used instead).
    pub setting: &'static str,
    /// How long the stage may wait for work to finish before it is told to cut.
    pub budget: Duration,
    /// How long, after being told to cut, it may take to stop what remains.
    pub cut_allowance: Duration,
    /// What the cut allowance is for, in the budget's explanation ("to cut").
    pub cut_note: &'static str,
    /// A waiting stage is cut at once by a fast stop; a non-waiting one (flush, close) still runs.
    pub waits: bool,
    /// After a hand-over, this stage waits with no budget until a stop arrives (the jobs
    /// stage: running jobs finish in the old process, bounded by their own timeouts).
    pub outlasts_hand_over: bool,
    built_in: Option<BuiltIn>,
}

impl StageSpec {
    /// STOPPING=1 has been sent and readiness fails; this stops `accept()`.
    pub fn stop_accepting() -> Self {
        Self {
            name: "stop-accepting",
            setting: "",
            budget: Duration::ZERO,
            cut_allowance: Duration::from_secs(1),
            cut_note: "to cut",
            waits: false,
            outlasts_hand_over: false,
            built_in: Some(BuiltIn::StopAccepting),
        }
    }

    /// In-flight requests finish; idle connections get `idle_close`; the rest is cut.
    /// `setting` is the application's name for `budget`.
    pub fn http_drain(setting: &'static str, budget: Duration) -> Self {
        Self {
            name: "http-drain",
            setting,
            budget,
            cut_allowance: HTTP_CUT_ALLOWANCE,
            cut_note: "to cut",
            waits: true,
            outlasts_hand_over: false,
            built_in: Some(BuiltIn::HttpDrain),
        }
    }

    /// A stage that waits for work to finish (cut at its budget, or at once on a fast stop).
    pub fn waiting(
        name: &'static str,
        setting: &'static str,
        budget: Duration,
        cut_allowance: Duration,
    ) -> Self {
        Self {
            name,
            setting,
            budget,
            cut_allowance,
            cut_note: "to cut",
            waits: true,
            outlasts_hand_over: false,
            built_in: None,
        }
    }

    /// A stage that must run even on a fast stop (flush, close), bounded by its budget.
    pub fn finishing(name: &'static str, setting: &'static str, budget: Duration) -> Self {
        Self {
            name,
            setting,
            budget,
            cut_allowance: Duration::ZERO,
            cut_note: "to cut",
            waits: false,
            outlasts_hand_over: false,
            built_in: None,
        }
    }

    /// Says what the cut allowance is for, in the budget's explanation.
    pub fn cut_note(mut self, note: &'static str) -> Self {
        self.cut_note = note;
        self
    }

    /// Marks a waiting stage as one that, after a hand-over, waits for its work with no
    /// budget until a stop arrives; from then on its budget applies as in any stop.
    pub fn outlasting_hand_over(mut self) -> Self {
        self.outlasts_hand_over = true;
        self
    }

    /// The stage with its work: the lifecycle's own for [`StageSpec::stop_accepting`] and
    /// [`StageSpec::http_drain`], none (done at once) for the others.
    pub fn into_stage(self) -> Stage {
        let work = match self.built_in {
            Some(BuiltIn::StopAccepting) => Work::StopAccepting,
            Some(BuiltIn::HttpDrain) => Work::HttpDrain,
            None => Work::Nothing,
        };
        Stage { spec: self, work }
    }

    /// The stage with `work` to do.
    pub fn with_work(
        self,
        work: impl FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send + 'static,
    ) -> Stage {
        Stage {
            spec: self,
            work: Work::Custom(Box::new(work)),
        }
    }

    /// The name used in the budget's explanation: the setting's last part ("http_drain").
    fn label(&self) -> &'static str {
        self.setting.rsplit('.').next().unwrap_or(self.name)
    }
}

/// The most a stop along `specs` may take: every stage with a setting, its budget plus its
/// cut allowance. (A stage without one, stop-accepting, takes no measurable time.) The
/// application sizes its grace, and the unit's `TimeoutStopSec=`, from this.
pub fn stop_budget(specs: &[StageSpec]) -> Duration {
    specs
        .iter()
        .filter(|s| !s.setting.is_empty())
        .map(|s| s.budget + s.cut_allowance)
        .sum()
}

/// What [`stop_budget`] adds up, e.g. "http_drain 30s + 1s to cut + flush 5s".
///
/// ```
/// use std::time::Duration;
/// use shiftd_lifecycle::{explain_stop_budget, stop_budget, StageSpec};
///
/// let specs = [
///     StageSpec::stop_accepting(),
///     StageSpec::http_drain("shutdown.http_drain", Duration::from_secs(30)),
///     StageSpec::finishing("flush", "shutdown.flush", Duration::from_secs(5)),
/// ];
/// assert_eq!(stop_budget(&specs), Duration::from_secs(36));
/// assert_eq!(explain_stop_budget(&specs), "http_drain 30s + 1s to cut + flush 5s");
/// ```
pub fn explain_stop_budget(specs: &[StageSpec]) -> String {
    let fmt = |d| humantime::format_duration(d).to_string();
    let parts: Vec<String> = specs
        .iter()
        .filter(|s| !s.setting.is_empty())
        .map(|s| {
            let mut part = format!("{} {}", s.label(), fmt(s.budget));
            if !s.cut_allowance.is_zero() {
                part += &format!(" + {} {}", fmt(s.cut_allowance), s.cut_note);
            }
            part
        })
        .collect();
    parts.join(" + ")
}

/// One step of the stop: its description and its work.
pub struct Stage {
    /// What the stage is: name, setting, budget.
    pub spec: StageSpec,
    work: Work,
}

impl Stage {
    /// [`StageSpec::stop_accepting`] with its work.
    pub fn stop_accepting() -> Self {
        StageSpec::stop_accepting().into_stage()
    }

    /// [`StageSpec::http_drain`] with its work, its budget named by no setting of its own
    /// (a cut names the grace).
    pub fn http_drain(budget: Duration) -> Self {
        StageSpec::http_drain("", budget).into_stage()
    }

    /// [`StageSpec::waiting`] with `work`.
    pub fn waiting(
        name: &'static str,
        setting: &'static str,
        budget: Duration,
        cut_allowance: Duration,
        work: impl FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send + 'static,
    ) -> Self {
        StageSpec::waiting(name, setting, budget, cut_allowance).with_work(work)
    }

    /// [`StageSpec::finishing`] with `work`.
    pub fn finishing(
        name: &'static str,
        setting: &'static str,
        budget: Duration,
        work: impl FnOnce(StageContext) -> BoxFuture<'static, StageOutcome> + Send + 'static,
    ) -> Self {
        StageSpec::finishing(name, setting, budget).with_work(work)
    }

    /// See [`StageSpec::outlasting_hand_over`].
    pub fn outlasting_hand_over(mut self) -> Self {
        self.spec.outlasts_hand_over = true;
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

/// How a stop came about, as its report tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopCause {
    /// A stop signal: the stages waited within their budgets.
    #[default]
    Graceful,
    /// SIGQUIT, or a second stop signal during the stop: the waiting stages were cut.
    Fast,
    /// This process handed over to a successor and stopped after it.
    HandOver,
}

impl StopCause {
    /// "stop", "fast" or "hand-over".
    pub fn as_str(self) -> &'static str {
        match self {
            StopCause::Graceful => "stop",
            StopCause::Fast => "fast",
            StopCause::HandOver => "hand-over",
        }
    }
}

/// One stage of a stop as it ran: what it was allowed, what it took, how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    /// The stage's name, as in the logs.
    pub name: &'static str,
    /// The setting to raise when it was cut (the grace's name for a stage without one).
    pub setting: &'static str,
    /// Its budget (before its cut allowance).
    pub budget: Duration,
    /// How long it took.
    pub took: Duration,
    /// Whether it had to cut work.
    pub cut: bool,
    /// What it did, or what it cut: the [`StageOutcome`]'s text.
    pub note: String,
}

/// The result of the whole stop.
#[derive(Debug, Clone)]
pub struct StopReport {
    /// Names of the stages that had to cut work.
    pub cut: Vec<&'static str>,
    /// Every stage run, with how long it took.
    pub stages: Vec<(&'static str, Duration)>,
    /// How long the whole plan took.
    pub elapsed: Duration,
    /// Every stage run, in full (the same stages as `stages`, in the same order).
    pub details: Vec<StageReport>,
    /// How the stop came about.
    pub cause: StopCause,
    /// When the stop began (wall clock).
    pub started_at: std::time::SystemTime,
}

impl Default for StopReport {
    fn default() -> Self {
        Self {
            cut: Vec::new(),
            stages: Vec::new(),
            elapsed: Duration::ZERO,
            details: Vec::new(),
            cause: StopCause::default(),
            started_at: std::time::SystemTime::now(),
        }
    }
}

impl StopReport {
    /// Records one stage as it ran, in `stages`, `details` and (when cut) `cut`.
    pub fn push(&mut self, stage: StageReport) {
        self.stages.push((stage.name, stage.took));
        if stage.cut {
            self.cut.push(stage.name);
        }
        self.details.push(stage);
    }
}

/// How far away "no deadline" is: longer than any job's timeout.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A stage's deadlines from `from`: when it is told to cut (`soft`), and when it is
/// abandoned (`hard`); neither past the grace (unless the budget itself ends later).
fn deadlines(
    from: Instant,
    budget: Duration,
    cut_allowance: Duration,
    grace_deadline: Instant,
) -> (Instant, Instant) {
    let soft = (from + budget).min(grace_deadline);
    let hard = (soft + cut_allowance).min(grace_deadline.max(soft));
    (soft, hard)
}

/// The state of a stop plan while it runs.
struct PlanRun<'a> {
    settings: &'a Settings,
    grace_deadline: Instant,
    /// Cancelled by a second stop signal (or a fast one from the start).
    fast: CancellationToken,
    /// After a hand-over: cancelled when a stop arrives.
    patience: Option<CancellationToken>,
    /// `patience` while it has not fired: the grace has not begun.
    patient: Option<CancellationToken>,
    heartbeat: tokio::time::Interval,
    notifier: &'a Notifier,
}

/// Runs `plan` in order within the grace. `fast` is cancelled by a second stop signal.
///
/// `patience` is `Some` after a hand-over: until it is cancelled (a stop arrived) stages that
/// outlast a hand-over have no budget and the grace has not begun; from the moment it is
/// cancelled, the grace and each remaining budget run as in any stop.
pub(crate) async fn run_plan(
    plan: Vec<Stage>,
    server: &mut Server,
    settings: &Settings,
    fast: CancellationToken,
    notifier: &Notifier,
    patience: Option<CancellationToken>,
) -> StopReport {
    let started = Instant::now();
    let patient = patience.clone().filter(|p| !p.is_cancelled());
    let mut run = PlanRun {
        settings,
        grace_deadline: started
            + if patient.is_some() {
                FAR
            } else {
                settings.grace
            },
        fast,
        patience,
        patient,
        heartbeat: tokio::time::interval(HEARTBEAT_EVERY),
        notifier,
    };
    let mut report = StopReport::default();
    for Stage { spec, work } in plan {
        let stage_started = Instant::now();
        let (outcome, cut_by_fast) = run.stage(&spec, work, server).await;
        let took = stage_started.elapsed();
        let cut = run.log_outcome(&spec, &outcome, cut_by_fast, took);
        let note = match outcome {
            StageOutcome::Done(what) | StageOutcome::Cut(what) => what,
        };
        report.push(StageReport {
            name: spec.name,
            setting: run.setting_of(&spec),
            budget: spec.budget,
            took,
            cut,
            note,
        });
    }
    report.elapsed = started.elapsed();
    report
}

impl PlanRun<'_> {
    /// Runs one stage under its deadlines; returns how it ended and whether a fast stop cut it.
    async fn stage(
        &mut self,
        spec: &StageSpec,
        work: Work,
        server: &mut Server,
    ) -> (StageOutcome, bool) {
        let stage_started = Instant::now();
        let waits_patiently = self.patient.is_some() && spec.outlasts_hand_over;
        let budget = if waits_patiently { FAR } else { spec.budget };
        let (soft, mut hard) = deadlines(
            stage_started,
            budget,
            spec.cut_allowance,
            self.grace_deadline,
        );
        let cut = CancellationToken::new();
        if spec.waits && self.fast.is_cancelled() {
            cut.cancel();
            hard = hard.min(stage_started + spec.cut_allowance);
        }
        let ctx = StageContext {
            cut: cut.clone(),
            deadline: soft,
            patience: self.patience.clone().filter(|_| waits_patiently),
            notifier: self.notifier.clone(),
        };
        let work = start(work, ctx, server);
        let cut_by_fast = cut.is_cancelled();
        let stage = Supervised {
            cut,
            soft,
            hard,
            waits_patiently,
            cut_by_fast,
        };
        self.supervise(spec, work, stage).await
    }

    /// Waits for `work`, telling it to cut at the soft deadline (or on a fast stop) and
    /// abandoning it at the hard one, while heartbeats extend the stop within the grace.
    async fn supervise(
        &mut self,
        spec: &StageSpec,
        work: BoxFuture<'_, StageOutcome>,
        mut stage: Supervised,
    ) -> (StageOutcome, bool) {
        tokio::pin!(work);
        let soft_sleep = tokio::time::sleep_until(stage.soft);
        tokio::pin!(soft_sleep);
        let hard_sleep = tokio::time::sleep_until(stage.hard);
        tokio::pin!(hard_sleep);
        let cut = stage.cut.clone();
        let fast = self.fast.clone();
        let outcome = loop {
            let patient = self.patient.clone();
            tokio::select! {
                outcome = work.as_mut() => break outcome,
                _ = async { patient.as_ref().expect("guarded").cancelled().await }, if patient.is_some() => {
                    // The stop after a hand-over: from now on the grace and the budgets count.
                    let now = Instant::now();
                    self.patient = None;
                    self.grace_deadline = now + self.settings.grace;
                    let (soft, hard) = deadlines(now, spec.budget, spec.cut_allowance, self.grace_deadline);
                    if stage.waits_patiently && !cut.is_cancelled() {
                        stage.hard = hard;
                        soft_sleep.as_mut().reset(soft);
                        hard_sleep.as_mut().reset(hard);
                    }
                }
                _ = soft_sleep.as_mut(), if !cut.is_cancelled() => cut.cancel(),
                _ = fast.cancelled(), if spec.waits && !cut.is_cancelled() => {
                    stage.cut_by_fast = true;
                    cut.cancel();
                    hard_sleep.as_mut().reset((Instant::now() + spec.cut_allowance).min(stage.hard));
                }
                _ = hard_sleep.as_mut(), if cut.is_cancelled() || spec.cut_allowance.is_zero() => {
                    break StageOutcome::Cut("did not finish in time and was abandoned".into());
                }
                _ = self.heartbeat.tick() => {
                    // A heartbeat proves this loop still runs; past the grace it stops, so a
                    // stuck stop is killed by systemd soon after instead of hanging on.
                    if Instant::now() < self.grace_deadline {
                        self.notifier.send(&[Message::ExtendTimeout(HEARTBEAT_EXTENDS)]);
                    }
                }
            }
        };
        (outcome, stage.cut_by_fast)
    }

    /// The setting to raise when `spec` is cut: its own, else the grace.
    fn setting_of(&self, spec: &StageSpec) -> &'static str {
        if spec.setting.is_empty() {
            self.settings.names.grace
        } else {
            spec.setting
        }
    }

    /// Logs how a stage ended; true if it cut work.
    fn log_outcome(
        &self,
        spec: &StageSpec,
        outcome: &StageOutcome,
        cut_by_fast: bool,
        took: Duration,
    ) -> bool {
        let name = spec.name;
        let duration_ms = took.as_millis() as u64;
        match outcome {
            StageOutcome::Done(what) => {
                tracing::info!(
                    stage = name,
                    duration_ms,
                    outcome = "done",
                    "shutdown stage {name} done in {took:.0?}: {what}"
                );
                false
            }
            StageOutcome::Cut(what) if cut_by_fast => {
                tracing::warn!(
                    stage = name,
                    duration_ms,
                    outcome = "cut",
                    "shutdown stage {name} cut by a fast stop after {took:.0?}: {what}"
                );
                true
            }
            StageOutcome::Cut(what) => {
                let setting = self.setting_of(spec);
                tracing::warn!(
                    stage = name,
                    duration_ms,
                    outcome = "cut",
                    "shutdown stage {name} cut after {took:.0?}: {what}; raise {setting} (now {}) if this work should finish",
                    humantime::format_duration(spec.budget)
                );
                true
            }
        }
    }
}

/// One stage's deadlines and cut while it runs.
struct Supervised {
    cut: CancellationToken,
    soft: Instant,
    hard: Instant,
    waits_patiently: bool,
    cut_by_fast: bool,
}

/// The stage's work as a future.
fn start(work: Work, ctx: StageContext, server: &mut Server) -> BoxFuture<'_, StageOutcome> {
    match work {
        Work::StopAccepting => Box::pin(async {
            server.stop_accepting().await;
            StageOutcome::Done("no longer accepting connections".into())
        }),
        Work::HttpDrain => {
            let cut = ctx.cut.clone();
            Box::pin(async move {
                // A plan without `stop_accepting` first must not drain while accepting.
                server.stop_accepting().await;
                let in_progress = server.in_flight();
                match server.drain(cut).await {
                    DrainOutcome::Drained => StageOutcome::Done(format!(
                        "every connection finished; {in_progress} requests drained"
                    )),
                    DrainOutcome::Cut { open, in_flight } => StageOutcome::Cut(format!(
                        "closed {open} connections with {in_flight} requests still in progress"
                    )),
                }
            })
        }
        Work::Nothing => Box::pin(async { StageOutcome::Done("nothing to do".into()) }),
        Work::Custom(f) => f(ctx),
    }
}
