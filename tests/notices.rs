//! Notices against the real binary, on SQLite and PostgreSQL: every final state gets one
//! notice id (duplicates of an id allowed: at least once), signed when a secret is set;
//! interrupted attempts get theirs across a SIGKILL and a graceful restart; a hanging
//! receiver does not hold up the stop; two processes on one PostgreSQL share the outbox.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::faults::wait_file;
use common::*;
use hmac::{Hmac, Mac};
use receiver::{Received, Receiver};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::time::Instant;

const SECRET: &str = "notice-key-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn start_job(addr: SocketAddr, task: &str) -> i64 {
    let r = client()
        .post(format!("http://{addr}/v1/tasks/{task}/jobs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "start {task}");
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
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

async fn wait_state(addr: SocketAddr, id: i64, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(addr, id).await;
        if job["state"] == want {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: not {want} within {timeout:?}: {job}"
        );
        tokio::time::sleep(millis(50)).await;
    }
}

/// A builder with fast notice settings, on `backend`.
async fn notice_builder(backend: Backend) -> (ShiftdBuilder, Option<TestDatabase>) {
    let (b, db) = builder(backend).await;
    let b = b
        .set("notices.poll_interval", "100ms")
        .set("notices.backoff", "100ms")
        .set("notices.backoff_max", "500ms");
    (b, db)
}

/// A `[tasks.NAME]` table with a notify_url (and the secret file, when given).
fn task(name: &str, command: &str, url: &str, secret: Option<&Path>, extra: &str) -> String {
    let mut t = format!(
        "[tasks.{name}]\ncommand = [\"/bin/sh\", \"-c\", {}]\nnotify_url = \"{url}\"\n{extra}\n",
        toml::Value::String(command.to_string())
    );
    if let Some(path) = secret {
        t += &format!("notify_secret_file = \"{}\"\n", path.display());
    }
    t
}

/// Notice ids by (job, event): at least once means an id may come twice, but one event
/// never gets two ids.
fn ids_by_event(received: &[Received]) -> BTreeMap<(i64, String), BTreeSet<String>> {
    let mut out: BTreeMap<(i64, String), BTreeSet<String>> = BTreeMap::new();
    for r in received {
        out.entry((r.job_id(), r.event().to_string()))
            .or_default()
            .insert(r.id().to_string());
    }
    out
}

fn accepted_event(rx: &Receiver, job: i64, event: &str) -> Option<Received> {
    rx.accepted()
        .into_iter()
        .find(|r| r.job_id() == job && r.event() == event)
}

/// Each (job, event) has exactly one id, over everything received.
fn assert_one_id_per_event(rx: &Receiver) {
    for ((job, event), ids) in ids_by_event(&rx.all()) {
        assert_eq!(
            ids.len(),
            1,
            "job {job} {event}: several notice ids {ids:?}\n{}",
            rx.dump()
        );
    }
}

/// Rows still in the outbox, read from the database directly.
async fn outbox(backend: Backend, dir: &Workdir, db: &Option<TestDatabase>) -> i64 {
    use sqlx::{Connection, Row};
    let sql = "SELECT COUNT(*) AS n FROM notices";
    match backend {
        Backend::Sqlite => {
            let path = dir.path().join("shiftd-data/shiftd.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let n = sqlx::query(sql).fetch_one(&mut c).await.unwrap().get("n");
            let _ = c.close().await;
            n
        }
        Backend::Postgres => {
            let url = &db.as_ref().unwrap().url;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let n = sqlx::query(sql).fetch_one(&mut c).await.unwrap().get("n");
            let _ = c.close().await;
            n
        }
    }
}

async fn wait_outbox_empty(
    backend: Backend,
    dir: &Workdir,
    db: &Option<TestDatabase>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = outbox(backend, dir, db).await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} notices still in the outbox after {timeout:?}"
        );
        tokio::time::sleep(millis(100)).await;
    }
}

