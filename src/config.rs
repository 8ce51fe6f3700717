//! Configuration: the TOML file, `SHIFTD_<SECTION>__<KEY>` overrides, defaults and validation.
//!
//! Layering is defaults < file < environment. Every problem is reported as one
//! [`ConfigError`] naming the key and what is allowed; `main` turns it into exit code 78.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Where the packaged configuration lives; used when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/shiftd/shiftd.toml";

/// Time to write a stopped job back to the queue after its last SIGKILL.
pub const REQUEUE_ALLOWANCE: Duration = Duration::from_secs(1);

/// The environment prefix for overrides, as in `SHIFTD_HTTP__LISTEN`.
pub const ENV_PREFIX: &str = "SHIFTD";

/// A configuration problem: which key, and what would be accepted.
///
/// Shown as one line that names the key, says what is wrong and what to do, because it is
/// often all an operator sees: `shiftd serve` prints it before exiting 78 (systemd does not
/// restart on 78), and a refused reload logs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error at `{key}`: {message}; fix it, `shiftd check` confirms the fix")]
pub struct ConfigError {
    /// Dotted path of the offending key (`shutdown.grace`), or the file for read errors.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration of a shiftd process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub startup: StartupConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub jobs: JobsConfig,
    pub auth: AuthConfig,
    /// Operator-defined commands clients may start, by name.
    pub tasks: BTreeMap<String, TaskConfig>,
    /// Delivery of job notices to the tasks' `notify_url`.
    pub notices: NoticesConfig,
    /// The dashboard at `/ui/`.
    pub ui: UiConfig,
}

/// The dashboard (src/ui): how long a login lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// How long a dashboard session lasts after its login (the cookie's expiry).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// The longest session the dashboard gives out: a month.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

impl UiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.session_ttl < Duration::from_secs(60) || self.session_ttl > MAX_SESSION_TTL {
            return Err(ConfigError::new("ui.session_ttl", "must be from 1m to 31d"));
        }
        Ok(())
    }
}

