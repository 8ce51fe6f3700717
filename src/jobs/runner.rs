//! The runner: claims jobs, runs each command in its own process group, captures its
//! output, keeps its lease (and stops it before a lease it cannot renew runs out), keeps
//! this node's heartbeat, expires old jobs, and takes part in the stop (the `jobs` and
//! `flush` stages).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::depth::ClaimDepth;
use super::finisher::Finisher;
use super::output::OutputBuffer;
use super::spawn::Spawner;
use super::store::{now_ms, Finish, FinishItem, Job, JobState, OutputLine, Store};
use super::task::Task;
use crate::config::{Config, OnShutdown, TaskConfig};
use crate::dbfault::DbFault;
use crate::lifecycle::{StageContext, StageOutcome};

/// Longest output line kept; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

/// This very binary, also after a package upgrade replaced the file on disk.
const SELF_EXE: &str = "/proc/self/exe";

/// The claim loop's longest wait between tries while the database fails.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(30);

/// Outcomes are written in batches: what arrives within this window of the first, or
/// while the previous write is in flight, goes in one statement. The window is the only
/// re-run risk a crash adds (ARCHITECTURE.md, "Writes and leases").
const FINISH_WINDOW: Duration = Duration::from_millis(2);
/// Most outcomes in one statement.
const FINISH_BATCH: usize = 256;

/// How often the database's size and the job counts by state (a scan of every job) are
/// read for `/v1/status` and `/metrics`, which serve them from memory.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Environment variables passed on from the service to jobs; everything else is dropped
/// (jobs get `env` from their task, plus `JOB_ID`, `JOB_TASK`, `JOB_ATTEMPT`).
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "USER",
    "LOGNAME",
    "STATE_DIRECTORY",
];

/// The runner's view of the configuration; replaced on reload.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub workers: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub log_flush_interval: Duration,
    /// `jobs.max_output`, for tasks that do not set their own.
    pub max_output: u64,
    /// `jobs.output_buffer`; read once, at start.
    pub output_buffer: usize,
    pub retain: Duration,
    /// `jobs.prefetch`: the most jobs claimed ahead of the free workers (the claim depth's
    /// ceiling, see [`ClaimDepth`]).
    pub prefetch: usize,
    pub tasks: BTreeMap<String, Arc<Task>>,
}

impl RunnerSettings {
    /// `tasks` are the configuration's tasks, compiled (see [`Task::all`]).
    pub fn from_config(config: &Config, tasks: BTreeMap<String, Arc<Task>>) -> Self {
        Self {
            workers: config.jobs.workers as usize,
            poll_interval: config.jobs.poll_interval,
            lease: config.jobs.lease,
            log_flush_interval: config.jobs.log_flush_interval,
            max_output: config.jobs.max_output.0,
            output_buffer: usize::try_from(config.jobs.output_buffer.0).unwrap_or(usize::MAX),
            retain: config.jobs.retain,
            prefetch: config.jobs.prefetch as usize,
            tasks,
        }
    }

    /// How often this node writes its heartbeat row.
    fn heartbeat_every(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(5))
    }

    /// How long a prefetched job may wait in the local queue before it goes back to the
    /// database: a quarter of the lease, so it starts with most of its lease left.
    fn prefetch_wait(&self) -> Duration {
        self.lease / 4
    }

    /// How often finished jobs are looked for to expire.
    fn sweep_every(&self) -> Duration {
        (self.retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// A job running in this process.
struct Running {
    task: String,
    /// The attempt's lease token: a later attempt of the same job in this process has
    /// another, so ending one attempt never frees the other's place.
    lease_owner: String,
    started: Instant,
    on_shutdown: OnShutdown,
    /// Asks it to stop: cancelled, or put back in the queue (a shutdown).
    halt: Halt,
}

/// The one way a running attempt is asked to stop before its process ends, and why: a
/// cancel (asked here through the API, or on another node and seen at a lease renewal)
/// is [`Stop::Cancelled`], the service's stop [`Stop::Shutdown`]. The supervisor watches
/// this alone; the first request wins.
#[derive(Clone, Default)]
struct Halt {
    requested: CancellationToken,
    why: Arc<OnceLock<Stop>>,
}

impl Halt {
    fn request(&self, why: Stop) {
        if self.why.set(why).is_ok() {
            self.requested.cancel();
        }
    }

    /// Resolves with the first request's reason.
    async fn requested(&self) -> Stop {
        self.requested.cancelled().await;
        self.why.get().copied().unwrap_or(Stop::Cancelled)
    }
}

/// A running job, for status reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningJob {
    pub id: i64,
    pub task: String,
    pub age_seconds: u64,
}

/// What the upkeep loop last saw of the whole queue (all nodes).
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    /// Queued and running jobs by task.
    pub depth: BTreeMap<String, (i64, i64)>,
    /// Queued jobs of tasks that no live node serves, by task.
    pub unserved: BTreeMap<String, i64>,
    pub size_bytes: Option<i64>,
    /// Jobs by task and state, all of them (refreshed every [`STATS_EVERY`]).
    pub counts: Vec<(String, JobState, i64)>,
    /// Paused tasks (by any node) and when each was paused: refreshed every poll interval,
    /// and at once when this process pauses or resumes one.
    pub paused: BTreeMap<String, i64>,
}

/// Called when an attempt ends: task, final state of the attempt, how long it ran.
pub type OnAttempt = Arc<dyn Fn(&str, &str, Duration) + Send + Sync>;

/// The job runner of this process.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Outcomes of attempts, written in batches.
    finisher: Finisher,
    output: Arc<OutputBuffer>,
    spawner: Spawner,
    /// This process among the nodes sharing the database: unique per process.
    node: String,
    /// Numbers the claims of this process: each claim's lease token is `node/n`, so an
    /// attempt whose lease ran out can never write over a later attempt of the same job,
    /// even one claimed by this same process.
    claims: AtomicU64,
    settings: RwLock<RunnerSettings>,
    running: Mutex<HashMap<i64, Running>>,
    wake: Notify,
    stop_claiming: CancellationToken,
    stop_flushing: CancellationToken,
    jobs: TaskTracker,
    loops: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    view: RwLock<QueueView>,
    on_attempt: OnAttempt,
}

impl Inner {
    fn settings(&self) -> RunnerSettings {
        self.settings.read().expect("poisoned").clone()
    }

    fn take_loop(&self, name: &str) -> Option<JoinHandle<()>> {
        let mut loops = self.loops.lock().expect("poisoned");
        let i = loops.iter().position(|(n, _)| *n == name)?;
        Some(loops.remove(i).1)
    }
}

/// Why an attempt ended, before its outcome is written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Exited,
    Timeout,
    Cancelled,
    Shutdown,
    /// Another worker took the job: our lease had run out.
    LeaseLost,
    /// The lease could not be renewed and was about to run out: stopped first.
    LeaseExpiring,
    /// The task is no longer configured here (a reload removed it after the claim).
    TaskGone,
}

