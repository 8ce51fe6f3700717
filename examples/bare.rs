//! A bare axum server with no lifecycle, the baseline `bench/run` measures shiftd against.
//!
//! It serves the two routes the HTTP benchmark loads, `GET /healthz` and
//! `GET /v1/jobs/{id}`, with the same work per request as shiftd: the same pool settings
//! (`shiftd::db::connect`), the same statements (`shiftd::jobs::Store`), the same JSON.
//! What it leaves out is everything shiftd adds around the handlers: our accept loop and
//! drain bookkeeping, request ids, tracing spans, metrics, the JSON-errors rewrite, the
//! request timeout and auth. It is served by plain `axum::serve`, stopped by SIGTERM
//! through `with_graceful_shutdown`, and sends nothing to systemd.
//!
//! Once it listens it prints one JSON line on stdout, `{"listen": "127.0.0.1:PORT"}`, so
//! a benchmark can time exec → serving the way it times shiftd's exec → `READY=1`.
//!
//! ```text
//! cargo run --release --example bare -- --listen 127.0.0.1:8081 --database-url sqlite://shiftd-data/shiftd.db
//! ```

use std::io::Write;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;
use shiftd::config::{Backend, DatabaseConfig};
use shiftd::http::jobs::JobView;
use shiftd::http::ApiError;
use shiftd::jobs::Store;

/// Lines of output in a job view: the same as shiftd's `GET /v1/jobs/{id}`.
const TAIL_LINES: i64 = 20;

#[derive(Parser)]
#[command(about = "A bare axum server serving shiftd's read handlers, for benchmarks")]
struct Args {
    /// Address to bind; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// `sqlite://PATH` or `postgres://...`; migrated on start, like shiftd does.
    #[arg(long)]
    database_url: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same runtime shiftd builds: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let backend = if args.database_url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let database = DatabaseConfig {
        url: args.database_url,
        ..DatabaseConfig::default()
    };
    let db = shiftd::db::connect(&database, backend).await?;
    db.migrate().await?;
    let store = Store::new(&db);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/jobs/{id}", get(get_job))
        .with_state(store);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let line = json!({ "listen": listener.local_addr()?.to_string() });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(sigterm())
        .await?;
    // Bounded like any wait: a pool that does not close in time is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(5), db.pool.close()).await;
    Ok(())
}

async fn sigterm() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn get_job(
    State(store): State<Store>,
    Path(raw): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = raw
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("`{raw}` is not a job id")))?;
    let job = store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let output_tail = store.output_tail(job.id, TAIL_LINES).await?;
    Ok(Json(JobView { job, output_tail }))
}
