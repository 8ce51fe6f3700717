//! Delayed jobs (`run_at`, `delay`, state `scheduled`) and cron schedules, on SQLite and
//! PostgreSQL, against the real binary: a delayed job waits for its time and not longer,
//! also across a SIGKILL and a graceful restart; a schedule enqueues every occurrence once,
//! also with two processes on one PostgreSQL database; after downtime `catch_up = "latest"`
//! runs exactly one missed occurrence and `"none"` none; a first start catches nothing up;
//! a reload changes a schedule at once; bad values are 422s and config errors.
//!
//! Schedules here use the six-field form with seconds (`*/2 * * * * *`), so occurrences
//! come every two seconds. Where a test must let occurrences pass while no process runs,
//! it waits until a time computed from the schedule (the event is the clock passing an
//! occurrence), never for a guessed duration.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::time::Instant;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn ms(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap_or_else(|| panic!("not a time: {t}")))
        .unwrap_or_else(|e| panic!("{t}: {e}"))
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The time (ms) at the start of a log line (`2026-11-21T22:30:23.123456Z  INFO …`).
fn log_time(line: &str) -> i64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("no time at the start of `{line}`: {e}"))
        .timestamp_millis()
}

fn state(job: &Value) -> &str {
    job["state"].as_str().unwrap_or("")
}

/// Polls `GET /v1/jobs/{id}` (every 50 ms, up to `timeout`) until `pred` holds.
async fn wait_job(
    addr: SocketAddr,
    id: i64,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get(addr, &format!("/v1/jobs/{id}")).await;
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

/// Every job of `task` (newest first, up to 500).
async fn jobs_of(addr: SocketAddr, task: &str) -> Vec<Value> {
    get(addr, &format!("/v1/jobs?task={task}&limit=500")).await["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls the jobs of `task` until `pred` holds of them (every 100 ms, up to `timeout`).
async fn wait_jobs(
    addr: SocketAddr,
    task: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = jobs_of(addr, task).await;
        if pred(&jobs) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{task}: not {what} within {timeout:?}; jobs: {jobs:#?}"
        );
        tokio::time::sleep(millis(100)).await;
    }
}

/// Jobs per occurrence (`run_at` of a scheduled job is its occurrence), in time order.
fn per_occurrence(jobs: &[Value]) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for job in jobs {
        *out.entry(ms(&job["run_at"])).or_insert(0) += 1;
    }
    out
}

/// Asserts one job per occurrence, and no gap between `from` and `to` (ms) in steps of
/// `step` ms; returns the occurrences.
fn assert_once_each(jobs: &[Value], step: i64, what: &str) -> Vec<i64> {
    let counts = per_occurrence(jobs);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{what}: occurrences enqueued more than once: {dups:?}"
    );
    let times: Vec<i64> = counts.keys().copied().collect();
    for t in &times {
        assert_eq!(
            t % step,
            0,
            "{what}: {t} is not an occurrence of the schedule"
        );
    }
    times
}

