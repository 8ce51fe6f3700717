//! Event records: what a process said, in order, with the time each thing arrived, and
//! waits on them that keep a deadline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::time::Instant;

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

/// The text of an event, for [`Record::dump`].
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

/// Records every datagram `socket` receives (a `NOTIFY_SOCKET` the test bound), until the
/// socket fails. Run it as a task: `tokio::spawn(record_datagrams(socket, record))`.
pub async fn record_datagrams(socket: UnixDatagram, record: Arc<Record<Datagram>>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = socket.recv(&mut buf).await {
        record.push(Datagram {
            at: Instant::now(),
            text: String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
        });
    }
}

/// Records every line read from `pipe` (a child's stdout or stderr) until it closes, and
/// copies each to the file `copy_to` when given (best effort). Run it as a task.
pub async fn record_lines(
    pipe: impl tokio::io::AsyncRead + Unpin,
    record: Arc<Record<Line>>,
    copy_to: Option<PathBuf>,
) {
    let mut copy = match copy_to {
        Some(path) => tokio::fs::File::create(path).await.ok(),
        None => None,
    };
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(file) = copy.as_mut() {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
        }
        record.push(Line {
            at: Instant::now(),
            text: line,
        });
    }
}
