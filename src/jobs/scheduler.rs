//! The scheduler loop: enqueues each occurrence of each task's `schedule` once.
//!
//! Every process runs it; there is no leader. Exactly-once across all nodes sharing the
//! database and across restarts comes from the table `schedule_occurrences`, unique on
//! (task, occurrence): the occurrence row and its job are inserted in one transaction, and
//! the job only when the row was new ([`Store::enqueue_occurrence`]). The loop sleeps until
//! the next occurrence of any schedule (at most [`MAX_SLEEP`]); a reload wakes it, so a
//! changed schedule takes effect at once. It ends when the stop begins and never holds it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::schedule::{rfc3339_ms, Schedule};
use super::store::{now_ms, OccurrenceOutcome};
use super::{Runner, Store, Task};
use crate::config::Config;

/// Longest sleep between two looks, whatever the schedules say (a wall clock that jumped,
/// a schedule registered by another node).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One scheduled task as the loop sees it.
#[derive(Debug, Clone)]
pub struct ScheduledTask {
    pub task: String,
    pub schedule: Schedule,
    pub max_attempts: i64,
}

/// The scheduler's view of the configuration; replaced on reload.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub tasks: Vec<ScheduledTask>,
    /// `jobs.poll_interval`: the back-off after a failed write, and how late an
    /// occurrence may be enqueued with `catch_up = "none"` (at least a second).
    pub poll_interval: Duration,
    /// `jobs.lease`: the bound of each statement.
    pub lease: Duration,
    /// `jobs.retain`: occurrence rows older than this are deleted.
    pub retain: Duration,
}

impl SchedulerSettings {
    pub fn from_config(
        config: &Config,
        tasks: &std::collections::BTreeMap<String, Arc<Task>>,
    ) -> Self {
        let tasks = tasks
            .values()
            .filter_map(|t| match Schedule::of(&t.config) {
                Ok(Some(schedule)) => Some(ScheduledTask {
                    task: t.name.clone(),
                    schedule,
                    max_attempts: i64::from(t.config.max_attempts),
                }),
                Ok(None) => None,
                Err(e) => {
                    // Validation refuses this; say so rather than drop it silently.
                    tracing::error!(task = %t.name, error = %e, "the schedule is invalid and is ignored; run `shiftd check`");
                    None
                }
            })
            .collect();
        Self {
            tasks,
            poll_interval: config.jobs.poll_interval,
            lease: config.jobs.lease,
            retain: config.jobs.retain,
        }
    }

    /// How late an occurrence may still be enqueued with `catch_up = "none"`.
    fn grace(&self) -> Duration {
        self.poll_interval.max(Duration::from_secs(1))
    }
}

struct Inner {
    store: Store,
    runner: Runner,
    settings: RwLock<SchedulerSettings>,
    wake: Notify,
    stop: CancellationToken,
}

/// The handle of the scheduler loop.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// The scheduler, not started: nothing is enqueued until [`Scheduler::start`].
    pub fn new(store: Store, runner: Runner, settings: SchedulerSettings) -> Self {
        let inner = Arc::new(Inner {
            store,
            runner,
            settings: RwLock::new(settings),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        Self { inner }
    }

    /// Starts the loop; it ends when `stopping` resolves (the stop began).
    pub fn start(&self, stopping: impl Future<Output = ()> + Send + 'static) {
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            stopping.await;
            stop.cancel();
        });
        tokio::spawn(schedule_loop(self.inner.clone()));
    }

    /// Applies a reloaded configuration and looks again at once.
    pub fn reconfigure(&self, settings: SchedulerSettings) {
        *self.inner.settings.write().expect("poisoned") = settings;
        self.inner.wake.notify_one();
    }

    /// Ends the loop (also done when the stop begins).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

/// What the loop remembers between looks, per task.
#[derive(Default)]
struct Seen {
    /// The spec registered by this process.
    registered: HashMap<String, String>,
    /// The latest occurrence handled, and the spec it was due under.
    handled: HashMap<String, (String, i64)>,
}