impl Runner {
    /// The runner, not started: nothing is claimed until [`Runner::start`].
    pub fn new(
        store: Store,
        settings: RunnerSettings,
        on_attempt: OnAttempt,
    ) -> std::io::Result<Self> {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let node = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let inner = Arc::new(Inner {
            output: Arc::new(OutputBuffer::new(store.clone(), settings.output_buffer)),
            spawner: Spawner::start()?,
            finisher: Finisher::start(store.clone(), FINISH_WINDOW, FINISH_BATCH),
            store,
            node,
            claims: AtomicU64::new(0),
            settings: RwLock::new(settings),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stop_claiming: CancellationToken::new(),
            stop_flushing: CancellationToken::new(),
            jobs: TaskTracker::new(),
            loops: Mutex::new(Vec::new()),
            view: RwLock::new(QueueView::default()),
            on_attempt,
        });
        Ok(Self { inner })
    }

    /// Starts claiming, flushing and the upkeep (heartbeat, queue view, expiry).
    pub fn start(&self) {
        let inner = &self.inner;
        *inner.loops.lock().expect("poisoned") = vec![
            ("claim", tokio::spawn(claim_loop(inner.clone()))),
            ("flush", tokio::spawn(flush_loop(inner.clone()))),
            ("upkeep", tokio::spawn(upkeep_loop(inner.clone()))),
        ];
    }

    /// Applies a reloaded configuration; running jobs keep the definition they started with.
    pub fn reconfigure(&self, settings: RunnerSettings) {
        *self.inner.settings.write().expect("poisoned") = settings;
        self.inner.wake.notify_one();
    }

    /// Pauses `task` for every node sharing the database (no claim takes its jobs once
    /// this returns); jobs of it claimed ahead here go back to the queue. Running jobs go on.
    pub async fn pause(&self, task: &str) -> Result<i64, sqlx::Error> {
        let at = self.inner.store.pause(task).await?;
        self.inner
            .view
            .write()
            .expect("poisoned")
            .paused
            .insert(task.to_string(), at);
        self.inner.wake.notify_one();
        Ok(at)
    }

    /// Resumes `task` everywhere; this process looks for its jobs at once (others at
    /// their next poll). True if it was paused.
    pub async fn resume(&self, task: &str) -> Result<bool, sqlx::Error> {
        let was = self.inner.store.resume(task).await?;
        self.inner
            .view
            .write()
            .expect("poisoned")
            .paused
            .remove(task);
        self.inner.wake.notify_one();
        Ok(was)
    }

    /// Paused tasks as last seen (see [`QueueView::paused`]).
    pub fn paused(&self) -> BTreeMap<String, i64> {
        self.inner.view.read().expect("poisoned").paused.clone()
    }

    /// A job was queued here: look now instead of at the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a job running in this process at once (others see the flag at their next lease renewal).
    pub fn cancel_local(&self, id: i64) {
        if let Some(r) = self.inner.running.lock().expect("poisoned").get(&id) {
            r.halt.request(Stop::Cancelled);
        }
    }

