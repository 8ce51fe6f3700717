//! The `shiftd` binary: parse the command line, load the configuration, run, exit.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use shiftd::cli::{exit, Cli, Command};
use shiftd::config::Config;
use shiftd::lifecycle::{self, Notifier, StartupError, SystemdEnv};
use shiftd::service::{self, ServeOptions};

fn main() -> ExitCode {
    // A job's process-group head (src/jobs/shim.rs): nothing of the service runs here.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(shiftd::jobs::shim::SHIM_ARG)) {
        return ExitCode::from(shiftd::jobs::shim::run(args.collect()));
    }
    // SAFETY: no other thread exists yet; the runtime is built below.
    let systemd = match unsafe { SystemdEnv::take(service::HAND_OVER_NAMES.env_var) } {
        Ok(env) => env,
        Err(e) => {
            eprintln!("shiftd: cannot read the sockets systemd passed (LISTEN_FDS): {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let cli = Cli::parse();
    match cli.command.clone().unwrap_or(Command::Serve) {
        Command::Man => match shiftd::cli::man_page() {
            Ok(page) => {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&page);
                ExitCode::from(exit::OK)
            }
            Err(e) => {
                eprintln!("shiftd: cannot render the man page: {e}");
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Check { quiet, skip_unit } => ExitCode::from(shiftd::check::run(
            cli.config.as_deref(),
            shiftd::check::Options { quiet, skip_unit },
        )),
        Command::Reload { timeout } => reload(cli.config.as_deref(), timeout),
        Command::Serve => serve(cli, systemd),
        Command::Job { client, action } => ExitCode::from(shiftd::client::run(
            cli.config.as_deref(),
            &client,
            shiftd::client::Action::Job(action),
        )),
        Command::Task { client, action } => ExitCode::from(shiftd::client::run(
            cli.config.as_deref(),
            &client,
            shiftd::client::Action::Task(action),
        )),
    }
}

fn serve(cli: Cli, systemd: SystemdEnv) -> ExitCode {
    let started = Instant::now();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shiftd: {e}");
            systemd.report_failure(&e.to_string());
            return ExitCode::from(exit::CONFIG);
        }
    };
    let log = shiftd::logging::init(&config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        let signals = match lifecycle::signals::os_signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return exit::FAILURE;
            }
        };
        let options = ServeOptions {
            config,
            config_path: cli.config.clone(),
            config_load_time: started.elapsed(),
            systemd,
            notifier: Notifier::Systemd,
            signals,
            log: Some(log),
            hand_over: true,
        };
        match service::serve(options).await {
            Ok(report) if report.cut.is_empty() => exit::OK,
            Ok(_) => exit::WORK_CUT,
            Err(StartupError::Interrupted { .. }) => exit::OK,
            Err(e) => {
                tracing::error!("{e}");
                exit::UNAVAILABLE
            }
        }
    });
    // Job processes and connections were dealt with by the stop; do not wait on stragglers.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::from(code)
}

/// `shiftd reload`: ask the running process for a hand-over and report how it ended.
fn reload(config_path: Option<&std::path::Path>, timeout: Option<std::time::Duration>) -> ExitCode {
    // The new process reads the same file: refuse here, before anything is started, when
    // it would refuse to start. Then the unit check that `shiftd check` makes, in this one
    // exec (each exec of the unit pays the sandbox's set-up again): a reload never hands
    // over to a configuration whose stop no longer fits TimeoutStopSec=.
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("shiftd: reload refused: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let unit = shiftd::check::unit(&config, |line| {
        println!("shiftd: {}", line.trim_start_matches("# "))
    });
    if unit != exit::OK {
        eprintln!("shiftd: reload refused: the unit does not fit the configuration (above); the running process serves on");
        return ExitCode::from(unit);
    }
    let timeout = timeout
        .unwrap_or_else(|| service::hand_over_timeout(&config) + std::time::Duration::from_secs(5));
    let path = service::control_path();
    match lifecycle::control::request_reload(&path, timeout) {
        Ok(what) => {
            println!("shiftd: reloaded: {what}");
            ExitCode::from(exit::OK)
        }
        Err(why) => {
            eprintln!("shiftd: reload failed: {why} (systemctl status shiftd)");
            ExitCode::from(exit::FAILURE)
        }
    }
}
