//! `shiftd job …` and `shiftd task …`: an operator's client of the running service's HTTP
//! API. It reads JSON as plain values, so fields the server adds later pass through.
//!
//! Following a log resumes after the last line printed: the server numbers a job's output
//! lines 1, 2, 3… without gaps (a new attempt continues after the last stored line) and
//! streams only stored lines, so the count of complete lines printed is the `after` to
//! resume from.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::cli::{exit, ClientArgs, JobAction, TaskAction, WaitArgs};
use crate::config::Config;

/// What to do.
#[derive(Debug, Clone)]
pub enum Action {
    Job(JobAction),
    Task(TaskAction),
}

/// How long `systemctl show` may take to name the socket unit's address.
const SYSTEMCTL_DEADLINE: Duration = Duration::from_secs(2);
/// Backoff between reconnects and polls: from the first to the last value, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The most jobs one list request asks for (the API's bound).
const PAGE_MAX: u32 = 500;

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Worth trying again while following or waiting: the service is away or restarting.
    fn transient(&self) -> bool {
        self.code == exit::UNAVAILABLE
    }
}

/// Runs one client command and returns the exit code; errors go to stderr as one line.
pub fn run(config_path: Option<&Path>, args: &ClientArgs, action: Action) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shiftd: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let conn = Conn::new(config_path, args)?;
        match action {
            Action::Job(job) => job_command(&conn, job).await,
            Action::Task(task) => task_command(&conn, task).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(f) => {
            let _ = std::io::stdout().flush();
            if !f.message.is_empty() {
                eprintln!("shiftd: {}", f.message);
            }
            f.code
        }
    }
}

/// The connection to the service: where, how it was found, the token, the deadline.
struct Conn {
    base: reqwest::Url,
    /// Where the address came from, for "cannot connect" messages.
    origin: String,
    token: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
    json: bool,
}

