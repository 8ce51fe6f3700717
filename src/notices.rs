//! Notices: a JSON POST to a task's `notify_url` when one of its jobs reaches a final state
//! or an attempt is interrupted (by the service's stop, or found with an expired lease after
//! a crash).
//!
//! The outbox is the `notices` table (migration 0007). Its rows are written in the same
//! transaction as the job's state change: by the runner's finish ([`Store::finish`],
//! [`Store::finish_batch`]) for tasks with a `notify_url` here (other jobs' finishes run the
//! one statement they always did), by [`Store::requeue_interrupted`] for a job the stop
//! requeued, and by a trigger on `jobs` for the rare changes made elsewhere: the claim that
//! takes over an expired lease, and a cancel of a job that had not started (its `WHEN`
//! compares columns only, so other updates do not pay for it). Which tasks get rows is the
//! `notice_tasks` table, written by each process at startup and reload ([`sync_tasks`]).
//!
//! A deliverer in each process takes due notices of the tasks it has a URL for under a
//! short lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several nodes share the outbox),
//! POSTs them with `notices.timeout`, deletes a delivered one (2xx), and otherwise tries
//! again after an exponential back-off, up to `notices.max_attempts` tries and
//! `notices.max_age`, after which the notice is deleted with a warning. Delivery is at
//! least once: a notice whose answer was lost is sent again with the same id.
//!
//! It never holds up a stop: it ends as the stop begins, abandoning a POST in flight; the
//! notice stays in the outbox (leased until `notices.timeout` has passed) for the next
//! process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Config, ConfigError, NoticesConfig};
use crate::jobs::Store;

/// The header carrying the notice's id (the same on every delivery of one notice).
pub const ID_HEADER: &str = "Shiftd-Notice-Id";
/// Unix seconds when this delivery was signed.
pub const TIMESTAMP_HEADER: &str = "Shiftd-Timestamp";
/// `v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under the task's secret.
pub const SIGNATURE_HEADER: &str = "Shiftd-Signature";
/// Which try this is, from 1.
pub const DELIVERY_HEADER: &str = "Shiftd-Delivery-Attempt";

/// Where one task's notices go.
#[derive(Clone)]
pub struct Target {
    pub url: reqwest::Url,
    secret: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &crate::redact::url(self.url.as_str()))
            .field(
                "secret",
                &self.secret.as_ref().map(|_| crate::redact::REDACTED),
            )
            .finish()
    }
}

/// What the deliverer needs from the configuration; replaced on reload.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    pub targets: BTreeMap<String, Target>,
    pub bounds: NoticesConfig,
    /// Every configured task (with or without a URL), for [`sync_tasks`].
    pub tasks: Vec<String>,
}

impl NoticeSettings {
    /// Reads the secrets (again: the file may have changed since the configuration was
    /// validated) and parses the URLs.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut targets = BTreeMap::new();
        for (name, task) in &config.tasks {
            let Some(url) = &task.notify_url else {
                continue;
            };
            let url = crate::config::notify_url(url).map_err(|message| ConfigError {
                key: format!("tasks.{name}.notify_url"),
                message,
            })?;
            let secret = task.notify_secret(name)?.map(Arc::new);
            targets.insert(name.clone(), Target { url, secret });
        }
        Ok(Self {
            targets,
            bounds: config.notices.clone(),
            tasks: config.tasks.keys().cloned().collect(),
        })
    }
}

