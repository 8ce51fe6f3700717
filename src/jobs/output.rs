//! Job output, buffered in memory and written to the database in batches.
//!
//! This buffer is what the `flush` stage of a stop empties before the pool closes, so a
//! graceful stop loses no line. If the database is down, lines wait here (up to a cap)
//! and are written on a later flush.

use std::sync::Mutex;

use super::store::{OutputLine, Store};

/// Lines kept while the database cannot take them; beyond this the oldest are dropped.
const MAX_PENDING: usize = 200_000;

pub struct OutputBuffer {
    store: Store,
    pending: Mutex<Vec<OutputLine>>,
    /// One flush at a time, so lines are written in order.
    flushing: tokio::sync::Mutex<()>,
}

impl OutputBuffer {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            pending: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn push(&self, line: OutputLine) {
        let mut pending = self.pending.lock().expect("output buffer poisoned");
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
            tracing::warn!("job output buffer full ({MAX_PENDING} lines) while the database is unavailable; dropping the oldest line");
        }
        pending.push(line);
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().expect("output buffer poisoned").len()
    }

    /// Writes everything buffered. On failure the lines stay buffered for the next try.
    pub async fn flush(&self) -> Result<usize, sqlx::Error> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().expect("output buffer poisoned"));
        if batch.is_empty() {
            return Ok(0);
        }
        match self.store.append_output(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut pending = self.pending.lock().expect("output buffer poisoned");
                let newer = std::mem::replace(&mut *pending, batch);
                pending.extend(newer);
                Err(e)
            }
        }
    }
}