    pub fn running(&self) -> Vec<RunningJob> {
        let running = self.inner.running.lock().expect("poisoned");
        let mut jobs: Vec<RunningJob> = running
            .iter()
            .map(|(id, r)| RunningJob {
                id: *id,
                task: r.task.clone(),
                age_seconds: r.started.elapsed().as_secs(),
            })
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.age_seconds));
        jobs
    }

    /// Queued and running jobs by task (all processes), as last seen by the upkeep loop.
    pub fn depth(&self) -> BTreeMap<String, (i64, i64)> {
        self.inner.view.read().expect("poisoned").depth.clone()
    }

    /// The queue as last seen by the upkeep loop.
    pub fn view(&self) -> QueueView {
        self.inner.view.read().expect("poisoned").clone()
    }

    /// The storage fault the last write ran into, until a write commits again.
    pub fn storage_fault(&self) -> Option<DbFault> {
        self.inner.store.fault()
    }

    pub fn buffered_lines(&self) -> usize {
        self.inner.output.pending()
    }

    /// This process's name among the nodes sharing the database.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// One line for STATUS= while draining: "draining: 2 jobs running, longest 41s".
    pub fn draining_line(&self) -> String {
        let running = self.running();
        match running.first() {
            None => "draining: no jobs running".into(),
            Some(longest) => format!(
                "draining: {} jobs running, longest {}s",
                running.len(),
                longest.age_seconds
            ),
        }
    }

    /// The `jobs` stage: stop claiming; `requeue` jobs stop now; `finish` jobs run on until
    /// the stage is cut, then they too are stopped and put back in the queue.
    pub async fn drain(&self, ctx: StageContext) -> StageOutcome {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        for name in ["claim", "upkeep"] {
            if let Some(task) = inner.take_loop(name) {
                let _ = task.await;
            }
        }
        if let Some(patience) = &ctx.patience {
            if let Some(done) = self.outlast_hand_over(patience).await {
                return done;
            }
        }
        let (running_at_start, requeued_now) = {
            let running = inner.running.lock().expect("poisoned");
            let requeued = running
                .values()
                .filter(|r| r.on_shutdown == OnShutdown::Requeue)
                .map(|r| r.halt.request(Stop::Shutdown))
                .count();
            (running.len(), requeued)
        };
        inner.jobs.close();
        let mut status = tokio::time::interval(Duration::from_secs(1));
        let finished = loop {
            tokio::select! {
                _ = inner.jobs.wait() => break true,
                _ = ctx.cut.cancelled() => break false,
                _ = status.tick() => ctx.status(self.draining_line()),
            }
        };
        if finished {
            return StageOutcome::Done(if running_at_start == 0 {
                "no jobs were running".into()
            } else if requeued_now > 0 {
                format!("every job finished or was requeued ({requeued_now} requeued by on_shutdown = \"requeue\")")
            } else {
                "every running job finished".into()
            });
        }
        let cut: Vec<i64> = {
            let running = inner.running.lock().expect("poisoned");
            running
                .iter()
                .map(|(id, r)| {
                    r.halt.request(Stop::Shutdown);
                    *id
                })
                .collect()
        };
        ctx.status(format!(
            "draining: stopping {} jobs that outlived shutdown.jobs_drain",
            cut.len()
        ));
        inner.jobs.wait().await;
        let ids: Vec<String> = cut.iter().map(|id| format!("#{id}")).collect();
        StageOutcome::Cut(format!(
            "stopped {} still running ({}) and put {} back in the queue",
            if cut.len() == 1 {
                "1 job".to_string()
            } else {
                format!("{} jobs", cut.len())
            },
            ids.join(", "),
            if cut.len() == 1 { "it" } else { "them" }
        ))
    }

    /// After a hand-over: the new process serves and claims; the jobs here run on,
    /// untouched, renewing their leases, each bounded by its task's timeout. Only a stop
    /// (forwarded by the new process, or a signal) ends the wait: then `None`, and the
    /// stop goes on as any other.
    async fn outlast_hand_over(&self, patience: &CancellationToken) -> Option<StageOutcome> {
        let inner = &self.inner;
        let running = inner.running.lock().expect("poisoned").len();
        if running > 0 {
            tracing::info!(
                running,
                "handed over: letting {running} running jobs finish here (a stop applies shutdown.jobs_drain)"
            );
        }
        inner.jobs.close();
        tokio::select! {
            _ = inner.jobs.wait() => Some(StageOutcome::Done(if running == 0 {
                "no jobs were running".into()
            } else {
                format!("the {running} jobs running at the hand-over finished")
            })),
            _ = patience.cancelled() => None,
        }
    }

    /// The `flush` stage: stop the periodic flusher, write every buffered line, and take
    /// this node out of the nodes table.
    pub async fn flush(&self) -> StageOutcome {
        self.inner.stop_flushing.cancel();
        if let Some(task) = self.inner.take_loop("flush") {
            let _ = task.await;
        }
        loop {
            match self.inner.output.flush().await {
                Ok(n) => {
                    if let Err(e) = self.inner.store.forget_node(&self.inner.node).await {
                        tracing::debug!(error = %e, "cannot remove this node's row; it ages out");
                    }
                    return StageOutcome::Done(format!("{n} buffered output lines written"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = self.inner.output.pending(), "cannot write job output yet; retrying until shutdown.flush runs out");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    loop {
        let every = inner.settings.read().expect("poisoned").log_flush_interval;
        tokio::select! {
            _ = inner.stop_flushing.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            // A reader waits for room: write now, not at the next interval.
            _ = inner.output.wait_full() => {}
        }
        if let Err(e) = inner.output.flush().await {
            tracing::warn!(error = %e, pending = inner.output.pending(), "cannot write job output; keeping it buffered (the jobs wait when the buffer is full) and retrying");
            // Not in a tight loop while the database is away.
            tokio::select! {
                _ = inner.stop_flushing.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// `poll_interval` doubled for each failure in a row, up to [`MAX_CLAIM_BACKOFF`].
fn claim_backoff(poll: Duration, failures: u32) -> Duration {
    poll.saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_CLAIM_BACKOFF.max(poll))
}

/// A job claimed ahead of a free worker, waiting in the claim loop's local queue.
struct Prefetched {
    job: Job,
    lease_owner: String,
    /// Taken before the claim was sent: the lease runs from here (see [`Attempt`]).
    sent: Instant,
    lease: Duration,
}

async fn claim_loop(inner: Arc<Inner>) {
    let mut failures = 0u32;
    let mut local: std::collections::VecDeque<Prefetched> = Default::default();
    // How many jobs to hold ahead: follows the claims' round trip and the jobs' pace.
    let mut depth = ClaimDepth::new(inner.settings().prefetch);
    loop {
        if inner.stop_claiming.is_cancelled() {
            break;
        }
        let settings = inner.settings();
        depth.set_ceiling(settings.prefetch);
        let mut wait = settings.poll_interval;
        // Jobs waiting here start as soon as a worker (and their task's limit) allows;
        // one that waited a quarter of its lease goes back to the queue.
        start_local(&inner, &settings, &mut local, &mut depth).await;
        if let Some(oldest) = local.front() {
            let left =
                (oldest.sent + settings.prefetch_wait()).saturating_duration_since(Instant::now());
            wait = wait.min(left.max(Duration::from_millis(1)));
        }
        let (caps, limit) = claim_caps(&inner, &settings, &local, &mut depth);
        if limit > 0 {
            let lease_owner = format!(
                "{}/{}",
                inner.node,
                inner.claims.fetch_add(1, Ordering::Relaxed)
            );
            let sent = Instant::now();
            // A claim that takes longer than the lease would hand out jobs whose lease
            // may have run out already; give up on it (a claim that still commits later
            // expires unrun and is claimed again).
            let claimed = tokio::time::timeout(
                settings.lease,
                inner
                    .store
                    .claim_batch(&lease_owner, &caps, limit, settings.lease),
            )
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
            match claimed {
                Ok(jobs) => {
                    failures = 0;
                    depth.record_claim(sent.elapsed(), jobs.len());
                    let full = jobs.len() == limit;
                    local.extend(jobs.into_iter().map(|job| Prefetched {
                        job,
                        lease_owner: lease_owner.clone(),
                        sent,
                        lease: settings.lease,
                    }));
                    start_local(&inner, &settings, &mut local, &mut depth).await;
                    if full {
                        // There may be more: look again at once.
                        continue;
                    }
                }
                Err(e) => {
                    failures += 1;
                    wait = claim_backoff(settings.poll_interval, failures);
                    if failures == 1 || failures % 10 == 0 {
                        tracing::warn!(error = %e, failures, "cannot claim jobs; no job starts until a claim commits; retrying in {}", humantime::format_duration(wait));
                    }
                }
            }
        }
        tokio::select! {
            _ = inner.stop_claiming.cancelled() => break,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // The stop: jobs claimed but not started go back to the queue, their attempt not counted.
    let settings = inner.settings();
    for p in local.drain(..) {
        release(&inner, &settings, p).await;
    }
}

/// Starts the local jobs that a free worker and their task's limit allow, oldest first
/// (counted in `depth`'s start rate); returns to the queue those that waited too long or
/// whose task is gone.
async fn start_local(
    inner: &Arc<Inner>,
    settings: &RunnerSettings,
    local: &mut std::collections::VecDeque<Prefetched>,
    depth: &mut ClaimDepth,
) {
    let mut started = 0;
    let mut kept = std::collections::VecDeque::with_capacity(local.len());
    let mut expired = Vec::new();
    let paused = inner.view.read().expect("poisoned").paused.clone();
    while let Some(p) = local.pop_front() {
        // A job claimed ahead of a pause has not started: it goes back to the queue.
        if p.sent.elapsed() >= settings.prefetch_wait() || paused.contains_key(&p.job.task) {
            expired.push(p);
            continue;
        }
        let startable = {
            let running = inner.running.lock().expect("poisoned");
            running.len() < settings.workers
                && match settings.tasks.get(&p.job.task) {
                    Some(task) => {
                        running.values().filter(|r| r.task == p.job.task).count()
                            < task.config.concurrency as usize
                    }
                    // Removed by a reload: the attempt records it and requeues it.
                    None => true,
                }
        };
        if startable {
            let attempt = Attempt {
                task: settings.tasks.get(&p.job.task).cloned(),
                job: p.job,
                lease_owner: p.lease_owner,
                lease: p.lease,
                lease_deadline: p.sent + p.lease,
                max_output: settings.max_output,
                started: Instant::now(),
            };
            spawn_job(inner, attempt);
            started += 1;
        } else {
            kept.push_back(p);
        }
    }
    *local = kept;
    if started > 0 {
        depth.record_start(started, Instant::now().into_std());
    }
    for p in expired {
        release(inner, settings, p).await;
    }
}

/// Puts a prefetched job back in the queue without counting the attempt. If that fails,
/// its lease runs out and it is claimed again (the attempt then counts).
async fn release(inner: &Inner, settings: &RunnerSettings, p: Prefetched) {
    let done = tokio::time::timeout(
        settings.lease.min(Duration::from_secs(5)),
        inner.store.requeue(p.job.id, &p.lease_owner),
    )
    .await;
    if !matches!(done, Ok(Ok(_))) {
        tracing::warn!(job = p.job.id, "cannot put a job claimed ahead back in the queue; it runs again once its lease has expired");
    }
}

/// What the next claim may take: per task, the free places under its `concurrency`
/// (running and waiting here both count); in all, [`ClaimDepth::limit`]: the free workers
/// plus the depth, less what waits here, and nothing while no worker is free. So a job
/// waits here only for a worker, never for its task's limit.
fn claim_caps(
    inner: &Inner,
    settings: &RunnerSettings,
    local: &std::collections::VecDeque<Prefetched>,
    depth: &mut ClaimDepth,
) -> (Vec<(String, usize)>, usize) {
    let paused = inner.view.read().expect("poisoned").paused.clone();
    let running = inner.running.lock().expect("poisoned");
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for r in running.values() {
        *per_task.entry(r.task.as_str()).or_default() += 1;
    }
    for p in local {
        *per_task.entry(p.job.task.as_str()).or_default() += 1;
    }
    // Only when a worker is free (the depth's rule): no claim is made just to fill the
    // local queue, so a node whose workers are all busy with long jobs leaves the queue
    // to the others.
    let limit = depth.limit(
        settings.workers,
        running.len(),
        local.len(),
        Instant::now().into_std(),
    );
    let caps = settings
        .tasks
        .iter()
        .map(|(name, task)| {
            let taken = per_task.get(name.as_str()).copied().unwrap_or(0);
            // Never past the task's own limit, so no more of its jobs are `running` (in
            // the database, in the API) than its concurrency allows.
            let cap = (task.config.concurrency as usize).saturating_sub(taken);
            (name.clone(), cap)
        })
        // Paused tasks (as last seen; the claim statement itself is what holds them).
        .filter(|(name, cap)| *cap > 0 && !paused.contains_key(name))
        .collect::<Vec<_>>();
    let limit = if caps.is_empty() { 0 } else { limit };
    (caps, limit)
}

/// The heartbeat (which also tells when the storage takes writes again), the queue view
/// for status and metrics, the database size, and expiry of old jobs.
async fn upkeep_loop(inner: Arc<Inner>) {
    let long_ago = Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or_else(Instant::now);
    let (mut beat_at, mut view_at, mut size_at, mut sweep_at) =
        (long_ago, long_ago, long_ago, long_ago);
    loop {
        let settings = inner.settings();
        let faulted = inner.store.fault().is_some();
        let every = settings.heartbeat_every();
        // While the storage is faulted the heartbeat is the probe: once a second.
        if faulted || beat_at.elapsed() >= every {
            beat_at = Instant::now();
            let tasks: Vec<String> = settings.tasks.keys().cloned().collect();
            match tokio::time::timeout(every, inner.store.heartbeat(&inner.node, &tasks)).await {
                Ok(Ok(())) if faulted => inner.wake.notify_one(),
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
                Err(_) => tracing::debug!("heartbeat took longer than a heartbeat interval"),
            }
        }
        if view_at.elapsed() >= settings.poll_interval {
            view_at = Instant::now();
            refresh_view(&inner, &settings).await;
        }
        if size_at.elapsed() >= STATS_EVERY {
            size_at = Instant::now();
            if let Ok(Ok(n)) = tokio::time::timeout(every, inner.store.size_bytes()).await {
                inner.view.write().expect("poisoned").size_bytes = Some(n);
            }
            if let Ok(Ok(counts)) = tokio::time::timeout(settings.lease, inner.store.counts()).await
            {
                inner.view.write().expect("poisoned").counts = counts;
            }
        }
        if !faulted && sweep_at.elapsed() >= settings.sweep_every() {
            sweep_at = Instant::now();
            expire(&inner, &settings).await;
        }
        let tick = if faulted {
            Duration::from_secs(1)
        } else {
            every.min(settings.poll_interval)
        };
        tokio::select! {
            _ = inner.stop_claiming.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn refresh_view(inner: &Inner, settings: &RunnerSettings) {
    let Ok(Ok(depth)) = tokio::time::timeout(settings.lease, inner.store.counts_active()).await
    else {
        return;
    };
    // A node is live while its heartbeat is younger than three heartbeat intervals.
    let window = settings.heartbeat_every() * 3 + Duration::from_secs(1);
    let served = match tokio::time::timeout(settings.lease, inner.store.served_tasks(window)).await
    {
        Ok(Ok(served)) => served,
        _ => return,
    };
    let unserved = depth
        .iter()
        .filter(|(task, (queued, _))| *queued > 0 && !served.contains(*task))
        .map(|(task, (queued, _))| (task.clone(), *queued))
        .collect();
    let paused = tokio::time::timeout(settings.lease, inner.store.paused()).await;
    let mut view = inner.view.write().expect("poisoned");
    view.depth = depth;
    view.unserved = unserved;
    if let Ok(Ok(paused)) = paused {
        view.paused = paused;
    }
}

/// Deletes expired jobs a batch at a time until none are left or the stop begins.
async fn expire(inner: &Inner, settings: &RunnerSettings) {
    let mut deleted = 0u64;
    loop {
        if inner.stop_claiming.is_cancelled() {
            break;
        }
        match tokio::time::timeout(settings.lease, inner.store.expire_batch(settings.retain)).await
        {
            Ok(Ok(Some(n))) => deleted += n,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot delete expired jobs; trying again later");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    "deleting expired jobs took longer than jobs.lease; trying again later"
                );
                break;
            }
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            retain = %humantime::format_duration(settings.retain),
            "deleted finished jobs older than jobs.retain"
        );
    }
}

/// One claimed attempt of a job.
struct Attempt {
    job: Job,
    /// The task as configured when the job was claimed; `None` if a reload removed it.
    task: Option<Arc<Task>>,
    /// This claim's lease token (`lease_owner` in the database).
    lease_owner: String,
    lease: Duration,
    /// By this local time the lease may run out: it was set from the database's clock
    /// *after* this instant was taken, so the database's expiry is never earlier.
    lease_deadline: Instant,
    /// `jobs.max_output`, for a task without its own.
    max_output: u64,
    /// When it was handed to a worker: the attempt's duration runs from here.
    started: Instant,
}

impl Attempt {
    /// The wait before a failed attempt runs again (doubled per attempt when recorded).
    fn retry_backoff(&self) -> Duration {
        self.task
            .as_ref()
            .map_or(Duration::ZERO, |t| t.config.retry_backoff)
    }

    fn max_output(&self) -> (u64, String) {
        match self.task.as_ref().and_then(|t| t.config.max_output) {
            Some(size) => (size.0, format!("tasks.{}.max_output", self.job.task)),
            None => (self.max_output, "jobs.max_output".into()),
        }
    }
}

fn spawn_job(inner: &Arc<Inner>, attempt: Attempt) {
    let running = Running {
        task: attempt.job.task.clone(),
        lease_owner: attempt.lease_owner.clone(),
        started: attempt.started,
        on_shutdown: attempt
            .task
            .as_ref()
            .map(|t| t.config.on_shutdown)
            .unwrap_or_default(),
        halt: Halt::default(),
    };
    let halt = running.halt.clone();
    let id = attempt.job.id;
    let owner = attempt.lease_owner.clone();
    inner.running.lock().expect("poisoned").insert(id, running);
    let inner2 = inner.clone();
    inner.jobs.spawn(async move {
        run_job(&inner2, attempt, halt).await;
        free_worker(&inner2, id, &owner);
    });
}

/// The attempt no longer holds a worker (its process has ended). Only this attempt's
/// entry goes: once its outcome committed, the job may already run again here as a new
/// attempt, under another lease token.
fn free_worker(inner: &Inner, id: i64, lease_owner: &str) {
    let mut running = inner.running.lock().expect("poisoned");
    if running
        .get(&id)
        .is_some_and(|r| r.lease_owner == lease_owner)
    {
        running.remove(&id);
    }
    drop(running);
    inner.wake.notify_one();
}

/// Appends lines of one attempt to the buffer, numbering them and keeping to its cap.
#[derive(Clone)]
struct JobOutput {
    buffer: Arc<OutputBuffer>,
    job_id: i64,
    attempt: i64,
    seq: Arc<AtomicI64>,
    cap: Arc<OutputCap>,
}

/// `max_output` of one attempt and what was discarded past it.
struct OutputCap {
    limit: u64,
    /// The setting that gave the limit, for the marker line.
    setting: String,
    kept: AtomicU64,
    discarded_bytes: AtomicU64,
    discarded_lines: AtomicU64,
}

impl JobOutput {
    fn line(&self, stream: &'static str, line: String) -> OutputLine {
        OutputLine {
            job_id: self.job_id,
            // Numbered by the buffer as it takes the line (see `OutputBuffer::push`).
            seq: 0,
            attempt: self.attempt,
            stream,
            at: now_ms(),
            line,
        }
    }

    /// A line of the job's own output: kept while under the cap, waiting for room in the
    /// buffer; past the cap discarded and counted.
    async fn push(&self, stream: &'static str, line: String) {
        let len = line.len() as u64 + 1;
        let before = self.cap.kept.fetch_add(len, Ordering::AcqRel);
        if before + len > self.cap.limit {
            if self.cap.discarded_lines.fetch_add(1, Ordering::AcqRel) == 0 {
                self.note(format!(
                    "output reached {} ({}); further output of this attempt is discarded (the job goes on)",
                    self.cap.setting,
                    crate::config::ByteSize(self.cap.limit)
                ));
            }
            self.cap.discarded_bytes.fetch_add(len, Ordering::AcqRel);
            return;
        }
        let line = self.line(stream, line);
        self.buffer.push(line, &self.seq).await;
    }

    /// A line the service adds.
    fn note(&self, line: impl Into<String>) {
        let line = self.line("shiftd", line.into());
        self.buffer.note(line, &self.seq);
    }

    /// The marker line saying how much was discarded, if anything was.
    fn note_discarded(&self) {
        let lines = self.cap.discarded_lines.load(Ordering::Acquire);
        if lines > 0 {
            self.note(format!(
                "max_output: discarded {} bytes in {lines} lines past {} ({}); raise it to keep more",
                self.cap.discarded_bytes.load(Ordering::Acquire),
                self.cap.setting,
                crate::config::ByteSize(self.cap.limit)
            ));
        }
    }
}

/// A job's process, described: [`JobCommand::command`] starts exactly this. The program is
/// this binary as the shim (it heads the process group and takes it down if shiftd dies,
/// `shim.rs`), then argv without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobCommand {
    program: PathBuf,
    args: Vec<String>,
    /// The process's whole environment: it starts from an empty one.
    env: BTreeMap<String, OsString>,
    cwd: Option<PathBuf>,
}

impl JobCommand {
    /// In its own process group (a timeout or a stop reaches everything it started), with
    /// a cleared environment, no stdin, and its output piped to us.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command
    }
}

/// The process to start for a job. Its environment is only [`INHERITED_ENV`] taken from
/// `parent_env` (this process's environment), then the task's `env`, then the `JOB_*`
/// values, each overriding the ones before: nothing else of shiftd's environment reaches it.
fn job_command(
    cfg: &TaskConfig,
    job: &Job,
    argv: &[String],
    parent_env: impl IntoIterator<Item = (OsString, OsString)>,
) -> JobCommand {
    let mut env: BTreeMap<String, OsString> = parent_env
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| INHERITED_ENV.contains(&k.as_str()))
        .collect();
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.into())));
    env.insert("JOB_ID".into(), job.id.to_string().into());
    env.insert("JOB_TASK".into(), job.task.clone().into());
    env.insert("JOB_ATTEMPT".into(), job.attempts.to_string().into());
    JobCommand {
        program: SELF_EXE.into(),
        args: std::iter::once(super::shim::SHIM_ARG.to_string())
            .chain(argv.iter().cloned())
            .collect(),
        env,
        cwd: cfg.working_dir.clone(),
    }
}

/// The argv of an attempt, or why it cannot run (and whether that may be retried).
fn prepare(attempt: &Attempt) -> Result<Vec<String>, (Stop, String)> {
    let job = &attempt.job;
    let Some(task) = &attempt.task else {
        return Err((
            Stop::TaskGone,
            format!(
                "task `{}` is no longer configured on this node; back to the queue for a node that has it",
                job.task
            ),
        ));
    };
    if job.attempts > job.max_attempts {
        return Err((
            Stop::Exited,
            format!(
                "gave up after {} attempts (the last ones were lost with their worker; see the output)",
                job.max_attempts
            ),
        ));
    }
    let given = job.params.as_object().cloned().unwrap_or_default();
    task.check_params(&given)
        .and_then(|p| task.argv(&p))
        .map_err(|e| (Stop::Exited, format!("parameters no longer valid: {e}")))
}

/// One attempt, from its claim to its recorded outcome: the output, the argv, the lease,
/// the process under its supervisor, the outcome.
async fn run_job(inner: &Arc<Inner>, attempt: Attempt, halt: Halt) {
    let Some(out) = open_output(inner, &attempt).await else {
        // The database is away; the lease will expire and the job will be claimed again.
        return;
    };
    let argv = match prepare(&attempt) {
        Ok(argv) => argv,
        Err((stop, error)) => return refuse(inner, attempt, &out, stop, error).await,
    };
    let task = attempt.task.clone().expect("prepare checked it");
    let (cfg, job) = (&task.config, &attempt.job);
    // The lease runs from the claim; if the claim itself was slow, renew before starting.
    let lease = LeaseKeeper::start(inner, &attempt, halt.clone());
    if !lease.has_time_to_start(attempt.lease).await {
        out.note("the claim's lease is nearly over and could not be renewed; not starting (it runs again after the lease)");
        drop(lease);
        return record(inner, &attempt, Stop::LeaseExpiring, refusal(String::new())).await;
    }
    out.note(format!(
        "attempt {} of {} on {}: {:?}",
        job.attempts, job.max_attempts, inner.node, argv
    ));
    let command = job_command(cfg, job, &argv, std::env::vars_os()).command();
    let child = match inner.spawner.spawn(command).await {
        Ok(child) => child,
        Err(e) => {
            drop(lease);
            let error = format!(
                "cannot start {}: {e}; check tasks.{}.command and working_dir",
                argv[0], job.task
            );
            out.note(error.clone());
            return record(inner, &attempt, Stop::Exited, refusal(error)).await;
        }
    };
    let (stop, status) = run_to_end(child, cfg, &halt, lease, &out).await;
    out.note_discarded();
    let finish = describe(stop, status, &job.task, cfg.timeout);
    out.note(match &finish.error {
        Some(error) => error.clone(),
        None => status_text(finish.exit_code, finish.exit_signal),
    });
    record(inner, &attempt, stop, finish).await;
}

/// The attempt's output, numbered after the job's last stored line; `None` when that
/// position cannot be read within the lease.
async fn open_output(inner: &Inner, attempt: &Attempt) -> Option<JobOutput> {
    let job = &attempt.job;
    // A retry: lines of an earlier attempt still buffered here go first, so numbering
    // continues after them. A first attempt has none, and skips the write.
    if job.attempts > 1 {
        let _ = inner.output.flush().await;
    }
    let last_seq = persist("read the job's output position", attempt.lease, || {
        inner.store.last_seq(job.id)
    })
    .await?;
    let (limit, setting) = attempt.max_output();
    Some(JobOutput {
        buffer: inner.output.clone(),
        job_id: job.id,
        attempt: job.attempts,
        seq: Arc::new(AtomicI64::new(last_seq)),
        cap: Arc::new(OutputCap {
            limit,
            setting,
            kept: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
            discarded_lines: AtomicU64::new(0),
        }),
    })
}

/// An attempt's end without an exit status, as `error`.
fn refusal(error: String) -> Finish {
    Finish {
        state: JobState::Failed,
        exit_code: None,
        exit_signal: None,
        error: Some(error),
    }
}

/// An attempt that cannot run ([`prepare`] said why) is recorded without starting
/// anything. A refusal is final: no retry of parameters that cannot pass.
async fn refuse(inner: &Arc<Inner>, attempt: Attempt, out: &JobOutput, stop: Stop, error: String) {
    out.note(error.clone());
    let no_retry = Job {
        attempts: attempt.job.max_attempts,
        ..attempt.job.clone()
    };
    let attempt = Attempt {
        job: no_retry,
        ..attempt
    };
    record(inner, &attempt, stop, refusal(error)).await;
}

/// Runs a started process to its end: reads its output, waits under [`supervise`], stops
/// its whole group when it must stop (or takes down what it left behind when it exited),
/// and says why it ended, with its exit status.
async fn run_to_end(
    mut child: Child,
    cfg: &TaskConfig,
    halt: &Halt,
    lease: LeaseKeeper,
    out: &JobOutput,
) -> (Stop, Option<ExitStatus>) {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_lines(s, "stdout", out.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, "stderr", out.clone()))),
    ];
    let ended = supervise(&mut child, cfg, halt, &lease).await;
    lease.stop();
    let ended = match (ended, pgid) {
        (Ended::Exited(status), Some(pgid)) => {
            // The job is its process group: what it left running in the background goes
            // with it, rather than escaping until systemd's final SIGKILL at the next stop.
            if killpg(pgid, Signal::SIGKILL).is_ok() {
                out.note("the command exited but left processes running; killed them");
            }
            (Stop::Exited, Some(status))
        }
        (Ended::Exited(status), None) => (Stop::Exited, Some(status)),
        (Ended::MustStop(stop), Some(pgid)) => {
            out.note(stop_reason(stop, cfg, &lease));
            // Before a lease runs out, the whole group is gone before its deadline.
            let grace = match stop {
                Stop::LeaseExpiring => cfg.kill_grace.min(lease.time_to_fence_end()),
                _ => cfg.kill_grace,
            };
            (stop, Some(stop_group(&mut child, pgid, grace, out).await))
        }
        (Ended::MustStop(stop), None) => (stop, None),
    };
    finish_reading(readers, cfg.kill_grace, out).await;
    ended
}

/// Readers end at EOF; a grandchild that kept the pipe open must not hold us.
async fn finish_reading(
    readers: [Option<JoinHandle<()>>; 2],
    kill_grace: Duration,
    out: &JobOutput,
) {
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(kill_grace.max(Duration::from_secs(1)), reader)
            .await
            .is_err()
        {
            abort.abort();
            out.note(
                "output still open after the process ended (a background child, or the output waiting for the database); stopped reading",
            );
        }
    }
}

