//! What the overview page shows, gathered in one place: the process (state, version,
//! uptime, requests in flight), the queue by task, paused tasks, the database's size, the
//! chart of the last hour and this host's last stops. The page renders it; nothing here
//! is HTML but the chart's SVG.
//!
//! Costs: two bounded statements (the chart's hour through `jobs_finished`, the queue
//! through the index of jobs that are not final), run together; the paused tasks and the
//! database size are the runner's cached view; the stops a small file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::http::{ApiError, AppState};
use crate::jobs::store::{now_ms, QueueCounts};
pub use crate::stops::{StageEntry, StopEntry};

/// One task's jobs that are not final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQueue {
    pub task: String,
    pub queued: i64,
    pub running: i64,
    pub scheduled: i64,
}

/// The overview page's data.
#[derive(Debug, Clone)]
pub struct Overview {
    /// "starting", "ready", "reloading", "draining", …
    pub state: &'static str,
    pub version: &'static str,
    pub uptime: Duration,
    /// Requests in progress in this process (this one included).
    pub in_flight: usize,
    /// The configured tasks the caller may read (and any other task with jobs waiting),
    /// by name.
    pub queue: Vec<TaskQueue>,
    /// Paused tasks the caller may read.
    pub paused: Vec<String>,
    /// `None` until the runner has measured it.
    pub db_size_bytes: Option<u64>,
    /// `<svg id="finished-chart">…</svg>`: jobs finished per minute over the last hour.
    pub chart_svg: String,
    /// This host's last stops, newest first.
    pub stops: Vec<StopEntry>,
}

/// Whether a caller reading `readable` (`None`: every task) may see `task`.
fn may_read(readable: Option<&[String]>, task: &str) -> bool {
    match readable {
        None => true,
        Some(tasks) => tasks.iter().any(|t| t == task),
    }
}

/// The overview for a caller who may read the tasks `readable` (`None`: every task; see
/// `Caller::readable_tasks`). A database error is the API's (a fault of the database: 503
/// with its reason).
pub async fn overview(state: &AppState, readable: Option<&[String]>) -> Result<Overview, ApiError> {
    let now = now_ms();
    // The chart's first minute: 59 whole minutes before the current one.
    let since = (now - now.rem_euclid(60_000)) - 59 * 60_000;
    let store = &state.jobs.store;
    let stops = tokio::task::spawn_blocking(crate::stops::history);
    let (finished, counts) = tokio::join!(
        store.finished_per_minute(since, readable),
        store.queue_counts()
    );
    let view = state.jobs.runner.view();
    let db_size_bytes = match view.size_bytes {
        Some(n) => Some(n),
        None => store.size_bytes().await.ok(),
    };
    let configured: Vec<String> = state.snapshot().tasks.keys().cloned().collect();
    Ok(Overview {
        state: state.lifecycle.state().as_str(),
        version: env!("CARGO_PKG_VERSION"),
        uptime: state.lifecycle.uptime(),
        in_flight: state.lifecycle.in_flight(),
        queue: queue(&configured, counts?, readable),
        paused: view
            .paused
            .into_keys()
            .filter(|t| may_read(readable, t))
            .collect(),
        db_size_bytes: db_size_bytes.and_then(|n| u64::try_from(n).ok()),
        chart_svg: super::chart::finished_chart(&finished?, now.div_euclid(1000)),
        stops: stops.await.unwrap_or_default(),
    })
}

/// Every configured task, and every other task with jobs waiting, that the caller may
/// read, by name.
fn queue(
    configured: &[String],
    mut counts: BTreeMap<String, QueueCounts>,
    readable: Option<&[String]>,
) -> Vec<TaskQueue> {
    for task in configured {
        counts.entry(task.clone()).or_default();
    }
    counts
        .into_iter()
        .filter(|(task, _)| may_read(readable, task))
        .map(|(task, c)| TaskQueue {
            task,
            queued: c.queued,
            running: c.running,
            scheduled: c.scheduled,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_lists_configured_tasks_and_only_what_the_caller_may_read() {
        let counts = BTreeMap::from([
            (
                "b".to_owned(),
                QueueCounts {
                    queued: 3,
                    running: 1,
                    scheduled: 2,
                },
            ),
            (
                "gone".to_owned(),
                QueueCounts {
                    queued: 1,
                    ..QueueCounts::default()
                },
            ),
        ]);
        let configured = ["a".to_owned(), "b".to_owned()];
        let all = queue(&configured, counts.clone(), None);
        let names: Vec<&str> = all.iter().map(|q| q.task.as_str()).collect();
        assert_eq!(names, ["a", "b", "gone"]);
        assert_eq!(
            all[1],
            TaskQueue {
                task: "b".into(),
                queued: 3,
                running: 1,
                scheduled: 2
            }
        );
        assert_eq!(all[0].queued, 0);
        let only_a = queue(&configured, counts.clone(), Some(&["a".to_owned()]));
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].task, "a");
        assert!(queue(&configured, counts, Some(&[])).is_empty());
    }
}
