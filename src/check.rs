//! `shiftd check`: validate the configuration, show what is in force, and compare the
//! budgets with the installed systemd unit.

use std::path::Path;

use crate::cli::exit;
use crate::config::{fmt_duration, Config};
use crate::unitcheck::{check_installed_unit, Budgets, UnitFit};

/// How much `shiftd check` says and asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Print nothing unless something is wrong.
    pub quiet: bool,
    /// Do not ask systemd about the installed unit.
    pub skip_unit: bool,
}

/// Runs the check and returns the exit code.
pub fn run(path: Option<&Path>, options: Options) -> u8 {
    let say = |line: &str| {
        if !options.quiet {
            println!("{line}");
        }
    };
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
    say(&format!(
        "# shiftd check: configuration from {source} (plus SHIFTD_* overrides) is valid"
    ));
    // What is printed ends up in terminals, tickets and journals (post-install-check runs
    // this): show a copy without passwords, environment values or token secrets.
    match toml::to_string_pretty(&crate::redact::config(&config)) {
        Ok(text) => say(&text),
        Err(e) => say(&format!("# (cannot render the settings: {e})")),
    }
    let s = &config.shutdown;
    say(&format!(
        "# stop budget: {} of shutdown.grace {} ({})",
        fmt_duration(config.stop_budget()),
        fmt_duration(s.grace),
        config.explain_stop_budget()
    ));
    if options.skip_unit {
        return exit::OK;
    }
    unit(&config, say)
}

/// The unit half of the check: compares the installed unit's timeouts with the budgets of
/// `config`. Says what fits through `say`; prints what does not fit (the drop-in to write)
/// to stderr and returns [`exit::CONFIG`]. `shiftd reload` runs it before every hand-over.
pub fn unit(config: &Config, say: impl Fn(&str)) -> u8 {
    let budgets = Budgets {
        stop_grace: config.shutdown.grace,
        startup_total: crate::service::startup_budget(config),
    };
    match check_installed_unit("shiftd", &budgets) {
        UnitFit::Skipped(why) => {
            say(&format!("# unit check: {why}"));
            exit::OK
        }
        UnitFit::Fits(lines) => {
            for line in lines {
                say(&format!("# unit check: {line}"));
            }
            exit::OK
        }
        UnitFit::DoesNotFit(lines) => {
            for line in lines {
                eprintln!("shiftd check: {line}");
            }
            exit::CONFIG
        }
    }
}
