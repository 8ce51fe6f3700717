//! The smallest service on `shiftd_lifecycle`: an axum app with no database that still
//! gets READY/STATUS/STOPPING, socket activation, signals (stop, fast stop, reload, report),
//! the watchdog, a drain bounded by its budget, and the hand-over to a new binary with no
//! gap (SIGUSR2, or a client on the control socket as `shiftd reload` is).
//!
//! ```sh
//! cargo run -p shiftd-lifecycle --example minimal # serves on 127.0.0.1:3000
//! systemd-socket-activate -l 127.0.0.1:3000 target/debug/examples/minimal
//! kill -USR2 <pid>                                 # a new process takes over the socket
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use futures::future::{BoxFuture, FutureExt};
use shiftd_lifecycle::{
    App, HandOverNames, HandOverSettings, Lifecycle, Notifier, Report, SettingNames, Settings,
    Stage, SystemdEnv,
};

/// The lifecycle's settings; a real service reads them from its configuration.
/// What this example calls the hand-over's variable, command and timeout setting.
const HAND_OVER: HandOverNames = HandOverNames {
    env_var: "MINIMAL_HANDOVER",
    reload_command: "kill -USR2 <pid>",
    ready_setting: "step_timeout",
};

const SETTINGS: Settings = Settings {
    header_read_timeout: Duration::from_secs(10),
    step_timeout: Duration::from_secs(30),
    grace: Duration::from_secs(15),
    idle_close: Duration::from_millis(250),
    // What the messages tell an operator to change: here, the source.
    names: SettingNames {
        listen: "the address in main()",
        step_timeout: "SETTINGS.step_timeout",
        grace: "SETTINGS.grace",
    },
};

struct Minimal;

impl App for Minimal {
    fn report(&self) -> Report {
        Report {
            status_line: "serving hello".into(),
            details: String::new(),
        }
    }

    fn reload(&self) -> BoxFuture<'_, Result<Settings, String>> {
        async { Ok(SETTINGS) }.boxed()
    }

    fn stop_plan(&self) -> Vec<Stage> {
        vec![
            Stage::stop_accepting(),
            Stage::http_drain(Duration::from_secs(10)),
        ]
    }
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread exists.
    let systemd = unsafe { SystemdEnv::take(HAND_OVER.env_var) }.expect("read LISTEN_FDS");
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("start the runtime");
    runtime.block_on(async {
        let signals = shiftd_lifecycle::signals::os_signals().expect("install signal handlers");
        let mut life = Lifecycle::new(SETTINGS, systemd, Notifier::Systemd, signals);
        // Hand-over: SIGUSR2 (or a request on this control socket) starts this same program
        // with the listening socket; it takes over once its own startup is done.
        life.enable_hand_over(HandOverSettings::from_current_process(
            std::env::temp_dir().join("minimal-example-control.sock"),
            SETTINGS.step_timeout,
            HAND_OVER,
        ));
        let listener = match life.listener("127.0.0.1:3000").await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(69);
            }
        };
        // Started by a hand-over: become the main process now (nothing below can fail).
        if let Err(e) = life.take_over().await {
            tracing::error!("{e}");
            return ExitCode::from(69);
        }
        let router = Router::new().route("/", get(|| async { "hello\n" }));
        let report = life.serve(listener, router, Arc::new(Minimal)).await;
        ExitCode::from(if report.cut.is_empty() { 0 } else { 75 })
    })
}