/// The tasks with a `notify_url` in `config`.
pub fn notify_tasks(config: &Config) -> Vec<String> {
    config
        .tasks
        .iter()
        .filter(|(_, t)| t.notify_url.is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

/// Makes `notice_tasks` say which of this process's tasks have a `notify_url`: adds those
/// that do, removes those configured here without one. Tasks this process does not
/// configure are left as other nodes wrote them.
pub async fn sync_tasks(store: &Store, settings: &NoticeSettings) -> Result<(), sqlx::Error> {
    let mut tx = store.pool.begin().await?;
    for task in &settings.tasks {
        if settings.targets.contains_key(task) {
            sqlx::query(
                "INSERT INTO notice_tasks (task) VALUES ($1) ON CONFLICT (task) DO NOTHING",
            )
            .bind(task.clone())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM notice_tasks WHERE task = $1")
                .bind(task.clone())
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// The JSON body of a notice.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Notice {
    /// The same on every delivery of this notice: deduplicate on it.
    pub id: String,
    /// `job.succeeded`, `job.failed`, `job.cancelled` or `job.interrupted`.
    pub event: String,
    /// For `job.interrupted`: `stop` (the service stopped; the job was requeued) or
    /// `lease_expired` (its process died or lost the database; another attempt took it).
    pub reason: Option<String>,
    pub job_id: i64,
    pub task: String,
    /// The attempt this notice is about (from 1).
    pub attempt: i64,
    pub max_attempts: i64,
    /// The job's state right after the event.
    pub state: String,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
    /// When the event happened (RFC 3339).
    pub at: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A notice taken from the outbox for one try.
#[derive(Debug, Clone)]
struct Taken {
    seq: i64,
    tries: i64,
    /// Since the event, on the database's clock (as every time of the queue).
    age: Duration,
    notice: Notice,
}

impl Taken {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let created_at: i64 = row.try_get("created_at")?;
        Ok(Self {
            seq: row.try_get("seq")?,
            tries: row.try_get("tries")?,
            age: Duration::from_millis(row.try_get::<i64, _>("age_ms")?.max(0) as u64),
            notice: Notice {
                id: row.try_get("id")?,
                event: row.try_get("event")?,
                reason: row.try_get("reason")?,
                job_id: row.try_get("job_id")?,
                task: row.try_get("task")?,
                attempt: row.try_get("attempt")?,
                max_attempts: row.try_get("max_attempts")?,
                state: row.try_get("state")?,
                exit_code: row.try_get("exit_code")?,
                exit_signal: row.try_get("exit_signal")?,
                error: row.try_get("error")?,
                at: rfc3339(created_at),
                created_at: rfc3339(row.try_get("job_created_at")?),
                started_at: row.try_get::<Option<i64>, _>("started_at")?.map(rfc3339),
                finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(rfc3339),
            },
        })
    }
}

const NOTICE_COLUMNS: &str =
    "seq, id, event, reason, job_id, task, attempt, max_attempts, state, exit_code, exit_signal, \
     error, job_created_at, started_at, finished_at, created_at, tries";

/// Takes up to `limit` due notices of `tasks`, each leased until `lease` from now (its
/// `next_at` moves past the lease, so nobody else takes it meanwhile; a process that dies
/// mid-POST leaves it to be taken again then). Counts the try.
async fn take(
    store: &Store,
    tasks: &[String],
    limit: usize,
    lease: Duration,
) -> Result<Vec<Taken>, sqlx::Error> {
    if tasks.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let now = store.now();
    let lock = match store.backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let placeholders: Vec<String> = (0..tasks.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE notices SET next_at = {now} + $1, tries = tries + 1 WHERE seq IN \
         (SELECT seq FROM notices WHERE next_at <= {now} AND task IN ({}) ORDER BY seq LIMIT {limit}{lock}) \
         RETURNING {NOTICE_COLUMNS}, {now} - created_at AS age_ms",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(lease.as_millis() as i64);
    for task in tasks {
        query = query.bind(task.clone());
    }
    // Read to its end: a notice is sent only once its lease has committed.
    let rows = query.fetch_all(&store.pool).await?;
    let mut taken = rows
        .iter()
        .map(Taken::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    taken.sort_by_key(|t| t.seq);
    Ok(taken)
}

/// A delivered notice leaves the outbox.
async fn delivered(store: &Store, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notices WHERE seq = $1")
        .bind(seq)
        .execute(&store.pool)
        .await
        .map(|_| ())
}

/// A failed try: due again after `backoff`, unless another process took it meanwhile.
async fn failed(
    store: &Store,
    taken: &Taken,
    backoff: Duration,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE notices SET next_at = {} + $1, last_error = $2 WHERE seq = $3 AND tries = $4",
        store.now()
    ))
    .bind(backoff.as_millis() as i64)
    .bind(error.to_string())
    .bind(taken.seq)
    .bind(taken.tries)
    .execute(&store.pool)
    .await
    .map(|_| ())
}

/// Gives up notices older than `max_age` (also those of tasks no process has a URL for any
/// more), a batch at a time; returns how many, by task.
async fn expire(store: &Store, max_age: Duration) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "DELETE FROM notices WHERE seq IN (SELECT seq FROM notices WHERE created_at < {} - $1 ORDER BY seq LIMIT 500) \
         RETURNING id, task",
        store.now()
    ))
    .bind(max_age.as_millis() as i64)
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("task")?)))
        .collect()
}

