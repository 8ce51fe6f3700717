//! shiftd itself: its startup steps, router, reload and stop plan, put onto the lifecycle.
//!
//! This is the one place that knows both sides: the lifecycle (which knows nothing of
//! jobs, routes or SQL) and the application parts (which never read signals or
//! the service manager's notify socket).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::config::REQUEUE_ALLOWANCE;
use crate::config::{Config, ConfigError};
use crate::db::{self, Db};
use crate::http::{self, AppState, Auth, JobsState, Metrics, Snapshot};
use crate::jobs::{Runner, RunnerSettings, Store, Task};
use crate::lifecycle::{
    self, App, Lifecycle, Notifier, Report, SettingNames, SignalStream, Stage, StageOutcome,
    StageSpec, StartupError, Step, StopReport, SystemdEnv,
};
use crate::logging::LogControl;

/// Everything `serve` needs from `main` (or from a test).
pub struct ServeOptions {
    pub config: Config,
    /// Where the configuration came from; a reload reads it again.
    pub config_path: Option<PathBuf>,
    pub config_load_time: Duration,
    pub systemd: SystemdEnv,
    pub notifier: Notifier,
    pub signals: SignalStream,
    /// `None` in tests that do not own the global logger.
    pub log: Option<LogControl>,
    /// Whether this process may start a successor (the real binary: yes; in-process tests: no).
    pub hand_over: bool,
}

/// What shiftd's configuration calls the lifecycle's settings, for the messages that name them.
/// What shiftd calls the hand-over's variable, command and timeout setting.
pub const HAND_OVER_NAMES: lifecycle::HandOverNames = lifecycle::HandOverNames {
    env_var: "SHIFTD_HANDOVER",
    reload_command: "shiftd reload",
    ready_setting: SETTING_NAMES.step_timeout,
};

pub const SETTING_NAMES: SettingNames = SettingNames {
    listen: "http.listen",
    step_timeout: "startup.step_timeout",
    grace: "shutdown.grace",
};

/// The lifecycle's part of the configuration.
pub fn lifecycle_settings(config: &Config) -> lifecycle::Settings {
    lifecycle::Settings {
        header_read_timeout: config.http.header_read_timeout,
        step_timeout: config.startup.step_timeout,
        grace: config.shutdown.grace,
        idle_close: config.shutdown.idle_close,
        names: SETTING_NAMES,
    }
}

const DATABASE_CONNECT: &str = "database connect";
const MIGRATE: &str = "migrate";
const WARM_UP: &str = "warm-up";

/// The startup steps [`start`] runs, in order, each bounded by `startup.step_timeout`. The
/// unit's `TimeoutStartSec=` and a hand-over's wait are sized from this list
/// ([`startup_budget`]).
pub const STARTUP_STEPS: &[&str] = &[lifecycle::LISTENER_STEP, DATABASE_CONNECT, MIGRATE, WARM_UP];

/// The most the startup steps may take together: each of [`STARTUP_STEPS`] at
/// `startup.step_timeout`.
pub fn startup_budget(config: &Config) -> Duration {
    config.startup.step_timeout * STARTUP_STEPS.len() as u32
}

/// Where `shiftd reload` finds the running process: in the state directory, which the unit
/// already makes writable (no extra mount in the sandbox) and only the service's user and
/// group can enter.
pub fn control_path() -> PathBuf {
    db::state_dir().join("control.sock")
}

/// How long a hand-over waits for the new process to be ready: its startup steps, each
/// bounded by `startup.step_timeout`. `TimeoutStartSec=` (which also bounds `ExecReload=`)
/// is this plus a margin, so `shiftd reload` always hears the outcome.
pub fn hand_over_timeout(config: &Config) -> Duration {
    startup_budget(config)
}

/// Starts, serves until a stop signal, and stops in order.
pub async fn serve(options: ServeOptions) -> Result<StopReport, StartupError> {
    let ServeOptions {
        config,
        config_path,
        config_load_time,
        systemd,
        notifier,
        signals,
        log,
        hand_over,
    } = options;
    let mut life = Lifecycle::new(lifecycle_settings(&config), systemd, notifier, signals);
    life.record_step("config", config_load_time);
    if hand_over {
        life.enable_hand_over(lifecycle::HandOverSettings::from_current_process(
            control_path(),
            hand_over_timeout(&config),
            HAND_OVER_NAMES,
        ));
    }
    match start(&mut life, config, config_path, log).await {
        Ok((listener, router, app)) => {
            let report = life.serve(listener, router, app).await;
            // At the very end: the pool is closed; this is a file, and never fails the stop.
            crate::stops::record(&report, env!("CARGO_PKG_VERSION"));
            Ok(report)
        }
        Err(e) => {
            // A process started by a hand-over tells its predecessor why, so the reload fails
            // with the reason while the predecessor keeps serving.
            life.report_startup_failure(&e).await;
            Err(e)
        }
    }
}

