//! Queue throughput in two phases, the way the side-by-side driver for graphile-worker and
//! pg-boss measures them: first enqueue N no-op jobs, then process them all with W workers,
//! each phase timed on its own (end to end = N / (enqueue + process)).
//!
//! ```text
//! qb_phased --database-url URL --phase migrate
//! qb_phased --database-url URL --phase enqueue --enqueue single|bulk --jobs 10000
//! qb_phased --database-url URL --phase process --process single|batched --workers 4 [--prefetch 96]
//! ```
//!
//! * `--enqueue single`: `--producers` loops of one `Store::enqueue` each (one commit a job).
//!   `bulk`: `Store::enqueue_batch` of `--batch` jobs (one commit a batch), as
//!   `POST /v1/tasks/{task}/jobs:batch` does.
//! * `--process single`: what the runner did before batching: each worker loops
//!   `Store::claim` (one job) then `Store::finish` (one commit each).
//!   `batched`: what the runner does now: one claim loop takes up to its free workers plus
//!   the claim depth in one `Store::claim_batch` (`shiftd::jobs::ClaimDepth`, the runner's
//!   own policy, with `--prefetch` as its ceiling), a worker is free again once its job has
//!   ended (its outcome is written meanwhile), and outcomes go through
//!   `shiftd::jobs::finisher::Finisher` (the runner's own batching of completions); the
//!   phase ends when every outcome has committed. The job itself does nothing.
//!
//! With `--start-at-ms`, the phase starts at that Unix time (several processes sharing one
//! start). Prints one JSON line: `{"phase", "jobs", "seconds", "jobs_per_s",
//! "started_at_ms", "ended_at_ms"}`; the pool is connected before the clock starts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;
use shiftd::config::{Backend, DatabaseConfig};
use shiftd::jobs::finisher::Finisher;
use shiftd::jobs::store::{Finish, FinishItem, JobState, NewJob};
use shiftd::jobs::{ClaimDepth, Store};
use tokio::sync::{Notify, Semaphore};

const TASK: &str = "queue-bench";
const LEASE: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    phase: String,
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    #[arg(long, default_value = "single")]
    enqueue: String,
    #[arg(long, default_value = "single")]
    process: String,
    #[arg(long, default_value_t = 4)]
    producers: u64,
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The claim depth's ceiling (`jobs.prefetch`; its default).
    #[arg(long, default_value_t = 96)]
    prefetch: usize,
    /// The completion window of the finisher, in milliseconds.
    #[arg(long, default_value_t = 2)]
    window_ms: u64,
    #[arg(long)]
    start_at_ms: Option<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ok() -> Finish {
    Finish {
        state: JobState::Succeeded,
        exit_code: Some(0),
        exit_signal: None,
        error: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = if args.database_url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let database = DatabaseConfig {
        url: args.database_url.clone(),
        ..DatabaseConfig::default()
    };
    let db = shiftd::db::connect(&database, backend).await?;
    if args.phase == "migrate" {
        db.migrate().await?;
        println!("{}", json!({"phase": "migrate"}));
        return Ok(());
    }
    let store = Store::new(&db);
    {
        let mut held = Vec::new();
        for _ in 0..(args.producers as usize).max(args.workers).min(8) {
            held.push(store.pool.acquire().await?);
        }
    }
    if let Some(at) = args.start_at_ms {
        let now = unix_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
    }
    let started_at_ms = unix_ms();
    let started = Instant::now();
    let total = match (
        args.phase.as_str(),
        args.enqueue.as_str(),
        args.process.as_str(),
    ) {
        ("enqueue", mode, _) => enqueue(&store, &args, mode == "bulk").await?,
        ("process", _, "single") => process_single(&store, args.workers).await?,
        ("process", _, "batched") => {
            process_batched(&store, args.workers, args.prefetch, args.window_ms).await?
        }
        (phase, e, p) => anyhow::bail!("unknown phase/mode {phase} {e} {p}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"phase": args.phase, "jobs": total, "seconds": seconds, "jobs_per_s": total as f64 / seconds,
               "started_at_ms": started_at_ms, "ended_at_ms": unix_ms()})
    );
    db.close(Duration::from_secs(5)).await;
    Ok(())
}

