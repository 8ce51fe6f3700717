//! The listening socket: taken from systemd (socket activation) or bound by us.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

/// Where the listening socket came from; decides how a stop treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd. Never shut down: connections waiting in its backlog belong to the
    /// next process.
    Activated,
    /// Bound by this process from `http.listen`.
    Bound,
}

/// The socket to serve on.
pub struct Listener {
    /// Listening, non-blocking.
    pub socket: tokio::net::TcpListener,
    /// Where it came from.
    pub origin: Origin,
    /// Its address (the bound port when `listen` asked for port 0).
    pub local_addr: SocketAddr,
}

/// Sockets systemd passed to this process, read once at startup (see [`crate::SystemdEnv`]).
#[derive(Debug, Clone, Default)]
pub struct ActivatedFds(pub Vec<(RawFd, String)>);

#[derive(Debug, thiserror::Error)]
/// Why there is no socket to serve on.
pub enum ListenerError {
    #[error("systemd passed {0} sockets but none is named \"http\"; name one with FileDescriptorName=http in the .socket unit")]
    /// Several sockets and none named `http`.
    Ambiguous(usize),
    /// The passed descriptor is not a TCP listener.
    #[error("the socket systemd passed (fd {fd}) is not a usable TCP listener: {source}; check ListenStream= in the .socket unit")]
    BadActivatedSocket {
        /// The descriptor.
        fd: RawFd,
        /// Why it is not usable.
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}; is another process using it? change {setting} or stop the other process")]
    /// Binding the configured address failed.
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
        /// The application's name for the address setting ([`crate::SettingNames::listen`]).
        setting: &'static str,
    },
}

impl ActivatedFds {
    /// The socket to serve on: the only one passed, or the one named `http`.
    fn pick(&self) -> Result<Option<RawFd>, ListenerError> {
        match self.0.as_slice() {
            [] => Ok(None),
            [(fd, _)] => Ok(Some(*fd)),
            many => many
                .iter()
                .find(|(_, name)| name == "http")
                .map(|(fd, _)| Some(*fd))
                .ok_or(ListenerError::Ambiguous(many.len())),
        }
    }
}

/// Takes the activated socket if there is one, else binds `listen` (the value of the
/// application's `setting`, named when the bind fails).
pub async fn acquire(
    fds: &ActivatedFds,
    listen: &str,
    setting: &'static str,
) -> Result<Listener, ListenerError> {
    if let Some(fd) = fds.pick()? {
        // SAFETY: systemd hands this fd to us alone (LISTEN_PID was checked) and nothing
        // else in the process owns it.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let bad = |source| ListenerError::BadActivatedSocket { fd, source };
        std_listener.set_nonblocking(true).map_err(bad)?;
        let local_addr = std_listener.local_addr().map_err(bad)?;
        let socket = tokio::net::TcpListener::from_std(std_listener).map_err(bad)?;
        return Ok(Listener {
            socket,
            origin: Origin::Activated,
            local_addr,
        });
    }
    let bind = |source| ListenerError::Bind {
        addr: listen.to_string(),
        source,
        setting,
    };
    let socket = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
    let local_addr = socket.local_addr().map_err(bind)?;
    Ok(Listener {
        socket,
        origin: Origin::Bound,
        local_addr,
    })
}