impl Conn {
    fn new(config_path: Option<&Path>, args: &ClientArgs) -> Result<Self, Failure> {
        let (url, origin, local) = match &args.url {
            Some(url) => (url.clone(), "--url".to_string(), false),
            None => {
                let (url, origin) = local_address(config_path)?;
                (url, origin, true)
            }
        };
        let base = reqwest::Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                Failure::new(
                    exit::CONFIG,
                    format!("`{url}` (from {origin}) is not an http:// or https:// URL; pass --url http://HOST:PORT"),
                )
            })?;
        let token = match &args.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::new(
                        exit::CONFIG,
                        format!(
                            "cannot read the token file {}: {e}; check --token-file (or SHIFTD_TOKEN_FILE) and its permissions",
                            path.display()
                        ),
                    )
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(Failure::new(
                        exit::CONFIG,
                        format!(
                            "the token file {} is empty; write the token into it",
                            path.display()
                        ),
                    ));
                }
                Some(token)
            }
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(args.timeout)
            .user_agent(concat!("shiftd/", env!("CARGO_PKG_VERSION")));
        if local {
            // The local service: never through a proxy from the environment.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| {
            Failure::new(exit::FAILURE, format!("cannot set up the HTTP client: {e}"))
        })?;
        Ok(Self {
            base,
            origin,
            token,
            http,
            timeout: args.timeout,
            json: args.json,
        })
    }

    /// The URL of `segments` under the base (each segment escaped).
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and waits for the head of the answer within the deadline; an error
    /// status becomes a [`Failure`] with the API's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Err(
                    self.unreachable(&format!("no answer within {:?} (--timeout)", self.timeout))
                )
            }
            Ok(Err(e)) => return Err(self.unreachable(&describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = tokio::time::timeout(self.timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                let text: String = body.trim().chars().take(200).collect();
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                }
            });
        let code = match status.as_u16() {
            404 => exit::NOT_FOUND,
            503 => exit::UNAVAILABLE,
            400..=499 => exit::REFUSED,
            _ => exit::FAILURE,
        };
        Err(Failure::new(
            code,
            format!("{message} (HTTP {})", status.as_u16()),
        ))
    }

    /// GET/POST with a JSON answer.
    async fn call(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&Value>,
        query: &[(&str, String)],
    ) -> Result<Value, Failure> {
        let mut request = self.request(method, url).query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        let text = tokio::time::timeout(self.timeout, response.text())
            .await
            .map_err(|_| self.unreachable("the answer did not arrive within --timeout"))?
            .map_err(|e| self.unreachable(&describe(&e)))?;
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!(
                    "the service answered something that is not JSON ({e}); is {} a shiftd?",
                    self.base
                ),
            )
        })
    }

    fn unreachable(&self, why: &str) -> Failure {
        Failure::new(
            exit::UNAVAILABLE,
            format!(
                "cannot connect to {} (from {}): {why}; is shiftd running? `systemctl status shiftd`, or pass --url",
                self.base.as_str().trim_end_matches('/'),
                self.origin
            ),
        )
    }

    async fn get_job(&self, id: &str) -> Result<Value, Failure> {
        self.call(
            reqwest::Method::GET,
            self.url(&["v1", "jobs", id]),
            None,
            &[],
        )
        .await
    }

    /// Prints the job's log lines after the first `printed` ones, counting each complete
    /// line it prints; a line cut by a broken connection is not printed (it comes again).
    async fn stream_log(
        &self,
        id: &str,
        follow: bool,
        printed: &mut u64,
        out: &mut impl Write,
    ) -> Result<(), Failure> {
        let mut query = vec![("after", printed.to_string())];
        if follow {
            query.push(("follow", "1".to_string()));
        }
        let request = self
            .request(reqwest::Method::GET, self.url(&["v1", "jobs", id, "log"]))
            .query(&query);
        let response = self.send(request).await?;
        let mut body = response.bytes_stream();
        let mut partial: Vec<u8> = Vec::new();
        // A silent job sends nothing for long: after three --timeouts of quiet, end this
        // stream as if the server had ended it (the caller looks at the job and asks again
        // from where we are), so a connection that died unseen cannot stall us.
        let quiet = self.timeout * 3;
        loop {
            let chunk = match tokio::time::timeout(quiet, body.next()).await {
                Err(_) => return Ok(()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(self.unreachable(&describe(&e))),
                Ok(Some(Ok(chunk))) => chunk,
            };
            partial.extend_from_slice(&chunk);
            if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
                let complete: Vec<u8> = partial.drain(..=end).collect();
                out.write_all(&complete)
                    .and_then(|()| out.flush())
                    .map_err(output_failed)?;
                *printed += complete.iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
    }

    /// Follows a job's log until the job has ended and every line is printed, reconnecting
    /// across restarts of the service. Returns the ended job.
    async fn follow_log(
        &self,
        id: &str,
        waiting: &WaitArgs,
        out: &mut impl Write,
    ) -> Result<Value, Failure> {
        let started = Instant::now();
        let mut printed = 0u64;
        let mut retry = Retry::new(waiting.reconnect_for);
        loop {
            let before = printed;
            let streamed = self.stream_log(id, true, &mut printed, out).await;
            let job = match streamed {
                // The stream ends when the job ended, or when this process of the service
                // stops (its successor serves the rest): the job's state says which.
                Ok(()) => self.get_job(id).await,
                Err(e) => Err(e),
            };
            match job {
                Ok(job) if is_final(&job) => {
                    // Lines stored before the final state that the stream did not carry.
                    self.stream_log(id, false, &mut printed, out).await?;
                    return Ok(job);
                }
                Ok(_) => retry.reset(),
                Err(e) if e.transient() => retry.failed(e)?,
                Err(e) => return Err(e),
            }
            if printed > before {
                retry.reset();
            }
            if started.elapsed() >= waiting.wait_for {
                return Err(still_running(id, waiting.wait_for));
            }
            retry.pause().await;
        }
    }

    /// Polls the job until it has ended (riding out restarts of the service).
    async fn wait_job(&self, id: &str, waiting: &WaitArgs) -> Result<Value, Failure> {
        let started = Instant::now();
        let mut retry = Retry::new(waiting.reconnect_for);
        loop {
            match self.get_job(id).await {
                Ok(job) if is_final(&job) => return Ok(job),
                Ok(_) => retry.reset(),
                Err(e) if e.transient() => retry.failed(e)?,
                Err(e) => return Err(e),
            }
            if started.elapsed() >= waiting.wait_for {
                return Err(still_running(id, waiting.wait_for));
            }
            retry.pause().await;
        }
    }
}

/// Backoff between tries, and the deadline of an outage.
struct Retry {
    budget: Duration,
    down_since: Option<Instant>,
    delay: Duration,
}

impl Retry {
    fn new(budget: Duration) -> Self {
        Self {
            budget,
            down_since: None,
            delay: BACKOFF_FIRST,
        }
    }

    /// The service answered: an outage, if there was one, is over.
    fn reset(&mut self) {
        self.down_since = None;
    }

    /// Records a failed try: an error once the outage has lasted the budget.
    fn failed(&mut self, e: Failure) -> Result<(), Failure> {
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.budget {
            return Err(Failure::new(
                e.code,
                format!(
                    "{} (gave up after trying for {:?}; raise --reconnect-for to wait longer)",
                    e.message, self.budget
                ),
            ));
        }
        Ok(())
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }
}

fn still_running(id: &str, wait_for: Duration) -> Failure {
    Failure::new(
        exit::STILL_RUNNING,
        format!(
            "job {id} has not ended after {} (--wait-for); it goes on: `shiftd job get {id}`",
            humantime::format_duration(wait_for)
        ),
    )
}

/// An error of the HTTP client in a few words, with its cause (e.g. "connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "the connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "the connection broke off".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = last {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

/// The local service's address and where it came from: the socket unit's address, else
/// http.listen of the configuration. With --config, that file wins over the socket unit.
fn local_address(config_path: Option<&Path>) -> Result<(String, String), Failure> {
    if config_path.is_none() {
        if let Some(addr) = socket_unit_address()? {
            return Ok((addr, "the address of shiftd.socket".into()));
        }
    }
    let config = Config::load(config_path).map_err(|e| {
        Failure::new(
            exit::CONFIG,
            format!("cannot tell where shiftd listens: {e}; or pass --url"),
        )
    })?;
    let origin = match config_path {
        Some(p) => format!("http.listen in {}", p.display()),
        None if Path::new(crate::config::DEFAULT_CONFIG_PATH).exists() => {
            format!("http.listen in {}", crate::config::DEFAULT_CONFIG_PATH)
        }
        None => "the default http.listen".into(),
    };
    let url = listen_url(&config.http.listen).ok_or_else(|| {
        Failure::new(
            exit::CONFIG,
            format!(
                "http.listen `{}` is not an address; pass --url",
                config.http.listen
            ),
        )
    })?;
    Ok((url, origin))
}

/// `http://ADDR` for a listen address; an unspecified IP (0.0.0.0, ::) becomes loopback.
pub fn listen_url(listen: &str) -> Option<String> {
    let mut addr: std::net::SocketAddr = listen.trim().parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(format!("http://{addr}"))
}

/// The TCP address shiftd.socket listens on, as `systemctl show` tells (bounded by
/// [`SYSTEMCTL_DEADLINE`]); `None` without systemctl or without the unit.
fn socket_unit_address() -> Result<Option<String>, Failure> {
    let has_systemctl = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("systemctl").is_file())
    });
    if !has_systemctl {
        return Ok(None);
    }
    let Some(text) = run_bounded(
        "systemctl",
        &["show", "-p", "Listen", "--value", "shiftd.socket"],
        SYSTEMCTL_DEADLINE,
    ) else {
        return Ok(None);
    };
    parse_listen(&text)
}

