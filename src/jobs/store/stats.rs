//! Read-only statements for the dashboard's overview: jobs finished per minute, the queue
//! by task. Each is bounded by an index: the first walks `jobs_finished` over one time
//! range, the second the partial index `jobs_runnable` (its predicate word for word).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{JobState, Store};

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

/// `finished_per_minute`'s statement: `$1` the first millisecond; then, when the caller may
/// read only some tasks, one placeholder per task.
fn finished_per_minute_sql(tasks: usize) -> String {
    let mut sql = String::from(
        "SELECT (finished_at / 60000) * 60 AS minute, state, COUNT(*) AS n FROM jobs \
         WHERE finished_at IS NOT NULL AND finished_at >= $1",
    );
    if tasks > 0 {
        let list: Vec<String> = (0..tasks).map(|i| format!("${}", i + 2)).collect();
        sql += &format!(" AND task IN ({})", list.join(", "));
    }
    sql += " GROUP BY 1, 2 ORDER BY 1";
    sql
}

/// `queue_counts`'s statement: the predicate is `jobs_runnable`'s, so only jobs that are
/// not final are read.
pub(super) const QUEUE_COUNTS_SQL: &str = "SELECT task, state, COUNT(*) AS n FROM jobs \
     WHERE state IN ('queued', 'scheduled', 'running') GROUP BY task, state";

impl Store {
    /// Jobs finished (succeeded, failed, cancelled) per minute since `since_ms` (unix ms),
    /// by state, oldest minute first. `tasks`: only these tasks' jobs (`None`: every task).
    /// The rows read are the jobs finished in the range, found through `jobs_finished`.
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
        let sql = finished_per_minute_sql(tasks.len());
        let mut query = sqlx::query(&sql).bind(since_ms);
        for task in tasks {
            query = query.bind(task.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.try_get("state")?;
            // Only final states have a finish time; anything else is not counted.
            let Some(state) = JobState::parse(&state).filter(|s| s.is_final()) else {
                continue;
            };
            out.push(FinishedInMinute {
                minute: r.try_get("minute")?,
                state,
                count: r.try_get("n")?,
            });
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
        assert_eq!(
            finished_per_minute_sql(0),
            "SELECT (finished_at / 60000) * 60 AS minute, state, COUNT(*) AS n FROM jobs \
             WHERE finished_at IS NOT NULL AND finished_at >= $1 GROUP BY 1, 2 ORDER BY 1"
        );
        assert!(finished_per_minute_sql(2).contains("AND task IN ($2, $3) GROUP BY"));
    }
}
