//! The queue in the database: every SQL statement about jobs and their output.
//!
//! The same schema and statements serve SQLite and PostgreSQL; only the claim differs
//! (PostgreSQL adds `FOR UPDATE SKIP LOCKED` so several processes never take one job).
//! Times are milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::config::Backend;
use crate::dbfault::{classify, DbFault, StorageHealth};

mod schedules;
mod stats;
pub use schedules::OccurrenceOutcome;
pub use stats::{finished_per_minute_sql, FinishedInMinute, QueueCounts, QUEUE_COUNTS_SQL};

/// Where a job is in its life. Final: succeeded, failed, cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Waiting for its `run_at` (a delayed start); then claimed like a queued job.
    Scheduled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Scheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Scheduled => "scheduled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub task: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub state: JobState,
    /// Attempts started so far (a requeue at shutdown does not count).
    pub attempts: i64,
    pub max_attempts: i64,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    /// The signal that ended the last attempt, if one did.
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    /// When it may run: its `run_at` (a delayed start), its schedule's occurrence, the end
    /// of a retry's back-off, or when it was queued.
    #[serde(rename = "run_at", serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub run_after: i64,
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds), as the API writes times.
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ms(*ms))
}

fn rfc3339_opt<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

/// The jobs that can still run (queued, scheduled, running): those not finished (every final
/// state sets `finished_at`; a retry clears it). It is the predicate of the partial index
/// `jobs_runnable` word for word (migration 0009), which a statement must repeat for the
/// planner to use that index. No PostgreSQL index names `state`: see [`Store::claim_batch`].
pub const RUNNABLE: &str = "finished_at IS NULL";

/// The `phase` PostgreSQL indexes a job of `state` under (migration 0009, where the column is
/// computed from `state`): `live` for queued and running (so a claim does not change it),
/// `waiting` for scheduled, the state itself once final.
pub fn phase_of(state: JobState) -> &'static str {
    match state {
        JobState::Queued | JobState::Running => "live",
        JobState::Scheduled => "waiting",
        final_state => final_state.as_str(),
    }
}

const JOB_COLUMNS: &str = "id, task, params, state, attempts, max_attempts, created_at, updated_at, started_at, finished_at, \
     exit_code, exit_signal, error, cancel_requested, lease_owner, run_after";

impl Job {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let state: String = row.try_get("state")?;
        let params: String = row.try_get("params")?;
        Ok(Self {
            id: row.try_get("id")?,
            task: row.try_get("task")?,
            params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
            state: JobState::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown job state `{state}`").into())
            })?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            exit_code: row.try_get("exit_code")?,
            exit_signal: row.try_get("exit_signal")?,
            error: row.try_get("error")?,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
            lease_owner: row.try_get("lease_owner")?,
            run_after: row.try_get("run_after")?,
        })
    }
}

/// One line of a job's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputLine {
    pub job_id: i64,
    pub seq: i64,
    pub attempt: i64,
    /// `stdout`, `stderr`, or `shiftd` for lines the service adds (start, exit, kill).
    pub stream: &'static str,
    pub at: i64,
    pub line: String,
}

/// How an attempt ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub state: JobState,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
}

/// One attempt's outcome for [`Store::finish_batch`]: the job, the lease token it ran
/// under, how it ended, and the back-off before a retry.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishItem {
    pub id: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: String,
    pub finish: Finish,
    pub backoff: Duration,
    /// The job's task: whether its final state needs a notice.
    pub task: String,
}

impl FinishItem {
    pub fn new(job: &Job, lease_owner: &str, finish: &Finish, backoff: Duration) -> Self {
        Self {
            id: job.id,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            lease_owner: lease_owner.to_string(),
            finish: finish.clone(),
            backoff,
            task: job.task.clone(),
        }
    }

    /// A failure with attempts left goes back to the queue.
    fn retry(&self) -> bool {
        self.finish.state == JobState::Failed && self.attempts < self.max_attempts
    }
}

/// One job of [`Store::enqueue_batch`]: its parameters and its idempotency key.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub params: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// A delayed start (ms): the job is `scheduled` until then. `None`: queued now.
    pub run_after: Option<i64>,
}

/// What [`Store::enqueue_batch`] did for one job: its id, and for a job that existed
/// already (an idempotency key seen before) the parameters it was made with.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    pub id: i64,
    pub existing_params: Option<serde_json::Value>,
}

/// A batch refused before anything was written: `jobs[index]` reuses the idempotency key
/// of job `id`, which was made with other parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyConflict {
    pub index: usize,
    pub id: i64,
}

/// The one `INSERT` of a batch of `n` new jobs: shared binds first (task, max_attempts,
/// token, now), then params, key, state and run_after of each job.
/// Jobs one insert statement carries: four binds a job (plus four) keep it under SQLite's
/// 32,766 variables; larger batches are several statements in one transaction.
const INSERT_CHUNK: usize = 2_000;

fn batch_insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO jobs (task, params, state, attempts, max_attempts, idempotency_key, token_name, created_at, updated_at, run_after, cancel_requested) VALUES ",
    );
    let values: Vec<String> = (0..n)
        .map(|n| {
            format!(
                "($1, ${}, ${}, 0, $2, ${}, $3, $4, $4, ${}, 0)",
                5 + 4 * n,
                7 + 4 * n,
                6 + 4 * n,
                8 + 4 * n
            )
        })
        .collect();
    sql += &values.join(", ");
    sql += " RETURNING id";
    sql
}

/// What [`Store::enqueue_batch`]'s look-up of idempotency keys found.
#[derive(Default)]
struct KeysSeen {
    /// Per job of the batch: the job its key already names (made within the last 24 h).
    existing: Vec<Option<Enqueued>>,
    /// Jobs whose key is older than that: the key is freed for the new job.
    expired: Vec<i64>,
    /// The first job of the batch whose key names a job made with other parameters.
    conflict: Option<KeyConflict>,
}