/// Notices still in the outbox (for status and tests).
pub async fn pending(store: &Store) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM notices")
        .fetch_one(&store.pool)
        .await?
        .try_get("n")
}

/// `v1=<hex>`: HMAC-SHA256 over `{timestamp}.{body}`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// The wait after try number `tries` failed: `backoff` doubled per earlier try, up to
/// `backoff_max`, plus up to a tenth of it at random (so many notices do not come back at
/// one instant).
pub fn backoff(bounds: &NoticesConfig, tries: i64) -> Duration {
    let doublings = (tries.max(1) - 1).min(30) as u32;
    let wait = bounds
        .backoff
        .saturating_mul(1u32 << doublings)
        .min(bounds.backoff_max);
    let jitter = rand::random::<f64>() * 0.1;
    wait + wait.mul_f64(jitter)
}

/// How often a process looks for notices past `notices.max_age` that nobody tries any more
/// (those of a task that lost its `notify_url`); a notice that is tried is given up by its
/// own try.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Hears the outcome of one try: (task, `delivered` | `retried` | `given_up`).
pub type OnOutcome = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What the deliverer reports (to metrics).
#[derive(Clone)]
pub struct Hooks {
    /// The outcome of each try: (task, `delivered` | `retried` | `given_up`).
    pub outcome: OnOutcome,
    /// Notices in the outbox (all nodes'), read every few seconds.
    pub pending: Arc<dyn Fn(i64) + Send + Sync>,
}

/// The background deliverer of one process.
#[derive(Clone)]
pub struct Deliverer {
    settings: watch::Sender<Arc<NoticeSettings>>,
    stop: CancellationToken,
}

impl Deliverer {
    /// Starts delivering; it ends when `stop` is cancelled (the stop's beginning).
    pub fn start(
        store: Store,
        settings: NoticeSettings,
        stop: CancellationToken,
        hooks: Hooks,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(settings));
        let deliverer = Self {
            settings: tx,
            stop: stop.clone(),
        };
        tokio::spawn(deliver_loop(store, rx, stop, hooks));
        deliverer
    }

    /// New URLs, secrets and bounds; `notice_tasks` is rewritten by the loop.
    pub fn reconfigure(&self, settings: NoticeSettings) {
        self.settings.send_replace(Arc::new(settings));
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Runs `f` unless the stop comes first.
async fn unless_stopped<T>(
    stop: &CancellationToken,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        v = f => Some(v),
    }
}

/// A database statement of the deliverer, bounded: past `limit` it is an error (the
/// statement is dropped; what it would have written is done again later).
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer from the database within notices.timeout ({})",
                crate::config::fmt_duration(limit)
            ),
        ))),
    }
}

/// What every send needs; cloned into each send's task.
#[derive(Clone)]
struct Courier {
    store: Store,
    client: reqwest::Client,
    on_outcome: OnOutcome,
}

/// The client of every notice's POST; `None` (said in the log) if it cannot be built.
fn http_client() -> Option<reqwest::Client> {
    match reqwest::Client::builder()
        .user_agent(concat!("shiftd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for notices; no notice is delivered by this process (they wait in the database for another one)");
            None
        }
    }
}

