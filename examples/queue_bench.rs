//! Queue throughput without HTTP and without the runner: enqueue + claim + complete
//! through `shiftd::jobs::Store`, on SQLite or PostgreSQL, from one or more processes.
//!
//! The parent migrates the database, then starts `--processes` copies of itself that share
//! one start time. Each copy runs `--workers` tasks; a task loops enqueue → claim → finish
//! (the claim may take another task's job, as workers of a real queue do) until the time
//! is up. With `--command`, each claimed job also runs that program and waits for it, as
//! the runner would, minus output capture and leases: the ceiling for "run /bin/true".
//! With `--history N`, N finished jobs are put in the table first, as in a queue that has
//! been running for a while.
//!
//! Prints one JSON line: `{"backend", "processes", "workers", "jobs", "seconds",
//! "jobs_per_s", "errors", "history"}`, where `seconds` runs from the shared start to the last
//! process's last completion.
//!
//! ```text
//! cargo run --release --example queue_bench -- --database-url postgres://postgres@127.0.0.1/bench --processes 2
//! ```

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;
use shiftd::config::{Backend, DatabaseConfig};
use shiftd::jobs::store::{Finish, JobState};
use shiftd::jobs::Store;
use tokio::io::AsyncReadExt;

/// The task name the benchmark's jobs carry.
const TASK: &str = "queue-bench";

/// Time the copies get to start and connect before the shared start.
const START_DELAY: Duration = Duration::from_millis(750);

#[derive(Parser, Clone)]
#[command(about = "Queue-only throughput of shiftd's job store")]
struct Args {
    /// `sqlite://PATH` (created if missing) or `postgres://...` (an existing database).
    #[arg(long)]
    database_url: String,
    /// Processes working the same queue at once.
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// Concurrent enqueue → claim → finish loops per process (shiftd's default
    /// `jobs.workers` is 4).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// How long to run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Also run this program for every claimed job and wait for it to exit.
    #[arg(long)]
    command: Option<String>,
    /// Finished jobs of the same task to put in the table first, as a queue that has run
    /// for a while has (the claim must not slow down as they pile up).
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Internal: run as one of the copies, starting at this Unix time in milliseconds.
    #[arg(long, hide = true)]
    start_at_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.start_at_ms {
            Some(start_at) => worker_process(args, start_at).await,
            None => parent(args).await,
        }
    })
}

fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