/// The startup steps, up to a router ready to serve.
async fn start(
    life: &mut Lifecycle,
    config: Config,
    config_path: Option<PathBuf>,
    log: Option<LogControl>,
) -> Result<(lifecycle::Listener, axum::Router, Arc<dyn App>), StartupError> {
    let (listener, db, notice_settings) = timed_steps(life, &config).await?;
    let auth = auth_and_tasks(&config)?;
    // Everything that can fail is done: after a hand-over, become the main process before
    // the runner claims a job.
    life.take_over().await?;
    let body_limit = usize::try_from(config.http.body_limit.0).unwrap_or(usize::MAX);
    let state =
        app_state(config, db.clone(), life.handle(), auth).map_err(|e| StartupError::Failed {
            step: e.step(),
            message: e.to_string(),
        })?;
    if let Some(last) = crate::stops::last() {
        state.metrics.previous_stop(&last.stage_seconds());
    }
    let router = http::router(state.clone(), body_limit);
    let notices = start_notices(&life.handle(), &state, &db, notice_settings);
    state.start_work();
    let app: Arc<dyn App> = Arc::new(Shiftd {
        state,
        config_path,
        log,
        notices,
    });
    Ok((listener, router, app))
}

/// The steps of [`STARTUP_STEPS`], each under `startup.step_timeout`: the listening socket,
/// the database, its schema, a warm pool.
async fn timed_steps(
    life: &mut Lifecycle,
    config: &Config,
) -> Result<(lifecycle::Listener, Db, crate::notices::NoticeSettings), StartupError> {
    let listener = life.listener(&config.http.listen).await?;
    let backend = config.backend();
    let database = config.database.clone();
    let db = life
        .step(
            DATABASE_CONNECT,
            Step::Required,
            "check database.url and that the database server is up",
            db::connect(&database, backend),
        )
        .await?
        .expect("required");
    // The tasks whose jobs get notices are recorded with the schema, before any job can
    // change state here.
    let notice_settings =
        crate::notices::NoticeSettings::from_config(config).map_err(|e| StartupError::Failed {
            step: "notices",
            message: e.to_string(),
        })?;
    life.step(MIGRATE, Step::Required, "check the database log", async {
        db.migrate().await.map_err(|e| e.to_string())?;
        crate::notices::sync_tasks(&Store::new(&db), &notice_settings)
            .await
            .map_err(|e| format!("cannot record which tasks have a notify_url: {e}"))
    })
    .await?;
    life.step(
        WARM_UP,
        Step::Optional,
        "readiness probes may be slow at first",
        warm_up(&db),
    )
    .await?;
    Ok((listener, db, notice_settings))
}

/// The tokens and the tasks' rules, checked before this process takes over.
fn auth_and_tasks(config: &Config) -> Result<Auth, StartupError> {
    let auth = Auth::from_config(&config.auth).map_err(|e| StartupError::Failed {
        step: "auth",
        message: e.to_string(),
    })?;
    Task::all(&config.tasks).map_err(|e| StartupError::Failed {
        step: "tasks",
        message: e.to_string(),
    })?;
    if !auth.enabled() {
        tracing::warn!("no [[auth.tokens]] configured: anyone who can reach the port may start jobs; add a token to require one");
    }
    Ok(auth)
}

/// Starts notice delivery. It ends as the stop begins: a POST in flight is abandoned, its
/// notice stays in the outbox for the next process.
fn start_notices(
    lifecycle: &lifecycle::Handle,
    state: &AppState,
    db: &Db,
    settings: crate::notices::NoticeSettings,
) -> crate::notices::Deliverer {
    let notices_stop = tokio_util::sync::CancellationToken::new();
    {
        let stopping = lifecycle.stopping();
        let token = notices_stop.clone();
        tokio::spawn(async move {
            stopping.await;
            token.cancel();
        });
    }
    let (m1, m2) = (state.metrics.clone(), state.metrics.clone());
    crate::notices::Deliverer::start(
        Store::new(db),
        settings,
        notices_stop,
        crate::notices::Hooks {
            outcome: Arc::new(move |task: &str, outcome: &str| m1.notice(task, outcome)),
            pending: Arc::new(move |n: i64| m2.notices_pending(n)),
        },
    )
}