impl KeysSeen {
    /// Job `id` (`params`, made at `created_at`) holds the key of `job`, the `index`-th.
    fn found(
        &mut self,
        index: usize,
        job: &NewJob,
        id: i64,
        params: &str,
        created_at: i64,
        now: i64,
    ) {
        if created_at < now - IDEMPOTENCY_WINDOW.as_millis() as i64 {
            self.expired.push(id);
            return;
        }
        let params: serde_json::Value =
            serde_json::from_str(params).unwrap_or(serde_json::Value::Null);
        if params != job.params {
            let first = self.conflict.get_or_insert(KeyConflict { index, id });
            if index < first.index {
                *first = KeyConflict { index, id };
            }
        }
        self.existing[index] = Some(Enqueued {
            id,
            existing_params: Some(params),
        });
    }
}

/// Most finishes written by one statement of [`Store::finish_batch`] (8 binds each).
pub const FINISH_BATCH_MAX: usize = 500;

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters for listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub task: Option<String>,
    /// Only jobs of these tasks (the caller's token may read no others); `None`: any task.
    pub tasks: Option<Vec<String>>,
    pub state: Option<JobState>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// The state and `run_after` of a new job: `scheduled` until a `run_after` in the future,
/// else queued now.
fn initial_state(now: i64, run_after: Option<i64>) -> (JobState, i64) {
    match run_after {
        Some(at) if at > now => (JobState::Scheduled, at),
        _ => (JobState::Queued, now),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Idempotency keys are honoured for this long.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// All queue statements over one pool.
#[derive(Clone, Debug)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    health: std::sync::Arc<StorageHealth>,
    /// Tasks with a `notify_url` here: only their finishes also write a notice.
    notify: std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

/// A line as the database can hold it: PostgreSQL's text cannot contain NUL, so NUL is
/// stored as U+2400 (SYMBOL FOR NULL). Invalid UTF-8 became U+FFFD when the line was read.
fn storable(line: &str) -> std::borrow::Cow<'_, str> {
    if line.contains('\0') {
        std::borrow::Cow::Owned(line.replace('\0', "\u{2400}"))
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

impl Store {
    pub fn new(db: &crate::db::Db) -> Self {
        Self {
            pool: db.pool.clone(),
            backend: db.backend,
            health: db.health.clone(),
            notify: Default::default(),
        }
    }

    /// The tasks whose finishes write a notice (those with a `notify_url`), shared by every
    /// clone of this store; set at startup and reload.
    pub fn set_notice_tasks(&self, tasks: impl IntoIterator<Item = String>) {
        *self.notify.write().expect("poisoned") = tasks.into_iter().collect();
    }

    fn notifies(&self, task: &str) -> bool {
        self.notify.read().expect("poisoned").contains(task)
    }

    /// An id for a notice, as SQL: random, 32 hex digits.
    fn notice_id_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "lower(hex(randomblob(16)))",
            Backend::Postgres => {
                "md5(random()::text || clock_timestamp()::text || jobs.id::text || pg_backend_pid()::text)"
            }
        }
    }

    /// Inserts a notice for each job matching `condition` that is in a final state and whose
    /// task is in `notice_tasks`; run in the transaction that made that state.
    fn final_notices_sql(&self, condition: &str) -> String {
        let now = self.now();
        format!(
            "INSERT INTO notices (id, event, reason, job_id, task, attempt, max_attempts, state, exit_code, exit_signal, \
             error, job_created_at, started_at, finished_at, created_at, next_at) \
             SELECT {}, 'job.' || state, NULL, id, task, attempts, max_attempts, state, exit_code, exit_signal, \
             error, created_at, started_at, finished_at, {now}, {now} FROM jobs \
             WHERE {condition} AND state IN ('succeeded', 'failed', 'cancelled') \
             AND EXISTS (SELECT 1 FROM notice_tasks WHERE notice_tasks.task = jobs.task)",
            self.notice_id_sql()
        )
    }

    /// Adds a job, or returns the one already made with this idempotency key in the last 24 h
    /// by the same token (keys of different tokens never meet). The boolean is true when a
    /// new job was created; the caller compares the returned job's parameters with its own.
    pub async fn enqueue(
        &self,
        task: &str,
        params: &serde_json::Value,
        max_attempts: i64,
        idempotency_key: Option<&str>,
        token_name: Option<&str>,
    ) -> Result<(Job, bool), sqlx::Error> {
        self.enqueue_at(
            task,
            params,
            max_attempts,
            idempotency_key,
            token_name,
            None,
        )
        .await
    }

    /// [`Store::enqueue`] with a delayed start: a `run_after` (ms) in the future makes the
    /// job `scheduled` until then; `None` or a time not in the future queues it now.
    pub async fn enqueue_at(
        &self,
        task: &str,
        params: &serde_json::Value,
        max_attempts: i64,
        idempotency_key: Option<&str>,
        token_name: Option<&str>,
        run_after: Option<i64>,
    ) -> Result<(Job, bool), sqlx::Error> {
        let now = now_ms();
        let (state, run_after) = initial_state(now, run_after);
        if let Some(key) = idempotency_key {
            if let Some(existing) = self.by_idempotency_key(task, token_name, key).await? {
                if existing.created_at >= now - IDEMPOTENCY_WINDOW.as_millis() as i64 {
                    return Ok((existing, false));
                }
                // Expired: free the key for the new job.
                sqlx::query("UPDATE jobs SET idempotency_key = NULL WHERE id = $1")
                    .bind(existing.id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        let sql = format!(
            "INSERT INTO jobs (task, params, state, attempts, max_attempts, idempotency_key, token_name, created_at, updated_at, run_after, cancel_requested) \
             VALUES ($1, $2, $7, 0, $3, $4, $5, $6, $6, $8, 0) RETURNING {JOB_COLUMNS}"
        );
        // fetch_all: the row is returned only once the insert has committed (SQLite
        // reports a failed commit, such as a full disk, only at the statement's end).
        let inserted = sqlx::query(&sql)
            .bind(task)
            .bind(params.to_string())
            .bind(max_attempts)
            .bind(idempotency_key.map(str::to_string))
            .bind(token_name.map(str::to_string))
            .bind(now)
            .bind(state.as_str())
            .bind(run_after)
            .fetch_all(&self.pool)
            .await;
        let inserted = self.observe(inserted, true);
        match inserted {
            Ok(rows) => Ok((
                Job::from_row(rows.first().ok_or(sqlx::Error::RowNotFound)?)?,
                true,
            )),
            // Two requests with the same key raced: the other one won; return its job.
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && idempotency_key.is_some() =>
            {
                let job = self
                    .by_idempotency_key(task, token_name, idempotency_key.unwrap_or_default())
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                Ok((job, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Adds several jobs of one task with one commit: all of them or none. A job whose
    /// idempotency key was used by the same token in the last 24 h is not added again; its
    /// entry names the existing job. If such a job was made with other parameters, nothing
    /// is written and the first such index is returned as a [`KeyConflict`]. Entries come
    /// back in the order of `jobs`. Keys must be distinct within `jobs`.
    pub async fn enqueue_batch(
        &self,
        task: &str,
        jobs: &[NewJob],
        max_attempts: i64,
        token_name: Option<&str>,
    ) -> Result<Result<Vec<Enqueued>, KeyConflict>, sqlx::Error> {
        match self
            .try_enqueue_batch(task, jobs, max_attempts, token_name)
            .await
        {
            // Another request added one of these keys between our look-up and our insert:
            // nothing of ours committed; look again, now its job is there to be returned.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                self.try_enqueue_batch(task, jobs, max_attempts, token_name)
                    .await
            }
            done => done,
        }
    }

    async fn try_enqueue_batch(
        &self,
        task: &str,
        jobs: &[NewJob],
        max_attempts: i64,
        token_name: Option<&str>,
    ) -> Result<Result<Vec<Enqueued>, KeyConflict>, sqlx::Error> {
        let now = now_ms();
        let seen = self
            .look_up_keys(task, jobs, token_name.unwrap_or_default(), now)
            .await?;
        if let Some(conflict) = seen.conflict {
            return Ok(Err(conflict));
        }
        let mut out = seen.existing;
        let new: Vec<usize> = (0..jobs.len()).filter(|i| out[*i].is_none()).collect();
        if new.is_empty() {
            return Ok(Ok(out.into_iter().flatten().collect()));
        }
        let new_jobs: Vec<&NewJob> = new.iter().map(|i| &jobs[*i]).collect();
        let ids = self
            .insert_batch(
                task,
                &new_jobs,
                max_attempts,
                token_name,
                now,
                &seen.expired,
            )
            .await?;
        for (i, id) in new.into_iter().zip(ids) {
            out[i] = Some(Enqueued {
                id,
                existing_params: None,
            });
        }
        Ok(Ok(out.into_iter().flatten().collect()))
    }

    /// Looks up the idempotency keys of a batch (500 a statement): which name a job of
    /// this token made within the last 24 h, which are past that and to be freed, and the
    /// first that names a job made with other parameters.
    async fn look_up_keys(
        &self,
        task: &str,
        jobs: &[NewJob],
        token: &str,
        now: i64,
    ) -> Result<KeysSeen, sqlx::Error> {
        let mut seen = KeysSeen {
            existing: vec![None; jobs.len()],
            ..KeysSeen::default()
        };
        let keys: Vec<(usize, &str)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.idempotency_key.as_deref().map(|k| (i, k)))
            .collect();
        for chunk in keys.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT id, params, created_at, idempotency_key FROM jobs WHERE task = $1 AND COALESCE(token_name, '') = $2 \
                 AND idempotency_key IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(task).bind(token.to_string());
            for (_, key) in chunk {
                query = query.bind(key.to_string());
            }
            let rows = query.fetch_all(&self.pool).await?;
            let mut found: std::collections::HashMap<String, (i64, String, i64)> =
                Default::default();
            for row in &rows {
                found.insert(
                    row.try_get("idempotency_key")?,
                    (
                        row.try_get("id")?,
                        row.try_get("params")?,
                        row.try_get("created_at")?,
                    ),
                );
            }
            for (i, key) in chunk {
                if let Some((id, params, created_at)) = found.remove(*key) {
                    seen.found(*i, &jobs[*i], id, &params, created_at, now);
                }
            }
        }
        Ok(seen)
    }

    /// Inserts the new jobs of a batch (one statement up to [`INSERT_CHUNK`] jobs, else one
    /// transaction of several), freeing the `expired` keys in the same transaction; returns
    /// their ids in the order of `jobs`, once committed.
    async fn insert_batch(
        &self,
        task: &str,
        jobs: &[&NewJob],
        max_attempts: i64,
        token_name: Option<&str>,
        now: i64,
        expired: &[i64],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let sqls: Vec<String> = jobs
            .chunks(INSERT_CHUNK)
            .map(|chunk| batch_insert_sql(chunk.len()))
            .collect();
        let mut queries: Vec<_> = jobs
            .chunks(INSERT_CHUNK)
            .zip(&sqls)
            .map(|(chunk, sql)| {
                let mut query = sqlx::query(sql)
                    .bind(task)
                    .bind(max_attempts)
                    .bind(token_name.map(str::to_string))
                    .bind(now);
                for job in chunk {
                    let (state, run_after) = initial_state(now, job.run_after);
                    query = query
                        .bind(job.params.to_string())
                        .bind(job.idempotency_key.clone())
                        .bind(state.as_str())
                        .bind(run_after);
                }
                query
            })
            .collect();
        // fetch_all: the ids are used only once the insert has committed (write-commit rule).
        let inserted = if expired.is_empty() && queries.len() == 1 {
            // One statement: one commit.
            queries.remove(0).fetch_all(&self.pool).await
        } else {
            // Keys past their 24 h are freed in the same transaction as the insert.
            let list = expired
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            async {
                let mut tx = self.pool.begin().await?;
                if !expired.is_empty() {
                    sqlx::query(&format!(
                        "UPDATE jobs SET idempotency_key = NULL WHERE id IN ({list})"
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
                let mut rows = Vec::with_capacity(jobs.len());
                for query in queries {
                    rows.extend(query.fetch_all(&mut *tx).await?);
                }
                tx.commit().await?;
                Ok(rows)
            }
            .await
        };
        let rows = self.observe(inserted, true)?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != jobs.len() {
            return Err(sqlx::Error::Protocol(format!(
                "the batch insert returned {} ids for {} jobs",
                ids.len(),
                jobs.len()
            )));
        }
        // One statement numbers its rows in the order of its VALUES (a sequence on
        // PostgreSQL, the next rowid on SQLite), and a later statement of the same
        // transaction numbers above it; RETURNING's own order is not promised.
        ids.sort_unstable();
        Ok(ids)
    }

    /// The job made by `token_name` (`None`: without a token) with this key, whatever its age.
    async fn by_idempotency_key(
        &self,
        task: &str,
        token_name: Option<&str>,
        key: &str,
    ) -> Result<Option<Job>, sqlx::Error> {
        // The same expression as the unique index (migration 0003), so the index serves it.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE task = $1 AND COALESCE(token_name, '') = $2 AND idempotency_key = $3"
        );
        let row = sqlx::query(&sql)
            .bind(task)
            .bind(token_name.unwrap_or_default().to_string())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Job::from_row).transpose()
    }

    pub async fn get(&self, id: i64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Job::from_row).transpose()
    }

    /// [`Store::list`]'s statement: binds the task, the tasks, the state, the cursor and the
    /// limit + 1, those that `filter` sets, in that order. `None` when `filter.tasks` is
    /// empty (the caller may read no task: nothing to ask).
    pub fn list_sql(&self, filter: &ListFilter) -> Option<String> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.task.is_some() {
            sql += &format!(" AND task = {}", next());
        }
        if let Some(tasks) = &filter.tasks {
            if tasks.is_empty() {
                return None;
            }
            let placeholders: Vec<String> = tasks.iter().map(|_| next()).collect();
            sql += &format!(" AND task IN ({})", placeholders.join(", "));
        }
        if let Some(state) = filter.state {
            sql += &format!(" AND state = {}", next());
            if self.backend == Backend::Postgres {
                // No PostgreSQL index names `state` (migration 0009): the phase leads the
                // planner to `jobs_by_phase`, whose rows of one phase are in id order.
                sql += &format!(" AND phase = '{}'", phase_of(state));
            }
        }
        if filter.before_id.is_some() {
            sql += &format!(" AND id < {}", next());
        }
        sql += &format!(" ORDER BY id DESC LIMIT {}", next());
        Some(sql)
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<JobPage, sqlx::Error> {
        let Some(sql) = self.list_sql(filter) else {
            return Ok(JobPage {
                jobs: Vec::new(),
                next_cursor: None,
            });
        };
        let mut query = sqlx::query(&sql);
        if let Some(task) = &filter.task {
            query = query.bind(task.clone());
        }
        for task in filter.tasks.iter().flatten() {
            query = query.bind(task.clone());
        }
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        if let Some(id) = filter.before_id {
            query = query.bind(id);
        }
        let rows = query.bind(filter.limit + 1).fetch_all(&self.pool).await?;
        let mut jobs = rows
            .iter()
            .map(Job::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if jobs.len() as i64 > filter.limit {
            jobs.truncate(filter.limit as usize);
            jobs.last().map(|j| j.id.to_string())
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    /// Cancels a job: a queued one never runs; a running one is flagged for its runner.
    /// Returns the job after the change, or None if there is no such job.
    pub async fn cancel(&self, id: i64) -> Result<Option<Job>, sqlx::Error> {
        let now = self.now();
        let cancelled = sqlx::query(&format!("UPDATE jobs SET state = 'cancelled', finished_at = {now}, updated_at = {now}, error = 'cancelled before it ran' WHERE id = $1 AND state IN ('queued', 'scheduled')"))
            .bind(id)
            .execute(&self.pool)
            .await;
        self.observe(cancelled, true)?;
        let flagged = sqlx::query(&format!(
            "UPDATE jobs SET cancel_requested = 1, updated_at = {now} WHERE id = $1 AND state = 'running'"
        ))
        .bind(id)
        .execute(&self.pool)
        .await;
        self.observe(flagged, true)?;
        self.get(id).await
    }

    /// The database's clock in milliseconds since the epoch, as SQL. Every lease time is
    /// written and compared with this one clock, so two hosts whose clocks disagree never
    /// disagree about whether a lease has run out (ARCHITECTURE.md, "Leases and fencing").
    pub fn now(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// The storage fault seen by the last write, if it has not been cleared by a write
    /// that committed since.
    pub fn fault(&self) -> Option<DbFault> {
        self.health.fault()
    }

    /// Records what a write says about the storage: a fault is remembered (for `/readyz`,
    /// `STATUS=` and the runner's back-off); a write that really committed clears it.
    /// `wrote` is false for statements that may have changed nothing (SQLite then writes
    /// nothing, so their success says nothing about the disk).
    fn observe<T>(&self, result: Result<T, sqlx::Error>, wrote: bool) -> Result<T, sqlx::Error> {
        match &result {
            Ok(_) if wrote => self.health.clear(),
            Ok(_) => {}
            Err(e) => {
                if let Some(fault) = classify(e) {
                    self.health.set(fault);
                }
            }
        }
        result
    }

    /// Takes the oldest runnable job of one of `tasks` under the lease token `lease_owner`:
    /// a queued job whose time has come, or a running one whose lease expired (its worker
    /// died). Attempts + 1. The statement is read to its end, so the job is returned only
    /// once its claim has committed: nothing runs on a claim the database did not keep.
    pub async fn claim(
        &self,
        lease_owner: &str,
        tasks: &[String],
        lease: Duration,
    ) -> Result<Option<Job>, sqlx::Error> {
        let caps: Vec<(String, usize)> = tasks.iter().map(|t| (t.clone(), 1)).collect();
        Ok(self
            .claim_batch(lease_owner, &caps, 1, lease)
            .await?
            .into_iter()
            .next())
    }

    /// [`Store::claim_batch`]'s statement: `$1` the lease token, `$2` the lease (ms), then
    /// one placeholder per task.
    fn claim_sql(&self, tasks: &[&(String, usize)], limit: usize) -> String {
        let now = self.now();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            // One statement is one short write transaction: SQLite serialises writers.
            Backend::Sqlite => "",
        };
        // RUNNABLE is the predicate of the partial index `jobs_runnable` word for word
        // (migration 0009), so the planner can use it; a scheduled job whose time has come
        // is claimed like a queued one. No PostgreSQL index names `state`, `lease_owner`,
        // `lease_until`, `attempts` or `started_at`, so there this update changes no
        // indexed value and is heap-only (it writes no index entry) where the page has room
        // (the table's fillfactor keeps it). SQLite keeps `jobs_claimable (state, …)`.
        let runnable = format!(
            "{RUNNABLE} AND \
             ((state IN ('queued', 'scheduled') AND run_after <= {now}) OR (state = 'running' AND lease_until < {now})) AND \
             task NOT IN (SELECT task FROM paused_tasks)"
        );
        // The limits are written into the text, not bound: for an unknown LIMIT,
        // PostgreSQL's generic plan walks the primary key (every finished job) instead of
        // `jobs_runnable` (`EXPLAIN EXECUTE` under `plan_cache_mode = force_generic_plan`).
        let pick = if tasks.iter().all(|(_, cap)| *cap >= limit) {
            // No task's cap binds: one ordered scan over all of them.
            let placeholders: Vec<String> =
                (0..tasks.len()).map(|i| format!("${}", i + 3)).collect();
            format!(
                "SELECT id FROM jobs WHERE task IN ({}) AND {runnable} ORDER BY id LIMIT {limit}{lock}",
                placeholders.join(", ")
            )
        } else {
            // Each task up to its own cap, then the oldest `limit` of those. (PostgreSQL
            // may lock a few rows past `limit` for the length of this statement; others
            // skip them for that instant.)
            let parts: Vec<String> = tasks
                .iter()
                .enumerate()
                .map(|(i, (_, cap))| {
                    format!(
                        "SELECT id FROM (SELECT id FROM jobs WHERE task = ${} AND {runnable} ORDER BY id LIMIT {}{lock}) AS t{i}",
                        i + 3,
                        (*cap).min(limit)
                    )
                })
                .collect();
            format!(
                "SELECT id FROM ({}) AS picked ORDER BY id LIMIT {limit}",
                parts.join(" UNION ALL ")
            )
        };
        format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, lease_until = {now} + $2, \
             started_at = {now}, updated_at = {now}, cancel_requested = 0 \
             WHERE id IN ({pick}) \
             RETURNING {JOB_COLUMNS}"
        )
    }

    /// Takes up to `limit` runnable jobs (oldest first) in one statement, at most `cap` of
    /// each `(task, cap)`, all under the lease token `lease_owner` (a token per claim
    /// statement: a job appears at most once in a claim, so `(id, lease_owner)` still names
    /// one attempt). PostgreSQL: `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED
    /// LIMIT n)`; SQLite: the same without the lock, one short write transaction. Read to
    /// its end: the jobs are returned only once the claim has committed. Oldest id first.
    pub async fn claim_batch(
        &self,
        lease_owner: &str,
        tasks: &[(String, usize)],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let tasks: Vec<&(String, usize)> = tasks.iter().filter(|(_, cap)| *cap > 0).collect();
        if tasks.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let sql = self.claim_sql(&tasks, limit);
        let mut query = sqlx::query(&sql)
            .bind(lease_owner)
            .bind(lease.as_millis() as i64);
        for (task, _) in &tasks {
            query = query.bind(task.clone());
        }
        // fetch_all, not fetch_optional: SQLite reports a failed commit (a full disk) only
        // when the statement is stepped to its end, after the rows were handed out.
        let rows = query.fetch_all(&self.pool).await;
        let rows = self.observe(rows, false)?;
        if !rows.is_empty() {
            self.health.clear();
        }
        let mut jobs = rows
            .iter()
            .map(Job::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Extends the lease by `lease` from the database's now. Returns `Some(cancel_requested)`
    /// while the job is still ours, `None` if another worker took it (our lease had expired).
    pub async fn renew(
        &self,
        id: i64,
        lease_owner: &str,
        lease: Duration,
    ) -> Result<Option<bool>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs SET lease_until = {} + $1 WHERE id = $2 AND lease_owner = $3 AND state = 'running' RETURNING cancel_requested",
            self.now()
        );
        let rows = sqlx::query(&sql)
            .bind(lease.as_millis() as i64)
            .bind(id)
            .bind(lease_owner)
            .fetch_all(&self.pool)
            .await;
        let rows = self.observe(rows, true)?;
        rows.first()
            .map(|r| r.try_get::<i64, _>("cancel_requested").map(|c| c != 0))
            .transpose()
    }

    /// Records how an attempt ended. A failure with attempts left goes back to the queue
    /// after `backoff`. Returns false if the job was no longer ours.
    pub async fn finish(
        &self,
        job: &Job,
        lease_owner: &str,
        finish: &Finish,
        backoff: Duration,
    ) -> Result<bool, sqlx::Error> {
        let now = self.now();
        let retry = finish.state == JobState::Failed && job.attempts < job.max_attempts;
        let (state, finished_at, run_after) = if retry {
            (JobState::Queued, "NULL".to_string(), format!("{now} + $7"))
        } else {
            (finish.state, now.to_string(), "run_after".to_string())
        };
        let sql = format!(
            "UPDATE jobs SET state = $1, finished_at = {finished_at}, updated_at = {now}, run_after = {run_after}, \
             exit_code = $2, exit_signal = $3, error = $4, lease_owner = NULL, lease_until = NULL \
             WHERE id = $5 AND lease_owner = $6 AND state = 'running'"
        );
        let mut query = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(finish.exit_code)
            .bind(finish.exit_signal)
            .bind(finish.error.clone())
            .bind(job.id)
            .bind(lease_owner);
        if retry {
            query = query.bind(backoff.as_millis() as i64);
        }
        if retry || !self.notifies(&job.task) {
            let done = self.observe(query.execute(&self.pool).await, true)?;
            return Ok(done.rows_affected() == 1);
        }
        // The final state and its notice commit together.
        let done = async {
            let mut tx = self.pool.begin().await?;
            let recorded = query.execute(&mut *tx).await?.rows_affected() == 1;
            if recorded {
                sqlx::query(&self.final_notices_sql("id = $1"))
                    .bind(job.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(recorded)
        }
        .await;
        self.observe(done, true)
    }

    /// [`Store::finish_batch`]'s statement for `n` items, 8 binds each: id, owner, state,
    /// whether it is final, back-off, exit code, exit signal, error.
    fn finish_batch_sql(&self, n: usize) -> String {
        let now = self.now();
        let values: Vec<String> = (0..n)
            .map(|i| {
                let b = i * 8;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                )
            })
            .collect();
        format!(
            "WITH v (id, owner, state, fin, backoff, exit_code, exit_signal, error) AS (VALUES {}) \
             UPDATE jobs SET state = v.state, \
             finished_at = CASE WHEN v.fin = 1 THEN {now} ELSE NULL END, updated_at = {now}, \
             run_after = CASE WHEN v.fin = 1 THEN jobs.run_after ELSE {now} + v.backoff END, \
             exit_code = v.exit_code, exit_signal = v.exit_signal, error = v.error, lease_owner = NULL, lease_until = NULL \
             FROM v WHERE jobs.id = v.id AND jobs.lease_owner = v.owner AND jobs.state = 'running' \
             RETURNING jobs.id",
            values.join(", ")
        )
    }

    /// Records how several attempts ended, in one statement (one commit): each row only
    /// while it is still running under its own lease token (lease fencing, as
    /// [`Store::finish`]). Returns the ids that were still ours and are now recorded; the
    /// rest had lost their lease. At most [`FINISH_BATCH_MAX`] items a call.
    pub async fn finish_batch(&self, items: &[FinishItem]) -> Result<Vec<i64>, sqlx::Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.finish_batch_sql(items.len());
        let mut query = sqlx::query(&sql);
        for item in items {
            let retry = item.retry();
            let state = if retry {
                JobState::Queued
            } else {
                item.finish.state
            };
            query = query
                .bind(item.id)
                .bind(item.lease_owner.clone())
                .bind(state.as_str())
                .bind(if retry { 0i64 } else { 1i64 })
                .bind(item.backoff.as_millis() as i64)
                .bind(item.finish.exit_code)
                .bind(item.finish.exit_signal)
                .bind(
                    item.finish
                        .error
                        .as_deref()
                        .map(|e| storable(e).into_owned()),
                );
        }
        if !items.iter().any(|i| !i.retry() && self.notifies(&i.task)) {
            // fetch_all: nobody is told "recorded" before the commit (write-commit rule).
            let rows = query.fetch_all(&self.pool).await;
            let rows = self.observe(rows, true)?;
            return rows.iter().map(|r| r.try_get::<i64, _>("id")).collect();
        }
        // Some of these jobs' tasks have a notify_url: their notices commit with the batch.
        let done = async {
            let mut tx = self.pool.begin().await?;
            let rows = query.fetch_all(&mut *tx).await?;
            let ids = rows
                .iter()
                .map(|r| r.try_get::<i64, _>("id"))
                .collect::<Result<Vec<_>, _>>()?;
            let notify: Vec<String> = items
                .iter()
                .filter(|i| !i.retry() && self.notifies(&i.task) && ids.contains(&i.id))
                .map(|i| i.id.to_string())
                .collect();
            if !notify.is_empty() {
                sqlx::query(&self.final_notices_sql(&format!("id IN ({})", notify.join(", "))))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(ids)
        }
        .await;
        self.observe(done, true)
    }

    /// Puts a job back in the queue without counting the attempt (a stop or a lost task
    /// definition ended it, not the job itself).
    pub async fn requeue(&self, id: i64, lease_owner: &str) -> Result<bool, sqlx::Error> {
        let now = self.now();
        let done = sqlx::query(&format!(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_after = {now}, updated_at = {now}, lease_owner = NULL, \
             lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
        ))
        .bind(id)
        .bind(lease_owner)
        .execute(&self.pool)
        .await;
        let done = self.observe(done, true)?;
        Ok(done.rows_affected() == 1)
    }

    /// Pauses `task` for every node sharing this database: the claim statement skips its
    /// jobs from the commit on. Pausing a paused task keeps its first `paused_at`. Returns
    /// when it was paused (milliseconds, the database's clock).
    pub async fn pause(&self, task: &str) -> Result<i64, sqlx::Error> {
        let now = self.now();
        // The no-op update makes RETURNING give the row in both cases, in one statement.
        let row = sqlx::query(&format!(
            "INSERT INTO paused_tasks (task, paused_at) VALUES ($1, {now}) \
             ON CONFLICT (task) DO UPDATE SET paused_at = paused_tasks.paused_at RETURNING paused_at"
        ))
        .bind(task)
        .fetch_all(&self.pool)
        .await;
        let rows = self.observe(row, true)?;
        match rows.first() {
            Some(row) => row.try_get("paused_at"),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// Resumes `task` everywhere. True if it was paused.
    pub async fn resume(&self, task: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM paused_tasks WHERE task = $1")
            .bind(task)
            .execute(&self.pool)
            .await;
        let done = self.observe(done, true)?;
        Ok(done.rows_affected() > 0)
    }

    /// The paused tasks, with when each was paused.
    pub async fn paused(&self) -> Result<std::collections::BTreeMap<String, i64>, sqlx::Error> {
        let rows = sqlx::query("SELECT task, paused_at FROM paused_tasks")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("task")?, r.try_get("paused_at")?)))
            .collect()
    }

    /// As [`Store::requeue`], for an attempt the service's stop interrupted: in the same
    /// transaction, a `job.interrupted` notice when the job's task has a `notify_url`
    /// (`notice_tasks`). A job claimed ahead and never started goes back with
    /// [`Store::requeue`]: nothing was interrupted.
    pub async fn requeue_interrupted(
        &self,
        id: i64,
        lease_owner: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = self.now();
        let random_id = self.notice_id_sql();
        let done = async {
            let mut tx = self.pool.begin().await?;
            let requeued = sqlx::query(&format!(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_after = {now}, updated_at = {now}, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
            ))
            .bind(id)
            .bind(lease_owner)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if requeued {
                sqlx::query(&format!(
                    "INSERT INTO notices (id, event, reason, job_id, task, attempt, max_attempts, state, exit_code, exit_signal, \
                     error, job_created_at, started_at, finished_at, created_at, next_at) \
                     SELECT {random_id}, 'job.interrupted', 'stop', id, task, attempts + 1, max_attempts, state, NULL, NULL, \
                     'the service stopped while the attempt ran; it was stopped and requeued, and runs again (the attempt does not count)', \
                     created_at, started_at, NULL, {now}, {now} FROM jobs \
                     WHERE id = $1 AND EXISTS (SELECT 1 FROM notice_tasks WHERE notice_tasks.task = jobs.task)"
                ))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(requeued)
        }
        .await;
        self.observe(done, true)
    }

    /// Writes this node's row: alive now, serving `tasks`. Also the probe that tells a
    /// process its storage took a write again after a fault.
    pub async fn heartbeat(&self, node: &str, tasks: &[String]) -> Result<(), sqlx::Error> {
        let now = self.now();
        let tasks = serde_json::to_string(tasks).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(&format!(
            "INSERT INTO nodes (id, tasks, started_at, seen_at) VALUES ($1, $2, {now}, {now}) \
             ON CONFLICT (id) DO UPDATE SET tasks = excluded.tasks, seen_at = excluded.seen_at"
        ))
        .bind(node)
        .bind(tasks)
        .execute(&self.pool)
        .await;
        self.observe(done, true).map(|_| ())
    }

    /// Removes this node's row at a clean stop, and rows of nodes gone for a day.
    pub async fn forget_node(&self, node: &str) -> Result<(), sqlx::Error> {
        let now = self.now();
        let done = sqlx::query(&format!(
            "DELETE FROM nodes WHERE id = $1 OR seen_at < {now} - 86400000"
        ))
        .bind(node)
        .execute(&self.pool)
        .await;
        self.observe(done, false).map(|_| ())
    }

    /// The tasks served by nodes seen within `window`.
    pub async fn served_tasks(
        &self,
        window: Duration,
    ) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT tasks FROM nodes WHERE seen_at >= {} - $1",
            self.now()
        ))
        .bind(window.as_millis() as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut served = std::collections::BTreeSet::new();
        for row in &rows {
            let tasks: String = row.try_get("tasks")?;
            served.extend(serde_json::from_str::<Vec<String>>(&tasks).unwrap_or_default());
        }
        Ok(served)
    }

    /// Deletes one batch of jobs that ended more than `retain` ago, output first, in
    /// statements that each touch at most a few thousand rows, so no lock is held long.
    /// On PostgreSQL one node at a time sweeps (a transaction-scoped advisory lock that
    /// others skip rather than wait for). Returns `None` when nothing is left to delete, else
    /// the number of jobs deleted by this batch (0 while their output is still going).
    pub async fn expire_batch(&self, retain: Duration) -> Result<Option<u64>, sqlx::Error> {
        const JOBS_PER_BATCH: i64 = 200;
        const OUTPUT_ROWS_PER_STATEMENT: i64 = 5_000;
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // 0x73686966 is "shif": one sweeper among the nodes sharing this database.
            let row = sqlx::query("SELECT pg_try_advisory_xact_lock(1936222566) AS got")
                .fetch_one(&mut *tx)
                .await?;
            if !row.try_get::<bool, _>("got")? {
                return Ok(None);
            }
        }
        let ids: Vec<i64> = sqlx::query(&format!(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < {} - $1 \
             ORDER BY finished_at LIMIT $2",
            self.now()
        ))
        .bind(retain.as_millis() as i64)
        .bind(JOBS_PER_BATCH)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("id"))
        .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        let list = ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let output = sqlx::query(&format!(
            "DELETE FROM job_output WHERE (job_id, seq) IN \
             (SELECT job_id, seq FROM job_output WHERE job_id IN ({list}) LIMIT {OUTPUT_ROWS_PER_STATEMENT})"
        ))
        .execute(&mut *tx)
        .await?;
        let deleted = if output.rows_affected() as i64 >= OUTPUT_ROWS_PER_STATEMENT {
            // More output left: the jobs go in a later batch, once their output has.
            0
        } else {
            sqlx::query(&format!("DELETE FROM jobs WHERE id IN ({list})"))
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        let committed = tx.commit().await;
        self.observe(committed, true)?;
        Ok(Some(deleted))
    }

    /// The database's size on disk in bytes.
    pub async fn size_bytes(&self) -> Result<i64, sqlx::Error> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()"
            }
            Backend::Postgres => "SELECT pg_database_size(current_database()) AS n",
        };
        sqlx::query(sql).fetch_one(&self.pool).await?.try_get("n")
    }

    /// The highest output sequence number of a job (0 if none), so a new attempt appends.
    pub async fn last_seq(&self, job_id: i64) -> Result<i64, sqlx::Error> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM job_output WHERE job_id = $1")
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
        row.try_get::<i64, _>("last")
    }

    /// Writes output lines, a few hundred per statement. A batch the database refuses for
    /// its content (not for a fault of the database) is written line by line, and a line
    /// refused alone is replaced by a note saying so: one bad line never blocks the others.
    /// Only a fault of the database (disk full, connection lost) is returned, and then the
    /// caller keeps the lines and tries again.
    pub async fn append_output(&self, lines: &[OutputLine]) -> Result<(), sqlx::Error> {
        // 6 binds a line; stay well under every backend's bind limit.
        for chunk in lines.chunks(500) {
            match self.insert_output(chunk).await {
                Ok(()) => {}
                Err(e) if classify(&e).is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, lines = chunk.len(), "the database refused a batch of job output; writing it line by line");
                    for line in chunk {
                        if let Err(e) = self.insert_output(std::slice::from_ref(line)).await {
                            if classify(&e).is_some() {
                                return Err(e);
                            }
                            let note = OutputLine {
                                stream: "shiftd",
                                line: format!("[this line could not be stored: {e}]"),
                                ..line.clone()
                            };
                            self.insert_output(std::slice::from_ref(&note)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn insert_output(&self, chunk: &[OutputLine]) -> Result<(), sqlx::Error> {
        let mut sql =
            String::from("INSERT INTO job_output (job_id, seq, attempt, stream, at, line) VALUES ");
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = i * 6;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                )
            })
            .collect();
        sql += &values.join(", ");
        // A retried batch after a blip may have been written already.
        sql += " ON CONFLICT (job_id, seq) DO NOTHING";
        let mut query = sqlx::query(&sql);
        for l in chunk {
            query = query
                .bind(l.job_id)
                .bind(l.seq)
                .bind(l.attempt)
                .bind(l.stream)
                .bind(l.at)
                .bind(storable(&l.line).into_owned());
        }
        let done = query.execute(&self.pool).await;
        self.observe(done, true).map(|_| ())
    }

    /// Output lines after `after_seq`, oldest first.
    pub async fn output(
        &self,
        job_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<OutputLine>, sqlx::Error> {
        let rows = sqlx::query("SELECT job_id, seq, attempt, stream, at, line FROM job_output WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(job_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let stream: String = r.try_get("stream")?;
                Ok(OutputLine {
                    job_id: r.try_get("job_id")?,
                    seq: r.try_get("seq")?,
                    attempt: r.try_get("attempt")?,
                    stream: match stream.as_str() {
                        "stdout" => "stdout",
                        "stderr" => "stderr",
                        _ => "shiftd",
                    },
                    at: r.try_get("at")?,
                    line: r.try_get("line")?,
                })
            })
            .collect()
    }

    /// The last `n` output lines, oldest first.
    pub async fn output_tail(&self, job_id: i64, n: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT line FROM job_output WHERE job_id = $1 ORDER BY seq DESC LIMIT $2")
                .bind(job_id)
                .bind(n)
                .fetch_all(&self.pool)
                .await?;
        let mut lines = rows
            .iter()
            .map(|r| r.try_get::<String, _>("line"))
            .collect::<Result<Vec<_>, _>>()?;
        lines.reverse();
        Ok(lines)
    }

    /// [`Store::counts_active`]'s statement, through `jobs_by_phase` on PostgreSQL and
    /// `jobs_claimable` on SQLite: only queued and running jobs are read, however many are
    /// scheduled or finished.
    pub fn counts_active_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => {
                "SELECT task, state, COUNT(*) AS n FROM jobs WHERE phase = 'live' GROUP BY task, state"
            }
            Backend::Sqlite => {
                "SELECT task, state, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'running') GROUP BY task, state"
            }
        }
    }

    /// Queued and running jobs by task: `(queued, running)`.
    pub async fn counts_active(
        &self,
    ) -> Result<std::collections::BTreeMap<String, (i64, i64)>, sqlx::Error> {
        let rows = sqlx::query(self.counts_active_sql())
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for r in &rows {
            let task: String = r.try_get("task")?;
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            let entry: &mut (i64, i64) = out.entry(task).or_default();
            if state == "queued" {
                entry.0 = n;
            } else {
                entry.1 = n;
            }
        }
        Ok(out)
    }

    /// Jobs by task and state, for status and metrics.
    pub async fn counts(&self) -> Result<Vec<(String, JobState, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT task, state, COUNT(*) AS n FROM jobs GROUP BY task, state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .filter_map(|r| {
                let state: String = r.try_get("state").ok()?;
                Some(Ok((
                    r.try_get("task").ok()?,
                    JobState::parse(&state)?,
                    r.try_get("n").ok()?,
                )))
            })
            .collect()
    }
}