/// How the supervisor saw an attempt's process end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It is still running and must be stopped, for this reason.
    MustStop(Stop),
}

/// Waits for the attempt to end and says why: the process exited, or it must be stopped
/// (timeout, a cancel or the service's stop through its [`Halt`], the lease lost or about
/// to run out).
async fn supervise(child: &mut Child, cfg: &TaskConfig, halt: &Halt, lease: &LeaseKeeper) -> Ended {
    let timeout = tokio::time::sleep(cfg.timeout);
    tokio::pin!(timeout);
    let mut deadline = lease.deadline.clone();
    loop {
        // Stop early enough that the whole group is dead before the lease can run out.
        let fence = lease.fence_at(*deadline.borrow_and_update(), cfg.kill_grace);
        tokio::select! {
            status = child.wait() => return match status {
                Ok(status) => Ended::Exited(status),
                // Cannot wait for it (never seen): take its group down.
                Err(_) => Ended::MustStop(Stop::Exited),
            },
            _ = timeout.as_mut() => return Ended::MustStop(Stop::Timeout),
            why = halt.requested() => return Ended::MustStop(why),
            _ = lease.lost.cancelled() => return Ended::MustStop(Stop::LeaseLost),
            _ = tokio::time::sleep_until(fence) => return Ended::MustStop(Stop::LeaseExpiring),
            // A renewal moved the deadline: compute the fence again.
            changed = deadline.changed() => if changed.is_err() {
                return Ended::MustStop(Stop::LeaseExpiring);
            },
        }
    }
}

