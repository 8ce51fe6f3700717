//! The statements of schedules: registering a schedule's baseline and enqueueing one
//! occurrence exactly once across every node sharing the database.

use std::time::Duration;

use sqlx::Row;

use super::{now_ms, Store, JOB_COLUMNS};
use crate::config::CatchUp;
use crate::jobs::store::Job;

/// What [`Store::enqueue_occurrence`] did.
#[derive(Debug, Clone)]
pub enum OccurrenceOutcome {
    /// This call recorded the occurrence and queued its job.
    Enqueued(Box<Job>),
    /// Another node (or an earlier run) recorded this occurrence or a later one.
    AlreadyRecorded,
    /// The occurrence is before the schedule's baseline (first seen or last changed).
    BeforeBaseline,
    /// Missed, and `catch_up = "none"`: skipped.
    Missed,
    /// The schedule has no baseline row (the database was reset): register it again.
    NotRegistered,
}

impl Store {
    /// Records that `task` has the schedule `spec` (expression and time zone). A schedule
    /// seen for the first time, or whose spec differs from the one stored, gets the
    /// baseline `now`: no occurrence before it is enqueued. The same spec keeps its
    /// baseline, so a restart catches up occurrences it missed.
    pub async fn register_schedule(&self, task: &str, spec: &str) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let result = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO schedules (task, spec, since) VALUES ($1, $2, $3) ON CONFLICT (task) DO NOTHING",
            )
            .bind(task)
            .bind(spec)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE schedules SET spec = $2, since = $3 WHERE task = $1 AND spec <> $2")
                .bind(task)
                .bind(spec)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        self.observe(result, true)
    }

    /// Enqueues the occurrence `at` (ms) of `task`'s schedule, at most once across all
    /// nodes: the occurrence row (unique on task and time) and its job are inserted in one
    /// transaction, the job only if the row was new. Nothing is enqueued for an occurrence
    /// before the schedule's baseline, or at or before the latest one recorded; with
    /// `catch_up = "none"` nothing more than `grace` late. Occurrence rows older than
    /// `retain` before `at` are deleted in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue_occurrence(
        &self,
        task: &str,
        at: i64,
        catch_up: CatchUp,
        grace: Duration,
        max_attempts: i64,
        retain: Duration,
    ) -> Result<OccurrenceOutcome, sqlx::Error> {
        let now = now_ms();
        if catch_up == CatchUp::None && now - at > grace.as_millis() as i64 {
            return Ok(match self.occurrence_state(task, at).await? {
                OccurrenceOutcome::AlreadyRecorded => OccurrenceOutcome::AlreadyRecorded,
                OccurrenceOutcome::NotRegistered => OccurrenceOutcome::NotRegistered,
                OccurrenceOutcome::BeforeBaseline => OccurrenceOutcome::BeforeBaseline,
                _ => OccurrenceOutcome::Missed,
            });
        }
        let result = async {
            let mut tx = self.pool.begin().await?;
            // The first statement writes, so SQLite takes the write lock at once (waiting
            // under busy_timeout) instead of failing to upgrade a read later. Inserted only
            // when the schedule's baseline is at or before this occurrence, and no later
            // occurrence is recorded (a node whose clock is behind never enqueues an older
            // occurrence after a newer one ran); the key makes a second insert a no-op.
            let inserted = sqlx::query(
                "INSERT INTO schedule_occurrences (task, occurrence, created_at) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM schedules WHERE task = $1 AND since <= $2) \
                 AND NOT EXISTS (SELECT 1 FROM schedule_occurrences WHERE task = $1 AND occurrence >= $2) \
                 ON CONFLICT (task, occurrence) DO NOTHING",
            )
            .bind(task)
            .bind(at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != 1 {
                // Nothing written; the transaction rolls back when dropped.
                return Ok(None);
            }
            let rows = sqlx::query(&format!(
                "INSERT INTO jobs (task, params, state, attempts, max_attempts, idempotency_key, token_name, created_at, updated_at, run_after, cancel_requested) \
                 VALUES ($1, '{{}}', 'queued', 0, $2, NULL, NULL, $3, $3, $4, 0) RETURNING {JOB_COLUMNS}"
            ))
            .bind(task)
            .bind(max_attempts)
            .bind(now)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            let job = Job::from_row(rows.first().ok_or(sqlx::Error::RowNotFound)?)?;
            sqlx::query(
                "UPDATE schedule_occurrences SET job_id = $3 WHERE task = $1 AND occurrence = $2",
            )
            .bind(task)
            .bind(at)
            .bind(job.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM schedule_occurrences WHERE task = $1 AND occurrence < $2")
                .bind(task)
                .bind(at.saturating_sub(retain.as_millis() as i64))
                .execute(&mut *tx)
                .await?;
            // Acted on (the job reported) only once this commit succeeded.
            tx.commit().await?;
            Ok(Some(job))
        }
        .await;
        let wrote = matches!(result, Ok(Some(_)));
        match self.observe(result, wrote)? {
            Some(job) => Ok(OccurrenceOutcome::Enqueued(Box::new(job))),
            None => self.occurrence_state(task, at).await,
        }
    }

    /// Why the occurrence `at` of `task` is not to be enqueued now, read without writing:
    /// no baseline, before the baseline, or recorded (it or a later one); else `Missed`.
    async fn occurrence_state(
        &self,
        task: &str,
        at: i64,
    ) -> Result<OccurrenceOutcome, sqlx::Error> {
        let row = sqlx::query(
            "SELECT since, (SELECT MAX(occurrence) FROM schedule_occurrences WHERE task = $1) AS latest \
             FROM schedules WHERE task = $1",
        )
        .bind(task)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(OccurrenceOutcome::NotRegistered);
        };
        let since: i64 = row.try_get("since")?;
        let latest: Option<i64> = row.try_get("latest")?;
        Ok(if at < since {
            OccurrenceOutcome::BeforeBaseline
        } else if latest.is_some_and(|l| l >= at) {
            OccurrenceOutcome::AlreadyRecorded
        } else {
            OccurrenceOutcome::Missed
        })
    }
}
