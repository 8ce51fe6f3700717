//! shiftd: a systemd-native HTTP job service. The lifecycle module serves any axum app;
//! the rest is the job service built on it.

pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod dbfault;
pub mod http;
pub mod jobs;
/// The lifecycle, its own crate: it knows nothing of jobs, routes or SQL.
pub use shiftd_lifecycle as lifecycle;
pub mod logging;
pub mod notices;
pub mod redact;
pub mod service;
pub mod stops;
pub mod ui;
pub mod unitcheck;
