//! The operators' client, `shiftd job …` and `shiftd task …`, run as the real binary
//! against a real `shiftd serve` on SQLite and on PostgreSQL: tables and --json, exit codes
//! and the API's messages, --wait, and --follow across a graceful restart of the service.
//! Also pause/resume, delayed starts and the task list's schedule columns.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::wait_file;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::time::Instant;

/// What one run of the client did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// The client with an environment of only PATH (no SHIFTD_* of the test's own), no stdin.
fn client_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the client to its end (failing the test after 30 s).
async fn cli(args: &[&str]) -> Run {
    let out = tokio::time::timeout(secs(30), client_command(args).output())
        .await
        .unwrap_or_else(|_| panic!("shiftd {args:?} did not end within 30s"))
        .expect("run the client");
    Run {
        code: status_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// `--url http://ADDR` and then `args`.
async fn cli_at(addr: SocketAddr, args: &[&str]) -> Run {
    let url = format!("http://{addr}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &url]);
    cli(&all).await
}

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "exit code; the run: {run:#?}");
}

/// Tasks run in the work directory, where the test makes and looks for files.
const TASKS: &str = r#"
[tasks.echo]
command = ["/bin/sh", "-c", "echo hello $0; echo bye", "{name}"]
params = { name = "[a-z]+" }

[tasks.fail]
command = ["/bin/sh", "-c", "echo broken; exit 3"]
max_attempts = 1

[tasks.hold]
command = ["/bin/sh", "-c", "touch held; for i in $(seq 1 300); do [ -f release ] && exit 0; sleep 0.1; done; exit 1"]
"#;

async fn serve_tasks(backend: Backend, extra: &str) -> (Shiftd, Option<TestDatabase>) {
    serve_tasks_with(backend, extra, |b| b).await
}

async fn serve_tasks_with(
    backend: Backend,
    extra: &str,
    tweak: impl FnOnce(ShiftdBuilder) -> ShiftdBuilder,
) -> (Shiftd, Option<TestDatabase>) {
    let (b, db) = builder(backend).await;
    let b = tweak(b);
    let dir = b.workdir().clone();
    let mut text = String::from(TASKS);
    text.push_str(extra);
    // Every task runs in the work directory.
    let text = text.replace(
        "\ncommand =",
        &format!("\nworking_dir = \"{}\"\ncommand =", dir.path().display()),
    );
    (b.toml(&text).start().await, db)
}

/// Stops the service gracefully once every job has ended, so no process is left behind.
async fn stop(app: Shiftd) {
    app.sigterm();
    assert_eq!(app.wait_exit(secs(20)).await, 0, "{}", app.dump());
}

/// start, get, list, log, cancel, task list, in tables and in JSON; --wait and its exit
/// codes; the API's 404 and 422 messages with their exit codes.
async fn commands_against_the_service(backend: Backend) {
    let (app, _db) = serve_tasks(backend, "").await;
    let addr = app.addr;

    // start --wait: a table of the ended job, exit 0.
    let run = cli_at(
        addr,
        &["job", "start", "echo", "-p", "name=world", "--wait"],
    )
    .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("state      succeeded"), "{run:#?}");
    assert!(run.stdout.contains("params     name=world"), "{run:#?}");
    assert!(run.stdout.contains("  hello world\n  bye\n"), "{run:#?}");
    let id = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id "))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no id row: {run:#?}"));

    // get, as a table and as the API's JSON.
    let run = cli_at(addr, &["job", "get", &id]).await;
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!("id         {id}\n")),
        "{run:#?}"
    );
    assert!(run.stdout.contains("exit code  0\n"), "{run:#?}");
    let run = cli_at(addr, &["job", "get", &id, "--json"]).await;
    assert_code(&run, 0);
    let job = run.json();
    assert_eq!(job["state"], "succeeded");
    // The job's own lines, between the service's notes of the attempt's start and end.
    let tail = job["output_tail"].as_array().expect("output_tail");
    assert!(
        tail.windows(2)
            .any(|w| w == [json!("hello world"), json!("bye")]),
        "{job}"
    );

    // start --json without waiting: the queued job as the API gave it.
    let run = cli_at(
        addr,
        &["job", "start", "echo", "-p", "name=again", "--json"],
    )
    .await;
    assert_code(&run, 0);
    let second = run.json();
    let second_id = second["id"].as_i64().expect("an id").to_string();
    assert_eq!(second["params"], json!({"name": "again"}));

    // log of an ended job: its lines (the service's notes of the attempt around the
    // job's own); --follow of it prints the same and ends at once.
    let run = cli_at(addr, &["job", "log", &id]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("attempt 1 of 3"), "{run:#?}");
    assert!(
        run.stdout
            .contains("\nhello world\nbye\nexited with status 0\n"),
        "{run:#?}"
    );
    let log = run.stdout;
    let run = cli_at(addr, &["job", "log", &id, "--follow"]).await;
    assert_code(&run, 0);
    assert_eq!(run.stdout, log);
    assert!(
        run.stderr.contains(&format!("job {id} succeeded")),
        "{run:#?}"
    );

    // start --follow: the output as it comes, the outcome on stderr, exit 0.
    let run = cli_at(
        addr,
        &["job", "start", "echo", "-p", "name=live", "--follow"],
    )
    .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("\nhello live\nbye\n"), "{run:#?}");

    // A failing job: --wait and --follow exit 3.
    let run = cli_at(addr, &["job", "start", "fail", "--wait"]).await;
    assert_code(&run, 3);
    assert!(run.stdout.contains("state      failed"), "{run:#?}");
    let run = cli_at(addr, &["job", "start", "fail", "--follow"]).await;
    assert_code(&run, 3);
    assert!(run.stdout.contains("\nbroken\n"), "{run:#?}");
    assert!(run.stderr.contains("failed (exit code 3)"), "{run:#?}");

    // list: a table with a header and every job; --json the API's page; --limit pages.
    let run = cli_at(addr, &["job", "list", "--task", "echo"]).await;
    assert_code(&run, 0);
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("ID  TASK  STATE") && header.contains("ATTEMPTS"),
        "{run:#?}"
    );
    let ids: Vec<&str> = lines.filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids.len(), 3, "three echo jobs: {run:#?}");
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&second_id.as_str()),
        "{run:#?}"
    );
    let run = cli_at(addr, &["job", "list", "--state", "failed", "--json"]).await;
    assert_code(&run, 0);
    let page = run.json();
    let failed = page["jobs"].as_array().expect("jobs");
    assert_eq!(failed.len(), 2, "{run:#?}");
    assert!(failed.iter().all(|j| j["task"] == "fail"), "{run:#?}");
    let run = cli_at(addr, &["job", "list", "--limit", "2", "--json"]).await;
    assert_code(&run, 0);
    let page = run.json();
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2), "{run:#?}");
    assert!(page["next_cursor"].is_string(), "{run:#?}");
    let run = cli_at(addr, &["job", "list", "--limit", "1"]).await;
    assert_eq!(run.stdout.lines().count(), 2, "{run:#?}");
    assert!(run.stderr.contains("raise it"), "{run:#?}");

    // A job waited on and cancelled meanwhile: the waiting client exits 3; a second
    // cancel is refused with the API's message (exit 5).
    let url = format!("http://{addr}");
    let waiting = client_command(&["job", "start", "hold", "--wait", "--url", &url])
        .spawn()
        .expect("spawn the waiting client");
    wait_file(&app.workdir().path().join("held"), secs(10)).await;
    let run = cli_at(addr, &["job", "list", "--task", "hold", "--json"]).await;
    let held = run.json()["jobs"][0]["id"].to_string();
    let run = cli_at(addr, &["job", "cancel", &held]).await;
    assert_code(&run, 0);
    assert!(
        run.stdout
            .contains(&format!("job {held}: cancel requested")),
        "{run:#?}"
    );
    let out = tokio::time::timeout(secs(30), waiting.wait_with_output())
        .await
        .expect("the waiting client ends once its job is cancelled")
        .expect("its output");
    assert_eq!(
        status_code(out.status),
        3,
        "a cancelled job under --wait exits 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("state      cancelled"));
    let run = cli_at(addr, &["job", "cancel", &held]).await;
    assert_code(&run, 5);
    assert!(
        run.stderr
            .contains(&format!("job {held} already ended: cancelled (HTTP 409)")),
        "{run:#?}"
    );

    // The API's refusals, with its message on stderr and a distinct exit code.
    let run = cli_at(addr, &["job", "start", "nope"]).await;
    assert_code(&run, 4);
    assert!(
        run.stderr.contains("no task named `nope`") && run.stderr.contains("HTTP 404"),
        "{run:#?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    let run = cli_at(addr, &["job", "start", "echo", "-p", "name=UPPER"]).await;
    assert_code(&run, 5);
    assert!(
        run.stderr.contains("parameter `name` does not match") && run.stderr.contains("HTTP 422"),
        "{run:#?}"
    );
    let run = cli_at(addr, &["job", "start", "echo", "-p", "name"]).await;
    assert_code(&run, 5);
    assert!(run.stderr.contains("is not NAME=VALUE"), "{run:#?}");
    let run = cli_at(addr, &["job", "get", "987654"]).await;
    assert_code(&run, 4);
    assert!(run.stderr.contains("no job 987654"), "{run:#?}");
    let run = cli_at(addr, &["job", "list", "--state", "bogus"]).await;
    assert_code(&run, 5);
    assert!(run.stderr.contains("state `bogus`"), "{run:#?}");

    // task list: a table, and the API's JSON.
    let run = cli_at(addr, &["task", "list"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.starts_with("TASK "), "{run:#?}");
    for task in ["echo", "fail", "hold"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{task} "))),
            "{task}: {run:#?}"
        );
    }
    let run = cli_at(addr, &["task", "list", "--json"]).await;
    let names: Vec<String> = run
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["echo", "fail", "hold"]);

    // A reader that closed the output (`| head`): a quiet exit 141, no panic.
    let url = format!("http://{addr}");
    let mut closed = client_command(&["job", "log", &id, "--url", &url])
        .spawn()
        .expect("spawn the client");
    drop(closed.stdout.take());
    let out = tokio::time::timeout(secs(30), closed.wait_with_output())
        .await
        .expect("the client ends")
        .expect("its output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status_code(out.status), 141, "{err}");
    assert!(err.is_empty(), "{err}");

    // Without --url: the address is http.listen of the configuration given.
    let config = app.config_path.display().to_string();
    let run = cli(&["job", "get", &id, "--json", "--config", &config]).await;
    assert_code(&run, 0);
    assert_eq!(run.json()["id"].to_string(), id);

    stop(app).await;
}

/// `--follow` across a graceful restart: the service stops while the job waits between
/// its lines; the job finishes in the old process's drain; the client, cut off, reconnects
/// to the next process and prints the rest: every line exactly once, in order.
async fn follow_survives_a_graceful_restart(backend: Backend) {
    let (app, db) = serve_tasks(
        backend,
        r#"
[tasks.lines]
command = ["/bin/sh", "-c", "echo line 1; echo line 2; echo line 3; touch started; for i in $(seq 1 300); do [ -f go ] && break; sleep 0.1; done; echo line 4; echo line 5; echo line 6"]
on_shutdown = "finish"
"#,
    )
    .await;
    let url = format!("http://{}", app.addr);
    let (mut client, printed, reader) = follow_client(&url, "lines");
    let mut stderr = client.stderr.take().expect("stderr");

    // The client has printed the first three lines, streamed by the first process.
    let deadline = Instant::now() + secs(15);
    while !printed.lock().unwrap().iter().any(|l| l == "line 3") {
        assert!(
            Instant::now() < deadline,
            "the client printed {:?}",
            printed.lock().unwrap()
        );
        tokio::time::sleep(millis(20)).await;
    }
    wait_file(&app.workdir().path().join("started"), secs(10)).await;

    // Stop the service; once it accepts no more requests, let the job write the rest.
    app.sigterm();
    app.stderr
        .wait_contains("shutdown stage http-drain done", secs(15))
        .await;
    let before_stop = printed.lock().unwrap().clone();
    std::fs::write(app.workdir().path().join("go"), "").unwrap();
    assert_eq!(app.wait_exit(secs(20)).await, 0, "{}", app.dump());
    assert_eq!(
        *printed.lock().unwrap(),
        before_stop,
        "nothing more could be printed while no process served"
    );

    // The next process serves the rest from the database.
    let again = app.builder_again().start().await;
    let status = tokio::time::timeout(secs(30), client.wait())
        .await
        .expect("the client ends once the job has ended")
        .expect("its status");
    reader.await.unwrap();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err).await;
    assert_eq!(status_code(status), 0, "client stderr: {err}");
    let printed = printed.lock().unwrap().clone();
    let own: Vec<&str> = printed
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("line "))
        .collect();
    assert_eq!(
        own,
        ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6"],
        "every line once, in order; client stderr: {err}"
    );
    // And exactly the stored log, the service's notes included.
    let run = cli_at(again.addr, &["job", "list", "--task", "lines", "--json"]).await;
    let id = run.json()["jobs"][0]["id"].to_string();
    let log = cli_at(again.addr, &["job", "log", &id]).await;
    assert_code(&log, 0);
    assert_eq!(
        printed.join("\n") + "\n",
        log.stdout,
        "client stderr: {err}"
    );
    assert!(err.contains(&format!("job {id} succeeded")), "{err}");
    stop(again).await;
    drop(db);
}