/// Why [`app_state`] could not build the state.
#[derive(Debug, thiserror::Error)]
pub enum AppStateError {
    #[error(transparent)]
    Tasks(#[from] ConfigError),
    #[error("cannot start the thread that starts jobs: {0}")]
    Runner(#[from] std::io::Error),
}

impl AppStateError {
    /// The startup step it belongs to.
    pub fn step(&self) -> &'static str {
        match self {
            AppStateError::Tasks(_) => "tasks",
            AppStateError::Runner(_) => "job runner",
        }
    }
}

/// The state handlers share, with the job runner and the scheduler built but not started
/// ([`AppState::start_work`] starts them; `start` does, as the last startup step). Tests
/// build theirs with it too. Fails when a task's parameter rule does not compile or the
/// thread that starts jobs cannot start.
pub fn app_state(
    config: Config,
    db: Db,
    lifecycle: lifecycle::Handle,
    auth: Auth,
) -> Result<AppState, AppStateError> {
    let tasks = Task::all(&config.tasks)?;
    let metrics = Arc::new(Metrics::default());
    let store = Store::new(&db);
    store.set_notice_tasks(crate::notices::notify_tasks(&config));
    let runner = {
        let metrics = metrics.clone();
        let on_attempt = Arc::new(move |task: &str, outcome: &str, took: Duration| {
            metrics.job_attempt(task, outcome, took)
        });
        Runner::new(
            store.clone(),
            RunnerSettings::from_config(&config, tasks.clone()),
            on_attempt,
        )?
    };
    let scheduler = crate::jobs::Scheduler::new(
        store.clone(),
        runner.clone(),
        crate::jobs::SchedulerSettings::from_config(&config, &tasks),
    );
    let jobs = JobsState {
        store,
        runner,
        scheduler,
    };
    let snapshot = Snapshot {
        config,
        tasks,
        auth,
    };
    Ok(AppState::new(lifecycle, db, snapshot, jobs, metrics))
}

/// Fills the pool's first connection and checks a trivial query, so the first request
/// does not pay for it.
async fn warm_up(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .map(|_| ())
}

struct Shiftd {
    state: AppState,
    config_path: Option<PathBuf>,
    log: Option<LogControl>,
    notices: crate::notices::Deliverer,
}

impl Shiftd {
    fn apply(&self, new: Config) -> Result<lifecycle::Settings, ConfigError> {
        warn_restart_settings(&self.state.snapshot().config, &new);
        // Everything that can fail comes before the first change, so a refused reload
        // leaves the previous configuration whole.
        let auth = Auth::from_config(&new.auth)?;
        let tasks = Task::all(&new.tasks)?;
        let notice_settings = crate::notices::NoticeSettings::from_config(&new)?;
        if let Some(log) = &self.log {
            log.set_level(&new.log.level).map_err(|m| ConfigError {
                key: "log.level".into(),
                message: m,
            })?;
        }
        let jobs = &self.state.jobs;
        jobs.runner
            .reconfigure(RunnerSettings::from_config(&new, tasks.clone()));
        jobs.scheduler
            .reconfigure(crate::jobs::SchedulerSettings::from_config(&new, &tasks));
        jobs.store
            .set_notice_tasks(crate::notices::notify_tasks(&new));
        self.notices.reconfigure(notice_settings);
        let settings = lifecycle_settings(&new);
        // What requests see, all at once: tokens, tasks, timeouts and the rest.
        self.state.replace(Snapshot {
            config: new,
            tasks,
            auth,
        });
        Ok(settings)
    }
}

/// Warns about the settings a reload cannot change.
fn warn_restart_settings(old: &Config, new: &Config) {
    for (key, changed) in [
        ("http.listen", old.http.listen != new.http.listen),
        (
            "http.body_limit",
            old.http.body_limit != new.http.body_limit,
        ),
        ("database", old.database != new.database),
    ] {
        if changed {
            tracing::warn!(
                key,
                "{key} changed; it takes effect at the next restart, not on reload"
            );
        }
    }
}

impl App for Shiftd {
    fn report(&self) -> Report {
        let pool = self.state.db.stats();
        let depth = self.state.jobs.runner.depth();
        let running = self.state.jobs.runner.running();
        let queued: i64 = depth.values().map(|(q, _)| q).sum();
        let mut line = format!(
            "{}: {queued} jobs queued, {} running here",
            self.state.lifecycle.state().as_str(),
            running.len()
        );
        if let Some(longest) = running.first() {
            line += &format!(" (longest {}s)", longest.age_seconds);
        }
        let paused = self.state.jobs.runner.paused();
        if !paused.is_empty() {
            let names: Vec<&str> = paused.keys().map(String::as_str).collect();
            line += &format!("; paused: {}", names.join(", "));
        }
        // STATUS= tells the truth: a service that cannot write says so first.
        if let Some(fault) = self.state.jobs.runner.storage_fault() {
            line = format!("{line}; {}", fault.reason);
        }
        let per_task: Vec<String> = depth
            .iter()
            .map(|(t, (q, r))| format!("{t}:{q}q/{r}r"))
            .collect();
        let ages: Vec<String> = running
            .iter()
            .map(|j| format!("{}#{}:{}s", j.task, j.id, j.age_seconds))
            .collect();
        Report {
            status_line: line,
            details: format!(
                "queue=[{}] running=[{}] in_flight={} connections={} pool_size={} pool_idle={} pool_max={} grace={}",
                per_task.join(" "),
                ages.join(" "),
                self.state.lifecycle.in_flight(),
                self.state.lifecycle.connections(),
                pool.size,
                pool.idle,
                pool.max,
                crate::config::fmt_duration(self.state.snapshot().config.shutdown.grace)
            ),
        }
    }