async fn deliver_loop(
    store: Store,
    mut settings_rx: watch::Receiver<Arc<NoticeSettings>>,
    stop: CancellationToken,
    hooks: Hooks,
) {
    let Some(client) = http_client() else {
        return;
    };
    let courier = Courier {
        store,
        client,
        on_outcome: hooks.outcome.clone(),
    };
    let store = &courier.store;
    // The startup wrote `notice_tasks`; a reload asks for it again.
    let mut synced = true;
    let mut failures: u32 = 0;
    let mut last_sweep = None;
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if settings_rx.has_changed().unwrap_or(false) {
            synced = false;
        }
        let settings = settings_rx.borrow_and_update().clone();
        let bounds = &settings.bounds;
        if !synced {
            match unless_stopped(&stop, sync_tasks(store, &settings)).await {
                None => return,
                Some(Ok(())) => synced = true,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot record which tasks have a notify_url; trying again")
                }
            }
        }
        if last_sweep.map_or(true, |at: tokio::time::Instant| at.elapsed() >= SWEEP_EVERY) {
            last_sweep = Some(tokio::time::Instant::now());
            if unless_stopped(&stop, sweep(store, bounds, &hooks))
                .await
                .is_none()
            {
                return;
            }
        }
        let wait = match send_due(&courier, &settings, &stop, &mut in_flight).await {
            None => return,
            Some(Ok(wait)) => {
                failures = 0;
                wait
            }
            Some(Err(e)) => {
                failures += 1;
                let wait = bounds.poll_interval.saturating_mul(1 << failures.min(5));
                tracing::warn!(error = %e, "cannot take notices from the database; trying again in {}", crate::config::fmt_duration(wait));
                wait
            }
        };
        // Dropping `in_flight` (a return) abandons the sends in flight: their notices stay
        // leased in the outbox and are sent again once the lease has run out.
        if wait.is_zero() && in_flight.len() < bounds.concurrency as usize {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = settings_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
}

