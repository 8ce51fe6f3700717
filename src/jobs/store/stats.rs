//! Read-only statements for the dashboard's overview: jobs finished per minute, the queue
//! by task. Each is bounded by an index: the first counts ranges of `jobs_finished` within
//! one hour, the second reads only jobs that are not final.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{JobState, Store};
use crate::config::Backend;

/// A task's jobs that are not final, across every node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: i64,
    pub running: i64,
    pub scheduled: i64,
}

/// Jobs that reached a final state in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedInMinute {
    /// The minute's start, unix seconds.
    pub minute: i64,
    pub state: JobState,
    pub count: i64,
}

/// `finished_per_minute`'s statement: `$1` the first minute's first millisecond; then,
/// when the caller may read only some tasks, one placeholder per task. One row per minute
/// of the hour (a recursive CTE), each state counted by its own range of the index
/// `jobs_finished`: counting ranges of one index reads no row and
/// sorts nothing, where a `GROUP BY` of the minutes sorted every job of the hour.
pub fn finished_per_minute_sql(tasks: usize, backend: Backend) -> String {
    let only = if tasks == 0 {
        String::new()
    } else {
        let list: Vec<String> = (0..tasks).map(|i| format!("${}", i + 2)).collect();
        format!(" AND task IN ({})", list.join(", "))
    };
    // The state is counted in a CASE, not matched in the WHERE: an equality there lets a
    // planner without statistics (a table just loaded) pick another index and walk every
    // finished job of that state once per minute (seconds, with 100,000 jobs).
    let column = final_state_column(backend);
    let count = |state: &str| {
        format!(
            "(SELECT COALESCE(SUM(CASE WHEN {column} = '{state}' THEN 1 ELSE 0 END), 0) FROM jobs \
             WHERE finished_at IS NOT NULL AND finished_at >= m.t \
             AND finished_at < m.t + 60000{only}) AS {state}"
        )
    };
    format!(
        "WITH RECURSIVE m(t) AS (SELECT CAST($1 AS BIGINT) UNION ALL SELECT t + 60000 FROM m \
         WHERE t + 60000 < CAST($1 AS BIGINT) + {HOUR_MS}) \
         SELECT t / 1000 AS minute, {}, {}, {} FROM m ORDER BY t",
        count("succeeded"),
        count("failed"),
        count("cancelled")
    )
}

/// The column `jobs_finished` holds a finished job's state in, beside `finished_at`:
/// PostgreSQL's `phase` (a finished job's phase is its state; a claim never changes it, and
/// no index there may name `state`, or claims could not be heap-only: migration 0009);
/// SQLite's `state` itself (it has no heap-only updates to keep, and reads a computed
/// column from the row, not the index).
pub fn final_state_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "phase",
        Backend::Sqlite => "state",
    }
}

/// The chart's span.
const HOUR_MS: i64 = 3_600_000;

/// `queue_counts`'s statement: the predicate is `jobs_runnable`'s (`RUNNABLE`), so only jobs
/// that are not final are read.
pub const QUEUE_COUNTS_SQL: &str = "SELECT task, state, COUNT(*) AS n FROM jobs \
     WHERE finished_at IS NULL GROUP BY task, state";

impl Store {
    /// Jobs finished (succeeded, failed, cancelled) in each minute of the hour from
    /// `since_ms` (unix ms, a minute's start), by state, oldest minute first; minutes and
    /// states with none are left out. `tasks`: only these tasks' jobs (`None`: every task).
    pub async fn finished_per_minute(
        &self,
        since_ms: i64,
        tasks: Option<&[String]>,
    ) -> Result<Vec<FinishedInMinute>, sqlx::Error> {
        let tasks = match tasks {
            // A caller who may read no task sees nothing finish.
            Some([]) => return Ok(Vec::new()),
            Some(tasks) => tasks,
            None => &[],
        };
        let sql = finished_per_minute_sql(tasks.len(), self.backend);
        let mut query = sqlx::query(&sql).bind(since_ms);
        for task in tasks {
            query = query.bind(task.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in &rows {
            let minute: i64 = r.try_get("minute")?;
            for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
                let count: i64 = r.try_get(state.as_str())?;
                if count > 0 {
                    out.push(FinishedInMinute {
                        minute,
                        state,
                        count,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Queued, running and scheduled jobs by task (every node).
    pub async fn queue_counts(&self) -> Result<BTreeMap<String, QueueCounts>, sqlx::Error> {
        let rows = sqlx::query(QUEUE_COUNTS_SQL).fetch_all(&self.pool).await?;
        let mut out: BTreeMap<String, QueueCounts> = BTreeMap::new();
        for r in &rows {
            let task: String = r.try_get("task")?;
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            let entry = out.entry(task).or_default();
            match state.as_str() {
                "queued" => entry.queued = n,
                "running" => entry.running = n,
                "scheduled" => entry.scheduled = n,
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_statement_binds_one_placeholder_per_task() {
        let all = finished_per_minute_sql(0, Backend::Postgres);
        assert!(!all.contains("task IN"), "{all}");
        assert_eq!(
            all.matches("FROM jobs WHERE finished_at IS NOT NULL")
                .count(),
            3
        );
        assert_eq!(all.matches("CASE WHEN phase = ").count(), 3);
        assert!(QUEUE_COUNTS_SQL.contains(&format!("WHERE {}", crate::jobs::store::RUNNABLE)));
        let two = finished_per_minute_sql(2, Backend::Sqlite);
        assert_eq!(two.matches("CASE WHEN state = ").count(), 3);
        assert_eq!(two.matches("AND task IN ($2, $3))").count(), 3, "{two}");
    }
}