/// Spawns `shiftd job start TASK --follow` and collects what it prints, line by line.
fn follow_client(
    url: &str,
    task: &str,
) -> (
    tokio::process::Child,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let mut client = client_command(&[
        "job",
        "start",
        task,
        "--follow",
        "--reconnect-for",
        "30s",
        "--url",
        url,
    ])
    .spawn()
    .expect("spawn the client");
    let stdout = client.stdout.take().expect("stdout");
    let printed: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = tokio::spawn({
        let printed = printed.clone();
        async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                printed.lock().unwrap().push(line);
            }
        }
    });
    (client, printed, reader)
}

/// `--follow` across a SIGKILL of the service: the stream breaks off; the client
/// reconnects to the next process, which runs the job again once its lease has expired,
/// and prints what the job wrote after the kill: the stored log, each line once.
async fn follow_survives_a_sigkill(backend: Backend) {
    let (app, db) = serve_tasks_with(
        backend,
        r#"
[tasks.lines]
command = ["/bin/sh", "-c", "if [ -e first ]; then echo line 4; echo line 5; echo line 6; exit 0; fi; touch first; echo line 1; echo line 2; echo line 3; echo $$ > first.pid; for i in $(seq 1 300); do sleep 0.1; done"]
"#,
        |b| b.set("jobs.lease", "2s"),
    )
    .await;
    let url = format!("http://{}", app.addr);
    let (mut client, printed, reader) = follow_client(&url, "lines");
    let mut stderr = client.stderr.take().expect("stderr");
    let deadline = Instant::now() + secs(15);
    while !printed.lock().unwrap().iter().any(|l| l == "line 3") {
        assert!(
            Instant::now() < deadline,
            "the client printed {:?}",
            printed.lock().unwrap()
        );
        tokio::time::sleep(millis(20)).await;
    }
    let pid_file = app.workdir().path().join("first.pid");
    wait_file(&pid_file, secs(10)).await;
    app.signal(nix::sys::signal::Signal::SIGKILL);
    app.wait_exit(secs(5)).await;
    // Under systemd the unit's cgroup goes with the service (KillMode=mixed); here the
    // first attempt's process group is killed by hand, so none outlives the test.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if let Ok(group) = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))) {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }

    let again = app.builder_again().start().await;
    let status = tokio::time::timeout(secs(40), client.wait())
        .await
        .expect("the client ends once the job has ended")
        .expect("its status");
    reader.await.unwrap();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err).await;
    assert_eq!(status_code(status), 0, "client stderr: {err}");
    let printed = printed.lock().unwrap().clone();
    let own: Vec<&str> = printed
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("line "))
        .collect();
    assert_eq!(
        own,
        ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6"],
        "every line once, in order; client stderr: {err}"
    );
    assert!(
        printed.iter().any(|l| l.starts_with("attempt 2 of")),
        "the second attempt's lines came from the next process: {printed:?}"
    );
    let run = cli_at(again.addr, &["job", "list", "--task", "lines", "--json"]).await;
    let id = run.json()["jobs"][0]["id"].to_string();
    let log = cli_at(again.addr, &["job", "log", &id]).await;
    assert_eq!(
        printed.join("\n") + "\n",
        log.stdout,
        "client stderr: {err}"
    );
    stop(again).await;
    drop(db);
}