/// The first stream address of `systemctl show -p Listen --value` ("ADDR (Stream)" lines).
fn parse_listen(text: &str) -> Result<Option<String>, Failure> {
    for line in text.lines() {
        let Some(addr) = line.trim().strip_suffix("(Stream)").map(str::trim) else {
            continue;
        };
        if let Some(url) = listen_url(addr) {
            return Ok(Some(url));
        }
        if addr.starts_with('/') || addr.starts_with('@') {
            return Err(Failure::new(
                exit::CONFIG,
                format!("shiftd.socket listens on the Unix socket {addr}, which this client cannot use; pass --url http://HOST:PORT"),
            ));
        }
    }
    Ok(None)
}

/// Runs a command and returns its stdout, or `None` if it failed or outlived `deadline`
/// (then it is killed).
fn run_bounded(program: &str, args: &[&str], deadline: Duration) -> Option<String> {
    use std::io::Read;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut text = String::new();
                child.stdout.take()?.read_to_string(&mut text).ok()?;
                return status.success().then_some(text);
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn is_final(job: &Value) -> bool {
    matches!(
        job.get("state").and_then(Value::as_str),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn job_id(job: &Value) -> String {
    job.get("id").map(plain).unwrap_or_default()
}

/// A JSON value for a table cell: strings bare, null as "-".
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn field(v: &Value, key: &str) -> String {
    v.get(key).map(plain).unwrap_or_else(|| "-".into())
}

/// Rows as columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes to stdout. A reader that went away (`| head`) ends the client quietly with 141,
/// as a shell reports a writer killed by SIGPIPE; Rust's print macros would panic instead.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(output_failed)
}

fn output_failed(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::new(exit::OUTPUT_CLOSED, "")
    } else {
        Failure::new(exit::FAILURE, format!("cannot write the output: {e}"))
    }
}

fn print_json(v: &Value) -> Result<(), Failure> {
    emit(&format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    ))
}