/// Bounds of notice delivery (src/notices.rs), shared by every task with a `notify_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoticesConfig {
    /// Longest time one POST may take (connect, send, answer); longer is a failed try.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries per notice; after the last failed one it is given up with a warning.
    pub max_attempts: u32,
    /// A notice not delivered this long after its event is given up with a warning.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Wait after the first failed try; doubles with each further one, up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Notices this process sends at once.
    pub concurrency: u32,
    /// How often the outbox is looked at for notices that are due.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NoticesConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 25,
            max_age: Duration::from_secs(24 * 3600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Most notices one process sends at once.
pub const MAX_NOTICE_CONCURRENCY: u32 = 256;

impl NoticesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("notices.timeout", self.timeout)?;
        positive("notices.max_age", self.max_age)?;
        positive("notices.backoff", self.backoff)?;
        positive("notices.poll_interval", self.poll_interval)?;
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "notices.max_attempts",
                "must be at least 1",
            ));
        }
        if self.backoff_max < self.backoff {
            return Err(ConfigError::new(
                "notices.backoff_max",
                "must be at least notices.backoff",
            ));
        }
        if !(1..=MAX_NOTICE_CONCURRENCY).contains(&self.concurrency) {
            return Err(ConfigError::new(
                "notices.concurrency",
                format!("must be 1 to {MAX_NOTICE_CONCURRENCY}"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind when systemd does not pass a socket.
    pub listen: String,
    /// Longest time one request may take before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest time a connection may take to send a complete request head. It also
    /// bounds how long an idle keep-alive connection is kept open between requests.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request body accepted, e.g. "1MiB" or a number of bytes.
    pub body_limit: ByteSize,
    /// Longest time a client may take to send a request body; a slower one is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest time one `follow` stream of a job's log stays open; it then ends cleanly and
    /// the client asks again from the last line it has (`after`), as it does at a restart.
    #[serde(with = "humantime_serde")]
    pub follow_max: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_limit: ByteSize(1024 * 1024),
            body_read_timeout: Duration::from_secs(10),
            follow_max: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty: an embedded SQLite file in the state directory. Else `sqlite://...` or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
    /// Bound on connecting and on waiting for a free connection from the pool.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartupConfig {
    /// Bound on each startup step (listener, database connect, migrate, warm-up).
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Bound on the whole stop. The stage budgets below must fit inside it.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// In-flight requests may finish for this long.
    #[serde(with = "humantime_serde")]
    pub http_drain: Duration,
    /// During the drain, a keep-alive connection that has served a request and has none in
    /// progress gets this long to send another (answered with `Connection: close`) before
    /// it is closed. A connection whose first request has not arrived is always answered.
    #[serde(with = "humantime_serde")]
    pub idle_close: Duration,
    /// Running jobs whose task says `on_shutdown = "finish"` may run on for this long.
    #[serde(with = "humantime_serde")]
    pub jobs_drain: Duration,
    /// Writing buffered job output to the database.
    #[serde(with = "humantime_serde")]
    pub flush: Duration,
    /// Closing the database pool.
    #[serde(with = "humantime_serde")]
    pub db_close: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
            http_drain: Duration::from_secs(10),
            idle_close: Duration::from_millis(250),
            jobs_drain: Duration::from_secs(30),
            flush: Duration::from_secs(5),
            db_close: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or `shiftd=debug,sqlx=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// Largest `jobs.batch_max` (the store inserts a large batch in several statements of one
/// transaction, so no backend's bind limit is reached).
pub const MAX_BATCH: u32 = 10_000;
/// Largest `jobs.prefetch`.
pub const MAX_PREFETCH: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs running at once in this process, over all tasks.
    pub workers: u32,
    /// How often an idle worker looks for queued jobs (it is also woken by local enqueues).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A running job whose worker stopped renewing its lease for this long is claimed again.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Job output is buffered in memory and written to the database this often.
    #[serde(with = "humantime_serde")]
    pub log_flush_interval: Duration,
    /// Output kept per attempt of a job, unless its task sets its own `max_output`; past it
    /// the job's further output is discarded (the job goes on) and a line says how much.
    pub max_output: ByteSize,
    /// Job output held in memory before it is written. When full, the jobs' pipes are not
    /// read until a write makes room (the jobs wait on their own output); nothing is dropped.
    pub output_buffer: ByteSize,
    /// Finished jobs and their output are deleted this long after they ended.
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
    /// The most jobs claimed ahead of the free workers, held in a local queue so one claim
    /// statement serves several jobs (never past a task's `concurrency`). How many are
    /// claimed ahead adapts (`jobs::ClaimDepth`): enough to cover a claim's round trip at
    /// the pace jobs are starting (twice over), at least 1 and at most this. Short jobs
    /// reach this ceiling; long jobs keep 1 ahead, so a node whose workers are busy leaves
    /// the queue to the others. No claim is made while no worker is free. A job waits
    /// there at most a quarter of `lease` (then it goes back to the queue, its attempt not
    /// counted). 0: claim only for free workers. 0 to 1000.
    pub prefetch: u32,
    /// Most jobs one `POST /v1/tasks/{task}/jobs:batch` may add (1 to 10000).
    pub batch_max: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            log_flush_interval: Duration::from_millis(500),
            max_output: ByteSize(16 << 20),
            output_buffer: ByteSize(4 << 20),
            retain: Duration::from_secs(14 * 24 * 3600),
            prefetch: 96,
            batch_max: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens. With none configured, the job API is open (a warning says so at startup).
    pub tokens: Vec<TokenConfig>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs instead of the secret.
    pub name: String,
    /// The secret itself; prefer `secret_file`.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing whitespace is ignored).
    pub secret_file: Option<PathBuf>,
    /// Task names this token may start; `"*"` means all.
    pub tasks: Vec<String>,
}

impl TokenConfig {
    /// The secret, read from `secret_file` when that is how it is given.
    pub fn resolve_secret(&self, index: usize) -> Result<String, ConfigError> {
        let key = format!("auth.tokens[{index}]");
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError::new(
                        format!("{key}.secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim_end()
                .to_string(),
            _ => {
                return Err(ConfigError::new(
                    key,
                    "give exactly one of `secret` or `secret_file`",
                ))
            }
        };
        if secret.len() < 16 {
            return Err(ConfigError::new(
                key,
                "the secret must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(secret)
    }
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("tasks", &self.tasks)
            .finish()
    }
}

/// What a running job does when the service stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Let it run on for up to `shutdown.jobs_drain`.
    #[default]
    Finish,
    /// Stop it now and run it again after the restart.
    Requeue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// argv. An argument that is exactly `{name}` is replaced by that parameter; `{{name}}`
    /// is the literal `{name}`; every other brace is literal (`sh -c 'echo ${HOME}'` works).
    pub command: Vec<String>,
    /// Allowed parameters, each with the regex its value must match in full.
    pub params: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Jobs of this task running at once in one process.
    pub concurrency: u32,
    pub max_attempts: u32,
    /// Wait before a failed attempt runs again; doubles each attempt.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    pub on_shutdown: OnShutdown,
    /// Between SIGTERM and SIGKILL to the job's process group.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Output kept per attempt; unset: `jobs.max_output`.
    pub max_output: Option<ByteSize>,

    // Schedules.
    /// Cron expression: five fields (minute hour day-of-month month day-of-week), or six
    /// with a leading seconds field. Each occurrence enqueues one job (no parameters).
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in, e.g. "Europe/Berlin".
    pub timezone: String,
    /// After downtime: run the latest missed occurrence once, or none.
    pub catch_up: CatchUp,
    // Notices (src/notices.rs).
    /// Where a JSON notice is POSTed when a job of this task ends or is interrupted.
    pub notify_url: Option<String>,
    /// A file holding the key of the notices' HMAC-SHA256 signature (trailing whitespace
    /// ignored); read when the configuration is loaded, never shown.
    pub notify_secret_file: Option<PathBuf>,
}

/// What a schedule does with occurrences that passed while no shiftd ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// The latest missed occurrence runs once; older ones are skipped.
    #[default]
    Latest,
    /// Missed occurrences are skipped.
    None,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            params: BTreeMap::new(),
            env: BTreeMap::new(),
            working_dir: None,
            timeout: Duration::from_secs(600),
            concurrency: 1,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(10),
            on_shutdown: OnShutdown::Finish,
            kill_grace: Duration::from_secs(5),
            max_output: None,

            schedule: None,
            timezone: "UTC".into(),
            catch_up: CatchUp::Latest,
            notify_url: None,
            notify_secret_file: None,
        }
    }
}

/// A byte count written as a number or as "512KiB", "1MiB", "2MB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a size; write a number of bytes or e.g. \"1MiB\"")
        })?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}`; use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n % (1 << 20) == 0 {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n % (1 << 10) == 0 {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Which database the URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Config {
    /// Reads the file (if any) and the environment, then validates.
    ///
    /// `explicit` is `--config`; without it the packaged path is used when it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(explicit, &env)
    }

    /// As [`Config::load`], with the environment passed in (for tests).
    pub fn load_from(
        explicit: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        let mut builder = config::Config::builder();
        if let Some(path) = &path {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    path.display().to_string(),
                    format!("cannot read the file: {e}"),
                )
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let overrides = env_overrides(env)?;
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let source = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let merged = builder
            .build()
            .map_err(|e| ConfigError::new(source.clone(), format!("cannot parse: {e}")))?;
        let map: config::Map<String, config::Value> = merged
            .try_deserialize()
            .map_err(|e| ConfigError::new(source.clone(), format!("cannot parse: {e}")))?;
        let value = config::Value::new(None, config::ValueKind::Table(map));
        let parsed: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::new(
                if key == "." { source.clone() } else { key },
                e.into_inner().to_string(),
            )
        })?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// The backend the configured URL names.
    pub fn backend(&self) -> Backend {
        if self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://")
        {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// The longest `kill_grace` of any task: the jobs stage needs it after its drain budget.
    pub fn max_kill_grace(&self) -> Duration {
        self.tasks
            .values()
            .map(|t| t.kill_grace)
            .max()
            .unwrap_or_default()
    }

    /// What the stop stages may take together, allowances included; must not exceed
    /// `shutdown.grace`. Summed from the stop plan's own stages.
    pub fn stop_budget(&self) -> Duration {
        crate::lifecycle::stop_budget(&crate::service::stop_stages(self))
    }

    /// What [`Config::stop_budget`] adds up, stage by stage, e.g. "http_drain 30s + 1s to
    /// cut + jobs_drain 60s + …".
    pub fn explain_stop_budget(&self) -> String {
        crate::lifecycle::explain_stop_budget(&crate::service::stop_stages(self))
    }

    /// Checks every rule that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
        self.validate_database()?;
        positive("startup.step_timeout", self.startup.step_timeout)?;
        self.validate_shutdown()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::new(
                "log.level",
                format!(
                    "`{}` is not a filter like `info` or `shiftd=debug`: {e}",
                    self.log.level
                ),
            )
        })?;
        self.validate_jobs()?;
        self.validate_auth()?;
        for (name, task) in &self.tasks {
            task.validate(name)?;
        }
        self.notices.validate()?;
        self.ui.validate()?;
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        self.http.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.http.listen
                ),
            )
        })?;
        positive("http.request_timeout", self.http.request_timeout)?;
        positive("http.header_read_timeout", self.http.header_read_timeout)?;
        positive("http.body_read_timeout", self.http.body_read_timeout)?;
        positive("http.follow_max", self.http.follow_max)?;
        if self.http.body_limit.0 == 0 {
            return Err(ConfigError::new(
                "http.body_limit",
                "must be at least 1 byte",
            ));
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must be empty (embedded SQLite), `sqlite://PATH` or `postgres://USER@HOST/DB`",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        positive("database.connect_timeout", self.database.connect_timeout)
    }

    /// Each budget positive, and the stop plan's stages within the grace.
    fn validate_shutdown(&self) -> Result<(), ConfigError> {
        let s = &self.shutdown;
        positive("shutdown.grace", s.grace)?;
        positive("shutdown.flush", s.flush)?;
        positive("shutdown.db_close", s.db_close)?;
        if self.stop_budget() > s.grace {
            return Err(ConfigError::new(
                "shutdown.grace",
                format!(
                    "the stages need {} ({}) but grace is {}; raise shutdown.grace or lower a stage",
                    fmt_duration(self.stop_budget()),
                    self.explain_stop_budget(),
                    fmt_duration(s.grace)
                ),
            ));
        }
        Ok(())
    }

    fn validate_jobs(&self) -> Result<(), ConfigError> {
        if self.jobs.workers == 0 {
            return Err(ConfigError::new("jobs.workers", "must be at least 1"));
        }
        if !(1..=MAX_BATCH).contains(&self.jobs.batch_max) {
            return Err(ConfigError::new(
                "jobs.batch_max",
                format!("must be 1 to {MAX_BATCH}"),
            ));
        }
        if self.jobs.prefetch > MAX_PREFETCH {
            return Err(ConfigError::new(
                "jobs.prefetch",
                format!("must be 0 to {MAX_PREFETCH}"),
            ));
        }
        positive("jobs.poll_interval", self.jobs.poll_interval)?;
        positive("jobs.log_flush_interval", self.jobs.log_flush_interval)?;
        for (key, size) in [
            ("jobs.max_output", self.jobs.max_output),
            ("jobs.output_buffer", self.jobs.output_buffer),
        ] {
            if size.0 == 0 {
                return Err(ConfigError::new(
                    key,
                    "must be at least 1 byte, e.g. \"16MiB\"",
                ));
            }
        }
        if self.jobs.retain < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "jobs.retain",
                "must be at least 1s; write e.g. \"14days\"",
            ));
        }
        if self.jobs.lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "jobs.lease",
                "must be at least 1s (it is renewed at a third of it)",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        for (i, token) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if token.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    "every token needs a name (it is what logs show)",
                ));
            }
            token.resolve_secret(i)?;
            for task in &token.tasks {
                if task != "*" && !self.tasks.contains_key(task) {
                    return Err(ConfigError::new(
                        format!("{key}.tasks"),
                        format!("names task `{task}`, which is not configured"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TaskConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("tasks.{name}.{k}");
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || name.is_empty()
        {
            return Err(ConfigError::new(
                format!("tasks.{name}"),
                "task names may use letters, digits, '-' and '_'",
            ));
        }
        let Some(program) = self.command.first() else {
            return Err(ConfigError::new(
                key("command"),
                "must be a non-empty argv array like [\"/usr/bin/backup\", \"{target}\"]",
            ));
        };
        if placeholder(program).is_some() {
            return Err(ConfigError::new(
                key("command"),
                "the program (first element) cannot be a parameter",
            ));
        }
        for arg in &self.command {
            if let Some(param) = placeholder(arg) {
                if !self.params.contains_key(param) {
                    return Err(ConfigError::new(
                        key("command"),
                        format!("uses `{{{param}}}` but `params` has no `{param}`; add it to `params`, or write `{{{{{param}}}}}` for the literal text `{{{param}}}`"),
                    ));
                }
            }
        }
        // The same compilation serving uses, so a rule that passes here cannot fail there.
        crate::jobs::Task::new(name, self)?;
        positive(&key("timeout"), self.timeout)?;
        if self.concurrency == 0 {
            return Err(ConfigError::new(key("concurrency"), "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new(key("max_attempts"), "must be at least 1"));
        }
        if self.max_output.is_some_and(|m| m.0 == 0) {
            return Err(ConfigError::new(
                key("max_output"),
                "must be at least 1 byte, e.g. \"1MiB\"",
            ));
        }
        if let Some(url) = &self.notify_url {
            notify_url(url).map_err(|m| ConfigError::new(key("notify_url"), m))?;
        }
        if self.notify_secret_file.is_some() {
            if self.notify_url.is_none() {
                return Err(ConfigError::new(
                    key("notify_secret_file"),
                    "signs notices, but the task has no `notify_url`; add one or remove this key",
                ));
            }
            self.notify_secret(name)?;
        }
        self.validate_schedule(name)?;
        Ok(())
    }

    fn validate_schedule(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("tasks.{name}.{k}");
        crate::jobs::schedule::parse_timezone(&self.timezone)
            .map_err(|m| ConfigError::new(key("timezone"), m))?;
        let Some(expr) = &self.schedule else {
            return Ok(());
        };
        crate::jobs::schedule::parse_cron(expr)
            .map_err(|m| ConfigError::new(key("schedule"), m))?;
        if let Some(param) = self.command.iter().find_map(|a| placeholder(a)) {
            return Err(ConfigError::new(
                key("schedule"),
                format!("a scheduled job runs without parameters, but `command` uses `{{{param}}}`; define a separate task without parameters for the schedule"),
            ));
        }
        Ok(())
    }
}

impl TaskConfig {
    /// The key that signs this task's notices, read from `notify_secret_file`: an error
    /// naming the key if the file cannot be read or is empty. The error never holds the
    /// file's content.
    pub fn notify_secret(&self, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.notify_secret_file else {
            return Ok(None);
        };
        let key = format!("tasks.{name}.notify_secret_file");
        let text = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                key.clone(),
                format!(
                    "cannot read {}: {e}; check the path and that the service's user may read it",
                    path.display()
                ),
            )
        })?;
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if end == 0 {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} is empty; write a key into it (e.g. `openssl rand -hex 32`)",
                    path.display()
                ),
            ));
        }
        Ok(Some(text[..end].to_vec()))
    }
}