/// The process a hand-over started (init's child after the double fork, not the test's):
/// killed at the end of the test whatever happens.
struct Successor(i32);

impl Successor {
    /// Waits until the process is gone (polled, with a deadline).
    async fn wait_gone(&self, timeout: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let deadline = Instant::now() + timeout;
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(
                Instant::now() < deadline,
                "process {} still there after {timeout:?}",
                self.0
            );
            tokio::time::sleep(millis(20)).await;
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

/// `--follow` across a hand-over (`systemctl reload`, a package upgrade): the old process
/// ends its log streams and lets the job run on; the client reconnects, the new process
/// streams what the old one's job writes after the hand-over; each line once.
async fn follow_survives_a_hand_over(backend: Backend) {
    let (app, db) = serve_tasks(
        backend,
        r#"
[tasks.lines]
command = ["/bin/sh", "-c", "echo line 1; echo line 2; echo line 3; touch started; for i in $(seq 1 300); do [ -f release ] && break; sleep 0.1; done; echo line 4; echo line 5; echo line 6"]
"#,
    )
    .await;
    let work = app.workdir().path().to_path_buf();
    let url = format!("http://{}", app.addr);
    let (mut client, printed, reader) = follow_client(&url, "lines");
    let mut stderr = client.stderr.take().expect("stderr");
    let deadline = Instant::now() + secs(15);
    while !printed.lock().unwrap().iter().any(|l| l == "line 3") {
        assert!(
            Instant::now() < deadline,
            "the client printed {:?}",
            printed.lock().unwrap()
        );
        tokio::time::sleep(millis(20)).await;
    }
    wait_file(&work.join("started"), secs(10)).await;

    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--timeout", "30s"])
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .expect("run shiftd reload");
    assert_eq!(
        out.status.code(),
        Some(0),
        "shiftd reload: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        app.dump()
    );
    let handed = app
        .notify
        .wait_for("MAINPID=", secs(5), |d| d.has_key("MAINPID"))
        .await;
    let successor = Successor(
        handed
            .value("MAINPID")
            .and_then(|v| v.parse().ok())
            .expect("MAINPID=<pid>"),
    );
    app.stderr
        .wait_contains(&format!("hand-over to pid {} done", successor.0), secs(10))
        .await;
    // Only now does the job write the rest, in the old process, while the new one serves.
    std::fs::write(work.join("release"), "").unwrap();
    assert_eq!(app.wait_exit(secs(20)).await, 0, "{}", app.dump());

    let status = tokio::time::timeout(secs(30), client.wait())
        .await
        .expect("the client ends once the job has ended")
        .expect("its status");
    reader.await.unwrap();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err).await;
    assert_eq!(status_code(status), 0, "client stderr: {err}");
    let printed = printed.lock().unwrap().clone();
    let own: Vec<&str> = printed
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("line "))
        .collect();
    assert_eq!(
        own,
        ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6"],
        "every line once, in order; client stderr: {err}"
    );
    let run = cli_at(app.addr, &["job", "list", "--task", "lines", "--json"]).await;
    let job = &run.json()["jobs"][0];
    assert_eq!(job["attempts"], 1, "the job was never interrupted: {job}");
    let id = job["id"].to_string();
    let log = cli_at(app.addr, &["job", "log", &id]).await;
    assert_eq!(
        printed.join("\n") + "\n",
        log.stdout,
        "client stderr: {err}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(successor.0),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the new process");
    successor.wait_gone(secs(20)).await;
    drop(db);
}

