//! Job output, buffered in memory and written to the database in batches.
//!
//! This buffer is what the `flush` stage of a stop empties before the pool closes, so a
//! graceful stop loses no line. Its size is bounded by `jobs.output_buffer`: when it is
//! full, the readers of the jobs' pipes wait for the next flush (the jobs then block on
//! their own writes) instead of dropping lines. Nothing is dropped here; what a job prints
//! past its `max_output` is discarded before it gets here, and counted (`runner.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
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
    ///
    /// The line is numbered from `seq` as it goes in, under the buffer's lock: a job's
    /// lines are written in the order of their numbers even when its stdout and stderr
    /// readers both waited for room, so a reader that follows the log by number (the
    /// follow stream, the client) never passes a line that is written later.
    pub async fn push(&self, mut line: OutputLine, seq: &AtomicI64) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a flush between the check and the wait is seen.
            room.as_mut().enable();
            {
                let mut pending = self.pending.lock().expect("output buffer poisoned");
                if pending.bytes < self.capacity || pending.lines.is_empty() {
                    line.seq = seq.fetch_add(1, Ordering::AcqRel) + 1;
                    pending.push(line);
                    return;
                }
            }
            self.full.notify_one();
            room.await;
        }
    }

    /// Buffers a line the service itself adds (start, exit, kill): never waits, so the
    /// runner can always say what it does; there are a handful per attempt.
    pub fn note(&self, mut line: OutputLine, seq: &AtomicI64) {
        let mut pending = self.pending.lock().expect("output buffer poisoned");
        line.seq = seq.fetch_add(1, Ordering::AcqRel) + 1;
        pending.push(line);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, DatabaseConfig};
    use std::sync::Arc;

    fn line(job_id: i64, text: &str) -> OutputLine {
        OutputLine {
            job_id,
            seq: 0,
            attempt: 1,
            stream: "stdout",
            at: 0,
            line: text.into(),
        }
    }

    /// A line that waited for room is numbered when it goes in, after a service line that
    /// went in while it waited: every flush writes numbers above the previous flush's, so a
    /// reader following by number never passes a line that is written later.
    #[tokio::test]
    async fn lines_are_numbered_in_the_order_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig {
            url: format!("sqlite://{}/o.db?mode=rwc", dir.path().display()),
            ..DatabaseConfig::default()
        };
        let db = crate::db::connect(&config, Backend::Sqlite).await.unwrap();
        db.migrate().await.unwrap();
        let store = Store::new(&db);
        let (job, _) = store
            .enqueue("t", &serde_json::json!({}), 1, None, None)
            .await
            .unwrap();
        // One byte: the buffer holds one line, and the next waits for a flush.
        let buffer = Arc::new(OutputBuffer::new(store.clone(), 1));
        let seq = Arc::new(AtomicI64::new(0));
        buffer.push(line(job.id, "first"), &seq).await;
        let waiting = tokio::spawn({
            let (buffer, seq) = (buffer.clone(), seq.clone());
            async move { buffer.push(line(job.id, "waited"), &seq).await }
        });
        // The waiting push asks for a flush once it found the buffer full.
        buffer.wait_full().await;
        buffer.note(line(job.id, "service line"), &seq);
        let mut flushes = Vec::new();
        while flushes.iter().map(|(n, _)| n).sum::<usize>() < 3 {
            let before = store.last_seq(job.id).await.unwrap();
            let n = buffer.flush().await.unwrap();
            if n > 0 {
                flushes.push((n, before));
            }
            tokio::task::yield_now().await;
        }
        waiting.await.unwrap();
        let lines = store.output(job.id, 0, 10).await.unwrap();
        let text: Vec<(i64, &str)> = lines.iter().map(|l| (l.seq, l.line.as_str())).collect();
        assert_eq!(
            text,
            [(1, "first"), (2, "service line"), (3, "waited")],
            "numbered in the order they went in"
        );
        // And each flush wrote only numbers above everything written before it.
        for (_, before) in &flushes[1..] {
            assert!(lines.iter().filter(|l| l.seq <= *before).count() as i64 == *before);
        }
    }
}