/// Gives up the notices older than `notices.max_age`, and reads the outbox's depth.
async fn sweep(store: &Store, bounds: &NoticesConfig, hooks: &Hooks) {
    let gone = expire(store, bounds.max_age).await;
    if let Ok(n) = pending(store).await {
        (hooks.pending)(n);
    }
    match gone {
        Ok(gone) => {
            for (id, task) in &gone {
                (hooks.outcome)(task, "given_up");
                tracing::warn!(notice = %id, task = %task, "notice given up: not delivered within notices.max_age ({}); raise notices.max_age, or check that the task still has a notify_url and that its receiver answers", crate::config::fmt_duration(bounds.max_age));
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot expire old notices"),
    }
}

/// Takes the notices due, up to the free places, and sends each on its own task: a slow
/// receiver holds one place, not the whole loop. Returns the wait before the next look
/// (none when more may be due), or `None` if the stop came first.
async fn send_due(
    courier: &Courier,
    settings: &Arc<NoticeSettings>,
    stop: &CancellationToken,
    in_flight: &mut tokio::task::JoinSet<()>,
) -> Option<Result<Duration, sqlx::Error>> {
    let bounds = &settings.bounds;
    let tasks: Vec<String> = settings.targets.keys().cloned().collect();
    while in_flight.try_join_next().is_some() {}
    let free = (bounds.concurrency as usize).saturating_sub(in_flight.len());
    // The lease outlasts the POST's timeout, so no other process sends it meanwhile.
    let lease = bounds.timeout + Duration::from_secs(5);
    // Database statements are bounded by notices.timeout too.
    let taking = bounded(bounds.timeout, take(&courier.store, &tasks, free, lease));
    let batch = match unless_stopped(stop, taking).await? {
        Ok(batch) => batch,
        Err(e) => return Some(Err(e)),
    };
    // More may be due: look again as soon as a place is free.
    let more = free > 0 && batch.len() >= free;
    for taken in batch {
        let (courier, settings) = (courier.clone(), settings.clone());
        in_flight.spawn(async move {
            deliver(
                &courier.store,
                &courier.client,
                &settings,
                taken,
                &courier.on_outcome,
            )
            .await
        });
    }
    Some(Ok(if more {
        Duration::ZERO
    } else {
        bounds.poll_interval
    }))
}

/// One try of one notice, and what it leads to (delete, retry later, give up).
async fn deliver(
    store: &Store,
    client: &reqwest::Client,
    settings: &NoticeSettings,
    taken: Taken,
    on_outcome: &OnOutcome,
) {
    let bounds = &settings.bounds;
    let notice = &taken.notice;
    let Some(target) = settings.targets.get(&notice.task) else {
        return;
    };
    let outcome = post(client, target, &taken, bounds.timeout).await;
    let written = match &outcome {
        Ok(()) => {
            tracing::debug!(notice = %notice.id, job = notice.job_id, event = %notice.event, "notice delivered");
            on_outcome(&notice.task, "delivered");
            bounded(bounds.timeout, delivered(store, taken.seq)).await
        }
        Err(error) => {
            let age = taken.age;
            let wait = backoff(bounds, taken.tries);
            if taken.tries >= i64::from(bounds.max_attempts) || age + wait >= bounds.max_age {
                let setting = if taken.tries >= i64::from(bounds.max_attempts) {
                    "notices.max_attempts"
                } else {
                    "notices.max_age"
                };
                tracing::warn!(
                    notice = %notice.id, job = notice.job_id, task = %notice.task, event = %notice.event, tries = taken.tries,
                    "notice given up after {} tries over {} ({setting}); last error: {error}; fix the receiver at {} or raise {setting}",
                    taken.tries, crate::config::fmt_duration(Duration::from_secs(age.as_secs())), crate::redact::url(target.url.as_str())
                );
                on_outcome(&notice.task, "given_up");
                bounded(bounds.timeout, delivered(store, taken.seq)).await
            } else {
                tracing::info!(
                    notice = %notice.id, job = notice.job_id, task = %notice.task, tries = taken.tries,
                    "notice not delivered ({error}); trying again in {}", crate::config::fmt_duration(Duration::from_millis(wait.as_millis() as u64))
                );
                on_outcome(&notice.task, "retried");
                bounded(bounds.timeout, failed(store, &taken, wait, error)).await
            }
        }
    };
    if let Err(e) = written {
        // A timeout here leaves the notice leased: it is sent again once the lease ran out.
        // The lease runs out and the notice is sent again: at least once, same id.
        tracing::warn!(notice = %notice.id, error = %e, "cannot record the notice's delivery; it is sent again once its lease has run out");
    }
}

/// POSTs the notice; `Err` says why it did not count as delivered.
async fn post(
    client: &reqwest::Client,
    target: &Target,
    taken: &Taken,
    timeout: Duration,
) -> Result<(), String> {
    let body = serde_json::to_vec(&taken.notice).map_err(|e| e.to_string())?;
    let mut request = client
        .post(target.url.clone())
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(ID_HEADER, &taken.notice.id)
        .header(DELIVERY_HEADER, taken.tries.to_string());
    if let Some(secret) = &target.secret {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        request = request
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(secret, timestamp, &body));
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the receiver answered {}", response.status())),
        Err(e) if e.is_timeout() => Err(format!(
            "no answer within notices.timeout ({})",
            crate::config::fmt_duration(timeout)
        )),
        // reqwest's message names the URL: redact it.
        Err(e) => Err(crate::redact::in_text(
            &error_chain(&e),
            target.url.as_str(),
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c "import hmac, hashlib;
        // print(hmac.new(b'key', b'1700000000.{}', hashlib.sha256).hexdigest())"
        let sig = signature(b"key", 1700000000, b"{}");
        assert_eq!(
            sig,
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(sig, signature(b"key", 1700000001, b"{}"));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let bounds = NoticesConfig {
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..Default::default()
        };
        let b1 = backoff(&bounds, 1);
        assert!(b1 >= Duration::from_secs(1) && b1 <= Duration::from_millis(1100));
        let b3 = backoff(&bounds, 3);
        assert!(b3 >= Duration::from_secs(4) && b3 <= Duration::from_millis(4400));
        let b20 = backoff(&bounds, 20);
        assert!(b20 >= Duration::from_secs(10) && b20 <= Duration::from_secs(11));
    }
}