#[tokio::test]
async fn follow_survives_a_hand_over_sqlite() {
    follow_survives_a_hand_over(Backend::Sqlite).await;
}

#[tokio::test]
async fn follow_survives_a_hand_over_postgres() {
    follow_survives_a_hand_over(Backend::Postgres).await;
}

/// A job silent for several times the client's quiet limit (three --timeouts, 2.1s here)
/// and --reconnect-for: the client asks again each time, and a quiet stream is not an
/// outage that would use up --reconnect-for.
#[tokio::test]
async fn follow_rides_out_a_silent_job() {
    let (app, _db) = serve_tasks(
        Backend::Sqlite,
        r#"
[tasks.quiet]
command = ["/bin/sh", "-c", "echo before; sleep 8; echo after"]
"#,
    )
    .await;
    let run = cli_at(
        app.addr,
        &[
            "job",
            "start",
            "quiet",
            "--follow",
            "--timeout",
            "700ms",
            "--reconnect-for",
            "1s",
        ],
    )
    .await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("\nbefore\nafter\n"), "{run:#?}");
    stop(app).await;
}

/// No service: one line saying where it tried, where that address came from, and what to
/// do; exit 69. An address 0.0.0.0 in the configuration means loopback.
#[tokio::test]
async fn without_a_service_the_client_says_where_it_tried() {
    let port = free_port();
    let run = cli(&["job", "list", "--url", &format!("http://127.0.0.1:{port}")]).await;
    assert_code(&run, 69);
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(
        run.stderr.contains(&format!(
            "cannot connect to http://127.0.0.1:{port} (from --url)"
        )) && run.stderr.contains("systemctl status shiftd"),
        "{run:#?}"
    );

    let dir = Workdir::new();
    let config = dir.path().join("shiftd.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"0.0.0.0:{port}\"\n")).unwrap();
    let config = config.display().to_string();
    let run = cli(&["task", "list", "--config", &config]).await;
    assert_code(&run, 69);
    assert!(
        run.stderr.contains(&format!(
            "cannot connect to http://127.0.0.1:{port} (from http.listen in {config})"
        )),
        "{run:#?}"
    );

    // A token file that cannot be read is a configuration error (78), named.
    let run = cli(&[
        "task",
        "list",
        "--url",
        "http://127.0.0.1:1",
        "--token-file",
        "/nonexistent/token",
    ])
    .await;
    assert_code(&run, 78);
    assert!(run.stderr.contains("/nonexistent/token"), "{run:#?}");
}