fn assert_no_gaps(times: &[i64], step: i64, what: &str) {
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            step,
            "{what}: a gap between occurrences {} and {}: {times:?}",
            pair[0],
            pair[1]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Delayed jobs.
// ---------------------------------------------------------------------------------------

/// A delayed job is `scheduled` (listed and filtered so), runs after its time and not
/// before; `run_at` with an offset works; a slightly past `run_at` means now; a scheduled
/// job can be cancelled; the batch takes `delay` too; bad values are 422s naming the field.
async fn delayed_jobs(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .toml("[tasks.t]\ncommand = [\"/bin/true\"]\nconcurrency = 4")
        .start()
        .await;
    let addr = app.addr;

    let asked = now_ms();
    let (status, job) = post(addr, "/v1/tasks/t/jobs", json!({ "delay": "2s" })).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(state(&job), "scheduled", "{job}");
    let id = job["id"].as_i64().unwrap();
    let run_at = ms(&job["run_at"]);
    assert!(
        (asked + 2000..asked + 3000).contains(&run_at),
        "run_at {run_at} is not 2 s after {asked}"
    );
    let listed = get(addr, "/v1/jobs?state=scheduled").await;
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id),
        "listed as scheduled: {listed}"
    );

    // run_at with an offset: 3 s ahead, written in +01:00.
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let at_text = at
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339();
    let (status, job2) = post(addr, "/v1/tasks/t/jobs", json!({ "run_at": at_text })).await;
    assert_eq!(status, 202, "{job2}");
    assert_eq!(state(&job2), "scheduled");
    assert_eq!(ms(&job2["run_at"]), at.timestamp_millis());

    // A run_at 10 s in the past means now.
    let past = (chrono::Utc::now() - chrono::Duration::seconds(10)).to_rfc3339();
    let (status, now_job) = post(addr, "/v1/tasks/t/jobs", json!({ "run_at": past })).await;
    assert_eq!(status, 202, "{now_job}");
    assert_eq!(state(&now_job), "queued", "{now_job}");

    // An idempotency key behaves as for any job: the same key and params give the same
    // scheduled job back (200), whatever the delay of the repeat.
    let keyed = |delay: &str| {
        client()
            .post(format!("http://{addr}/v1/tasks/t/jobs"))
            .header("Idempotency-Key", "nightly-1")
            .json(&json!({ "delay": delay }))
            .send()
    };
    let r = keyed("1h").await.unwrap();
    assert_eq!(r.status(), 202);
    let original: Value = r.json().await.unwrap();
    let r = keyed("2h").await.unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["id"], original["id"]);
    assert_eq!(state(&again), "scheduled");

    // A job an hour away is cancelled like a queued one.
    let (_, later) = post(addr, "/v1/tasks/t/jobs", json!({ "delay": "1h" })).await;
    let later_id = later["id"].as_i64().unwrap();
    let (status, cancelled) = post(addr, &format!("/v1/jobs/{later_id}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(state(&cancelled), "cancelled", "{cancelled}");

    // The batch: one delayed, one now.
    let (status, batch) = post(
        addr,
        "/v1/tasks/t/jobs:batch",
        json!({ "jobs": [{ "delay": "2s" }, {}] }),
    )
    .await;
    assert_eq!(status, 202, "{batch}");
    let ids: Vec<i64> = batch["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let first = get(addr, &format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(state(&first), "scheduled", "{first}");

    // Long ago means now; far ahead is kept (up to 9999-12-31).
    let (status, long_ago) = post(
        addr,
        "/v1/tasks/t/jobs",
        json!({ "run_at": "2000-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(status, 202, "{long_ago}");
    assert_eq!(state(&long_ago), "queued", "{long_ago}");
    let (status, far) = post(
        addr,
        "/v1/tasks/t/jobs",
        json!({ "run_at": "2999-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(status, 202, "{far}");
    assert_eq!(state(&far), "scheduled", "{far}");
    assert_eq!(far["run_at"], "2999-01-01T00:00:00.000Z", "{far}");
    let (status, farther) = post(
        addr,
        "/v1/tasks/t/jobs",
        json!({ "delay": "999999d 999999d 999999d 999999d" }),
    )
    .await;
    assert_eq!(status, 202, "{farther}");
    assert_eq!(farther["run_at"], "9999-12-31T23:59:59.999Z", "{farther}");
    for id in [&far["id"], &farther["id"]] {
        post(addr, &format!("/v1/jobs/{id}/cancel"), json!({})).await;
    }

    // 422s, each naming the field.
    for (body, needle) in [
        (json!({ "delay": "2s", "run_at": at_text }), "not both"),
        (json!({ "run_at": "tomorrow" }), "`run_at`"),
        (json!({ "delay": "soon" }), "`delay`"),
    ] {
        let (status, error) = post(addr, "/v1/tasks/t/jobs", body.clone()).await;
        assert_eq!(status, 422, "{body} → {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body} → {error}");
    }
    let (status, error) = post(
        addr,
        "/v1/tasks/t/jobs:batch",
        json!({ "jobs": [{}, { "delay": "-3s" }] }),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("jobs[1]: `delay`"),
        "{error}"
    );

    // Each delayed job runs after its time, not before.
    for (id, run_at) in [
        (id, run_at),
        (job2["id"].as_i64().unwrap(), at.timestamp_millis()),
        (ids[0], ms(&first["run_at"])),
    ] {
        let done = wait_job(addr, id, "succeeded", secs(15), |j| state(j) == "succeeded").await;
        let started = ms(&done["started_at"]);
        assert!(
            started >= run_at,
            "job {id} started at {started}, before its run_at {run_at}"
        );
        // Within about one poll interval (100 ms here), with room for a loaded machine.
        assert!(
            started - run_at < 2000,
            "job {id} started {} ms late",
            started - run_at
        );
    }
    wait_job(
        addr,
        now_job["id"].as_i64().unwrap(),
        "succeeded",
        secs(10),
        |j| state(j) == "succeeded",
    )
    .await;
    let status = get(addr, "/v1/status").await;
    assert!(status["jobs"].get("scheduled").is_some(), "{status}");
}

/// A scheduled job is in the database, not in the process: it runs after a SIGKILL and
/// after a graceful restart, once, after its time.
async fn delayed_job_survives_restarts(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b.toml("[tasks.t]\ncommand = [\"/bin/true\"]").start().await;
    let (_, killed) = post(app.addr, "/v1/tasks/t/jobs", json!({ "delay": "3s" })).await;
    let (_, stopped) = post(app.addr, "/v1/tasks/t/jobs", json!({ "delay": "4s" })).await;
    assert_eq!(state(&killed), "scheduled");
    app.signal(Signal::SIGKILL);
    app.wait_exit(secs(10)).await;

    let again = app.builder_again().start().await;
    let done = wait_job(
        again.addr,
        killed["id"].as_i64().unwrap(),
        "succeeded",
        secs(15),
        |j| state(j) == "succeeded",
    )
    .await;
    assert!(ms(&done["started_at"]) >= ms(&killed["run_at"]), "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        state(&get(again.addr, &format!("/v1/jobs/{}", stopped["id"])).await),
        "scheduled"
    );
    again.sigterm();
    assert_eq!(again.wait_exit(secs(15)).await, 0, "{}", again.dump());

    let third = app.builder_again().start().await;
    let done = wait_job(
        third.addr,
        stopped["id"].as_i64().unwrap(),
        "succeeded",
        secs(15),
        |j| state(j) == "succeeded",
    )
    .await;
    assert!(ms(&done["started_at"]) >= ms(&stopped["run_at"]), "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    third.sigterm();
    assert_eq!(third.wait_exit(secs(15)).await, 0, "{}", third.dump());
}

// ---------------------------------------------------------------------------------------
// Schedules.
// ---------------------------------------------------------------------------------------

const EVERY_2S: &str = "*/2 * * * * *";

fn scheduled_task(name: &str, catch_up: &str) -> String {
    format!(
        "[tasks.{name}]\ncommand = [\"/bin/true\"]\nschedule = \"{EVERY_2S}\"\ncatch_up = \"{catch_up}\"\n"
    )
}

/// Every two seconds, one job per occurrence, no gaps; the first start catches up nothing
/// (no job for an occurrence before the process started); `GET /v1/tasks` shows the
/// schedule and its next occurrence.
async fn schedule_every_two_seconds(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let before_start = now_ms();
    let app = b.toml(&scheduled_task("tick", "latest")).start().await;
    let tasks = get(app.addr, "/v1/tasks").await;
    let tick = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tick")
        .unwrap()
        .clone();
    assert_eq!(tick["schedule"], EVERY_2S, "{tick}");
    assert_eq!(tick["timezone"], "UTC", "{tick}");
    let next = ms(&tick["next_run_at"]);
    assert_eq!(next % 2000, 0, "{tick}");
    assert!(next > now_ms() - 100 && next <= now_ms() + 2000, "{tick}");

    let jobs = wait_jobs(app.addr, "tick", "4 succeeded", secs(20), |jobs| {
        jobs.iter().filter(|j| state(j) == "succeeded").count() >= 4
    })
    .await;
    let times = assert_once_each(&jobs, 2000, "every 2 s");
    assert_no_gaps(&times, 2000, "every 2 s");
    assert!(
        times[0] >= before_start,
        "the first start caught up occurrence {} from before the process started ({before_start})",
        times[0]
    );
    app.sigterm();
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());
}

/// Downtime: the process stops (`signal`), at least three occurrences pass, it starts
/// again. With `latest` exactly one job for an occurrence of the downtime, the latest one
/// before the new process looked; with `none` no job for an occurrence missed by more
/// than the grace (1 s here). Before and after, every occurrence exactly once.
async fn catch_up_after_downtime(backend: Backend, catch_up: &str, signal: Signal) {
    let (b, _db) = builder(backend).await;
    let app = b.toml(&scheduled_task("tick", catch_up)).start().await;
    wait_jobs(app.addr, "tick", "2 jobs", secs(20), |jobs| jobs.len() >= 2).await;
    app.signal(signal);
    app.wait_exit(secs(15)).await;
    let stopped_at = now_ms();
    // Let at least three occurrences pass with no process: wait for the clock to pass the
    // third occurrence after the stop, and 1.1 s more, so that the occurrence the new
    // process finds missed is later than the 1 s grace of `none` (if it starts in time).
    let third = (stopped_at / 2000 + 3) * 2000;
    tokio::time::sleep(Duration::from_millis(
        (third + 1100 - now_ms()).max(0) as u64
    ))
    .await;

    let again = app.builder_again().start().await;
    // The new process's first look: the time of its "schedule registered" line.
    let registered = again
        .stderr
        .wait_contains("schedule registered", secs(10))
        .await;
    let first_look = log_time(&registered.text);
    // Wait for two occurrences after that look.
    let jobs = wait_jobs(
        again.addr,
        "tick",
        "occurrences after the restart",
        secs(20),
        |jobs| {
            jobs.iter()
                .filter(|j| ms(&j["run_at"]) > first_look)
                .count()
                >= 2
        },
    )
    .await;
    let times = assert_once_each(&jobs, 2000, catch_up);
    let before: Vec<i64> = times.iter().copied().filter(|t| *t <= stopped_at).collect();
    assert!(!before.is_empty(), "{times:?}");
    assert_no_gaps(&before, 2000, "before the stop");
    let missed: Vec<i64> = times
        .iter()
        .copied()
        .filter(|t| *t > stopped_at && *t <= first_look)
        .collect();
    match catch_up {
        "latest" => {
            assert_eq!(
                missed,
                vec![first_look / 2000 * 2000],
                "exactly one catch-up job, for the latest occurrence before the first look at {first_look}: {times:?}"
            );
            assert!(
                missed[0] >= third,
                "an occurrence of the downtime: {missed:?}"
            );
        }
        _ => {
            let late: Vec<i64> = missed
                .iter()
                .copied()
                .filter(|t| *t < first_look - 1100)
                .collect();
            assert!(
                late.is_empty(),
                "no catch-up with none: {late:?} of {times:?}"
            );
        }
    }
    let after: Vec<i64> = times.iter().copied().filter(|t| *t > stopped_at).collect();
    assert_no_gaps(&after, 2000, "after the restart");
    again.sigterm();
    assert_eq!(again.wait_exit(secs(15)).await, 0, "{}", again.dump());
}

/// A reload that changes the schedule takes effect at once: `GET /v1/tasks` shows the
/// new next occurrence right after the reload, and the new schedule's jobs come (the
/// scheduler was woken, not left sleeping until 03:00).
async fn reload_changes_the_schedule(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .toml("[tasks.tick]\ncommand = [\"/bin/true\"]\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n")
        .start()
        .await;
    let tick = &get(app.addr, "/v1/tasks").await[0];
    assert_eq!(tick["timezone"], "Europe/Berlin");
    let next = ms(&tick["next_run_at"]);
    assert!(next > now_ms() + 2000, "{tick}");
    let local = chrono::DateTime::from_timestamp_millis(next)
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(local.format("%H:%M:%S").to_string(), "03:00:00", "{tick}");

    let text = app
        .builder_again()
        .config_file_text()
        .replace("0 3 * * *", EVERY_2S);
    app.rewrite_config(&text);
    app.signal(Signal::SIGHUP);
    app.stderr
        .wait_contains("configuration reloaded", secs(10))
        .await;
    let tick = &get(app.addr, "/v1/tasks").await[0];
    assert_eq!(tick["schedule"], EVERY_2S, "{tick}");
    let next = ms(&tick["next_run_at"]);
    assert!(
        next <= now_ms() + 2000,
        "the new schedule shows at once: {tick}"
    );
    let jobs = wait_jobs(
        app.addr,
        "tick",
        "2 jobs of the new schedule",
        secs(15),
        |jobs| jobs.len() >= 2,
    )
    .await;
    let times = assert_once_each(&jobs, 2000, "after the reload");
    assert_no_gaps(&times, 2000, "after the reload");
    app.sigterm();
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());
}

/// Occurrence rows do not grow forever: with `jobs.retain = "1s"` only the rows of the
/// last second or so remain (the newest always), while every occurrence still runs once.
async fn occurrence_rows_are_retained_briefly(backend: Backend) {
    let (b, db) = builder(backend).await;
    let app = b
        .set("jobs.retain", "1s")
        .toml(&scheduled_task("tick", "latest"))
        .start()
        .await;
    // Jobs are deleted after 1 s too, so count what was enqueued from the log.
    let deadline = Instant::now() + secs(20);
    while app
        .stderr
        .all()
        .iter()
        .filter(|l| l.text.contains("scheduled job queued"))
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "4 occurrences: {}", app.dump());
        tokio::time::sleep(millis(100)).await;
    }
    let url = match &db {
        Some(db) => db.url.clone(),
        None => format!(
            "sqlite://{}/shiftd-data/shiftd.db",
            app.workdir().path().display()
        ),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT occurrence FROM schedule_occurrences")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(
        !rows.is_empty() && rows.len() <= 2,
        "only the newest occurrence rows are kept: {rows:?}"
    );
    let times: Vec<i64> = app
        .stderr
        .all()
        .iter()
        .filter(|l| l.text.contains("scheduled job queued"))
        .map(|l| {
            let at = l
                .text
                .split("occurrence=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            chrono::DateTime::parse_from_rfc3339(at)
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    let mut sorted = times.clone();
    sorted.dedup();
    assert_eq!(sorted, times, "each occurrence once, in order");
    assert_no_gaps(&times, 2000, "with a short retention");
    app.sigterm();
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());
}

/// A process this test did not spawn (the hand-over's new process, init's child after the
/// double fork): killed at the end of the test whatever happens.
struct Successor {
    pid: i32,
}

impl Successor {
    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal)
            .unwrap_or_else(|e| panic!("kill({}, {signal}): {e}", self.pid));
    }

    /// Waits for the process to exit, on its pidfd (an event, not a poll).
    async fn wait_gone(&self, timeout: Duration) {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return; // already gone
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.expect("register the pidfd");
        let waited = tokio::time::timeout(timeout, fd.readable()).await;
        assert!(
            waited.is_ok(),
            "process {} did not exit within {timeout:?}",
            self.pid
        );
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// A hand-over (`shiftd reload`, as `systemctl reload` and package upgrades run it) in the
/// middle of a schedule: the occurrences go on with no gap and none twice, the new process
/// enqueueing them once the old one stopped its scheduler.
async fn schedule_goes_on_across_a_hand_over(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b.toml(&scheduled_task("tick", "latest")).start().await;
    wait_jobs(app.addr, "tick", "2 jobs", secs(20), |jobs| jobs.len() >= 2).await;
    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--timeout", "30s"])
        .current_dir(app.workdir().path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .expect("run shiftd reload");
    assert_eq!(
        out.status.code(),
        Some(0),
        "shiftd reload: {out:?}\n{}",
        app.dump()
    );
    let handed = app
        .notify
        .wait_for("MAINPID=", secs(5), |d| d.has_key("MAINPID"))
        .await;
    let successor = Successor {
        pid: handed
            .value("MAINPID")
            .and_then(|v| v.parse().ok())
            .expect("MAINPID=<pid>"),
    };
    // The old process has nothing running: it exits once it handed over.
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());
    let handed_at = now_ms();
    let jobs = wait_jobs(
        app.addr,
        "tick",
        "2 occurrences after the hand-over",
        secs(20),
        |jobs| jobs.iter().filter(|j| ms(&j["run_at"]) > handed_at).count() >= 2,
    )
    .await;
    let times = assert_once_each(&jobs, 2000, "across the hand-over");
    assert_no_gaps(&times, 2000, "across the hand-over");
    successor.signal(Signal::SIGTERM);
    successor.wait_gone(secs(15)).await;
}

macro_rules! both_backends {
    ($($name:ident $(($($arg:expr),*))?),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(Backend::Sqlite $($(, $arg)*)?).await; })*
        }
        mod postgres {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(Backend::Postgres $($(, $arg)*)?).await; })*
        }
    };
}

async fn catch_up_latest_after_sigkill(backend: Backend) {
    catch_up_after_downtime(backend, "latest", Signal::SIGKILL).await;
}

async fn catch_up_latest_after_sigterm(backend: Backend) {
    catch_up_after_downtime(backend, "latest", Signal::SIGTERM).await;
}

async fn catch_up_none_after_sigkill(backend: Backend) {
    catch_up_after_downtime(backend, "none", Signal::SIGKILL).await;
}

async fn catch_up_none_after_sigterm(backend: Backend) {
    catch_up_after_downtime(backend, "none", Signal::SIGTERM).await;
}

both_backends!(
    delayed_jobs,
    delayed_job_survives_restarts,
    schedule_every_two_seconds,
    catch_up_latest_after_sigkill,
    catch_up_latest_after_sigterm,
    catch_up_none_after_sigkill,
    catch_up_none_after_sigterm,
    reload_changes_the_schedule,
    occurrence_rows_are_retained_briefly,
    schedule_goes_on_across_a_hand_over,
);

/// Two processes on one PostgreSQL database with the same schedule: every occurrence is
/// enqueued exactly once (no duplicates, no gaps) over at least six occurrences, and one
/// of them stopping (SIGKILL) does not stop the occurrences.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_enqueue_each_occurrence_once() {
    let (b, _db) = builder(Backend::Postgres).await;
    let b = b.toml(&scheduled_task("tick", "latest"));
    let first = b.clone().start().await;
    let second = b
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    let jobs = wait_jobs(first.addr, "tick", "6 succeeded", secs(30), |jobs| {
        jobs.iter().filter(|j| state(j) == "succeeded").count() >= 6
    })
    .await;
    let times = assert_once_each(&jobs, 2000, "two nodes");
    assert_no_gaps(&times, 2000, "two nodes");
    let queued_by = |app: &Shiftd| {
        app.stderr
            .all()
            .iter()
            .filter(|l| l.text.contains("scheduled job queued"))
            .count()
    };
    let (a, b) = (queued_by(&first), queued_by(&second));
    assert!(
        a + b >= times.len(),
        "each job was queued by one of them: {a} + {b} for {}",
        times.len()
    );

    first.signal(Signal::SIGKILL);
    first.wait_exit(secs(10)).await;
    let killed_at = now_ms();
    let jobs = wait_jobs(
        second.addr,
        "tick",
        "2 more occurrences",
        secs(20),
        |jobs| jobs.iter().filter(|j| ms(&j["run_at"]) > killed_at).count() >= 2,
    )
    .await;
    let times = assert_once_each(&jobs, 2000, "one node left");
    assert_no_gaps(&times, 2000, "one node left");
    second.sigterm();
    assert_eq!(second.wait_exit(secs(15)).await, 0, "{}", second.dump());
}

// ---------------------------------------------------------------------------------------
// Configuration errors.
// ---------------------------------------------------------------------------------------

async fn assert_config_error(toml: &str, key: &str, needle: &str) {
    let app = Shiftd::builder().toml(toml).spawn().await;
    assert_eq!(
        app.wait_exit(secs(10)).await,
        78,
        "a bad config exits 78:\n{}",
        app.dump()
    );
    let line = app.stderr.wait_contains(key, secs(1)).await;
    assert!(line.text.contains(needle), "{}", line.text);
}

#[tokio::test]
async fn a_bad_schedule_exits_78_naming_the_key() {
    assert_config_error(
        "[tasks.t]\ncommand = [\"/bin/true\"]\nschedule = \"0 25 * * *\"\n",
        "tasks.t.schedule",
        "not a cron expression",
    )
    .await;
    assert_config_error(
        "[tasks.t]\ncommand = [\"/bin/true\"]\nschedule = \"0 3 * *\"\n",
        "tasks.t.schedule",
        "4 fields",
    )
    .await;
    assert_config_error(
        "[tasks.t]\ncommand = [\"/bin/true\"]\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Atlantis\"\n",
        "tasks.t.timezone",
        "IANA",
    )
    .await;
    assert_config_error(
        "[tasks.t]\ncommand = [\"/bin/echo\", \"{x}\"]\nparams = { x = \"[a-z]+\" }\nschedule = \"0 3 * * *\"\n",
        "tasks.t.schedule",
        "without parameters",
    )
    .await;
    assert_config_error(
        "[tasks.t]\ncommand = [\"/bin/true\"]\nschedule = \"0 3 * * *\"\ncatch_up = \"all\"\n",
        "tasks.t.catch_up",
        "catch_up",
    )
    .await;
}

/// `shiftd check` reports a bad schedule the same way.
#[tokio::test]
async fn check_reports_a_bad_schedule() {
    let dir = Workdir::new();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[tasks.t]\ncommand = [\"/bin/true\"]\nschedule = \"61 * * * *\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--skip-unit", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tasks.t.schedule"), "{text}");
}