/// Checks a `notify_url`: an absolute http or https URL with a host.
pub fn notify_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!(
            "`{}` is not a URL ({e}); write e.g. \"https://monitor.example.org/shiftd\"",
            crate::redact::url(url)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "`{}` must be an http:// or https:// URL with a host",
            crate::redact::url(url)
        ));
    }
    Ok(parsed)
}

/// `{name}` as a whole argument gives `Some("name")`.
pub fn placeholder(arg: &str) -> Option<&str> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    (!inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(inner)
}

/// `{{name}}` as a whole argument gives `Some("{name}")`: the escape for an argument that
/// must be the literal text of a placeholder.
pub fn unescape_placeholder(arg: &str) -> Option<&str> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    placeholder(inner).map(|_| inner)
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(
            key,
            "must be longer than 0s (write e.g. \"5s\", \"250ms\", \"2m\")",
        ))
    } else {
        Ok(())
    }
}

/// Variables of the client (`shiftd job …`), not configuration overrides: a shell that sets
/// them for the client may run `shiftd check` or `shiftd serve` as well.
pub const CLIENT_ENV: [&str; 2] = ["SHIFTD_URL", "SHIFTD_TOKEN_FILE"];

/// Keeps only `SHIFTD_*` variables, and rejects those that are not `SHIFTD_<SECTION>__<KEY>`
/// so a typo is an error rather than silently ignored.
fn env_overrides(env: &[(String, String)]) -> Result<config::Map<String, String>, ConfigError> {
    let mut out = config::Map::new();
    for (k, v) in env {
        if CLIENT_ENV.contains(&k.as_str()) {
            continue;
        }
        if let Some(rest) = k.strip_prefix("SHIFTD_") {
            if !rest.contains("__") {
                return Err(ConfigError::new(
                    k.clone(),
                    "environment overrides are written SHIFTD_<SECTION>__<KEY>, e.g. SHIFTD_HTTP__LISTEN",
                ));
            }
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// "1m 30s" style, for messages and `shiftd check`.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shiftd.toml");
        std::fs::write(&path, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(Some(&path), &env)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn a_dashboard_session_lasts_12h_unless_set_within_1m_to_31d() {
        assert_eq!(
            load("", &[]).unwrap().ui.session_ttl,
            Duration::from_secs(12 * 3600)
        );
        let c = load("[ui]\nsession_ttl = \"30m\"\n", &[]).unwrap();
        assert_eq!(c.ui.session_ttl, Duration::from_secs(1800));
        for bad in ["10s", "32d"] {
            let e = load(&format!("[ui]\nsession_ttl = \"{bad}\"\n"), &[]).unwrap_err();
            assert_eq!(e.key, "ui.session_ttl", "{bad}");
        }
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "[http]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("SHIFTD_HTTP__LISTEN", "127.0.0.1:2"),
                ("SHIFTD_SHUTDOWN__HTTP_DRAIN", "2s"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:2");
        assert_eq!(c.shutdown.http_drain, Duration::from_secs(2));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[http]\nlisten_addr = \"x\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "http.listen_addr", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        // One line that names the key and says what to do: the journal line of a refused start.
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("`http.listen_addr`") && line.contains("shiftd check"),
            "{line}"
        );
    }

    #[test]
    fn bad_duration_is_named() {
        let e = load("[shutdown]\ngrace = \"soon\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "shutdown.grace", "{e}");
    }

    #[test]
    fn the_clients_variables_are_not_overrides() {
        let c = load(
            "",
            &[
                ("SHIFTD_URL", "http://127.0.0.1:9"),
                ("SHIFTD_TOKEN_FILE", "/run/token"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080");
    }

    #[test]
    fn stray_env_var_is_an_error() {
        let e = load("", &[("SHIFTD_LISTEN", "x")]).unwrap_err();
        assert_eq!(e.key, "SHIFTD_LISTEN");
    }

    #[test]
    fn stages_must_fit_grace() {
        let e = load("[shutdown]\ngrace = \"10s\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "shutdown.grace");
        assert!(e.message.contains("raise shutdown.grace"), "{e}");
    }

    #[test]
    fn the_stop_budget_sums_and_explains_the_plans_own_stages() {
        let config = load(
            "[tasks.t]\ncommand = [\"/bin/true\"]\nkill_grace = \"2s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.stop_budget(), Duration::from_secs(54));
        assert_eq!(
            config.explain_stop_budget(),
            "http_drain 10s + 1s to cut + jobs_drain 30s + 3s to stop jobs (longest kill_grace + 1s) + flush 5s + db_close 5s"
        );
    }

    #[test]
    fn kill_grace_counts_in_the_budget() {
        let toml = "[shutdown]\ngrace = \"53s\"\n[tasks.t]\ncommand = [\"/bin/true\"]\nkill_grace = \"2s\"\n";
        assert_eq!(load(toml, &[]).unwrap_err().key, "shutdown.grace");
    }

    #[test]
    fn placeholders_are_whole_arguments() {
        // Only a whole argument is a parameter; braces elsewhere are literal text.
        let toml = "[tasks.t]\ncommand = [\"/bin/echo\", \"--to={who}\"]\nparams = { who = \"^[a-z]+$\" }\n";
        load(toml, &[]).unwrap();
        let toml = "[tasks.t]\ncommand = [\"/bin/echo\", \"{who}\"]\n";
        assert!(load(toml, &[]).unwrap_err().message.contains("params"));
        let toml =
            "[tasks.t]\ncommand = [\"/bin/echo\", \"{who}\"]\nparams = { who = \"^[a-z]+$\" }\n";
        load(toml, &[]).unwrap();
    }

    /// Finding 16: braces inside an argument are literal, so a shell snippet is a valid task,
    /// and `{{name}}` needs no parameter.
    #[test]
    fn shell_braces_and_escaped_placeholders_validate() {
        let toml =
            "[tasks.t]\ncommand = [\"/bin/sh\", \"-c\", \"echo ${HOME} {x}\", \"{{name}}\"]\n";
        load(toml, &[]).unwrap();
    }

    /// Finding 12: validation compiles rules as serving does; a bad rule names its key.
    #[test]
    fn bad_rules_are_named_and_verbose_rules_pass() {
        let toml = "[tasks.t]\ncommand = [\"/bin/echo\", \"{n}\"]\nparams = { n = \"[a-\" }\n";
        assert_eq!(load(toml, &[]).unwrap_err().key, "tasks.t.params.n");
        let toml = "[tasks.t]\ncommand = [\"/bin/echo\", \"{n}\"]\nparams = { n = \"(?x)[a-z]+ # comment\" }\n";
        load(toml, &[]).unwrap();
    }

    #[test]
    fn body_read_timeout_must_be_positive() {
        let e = load("[http]\nbody_read_timeout = \"0s\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "http.body_read_timeout", "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert!(ByteSize::parse("1 parsec").is_err());
        assert_eq!(
            load("[http]\nbody_limit = 2048\n", &[])
                .unwrap()
                .http
                .body_limit
                .0,
            2048
        );
    }

    #[test]
    fn token_secrets_are_not_debug_printed() {
        let t = TokenConfig {
            name: "ci".into(),
            secret: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