/// With tokens configured: no token is refused with the API's message (exit 5); the token
/// from --token-file is sent; a token limited to one task sees no other.
#[tokio::test]
async fn the_token_file_is_sent() {
    let app = Shiftd::builder()
        .toml(
            r#"[[auth.tokens]]
name = "ops"
secret = "s3cret-token-value"
tasks = ["echo"]
[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z]+" }
[tasks.other]
command = ["/bin/true"]"#,
        )
        .start()
        .await;
    let run = cli_at(app.addr, &["task", "list"]).await;
    assert_code(&run, 5);
    assert!(
        run.stderr.contains("Authorization") && run.stderr.contains("HTTP 401"),
        "{run:#?}"
    );
    let token = app.workdir().path().join("token");
    std::fs::write(&token, "s3cret-token-value\n").unwrap();
    let token = token.display().to_string();
    let run = cli_at(
        app.addr,
        &["task", "list", "--json", "--token-file", &token],
    )
    .await;
    assert_code(&run, 0);
    assert_eq!(run.json().as_array().map(Vec::len), Some(1), "{run:#?}");
    let run = cli_at(
        app.addr,
        &[
            "job",
            "start",
            "echo",
            "-p",
            "who=ann",
            "--wait",
            "--token-file",
            &token,
        ],
    )
    .await;
    assert_code(&run, 0);
    let run = cli_at(app.addr, &["job", "start", "other", "--token-file", &token]).await;
    assert_code(&run, 5);
    assert!(run.stderr.contains("HTTP 403"), "{run:#?}");
    stop(app).await;
}

