//! Durable jobs: task definitions, the queue in the database, the output buffer and the runner.
//!
//! Nothing here reads signals or talks to systemd: the runner takes part in a stop through
//! [`Runner::drain`] and [`Runner::flush`], which `service::stop_plan` puts in the stage list.

pub mod depth;
pub mod finisher;
pub mod output;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod shim;
pub mod spawn;
pub mod store;
pub mod task;

pub use depth::ClaimDepth;
pub use runner::{QueueView, Runner, RunnerSettings, RunningJob};
pub use scheduler::{Scheduler, SchedulerSettings};
pub use store::{Job, JobPage, JobState, ListFilter, OutputLine, Store};
pub use task::{ParamError, Task};
