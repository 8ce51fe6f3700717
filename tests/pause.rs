//! Pause and resume a task (`POST /v1/tasks/{task}/pause|resume`) on the real binary, on
//! SQLite and on PostgreSQL with two processes sharing the database: a paused task's queued
//! jobs are claimed by no process, across a SIGKILL and a graceful restart; running jobs go
//! on; STATUS=, /v1/status, /v1/tasks and /metrics say so; a resume runs the jobs.
//!
//! "Not claimed" is shown by an event, not by waiting: jobs of another task queued *after*
//! the paused ones run to the end; claims take the oldest runnable job first, so a claim
//! that could take the paused jobs would have taken them before those.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const TASKS: &str = r#"
[tasks.held]
command = ["/bin/echo", "held"]
concurrency = 4

[tasks.gate]
command = ["/bin/sh", "-c", "while [ ! -e \"$0\" ]; do sleep 0.02; done", "{file}"]
params = { file = "/[a-zA-Z0-9/._-]+" }

[tasks.other]
command = ["/bin/echo", "other"]
concurrency = 4
"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let request = match method {
        "GET" => client().get(url),
        _ => client().post(url).json(&body.unwrap_or(json!({}))),
    };
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn start_job(addr: SocketAddr, task: &str, params: Value) -> i64 {
    let (status, body) = call(
        addr,
        "POST",
        &format!("/v1/tasks/{task}/jobs"),
        Some(json!({ "params": params })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_i64().unwrap()
}

async fn job(addr: SocketAddr, id: i64) -> Value {
    let (status, body) = call(addr, "GET", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the job (every 20 ms) until it is in `state`; fails the test after 30 s.
async fn wait_state(addr: SocketAddr, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + secs(30);
    loop {
        let j = job(addr, id).await;
        if j["state"] == state {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {state}: {j}"
        );
        tokio::time::sleep(millis(20)).await;
    }
}

/// Polls `GET path` until `pred` holds; fails the test after 30 s.
async fn wait_until(addr: SocketAddr, path: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + secs(30);
    loop {
        let (_, body) = call(addr, "GET", path, None).await;
        if pred(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {path} said {body}");
        tokio::time::sleep(millis(20)).await;
    }
}

fn task_paused(tasks: &Value, name: &str) -> Option<bool> {
    tasks
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)?
        .get("paused")?
        .as_bool()
}

/// Runs jobs of `other` through `addrs` (one per process, queued after everything before)
/// and waits until they succeeded: every process's claim loop has looked at the queue since.
async fn run_others(addrs: &[SocketAddr]) {
    let mut ids = Vec::new();
    for addr in addrs {
        for _ in 0..4 {
            ids.push((*addr, start_job(*addr, "other", json!({})).await));
        }
    }
    for (addr, id) in ids {
        wait_state(addr, id, "succeeded").await;
    }
}

async fn assert_still_queued(addr: SocketAddr, ids: &[i64]) {
    for id in ids {
        let j = job(addr, *id).await;
        assert_eq!(j["state"], "queued", "a paused task's job was claimed: {j}");
        assert_eq!(j["attempts"], 0, "{j}");
    }
}

async fn pause_is_honoured_everywhere_and_across_restarts(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let b = b.toml(TASKS);
    let a = b.clone().start().await;
    // A second process on the same PostgreSQL database (SQLite: one process, restarted).
    let second = match &_db {
        Some(db) => Some(
            Shiftd::builder()
                .set("jobs.poll_interval", "100ms")
                .set("database.url", db.url.clone())
                .toml(TASKS)
                .start()
                .await,
        ),
        None => None,
    };
    let mut addrs = vec![a.addr];
    addrs.extend(second.as_ref().map(|s| s.addr));

    // A job of the task is running when the pause comes: it goes on.
    let gate_file = a.workdir().path().join("open");
    let gate = start_job(
        a.addr,
        "gate",
        json!({ "file": gate_file.display().to_string() }),
    )
    .await;
    wait_state(a.addr, gate, "running").await;

    for task in ["held", "gate"] {
        let (status, body) = call(a.addr, "POST", &format!("/v1/tasks/{task}/pause"), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["paused"], true, "{body}");
        assert!(body["paused_at"].is_string(), "{body}");
    }
    // Pausing twice keeps the first time.
    let (_, first) = call(a.addr, "GET", "/v1/status", None).await;
    let (_, again) = call(a.addr, "POST", "/v1/tasks/held/pause", None).await;
    assert_eq!(
        first["paused"]["held"], again["paused_at"],
        "{first} {again}"
    );

    // Queued on every node; none is claimed while the others' jobs run.
    let mut held = Vec::new();
    for addr in &addrs {
        for _ in 0..3 {
            held.push(start_job(*addr, "held", json!({})).await);
        }
    }
    run_others(&addrs).await;
    assert_still_queued(a.addr, &held).await;

    // The running job went on and ends normally.
    std::fs::write(&gate_file, b"").unwrap();
    let g = wait_state(a.addr, gate, "succeeded").await;
    assert_eq!(g["attempts"], 1, "{g}");

    // Every node says so: /v1/tasks at once, /v1/status and /metrics within a poll.
    for addr in &addrs {
        let (_, tasks) = call(*addr, "GET", "/v1/tasks", None).await;
        assert_eq!(task_paused(&tasks, "held"), Some(true), "{tasks}");
        assert_eq!(task_paused(&tasks, "other"), Some(false), "{tasks}");
        wait_until(*addr, "/v1/status", "status lists the pause", |s| {
            s["paused"]["held"].is_string()
        })
        .await;
        let metrics = client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("shiftd_task_paused{task=\"held\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("shiftd_task_paused{task=\"other\"} 0"),
            "{metrics}"
        );
    }
    a.notify
        .wait_for("STATUS= names the paused task", secs(10), |d| {
            d.value("STATUS")
                .is_some_and(|s| s.contains("paused: gate, held"))
        })
        .await;

    // A SIGKILL and a graceful restart: the pause is in the database, not in a process.
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait_exit(secs(10)).await;
    let a = a.builder_again().start().await;
    run_others(&[a.addr]).await;
    assert_still_queued(a.addr, &held).await;
    a.sigterm();
    assert_eq!(a.wait_exit(secs(30)).await, 0, "{}", a.dump());
    let a = a.builder_again().start().await;
    let (_, tasks) = call(a.addr, "GET", "/v1/tasks", None).await;
    assert_eq!(task_paused(&tasks, "held"), Some(true), "{tasks}");
    run_others(&[a.addr]).await;
    assert_still_queued(a.addr, &held).await;

    // Resume, from the other node where there is one: every job runs once.
    let resumer = second.as_ref().map(|s| s.addr).unwrap_or(a.addr);
    let (status, body) = call(resumer, "POST", "/v1/tasks/held/resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], false, "{body}");
    assert!(body["paused_at"].is_null(), "{body}");
    for id in &held {
        let j = wait_state(a.addr, *id, "succeeded").await;
        assert_eq!(j["attempts"], 1, "{j}");
    }
    let (_, tasks) = call(a.addr, "GET", "/v1/tasks", None).await;
    assert_eq!(task_paused(&tasks, "held"), Some(false), "{tasks}");
    assert_eq!(task_paused(&tasks, "gate"), Some(true), "{tasks}");
    // Resuming a task that is not paused changes nothing.
    let (status, body) = call(a.addr, "POST", "/v1/tasks/held/resume", None).await;
    assert_eq!(
        (status, body["paused"].clone()),
        (200, json!(false)),
        "{body}"
    );
}

mod sqlite {
    use super::*;
    #[tokio::test(flavor = "multi_thread")]
    async fn pause_is_honoured_everywhere_and_across_restarts() {
        super::pause_is_honoured_everywhere_and_across_restarts(Backend::Sqlite).await;
    }
}

mod postgres {
    use super::*;
    #[tokio::test(flavor = "multi_thread")]
    async fn pause_is_honoured_everywhere_and_across_restarts() {
        super::pause_is_honoured_everywhere_and_across_restarts(Backend::Postgres).await;
    }
}

/// Unknown tasks are 404, a token may pause only the tasks it may use (403), no token 401.
#[tokio::test]
async fn pause_needs_a_task_the_token_may_use() {
    let app = Shiftd::builder()
        .toml(
            r#"
[[auth.tokens]]
name = "a"
secret = "token-a-0123456789abcdef"
tasks = ["one"]

[tasks.one]
command = ["/bin/true"]

[tasks.two]
command = ["/bin/true"]
"#,
        )
        .start()
        .await;
    let post = |path: &str, token: Option<&str>| {
        let mut r = client().post(format!("http://{}{path}", app.addr));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let token = Some("token-a-0123456789abcdef");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(post("/v1/tasks/one/pause", None).await.unwrap()),
        401
    );
    assert_eq!(
        status(post("/v1/tasks/two/pause", token).await.unwrap()),
        403
    );
    assert_eq!(
        status(post("/v1/tasks/nope/pause", token).await.unwrap()),
        404
    );
    assert_eq!(
        status(post("/v1/tasks/nope/resume", token).await.unwrap()),
        404
    );
    let r = post("/v1/tasks/one/pause", token).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], Value::Null, "{body}");
    assert_eq!(body["message"], Value::Null, "{body}");
    assert_eq!(
        status(post("/v1/tasks/one/resume", token).await.unwrap()),
        200
    );
}

/// A follow stream of a job that will not end soon (its task is paused) ends cleanly at
/// `http.follow_max`, so no client waits without end; `limit` ends it after that many lines.
#[tokio::test]
async fn a_follow_stream_ends_at_follow_max_and_after_limit_lines() {
    let app = Shiftd::builder()
        .set("jobs.poll_interval", "100ms")
        .set("jobs.log_flush_interval", "100ms")
        .set("http.follow_max", "500ms")
        .toml(
            r#"
[tasks.held]
command = ["/bin/echo", "held"]

[tasks.lines]
command = ["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"]
"#,
        )
        .start()
        .await;
    let (status, _) = call(app.addr, "POST", "/v1/tasks/held/pause", None).await;
    assert_eq!(status, 200);
    let id = start_job(app.addr, "held", json!({})).await;
    let started = Instant::now();
    let r = client()
        .get(format!("http://{}/v1/jobs/{id}/log?follow=1", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.expect("the stream ends cleanly");
    assert_eq!(body, "");
    let took = started.elapsed();
    assert!(
        took >= millis(400) && took < secs(10),
        "ended after {took:?}"
    );

    let id = start_job(app.addr, "lines", json!({})).await;
    wait_state(app.addr, id, "succeeded").await;
    let body = client()
        .get(format!(
            "http://{}/v1/jobs/{id}/log?follow=1&limit=2",
            app.addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 2, "{body:?}");
}