fn stop_reason(stop: Stop, cfg: &TaskConfig, lease: &LeaseKeeper) -> String {
    match stop {
        Stop::Timeout => format!(
            "timed out after {}; stopping it",
            humantime::format_duration(cfg.timeout)
        ),
        Stop::Cancelled => "cancelled; stopping it".to_string(),
        Stop::Shutdown => {
            "the service is stopping; stopping it to run again after the restart".to_string()
        }
        Stop::LeaseExpiring => format!(
            "could not renew its lease for {} ({}); stopping it before the lease runs out, so that no other worker can start it while it still runs; it runs again once the lease has expired",
            humantime::format_duration(Duration::from_millis(
                lease.since_renewed().as_millis() as u64
            )),
            lease.last_error()
        ),
        _ => "its lease was taken by another worker; stopping it".to_string(),
    }
}

/// Renews an attempt's lease in its own task, so a renewal that hangs (a database stall)
/// never holds up the supervisor, which stops the job before the lease can run out. The
/// task ends with [`LeaseKeeper::stop`], or when the keeper is dropped (every way out of
/// an attempt).
struct LeaseKeeper {
    /// The local time by which the lease may run out, moved on by each renewal.
    deadline: watch::Receiver<Instant>,
    /// Another worker took the job.
    lost: CancellationToken,
    lease: Duration,
    renewed_at: Arc<Mutex<(Instant, String)>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    fn start(inner: &Arc<Inner>, attempt: &Attempt, halt: Halt) -> Self {
        let (deadline_tx, deadline) = watch::channel(attempt.lease_deadline);
        let lost = CancellationToken::new();
        let renewed_at = Arc::new(Mutex::new((
            attempt.lease_deadline - attempt.lease,
            String::new(),
        )));
        let renewal = Renewal {
            store: inner.store.clone(),
            id: attempt.job.id,
            lease_owner: attempt.lease_owner.clone(),
            lease: attempt.lease,
            deadline: deadline_tx,
            lost: lost.clone(),
            halt,
            renewed_at: renewed_at.clone(),
        };
        Self {
            deadline,
            lost,
            lease: attempt.lease,
            renewed_at,
            task: tokio::spawn(renewal.run()),
        }
    }

