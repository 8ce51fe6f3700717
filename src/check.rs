//! `shiftd check`: validate the configuration, show what is in force, and compare the
//! budgets with the installed systemd unit.

use std::path::Path;

use crate::cli::exit;
use crate::config::{fmt_duration, Config};

/// Runs the check and returns the exit code.
pub fn run(path: Option<&Path>) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shiftd check: {e}");
            return exit::CONFIG;
        }
    };
    let source = match path {
        Some(p) => p.display().to_string(),
        None if Path::new(crate::config::DEFAULT_CONFIG_PATH).exists() => {
            crate::config::DEFAULT_CONFIG_PATH.to_string()
        }
        None => "built-in defaults".to_string(),
    };
    println!("# shiftd check: configuration from {source} (plus SHIFTD_* overrides) is valid");
    match toml::to_string_pretty(&config) {
        Ok(text) => println!("{text}"),
        Err(e) => println!("# (cannot render the settings: {e})"),
    }
    let s = &config.shutdown;
    println!(
        "# stop budget: {} of shutdown.grace {} (http_drain {} + jobs_drain {} + longest kill_grace {} + flush {} + db_close {})",
        fmt_duration(config.stop_budget()),
        fmt_duration(s.grace),
        fmt_duration(s.http_drain),
        fmt_duration(s.jobs_drain),
        fmt_duration(config.max_kill_grace()),
        fmt_duration(s.flush),
        fmt_duration(s.db_close)
    );
    exit::OK
}