async fn enqueue(store: &Store, args: &Args, bulk: bool) -> anyhow::Result<u64> {
    let mut handles = Vec::new();
    for p in 0..args.producers {
        let store = store.clone();
        let n = args.jobs / args.producers + u64::from(p < args.jobs % args.producers);
        let batch = args.batch.max(1);
        handles.push(tokio::spawn(async move {
            let params = json!({});
            if bulk {
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch);
                    let jobs: Vec<NewJob> = (0..k)
                        .map(|_| NewJob {
                            params: params.clone(),
                            idempotency_key: None,
                            run_after: None,
                        })
                        .collect();
                    store
                        .enqueue_batch(TASK, &jobs, 1, None)
                        .await?
                        .map_err(|c| anyhow::anyhow!("key conflict {c:?}"))?;
                    left -= k;
                }
            } else {
                for _ in 0..n {
                    store.enqueue(TASK, &params, 1, None, None).await?;
                }
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total)
}

/// Before batching: each worker claims one job and records it, one commit each.
async fn process_single(store: &Store, workers: usize) -> anyhow::Result<u64> {
    let owner = format!("qb:{}", std::process::id());
    let mut handles = Vec::new();
    for _ in 0..workers {
        let store = store.clone();
        let owner = owner.clone();
        handles.push(tokio::spawn(async move {
            let tasks = [TASK.to_string()];
            let mut done = 0u64;
            while let Some(job) = store.claim(&owner, &tasks, LEASE).await? {
                if !store.finish(&job, &owner, &ok(), Duration::ZERO).await? {
                    anyhow::bail!("lost job {}", job.id);
                }
                done += 1;
            }
            Ok::<u64, anyhow::Error>(done)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total)
}

/// As the runner: claims of free workers + the claim depth in one statement (the runner's
/// `ClaimDepth`), a local queue, a worker slot held until the job ended, outcomes batched
/// by the `Finisher`.
async fn process_batched(
    store: &Store,
    workers: usize,
    prefetch: usize,
    window_ms: u64,
) -> anyhow::Result<u64> {
    let finisher = Finisher::start(store.clone(), Duration::from_millis(window_ms), 256);
    let slots = Arc::new(Semaphore::new(workers));
    let freed = Arc::new(Notify::new());
    let node = format!("qb:{}", std::process::id());
    let mut local: VecDeque<(shiftd::jobs::Job, String)> = VecDeque::new();
    let mut depth = ClaimDepth::new(prefetch);
    let mut claims = 0u64;
    let mut drained = false;
    let mut done = 0u64;
    let mut started = 0u64;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<()>>();
    loop {
        while let Ok(r) = done_rx.try_recv() {
            r?;
            done += 1;
        }
        // Start what the free slots allow.
        let before = started;
        while !local.is_empty() {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let (job, owner) = local.pop_front().expect("not empty");
            started += 1;
            let finisher = finisher.clone();
            let freed = freed.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                // The job itself does nothing. Its worker is free again once it has ended,
                // as in the runner: the outcome is written while the next job runs.
                drop(permit);
                freed.notify_one();
                let item = FinishItem::new(&job, &owner, &ok(), Duration::ZERO);
                let r = match finisher.finish(item).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(anyhow::anyhow!("lost job {}", job.id)),
                    Err(e) => Err(e.into()),
                };
                let _ = done_tx.send(r);
                freed.notify_one();
            });
        }
        if started > before {
            depth.record_start((started - before) as usize, Instant::now());
        }
        let free = slots.available_permits();
        let running = workers - free;
        let limit = depth.limit(workers, running, local.len(), Instant::now());
        if !drained && limit > 0 {
            claims += 1;
            let owner = format!("{node}/{claims}");
            let sent = Instant::now();
            let jobs = store
                .claim_batch(&owner, &[(TASK.to_string(), limit)], limit, LEASE)
                .await?;
            depth.record_claim(sent.elapsed(), jobs.len());
            drained = jobs.len() < limit;
            local.extend(jobs.into_iter().map(|j| (j, owner.clone())));
            if !local.is_empty() && slots.available_permits() > 0 {
                continue;
            }
        }
        if drained && local.is_empty() && slots.available_permits() == workers {
            while done < started {
                match done_rx.recv().await {
                    Some(r) => r?,
                    None => anyhow::bail!("a finish was lost"),
                }
                done += 1;
            }
            // A short claim may have been a moment's emptiness between other processes'
            // claims; look once more before ending.
            let owner = format!("{node}/{}", claims + 1);
            claims += 1;
            let limit = depth.limit(workers, 0, 0, Instant::now());
            let more = store
                .claim_batch(&owner, &[(TASK.to_string(), limit)], limit, LEASE)
                .await?;
            if more.is_empty() {
                return Ok(done);
            }
            drained = false;
            local.extend(more.into_iter().map(|j| (j, owner.clone())));
            continue;
        }
        freed.notified().await;
    }
}
