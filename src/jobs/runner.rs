//! The runner: claims jobs, runs each command in its own process group, captures its
//! output, renews its lease, and takes part in the stop (the `jobs` stage).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::output::OutputBuffer;
use super::store::{now_ms, Finish, Job, JobState, OutputLine, Store};
use super::task::Task;
use crate::config::{Config, OnShutdown};
use crate::lifecycle::{StageContext, StageOutcome};

/// Longest output line kept; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

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
            tasks,
        }
    }
}

/// A job running in this process.
struct Running {
    task: String,
    started: Instant,
    on_shutdown: OnShutdown,
    /// Stop it and record it as cancelled.
    cancel: CancellationToken,
    /// Stop it and put it back in the queue (a shutdown).
    requeue: CancellationToken,
}

/// A running job, for status reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningJob {
    pub id: i64,
    pub task: String,
    pub age_seconds: u64,
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
    output: Arc<OutputBuffer>,
    /// Written into `lease_owner`: unique per process.
    owner: String,
    settings: RwLock<RunnerSettings>,
    running: Mutex<HashMap<i64, Running>>,
    wake: Notify,
    stop_claiming: CancellationToken,
    stop_flushing: CancellationToken,
    jobs: TaskTracker,
    claim_loop: Mutex<Option<JoinHandle<()>>>,
    flush_loop: Mutex<Option<JoinHandle<()>>>,
    /// Queued and running jobs by task, refreshed by the claim loop.
    depth: RwLock<BTreeMap<String, (i64, i64)>>,
    on_attempt: OnAttempt,
}

/// How an attempt ended before its outcome is written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Exited,
    Timeout,
    Cancelled,
    Shutdown,
    LeaseLost,
}

impl Runner {
    /// Starts claiming and flushing.
    pub fn start(store: Store, settings: RunnerSettings, on_attempt: OnAttempt) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let owner = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let inner = Arc::new(Inner {
            output: Arc::new(OutputBuffer::new(store.clone())),
            store,
            owner,
            settings: RwLock::new(settings),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stop_claiming: CancellationToken::new(),
            stop_flushing: CancellationToken::new(),
            jobs: TaskTracker::new(),
            claim_loop: Mutex::new(None),
            flush_loop: Mutex::new(None),
            depth: RwLock::new(BTreeMap::new()),
            on_attempt,
        });
        *inner.claim_loop.lock().expect("poisoned") = Some(tokio::spawn(claim_loop(inner.clone())));
        *inner.flush_loop.lock().expect("poisoned") = Some(tokio::spawn(flush_loop(inner.clone())));
        Self { inner }
    }

    /// Applies a reloaded configuration; running jobs keep the definition they started with.
    pub fn reconfigure(&self, settings: RunnerSettings) {
        *self.inner.settings.write().expect("poisoned") = settings;
        self.inner.wake.notify_one();
    }

    /// A job was queued here: look now instead of at the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a job running in this process at once (others see the flag at their next lease renewal).
    pub fn cancel_local(&self, id: i64) {
        if let Some(r) = self.inner.running.lock().expect("poisoned").get(&id) {
            r.cancel.cancel();
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

    /// Queued and running jobs by task (all processes), as last seen by the claim loop.
    pub fn depth(&self) -> BTreeMap<String, (i64, i64)> {
        self.inner.depth.read().expect("poisoned").clone()
    }

    pub fn buffered_lines(&self) -> usize {
        self.inner.output.pending()
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
        let claim_loop = inner.claim_loop.lock().expect("poisoned").take();
        if let Some(task) = claim_loop {
            let _ = task.await;
        }
        let (running_at_start, requeued_now) = {
            let running = inner.running.lock().expect("poisoned");
            let requeued = running
                .values()
                .filter(|r| r.on_shutdown == OnShutdown::Requeue)
                .map(|r| r.requeue.cancel())
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
                    r.requeue.cancel();
                    *id
                })
                .collect()
        };
        ctx.status(format!(
            "draining: stopping {} jobs that outlived shutdown.jobs_drain",
            cut.len()
        ));
        inner.jobs.wait().await;
        StageOutcome::Cut(format!(
            "stopped {} jobs still running ({:?}) and put them back in the queue",
            cut.len(),
            cut
        ))
    }

    /// The `flush` stage: stop the periodic flusher and write every buffered line.
    pub async fn flush(&self) -> StageOutcome {
        self.inner.stop_flushing.cancel();
        let flush_loop = self.inner.flush_loop.lock().expect("poisoned").take();
        if let Some(task) = flush_loop {
            let _ = task.await;
        }
        loop {
            match self.inner.output.flush().await {
                Ok(n) => return StageOutcome::Done(format!("{n} buffered output lines written")),
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
        }
        if let Err(e) = inner.output.flush().await {
            tracing::warn!(error = %e, pending = inner.output.pending(), "cannot write job output; keeping it buffered and retrying");
        }
    }
}

