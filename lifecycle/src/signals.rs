//! Process signals, read in exactly one place and turned into [`Signal`].

use futures::stream::{BoxStream, StreamExt};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// What a signal asks of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop gracefully (a second one during the stop: stop fast).
    Stop,
    /// SIGQUIT: stop fast (skip the waiting, still flush and close in order).
    FastStop,
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR1: write a status report to the log.
    Report,
    /// SIGUSR2: hand over to a new process of the same program (as nginx's binary upgrade);
    /// `shiftd reload` asks for the same through the control socket and hears the outcome.
    HandOver,
}

/// A stream of signals; tests pass their own instead of [`os_signals`].
pub type SignalStream = BoxStream<'static, Signal>;

/// Installs the handlers and returns their stream. Call it early, so that a SIGTERM during
/// startup is seen rather than killing the process mid-migration.
pub fn os_signals() -> std::io::Result<SignalStream> {
    let signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2])?;
    Ok(signals
        .filter_map(|raw| async move {
            match raw {
                SIGTERM | SIGINT => Some(Signal::Stop),
                SIGQUIT => Some(Signal::FastStop),
                SIGHUP => Some(Signal::Reload),
                SIGUSR1 => Some(Signal::Report),
                SIGUSR2 => Some(Signal::HandOver),
                _ => None,
            }
        })
        .boxed())
}
