//! The dashboard (`/ui/`) on the real binary: login and its cookie, the headers of every
//! page, what a limited token sees and may do, CSRF, the read-only dashboard without
//! tokens, the log's event stream resuming after `Last-Event-ID` (also at the next process)
//! and ending at a stop, and that none of it is in the API's OpenAPI document.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const OPS: &str = "ops-secret-0123456789";
const LIMITED: &str = "limited-secret-0123456789";

const TASKS: &str = r#"
[[auth.tokens]]
name = "ops"
secret = "ops-secret-0123456789"
tasks = ["*"]

[[auth.tokens]]
name = "limited"
secret = "limited-secret-0123456789"
tasks = ["alpha"]

[tasks.alpha]
command = ["/bin/sh", "-c", "echo one; echo two; while [ ! -e \"$0\" ]; do sleep 0.02; done; echo three", "{file}"]
params = { file = "/[a-zA-Z0-9/._-]+" }
on_shutdown = "requeue"

[tasks.beta]
command = ["/bin/echo", "beta"]
"#;

const OPEN_TASKS: &str = r#"
[tasks.alpha]
command = ["/bin/echo", "alpha"]
"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(secs(15))
        .build()
        .unwrap()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Starts a job over the API (as `ops`) and returns its id.
async fn start_job(addr: SocketAddr, task: &str, params: Value) -> i64 {
    let r = client()
        .post(url(addr, &format!("/v1/tasks/{task}/jobs")))
        .bearer_auth(OPS)
        .json(&json!({ "params": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// Logs in with `token`; returns the `Set-Cookie` header and the cookie (`name=value`).
async fn login(addr: SocketAddr, token: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = client()
        .post(url(addr, "/ui/login"))
        .form(&[("token", token)]);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 303, "login with a good token redirects");
    assert_eq!(r.headers()["location"], "/ui/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    (set, cookie)
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url(addr, path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

async fn page(addr: SocketAddr, path: &str, cookie: Option<&str>) -> String {
    let r = get(addr, path, cookie).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.text().await.unwrap()
}

/// The CSRF token the page's forms carry.
fn csrf_of(html: &str) -> String {
    let start = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF field")
        + 19;
    html[start..start + 64].to_string()
}

async fn post(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client().post(url(addr, path)).form(form);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn login_sets_a_strict_cookie_and_every_page_a_strict_policy() {
    let app = Shiftd::builder()
        .toml(TASKS)
        .set("ui.session_ttl", "1h")
        .start()
        .await;
    let r = get(app.addr, "/ui/", None).await;
    assert_eq!(
        r.status(),
        303,
        "a page without a session goes to the login"
    );
    assert_eq!(r.headers()["location"], "/ui/login");

    let r = get(app.addr, "/ui/login", None).await;
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["referrer-policy"], "same-origin");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.text().await.unwrap().contains(r#"id="login""#));
    let r = get(app.addr, "/ui/no/such/page", None).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("content-security-policy"));
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");

    let r = post(
        app.addr,
        "/ui/login",
        None,
        &[("token", "not-a-token-at-all")],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let body = r.text().await.unwrap();
    assert!(body.contains(r#"id="login-error""#) && body.contains("that token is not valid"));
    assert!(!body.contains("not-a-token-at-all"));

    // A login form sent from another site would log this browser in as someone else.
    for header in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = client()
            .post(url(app.addr, "/ui/login"))
            .header(header.0, header.1)
            .form(&[("token", OPS)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{header:?}");
        assert!(r.headers().get("set-cookie").is_none(), "{header:?}");
        assert!(r.text().await.unwrap().contains("came from another site"));
    }
    let origin = format!("http://{}", app.addr);
    login(
        app.addr,
        OPS,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;

    let (set, cookie) = login(app.addr, OPS, &[]).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=3600"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(OPS), "the cookie holds no secret");
    let (set, _) = login(app.addr, OPS, &[("x-forwarded-proto", "https")]).await;
    assert!(set.contains("; Secure"), "behind a TLS proxy: {set}");

    let r = get(app.addr, "/ui/", Some(&cookie)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("content-security-policy"));
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"data-page="overview""#) && html.contains(r#"id="state""#));
    assert!(!html.contains(r#"id="readonly""#));
    let live = page(app.addr, "/ui/?partial=live", Some(&cookie)).await;
    assert!(
        live.contains(r#"id="state""#) && !live.contains("<html"),
        "{live}"
    );
    assert!(app.stderr.contains("dashboard login"));
    assert!(
        !app.stderr.dump().contains(OPS),
        "the secret is never logged"
    );

    let r = post(
        app.addr,
        "/ui/logout",
        Some(&cookie),
        &[("csrf", &csrf_of(&html))],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    // A tampered cookie is no session.
    let forged = cookie.replace("v1.ops.", "v1.limited.");
    assert_eq!(get(app.addr, "/ui/jobs", Some(&forged)).await.status(), 303);
}

/// What a token limited to `alpha` sees and may do: exactly what the API lets it.
async fn limited_token_sees_only_its_tasks(backend: Backend) {
    let (builder, _db) = builder(backend).await;
    let app = builder.toml(TASKS).start().await;
    let gate = app.workdir().path().join("gate");
    let alpha = start_job(app.addr, "alpha", json!({ "file": gate.to_str().unwrap() })).await;
    let beta = start_job(app.addr, "beta", json!({})).await;
    let (_, cookie) = login(app.addr, LIMITED, &[]).await;

    let jobs = page(app.addr, "/ui/jobs", Some(&cookie)).await;
    assert!(jobs.contains(&format!(r#"data-id="{alpha}""#)), "{jobs}");
    assert!(!jobs.contains(&format!(r#"data-id="{beta}""#)), "{jobs}");
    let rows = page(app.addr, "/ui/jobs?partial=rows", Some(&cookie)).await;
    assert!(
        rows.trim_start().starts_with("<tr") && rows.contains(&format!(r#"data-id="{alpha}""#))
    );
    assert!(!rows.contains(&format!(r#"data-id="{beta}""#)));
    assert_eq!(
        get(app.addr, &format!("/ui/jobs/{beta}"), Some(&cookie))
            .await
            .status(),
        404
    );
    assert_eq!(
        get(app.addr, &format!("/ui/jobs/{beta}/events"), Some(&cookie))
            .await
            .status(),
        404
    );
    let job = page(app.addr, &format!("/ui/jobs/{alpha}"), Some(&cookie)).await;
    assert!(job.contains(r#"id="job-task">alpha"#));

    let tasks = page(app.addr, "/ui/tasks", Some(&cookie)).await;
    assert!(tasks.contains(r#"data-task="alpha""#) && !tasks.contains(r#"data-task="beta""#));
    assert!(
        tasks.contains(r#"name="param.file""#) && tasks.contains("pattern="),
        "{tasks}"
    );
    let csrf = csrf_of(&tasks);
    let r = post(
        app.addr,
        "/ui/tasks/beta/pause",
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 403, "another task's action");
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let r = post(
        app.addr,
        "/ui/tasks/alpha/pause",
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(page(app.addr, "/ui/tasks", Some(&cookie))
        .await
        .contains(r#"class="resume""#));
    std::fs::write(&gate, "").unwrap();
}

#[tokio::test]
async fn a_limited_token_sees_only_its_tasks_sqlite() {
    limited_token_sees_only_its_tasks(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_limited_token_sees_only_its_tasks_postgres() {
    limited_token_sees_only_its_tasks(Backend::Postgres).await;
}

#[tokio::test]
async fn a_form_without_its_sessions_csrf_token_is_refused() {
    let app = Shiftd::builder().toml(TASKS).start().await;
    let (_, ops) = login(app.addr, OPS, &[]).await;
    let (_, limited) = login(app.addr, LIMITED, &[]).await;
    let other_csrf = csrf_of(&page(app.addr, "/ui/tasks", Some(&limited)).await);
    let csrf = csrf_of(&page(app.addr, "/ui/tasks", Some(&ops)).await);
    for form in [
        vec![],
        vec![("csrf", "0".repeat(64))],
        vec![("csrf", other_csrf)],
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(app.addr, "/ui/tasks/alpha/pause", Some(&ops), &form).await;
        assert_eq!(r.status(), 403, "{form:?}");
        let r = post(app.addr, "/ui/tasks/beta/start", Some(&ops), &form).await;
        assert_eq!(r.status(), 403, "{form:?}");
    }
    let r = post(app.addr, "/ui/tasks/alpha/pause", None, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 403, "no session");
    let tasks = client()
        .get(url(app.addr, "/v1/tasks"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    let tasks: Value = tasks.json().await.unwrap();
    assert!(
        tasks
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["paused"] == false),
        "{tasks}"
    );

    let r = post(
        app.addr,
        "/ui/tasks/beta/start",
        Some(&ops),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/ui/tasks?msg=job%20"), "{location}");
    let r = post(
        app.addr,
        "/ui/tasks/alpha/start",
        Some(&ops),
        &[("csrf", &csrf), ("param.file", "no spaces allowed")],
    )
    .await;
    assert_eq!(r.status(), 303, "a refused parameter is a flash message");
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.contains("does%20not%20match"), "{location}");
}

#[tokio::test]
async fn without_tokens_the_dashboard_is_read_only() {
    let app = Shiftd::builder().toml(OPEN_TASKS).start().await;
    let id = start_job(app.addr, "alpha", json!({})).await;
    for path in ["/ui/", "/ui/jobs", "/ui/tasks", &format!("/ui/jobs/{id}")] {
        let html = page(app.addr, path, None).await;
        assert!(html.contains(r#"id="readonly""#), "{path}");
        assert!(html.contains("read-only: no tokens are configured (auth.tokens)"));
        assert!(
            !html.contains("<form method=\"post\"") && !html.contains(r#"method="post""#),
            "{path}: {html}"
        );
    }
    for path in [
        "/ui/tasks/alpha/pause",
        "/ui/tasks/alpha/start",
        &format!("/ui/jobs/{id}/cancel"),
    ] {
        assert_eq!(
            post(app.addr, path, None, &[("csrf", "")]).await.status(),
            403,
            "{path}"
        );
    }
    assert_eq!(get(app.addr, "/ui/login", None).await.status(), 303);
}

#[tokio::test]
async fn the_dashboard_is_not_in_the_openapi_document() {
    let app = Shiftd::builder().toml(OPEN_TASKS).start().await;
    let doc: Value = client()
        .get(url(app.addr, "/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().any(|p| p.starts_with("/v1/")));
    assert!(
        paths.keys().all(|p| !p.starts_with("/ui")),
        "{:?}",
        paths.keys()
    );
}

/// One event of a stream: its name, id and data.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<i64>,
    data: String,
}

/// A Server-Sent Events response read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(addr: SocketAddr, path: &str, cookie: &str, last_id: Option<i64>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url(addr, path))
            .header("cookie", cookie);
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended; fails the test after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut e = SseEvent {
                    event: String::new(),
                    id: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data = v.to_string();
                    }
                }
                if !e.event.is_empty() {
                    return Some(e);
                }
                continue;
            }
            let chunk = tokio::time::timeout(timeout, self.response.chunk())
                .await
                .expect("no event in time")
                .expect("the stream broke off");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk?));
        }
    }

    /// Line events until one whose text is `text`; returns them all.
    async fn lines_until(&mut self, text: &str) -> Vec<(i64, String)> {
        let mut lines = Vec::new();
        loop {
            let e = self.next(secs(15)).await.expect("the stream ended early");
            if e.event == "line" {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(Some(v["seq"].as_i64().unwrap()), e.id);
                lines.push((
                    v["seq"].as_i64().unwrap(),
                    v["text"].as_str().unwrap().to_string(),
                ));
                if v["text"] == text {
                    return lines;
                }
            }
        }
    }
}

#[tokio::test]
async fn the_log_stream_resumes_after_the_last_line_and_ends_at_a_stop() {
    let app = Shiftd::builder()
        .toml(TASKS)
        .set("jobs.log_flush_interval", "50ms")
        .start()
        .await;
    let gate = app.workdir().path().join("gate");
    let id = start_job(app.addr, "alpha", json!({ "file": gate.to_str().unwrap() })).await;
    let (_, cookie) = login(app.addr, OPS, &[]).await;
    let path = format!("/ui/jobs/{id}/events");

    let mut first = Events::open(app.addr, &path, &cookie, None).await;
    let lines = first.lines_until("two").await;
    let one = lines.iter().find(|(_, t)| t == "one").expect("line one").0;
    // The browser resends the last id it saw: the stream goes on after it.
    let mut resumed = Events::open(app.addr, &path, &cookie, Some(one)).await;
    let lines = resumed.lines_until("two").await;
    assert_eq!(lines[0], (one + 1, "two".to_string()), "{lines:?}");
    let last = lines.last().unwrap().0;

    app.sigterm();
    for stream in [&mut first, &mut resumed] {
        while let Some(e) = stream.next(secs(5)).await {
            assert_ne!(
                e.event, "end",
                "a stop is no end of the job: the browser reconnects"
            );
        }
    }
    assert_eq!(app.wait_exit(secs(10)).await, 0);

    // The next process: the stream resumes after the last line shown.
    let next = app.builder_again().start().await;
    let mut again = Events::open(next.addr, &path, &cookie, Some(last)).await;
    std::fs::write(&gate, "").unwrap();
    let lines = again.lines_until("three").await;
    assert!(lines[0].0 == last + 1, "{lines:?} after {last}");
    loop {
        let e = again.next(secs(15)).await.expect("an end event");
        if e.event == "end" {
            assert_eq!(e.data, "succeeded");
            break;
        }
    }
    assert!(
        again.next(secs(5)).await.is_none(),
        "the stream ends after `end`"
    );
}