/// One job as "key  value" lines, then the end of its output when the API gave it.
fn print_job(job: &Value) -> Result<(), Failure> {
    let attempts = format!("{}/{}", field(job, "attempts"), field(job, "max_attempts"));
    let mut rows = vec![
        vec!["id".into(), field(job, "id")],
        vec!["task".into(), field(job, "task")],
        vec!["state".into(), field(job, "state")],
        vec!["params".into(), field(job, "params")],
        vec!["attempts".into(), attempts],
        vec!["created".into(), field(job, "created_at")],
    ];
    if job.get("run_at").is_some() {
        rows.push(vec!["run at".into(), field(job, "run_at")]);
    }
    rows.extend([
        vec!["started".into(), field(job, "started_at")],
        vec!["finished".into(), field(job, "finished_at")],
        vec!["exit code".into(), field(job, "exit_code")],
    ]);
    if job.get("exit_signal").is_some_and(|s| !s.is_null()) {
        rows.push(vec!["signal".into(), field(job, "exit_signal")]);
    }
    if job.get("error").is_some_and(|s| !s.is_null()) {
        rows.push(vec!["error".into(), field(job, "error")]);
    }
    let text = table(&["FIELD", "VALUE"], &rows);
    // The header line is for lists; one job reads better without it.
    let mut text = text
        .split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    if let Some(tail) = job.get("output_tail").and_then(Value::as_array) {
        text.push_str(&format!("output (last {} lines):\n", tail.len()));
        for line in tail {
            text.push_str(&format!("  {}\n", plain(line)));
        }
    }
    emit(&text)
}

/// A short account of how a job ended, for stderr after --follow.
fn outcome(job: &Value) -> String {
    let mut text = format!("job {} {}", job_id(job), field(job, "state"));
    if let Some(code) = job.get("exit_code").filter(|c| !c.is_null()) {
        text.push_str(&format!(" (exit code {code})"));
    }
    if let Some(error) = job.get("error").and_then(Value::as_str) {
        text.push_str(&format!(": {error}"));
    }
    text
}

fn ended_code(job: &Value) -> u8 {
    if job.get("state").and_then(Value::as_str) == Some("succeeded") {
        exit::OK
    } else {
        exit::JOB_NOT_SUCCEEDED
    }
}

async fn job_command(conn: &Conn, action: JobAction) -> Result<u8, Failure> {
    match action {
        JobAction::Start {
            task,
            params,
            idempotency_key,
            delay,
            run_at,
            follow,
            wait,
            waiting,
        } => {
            let body = start_body(&params, delay, run_at)?;
            let job = post_job(conn, &task, &body, idempotency_key.as_deref()).await?;
            let id = job_id(&job);
            if follow {
                eprintln!("shiftd: job {id} {} (task {task})", field(&job, "state"));
                return follow_to_end(conn, &id, &waiting).await;
            }
            if wait {
                let ended = conn.wait_job(&id, &waiting).await?;
                print_one(conn, &ended)?;
                return Ok(ended_code(&ended));
            }
            print_one(conn, &job)?;
            Ok(exit::OK)
        }
        JobAction::Get { id } => {
            let job = conn.get_job(&id).await?;
            print_one(conn, &job)?;
            Ok(exit::OK)
        }
        JobAction::List { task, state, limit } => list_jobs(conn, task, state, limit).await,
        JobAction::Log {
            id,
            follow,
            waiting,
        } => {
            if follow {
                let ended = {
                    let mut out = std::io::stdout().lock();
                    conn.follow_log(&id, &waiting, &mut out).await?
                };
                if !conn.json {
                    eprintln!("shiftd: {}", outcome(&ended));
                }
            } else {
                let mut out = std::io::stdout().lock();
                conn.stream_log(&id, false, &mut 0, &mut out).await?;
            }
            Ok(exit::OK)
        }
        JobAction::Cancel { id } => cancel_job(conn, &id).await,
    }
}

