//! The hand-over with the real binary: `shiftd reload` starts a new process with the
//! listening socket, the old one names it the main process (`MAINPID=` with `READY=1`),
//! keeps serving until then, and finishes its running job untouched; a new process that
//! cannot start fails the reload with the reason while the old one keeps serving; a stop of
//! the new process reaches the old one too.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::faults::wait_file;
use common::*;
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A process this test did not spawn (the new one is the service manager's, or here init's,
/// child after the double fork): killed at the end of the test whatever happens.
struct Successor {
    pid: i32,
}

impl Successor {
    fn from_mainpid(datagram: &Datagram) -> Self {
        let pid = datagram
            .value("MAINPID")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("MAINPID=<pid> in {datagram:?}"));
        Self { pid }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal)
            .unwrap_or_else(|e| panic!("kill({}, {signal}): {e}", self.pid));
    }

    /// Waits for the process to exit, on its pidfd (an event, not a poll).
    async fn wait_gone(&self, timeout: Duration) {
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return; // already gone
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped.
        let fd =
            unsafe { AsyncFd::register(fd) }.unwrap_or_else(|e| panic!("register the pidfd: {e}"));
        let waited = tokio::time::timeout(timeout, fd.readable()).await;
        assert!(
            waited.is_ok(),
            "process {} did not exit within {timeout:?} (fd {})",
            self.pid,
            fd.get_ref().as_raw_fd()
        );
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn start_job(addr: std::net::SocketAddr, task: &str) -> i64 {
    let r = client()
        .post(format!("http://{addr}/v1/tasks/{task}/jobs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "start {task}");
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn get_job(addr: std::net::SocketAddr, id: i64) -> Value {
    client()
        .get(format!("http://{addr}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_state(addr: std::net::SocketAddr, id: i64, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(addr, id).await;
        if job["state"] == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not {state} within {timeout:?}: {job}"
        );
        tokio::time::sleep(millis(50)).await;
    }
}

/// Runs `shiftd reload` as the unit's ExecReload= does, in the service's directory.
async fn reload(app: &Shiftd, timeout: &str) -> (i32, String, String) {
    shiftd_in(app, &["reload", "--timeout", timeout]).await
}

/// `/readyz`'s status, from the host the test runs on.
async fn readyz(app: &Shiftd) -> reqwest::StatusCode {
    client()
        .get(format!("http://{}/readyz", app.addr))
        .send()
        .await
        .unwrap()
        .status()
}

/// Runs the binary with `args` in the service's directory, with only PATH set.
async fn shiftd_in(app: &Shiftd, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(app.workdir().path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .expect("run shiftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shiftd reload` succeeds: the new process, as the old one named it in `MAINPID=`.
async fn reload_ok(app: &Shiftd) -> Successor {
    let (code, stdout, stderr) = reload(app, "30s").await;
    assert_eq!(code, 0, "shiftd reload: {stdout}{stderr}\n{}", app.dump());
    let handed = app
        .notify
        .wait_for("MAINPID=", secs(5), |d| d.has_key("MAINPID"))
        .await;
    Successor::from_mainpid(&handed)
}

/// A task whose job runs until the test creates `release` in the work directory.
fn held_task(builder: ShiftdBuilder) -> ShiftdBuilder {
    let dir = builder.workdir().path().display().to_string();
    builder.toml(&format!(
        "[tasks.held]\ncommand = [\"/bin/sh\", \"-c\", \"touch started; while [ ! -e release ]; do sleep 0.05; done\"]\nworking_dir = \"{dir}\"\n"
    ))
}

#[tokio::test]
async fn a_reload_hands_over_and_the_old_process_finishes_its_running_job_untouched() {
    let app = held_task(Shiftd::builder()).start().await;
    let work = app.workdir().path().to_path_buf();
    let id = start_job(app.addr, "held").await;
    wait_file(&work.join("started"), secs(10)).await;

    let (code, stdout, stderr) = reload(&app, "30s").await;
    assert_eq!(code, 0, "shiftd reload: {stdout}{stderr}\n{}", app.dump());
    assert!(stdout.contains("took over from pid"), "{stdout}");

    // The old process's last words as the main one: MAINPID= and READY=1 in one datagram.
    let handed = app.notify.wait_line("READY=1", secs(5)).await;
    let successor = Successor::from_mainpid(&handed);
    assert_ne!(successor.pid, app.pid.as_raw());
    // Until it is the main process the new one says nothing: with NotifyAccess=main systemd
    // would refuse it and log each refusal.
    let all = app.notify.all();
    let reloading = all
        .iter()
        .position(|d| d.has("RELOADING=1"))
        .expect("RELOADING=1");
    let mainpid = all
        .iter()
        .position(|d| d.has_key("MAINPID"))
        .expect("MAINPID=");
    assert!(
        all[reloading + 1..mainpid].is_empty(),
        "nothing between RELOADING=1 and MAINPID=:\n{}",
        app.notify.dump()
    );
    app.stderr
        .wait_contains(&format!("hand-over to pid {} done", successor.pid), secs(5))
        .await;

    // The new process serves; the old one still runs the job.
    for _ in 0..20 {
        let r = client()
            .get(format!("http://{}/healthz", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(get_job(app.addr, id).await["state"], "running");
    assert_eq!(app.exit_code(), None, "the old process waits for its job");

    std::fs::write(work.join("release"), b"").unwrap();
    let job = wait_state(app.addr, id, "succeeded", secs(10)).await;
    assert_eq!(job["attempts"], 1, "never interrupted: {job}");
    assert_eq!(
        app.wait_exit(secs(10)).await,
        0,
        "the retired process exits cleanly"
    );
    assert!(
        app.stderr
            .any(|l| l
                .text
                .contains("the 1 jobs running at the hand-over finished"))
            .is_some(),
        "{}",
        app.stderr.dump()
    );

    // The new process serves on alone, and stops on SIGTERM.
    assert_eq!(readyz(&app).await, 200);
    successor.signal(nix::sys::signal::Signal::SIGTERM);
    successor.wait_gone(secs(10)).await;
}

#[tokio::test]
async fn a_new_process_that_cannot_start_fails_the_reload_with_the_reason_and_the_old_one_serves_on(
) {
    let app = Shiftd::builder().start().await;
    let good = std::fs::read_to_string(&app.config_path).unwrap();
    app.rewrite_config(&format!("{good}\n[bogus]\nkey = 1\n"));

    let (code, stdout, stderr) = reload(&app, "30s").await;
    assert_eq!(code, 1, "shiftd reload: {stdout}{stderr}");
    assert!(
        stderr.contains("could not start")
            && stderr.contains("bogus")
            && stderr.contains("keeps serving"),
        "the reason reaches the caller: {stderr}"
    );
    assert!(
        app.notify.any(|d| d.has_key("MAINPID")).is_none(),
        "no MAINPID= after a failed hand-over:\n{}",
        app.notify.dump()
    );
    let warning = app.stderr.wait_contains("hand-over failed", secs(5)).await;
    assert!(warning.text.contains("WARN"), "{}", warning.text);
    // Back to ready, and still serving.
    app.notify.wait_line("READY=1", secs(5)).await;
    assert_eq!(readyz(&app).await, 200);

    // With the configuration fixed, the next reload succeeds.
    app.rewrite_config(&good);
    let successor = reload_ok(&app).await;
    assert_eq!(app.wait_exit(secs(10)).await, 0);
    successor.signal(nix::sys::signal::Signal::SIGTERM);
    successor.wait_gone(secs(10)).await;
}

/// `shiftd reload` reads the configuration the new process would read, and refuses a bad
/// one itself, exit 78, before the running process is asked for anything: the unit's one
/// `ExecReload=` does what a `shiftd check` before it did, without a second exec.
#[tokio::test]
async fn a_reload_refuses_a_bad_configuration_before_the_running_process_is_asked() {
    let app = Shiftd::builder().start().await;
    let good = std::fs::read_to_string(&app.config_path).unwrap();
    app.rewrite_config(&format!("{good}\n[bogus]\nkey = 1\n"));
    let config = app.config_path.display().to_string();

    let (code, _, stderr) =
        shiftd_in(&app, &["--config", &config, "reload", "--timeout", "30s"]).await;
    assert_eq!(code, 78, "shiftd reload: {stderr}");
    assert!(
        stderr.contains("reload refused") && stderr.contains("bogus"),
        "the reason, naming the key: {stderr}"
    );
    // The client had its answer before it asked: no hand-over began.
    assert!(
        !app.stderr.contains("hand-over: starting"),
        "{}",
        app.stderr.dump()
    );
    assert_eq!(readyz(&app).await, 200);
}

#[tokio::test]
async fn a_stop_of_the_new_process_is_forwarded_to_the_old_one_and_both_exit_within_the_grace() {
    let app = held_task(Shiftd::builder())
        .set("shutdown.grace", "30s")
        .set("shutdown.jobs_drain", "1s")
        .start()
        .await;
    let work = app.workdir().path().to_path_buf();
    let id = start_job(app.addr, "held").await;
    wait_file(&work.join("started"), secs(10)).await;
    let successor = reload_ok(&app).await;
    // A hand-over needs no budget of its own: the job outlives jobs_drain untouched.
    app.stderr
        .wait_contains("letting 1 running jobs finish", secs(5))
        .await;

    let stopped = Instant::now();
    successor.signal(nix::sys::signal::Signal::SIGTERM);
    app.stderr
        .wait_contains("stop forwarded by pid", secs(5))
        .await;
    // The old process applies its stop plan: jobs_drain (1s), then the job is requeued.
    let code = app.wait_exit(secs(15)).await;
    assert_eq!(
        code, 75,
        "work was cut (the job outlived jobs_drain): exit 75"
    );
    successor.wait_gone(secs(15)).await;
    assert!(
        stopped.elapsed() < secs(15),
        "both within the grace: {:?}",
        stopped.elapsed()
    );
    let job = get_job_from_db(&work).await;
    assert_eq!(job.0, id);
    assert_eq!(
        job.1, "queued",
        "the interrupted job went back to the queue"
    );
    std::fs::write(work.join("release"), b"").unwrap();
}

/// Reads the job's state from the SQLite file directly (no process serves any more).
async fn get_job_from_db(work: &std::path::Path) -> (i64, String) {
    use sqlx::Connection;
    let path = work.join("shiftd-data").join("shiftd.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open the database");
    sqlx::query_as("SELECT id, state FROM jobs ORDER BY id DESC LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .expect("read the job")
}
