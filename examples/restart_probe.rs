//! The floor of a `systemctl restart` under systemd: a bare axum server with socket
//! activation and `Type=notify`, whose only route answers after 20 ms.
//!
//! `bench/run`'s restart section (`BENCH_ONLY=restart`) installs it in the end-to-end
//! container as `probe.socket` + `probe.service`, with and without shiftd's sandbox, and
//! restarts it under the same load as shiftd. Everything a restart of shiftd costs beyond
//! this probe's restart under the same sandbox is shiftd's own stop and start.
//!
//! It takes the listening socket systemd passes (fd 3, `LISTEN_FDS=1`; else it binds
//! `--listen`), sends `READY=1` once it serves, and on SIGTERM stops accepting and finishes
//! the requests in flight (`with_graceful_shutdown`), as shiftd does. Nothing else: no
//! database, no tracing, no watchdog.
//!
//! ```text
//! cargo build --release --example restart_probe
//! ```

use std::net::TcpListener as StdListener;
use std::os::fd::FromRawFd;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use clap::Parser;

#[derive(Parser)]
#[command(about = "A socket-activated axum server with a 20 ms handler, for restart benchmarks")]
struct Args {
    /// Address to bind when systemd passes no socket.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// How long the handler takes, in milliseconds.
    #[arg(long, default_value_t = 20)]
    handler_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same runtime shiftd builds: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

/// The socket systemd passed, when it passed exactly one to this process.
fn passed_socket() -> Option<StdListener> {
    let pid_matches = std::env::var("LISTEN_PID").ok()? == std::process::id().to_string();
    let one = std::env::var("LISTEN_FDS").ok()? == "1";
    if !(pid_matches && one) {
        return None;
    }
    // SAFETY: systemd passed fd 3 to this process for us to own (sd_listen_fds(3)).
    Some(unsafe { StdListener::from_raw_fd(3) })
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let std_listener = match passed_socket() {
        Some(l) => l,
        None => StdListener::bind(&args.listen)?,
    };
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let delay = Duration::from_millis(args.handler_ms);
    let app = Router::new().route(
        "/",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "ok\n"
        }),
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