fn verify_signature(r: &Received, secret: &[u8]) {
    let ts = r
        .header("shiftd-timestamp")
        .unwrap_or_else(|| panic!("no Shiftd-Timestamp: {:?}", r.headers));
    let sig = r
        .header("shiftd-signature")
        .unwrap_or_else(|| panic!("no Shiftd-Signature: {:?}", r.headers));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("v1={want}"), "signature of {}", r.id());
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .abs_diff(ts.parse::<u64>().unwrap());
    assert!(age < 120, "timestamp {ts} is not now");
}

/// Every final state (succeeded, failed after its retries, cancelled running and queued)
/// gets exactly one notice id; a receiver failing at first gets the same id again; each
/// delivery is signed; a task without a `notify_url` gets none and the outbox empties.
async fn every_final_state_gets_one_notice(backend: Backend) {
    let rx = Receiver::start().await;
    rx.fail_next(2);
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let secret = dir.path().join("notice.key");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let url = rx.url();
    let s = Some(secret.as_path());
    let app = b
        .toml(&task("ok", "exit 0", &url, s, ""))
        .toml(&task(
            "bad",
            "echo broken >&2; exit 3",
            &url,
            s,
            "max_attempts = 2\nretry_backoff = \"100ms\"",
        ))
        .toml(&task(
            "long",
            "touch started-$JOB_ID; sleep 60",
            &url,
            s,
            "concurrency = 1",
        ))
        .toml("[tasks.quiet]\ncommand = [\"/bin/true\"]\n")
        .toml(&format!("working_dir = \"{}\"", dir.path().display()))
        .start()
        .await;
    let ok: Vec<i64> = futures_join(app.addr, "ok", 3).await;
    let bad = start_job(app.addr, "bad").await;
    let running = start_job(app.addr, "long").await;
    let queued = start_job(app.addr, "long").await;
    let quiet = futures_join(app.addr, "quiet", 2).await;
    wait_file(&dir.path().join(format!("started-{running}")), secs(10)).await;
    for id in [queued, running] {
        let r = client()
            .post(format!("http://{}/v1/jobs/{id}/cancel", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut expected: Vec<(i64, &str)> = ok.iter().map(|id| (*id, "job.succeeded")).collect();
    expected.push((bad, "job.failed"));
    expected.push((running, "job.cancelled"));
    expected.push((queued, "job.cancelled"));
    rx.wait_for("a notice for every final state", secs(30), |rx| {
        expected
            .iter()
            .all(|(id, event)| accepted_event(rx, *id, event).is_some())
    })
    .await;
    for id in &quiet {
        wait_state(app.addr, *id, "succeeded", secs(10)).await;
    }
    wait_outbox_empty(backend, &dir, &db, secs(10)).await;

    assert_one_id_per_event(&rx);
    let all = rx.all();
    assert!(
        all.iter().all(|r| r.json["task"] != "quiet"),
        "a task without notify_url got a notice:\n{}",
        rx.dump()
    );
    assert_eq!(
        ids_by_event(&all).len(),
        expected.len(),
        "one event per final state, no more (a retried failure is not final):\n{}",
        rx.dump()
    );
    // The two refused deliveries came again with the same id and body, as the next try.
    let refused: Vec<&Received> = all.iter().filter(|r| !r.accepted).collect();
    assert_eq!(refused.len(), 2, "{}", rx.dump());
    for r in &refused {
        let again = all
            .iter()
            .find(|a| a.accepted && a.id() == r.id())
            .unwrap_or_else(|| panic!("refused notice {} never delivered", r.id()));
        let tries = 1 + refused.iter().filter(|f| f.id() == r.id()).count();
        assert_eq!(
            again.header("shiftd-delivery-attempt"),
            Some(tries.to_string().as_str())
        );
        assert_eq!(again.body, r.body, "a retry sends the same body");
    }
    for r in &all {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("shiftd-notice-id"), Some(r.id()));
        verify_signature(r, SECRET.as_bytes());
    }
    let failed = accepted_event(&rx, bad, "job.failed").unwrap().json;
    assert_eq!(failed["attempt"], 2, "{failed}");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert_eq!(failed["state"], "failed", "{failed}");
    let cancelled = accepted_event(&rx, queued, "job.cancelled").unwrap().json;
    assert_eq!(cancelled["attempt"], 0, "{cancelled}");
    let succeeded = accepted_event(&rx, ok[0], "job.succeeded").unwrap().json;
    assert_eq!(succeeded["task"], "ok");
    assert!(succeeded["finished_at"].is_string(), "{succeeded}");
    assert!(
        !app.stderr.contains(SECRET),
        "the secret appeared in the log"
    );
    let metrics = metrics_text(app.addr).await;
    assert_eq!(
        metric(
            &metrics,
            "shiftd_notices_total{task=\"ok\",state=\"delivered\"}"
        ),
        3,
        "{metrics}"
    );
    let retried: i64 = ["ok", "bad", "long"]
        .iter()
        .map(|t| {
            metric(
                &metrics,
                &format!("shiftd_notices_total{{task=\"{t}\",state=\"retried\"}}"),
            )
        })
        .sum();
    assert_eq!(retried, 2, "{metrics}");
    app.sigterm();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
}

async fn metrics_text(addr: SocketAddr) -> String {
    client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name{labels}`, 0 if absent.
fn metric(text: &str, sample: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn futures_join(addr: SocketAddr, task: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(start_job(addr, task).await);
    }
    ids
}

/// SIGKILL with a job running and a notice in flight: after the restart the crashed
/// attempt gets a `job.interrupted` notice (reason `lease_expired`, attempt 1), its rerun a
/// `job.succeeded` (attempt 2), and the notice whose POST died with the process is sent
/// again with the same id.
async fn notices_across_sigkill(backend: Backend) {
    let rx = Receiver::start().await;
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let url = rx.url();
    let b = b
        .set("jobs.lease", "2s")
        .set("notices.timeout", "1s")
        .toml(&task(
            "fragile",
            "if [ -e first-done ]; then exit 0; fi; touch first-done; i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
            &url,
            None,
            "",
        ))
        .toml(&task("quick", "exit 0", &url, None, ""))
        .toml(&format!("working_dir = \"{}\"", dir.path().display()));
    let app = b.start().await;
    rx.hang();
    let quick = start_job(app.addr, "quick").await;
    rx.wait_for("the quick job's notice in flight", secs(10), |rx| {
        rx.arrived() >= 1
    })
    .await;
    let in_flight = rx.arrivals()[0].clone();
    let fragile = start_job(app.addr, "fragile").await;
    wait_file(&dir.path().join("first-done"), secs(10)).await;
    app.signal(nix::sys::signal::Signal::SIGKILL);
    app.wait_exit(secs(5)).await;
    // The POST in flight died with its sender, unanswered: the notice must come again.
    rx.release();

    let again = app.builder_again().start().await;
    wait_state(again.addr, fragile, "succeeded", secs(20)).await;
    rx.wait_for("the interrupted and final notices", secs(30), |rx| {
        accepted_event(rx, fragile, "job.interrupted").is_some()
            && accepted_event(rx, fragile, "job.succeeded").is_some()
            && accepted_event(rx, quick, "job.succeeded").is_some()
    })
    .await;
    // Sent again after the crash with the id it had in flight.
    assert_eq!(
        accepted_event(&rx, quick, "job.succeeded").unwrap().id(),
        in_flight
    );
    assert!(
        rx.arrivals().iter().filter(|id| **id == in_flight).count() >= 2,
        "{:?}",
        rx.arrivals()
    );
    wait_outbox_empty(backend, &dir, &db, secs(15)).await;
    assert_one_id_per_event(&rx);
    let interrupted = accepted_event(&rx, fragile, "job.interrupted")
        .unwrap()
        .json;
    assert_eq!(interrupted["reason"], "lease_expired", "{interrupted}");
    assert_eq!(interrupted["attempt"], 1, "{interrupted}");
    let done = accepted_event(&rx, fragile, "job.succeeded").unwrap().json;
    assert_eq!(done["attempt"], 2, "{done}");
    std::fs::write(dir.path().join("release"), "").unwrap();
    again.sigterm();
    assert_eq!(again.wait_exit(secs(10)).await, 0, "{}", again.dump());
}

/// Many jobs streaming through a SIGKILL: afterwards every job has exactly one
/// `job.succeeded` id, and one `job.interrupted` id for each attempt the kill cut (its
/// attempts less one), as the receiver counts them.
async fn every_job_gets_its_notices_across_sigkill(backend: Backend) {
    let rx = Receiver::start().await;
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    // A notice sent but not yet deleted at the kill is sent again after timeout + 5 s.
    let b = b.set("notices.timeout", "2s");
    let b = b.set("jobs.lease", "2s").set("jobs.workers", 4).toml(&task(
        "work",
        "sleep 0.3",
        &rx.url(),
        None,
        "concurrency = 4",
    ));
    let app = b.start().await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(start_job(app.addr, "work").await);
    }
    rx.wait_for("some notices before the kill", secs(30), |rx| {
        rx.accepted().len() >= 8
    })
    .await;
    app.signal(nix::sys::signal::Signal::SIGKILL);
    app.wait_exit(secs(5)).await;
    let before_kill = rx.accepted().len();

    let again = app.builder_again().start().await;
    rx.wait_for("a job.succeeded for each of 60 jobs", secs(90), |rx| {
        ids.iter()
            .all(|id| accepted_event(rx, *id, "job.succeeded").is_some())
    })
    .await;
    wait_outbox_empty(backend, &dir, &db, secs(15)).await;
    assert_one_id_per_event(&rx);
    let all = rx.accepted();
    let mut interrupted_jobs = 0;
    for id in &ids {
        let job = get_job(again.addr, *id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let attempts = job["attempts"].as_i64().unwrap();
        let interrupted: BTreeSet<&str> = all
            .iter()
            .filter(|r| r.job_id() == *id && r.event() == "job.interrupted")
            .map(|r| r.id())
            .collect();
        assert_eq!(
            interrupted.len() as i64,
            attempts - 1,
            "job {id}: {attempts} attempts, interrupted notices {interrupted:?}"
        );
        if attempts > 1 {
            interrupted_jobs += 1;
        }
    }
    assert!(
        interrupted_jobs > 0,
        "the kill interrupted no job: the test proved nothing"
    );
    eprintln!(
        "{backend:?}: {before_kill} notices before the kill; {interrupted_jobs} jobs interrupted by it; {} requests in all",
        rx.arrivals().len()
    );
    again.sigterm();
    assert_eq!(again.wait_exit(secs(10)).await, 0, "{}", again.dump());
}

/// A graceful stop with a `requeue` job running and a `finish` job ending during the drain:
/// the requeued attempt gets `job.interrupted` (reason `stop`), the rerun and the finishing
/// job their `job.succeeded`, delivered by the next process.
async fn notices_across_graceful_restart(backend: Backend) {
    let rx = Receiver::start().await;
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let url = rx.url();
    let b = b
        .toml(&task(
            "resumable",
            "if [ -e first-done ]; then exit 0; fi; touch first-done; sleep 60",
            &url,
            None,
            "on_shutdown = \"requeue\"\nkill_grace = \"2s\"",
        ))
        .toml(&task(
            "finishing",
            "touch finishing-started; i=0; while [ ! -e finish-now ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            &url,
            None,
            "on_shutdown = \"finish\"",
        ))
        .toml(&format!("working_dir = \"{}\"", dir.path().display()));
    let app = b.start().await;
    let resumable = start_job(app.addr, "resumable").await;
    let finishing = start_job(app.addr, "finishing").await;
    wait_file(&dir.path().join("first-done"), secs(10)).await;
    wait_file(&dir.path().join("finishing-started"), secs(10)).await;
    app.sigterm();
    app.stderr
        .wait_contains("stopped by the shutdown and requeued", secs(10))
        .await;
    std::fs::write(dir.path().join("finish-now"), "").unwrap();
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());

    let again = app.builder_again().start().await;
    wait_state(again.addr, resumable, "succeeded", secs(20)).await;
    rx.wait_for("interrupted and final notices", secs(20), |rx| {
        accepted_event(rx, resumable, "job.interrupted").is_some()
            && accepted_event(rx, resumable, "job.succeeded").is_some()
            && accepted_event(rx, finishing, "job.succeeded").is_some()
    })
    .await;
    wait_outbox_empty(backend, &dir, &db, secs(10)).await;
    assert_one_id_per_event(&rx);
    let interrupted = accepted_event(&rx, resumable, "job.interrupted")
        .unwrap()
        .json;
    assert_eq!(interrupted["reason"], "stop", "{interrupted}");
    assert_eq!(interrupted["attempt"], 1, "{interrupted}");
    assert_eq!(interrupted["state"], "queued", "{interrupted}");
    let done = accepted_event(&rx, resumable, "job.succeeded")
        .unwrap()
        .json;
    assert_eq!(done["attempt"], 1, "the requeue does not count: {done}");
    assert!(
        accepted_event(&rx, finishing, "job.interrupted").is_none(),
        "a job that finished in the drain was not interrupted:\n{}",
        rx.dump()
    );
    again.sigterm();
    assert_eq!(again.wait_exit(secs(10)).await, 0, "{}", again.dump());
}

/// A receiver that never answers (with `notices.timeout` far longer than the stop) does not
/// hold up a SIGTERM: the POST in flight is abandoned and its notice stays in the outbox.
async fn hanging_receiver_does_not_delay_the_stop(backend: Backend) {
    let rx = Receiver::start().await;
    rx.hang();
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let app = b
        .set("notices.timeout", "5m")
        .toml(&task("quick", "exit 0", &rx.url(), None, ""))
        .start()
        .await;
    start_job(app.addr, "quick").await;
    rx.wait_for("a notice in flight", secs(10), |rx| rx.arrived() >= 1)
        .await;
    // The outbox depth reaches /metrics (read every 10 s).
    let deadline = Instant::now() + secs(15);
    while metric(&metrics_text(app.addr).await, "shiftd_notices_pending ") != 1 {
        assert!(
            Instant::now() < deadline,
            "shiftd_notices_pending is not 1:\n{}",
            metrics_text(app.addr).await
        );
        tokio::time::sleep(millis(200)).await;
    }
    let stopping = Instant::now();
    app.sigterm();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    let took = stopping.elapsed();
    assert!(
        took < secs(2),
        "the stop waited for a hanging receiver: {took:?}"
    );
    assert_eq!(
        outbox(backend, &dir, &db).await,
        1,
        "the abandoned notice stays for the next process"
    );
    rx.release();
    eprintln!("{backend:?}: stop with a hanging receiver took {took:?}");
}

/// A reload that adds a `notify_url` makes the next job's end a notice; one that removes it
/// stops them (no outbox row is written at all).
async fn reload_turns_notices_on_and_off(backend: Backend) {
    let rx = Receiver::start().await;
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let app = b
        .toml("[tasks.quick]\ncommand = [\"/bin/true\"]\n")
        .start()
        .await;
    let before = start_job(app.addr, "quick").await;
    wait_state(app.addr, before, "succeeded", secs(10)).await;
    assert_eq!(outbox(backend, &dir, &db).await, 0);

    let plain = std::fs::read_to_string(&app.config_path).unwrap();
    let reload = |text: String, n: usize| {
        let app = &app;
        async move {
            app.rewrite_config(&text);
            app.signal(nix::sys::signal::Signal::SIGHUP);
            let deadline = Instant::now() + secs(10);
            loop {
                let count = app
                    .stderr
                    .all()
                    .iter()
                    .filter(|l| l.text.contains("configuration reloaded"))
                    .count();
                if count >= n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "reload {n} not done within 10s:\n{}",
                    app.dump()
                );
                tokio::time::sleep(millis(50)).await;
            }
        }
    };
    reload(format!("{plain}notify_url = \"{}\"\n", rx.url()), 1).await;
    let during = start_job(app.addr, "quick").await;
    rx.wait_for("the notice of the job after the reload", secs(10), |rx| {
        accepted_event(rx, during, "job.succeeded").is_some()
    })
    .await;

    reload(plain, 2).await;
    let after = start_job(app.addr, "quick").await;
    wait_state(app.addr, after, "succeeded", secs(10)).await;
    wait_outbox_empty(backend, &dir, &db, secs(10)).await;
    let jobs: BTreeSet<i64> = rx.all().iter().map(Received::job_id).collect();
    assert_eq!(jobs, BTreeSet::from([during]), "{}", rx.dump());
    app.sigterm();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
}

/// A receiver that always fails: the notice is tried `notices.max_attempts` times with one
/// id, then dropped with a warning naming the setting; with a short `notices.max_age` it is
/// dropped by age instead. Either way the outbox empties.
async fn undeliverable_notices_are_given_up(backend: Backend) {
    for (setting, attempts, max_age) in [
        ("notices.max_attempts", 3, "1h"),
        ("notices.max_age", 1000, "1s"),
    ] {
        let rx = Receiver::start().await;
        rx.fail_next(usize::MAX);
        let (b, db) = notice_builder(backend).await;
        let dir = b.workdir().clone();
        let app = b
            .set("notices.max_attempts", attempts)
            .set("notices.max_age", max_age)
            .toml(&task("quick", "exit 0", &rx.url(), None, ""))
            .start()
            .await;
        start_job(app.addr, "quick").await;
        let warning = app.stderr.wait_contains("notice given up", secs(20)).await;
        assert!(warning.text.contains(setting), "{}", warning.text);
        assert!(warning.text.contains("WARN"), "{}", warning.text);
        wait_outbox_empty(backend, &dir, &db, secs(5)).await;
        let arrivals = rx.arrivals();
        assert!(
            arrivals.iter().all(|id| *id == arrivals[0]),
            "one notice, one id: {arrivals:?}"
        );
        let metrics = metrics_text(app.addr).await;
        assert_eq!(
            metric(
                &metrics,
                "shiftd_notices_total{task=\"quick\",state=\"given_up\"}"
            ),
            1,
            "{metrics}"
        );
        if setting == "notices.max_attempts" {
            assert_eq!(arrivals.len(), 3, "{arrivals:?}");
        } else {
            assert!(arrivals.len() >= 2, "{arrivals:?}");
        }
        app.sigterm();
        assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    }
}

/// The successor a hand-over started (not our child): killed at the end whatever happens.
struct Successor(i32);

impl Successor {
    fn sigterm(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// Waits (polling with a deadline) until the process is gone.
    async fn wait_gone(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), None).is_ok() {
            assert!(
                Instant::now() < deadline,
                "pid {} still there after {timeout:?}",
                self.0
            );
            tokio::time::sleep(millis(50)).await;
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// An upgrade (`shiftd reload` hands over to a new process): the old process finishes its
/// running job, whose notice it writes but no longer sends (its deliverer ended with the
/// hand-over); the new process sends it, and those of its own jobs. Nothing is interrupted.
async fn notices_across_a_hand_over(backend: Backend) {
    let rx = Receiver::start().await;
    let (b, db) = notice_builder(backend).await;
    let dir = b.workdir().clone();
    let url = rx.url();
    let app = b
        .toml(&task(
            "held",
            "touch started; i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            &url,
            None,
            "",
        ))
        .toml(&task("quick", "exit 0", &url, None, ""))
        .toml(&format!("working_dir = \"{}\"", dir.path().display()))
        .start()
        .await;
    let held = start_job(app.addr, "held").await;
    wait_file(&dir.path().join("started"), secs(10)).await;

    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--timeout", "30s"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "shiftd reload: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        app.dump()
    );
    let handed = app
        .notify
        .wait_for("MAINPID=", secs(5), |d| d.has_key("MAINPID"))
        .await;
    let successor = Successor(handed.value("MAINPID").unwrap().parse().unwrap());

    let quick = start_job(app.addr, "quick").await;
    std::fs::write(dir.path().join("release"), "").unwrap();
    assert_eq!(app.wait_exit(secs(15)).await, 0, "{}", app.dump());
    rx.wait_for("both notices", secs(20), |rx| {
        accepted_event(rx, held, "job.succeeded").is_some()
            && accepted_event(rx, quick, "job.succeeded").is_some()
    })
    .await;
    wait_outbox_empty(backend, &dir, &db, secs(10)).await;
    assert_one_id_per_event(&rx);
    assert!(
        rx.all().iter().all(|r| r.event() != "job.interrupted"),
        "a hand-over interrupts nothing:\n{}",
        rx.dump()
    );
    let done = accepted_event(&rx, held, "job.succeeded").unwrap().json;
    assert_eq!(done["attempt"], 1, "{done}");
    successor.sigterm();
    successor.wait_gone(secs(10)).await;
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
    every_final_state_gets_one_notice,
    notices_across_sigkill,
    every_job_gets_its_notices_across_sigkill,
    notices_across_graceful_restart,
    hanging_receiver_does_not_delay_the_stop,
    reload_turns_notices_on_and_off,
    undeliverable_notices_are_given_up,
    notices_across_a_hand_over,
);

/// Two processes on one PostgreSQL database share the outbox: each job's notice gets one
/// id, and retries (the receiver refuses the first few) keep it, whichever node sends.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_the_outbox() {
    let rx = Receiver::start().await;
    rx.fail_next(5);
    let (b, db) = notice_builder(Backend::Postgres).await;
    let dir = b.workdir().clone();
    let b = b
        .set("jobs.workers", 4)
        .set("log.level", "info,shiftd::notices=debug")
        .toml(&task("mark", "exit 0", &rx.url(), None, "concurrency = 4"));
    let one = b.clone().start().await;
    let two = b
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let addr = if i % 2 == 0 { one.addr } else { two.addr };
        ids.push(start_job(addr, "mark").await);
    }
    rx.wait_for("a notice for each of 40 jobs", secs(60), |rx| {
        ids.iter()
            .all(|id| accepted_event(rx, *id, "job.succeeded").is_some())
    })
    .await;
    wait_outbox_empty(Backend::Postgres, &dir, &db, secs(10)).await;
    assert_one_id_per_event(&rx);
    assert_eq!(ids_by_event(&rx.all()).len(), 40, "{}", rx.dump());
    let delivered_by = |app: &Shiftd| {
        app.stderr
            .all()
            .iter()
            .filter(|l| l.text.contains("notice delivered"))
            .count()
    };
    eprintln!(
        "notices delivered: {} by one, {} by two; {} requests",
        delivered_by(&one),
        delivered_by(&two),
        rx.all().len()
    );
    for app in [&one, &two] {
        app.sigterm();
        assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
    }
}

/// Runs `shiftd ARGS` on a config text; returns (exit code, stdout + stderr).
fn run(dir: &Path, config: &str, args: &[&str]) -> (i32, String) {
    let path = dir.join("shiftd.toml");
    std::fs::write(&path, config).unwrap();
    let mut all = args.to_vec();
    let p = path.display().to_string();
    all.extend(["--config", p.as_str()]);
    let out = std::process::Command::new(BIN)
        .args(&all)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A missing, unreadable or empty secret file, a bad URL, or a secret file without a URL
/// refuse to start (exit 78) naming the key; `shiftd check` never shows the secret or the
/// URL's password.
#[test]
fn notice_settings_are_checked_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = "[shutdown]\ngrace = \"60s\"\n[tasks.t]\ncommand = [\"/bin/true\"]\n";
    let cases = [
        (
            format!("{base}notify_url = \"http://127.0.0.1:1/n\"\nnotify_secret_file = \"{}/missing\"\n", d.display()),
            "tasks.t.notify_secret_file",
        ),
        (
            format!("{base}notify_url = \"http://127.0.0.1:1/n\"\nnotify_secret_file = \"{}/empty\"\n", d.display()),
            "tasks.t.notify_secret_file",
        ),
        (
            format!("{base}notify_secret_file = \"{}/key\"\n", d.display()),
            "tasks.t.notify_secret_file",
        ),
        (format!("{base}notify_url = \"ftp://x/y\"\n"), "tasks.t.notify_url"),
        (format!("{base}notify_url = \"not a url\"\n"), "tasks.t.notify_url"),
        ("[notices]\nmax_attempts = 0\n".to_string(), "notices.max_attempts"),
        ("[notices]\nbackoff = \"10s\"\nbackoff_max = \"1s\"\n".to_string(), "notices.backoff_max"),
    ];
    std::fs::write(d.join("empty"), " \n").unwrap();
    std::fs::write(d.join("key"), format!("{SECRET}\n")).unwrap();
    for (config, key) in &cases {
        let (code, out) = run(d, config, &["serve"]);
        assert_eq!(code, 78, "{config}\n{out}");
        assert!(out.contains(&format!("`{key}`")), "{key} not named:\n{out}");
    }
    let good = format!(
        "{base}notify_url = \"https://hook:pa55word@monitor.example.org/n?token=t0psecret\"\nnotify_secret_file = \"{}/key\"\n",
        d.display()
    );
    let (code, out) = run(d, &good, &["check", "--skip-unit"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("notify_url"), "{out}");
    for hidden in [SECRET, "pa55word", "t0psecret"] {
        assert!(!out.contains(hidden), "`{hidden}` shown by check:\n{out}");
    }
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

/// A database blip (every connection killed) while notices are being sent and retried:
/// each job's notice still arrives, under one id.
#[tokio::test(flavor = "multi_thread")]
async fn notices_survive_a_database_blip() {
    let rx = Receiver::start().await;
    rx.fail_next(3);
    let (b, db) = notice_builder(Backend::Postgres).await;
    let dir = b.workdir().clone();
    let app = b
        // A delivery whose DELETE the blip cut is sent again after its lease (timeout + 5 s).
        .set("notices.timeout", "2s")
        .toml(&task(
            "quick",
            "sleep 0.1",
            &rx.url(),
            None,
            "concurrency = 2",
        ))
        .start()
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(start_job(app.addr, "quick").await);
    }
    rx.wait_for("the first notices", secs(20), |rx| rx.arrived() >= 2)
        .await;
    terminate_connections(&db.as_ref().unwrap().name).await;
    for _ in 0..10 {
        ids.push(start_job(app.addr, "quick").await);
    }
    rx.wait_for("a notice for each of 20 jobs", secs(60), |rx| {
        ids.iter()
            .all(|id| accepted_event(rx, *id, "job.succeeded").is_some())
    })
    .await;
    wait_outbox_empty(Backend::Postgres, &dir, &db, secs(20)).await;
    assert_one_id_per_event(&rx);
    app.sigterm();
    assert_eq!(app.wait_exit(secs(10)).await, 0, "{}", app.dump());
}
