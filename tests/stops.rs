//! The stop history with the real binary: a SIGTERM's stop is recorded in
//! `shiftd-data/stops.json` with each stage's setting, budget, duration, cut flag and
//! outcome; the next process reports it in `/metrics`; a hand-over adds a "hand-over" entry,
//! and the newest stop comes first.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

/// The history as the file holds it (newest first).
fn history(app: &Shiftd) -> Vec<Value> {
    let path = app.workdir().path().join("shiftd-data").join("stops.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}\n{}", path.display(), app.dump()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn stage<'a>(entry: &'a Value, name: &str) -> &'a Value {
    entry["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {entry}"))
}

/// Waits for a process this test did not spawn (the hand-over's successor) to exit, on
/// its pidfd.
async fn wait_gone(pid: i32, timeout: Duration) {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped.
    let fd = unsafe { AsyncFd::register(fd) }.expect("register the pidfd");
    assert!(
        tokio::time::timeout(timeout, fd.readable()).await.is_ok(),
        "process {pid} did not exit within {timeout:?}"
    );
}

/// Waits until the job is running (as the API says).
async fn wait_running(app: &Shiftd, id: i64) {
    let deadline = tokio::time::Instant::now() + secs(10);
    loop {
        let job: Value = client()
            .get(format!("http://{}/v1/jobs/{id}", app.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["state"] == "running" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not running: {job}");
        tokio::time::sleep(millis(50)).await;
    }
}

/// Kills the successor whatever happens to the test.
struct Kill(i32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn each_stop_is_recorded_with_its_stages_and_a_hand_over_adds_its_own_entry() {
    // A job that outlives jobs_drain: the jobs stage is cut and names its setting.
    // It runs until the test creates `release`, so the next process finishes it at once.
    let builder = Shiftd::builder()
        .set("shutdown.http_drain", "7s")
        .set("shutdown.jobs_drain", "1s");
    let dir = builder.workdir().path().to_path_buf();
    let first = builder
        .toml(&format!(
            "[tasks.held]\ncommand = [\"/bin/sh\", \"-c\", \"while [ ! -e release ]; do sleep 0.05; done\"]\nworking_dir = \"{}\"\n",
            dir.display()
        ))
        .start()
        .await;
    let r = client()
        .post(format!("http://{}/v1/tasks/held/jobs", first.addr))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    wait_running(&first, id).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    first.sigterm();
    assert_eq!(
        first.wait_exit(secs(20)).await,
        75,
        "the jobs stage cut work"
    );

    let entries = history(&first);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let stop = &entries[0];
    assert_eq!(stop["kind"], "stop");
    assert_eq!(stop["version"], env!("CARGO_PKG_VERSION"));
    assert!(stop["at"].as_i64().unwrap() >= before - 1, "{stop}");
    let names: Vec<&str> = stop["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["stop-accepting", "http-drain", "jobs", "flush", "db-close"]
    );
    let http = stage(stop, "http-drain");
    assert_eq!(http["setting"], "shutdown.http_drain");
    assert_eq!(http["budget_ms"], 7000);
    assert_eq!(http["cut"], false);
    assert!(
        http["note"].as_str().unwrap().contains("requests drained"),
        "{http}"
    );
    let jobs = stage(stop, "jobs");
    assert_eq!(jobs["setting"], "shutdown.jobs_drain");
    assert_eq!(jobs["budget_ms"], 1000);
    assert_eq!(jobs["cut"], true, "{jobs}");
    assert!(jobs["took_ms"].as_u64().unwrap() >= 1000, "{jobs}");
    assert!(!jobs["note"].as_str().unwrap().is_empty(), "{jobs}");
    assert!(stop["elapsed_ms"].as_u64().unwrap() >= 1000);

    // The next process reports the newest stop's stages in /metrics.
    std::fs::write(dir.join("release"), b"").unwrap();
    let second = first.builder_again().start().await;
    let metrics = client()
        .get(format!("http://{}/metrics", second.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("previous_stop_stage_seconds{stage=\"jobs\"}"),
        "{metrics}"
    );

    // A hand-over: the old process records a "hand-over" entry as it exits.
    let out = tokio::process::Command::new(BIN)
        .args(["reload", "--timeout", "30s"])
        .current_dir(second.workdir().path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .await
        .expect("run shiftd reload");
    assert!(out.status.success(), "shiftd reload: {out:?}");
    let handed = second
        .notify
        .wait_for("MAINPID=", secs(5), |d| d.has_key("MAINPID"))
        .await;
    let successor: i32 = handed.value("MAINPID").unwrap().parse().unwrap();
    let _kill = Kill(successor);
    assert_eq!(second.wait_exit(secs(20)).await, 0);
    let entries = history(&second);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["kind"], "hand-over");
    assert_eq!(entries[1]["kind"], "stop");

    // The successor's own stop comes first in the end.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(successor),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_gone(successor, secs(20)).await;
    let entries = history(&second);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[0]["kind"], "stop");
    assert_eq!(entries[1]["kind"], "hand-over");
    let at: Vec<i64> = entries.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first: {at:?}");
}
