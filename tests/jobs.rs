//! Jobs through every kind of stop, on SQLite and PostgreSQL, against the real binary:
//! graceful stops with `finish` and `requeue`, SIGKILL and lease expiry, commands that
//! ignore SIGTERM, two processes sharing one queue, and the API's promises (idempotency,
//! auth, log follow, output kept, 4xx for bad input).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::faults::wait_file;
use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Runs the builder's tasks in its work directory (the last `[tasks.x]` table written).
fn tasks_in_workdir(b: ShiftdBuilder) -> (ShiftdBuilder, Workdir) {
    let dir = b.workdir().clone();
    (
        b.toml(&format!("working_dir = \"{}\"", dir.path().display())),
        dir,
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn start_job(addr: SocketAddr, task: &str, body: Value) -> Value {
    let r = client()
        .post(format!("http://{addr}/v1/tasks/{task}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "start {task}");
    r.json().await.unwrap()
}

async fn get_job(addr: SocketAddr, id: i64) -> Value {
    client()
        .get(format!("http://{addr}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn job_log(addr: SocketAddr, id: i64) -> String {
    client()
        .get(format!("http://{addr}/v1/jobs/{id}/log"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls the job until `pred` holds (every 50 ms, up to `timeout`).
async fn wait_job(
    addr: SocketAddr,
    id: i64,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(addr, id).await;
        if pred(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: not {what} within {timeout:?}; last seen: {job}"
        );
        tokio::time::sleep(millis(50)).await;
    }
}

fn state(job: &Value) -> &str {
    job["state"].as_str().unwrap_or("")
}

/// A job with `finish` keeps running through a graceful stop, which waits for it.
async fn finish_job_completes_across_stop(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .toml(
            r#"[tasks.slow]
command = ["/bin/sh", "-c", "echo begin; touch started; sleep 2; echo end"]
on_shutdown = "finish""#,
        )
        .start()
        .await;
    let job = start_job(app.addr, "slow", json!({})).await;
    let id = job["id"].as_i64().unwrap();
    wait_file(&app.workdir().path().join("started"), secs(10)).await;
    let stopping = Instant::now();
    app.sigterm();
    app.stderr
        .wait_contains("shutdown stage jobs done", secs(15))
        .await;
    let took = stopping.elapsed();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    assert!(
        took >= millis(1000),
        "the stop did not wait for the job: {took:?}"
    );
    let again = app.builder_again().start().await;
    let job = wait_job(again.addr, id, "succeeded", secs(5), |j| {
        state(j) == "succeeded"
    })
    .await;
    assert_eq!(job["attempts"], 1);
    let log = job_log(again.addr, id).await;
    assert!(log.contains("begin") && log.contains("end"), "{log}");
    eprintln!("{backend:?}: stop waited {took:?} for a finishing job");
}

/// A job with `requeue` is stopped at once by a graceful stop and runs again after the
/// restart; the attempt does not count and its earlier output is kept.
async fn requeue_job_reruns_after_restart(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let b = b.toml(
        r#"[tasks.resumable]
command = ["/bin/sh", "-c", "if [ -e first-done ]; then echo second run; exit 0; fi; echo first run; touch first-done; sleep 60"]
on_shutdown = "requeue"
kill_grace = "2s""#,
    );
    let (b, dir) = tasks_in_workdir(b);
    let app = b.start().await;
    let id = start_job(app.addr, "resumable", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_file(&dir.path().join("first-done"), secs(10)).await;
    let stopping = Instant::now();
    app.sigterm();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    let took = stopping.elapsed();
    assert!(
        took < secs(5),
        "a requeue job should not hold the stop: {took:?}"
    );
    app.stderr.wait_contains("requeued", secs(1)).await;

    let again = app.builder_again().start().await;
    let job = wait_job(again.addr, id, "succeeded", secs(10), |j| {
        state(j) == "succeeded"
    })
    .await;
    assert_eq!(
        job["attempts"], 1,
        "the requeue must not count as an attempt: {job}"
    );
    let log = job_log(again.addr, id).await;
    assert!(
        log.contains("first run") && log.contains("second run"),
        "earlier output lost: {log}"
    );
}

/// SIGKILL of the service with a job running: after the restart and the lease's expiry
/// the job runs again (attempt 2) and completes.
async fn job_survives_sigkill(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let b = b.set("jobs.lease", "2s").toml(
        r#"[tasks.fragile]
command = ["/bin/sh", "-c", "if [ -e first-done ]; then echo second run; exit 0; fi; touch first-done; echo first run; sleep 20"]"#,
    );
    let (b, dir) = tasks_in_workdir(b);
    let app = b.start().await;
    let id = start_job(app.addr, "fragile", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_file(&dir.path().join("first-done"), secs(10)).await;
    app.signal(nix::sys::signal::Signal::SIGKILL);
    app.wait_exit(secs(5)).await;
    // The first attempt's process (its own group) outlives its parent here, as it would
    // not under systemd (KillMode=mixed kills the cgroup); it sleeps on harmlessly.
    let killed_at = Instant::now();

    let again = app.builder_again().start().await;
    let job = wait_job(again.addr, id, "succeeded", secs(20), |j| {
        state(j) == "succeeded"
    })
    .await;
    assert_eq!(job["attempts"], 2, "{job}");
    eprintln!(
        "{backend:?}: job rerun and completed {:?} after SIGKILL (lease 2s)",
        killed_at.elapsed()
    );
}

/// A command that ignores SIGTERM and outlives jobs_drain is killed at kill_grace and
/// requeued; the stop ends within grace with exit code 75 and a warning naming the setting.
async fn stubborn_job_is_killed_and_requeued(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .set("shutdown.jobs_drain", "1s")
        .set("shutdown.grace", "30s")
        .toml(
            r#"[tasks.stubborn]
command = ["/bin/sh", "-c", "trap '' TERM; touch started; while true; do sleep 0.1; done"]
kill_grace = "1s""#,
        )
        .start()
        .await;
    let id = start_job(app.addr, "stubborn", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_file(&app.workdir().path().join("started"), secs(10)).await;
    let stopping = Instant::now();
    app.sigterm();
    let code = app.wait_exit(secs(20)).await;
    let took = stopping.elapsed();
    assert_eq!(code, 75, "a cut stop exits 75: {}", app.dump());
    assert!(
        took >= secs(2) && took < secs(10),
        "jobs_drain 1s + kill_grace 1s, took {took:?}"
    );
    // The warning is among the last lines: wait for the reader to deliver it.
    app.stderr
        .wait_contains("raise shutdown.jobs_drain", secs(5))
        .await;
    let again = app
        .builder_again()
        .set("shutdown.jobs_drain", "1s")
        .start()
        .await;
    let job = get_job(again.addr, id).await;
    // It is queued again (and may already be running once more).
    assert!(matches!(state(&job), "queued" | "running"), "{job}");
    assert!(
        job["attempts"].as_i64().unwrap() <= 1,
        "the cut attempt must not count: {job}"
    );
    eprintln!("{backend:?}: stubborn job cut and requeued; stop took {took:?}");
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(Backend::Sqlite).await; })*
        }
        mod postgres {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(Backend::Postgres).await; })*
        }
    };
}

both_backends!(
    finish_job_completes_across_stop,
    requeue_job_reruns_after_restart,
    job_survives_sigkill,
    stubborn_job_is_killed_and_requeued,
    auth_leaves_health_open_and_refuses_missing_wrong_and_unallowed_tokens,
    an_idempotency_key_sent_again_gives_the_same_job_with_200,
    bad_input_gets_a_4xx_json_error_never_a_5xx,
    output_before_a_stop_is_kept_and_a_log_follow_ends_cleanly_at_it,
    timeout_kills_the_group,
    cancel_queued_and_running,
    leftover_processes_go_with_the_job,
);

/// A job past its timeout: its whole group gets SIGTERM, then SIGKILL after kill_grace;
/// with no attempts left it fails, recording the signal.
async fn timeout_kills_the_group(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .toml(
            r#"[tasks.forever]
command = ["/bin/sh", "-c", "trap '' TERM; sleep 600 & wait"]
timeout = "500ms"
kill_grace = "500ms"
max_attempts = 1"#,
        )
        .start()
        .await;
    let id = start_job(app.addr, "forever", json!({})).await["id"]
        .as_i64()
        .unwrap();
    let job = wait_job(app.addr, id, "failed", secs(10), |j| state(j) == "failed").await;
    assert_eq!(job["exit_signal"], 9, "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("timed out"),
        "{job}"
    );
}

/// The API's promises, one test each, on a process with two tokens and two tasks.
struct ApiApp {
    app: Shiftd,
    _db: Option<TestDatabase>,
    c: reqwest::Client,
}

/// The token allowed to run both tasks.
const CI_AUTH: &str = "Bearer ci-secret-0123456789";

impl ApiApp {
    /// Tokens `ci` (both tasks) and `other` (only `chatty`); `echo` takes a checked `msg`,
    /// `chatty` prints 1000 lines, touches `printed`, then sleeps (requeued at a stop).
    async fn start(backend: Backend) -> Self {
        let (b, db) = builder(backend).await;
        let app = b
            .toml(
                r#"[[auth.tokens]]
name = "ci"
secret = "ci-secret-0123456789"
tasks = ["echo", "chatty"]
[[auth.tokens]]
name = "other"
secret = "other-secret-0123456789"
tasks = ["chatty"]
[tasks.echo]
command = ["/bin/echo", "{msg}"]
params = { msg = "^[a-z ]{1,20}$" }
[tasks.chatty]
command = ["/bin/sh", "-c", "i=0; while [ $i -lt 1000 ]; do echo line $i; i=$((i+1)); done; touch printed; sleep 60"]
on_shutdown = "requeue""#,
            )
            .start()
            .await;
        Self {
            app,
            _db: db,
            c: client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.addr)
    }
}

/// Health stays open; no token is 401 `unauthorized`, a wrong token 401, a token not
/// allowed the task 403.
async fn auth_leaves_health_open_and_refuses_missing_wrong_and_unallowed_tokens(backend: Backend) {
    let api = ApiApp::start(backend).await;
    let c = &api.c;
    assert_eq!(
        c.get(api.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let r = c
        .post(api.url("/v1/tasks/echo/jobs"))
        .json(&json!({"params": {"msg": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = c
        .post(api.url("/v1/tasks/echo/jobs"))
        .header("authorization", "Bearer nope-nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(api.url("/v1/tasks/echo/jobs"))
        .header("authorization", "Bearer other-secret-0123456789")
        .json(&json!({"params": {"msg": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A second start with the same `Idempotency-Key` is the same job, answered 200.
async fn an_idempotency_key_sent_again_gives_the_same_job_with_200(backend: Backend) {
    let api = ApiApp::start(backend).await;
    let post = || {
        api.c
            .post(api.url("/v1/tasks/echo/jobs"))
            .header("authorization", CI_AUTH)
            .header("idempotency-key", "k-1")
            .json(&json!({"params": {"msg": "hello there"}}))
    };
    let first = post().send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = post().send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.json::<Value>().await.unwrap()["id"], first["id"]);
}

/// Bad input gets a 4xx with a JSON error, never a 5xx; a body over the limit 413.
async fn bad_input_gets_a_4xx_json_error_never_a_5xx(backend: Backend) {
    let api = ApiApp::start(backend).await;
    for (method, path, body, expect) in [
        ("POST", "/v1/tasks/echo/jobs", "{not json", 400),
        (
            "POST",
            "/v1/tasks/echo/jobs",
            r#"{"params": {"msg": "UPPER"}}"#,
            422,
        ),
        (
            "POST",
            "/v1/tasks/echo/jobs",
            r#"{"params": {"nope": "x"}}"#,
            422,
        ),
        (
            "POST",
            "/v1/tasks/echo/jobs",
            r#"{"params": {"msg": 5}}"#,
            422,
        ),
        ("POST", "/v1/tasks/echo/jobs", r#"{"parameters": {}}"#, 400),
        ("POST", "/v1/tasks/missing/jobs", "{}", 404),
        ("GET", "/v1/jobs/abc", "", 400),
        ("GET", "/v1/jobs/-1", "", 400),
        ("GET", "/v1/jobs/99999999", "", 404),
        ("GET", "/v1/jobs?limit=0", "", 400),
        ("GET", "/v1/jobs?state=bogus", "", 400),
        ("GET", "/v1/jobs?cursor=zz", "", 400),
        ("POST", "/v1/jobs/abc/cancel", "", 400),
        ("DELETE", "/v1/jobs/1", "", 405),
    ] {
        let r = api
            .c
            .request(method.parse().unwrap(), api.url(path))
            .header("authorization", CI_AUTH)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expect, "{method} {path} {body}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    let big = "x".repeat(2 * 1024 * 1024);
    let r = api
        .c
        .post(api.url("/v1/tasks/echo/jobs"))
        .header("authorization", CI_AUTH)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// Output written just before a graceful stop is all in the database after it; a log
/// follower's stream ends cleanly when the stop begins.
async fn output_before_a_stop_is_kept_and_a_log_follow_ends_cleanly_at_it(backend: Backend) {
    let api = ApiApp::start(backend).await;
    let (app, c) = (&api.app, &api.c);
    let chatty: Value = c
        .post(api.url("/v1/tasks/chatty/jobs"))
        .header("authorization", CI_AUTH)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = chatty["id"].as_i64().unwrap();
    wait_file(&app.workdir().path().join("printed"), secs(10)).await;
    let follow = c
        .get(api.url(&format!("/v1/jobs/{id}/log?follow=1")))
        .header("authorization", CI_AUTH)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let reading = tokio::spawn(async move { follow.text().await });
    app.sigterm();
    let followed = tokio::time::timeout(secs(5), reading)
        .await
        .expect("the follow stream must end at the stop")
        .unwrap();
    assert!(
        followed.is_ok(),
        "the follow stream must end cleanly: {followed:?}"
    );
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    let again = app.builder_again().set("jobs.workers", 1).start().await;
    let log = c
        .get(format!("http://{}/v1/jobs/{id}/log", again.addr))
        .header("authorization", CI_AUTH)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for i in [0, 500, 999] {
        assert!(
            log.contains(&format!("line {i}\n")),
            "line {i} lost across the stop"
        );
    }
}

/// Two processes on one PostgreSQL run 500 jobs: each exactly once, never two at a time.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_one_queue() {
    if skip_unless_slow("two_processes_share_one_queue") {
        return;
    }
    let (b, _db) = builder(Backend::Postgres).await;
    let b = b.set("jobs.workers", 8).toml(
        r#"[tasks.mark]
command = ["/bin/sh", "-c", "echo \"start $JOB_ID $JOB_ATTEMPT\" >> runs.log; echo \"end $JOB_ID\" >> runs.log"]
concurrency = 8"#,
    );
    let (b, dir) = tasks_in_workdir(b);
    let one = b.clone().start().await;
    let two = b
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    let started = Instant::now();
    let c = client();
    let mut ids = Vec::new();
    for i in 0..500 {
        let addr = if i % 2 == 0 { one.addr } else { two.addr };
        let r: Value = c
            .post(format!("http://{addr}/v1/tasks/mark/jobs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_i64().unwrap());
    }
    let deadline = Instant::now() + secs(120);
    loop {
        let page: Value = c
            .get(format!(
                "http://{}/v1/jobs?state=succeeded&limit=500",
                one.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["jobs"].as_array().unwrap().len() == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "500 jobs not done within 120 s");
        tokio::time::sleep(millis(200)).await;
    }
    let took = started.elapsed();
    let runs = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    let mut starts = std::collections::HashMap::<i64, usize>::new();
    let mut open = std::collections::HashSet::new();
    for line in runs.lines() {
        let mut words = line.split_whitespace();
        let (kind, id) = (
            words.next().unwrap(),
            words.next().unwrap().parse::<i64>().unwrap(),
        );
        if kind == "start" {
            *starts.entry(id).or_default() += 1;
            assert!(open.insert(id), "job {id} started while already running");
        } else {
            open.remove(&id);
        }
    }
    assert_eq!(starts.len(), 500, "every job ran");
    assert!(starts.values().all(|n| *n == 1), "a job ran twice");
    let by_one = one
        .stderr
        .all()
        .iter()
        .filter(|l| l.text.contains("job attempt ended"))
        .count();
    let by_two = two
        .stderr
        .all()
        .iter()
        .filter(|l| l.text.contains("job attempt ended"))
        .count();
    assert!(
        by_one > 0 && by_two > 0,
        "both processes should have worked: {by_one} / {by_two}"
    );
    eprintln!("two processes ran 500 jobs exactly once each in {took:?} ({by_one} + {by_two})");
}

/// Cancel: a queued job never runs; a running one is stopped; a finished one is a 409.
async fn cancel_queued_and_running(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .toml(
            r#"[tasks.long]
command = ["/bin/sh", "-c", "touch started-$JOB_ID; sleep 60"]
concurrency = 1"#,
        )
        .start()
        .await;
    let c = client();
    let running = start_job(app.addr, "long", json!({})).await["id"]
        .as_i64()
        .unwrap();
    let queued = start_job(app.addr, "long", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_file(
        &app.workdir().path().join(format!("started-{running}")),
        secs(10),
    )
    .await;
    for id in [queued, running] {
        let r = c
            .post(format!("http://{}/v1/jobs/{id}/cancel", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_job(app.addr, running, "cancelled", secs(10), |j| {
        state(j) == "cancelled"
    })
    .await;
    let job = get_job(app.addr, queued).await;
    assert_eq!(state(&job), "cancelled", "{job}");
    assert_eq!(
        job["attempts"], 0,
        "a cancelled queued job never runs: {job}"
    );
    assert!(!app
        .workdir()
        .path()
        .join(format!("started-{queued}"))
        .exists());
    let r = c
        .post(format!("http://{}/v1/jobs/{running}/cancel", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

/// Kills every server connection to database `name`, as a PostgreSQL restart would.
async fn terminate_connections(name: &str) {
    use sqlx::Connection;
    let admin_url = std::env::var("PG_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_TEST_URL.into());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let killed = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert!(
        !killed.is_empty(),
        "no connections to kill: the test would prove nothing"
    );
    let _ = admin.close().await;
}

/// A database blip mid-job (every connection killed): the job still reaches its final state.
#[tokio::test(flavor = "multi_thread")]
async fn job_survives_database_blip() {
    let (b, db) = builder(Backend::Postgres).await;
    let db = db.unwrap();
    let app = b
        .toml(
            r#"[tasks.steady]
command = ["/bin/sh", "-c", "echo before; touch started; sleep 1; echo after"]"#,
        )
        .start()
        .await;
    let id = start_job(app.addr, "steady", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_file(&app.workdir().path().join("started"), secs(10)).await;
    terminate_connections(&db.name).await;
    let job = wait_job(app.addr, id, "succeeded", secs(20), |j| {
        state(j) == "succeeded"
    })
    .await;
    assert_eq!(job["attempts"], 1, "{job}");
    let log = job_log(app.addr, id).await;
    assert!(log.contains("before") && log.contains("after"), "{log}");
}

/// A command that leaves a process in the background: when the command exits, the rest of
/// its process group is killed, so nothing escapes the job.
async fn leftover_processes_go_with_the_job(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let b = b.toml(
        r#"[tasks.sloppy]
command = ["/bin/sh", "-c", "sleep 300 & echo $! > leftover.pid; echo done"]"#,
    );
    let (b, dir) = tasks_in_workdir(b);
    let app = b.start().await;
    let id = start_job(app.addr, "sloppy", json!({})).await["id"]
        .as_i64()
        .unwrap();
    wait_job(app.addr, id, "succeeded", secs(10), |j| {
        state(j) == "succeeded"
    })
    .await;
    let pid: i32 = std::fs::read_to_string(dir.path().join("leftover.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    // Reaped by init once killed; a zombie for a moment at most.
    let deadline = Instant::now() + secs(5);
    while nix::sys::signal::kill(pid, None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "the background process {pid} outlived its job"
        );
        tokio::time::sleep(millis(20)).await;
    }
    assert!(job_log(app.addr, id)
        .await
        .contains("left processes running; killed them"));
}
