//! The overview's data until src/ui/overview.rs (with src/stops.rs and src/ui/chart.rs)
//! lands: the same shape, filled from this process and the runner's queue view, with no
//! chart and no stop history yet. Deleted when the real module is merged.

use crate::http::AppState;

/// Queued, running and scheduled jobs of one task (all nodes).
#[derive(Debug, Clone)]
pub struct TaskQueue {
    pub task: String,
    pub queued: i64,
    pub running: i64,
    pub scheduled: i64,
}

/// One stage of a stop, as the stop history records it.
#[derive(Debug, Clone)]
pub struct StageEntry {
    pub name: String,
    pub setting: String,
    pub budget_ms: u64,
    pub took_ms: u64,
    pub cut: bool,
    pub note: String,
}

/// One stop of this host, as the stop history records it.
#[derive(Debug, Clone)]
pub struct StopEntry {
    pub at: i64,
    pub kind: String,
    pub version: String,
    pub elapsed_ms: u64,
    pub stages: Vec<StageEntry>,
}

/// What the overview page shows.
#[derive(Debug, Clone)]
pub struct Overview {
    pub state: &'static str,
    pub version: &'static str,
    pub uptime: std::time::Duration,
    pub in_flight: usize,
    pub queue: Vec<TaskQueue>,
    pub paused: Vec<String>,
    pub db_size_bytes: Option<u64>,
    pub chart_svg: String,
    pub stops: Vec<StopEntry>,
}

/// The overview for a caller who may read the tasks `readable` (`None`: every task).
pub async fn overview(
    state: &AppState,
    readable: Option<&[String]>,
) -> Result<Overview, crate::http::ApiError> {
    let may_read = |task: &str| match readable {
        None => true,
        Some(r) => r.iter().any(|t| t == task),
    };
    let view = state.jobs.runner.view();
    let scheduled = |task: &str| {
        view.counts
            .iter()
            .filter(|(t, s, _)| t == task && *s == crate::jobs::JobState::Scheduled)
            .map(|(_, _, n)| *n)
            .sum::<i64>()
    };
    let queue = state
        .snapshot()
        .tasks
        .keys()
        .filter(|task| may_read(task))
        .map(|task| {
            let (queued, running) = view.depth.get(task).copied().unwrap_or((0, 0));
            TaskQueue {
                task: task.clone(),
                queued,
                running,
                scheduled: scheduled(task),
            }
        })
        .collect();
    Ok(Overview {
        state: state.lifecycle.state().as_str(),
        version: env!("CARGO_PKG_VERSION"),
        uptime: state.lifecycle.uptime(),
        in_flight: state.lifecycle.in_flight(),
        queue,
        paused: view
            .paused
            .keys()
            .filter(|t| may_read(t))
            .cloned()
            .collect(),
        db_size_bytes: view.size_bytes.and_then(|n| u64::try_from(n).ok()),
        chart_svg: String::new(),
        stops: Vec::new(),
    })
}