    fn reload(&self) -> BoxFuture<'_, Result<lifecycle::Settings, String>> {
        async move {
            let path = self.config_path.clone();
            let loaded = tokio::task::spawn_blocking(move || Config::load(path.as_deref()))
                .await
                .map_err(|e| format!("reading the configuration failed: {e}"))?;
            let new = loaded.map_err(|e| e.to_string())?;
            // Tasks that gain a notify_url get notices from the first state change after
            // the reload: recorded before the new configuration applies.
            let notices =
                crate::notices::NoticeSettings::from_config(&new).map_err(|e| e.to_string())?;
            let limit = new.startup.step_timeout;
            match tokio::time::timeout(
                limit,
                crate::notices::sync_tasks(&self.state.jobs.store, &notices),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("cannot record which tasks have a notify_url ({e}); the reload was refused, try again once the database answers")),
                Err(_) => return Err(format!("recording which tasks have a notify_url took longer than startup.step_timeout ({}); the reload was refused, try again once the database answers", crate::config::fmt_duration(limit))),
            }
            self.apply(new).map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn stop_plan(&self) -> Vec<Stage> {
        stop_plan(
            &self.state.snapshot().config,
            self.state.db.clone(),
            self.state.jobs.runner.clone(),
        )
    }
}

/// The stop, in order, each stage described with its budget: what [`stop_plan`] runs, and
/// what `Config::validate`, `shiftd check` and `/v1/status` size the stop from
/// ([`lifecycle::stop_budget`]). This list is the only place the order is written down;
/// ARCHITECTURE.md describes it.
pub fn stop_stages(config: &Config) -> Vec<StageSpec> {
    let s = &config.shutdown;
    vec![
        // 1. STOPPING=1 and readyz 503 happen as the stop begins; then stop accepting.
        StageSpec::stop_accepting(),
        // 2. In-flight requests finish, answered with `Connection: close`.
        StageSpec::http_drain("shutdown.http_drain", s.http_drain),
        // 3. Running jobs: `finish` ones run on, the rest are stopped and requeued. After
        //    the drain budget: SIGTERM, `kill_grace`, SIGKILL, then the requeue is written.
        StageSpec::waiting(
            "jobs",
            "shutdown.jobs_drain",
            s.jobs_drain,
            config.max_kill_grace() + REQUEUE_ALLOWANCE,
        )
        .cut_note("to stop jobs (longest kill_grace + 1s)")
        .outlasting_hand_over(),
        // 4. Buffers (job output) to the database.
        StageSpec::finishing("flush", "shutdown.flush", s.flush),
        // 5. The pool, bounded: sqlx's close() waits forever for connections in use.
        StageSpec::finishing("db-close", "shutdown.db_close", s.db_close),
    ]
}

/// [`stop_stages`] with their work.
pub fn stop_plan(config: &Config, db: Db, runner: Runner) -> Vec<Stage> {
    let db_close = config.shutdown.db_close;
    let flusher = runner.clone();
    let [accept, http, jobs, flush, close]: [StageSpec; 5] = stop_stages(config)
        .try_into()
        .expect("stop_stages lists five stages");
    vec![
        accept.into_stage(),
        http.into_stage(),
        jobs.with_work(move |ctx| async move { runner.drain(ctx).await }.boxed()),
        flush.with_work(move |_ctx| async move { flusher.flush().await }.boxed()),
        close.with_work(move |_ctx| {
            async move {
                if db.close(db_close).await {
                    StageOutcome::Done("database pool closed".into())
                } else {
                    StageOutcome::Cut("connections still in use were abandoned".into())
                }
            }
            .boxed()
        }),
    ]
}
