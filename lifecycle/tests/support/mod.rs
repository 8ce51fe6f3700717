//! What the in-process lifecycle tests need from a test harness: an event record with
//! deadlines, and a raw HTTP/1 client. A copy of the parts of shiftd's `tests/common` these
//! tests use, kept here so the crate's tests build on their own.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------

/// One `sd_notify` datagram as the test's socket received it.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Instant,
    pub text: String,
}

impl Datagram {
    /// The `KEY=VALUE` lines of the datagram.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.lines()
    }

    /// True if one line is exactly `line` (e.g. `READY=1`).
    pub fn has(&self, line: &str) -> bool {
        self.lines().any(|l| l == line)
    }

    /// The value of `key` in this datagram (e.g. `STATUS`).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// True if the datagram carries `key=` at all.
    pub fn has_key(&self, key: &str) -> bool {
        self.value(key).is_some()
    }
}

/// One line a process wrote to stdout or stderr.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// An append-only record of events that tests wait on.
///
/// `wait_for` looks at events after a cursor and moves the cursor past the one it returns,
/// so a sequence of `wait_for` calls asserts an order. `all` and `any` see everything.
pub struct Record<T> {
    name: &'static str,
    events: watch::Sender<Vec<T>>,
    cursor: Mutex<usize>,
    /// Resolves when the process has exited, so waits fail fast instead of timing out.
    exited: watch::Receiver<Option<i32>>,
}

impl<T: Clone + std::fmt::Debug + HasText> Record<T> {
    /// A record whose waits give up early once `exited` holds `Some` (for a process: its
    /// exit code; in-process tests use it for "the lifecycle has returned").
    pub fn new(name: &'static str, exited: watch::Receiver<Option<i32>>) -> Arc<Self> {
        Arc::new(Self {
            name,
            events: watch::channel(Vec::new()).0,
            cursor: Mutex::new(0),
            exited,
        })
    }

    pub fn push(&self, event: T) {
        self.events.send_modify(|v| v.push(event));
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<T> {
        self.events.borrow().clone()
    }

    /// The first event so far matching `pred`, ignoring the cursor.
    pub fn any(&self, pred: impl Fn(&T) -> bool) -> Option<T> {
        self.events.borrow().iter().find(|e| pred(e)).cloned()
    }

    /// The next event after the cursor matching `pred`, waiting up to `timeout`; `None` if
    /// none came in time or the process exited without sending one. Moves the cursor.
    pub async fn try_wait_for(&self, timeout: Duration, pred: impl Fn(&T) -> bool) -> Option<T> {
        let start = *self.cursor.lock().unwrap();
        let mut rx = self.events.subscribe();
        let mut exited = self.exited.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let found = rx
                .borrow_and_update()
                .iter()
                .enumerate()
                .skip(start)
                .find(|(_, e)| pred(e))
                .map(|(i, e)| (i, e.clone()));
            if let Some((index, event)) = found {
                *self.cursor.lock().unwrap() = index + 1;
                return Some(event);
            }
            if exited.borrow().is_some() {
                // The process is gone, but its last words may still be in a pipe or socket
                // buffer: give the readers a moment to deliver them (bounded, event-based).
                if tokio::time::timeout(Duration::from_millis(300), rx.changed())
                    .await
                    .is_err()
                {
                    return None;
                }
                continue;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return None },
                _ = exited.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// As [`Record::try_wait_for`], but fails the test (showing what did arrive) when
    /// nothing matching `what` comes in time.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&T) -> bool) -> T {
        match self.try_wait_for(timeout, pred).await {
            Some(event) => event,
            None => panic!(
                "{}: no {what} within {timeout:?}{}; received so far:\n{}",
                self.name,
                match *self.exited.borrow() {
                    Some(code) => format!(" (the process exited with {code})"),
                    None => String::new(),
                },
                self.dump()
            ),
        }
    }

    /// The events as text, one per line, for failure messages.
    pub fn dump(&self) -> String {
        self.events
            .borrow()
            .iter()
            .map(|e| format!("    {}", e.text().replace('\n', " | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub trait HasText {
    fn text(&self) -> &str;
}

impl HasText for Datagram {
    fn text(&self) -> &str {
        &self.text
    }
}

impl HasText for Line {
    fn text(&self) -> &str {
        &self.text
    }
}

impl Record<Datagram> {
    /// Waits for the next datagram that has the line `line` (e.g. `READY=1`).
    pub async fn wait_line(&self, line: &str, timeout: Duration) -> Datagram {
        self.wait_for(line, timeout, |d| d.has(line)).await
    }
}

impl Record<Line> {
    /// Waits for the next line containing `needle`.
    pub async fn wait_contains(&self, needle: &str, timeout: Duration) -> Line {
        self.wait_for(&format!("line containing {needle:?}"), timeout, |l| {
            l.text.contains(needle)
        })
        .await
    }

    /// True if some line so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.any(|l| l.text.contains(needle)).is_some()
    }
}

// ---------------------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True if the server said it will close the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How long [`http_get`] waits for each step before calling it an error.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects, sends `GET path`, reads one response. Any failure (refused, reset, timeout,
/// malformed) is an `Err` naming the step.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<RawResponse, String> {
    let mut stream = connect(addr).await?;
    send(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await?;
    read_response(&mut stream, HTTP_TIMEOUT).await
}

pub async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(HTTP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

pub async fn send(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))
}

/// Reads one response (head, then a `Content-Length` or chunked body) within `timeout`.
pub async fn read_response(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<RawResponse, String> {
    match tokio::time::timeout(timeout, read_response_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(format!("read: no complete response within {timeout:?}")),
    }
}

async fn read_response_inner(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "read: connection closed after {} bytes, before a complete response head",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("read: bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = if let Some(len) = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "read body: closed after {} of {len} bytes",
                    rest.len()
                ));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        read_chunked(stream, rest).await?
    } else {
        rest
    };
    Ok(RawResponse { body, ..response })
}

async fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(stream, &mut buf).await?;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            fill(stream, &mut buf).await?;
        }
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read chunk: {e}"))?;
    if n == 0 {
        return Err("read chunk: connection closed mid-body".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Waits up to `timeout` for the peer to close the connection (a read gives EOF or an
/// error); `Err` if it sent data instead or stayed open.
pub async fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Result<(), String> {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "expected the connection to close, got {n} bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        )),
        Err(_) => Err(format!("the connection stayed open for {timeout:?}")),
    }
}
