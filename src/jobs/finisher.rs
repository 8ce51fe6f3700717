//! Completions written in batches: the attempts that end within a short window (or while
//! the previous write is in flight) are recorded by one statement, [`Store::finish_batch`].
//!
//! A caller is answered only after the statement that holds its finish committed, so no
//! client, metric or log line sees a job as done before its outcome is durable. What the
//! window adds to a crash: a job that ended but whose finish was not yet committed runs
//! again after its lease (ARCHITECTURE.md, "Writes and leases").

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::store::{FinishItem, Store, FINISH_BATCH_MAX};
use crate::dbfault::classify;

struct Pending {
    item: FinishItem,
    reply: oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// The handle jobs send their outcome through; cheap to clone.
#[derive(Clone, Debug)]
pub struct Finisher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.item.id)
            .finish()
    }
}

impl Finisher {
    /// Starts the writer task. A batch is written once `max` finishes are waiting, or
    /// `window` after the first of them arrived (0: at once, with whatever arrived while
    /// the previous write was in flight). The task ends when every handle is dropped.
    pub fn start(store: Store, window: Duration, max: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            store,
            rx,
            window,
            max.clamp(1, FINISH_BATCH_MAX),
        ));
        Self { tx }
    }

    /// Records how an attempt ended; `Ok(true)` once it is committed, `Ok(false)` if the
    /// job was no longer ours (its lease was lost), `Err` if the write failed (nothing of
    /// it committed: the caller may try again while its lease lasts).
    pub async fn finish(&self, item: FinishItem) -> Result<bool, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { item, reply })
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    window: Duration,
    max: usize,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let until = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
            }
        }
        write(&store, &mut batch).await;
    }
}

async fn write(store: &Store, batch: &mut Vec<Pending>) {
    let items: Vec<FinishItem> = batch.iter().map(|p| p.item.clone()).collect();
    match store.finish_batch(&items).await {
        Ok(done) => {
            let done: std::collections::HashSet<i64> = done.into_iter().collect();
            for p in batch.drain(..) {
                let _ = p.reply.send(Ok(done.contains(&p.item.id)));
            }
        }
        // A statement error (not a fault of the database) may be one item's doing: write
        // each alone, so one bad row never holds up the others.
        Err(e) if batch.len() > 1 && classify(&e).is_none() => {
            tracing::warn!(error = %e, finishes = batch.len(), "the database refused a batch of job outcomes; writing them one by one");
            for p in batch.drain(..) {
                let one = store
                    .finish_batch(std::slice::from_ref(&p.item))
                    .await
                    .map(|done| done.contains(&p.item.id));
                let _ = p.reply.send(one);
            }
        }
        // A fault of the database: nothing of the batch committed; every caller retries.
        Err(e) => {
            let text = e.to_string();
            let mut first = Some(e);
            for p in batch.drain(..) {
                let error = first
                    .take()
                    .unwrap_or_else(|| sqlx::Error::Protocol(text.clone()));
                let _ = p.reply.send(Err(error));
            }
        }
    }
}