/// One job as JSON (`--json`) or as "key  value" lines.
fn print_one(conn: &Conn, job: &Value) -> Result<(), Failure> {
    if conn.json {
        print_json(job)
    } else {
        print_job(job)
    }
}

/// The body of a start: `-p NAME=VALUE` pairs as `params`, and the delayed start if any.
fn start_body(
    params: &[String],
    delay: Option<String>,
    run_at: Option<String>,
) -> Result<Value, Failure> {
    let mut map = serde_json::Map::new();
    for p in params {
        let (name, value) = p.split_once('=').ok_or_else(|| {
            Failure::new(
                exit::REFUSED,
                format!("-p `{p}` is not NAME=VALUE; write e.g. -p target=db1"),
            )
        })?;
        map.insert(name.to_string(), Value::String(value.to_string()));
    }
    let mut body = serde_json::json!({ "params": map });
    if let Some(delay) = delay {
        body["delay"] = Value::String(delay);
    }
    if let Some(run_at) = run_at {
        body["run_at"] = Value::String(run_at);
    }
    Ok(body)
}

/// Starts a job of `task`; the job as the service answered it (new or, for a repeated
/// idempotency key, the one made earlier).
async fn post_job(
    conn: &Conn,
    task: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Value, Failure> {
    let mut request = conn
        .request(
            reqwest::Method::POST,
            conn.url(&["v1", "tasks", task, "jobs"]),
        )
        .json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = conn.send(request).await?;
    let text = tokio::time::timeout(conn.timeout, response.text())
        .await
        .map_err(|_| conn.unreachable("the answer did not arrive within --timeout"))?
        .map_err(|e| conn.unreachable(&describe(&e)))?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("the service answered something that is not JSON: {e}"),
        )
    })
}

/// Prints a started job's output until it ends, then how it ended; exits as the job did.
async fn follow_to_end(conn: &Conn, id: &str, waiting: &WaitArgs) -> Result<u8, Failure> {
    let ended = {
        let mut out = std::io::stdout().lock();
        conn.follow_log(id, waiting, &mut out).await?
    };
    if conn.json {
        print_json(&ended)?;
    } else {
        eprintln!("shiftd: {}", outcome(&ended));
    }
    Ok(ended_code(&ended))
}

/// `shiftd job list`: up to `limit` jobs, newest first, as a table or JSON.
async fn list_jobs(
    conn: &Conn,
    task: Option<String>,
    state: Option<String>,
    limit: u32,
) -> Result<u8, Failure> {
    let (jobs, cursor) = fetch_jobs(conn, task, state, limit as usize).await?;
    if conn.json {
        print_json(&serde_json::json!({ "jobs": jobs, "next_cursor": cursor }))?;
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                field(j, "id"),
                field(j, "task"),
                field(j, "state"),
                format!("{}/{}", field(j, "attempts"), field(j, "max_attempts")),
                field(j, "created_at"),
                field(j, "exit_code"),
                field(j, "params"),
            ]
        })
        .collect();
    emit(&table(
        &[
            "ID", "TASK", "STATE", "ATTEMPTS", "CREATED", "EXIT", "PARAMS",
        ],
        &rows,
    ))?;
    if cursor.is_some() {
        eprintln!("shiftd: more jobs than --limit {limit}; raise it to see more");
    }
    Ok(exit::OK)
}