#[tokio::test]
async fn commands_against_the_service_sqlite() {
    commands_against_the_service(Backend::Sqlite).await;
}

#[tokio::test]
async fn commands_against_the_service_postgres() {
    commands_against_the_service(Backend::Postgres).await;
}

#[tokio::test]
async fn follow_survives_a_graceful_restart_sqlite() {
    follow_survives_a_graceful_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn follow_survives_a_graceful_restart_postgres() {
    follow_survives_a_graceful_restart(Backend::Postgres).await;
}

#[tokio::test]
async fn follow_survives_a_sigkill_sqlite() {
    follow_survives_a_sigkill(Backend::Sqlite).await;
}

#[tokio::test]
async fn follow_survives_a_sigkill_postgres() {
    follow_survives_a_sigkill(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Pause and resume, delayed starts and the task list's schedule and pause columns, against
// the real service.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pause_resume_and_delayed_starts() {
    let (app, _db) = serve_tasks(
        Backend::Sqlite,
        r#"
[tasks.nightly]
command = ["/bin/true"]
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
"#,
    )
    .await;
    let addr = app.addr;

    let run = cli_at(addr, &["task", "pause", "nightly"]).await;
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("task nightly paused (since "),
        "{run:#?}"
    );
    let run = cli_at(addr, &["task", "pause", "nightly", "--json"]).await;
    assert_eq!(run.json()["paused"], true);
    let run = cli_at(addr, &["task", "list"]).await;
    assert_code(&run, 0);
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with("nightly"))
        .unwrap_or_default()
        .to_string();
    for cell in ["nightly", "yes", "0 3 * * *", "Europe/Berlin"] {
        assert!(row.contains(cell), "{cell} in {row:?}: {run:#?}");
    }
    let tasks = cli_at(addr, &["task", "list", "--json"]).await.json();
    let nightly = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "nightly")
        .unwrap()
        .clone();
    assert!(
        row.contains(nightly["next_run_at"].as_str().unwrap()),
        "the next run is shown: {row:?} {nightly}"
    );
    let run = cli_at(addr, &["task", "resume", "nightly"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("task nightly resumed"), "{run:#?}");
    let run = cli_at(addr, &["task", "pause", "nope"]).await;
    assert_code(&run, 4);
    assert!(run.stderr.contains("no task named `nope`"), "{run:#?}");
    assert!(run.stderr.contains("(HTTP 404)"), "{run:#?}");

    let run = cli_at(addr, &["job", "start", "nightly", "--delay", "10m"]).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("state      scheduled"), "{run:#?}");
    assert!(run.stdout.contains("run at     "), "{run:#?}");
    let run = cli_at(
        addr,
        &[
            "job",
            "start",
            "nightly",
            "--run-at",
            "2099-01-01T03:00:00Z",
            "--json",
        ],
    )
    .await;
    // Far ahead is kept (the past would mean now).
    assert_code(&run, 0);
    assert_eq!(run.json()["state"], "scheduled", "{run:#?}");
    assert_eq!(run.json()["run_at"], "2099-01-01T03:00:00.000Z", "{run:#?}");
    let run = cli_at(
        addr,
        &["job", "start", "nightly", "--run-at", "x", "--delay", "1m"],
    )
    .await;
    assert_code(&run, 2);
    let run = cli_at(addr, &["job", "list", "--state", "scheduled", "--json"]).await;
    assert_code(&run, 0);
    let listed = run.json();
    let listed = listed
        .as_array()
        .or_else(|| listed["jobs"].as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "{run:#?}");
    for job in &listed {
        let id = job["id"].to_string();
        assert_code(&cli_at(addr, &["job", "cancel", &id]).await, 0);
    }
    stop(app).await;
}