async fn connect(url: &str) -> anyhow::Result<Store> {
    let backend = backend_of(url);
    let database = DatabaseConfig {
        url: url.to_string(),
        ..DatabaseConfig::default()
    };
    let db = shiftd::db::connect(&database, backend).await?;
    Ok(Store::new(&db))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Migrates, starts the copies, adds up what they did.
async fn parent(args: Args) -> anyhow::Result<()> {
    if args.processes == 0 || args.workers == 0 || args.seconds <= 0.0 {
        bail!("--processes, --workers and --seconds must be positive");
    }
    {
        let backend = backend_of(&args.database_url);
        let database = DatabaseConfig {
            url: args.database_url.clone(),
            ..DatabaseConfig::default()
        };
        let db = shiftd::db::connect(&database, backend).await?;
        db.migrate().await?;
        if args.history > 0 {
            add_history(&db.pool, backend, args.history).await?;
        }
        db.close(Duration::from_secs(5)).await;
    }
    let start_at = unix_ms() + START_DELAY.as_millis() as u64;
    let exe = std::env::current_exe().context("cannot find this program to start its copies")?;
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("--database-url")
            .arg(&args.database_url)
            .arg("--workers")
            .arg(args.workers.to_string())
            .arg("--seconds")
            .arg(args.seconds.to_string())
            .arg("--start-at-ms")
            .arg(start_at.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(program) = &args.command {
            command.arg("--command").arg(program);
        }
        children.push(command.spawn().context("cannot start a copy")?);
    }
    // Each copy stops on its own after `seconds`; this bounds a copy that hangs.
    let limit = START_DELAY + Duration::from_secs_f64(args.seconds) + Duration::from_secs(30);
    let mut jobs = 0u64;
    let mut errors = 0u64;
    let mut ended_at = start_at;
    for mut child in children {
        let mut stdout = child.stdout.take().expect("piped");
        let mut text = String::new();
        let finished = tokio::time::timeout(limit, async {
            stdout.read_to_string(&mut text).await?;
            child.wait().await
        })
        .await;
        let status = match finished {
            Ok(status) => status?,
            Err(_) => bail!("a copy did not finish within {limit:?}"),
        };
        if !status.success() {
            bail!("a copy failed ({status}): {text}");
        }
        let report: serde_json::Value =
            serde_json::from_str(text.trim()).context("a copy printed no report")?;
        jobs += report["jobs"].as_u64().unwrap_or(0);
        errors += report["errors"].as_u64().unwrap_or(0);
        ended_at = ended_at.max(report["ended_at_ms"].as_u64().unwrap_or(0));
    }
    let seconds = (ended_at.saturating_sub(start_at)) as f64 / 1000.0;
    let line = json!({
        "backend": format!("{:?}", backend_of(&args.database_url)).to_lowercase(),
        "processes": args.processes,
        "workers": args.workers,
        "command": args.command,
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": if seconds > 0.0 { jobs as f64 / seconds } else { 0.0 },
        "errors": errors,
        "history": args.history,
    });
    println!("{line}");
    Ok(())
}

/// Inserts `n` succeeded jobs in one statement, then refreshes PostgreSQL's statistics as
/// its autovacuum would after such a change (SQLite keeps none unless asked).
async fn add_history(pool: &sqlx::AnyPool, backend: Backend, n: u64) -> anyhow::Result<()> {
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after, \
         started_at, finished_at, exit_code, cancel_requested) \
         SELECT '{TASK}', '{{}}', 'succeeded', 1, 1, 0, 0, 0, 0, 0, 0, 0 FROM n"
    );
    sqlx::query(&sql)
        .execute(pool)
        .await
        .context("adding the finished jobs")?;
    if backend == Backend::Postgres {
        sqlx::query("ANALYZE jobs").execute(pool).await?;
    }
    Ok(())
}

/// One copy: `workers` loops from the shared start until the time is up.
async fn worker_process(args: Args, start_at: u64) -> anyhow::Result<()> {
    let store = connect(&args.database_url).await?;
    let owner = format!("queue-bench:{}", std::process::id());
    let now = unix_ms();
    if start_at > now {
        tokio::time::sleep(Duration::from_millis(start_at - now)).await;
    }
    let end_at = start_at + (args.seconds * 1000.0) as u64;
    let mut loops = Vec::new();
    for _ in 0..args.workers {
        let store = store.clone();
        let owner = owner.clone();
        let command = args.command.clone();
        loops.push(tokio::spawn(async move {
            work(&store, &owner, command.as_deref(), end_at).await
        }));
    }
    let mut jobs = 0u64;
    let mut errors = 0u64;
    for handle in loops {
        let (done, failed) = handle.await?;
        jobs += done;
        errors += failed;
    }
    let line = json!({ "jobs": jobs, "errors": errors, "ended_at_ms": unix_ms() });
    println!("{line}");
    Ok(())
}

/// Enqueue → claim → (run) → finish until `end_at`. Returns (jobs completed, errors).
async fn work(store: &Store, owner: &str, command: Option<&str>, end_at: u64) -> (u64, u64) {
    let tasks = [TASK.to_string()];
    let params = json!({});
    let lease = Duration::from_secs(30);
    let succeeded = Finish {
        state: JobState::Succeeded,
        exit_code: Some(0),
        exit_signal: None,
        error: None,
    };
    let (mut done, mut errors) = (0u64, 0u64);
    while unix_ms() < end_at {
        let step = async {
            store.enqueue(TASK, &params, 1, None, None).await?;
            let Some(job) = store.claim(owner, &tasks, lease).await? else {
                return Ok::<bool, anyhow::Error>(false);
            };
            if let Some(program) = command {
                tokio::process::Command::new(program)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await?;
            }
            Ok(store
                .finish(&job, owner, &succeeded, Duration::ZERO)
                .await?)
        };
        match step.await {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("queue_bench: {e:#}");
                }
            }
        }
    }
    (done, errors)
}
