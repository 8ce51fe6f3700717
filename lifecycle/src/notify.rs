//! Messages to the service manager (sd_notify), or to a channel in tests (the `test-util`
//! feature).
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every message is dropped. `sd-notify`
//! does not handle abstract (`@`-prefixed) socket names; systemd uses the path
//! `/run/systemd/notify`, so that is fine for every unit this crate ships.

use std::time::Duration;

#[cfg(feature = "test-util")]
use tokio::sync::mpsc;

/// Where notifications go.
#[derive(Clone, Debug)]
pub enum Notifier {
    /// The real protocol, via `$NOTIFY_SOCKET`.
    Systemd,
    /// Each datagram's text, exactly as it would go to `$NOTIFY_SOCKET` (one `KEY=VALUE`
    /// per line), for in-process tests.
    #[cfg(feature = "test-util")]
    Channel(mpsc::UnboundedSender<String>),
    /// Nothing is sent: this process handed over and is not the main process any more
    /// (with `NotifyAccess=main` systemd would log every message it sent as refused).
    Muted,
}

/// One state change; several may travel in one datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `READY=1`: startup (or a reload) is done.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=`.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
    /// `STATUS=`, one line.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
    /// `EXTEND_TIMEOUT_USEC=`: more time for the current start or stop.
    ExtendTimeout(Duration),
    /// Names another process the main one (a hand-over).
    MainPid(u32),
}

impl Notifier {
    /// Sends the messages as one datagram. Failures are logged, never fatal: the service
    /// keeps serving even when the manager cannot be told.
    pub fn send(&self, messages: &[Message]) {
        if matches!(self, Notifier::Muted) {
            return;
        }
        let status: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Status(s) => Some(one_line(s)),
                _ => None,
            })
            .collect();
        let states = encode(messages, &status);
        match self {
            Notifier::Systemd => {
                if let Err(e) = sd_notify::notify(&states) {
                    tracing::warn!(error = %e, "could not notify the service manager; check NOTIFY_SOCKET and NotifyAccess=");
                }
            }
            #[cfg(feature = "test-util")]
            Notifier::Channel(tx) => {
                let lines: Vec<String> = states.iter().map(ToString::to_string).collect();
                let _ = tx.send(lines.join("\n"));
            }
            Notifier::Muted => {}
        }
    }

    /// Sends `STATUS=` alone.
    pub fn status(&self, text: impl Into<String>) {
        self.send(&[Message::Status(text.into())]);
    }
}

/// The messages as `sd-notify` states, in order; `status` holds the STATUS= texts (one line
/// each), in order. The one encoder, for the real socket and the test channel alike.
fn encode<'a>(messages: &[Message], status: &'a [String]) -> Vec<sd_notify::NotifyState<'a>> {
    use sd_notify::NotifyState;
    let mut states = Vec::with_capacity(messages.len() + 1);
    let mut status = status.iter();
    for m in messages {
        match m {
            Message::Ready => states.push(NotifyState::Ready),
            Message::Reloading => {
                states.push(NotifyState::Reloading);
                // systemd wants the reload's start time in the same datagram.
                match NotifyState::monotonic_usec_now() {
                    Ok(now) => states.push(now),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for MONOTONIC_USEC")
                    }
                }
            }
            Message::Stopping => states.push(NotifyState::Stopping),
            Message::Status(_) => {
                if let Some(s) = status.next() {
                    states.push(NotifyState::Status(s));
                }
            }
            Message::Watchdog => states.push(NotifyState::Watchdog),
            Message::MainPid(pid) => states.push(NotifyState::MainPid(*pid)),
            Message::ExtendTimeout(d) => states.push(NotifyState::ExtendTimeoutUsec(
                u32::try_from(d.as_micros()).unwrap_or(u32::MAX),
            )),
        }
    }
    states
}

/// STATUS= is one line; newlines would end the message.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
