//! The shared test harness: spawns the real `shiftd` binary the way systemd would and
//! lets tests wait on what it says (notify datagrams, log lines, exit) with deadlines.
//!
//! In the style of zero2prod's `spawn_app()`: every process gets a fresh temporary
//! directory as its working directory, a config file written there, a `NOTIFY_SOCKET`
//! bound by the test, and its stdout and stderr captured line by line. Nothing here sleeps
//! for a fixed time: every wait is for an event, and every wait has a deadline after which
//! the test fails with everything the process said so far.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! let app = Shiftd::builder().set("shutdown.http_drain", "2s").start().await; // READY=1 seen
//! let response = http_get(app.addr, "/readyz").await.unwrap();
//! app.sigterm();
//! assert_eq!(app.wait_exit(secs(5)).await, 0);
//! ```
//!
//! Where things are (`use common::*` brings in all but `faults`):
//!
//! - `testkit` (the workspace crate, re-exported here): what knows nothing of shiftd —
//!   the raw HTTP/1 client (`connect`, `send`, `read_response`, `http_get`,
//!   `wait_closed`), the event records (`Record`, `Datagram`, `Line`) tests wait on,
//!   `ActivationSocket`, `secs`, `millis`, `free_port`, `skip_unless_slow`.
//! - `process.rs`: `Shiftd::builder()` → `ShiftdBuilder` (config keys, environment,
//!   sockets, directory) → `Shiftd`, a running process with its records; `Workdir`, `BIN`.
//! - `postgres.rs`: `Backend` (SQLite or PostgreSQL), `builder(backend)` for tests that
//!   run on both, `TestDatabase` (a fresh PostgreSQL database, dropped with it).
//! - `faults.rs` (`common::faults::…`): fault injection — a tmpfs to fill, an executions
//!   ledger, a table lock, a connection killer, the sweep for leftover job processes —
//!   and the small job API helpers (`submit`, `wait_job`, `wait_file`) those tests use.
//! - `receiver.rs` (not a submodule; `notices.rs` includes it by path): a notice receiver,
//!   an HTTP server in the test process that records the POSTs it gets.
//!
//! Environment variables for tests never start with `SHIFTD_` (the binary treats each of
//! those as configuration and rejects unknown ones): `PG_TEST_URL` is the PostgreSQL admin
//! URL, `SLOW_TESTS=1` enables the slow suites.

// Every test binary compiles this module anew and uses its own part of it, so what one
// binary leaves unused is neither dead code nor an unused re-export. These two allows are
// the only ones; the modules below need none of their own.
#![allow(dead_code)]

pub mod faults;
mod postgres;
mod process;

#[allow(unused_imports)]
pub use {
    postgres::{builder, migrated_store, Backend, TestDatabase, DEFAULT_PG_TEST_URL},
    process::{Shiftd, ShiftdBuilder, Workdir, BIN, START_TIMEOUT},
    testkit::*,
};
