//! Messages to the service manager (sd_notify), or to a channel in tests.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every message is dropped. `sd-notify`
//! does not handle abstract (`@`-prefixed) socket names; systemd uses the path
//! `/run/systemd/notify`, so that is fine for every unit this crate ships.

use std::time::Duration;

use tokio::sync::mpsc;

/// Where notifications go.
#[derive(Clone, Debug)]
pub enum Notifier {
    /// The real protocol, via `$NOTIFY_SOCKET`.
    Systemd,
    /// Each datagram's text, for in-process tests.
    Channel(mpsc::UnboundedSender<String>),
    /// Nothing is sent: this process handed over and is not the main process any more
    /// (with `NotifyAccess=main` systemd would log every message it sent as refused).
    Muted,
}

/// One state change; several may travel in one datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
    ExtendTimeout(Duration),
    /// Names another process the main one (a hand-over).
    MainPid(u32),
}

impl Notifier {
    /// Sends the messages as one datagram. Failures are logged, never fatal: the service
    /// keeps serving even when the manager cannot be told.
    pub fn send(&self, messages: &[Message]) {
        match self {
            Notifier::Systemd => {
                let status: Vec<String> = messages
                    .iter()
                    .filter_map(|m| match m {
                        Message::Status(s) => Some(one_line(s)),
                        _ => None,
                    })
                    .collect();
                let mut states = Vec::with_capacity(messages.len() + 1);
                let mut status_iter = status.iter();
                for m in messages {
                    match m {
                        Message::Ready => states.push(sd_notify::NotifyState::Ready),
                        Message::Reloading => {
                            states.push(sd_notify::NotifyState::Reloading);
                            // systemd wants the reload's start time in the same datagram.
                            match sd_notify::NotifyState::monotonic_usec_now() {
                                Ok(now) => states.push(now),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for MONOTONIC_USEC")
                                }
                            }
                        }
                        Message::Stopping => states.push(sd_notify::NotifyState::Stopping),
                        Message::Status(_) => {
                            if let Some(s) = status_iter.next() {
                                states.push(sd_notify::NotifyState::Status(s));
                            }
                        }
                        Message::Watchdog => states.push(sd_notify::NotifyState::Watchdog),
                        Message::MainPid(pid) => states.push(sd_notify::NotifyState::MainPid(*pid)),
                        Message::ExtendTimeout(d) => {
                            states.push(sd_notify::NotifyState::ExtendTimeoutUsec(
                                u32::try_from(d.as_micros()).unwrap_or(u32::MAX),
                            ))
                        }
                    }
                }
                if let Err(e) = sd_notify::notify(&states) {
                    tracing::warn!(error = %e, "could not notify the service manager; check NOTIFY_SOCKET and NotifyAccess=");
                }
            }
            Notifier::Channel(tx) => {
                let text: Vec<String> = messages.iter().map(render).collect();
                let _ = tx.send(text.join("\n"));
            }
            Notifier::Muted => {}
        }
    }

    pub fn status(&self, text: impl Into<String>) {
        self.send(&[Message::Status(text.into())]);
    }
}

/// The wire form of one message (used by the test channel; mirrors sd_notify's).
fn render(m: &Message) -> String {
    match m {
        Message::Ready => "READY=1".into(),
        Message::Reloading => "RELOADING=1\nMONOTONIC_USEC=0".into(),
        Message::Stopping => "STOPPING=1".into(),
        Message::Status(s) => format!("STATUS={}", one_line(s)),
        Message::Watchdog => "WATCHDOG=1".into(),
        Message::ExtendTimeout(d) => format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()),
        Message::MainPid(pid) => format!("MAINPID={pid}"),
    }
}

/// STATUS= is one line; newlines would end the message.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