/// Up to `limit` jobs, a page of at most [`PAGE_MAX`] at a time, and the cursor of the
/// rest (`None` when there is none).
async fn fetch_jobs(
    conn: &Conn,
    task: Option<String>,
    state: Option<String>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), Failure> {
    let mut jobs: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = (limit - jobs.len()).min(PAGE_MAX as usize);
        let mut query = vec![("limit", want.to_string())];
        if let Some(t) = &task {
            query.push(("task", t.clone()));
        }
        if let Some(s) = &state {
            query.push(("state", s.clone()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = conn
            .call(
                reqwest::Method::GET,
                conn.url(&["v1", "jobs"]),
                None,
                &query,
            )
            .await?;
        if let Some(items) = page.get("jobs").and_then(Value::as_array) {
            jobs.extend(items.iter().cloned());
        }
        cursor = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() || jobs.len() >= limit {
            break;
        }
    }
    jobs.truncate(limit);
    Ok((jobs, cursor))
}

/// `shiftd job cancel`: what the service did with the cancel.
async fn cancel_job(conn: &Conn, id: &str) -> Result<u8, Failure> {
    let job = conn
        .call(
            reqwest::Method::POST,
            conn.url(&["v1", "jobs", id, "cancel"]),
            None,
            &[],
        )
        .await?;
    if conn.json {
        print_json(&job)?;
    } else if is_final(&job) {
        emit(&format!("job {} {}\n", job_id(&job), field(&job, "state")))?;
    } else {
        emit(&format!(
            "job {}: cancel requested; it stops soon ({} now)\n",
            job_id(&job),
            field(&job, "state")
        ))?;
    }
    Ok(exit::OK)
}

async fn task_command(conn: &Conn, action: TaskAction) -> Result<u8, Failure> {
    match action {
        TaskAction::List => list_tasks(conn).await,
        TaskAction::Pause { task } => set_paused(conn, &task, true).await,
        TaskAction::Resume { task } => set_paused(conn, &task, false).await,
    }
}

/// `shiftd task list`: the tasks this token may use, as a table or JSON.
async fn list_tasks(conn: &Conn) -> Result<u8, Failure> {
    let tasks = conn
        .call(reqwest::Method::GET, conn.url(&["v1", "tasks"]), None, &[])
        .await?;
    if conn.json {
        print_json(&tasks)?;
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = tasks
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(task_row)
        .collect();
    emit(&table(
        &[
            "TASK",
            "PAUSED",
            "SCHEDULE",
            "NEXT RUN",
            "CONCURRENCY",
            "TIMEOUT",
            "PARAMS",
        ],
        &rows,
    ))?;
    Ok(exit::OK)
}

/// One task as a row of `shiftd task list`.
fn task_row(t: &Value) -> Vec<String> {
    let paused = match t.get("paused").and_then(Value::as_bool) {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let params = t
        .get("params")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect::<Vec<_>>().join(","))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "-".into());
    vec![
        field(t, "name"),
        paused.into(),
        // The zone the expression is read in, unless it is UTC.
        match t.get("timezone").and_then(Value::as_str) {
            Some(tz) if tz != "UTC" && t["schedule"].is_string() => {
                format!("{} ({tz})", field(t, "schedule"))
            }
            _ => field(t, "schedule"),
        },
        field(t, "next_run_at"),
        field(t, "concurrency"),
        format!("{}s", field(t, "timeout_seconds")),
        params,
    ]
}

/// `shiftd task pause` (`pause`) or `shiftd task resume`.
async fn set_paused(conn: &Conn, task: &str, pause: bool) -> Result<u8, Failure> {
    let verb = if pause { "pause" } else { "resume" };
    let answer = conn
        .call(
            reqwest::Method::POST,
            conn.url(&["v1", "tasks", task, verb]),
            None,
            &[],
        )
        .await?;
    if conn.json {
        print_json(&answer)?;
    } else if answer.get("paused").and_then(Value::as_bool) == Some(true) {
        emit(&format!(
            "task {task} paused (since {}): its queued jobs wait; running ones go on\n",
            field(&answer, "paused_at")
        ))?;
    } else {
        emit(&format!(
            "task {task} resumed: its queued jobs are claimed again\n"
        ))?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_means_loopback() {
        assert_eq!(listen_url("0.0.0.0:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(listen_url("[::]:9000").unwrap(), "http://[::1]:9000");
        assert_eq!(listen_url("10.0.0.2:80").unwrap(), "http://10.0.0.2:80");
        assert!(listen_url("localhost").is_none());
    }

    #[test]
    fn the_socket_units_stream_address_is_used() {
        assert_eq!(
            parse_listen("127.0.0.1:8080 (Stream)\n").unwrap().unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            parse_listen("[::]:8080 (Stream)\n").unwrap().unwrap(),
            "http://[::1]:8080"
        );
        assert!(parse_listen("").unwrap().is_none());
        let unix = parse_listen("/run/shiftd.sock (Stream)\n").unwrap_err();
        assert!(unix.message.contains("--url"), "{}", unix.message);
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(
            &["ID", "STATE"],
            &[
                vec!["7".into(), "queued".into()],
                vec!["1234".into(), "failed".into()],
            ],
        );
        assert_eq!(text, "ID    STATE\n7     queued\n1234  failed\n");
    }
}