    /// The margin kept between the group's death and the lease's end.
    fn margin(&self) -> Duration {
        (self.lease / 10).max(Duration::from_millis(100))
    }

    /// When to send SIGTERM so that SIGKILL (after at most `kill_grace`, shortened when
    /// needed) lands `margin` before `deadline`.
    fn fence_at(&self, deadline: Instant, kill_grace: Duration) -> Instant {
        let term_window = kill_grace.min(self.lease / 4);
        deadline
            .checked_sub(self.margin() + term_window)
            .unwrap_or_else(Instant::now)
    }

    /// Time left until SIGKILL must have been sent.
    fn time_to_fence_end(&self) -> Duration {
        (*self.deadline.borrow())
            .checked_sub(self.margin())
            .map(|end| end.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    fn since_renewed(&self) -> Duration {
        self.renewed_at.lock().expect("poisoned").0.elapsed()
    }

    fn last_error(&self) -> String {
        let error = self.renewed_at.lock().expect("poisoned").1.clone();
        if error.is_empty() {
            "the database did not answer in time".into()
        } else {
            error
        }
    }

    /// True when at least half the lease is left, renewing once if it is not.
    async fn has_time_to_start(&self, lease: Duration) -> bool {
        let half = lease / 2;
        let mut deadline = self.deadline.clone();
        loop {
            let left = deadline
                .borrow_and_update()
                .saturating_duration_since(Instant::now());
            if left >= half {
                return true;
            }
            if left.is_zero() || self.lost.is_cancelled() {
                return false;
            }
            // The keeper renews at a third of the lease; wait for it, up to what is left.
            match tokio::time::timeout(left, deadline.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }

    /// Ends the renewals (a renewal in flight is abandoned).
    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The renewals of one attempt's lease, run by [`LeaseKeeper`]'s task.
struct Renewal {
    store: Store,
    id: i64,
    lease_owner: String,
    lease: Duration,
    deadline: watch::Sender<Instant>,
    lost: CancellationToken,
    /// A cancel asked on any node is seen here, as the renewal's answer.
    halt: Halt,
    renewed_at: Arc<Mutex<(Instant, String)>>,
}

impl Renewal {
    /// Renews every third of the lease (sooner after a failure) until the lease is lost
    /// or the task is aborted.
    async fn run(self) {
        let (id, lease) = (self.id, self.lease);
        let every = lease / 3;
        let mut next = *self.deadline.borrow() - lease + every;
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            next = sent + every;
            let renewed = self.store.renew(id, &self.lease_owner, lease);
            match tokio::time::timeout(every, renewed).await {
                Ok(Ok(Some(cancel_requested))) => {
                    let _ = self.deadline.send(sent + lease);
                    *self.renewed_at.lock().expect("poisoned") = (sent, String::new());
                    if cancel_requested {
                        self.halt.request(Stop::Cancelled);
                    }
                }
                Ok(Ok(None)) => {
                    self.lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(job = id, error = %e, "cannot renew the job's lease; it keeps running while the lease lasts and is stopped before it runs out");
                    self.renewed_at.lock().expect("poisoned").1 = e.to_string();
                    // Try again soon rather than a third of the lease later.
                    next = sent + (every / 3).max(Duration::from_millis(100));
                }
                Err(_) => {
                    tracing::warn!(job = id, "renewing the job's lease took longer than a third of jobs.lease (a database stall?); it keeps running while the lease lasts");
                    self.renewed_at.lock().expect("poisoned").1 =
                        "the database did not answer in time".to_string();
                    next = Instant::now();
                }
            }
        }
    }
}

/// SIGTERM to the group, SIGKILL after `kill_grace`, then reap.
async fn stop_group(
    child: &mut Child,
    pgid: Pid,
    kill_grace: Duration,
    out: &JobOutput,
) -> ExitStatus {
    let _ = killpg(pgid, Signal::SIGTERM);
    let status = match tokio::time::timeout(kill_grace, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            out.note(format!(
                "still running {} after SIGTERM; sending SIGKILL",
                humantime::format_duration(kill_grace)
            ));
            let _ = killpg(pgid, Signal::SIGKILL);
            child
                .wait()
                .await
                .unwrap_or_else(|_| ExitStatus::from_raw(9))
        }
    };
    // Anything else left in the group goes too.
    let _ = killpg(pgid, Signal::SIGKILL);
    status
}

/// "exited with status 3", "killed by signal 9".
fn status_text(exit_code: Option<i64>, exit_signal: Option<i64>) -> String {
    match (exit_code, exit_signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended without an exit status".to_string(),
    }
}

fn describe(stop: Stop, status: Option<ExitStatus>, task: &str, timeout: Duration) -> Finish {
    let exit_code = status.and_then(|s| s.code()).map(i64::from);
    let exit_signal = status.and_then(|s| s.signal()).map(i64::from);
    let (state, error) = match stop {
        Stop::Exited if status.is_some_and(|s| s.success()) => (JobState::Succeeded, None),
        Stop::Exited => (JobState::Failed, Some(status_text(exit_code, exit_signal))),
        Stop::Timeout => (
            JobState::Failed,
            Some(format!(
                "timed out after {}; raise tasks.{task}.timeout if it needs longer",
                humantime::format_duration(timeout)
            )),
        ),
        Stop::Cancelled => (JobState::Cancelled, Some("cancelled".into())),
        Stop::Shutdown | Stop::LeaseLost | Stop::LeaseExpiring | Stop::TaskGone => {
            (JobState::Queued, None)
        }
    };
    Finish {
        state,
        exit_code,
        exit_signal,
        error,
    }
}

/// Writes the output, then the outcome, retrying through database blips while the lease lasts.
async fn record(inner: &Arc<Inner>, attempt: &Attempt, stop: Stop, finish: Finish) {
    let job = &attempt.job;
    // The attempt's process has ended: its worker may start the next job while this
    // outcome is written (in a batch with others, `finisher.rs`). Its row stays `running`
    // under this attempt's lease until the outcome commits.
    free_worker(inner, job.id, &attempt.lease_owner);
    // Output first, so whoever sees the final state can read the whole log.
    let _ = persist("write the job's output", attempt.lease, || {
        inner.output.flush()
    })
    .await;
    let outcome = match stop {
        // Not ours any more, or about to not be: whoever claims it next records it.
        Stop::LeaseLost | Stop::LeaseExpiring => "lost",
        Stop::Shutdown | Stop::TaskGone => {
            record_requeue(inner, attempt, stop).await;
            "requeued"
        }
        _ => {
            record_finish(inner, attempt, &finish).await;
            finish.state.as_str()
        }
    };
    (inner.on_attempt)(&job.task, outcome, attempt.started.elapsed());
}

/// Puts the job back in the queue without counting the attempt: stopped by the shutdown
/// (with a `job.interrupted` notice: its process ran), or left for a node that has its task.
async fn record_requeue(inner: &Inner, attempt: &Attempt, stop: Stop) {
    let (job, owner) = (&attempt.job, attempt.lease_owner.as_str());
    if persist("put the job back in the queue", attempt.lease, || async {
        if stop == Stop::Shutdown {
            inner.store.requeue_interrupted(job.id, owner).await
        } else {
            inner.store.requeue(job.id, owner).await
        }
    })
    .await
    .is_some()
    {
        tracing::info!(job = job.id, task = %job.task, "job {} and requeued", if stop == Stop::Shutdown { "stopped by the shutdown" } else { "left for a node that has its task" });
    }
}

/// Records the attempt's final state, or its retry after the task's back-off (doubled
/// for each attempt).
async fn record_finish(inner: &Inner, attempt: &Attempt, finish: &Finish) {
    let (job, owner) = (&attempt.job, attempt.lease_owner.as_str());
    let backoff = attempt
        .retry_backoff()
        .saturating_mul(1 << (job.attempts.clamp(1, 16) - 1) as u32);
    let retry = finish.state == JobState::Failed && job.attempts < job.max_attempts;
    let outcome = if retry {
        "retry"
    } else {
        finish.state.as_str()
    };
    if persist("record the job's outcome", attempt.lease, || {
        inner
            .finisher
            .finish(FinishItem::new(job, owner, finish, backoff))
    })
    .await
    .is_some()
    {
        tracing::info!(job = job.id, task = %job.task, attempt = job.attempts, outcome, error = finish.error.as_deref().unwrap_or(""), "job attempt ended: {outcome}");
    }
}

/// Retries a database write with backoff until it succeeds or `limit` passes.
async fn persist<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + limit;
    let mut wait = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout(left, f()).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        match result {
            Ok(v) => return Some(v),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, "cannot {what}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot {what}; giving up: the job's lease will expire and it will run again");
                return None;
            }
        }
    }
}

