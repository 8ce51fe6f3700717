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
pub struct StopStage {
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
    pub at: u64,
    pub kind: String,
    pub version: String,
    pub elapsed_ms: u64,
    pub stages: Vec<StopStage>,
}

/// What the overview page shows.
#[derive(Debug, Clone)]
pub struct Overview {
    pub state: String,
    pub version: String,
    pub uptime: std::time::Duration,
    pub in_flight: usize,
    pub queue: Vec<TaskQueue>,
    pub paused: Vec<String>,
    pub db_size_bytes: Option<u64>,
    pub chart_svg: String,
    pub stops: Vec<StopEntry>,
}

pub async fn overview(state: &AppState) -> Result<Overview, crate::http::ApiError> {
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
        state: state.lifecycle.state().as_str().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime: state.lifecycle.uptime(),
        in_flight: state.lifecycle.in_flight(),
        queue,
        paused: view.paused.keys().cloned().collect(),
        db_size_bytes: view.size_bytes.and_then(|n| u64::try_from(n).ok()),
        chart_svg: String::new(),
        stops: Vec::new(),
    })
}
