//! Test helpers that know nothing of shiftd, for its tests and for any service tested the
//! way systemd runs it:
//!
//! - [`Record`]: what a process (or an in-process service) said, in order and timed —
//!   `sd_notify` datagrams and log lines — with waits that have deadlines and fail the test
//!   showing everything that did arrive.
//! - [`connect`], [`send`], [`read_response`], [`http_get`], [`wait_closed`]: HTTP/1.1
//!   over a raw TCP socket, for exact control over the bytes sent, the headers read and the
//!   connection's state; responses are parsed with `httparse`.
//! - [`ActivationSocket`]: a listening socket the test owns, as PID 1 owns a `.socket`
//!   unit's, to pass to processes as fd 3.
//! - small things: [`secs`], [`millis`], [`free_port`], [`skip_unless_slow`].
//!
//! Nothing here sleeps for a fixed time: every wait is for an event, with a deadline.
//!
//! ```no_run
//! use testkit::*;
//!
//! # async fn example(addr: std::net::SocketAddr) {
//! let response = http_get(addr, "/readyz").await.unwrap();
//! assert_eq!(response.status, 200);
//! let mut conn = connect(addr).await.unwrap();
//! send(&mut conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
//! let response = read_response(&mut conn, secs(5)).await.unwrap();
//! assert!(response.closes());
//! wait_closed(&mut conn, secs(5)).await.unwrap();
//! # }
//! ```

// Private, with everything re-exported: `use testkit::*` must not shadow the `http` crate.
mod http;
mod record;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

pub use http::{
    connect, http_get, read_response, send, wait_closed, RawResponse, ResponseParser, HTTP_TIMEOUT,
};
pub use record::{record_datagrams, record_lines, Datagram, HasText, Line, Record};

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// True when `SLOW_TESTS` is set to something other than `0`: the suites over ~10 s run.
pub fn slow_tests_enabled() -> bool {
    std::env::var("SLOW_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Prints why a slow test did nothing and returns true when it should skip.
pub fn skip_unless_slow(test: &str) -> bool {
    if slow_tests_enabled() {
        return false;
    }
    eprintln!("{test}: skipped; set SLOW_TESTS=1 to run it");
    true
}

/// A port nothing listens on right now (bind port 0, read it, let it go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// A listening TCP socket passed to processes as fd 3 (`LISTEN_FDS=1`). The test keeps its
/// own copy open for as long as this lives, so connections made while no process accepts
/// wait in the kernel's backlog, exactly as with `systemctl restart` and a `.socket` unit.
#[derive(Clone)]
pub struct ActivationSocket {
    listener: Arc<TcpListener>,
    pub addr: SocketAddr,
}

impl ActivationSocket {
    pub fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the activation socket");
        let addr = listener.local_addr().expect("local_addr");
        Self {
            listener: Arc::new(listener),
            addr,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}