async fn read_lines(stream: impl AsyncRead + Unpin, name: &'static str, out: JobOutput) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                out.push(name, String::from_utf8_lossy(&buf).into_owned())
                    .await;
            }
            Err(e) => {
                out.note(format!("reading {name} failed: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, task: &str, attempts: i64) -> Job {
        Job {
            id,
            task: task.into(),
            params: serde_json::json!({}),
            state: JobState::Running,
            attempts,
            max_attempts: 3,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            exit_signal: None,
            error: None,
            cancel_requested: false,
            lease_owner: None,
            run_after: 0,
        }
    }

    fn os_env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// The environment is the task's `env`, what shiftd sets, and a few variables of the
    /// service's own: its sockets, its settings (a database URL with its password) and
    /// everything else of its environment stay out.
    #[test]
    fn job_environment_is_only_the_tasks_and_what_shiftd_sets() {
        let cfg = TaskConfig {
            command: vec!["/bin/true".into()],
            env: [("GREETING", "hi"), ("LANG", "C.UTF-8"), ("JOB_ID", "mine")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            working_dir: Some("/srv/work".into()),
            ..Default::default()
        };
        let parent = os_env(&[
            ("PATH", "/usr/bin"),
            ("LANG", "en_US.UTF-8"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "2"),
            ("SHIFTD_DATABASE__URL", "postgres://shiftd:secret@db/shiftd"),
            ("SHIFTD_HANDOVER", "chan=3,http=4,control=5"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("LD_PRELOAD", "/tmp/evil.so"),
        ]);
        let described = job_command(&cfg, &job(7, "t", 2), &cfg.command, parent);
        let env: Vec<(&str, &str)> = described
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("GREETING", "hi"),
                ("JOB_ATTEMPT", "2"),
                // What shiftd sets wins over the task's own `env`.
                ("JOB_ID", "7"),
                ("JOB_TASK", "t"),
                // The task's `env` wins over what is inherited.
                ("LANG", "C.UTF-8"),
                ("PATH", "/usr/bin"),
            ]
        );
        assert_eq!(described.program, PathBuf::from(SELF_EXE));
        assert_eq!(described.args, ["__job-shim", "/bin/true"]);
        assert_eq!(described.cwd, Some(PathBuf::from("/srv/work")));
    }

    /// The started process sees exactly the described environment: nothing of this
    /// process's own (the test runner's, here) leaks past it.
    #[tokio::test]
    async fn a_job_process_gets_only_the_described_environment() {
        let cfg = TaskConfig {
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            ..Default::default()
        };
        let ours: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let mut described = job_command(&cfg, &job(7, "t", 1), &[], ours.clone());
        assert!(
            ours.iter()
                .any(|(k, _)| !described.env.contains_key(k.to_str().unwrap_or(""))),
            "this test needs a variable of its own that a job must not get"
        );
        // `env` in place of the shim: it prints the environment it was given.
        described.program = "/usr/bin/env".into();
        described.args.clear();
        let output = described.command().output().await.unwrap();
        assert!(output.status.success());
        let mut seen: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        seen.sort();
        let expected: Vec<String> = described
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A cancel and a stop that race: the first one says how the attempt ends.
    #[tokio::test]
    async fn a_halt_keeps_its_first_reason() {
        let halt = Halt::default();
        halt.request(Stop::Cancelled);
        halt.request(Stop::Shutdown);
        assert_eq!(halt.requested().await, Stop::Cancelled);
    }

    #[test]
    fn claim_backoff_doubles_up_to_its_cap() {
        let poll = Duration::from_secs(1);
        assert_eq!(claim_backoff(poll, 1), poll);
        assert_eq!(claim_backoff(poll, 3), Duration::from_secs(4));
        assert_eq!(claim_backoff(poll, 30), MAX_CLAIM_BACKOFF);
    }
}
