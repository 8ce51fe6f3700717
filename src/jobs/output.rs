//! Job output, buffered in memory and written to the database in batches.
//!
//! This buffer is what the `flush` stage of a stop empties before the pool closes, so a
//! graceful stop loses no line. Its size is bounded by `jobs.output_buffer`: when it is
//! full, the readers of the jobs' pipes wait for the next flush (the jobs then block on
//! their own writes) instead of dropping lines. Nothing is dropped here; what a job prints
//! past its `max_output` is discarded before it gets here, and counted (`runner.rs`).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::store::{OutputLine, Store};

pub struct OutputBuffer {
    store: Store,
    pending: Mutex<Pending>,
    /// Bytes of line text buffered before readers wait for a flush.
    capacity: usize,
    /// Signalled after every flush that made room.
    room: Notify,
    /// Asks the flush loop to write now rather than at its next interval.
    full: Notify,
    /// One flush at a time, so lines are written in order.
    flushing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Pending {
    lines: VecDeque<OutputLine>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, line: OutputLine) {
        self.bytes += line.line.len();
        self.lines.push_back(line);
    }
}

impl OutputBuffer {
    pub fn new(store: Store, capacity: usize) -> Self {
        Self {
            store,
            pending: Mutex::new(Pending::default()),
            capacity: capacity.max(1),
            room: Notify::new(),
            full: Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Buffers a line of a job's output, waiting while the buffer is full (back-pressure:
    /// the caller stops reading the job's pipe until a flush makes room). A line always
    /// fits into an empty buffer, so one long line cannot wait forever.
    pub async fn push(&self, line: OutputLine) {
        let mut line = Some(line);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a flush between the check and the wait is seen.
            room.as_mut().enable();
            {
                let mut pending = self.pending.lock().expect("output buffer poisoned");
                if pending.bytes < self.capacity || pending.lines.is_empty() {
                    pending.push(line.take().expect("pushed once"));
                    return;
                }
            }
            self.full.notify_one();
            room.await;
        }
    }

    /// Buffers a line the service itself adds (start, exit, kill): never waits, so the
    /// runner can always say what it does; there are a handful per attempt.
    pub fn note(&self, line: OutputLine) {
        self.pending
            .lock()
            .expect("output buffer poisoned")
            .push(line);
    }

    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .expect("output buffer poisoned")
            .lines
            .len()
    }

    /// Resolves when a reader waits for room, so the flush loop writes at once.
    pub async fn wait_full(&self) {
        self.full.notified().await
    }

    /// Writes everything buffered. On a fault of the database the lines stay buffered,
    /// in order, for the next try.
    pub async fn flush(&self) -> Result<usize, sqlx::Error> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().expect("output buffer poisoned"));
        if batch.lines.is_empty() {
            return Ok(0);
        }
        let lines: Vec<OutputLine> = batch.lines.into_iter().collect();
        match self.store.append_output(&lines).await {
            Ok(()) => {
                self.room.notify_waiters();
                Ok(lines.len())
            }
            Err(e) => {
                let mut pending = self.pending.lock().expect("output buffer poisoned");
                let newer = std::mem::take(&mut *pending);
                for line in lines.into_iter().chain(newer.lines) {
                    pending.push(line);
                }
                Err(e)
            }
        }
    }
}