async fn schedule_loop(inner: Arc<Inner>) {
    let mut seen = Seen::default();
    let mut failures = 0u32;
    loop {
        if inner.stop.is_cancelled() {
            break;
        }
        let settings = inner.settings.read().expect("poisoned").clone();
        let now = now_ms();
        let mut wait = MAX_SLEEP;
        let mut failed = false;
        for st in &settings.tasks {
            if inner.stop.is_cancelled() {
                return;
            }
            if let Some(next) = st.schedule.next_after(now) {
                let until = Duration::from_millis((next - now).max(0) as u64);
                // A few ms past the occurrence, so the look falls after it.
                wait = wait.min(until + Duration::from_millis(5));
            }
            if !look_at(&inner, &settings, st, now, &mut seen).await {
                failed = true;
            }
        }
        if failed {
            failures += 1;
            let backoff = settings.poll_interval * 2u32.saturating_pow(failures.min(5));
            wait = wait.min(backoff.min(MAX_SLEEP));
        } else {
            failures = 0;
        }
        tokio::select! {
            _ = inner.stop.cancelled() => break,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!("scheduler stopped");
}

/// One look at one scheduled task: registers its schedule if this process has not, then
/// enqueues its latest occurrence due, once. False if a write failed (retried later).
async fn look_at(
    inner: &Inner,
    settings: &SchedulerSettings,
    st: &ScheduledTask,
    now: i64,
    seen: &mut Seen,
) -> bool {
    let spec = st.schedule.spec();
    if seen.registered.get(&st.task) != Some(&spec) {
        match bounded(
            inner,
            settings,
            inner.store.register_schedule(&st.task, &spec),
        )
        .await
        {
            Ok(()) => {
                tracing::info!(task = %st.task, schedule = %st.schedule.expr, timezone = %st.schedule.tz.name(), next = %st.schedule.next_after(now).map(rfc3339_ms).unwrap_or_default(), "schedule registered");
                seen.registered.insert(st.task.clone(), spec.clone());
            }
            Err(e) => {
                tracing::warn!(task = %st.task, error = %e, "cannot register the schedule; no occurrence of it is enqueued until this write succeeds; retrying");
                return false;
            }
        }
    }
    let Some(due) = st.schedule.latest_at_or_before(now) else {
        return true;
    };
    if seen.handled.get(&st.task) == Some(&(spec.clone(), due)) {
        return true;
    }
    let outcome = bounded(
        inner,
        settings,
        inner.store.enqueue_occurrence(
            &st.task,
            due,
            st.schedule.catch_up,
            settings.grace(),
            st.max_attempts,
            settings.retain,
        ),
    )
    .await;
    match outcome {
        Ok(OccurrenceOutcome::Enqueued(job)) => {
            inner.runner.wake();
            tracing::info!(job = job.id, task = %st.task, occurrence = %rfc3339_ms(due), late_ms = now - due, "scheduled job queued");
        }
        Ok(OccurrenceOutcome::Missed) => {
            tracing::info!(task = %st.task, occurrence = %rfc3339_ms(due), "occurrence missed and skipped (catch_up = \"none\")");
        }
        Ok(OccurrenceOutcome::NotRegistered) => {
            seen.registered.remove(&st.task);
            return false;
        }
        Ok(OccurrenceOutcome::AlreadyRecorded | OccurrenceOutcome::BeforeBaseline) => {}
        Err(e) => {
            tracing::warn!(task = %st.task, occurrence = %rfc3339_ms(due), error = %e, "cannot enqueue the occurrence; retrying (another node sharing the database may enqueue it meanwhile, never twice)");
            return false;
        }
    }
    seen.handled.insert(st.task.clone(), (spec, due));
    true
}

/// A statement bounded by the lease, and abandoned (its transaction rolled back) when the
/// stop begins: a stalled database never holds the loop, nor the loop the stop.
async fn bounded<T>(
    inner: &Inner,
    settings: &SchedulerSettings,
    f: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::select! {
        done = tokio::time::timeout(settings.lease, f) => done.unwrap_or(Err(sqlx::Error::PoolTimedOut)),
        _ = inner.stop.cancelled() => Err(sqlx::Error::PoolClosed),
    }
}