async fn claim_loop(inner: Arc<Inner>) {
    let mut last_depth = Instant::now() - Duration::from_secs(3600);
    let mut swept_unknown = false;
    loop {
        if inner.stop_claiming.is_cancelled() {
            return;
        }
        let settings = inner.settings.read().expect("poisoned").clone();
        if !swept_unknown {
            let known: Vec<String> = settings.tasks.keys().cloned().collect();
            match inner.store.fail_unknown_tasks(&known).await {
                Ok(0) => swept_unknown = true,
                Ok(n) => {
                    swept_unknown = true;
                    tracing::warn!("failed {n} queued jobs whose task is no longer configured");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check for jobs of removed tasks; will retry")
                }
            }
        }
        if last_depth.elapsed() >= settings.poll_interval {
            last_depth = Instant::now();
            if let Ok(counts) = inner.store.counts_active().await {
                *inner.depth.write().expect("poisoned") = counts;
            }
        }
        let available = available_tasks(&inner, &settings);
        if !available.is_empty() {
            match inner
                .store
                .claim(&inner.owner, &available, settings.lease)
                .await
            {
                Ok(Some(job)) => {
                    let task = settings.tasks.get(&job.task).cloned();
                    spawn_job(&inner, job, task, settings.lease);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim jobs; retrying in jobs.poll_interval")
                }
            }
        }
        tokio::select! {
            _ = inner.stop_claiming.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

/// Tasks this process may start a job of now (worker and per-task limits).
fn available_tasks(inner: &Inner, settings: &RunnerSettings) -> Vec<String> {
    let running = inner.running.lock().expect("poisoned");
    if running.len() >= settings.workers {
        return Vec::new();
    }
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for r in running.values() {
        *per_task.entry(r.task.as_str()).or_default() += 1;
    }
    settings
        .tasks
        .iter()
        .filter(|(name, task)| {
            per_task.get(name.as_str()).copied().unwrap_or(0) < task.config.concurrency as usize
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn spawn_job(inner: &Arc<Inner>, job: Job, task: Option<Arc<Task>>, lease: Duration) {
    let running = Running {
        task: job.task.clone(),
        started: Instant::now(),
        on_shutdown: task
            .as_ref()
            .map(|t| t.config.on_shutdown)
            .unwrap_or_default(),
        cancel: CancellationToken::new(),
        requeue: CancellationToken::new(),
    };
    let cancel = running.cancel.clone();
    let requeue = running.requeue.clone();
    inner
        .running
        .lock()
        .expect("poisoned")
        .insert(job.id, running);
    let inner2 = inner.clone();
    inner.jobs.spawn(async move {
        let id = job.id;
        run_job(&inner2, job, task, lease, cancel, requeue).await;
        inner2.running.lock().expect("poisoned").remove(&id);
        inner2.wake.notify_one();
    });
}

/// Appends lines of one attempt to the buffer, numbering them.
#[derive(Clone)]
struct JobOutput {
    buffer: Arc<OutputBuffer>,
    job_id: i64,
    attempt: i64,
    seq: Arc<AtomicI64>,
}

impl JobOutput {
    fn push(&self, stream: &'static str, line: String) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.buffer.push(OutputLine {
            job_id: self.job_id,
            seq,
            attempt: self.attempt,
            stream,
            at: now_ms(),
            line,
        });
    }

    fn note(&self, line: impl Into<String>) {
        self.push("shiftd", line.into());
    }
}

async fn run_job(
    inner: &Arc<Inner>,
    job: Job,
    task: Option<Arc<Task>>,
    lease: Duration,
    cancel: CancellationToken,
    requeue: CancellationToken,
) {
    let started = Instant::now();
    let Some(last_seq) = persist("read the job's output position", lease, || {
        inner.store.last_seq(job.id)
    })
    .await
    else {
        // The database is away; the lease will expire and the job will be claimed again.
        return;
    };
    let out = JobOutput {
        buffer: inner.output.clone(),
        job_id: job.id,
        attempt: job.attempts,
        seq: Arc::new(AtomicI64::new(last_seq)),
    };
    let refuse = |error: String| Finish {
        state: JobState::Failed,
        exit_code: None,
        exit_signal: None,
        error: Some(error),
    };
    let prepared = match &task {
        None => Err(refuse(format!(
            "task `{}` is not configured on this server",
            job.task
        ))),
        Some(_) if job.attempts > job.max_attempts => Err(refuse(format!(
            "gave up after {} attempts (the last ones were lost with their worker; see the output)",
            job.max_attempts
        ))),
        Some(task) => {
            let given = job.params.as_object().cloned().unwrap_or_default();
            task.check_params(&given)
                .and_then(|p| task.argv(&p))
                .map_err(|e| refuse(format!("parameters no longer valid: {e}")))
        }
    };
    let argv = match prepared {
        Ok(argv) => argv,
        Err(mut finish) => {
            out.note(finish.error.clone().unwrap_or_default());
            finish.state = JobState::Failed;
            let no_retry = Job {
                attempts: job.max_attempts,
                ..job.clone()
            };
            record(
                inner,
                &no_retry,
                &out,
                Stop::Exited,
                finish,
                Duration::ZERO,
                lease,
                started,
            )
            .await;
            return;
        }
    };
    let task = task.expect("checked above");
    let cfg = &task.config;
    out.note(format!(
        "attempt {} of {} on {}: {:?}",
        job.attempts, job.max_attempts, inner.owner, argv
    ));

    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .envs(&cfg.env)
        .env("JOB_ID", job.id.to_string())
        .env("JOB_TASK", &job.task)
        .env("JOB_ATTEMPT", job.attempts.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or a stop reaches everything it started.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &cfg.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let error = format!(
                "cannot start {}: {e}; check tasks.{}.command and working_dir",
                argv[0], job.task
            );
            out.note(error.clone());
            record(
                inner,
                &job,
                &out,
                Stop::Exited,
                refuse(error),
                cfg.retry_backoff,
                lease,
                started,
            )
            .await;
            return;
        }
    };
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

    let timeout = tokio::time::sleep(cfg.timeout);
    tokio::pin!(timeout);
    let mut renew = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
    let mut cancel_check =
        tokio::time::interval(inner.settings.read().expect("poisoned").poll_interval);
    let (stop, status) = loop {
        tokio::select! {
            status = child.wait() => break (Stop::Exited, status.ok()),
            _ = timeout.as_mut() => break (Stop::Timeout, None),
            _ = cancel.cancelled() => break (Stop::Cancelled, None),
            _ = requeue.cancelled() => break (Stop::Shutdown, None),
            _ = renew.tick() => match inner.store.renew(job.id, &inner.owner, lease).await {
                Ok(Some(true)) => cancel.cancel(),
                Ok(Some(false)) => {}
                Ok(None) => break (Stop::LeaseLost, None),
                Err(e) => tracing::warn!(job = job.id, error = %e, "cannot renew the job's lease; it keeps running and will retry"),
            },
            _ = cancel_check.tick() => {
                if let Ok(Some(current)) = inner.store.get(job.id).await {
                    if current.cancel_requested {
                        cancel.cancel();
                    }
                }
            }
        }
    };
    let status = match (status, pgid) {
        (Some(status), Some(pgid)) => {
            // The job is its process group: what it left running in the background goes
            // with it, rather than escaping until systemd's final SIGKILL at the next stop.
            if killpg(pgid, Signal::SIGKILL).is_ok() {
                out.note("the command exited but left processes running; killed them");
            }
            Some(status)
        }
        (Some(status), None) => Some(status),
        (None, Some(pgid)) => {
            let why = match stop {
                Stop::Timeout => format!(
                    "timed out after {}; stopping it",
                    humantime::format_duration(cfg.timeout)
                ),
                Stop::Cancelled => "cancelled; stopping it".to_string(),
                Stop::Shutdown => {
                    "the service is stopping; stopping it to run again after the restart"
                        .to_string()
                }
                _ => "its lease was taken by another worker; stopping it".to_string(),
            };
            out.note(why);
            Some(stop_group(&mut child, pgid, cfg.kill_grace, &out).await)
        }
        (None, None) => None,
    };
    // Readers end at EOF; a grandchild that kept the pipe open must not hold us.
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(cfg.kill_grace.max(Duration::from_secs(1)), reader)
            .await
            .is_err()
        {
            abort.abort();
            out.note(
                "output still open after the process ended (a background child?); stopped reading",
            );
        }
    }
    let finish = describe(stop, status, &job.task, cfg.timeout);
    out.note(match &finish.error {
        Some(error) => error.clone(),
        None => status_text(finish.exit_code, finish.exit_signal),
    });
    record(
        inner,
        &job,
        &out,
        stop,
        finish,
        cfg.retry_backoff,
        lease,
        started,
    )
    .await;
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
        Stop::Shutdown | Stop::LeaseLost => (JobState::Queued, None),
    };
    Finish {
        state,
        exit_code,
        exit_signal,
        error,
    }
}

/// Writes the output, then the outcome, retrying through database blips while the lease lasts.
#[allow(clippy::too_many_arguments)]
async fn record(
    inner: &Arc<Inner>,
    job: &Job,
    out: &JobOutput,
    stop: Stop,
    finish: Finish,
    backoff: Duration,
    lease: Duration,
    started: Instant,
) {
    // Output first, so whoever sees the final state can read the whole log.
    let _ = persist("write the job's output", lease, || inner.output.flush()).await;
    let _ = out;
    match stop {
        Stop::LeaseLost => {}
        Stop::Shutdown => {
            if persist("put the job back in the queue", lease, || {
                inner.store.requeue(job.id, &inner.owner)
            })
            .await
            .is_some()
            {
                tracing::info!(job = job.id, task = %job.task, "job stopped by the shutdown and requeued");
            }
        }
        _ => {
            let backoff = backoff.saturating_mul(1 << (job.attempts.clamp(1, 16) - 1) as u32);
            let retry = finish.state == JobState::Failed && job.attempts < job.max_attempts;
            if persist("record the job's outcome", lease, || {
                inner.store.finish(job, &inner.owner, &finish, backoff)
            })
            .await
            .is_some()
            {
                let outcome = if retry {
                    "retry"
                } else {
                    finish.state.as_str()
                };
                tracing::info!(job = job.id, task = %job.task, attempt = job.attempts, outcome, error = finish.error.as_deref().unwrap_or(""), "job attempt ended: {outcome}");
            }
        }
    }
    (inner.on_attempt)(
        &job.task,
        match stop {
            Stop::Shutdown => "requeued",
            Stop::LeaseLost => "lost",
            _ => finish.state.as_str(),
        },
        started.elapsed(),
    );
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
        match f().await {
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
                out.push(name, String::from_utf8_lossy(&buf).into_owned());
            }
            Err(e) => {
                out.note(format!("reading {name} failed: {e}"));
                return;
            }
        }
    }
}
