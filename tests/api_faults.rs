//! The API against the hostile review (issue 9), on the real binary: idempotency keys
//! scoped by token and parameters, reads scoped by task, secrets kept out of `shiftd check`
//! and `/v1/status`, parameter rules that validate and serve alike, request bodies bounded
//! in size and time, a cheap `/metrics`, literal braces in argv, log paging, and reads that
//! survive PostgreSQL backends being terminated.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

const TOKEN_A: &str = "token-a-0123456789abcdef";
const TOKEN_B: &str = "token-b-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Starts a job as `token` (or without one) and returns the status and body.
async fn post_job(
    addr: SocketAddr,
    token: Option<&str>,
    task: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = client()
        .post(url(addr, &format!("/v1/tasks/{task}/jobs")))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GET as `token`: status and body text.
async fn get_as(addr: SocketAddr, token: Option<&str>, path: &str) -> (u16, String) {
    let mut request = client().get(url(addr, path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls the job (every 50 ms, up to `timeout`) until it reaches a final state.
async fn wait_final(addr: SocketAddr, token: Option<&str>, id: i64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, text) = get_as(addr, token, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{text}");
        let job: Value = serde_json::from_str(&text).unwrap();
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not end within {timeout:?}: {job}"
        );
        tokio::time::sleep(millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Finding 8: idempotency keys.
// ---------------------------------------------------------------------------------------

/// Finding 8a: the same Idempotency-Key with other parameters is refused (409, a conflict
/// with the stored job, which also lets a schema-driven client tell it from bad input) and names
/// the job the key belongs to; with the same parameters it still returns that job (200).
#[tokio::test]
async fn an_idempotency_key_reused_with_other_params_is_409() {
    let app = Shiftd::builder()
        .toml(
            r#"[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z]+" }"#,
        )
        .start()
        .await;
    let (status, first) = post_job(
        app.addr,
        None,
        "echo",
        Some("k"),
        json!({"params": {"who": "ann"}}),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_i64().unwrap();
    let (status, again) = post_job(
        app.addr,
        None,
        "echo",
        Some("k"),
        json!({"params": {"who": "ann"}}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id);
    let (status, refused) = post_job(
        app.addr,
        None,
        "echo",
        Some("k"),
        json!({"params": {"who": "bob"}}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "conflict");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("Idempotency-Key `k`")
            && message.contains(&format!("job {id}"))
            && message.contains("new key"),
        "{message}"
    );
}

/// Finding 8b: keys are scoped by token, so token B sending token A's key makes its own
/// job instead of receiving A's.
#[tokio::test]
async fn idempotency_keys_of_two_tokens_never_meet() {
    let app = Shiftd::builder()
        .toml(&format!(
            r#"[[auth.tokens]]
name = "a"
secret = "{TOKEN_A}"
tasks = ["*"]
[[auth.tokens]]
name = "b"
secret = "{TOKEN_B}"
tasks = ["*"]
[tasks.echo]
command = ["/bin/echo", "{{who}}"]
params = {{ who = "[a-z]+" }}"#
        ))
        .start()
        .await;
    let body = json!({"params": {"who": "ann"}});
    let (status, a) = post_job(
        app.addr,
        Some(TOKEN_A),
        "echo",
        Some("shared"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{a}");
    let (status, b) = post_job(
        app.addr,
        Some(TOKEN_B),
        "echo",
        Some("shared"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "token b gets its own job: {b}");
    assert_ne!(a["id"], b["id"]);
    let (status, a_again) = post_job(app.addr, Some(TOKEN_A), "echo", Some("shared"), body).await;
    assert_eq!(status, 200, "{a_again}");
    assert_eq!(a_again["id"], a["id"]);
}

// ---------------------------------------------------------------------------------------
// Finding 10: reads scoped by task.
// ---------------------------------------------------------------------------------------

/// Finding 10: a token allowed only task `a` cannot read, list, follow or cancel jobs of
/// task `b` (404 exactly as for a missing job), nor see task `b` in `GET /v1/tasks`.
#[tokio::test]
async fn a_token_reads_only_jobs_of_its_own_tasks() {
    let app = Shiftd::builder()
        .toml(&format!(
            r#"[[auth.tokens]]
name = "a"
secret = "{TOKEN_A}"
tasks = ["a"]
[[auth.tokens]]
name = "b"
secret = "{TOKEN_B}"
tasks = ["b"]
[tasks.a]
command = ["/bin/true"]
[tasks.b]
command = ["/bin/sh", "-c", "echo private output"]"#
        ))
        .start()
        .await;
    let addr = app.addr;
    let (status, own) = post_job(addr, Some(TOKEN_A), "a", None, json!({})).await;
    assert_eq!(status, 202, "{own}");
    let (status, other) = post_job(addr, Some(TOKEN_B), "b", None, json!({})).await;
    assert_eq!(status, 202, "{other}");
    let b_id = other["id"].as_i64().unwrap();
    wait_final(addr, Some(TOKEN_B), b_id, secs(10)).await;

    let missing = 99_999_999;
    let (status, text) = get_as(addr, Some(TOKEN_A), &format!("/v1/jobs/{missing}")).await;
    assert_eq!(status, 404, "{text}");
    let missing_message = serde_json::from_str::<Value>(&text).unwrap()["message"]
        .as_str()
        .unwrap()
        .replace(&missing.to_string(), "ID");
    for path in [format!("/v1/jobs/{b_id}"), format!("/v1/jobs/{b_id}/log")] {
        let (status, text) = get_as(addr, Some(TOKEN_A), &path).await;
        assert_eq!(status, 404, "GET {path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body["message"]
                .as_str()
                .unwrap()
                .replace(&b_id.to_string(), "ID"),
            missing_message,
            "the same answer as a missing job"
        );
        assert!(!text.contains("private output"), "{text}");
    }
    let r = client()
        .post(url(addr, &format!("/v1/jobs/{b_id}/cancel")))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    for path in ["/v1/jobs?task=b", "/v1/jobs"] {
        let (status, text) = get_as(addr, Some(TOKEN_A), path).await;
        assert_eq!(status, 200, "{text}");
        let page: Value = serde_json::from_str(&text).unwrap();
        let tasks: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["task"].as_str().unwrap())
            .collect();
        assert!(tasks.iter().all(|t| *t == "a"), "GET {path}: {page}");
    }
    let (_, text) = get_as(addr, Some(TOKEN_A), "/v1/tasks").await;
    let names: Vec<String> = serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["a"], "{text}");

    // The owner still reads its job.
    let (status, text) = get_as(addr, Some(TOKEN_B), &format!("/v1/jobs/{b_id}/log")).await;
    assert_eq!(status, 200);
    assert!(text.contains("private output"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Finding 11: secrets.
// ---------------------------------------------------------------------------------------

/// Finding 11: `shiftd check` (whose output operators paste and post-install-check shows) prints
/// no database password, password query parameter or task environment value.
#[tokio::test]
async fn check_prints_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shiftd.toml");
    std::fs::write(
        &path,
        r#"[database]
url = "postgres://u:hunter2hunter2@h/db?password=s3cr3tpw"
[tasks.t]
command = ["/bin/true"]
env = { API_KEY = "topsecretvalue" }
[[auth.tokens]]
name = "ci"
secret = "tokensecret0123456789"
tasks = ["t"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .arg("--skip-unit")
        .env_clear()
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    for secret in [
        "hunter2hunter2",
        "s3cr3tpw",
        "topsecretvalue",
        "tokensecret0123456789",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert!(
        printed.contains("API_KEY"),
        "env keys are shown:\n{printed}"
    );
    assert!(
        printed.contains("postgres://u:<redacted>@h/db"),
        "{printed}"
    );
}

/// Finding 11: the unauthenticated `/v1/status` (and the log) show the database without
/// the password of its URL or of its `?password=` parameter.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_log_show_no_database_password() {
    let db = TestDatabase::create().await;
    // The server trusts local connections, so the password is accepted and ignored.
    let with_secrets = db.url.replacen(
        "postgres://postgres@",
        "postgres://postgres:hunter2hunter2@",
        1,
    ) + "?password=s3cr3tpw";
    assert!(with_secrets.contains("hunter2hunter2"), "{with_secrets}");
    let app = Shiftd::builder()
        .set("database.url", with_secrets)
        .start()
        .await;
    let (status, text) = get_as(app.addr, None, "/v1/status").await;
    assert_eq!(status, 200, "{text}");
    for secret in ["hunter2hunter2", "s3cr3tpw"] {
        assert!(!text.contains(secret), "{secret} in /v1/status: {text}");
        assert!(
            !app.stderr.contains(secret),
            "{secret} logged:\n{}",
            app.stderr.dump()
        );
    }
    assert!(
        text.contains(&db.name),
        "the location is still shown: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 12: parameter rules.
// ---------------------------------------------------------------------------------------

const VERBOSE_RULE_TASK: &str = r##"[tasks.t]
command = ["/bin/echo", "{name}"]
params = { name = "(?x)[a-z]+ # comment" }"##;

async fn post_name(addr: SocketAddr, name: &str) -> u16 {
    post_job(addr, None, "t", None, json!({"params": {"name": name}}))
        .await
        .0
}

/// Finding 12: a verbose-mode rule with a comment passes `check` and serves (it used to
/// panic the process at startup), anchored: `abc` is accepted, `ABC` refused.
#[tokio::test]
async fn a_verbose_rule_with_a_comment_serves() {
    let app = Shiftd::builder().toml(VERBOSE_RULE_TASK).start().await;
    assert_eq!(post_name(app.addr, "abc").await, 202);
    assert_eq!(post_name(app.addr, "ABC").await, 422);
    assert_eq!(post_name(app.addr, "abc def").await, 422);
}

/// Finding 12: a reload to the verbose rule (which used to kill the service) applies it,
/// and a reload with an invalid rule is refused while the process serves on unchanged.
#[tokio::test]
async fn reloads_with_new_rules_never_kill_the_service() {
    let plain = r#"[tasks.t]
command = ["/bin/echo", "{name}"]
params = { name = "[0-9]+" }"#;
    let app = Shiftd::builder().toml(plain).start().await;
    assert_eq!(post_name(app.addr, "123").await, 202);
    let head = format!("[http]\nlisten = \"{}\"\n", app.addr);

    app.rewrite_config(&format!("{head}{VERBOSE_RULE_TASK}\n"));
    app.signal(nix::sys::signal::Signal::SIGHUP);
    app.stderr
        .wait_contains("configuration reloaded", secs(10))
        .await;
    assert_eq!(post_name(app.addr, "abc").await, 202);
    assert_eq!(post_name(app.addr, "ABC").await, 422);

    app.rewrite_config(&format!(
        "{head}[tasks.t]\ncommand = [\"/bin/echo\", \"{{name}}\"]\nparams = {{ name = \"[a-\" }}\n"
    ));
    app.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = app.stderr.wait_contains("reload rejected", secs(10)).await;
    assert!(
        refused.text.contains("tasks.t.params.name"),
        "{}",
        refused.text
    );
    assert_eq!(app.exit_code(), None, "still running");
    assert_eq!(
        post_name(app.addr, "abc").await,
        202,
        "the previous rule holds"
    );
    assert_eq!(post_name(app.addr, "ABC").await, 422);
}

// ---------------------------------------------------------------------------------------
// Finding 14: request bodies.
// ---------------------------------------------------------------------------------------

const NOOP_TASK: &str = r#"[tasks.noop]
command = ["/bin/true"]"#;

/// Finding 14: a declared Content-Length over `http.body_limit` is answered 413 at once
/// (not after `http.request_timeout`), and the connection is closed.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_at_once() {
    let app = Shiftd::builder()
        .set("http.body_limit", "1KiB")
        .toml(NOOP_TASK)
        .start()
        .await;
    let mut conn = connect(app.addr).await.unwrap();
    send(
        &mut conn,
        "POST /v1/tasks/noop/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    let response = read_response(&mut conn, secs(3)).await.unwrap();
    assert_eq!(response.status, 413, "{}", response.body_text());
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http.body_limit"),
        "{body}"
    );
    assert!(response.closes(), "{:?}", response.headers);
    wait_closed(&mut conn, secs(3)).await.unwrap();
}

/// Finding 14: a body that stalls is answered 408 after `http.body_read_timeout` (not 503
/// after `http.request_timeout`), and the connection is closed.
#[tokio::test]
async fn a_stalled_body_is_408_after_body_read_timeout() {
    let app = Shiftd::builder()
        .set("http.body_read_timeout", "500ms")
        .toml(NOOP_TASK)
        .start()
        .await;
    let mut conn = connect(app.addr).await.unwrap();
    let started = Instant::now();
    send(
        &mut conn,
        "POST /v1/tasks/noop/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"params\":",
    )
    .await
    .unwrap();
    let response = read_response(&mut conn, secs(5)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status, 408, "{}", response.body_text());
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http.body_read_timeout"),
        "{body}"
    );
    assert!(response.closes(), "{:?}", response.headers);
    assert!(took >= millis(400) && took < secs(4), "{took:?}");

    // A complete body on a new connection still works.
    let (status, job) = post_job(app.addr, None, "noop", None, json!({})).await;
    assert_eq!(status, 202, "{job}");
}

// ---------------------------------------------------------------------------------------
// Finding 15: /metrics.
// ---------------------------------------------------------------------------------------

/// True for a log line of the statement that counts every job by task and state (not the
/// runner's count of active jobs, which has a WHERE).
fn is_count_statement(line: &str) -> bool {
    line.contains("FROM jobs GROUP BY task, state")
}

/// Finding 15: 20 concurrent scrapes make at most one `GROUP BY` over the jobs (sqlx logs
/// each statement at debug).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_scrapes_share_one_count() {
    let app = Shiftd::builder()
        .set("log.level", "sqlx=debug,info")
        .toml(NOOP_TASK)
        .start()
        .await;
    let before = app
        .stderr
        .all()
        .iter()
        .filter(|l| is_count_statement(&l.text))
        .count();
    let scrapes: Vec<_> = (0..20)
        .map(|_| {
            let addr = app.addr;
            tokio::spawn(async move { get_as(addr, None, "/metrics").await })
        })
        .collect();
    for scrape in scrapes {
        let (status, text) = scrape.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("shiftd_http_requests"), "{text}");
    }
    // A marker: once the line of a job started after the scrapes is read, every line the
    // scrapes wrote has been read too (one pipe, in order).
    let (status, job) = post_job(app.addr, None, "noop", None, json!({})).await;
    assert_eq!(status, 202, "{job}");
    app.stderr
        .wait_for("the marker job's line", secs(10), |l| {
            l.text.contains("job queued") && l.text.contains(&format!("job={}", job["id"]))
        })
        .await;
    let counts = app
        .stderr
        .all()
        .iter()
        .filter(|l| is_count_statement(&l.text))
        .count()
        - before;
    assert!(
        counts <= 1,
        "{counts} GROUP BY statements for 20 scrapes:\n{}",
        app.stderr.dump()
    );
}

// ---------------------------------------------------------------------------------------
// Finding 16: braces in argv.
// ---------------------------------------------------------------------------------------

/// Finding 16: braces inside an argument are literal (a shell snippet is a task), and a
/// whole argument `{{name}}` is passed as the literal `{name}`.
#[tokio::test]
async fn braces_in_arguments_run_as_written() {
    let app = Shiftd::builder()
        .set("jobs.poll_interval", "100ms")
        .set("jobs.log_flush_interval", "100ms")
        .toml(
            r#"[tasks.sh]
command = ["/bin/sh", "-c", "echo ${HOME} {x} \"$0\"", "{{name}}"]
env = { HOME = "/home-of-the-test" }"#,
        )
        .start()
        .await;
    let (status, job) = post_job(app.addr, None, "sh", None, json!({})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_i64().unwrap();
    let job = wait_final(app.addr, None, id, secs(10)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, log) = get_as(app.addr, None, &format!("/v1/jobs/{id}/log")).await;
    assert!(
        log.lines().any(|l| l == "/home-of-the-test {x} {name}"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// Log paging (finding 5, HTTP part).
// ---------------------------------------------------------------------------------------

/// A finished job that printed `1`..=`2500`, one per line.
async fn long_log_job() -> (Shiftd, i64) {
    let app = Shiftd::builder()
        .set("jobs.poll_interval", "100ms")
        .set("jobs.log_flush_interval", "100ms")
        .toml(
            r#"[tasks.long]
command = ["/bin/sh", "-c", "seq 1 2500"]"#,
        )
        .start()
        .await;
    let (status, job) = post_job(app.addr, None, "long", None, json!({})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_i64().unwrap();
    let job = wait_final(app.addr, None, id, secs(20)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    (app, id)
}

fn numbers(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.parse().ok()).collect()
}

/// Log paging: `?after=SEQ&limit=N` gives pages of at most N lines, each full page with a
/// `Link: <...>; rel="next"` header, the last page without; together they are the log.
#[tokio::test]
async fn the_log_pages_with_link_headers() {
    let (app, id) = long_log_job().await;
    let (_, whole) = get_as(app.addr, None, &format!("/v1/jobs/{id}/log")).await;
    let mut next = Some(format!("/v1/jobs/{id}/log?after=0&limit=1000"));
    let mut pages = Vec::new();
    while let Some(path) = next.take() {
        assert!(pages.len() < 10, "the pages never end: {pages:?}");
        let r = client().get(url(app.addr, &path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        next = r.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with(">; rel=\"next\""), "{link}");
            assert!(link.contains("&limit=1000"), "{link}");
            link.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_string()
        });
        let text = r.text().await.unwrap();
        let lines = text.lines().count();
        assert!(lines <= 1000, "{path}: {lines} lines");
        if next.is_some() {
            assert_eq!(lines, 1000, "{path}: a page with a next link is full");
        }
        pages.push(text);
    }
    assert!(
        pages.len() >= 3,
        "2500 lines and more make 3 pages: {}",
        pages.len()
    );
    assert_eq!(
        pages.concat(),
        whole,
        "the pages together are the whole log"
    );
    assert_eq!(numbers(&whole), (1..=2500).collect::<Vec<_>>());

    for bad in ["limit=0", "limit=10001", "limit=x", "after=-1"] {
        let (status, text) = get_as(app.addr, None, &format!("/v1/jobs/{id}/log?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
}

/// Log paging: without `limit` the whole log streams (chunked, read from the database a
/// page at a time) instead of being built in memory first.
#[tokio::test]
async fn the_whole_log_streams() {
    let (app, id) = long_log_job().await;
    let mut conn = connect(app.addr).await.unwrap();
    send(
        &mut conn,
        &format!("GET /v1/jobs/{id}/log HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .unwrap();
    let response = read_response(&mut conn, secs(10)).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "{:?}",
        response.headers
    );
    assert_eq!(response.header("content-length"), None);
    assert_eq!(
        numbers(&response.body_text()),
        (1..=2500).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// Finding 13: database faults.
// ---------------------------------------------------------------------------------------

/// Finding 13: while every backend of the database is terminated every few milliseconds,
/// 200 requests (read a job, list, start with an Idempotency-Key) are each answered 2xx
/// or 503, never 500; reads are retried once on a lost connection.
#[tokio::test(flavor = "multi_thread")]
async fn terminated_backends_never_give_500() {
    let db = TestDatabase::create().await;
    let app = Shiftd::builder()
        .set("database.url", db.url.clone())
        .toml(NOOP_TASK)
        .start()
        .await;
    let addr = app.addr;
    let (status, job) = post_job(addr, None, "noop", None, json!({})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_i64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let name = db.name.clone();
        tokio::spawn(async move {
            use sqlx::Connection;
            let admin_url =
                std::env::var("PG_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_TEST_URL.into());
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            let mut killed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let rows = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                    .bind(&name)
                    .fetch_all(&mut admin)
                    .await
                    .unwrap();
                killed += rows.len();
                tokio::time::sleep(millis(3)).await;
            }
            killed
        })
    };

    let requests: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let c = client();
                let r = match i % 3 {
                    0 => c.get(url(addr, &format!("/v1/jobs/{id}"))).send().await,
                    1 => c.get(url(addr, "/v1/jobs?limit=5")).send().await,
                    _ => {
                        c.post(url(addr, "/v1/tasks/noop/jobs"))
                            .header("idempotency-key", format!("key-{}", i % 10))
                            .json(&json!({}))
                            .send()
                            .await
                    }
                };
                let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
                let status = r.status().as_u16();
                (i, status, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "no backend was terminated: the test proved nothing"
    );
    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| !((200..300).contains(status) || *status == 503))
        .collect();
    let unavailable = answers.iter().filter(|(_, s, _)| *s == 503).count();
    assert!(
        bad.is_empty(),
        "{} of 200 answers were neither 2xx nor 503 ({unavailable} were 503, {killed} backends killed): {bad:#?}",
        bad.len()
    );
    eprintln!("{unavailable} of 200 answers were 503; {killed} backends killed");
}
