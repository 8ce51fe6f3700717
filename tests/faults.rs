//! The fault suite (issue 9): each test injects one fault into a running `shiftd` (the real
//! binary) and checks the promise by counting what the jobs themselves recorded — their
//! executions in a ledger file (`tests/common/faults.rs`) — rather than what the API says.
//!
//! Every test ends by checking that no job process it started is still alive. Tests that
//! mount file systems need root and say so when skipped; the SIGKILL loop is slow
//! (`SLOW_TESTS=1`). Each test uses its own workdir, port, mount and database, so the file
//! runs beside the other suites.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::faults::*;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::time::Instant;

/// Stops the service gracefully (whatever its exit code), then checks that no job process
/// of the test is left.
async fn stop_and_check_processes(app: &Shiftd, ledger: &Ledger) {
    if app.exit_code().is_none() {
        app.sigterm();
        if app.try_wait_exit(secs(30)).await.is_none() {
            app.signal(Signal::SIGKILL);
            app.wait_exit(secs(5)).await;
        }
    }
    ledger.processes().assert_none_left().await;
}

/// Waits until every id has a final state; returns those that did not reach one.
async fn wait_all_final(addr: std::net::SocketAddr, ids: &[i64], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for &id in ids {
            match job(addr, id).await {
                Some(j) if is_final(&j) => {}
                Some(j) => pending.push(format!("{id}: {}", state(&j))),
                None => pending.push(format!("{id}: missing (404)")),
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            return pending;
        }
        tokio::time::sleep(millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Finding 1: SQLite on a full disk, and on a disk turned read-only.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum DiskFault {
    Full,
    ReadOnly,
}

impl DiskFault {
    fn reason(self) -> &'static str {
        match self {
            DiskFault::Full => "disk full",
            DiskFault::ReadOnly => "read-only",
        }
    }
}

/// Where the database lives for a disk-fault test.
enum Disk {
    Tmpfs(Tmpfs),
    Ext4(Ext4Loop),
}

impl Disk {
    fn path(&self) -> &std::path::Path {
        match self {
            Disk::Tmpfs(t) => &t.path,
            Disk::Ext4(e) => &e.path,
        }
    }
}

/// The body of both disk tests: a running `gate` job and a queued `count` job when the
/// fault hits; while it lasts the API answers 503 naming it, `/readyz` and `STATUS=` name
/// it, and the queued job is never started; every 202 stays a real job; after the fault
/// is cleared the service works again and `count` runs exactly once.
async fn sqlite_disk_fault(fault: DiskFault, test: &str) {
    if skip_unless_root(test) {
        return;
    }
    let dir = Workdir::new();
    let ledger = Ledger::new(&dir.path().join("ledger"));
    let _reaper = ledger.reaper();
    let mut disk = match fault {
        DiskFault::Full => Disk::Tmpfs(Tmpfs::mount(&dir.path().join("state"), "2m")),
        DiskFault::ReadOnly => Disk::Ext4(Ext4Loop::mount(
            &dir.path().join("state.img"),
            &dir.path().join("state"),
            16,
        )),
    };
    let b = Shiftd::builder()
        .dir(&dir)
        .set(
            "database.url",
            format!("sqlite://{}/shiftd.db", disk.path().display()),
        )
        .set("jobs.workers", 1)
        .set("jobs.lease", "4s")
        .set("jobs.poll_interval", "100ms")
        .set("jobs.log_flush_interval", "100ms")
        .toml(&ledger.task("gate", "file:go", ""))
        .toml(&ledger.task("count", "0", ""));
    let mut app = b.clone().start().await;
    let addr = app.addr;
    let mut v = Verdict::default();

    let gate = submit_ok(addr, "gate").await;
    ledger.wait_start(gate, secs(10)).await;
    let count = submit_ok(addr, "count").await;
    assert_eq!(state(&job(addr, count).await.unwrap()), "queued");

    match &disk {
        Disk::Tmpfs(t) => t.fill(),
        Disk::Ext4(e) => e.make_read_only(),
    }
    let starts_before = ledger.read().total();
    // The running job ends now: its outcome cannot be written while the fault lasts.
    ledger.touch("go");
    let reason = fault.reason();

    // An observation window of 7 s, paced by the requests themselves: 70 claim polls at
    // jobs.poll_interval = 100ms, and past the gate job's lease (4s), so a claim of the
    // queued job or a re-claim of the gate would both show. Every answer must name the
    // fault, and no execution may start.
    let mut accepted = Vec::new();
    let (mut posts, mut ready_ok) = (BTreeMap::<u16, usize>::new(), 0);
    let mut ready_fault_seen = false;
    let window = Instant::now();
    let c = client();
    while window.elapsed() < secs(7) {
        match request(&c, "POST", addr, "/v1/tasks/count/jobs").await {
            Ok((202, body)) => {
                *posts.entry(202).or_default() += 1;
                if let Some(id) = body["id"].as_i64() {
                    accepted.push(id);
                }
            }
            Ok((code, body)) => {
                *posts.entry(code).or_default() += 1;
                let good = code == 503
                    && body["error"] == "unavailable"
                    && body["message"].as_str().is_some_and(|m| m.contains(reason));
                if !good && posts[&code] == 1 {
                    v.fail(format!("POST while {reason}: {code} {body}"));
                }
            }
            Err(e) => v.fail(format!("POST while {reason}: {e}")),
        }
        // The service may need a failed write to notice (a POST is one): /readyz gets
        // 2 s to say so, and must not turn ready again while the fault lasts.
        match request(&c, "GET", addr, "/readyz").await {
            Ok((503, body)) if body.to_string().contains(reason) => {
                ready_fault_seen = true;
            }
            Ok((code, body)) if ready_fault_seen || window.elapsed() > secs(2) => {
                ready_ok += 1;
                if ready_ok == 1 {
                    v.fail(format!(
                        "/readyz {:?} into the fault: {code} {body}",
                        window.elapsed()
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => v.fail(format!("/readyz while {reason}: {e}")),
        }
        tokio::time::sleep(millis(100)).await;
    }
    v.check(!posts.contains_key(&202), || {
        format!("POSTs while {reason} answered {posts:?} (202 with ids {accepted:?})")
    });
    let distinct: std::collections::BTreeSet<i64> = accepted.iter().copied().collect();
    v.check(distinct.len() == accepted.len(), || {
        format!("one id handed out for several new jobs (never stored?): {accepted:?}")
    });
    // STATUS= says why (refreshed every 2 s when it changes): it had 7 s.
    let status = app
        .notify
        .try_wait_for(secs(1), |d| {
            d.value("STATUS").is_some_and(|s| s.contains(reason))
        })
        .await;
    v.check(status.is_some(), || {
        format!(
            "no STATUS= naming {reason:?} while it lasted; STATUS lines: {:?}",
            app.notify
                .all()
                .iter()
                .filter_map(|d| d.value("STATUS").map(str::to_string))
                .collect::<Vec<_>>()
        )
    });
    let during = ledger.read();
    v.check(during.runs(count) == 0, || {
        format!(
            "the queued job {count} was started {} times while the disk was {reason}",
            during.runs(count)
        )
    });
    v.check(during.total() == starts_before, || {
        format!(
            "{} executions started while the disk was {reason} (gate {}, count {})",
            during.total() - starts_before,
            during.runs(gate),
            during.runs(count)
        )
    });
    let claims = app
        .stderr
        .all()
        .iter()
        .filter(|l| l.text.contains("cannot claim"))
        .count();
    eprintln!("{test}: while {reason}: POSTs {posts:?}, executions of job {count}: {}, 'cannot claim' warnings: {claims}", during.runs(count));

    // Clear the fault. Full: delete the filler, the service recovers by itself. Read-only:
    // an ext4 error lasts until the file system is checked and mounted again, which needs
    // the service stopped; it must stop within its budget and start again on the same file.
    match fault {
        DiskFault::Full => {
            if let Disk::Tmpfs(t) = &disk {
                t.unfill();
            }
        }
        DiskFault::ReadOnly => {
            app.sigterm();
            let code = app.try_wait_exit(secs(70)).await;
            v.check(code.is_some(), || {
                "the service did not stop within 70 s on a read-only disk".into()
            });
            if code.is_none() {
                app.signal(Signal::SIGKILL);
                app.wait_exit(secs(5)).await;
            }
            // Its job processes went with it (or are killed now: the remount needs them gone).
            let left = ledger.processes().gone_within(secs(2)).await;
            v.check(left.is_empty(), || {
                format!("job processes outlived the stopped service: {left:?}")
            });
            disk = match disk {
                Disk::Ext4(e) => Disk::Ext4(e.repair()),
                other => other,
            };
            app = b.clone().start().await;
        }
    }
    let addr = app.addr;
    let deadline = Instant::now() + secs(20);
    loop {
        if let Ok((200, _)) = request(&c, "GET", addr, "/readyz").await {
            break;
        }
        if Instant::now() >= deadline {
            v.fail("/readyz not 200 within 20 s after the fault was cleared");
            break;
        }
        tokio::time::sleep(millis(100)).await;
    }
    let (code, body) = submit(addr, "count").await;
    v.check(code == 202, || {
        format!("POST after recovery: {code} {body}")
    });
    let after = body["id"].as_i64();
    v.check(!after.is_some_and(|id| distinct.contains(&id)), || {
        format!("the job made after recovery got id {after:?}, already handed out during the fault")
    });
    let gate_job = wait_job(addr, gate, "final", secs(30), is_final).await;
    let mut check_ids = vec![count];
    check_ids.extend(after);
    let missing = wait_all_final(addr, &check_ids, secs(20)).await;
    v.check(missing.is_empty(), || {
        format!("jobs not final after recovery: {missing:?}")
    });
    // Ids handed out with a 202 while the disk was faulty must exist (and end).
    let lost = wait_all_final(addr, &accepted, secs(10)).await;
    v.check(lost.is_empty(), || {
        format!("202s during the fault whose job is missing or not final: {lost:?}")
    });
    let ex = ledger.read();
    for id in check_ids {
        v.check(ex.runs(id) == 1, || {
            format!(
                "job {id} ran {} times (ledger), expected exactly once",
                ex.runs(id)
            )
        });
    }
    v.check(ex.overlaps.is_empty(), || {
        format!("overlaps: {:?}", ex.overlaps)
    });
    eprintln!(
        "{test}: gate ended {} (attempts {}), count ran {} times",
        state(&gate_job),
        gate_job["attempts"],
        ex.runs(count)
    );
    stop_and_check_processes(&app, &ledger).await;
    drop(app);
    drop(disk);
    v.finish(test);
}

/// Finding 1: SQLite on a full disk. The API must answer 503 `disk full` instead of a 202
/// whose job was never stored, `/readyz` and `STATUS=` must say `disk full`, and the queued
/// job must not be claimed (and run) over and over while its claim cannot be written; once
/// space is freed the service recovers by itself and the job runs exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_disk_full() {
    sqlite_disk_fault(DiskFault::Full, "sqlite_disk_full").await;
}

/// Finding 1 (read-only variant): the database's file system turns read-only under the
/// running service (ext4 `errors=remount-ro` after an I/O error; a tmpfs cannot be made
/// read-only while files are open for writing). 503 `read-only`, `/readyz` and `STATUS=`
/// say so, the queued job never starts; after the file system is repaired and the service
/// restarted, the job runs exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_read_only() {
    sqlite_disk_fault(DiskFault::ReadOnly, "sqlite_read_only").await;
}

// ---------------------------------------------------------------------------------------
// Finding 2: a PostgreSQL stall longer than the lease.
// ---------------------------------------------------------------------------------------

/// Finding 2: PostgreSQL stalls (the `jobs` table locked) for longer than the lease while
/// a job runs. A second node sees the lease expire the moment the stall ends; the first
/// must have stopped its job by then (it could not renew), so the job never runs twice at
/// once (the job's own `flock` proves it), and it still reaches a final state with a log
/// that says what happened to the lease.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stall_longer_than_lease() {
    let (b, db) = builder(Backend::Postgres).await;
    let db = db.unwrap();
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let b = b.set("jobs.lease", "3s").toml(&ledger.task(
        "count",
        "10",
        "concurrency = 1\nkill_grace = \"1s\"",
    ));
    let a = b.clone().start().await;
    let id = submit_ok(a.addr, "count").await;
    ledger.wait_start(id, secs(10)).await;
    // A second node on the same queue, idle, ready to claim what it sees expire.
    let other = b
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    let stall = stall_jobs_table(&db.url).await;
    let stalled = Instant::now();
    // The fault's length: 8 s, more than twice the lease.
    tokio::time::sleep(secs(8)).await;
    // The lease expired at least 5 s ago (no renewal could be written since the stall
    // began): the first execution must be gone before the stall ends, or the other node
    // takes the job the moment it does while it still runs.
    let still_running = ledger.running(id);
    let into_stall = stalled.elapsed();
    stall.release().await;
    let job = wait_job(a.addr, id, "final", secs(45), is_final).await;
    let ex = ledger.read();
    let (_, log) = job_log(a.addr, id).await;
    let log = String::from_utf8_lossy(&log).into_owned();
    eprintln!(
        "stall: job {id} ended {} after {} attempts; executions {}; overlaps {:?}",
        state(&job),
        job["attempts"],
        ex.runs(id),
        ex.overlaps
    );
    let mut v = Verdict::default();
    v.check(!still_running, || {
        format!(
            "job {id}'s first execution still ran {into_stall:?} into the stall, 5 s past its 3 s lease"
        )
    });
    v.check(ex.overlaps.is_empty(), || {
        format!(
            "two executions of job {id} at once: {:?}\nledger: {:?}",
            ex.overlaps, ex.lines
        )
    });
    v.check(state(&job) == "succeeded", || format!("job ended {job}"));
    v.check(log.contains("lease"), || {
        format!("its log does not mention the lease:\n{log}")
    });
    stop_and_check_processes(&other, &ledger).await;
    stop_and_check_processes(&a, &ledger).await;
    v.finish("postgres_stall_longer_than_lease");
}

// ---------------------------------------------------------------------------------------
// Finding 3: output PostgreSQL's text type refuses.
// ---------------------------------------------------------------------------------------

/// Finding 3: a job printing NUL and invalid UTF-8 on PostgreSQL. Its output must be stored
/// (NUL as U+2400 `␀`, invalid bytes as U+FFFD) instead of jamming the output buffer, so it
/// and the 20 jobs after it each finish within seconds, with their output.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_nul_and_invalid_utf8_output() {
    let (b, _db) = builder(Backend::Postgres).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let app = b
        .toml(&ledger.tagged_task(
            "bad",
            r#"["/usr/bin/printf", 'a\000b\n\377\376\nafter\n']"#,
            "",
        ))
        .toml(&ledger.tagged_task(
            "echo",
            r#"["/bin/sh", "-c", "echo echo-output-$JOB_ID"]"#,
            "concurrency = 4",
        ))
        .start()
        .await;
    let addr = app.addr;
    let mut v = Verdict::default();
    let started = Instant::now();
    let bad = submit_ok(addr, "bad").await;
    let mut echoes = Vec::new();
    for _ in 0..20 {
        echoes.push(submit_ok(addr, "echo").await);
    }
    // Generous bounds (each job takes milliseconds), well below the ~30 s a jammed
    // output buffer costs each job.
    let bad_job = wait_job(addr, bad, "final", secs(40), is_final).await;
    let bad_took = started.elapsed();
    v.check(bad_took < secs(5), || {
        format!("the bad job took {bad_took:?} to end")
    });
    v.check(state(&bad_job) == "succeeded", || {
        format!("bad job: {bad_job}")
    });
    let not_final = wait_all_final(addr, &echoes, secs(15)).await;
    v.check(not_final.is_empty(), || {
        format!("echo jobs not final 15 s after the bad one ended: {not_final:?}")
    });
    for &id in &echoes {
        let j = job(addr, id).await.unwrap();
        v.check(state(&j) == "succeeded" || !is_final(&j), || {
            format!("echo job: {j}")
        });
    }
    let all_took = started.elapsed();
    v.check(all_took < secs(15), || {
        format!("21 small jobs took {all_took:?} (each should take well under a second)")
    });
    for &id in &echoes {
        let (_, log) = job_log(addr, id).await;
        let log = String::from_utf8_lossy(&log);
        v.check(log.contains(&format!("echo-output-{id}")), || {
            format!("echo job {id}'s output was not stored: {log:?}")
        });
    }
    let (_, log) = job_log(addr, bad).await;
    let log = String::from_utf8_lossy(&log).into_owned();
    v.check(log.contains("a\u{2400}b"), || {
        format!("no `a␀b` in the bad job's log: {log:?}")
    });
    v.check(log.contains('\u{FFFD}'), || {
        format!("no U+FFFD in the bad job's log: {log:?}")
    });
    v.check(log.contains("after"), || {
        format!("the line after the bad bytes is missing: {log:?}")
    });
    eprintln!("nul/utf-8: bad job ended in {bad_took:?}, all 21 in {all_took:?}");
    stop_and_check_processes(&app, &ledger).await;
    v.finish("postgres_nul_and_invalid_utf8_output");
}

// ---------------------------------------------------------------------------------------
// Findings 4 and 5: output volume.
// ---------------------------------------------------------------------------------------

/// Reads a job's whole log, page by page when the server pages it (`?after=SEQ&limit=N`
/// with `Link: <...>; rel="next"`), else in one response.
async fn read_whole_log(addr: std::net::SocketAddr, id: i64) -> String {
    let c = client();
    let mut url = format!("http://{addr}/v1/jobs/{id}/log?limit=10000");
    let mut text = String::new();
    for _ in 0..1000 {
        let r = c.get(&url).send().await.expect("GET log");
        assert_eq!(r.status(), 200, "GET {url}");
        let next = r
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .filter(|l| l.contains("rel=\"next\""))
            .and_then(|l| {
                let (start, end) = (l.find('<')?, l.find('>')?);
                Some(l[start + 1..end].to_string())
            });
        text.push_str(&r.text().await.expect("log body"));
        match next {
            Some(n) if n.starts_with("http") => url = n,
            Some(n) => url = format!("http://{addr}{n}"),
            None => return text,
        }
    }
    panic!("more than 1000 pages of log");
}

/// Finding 4: output faster than the database takes it is slowed down (back-pressure on
/// the job's pipe), never dropped: 300,000 lines with a 64 KiB output buffer are all
/// stored, in order, and no `dropping` warning is logged.
#[tokio::test(flavor = "multi_thread")]
async fn output_back_pressure_drops_nothing() {
    let (b, _db) = builder(Backend::Sqlite).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let app = b
        .set("jobs.output_buffer", "64KiB")
        .set("jobs.max_output", "64MiB")
        .toml(&ledger.tagged_task("many", r#"["/usr/bin/seq", "1", "300000"]"#, ""))
        .start()
        .await;
    let id = submit_ok(app.addr, "many").await;
    let j = wait_job(app.addr, id, "final", secs(90), is_final).await;
    assert_eq!(state(&j), "succeeded", "{j}");
    let log = read_whole_log(app.addr, id).await;
    let numbers: Vec<u64> = log.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let mut v = Verdict::default();
    v.check(numbers.len() == 300_000, || {
        format!("{} numbered lines stored, 300000 printed", numbers.len())
    });
    let out_of_order = numbers
        .iter()
        .enumerate()
        .find(|(i, n)| **n != *i as u64 + 1)
        .map(|(i, n)| (i, *n));
    v.check(out_of_order.is_none(), || {
        format!("line {:?} (index, number) breaks 1..300000", out_of_order)
    });
    v.check(!app.stderr.contains("dropping"), || {
        "the service logged that it dropped output".into()
    });
    stop_and_check_processes(&app, &ledger).await;
    v.finish("output_back_pressure_drops_nothing");
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Finding 5: a job printing ~50 MB keeps at most `max_output` of it (plus a marker saying
/// what was discarded), succeeds, and the service's memory stays bounded; a task's own
/// `max_output` overrides the service default.
#[tokio::test(flavor = "multi_thread")]
async fn output_cap() {
    let (b, _db) = builder(Backend::Sqlite).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let flood = r#"["/bin/sh", "-c", "yes 0123456789 | head -c 50000000"]"#;
    let app = b
        .set("jobs.max_output", "1MiB")
        .toml(&ledger.tagged_task("flood", flood, ""))
        .toml(&ledger.tagged_task("t", flood, "max_output = \"100KiB\""))
        .start()
        .await;
    let mut v = Verdict::default();
    for (task, cap) in [("flood", 1u64 << 20), ("t", 100 << 10)] {
        let id = submit_ok(app.addr, task).await;
        let j = wait_job(app.addr, id, "final", secs(90), is_final).await;
        v.check(state(&j) == "succeeded", || format!("{task}: {j}"));
        let log = read_whole_log(app.addr, id).await;
        let limit = cap + cap / 10;
        v.check(log.len() as u64 <= limit, || {
            format!("{task}: {} bytes of output stored, cap {cap}", log.len())
        });
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        v.check(
            tail.iter()
                .any(|l| l.contains("max_output") && l.contains("discarded")),
            || format!("{task}: no marker naming max_output and what was discarded in {tail:?}"),
        );
    }
    let rss = peak_rss(app.pid);
    eprintln!("output cap: shiftd peak RSS {} MB", rss >> 20);
    v.check(rss < 150 << 20, || format!("peak RSS {} MB", rss >> 20));
    stop_and_check_processes(&app, &ledger).await;
    v.finish("output_cap");
}

// ---------------------------------------------------------------------------------------
// Finding 6: retention.
// ---------------------------------------------------------------------------------------

/// Finding 6: finished jobs and their output are deleted after `jobs.retain`, never a
/// queued or running one; the database's size is reported in `/v1/status` and `/metrics`.
async fn retention(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let app = b
        .set("jobs.retain", "2s")
        .toml(&ledger.task("quick", "0", "concurrency = 4"))
        .toml(&ledger.task("held", "file:release", "concurrency = 1"))
        .start()
        .await;
    let addr = app.addr;
    let mut v = Verdict::default();
    let running = submit_ok(addr, "held").await;
    ledger.wait_start(running, secs(10)).await;
    let queued = submit_ok(addr, "held").await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(submit_ok(addr, "quick").await);
    }
    for &id in &done {
        wait_job(addr, id, "succeeded", secs(10), |j| state(j) == "succeeded").await;
    }
    // Within a bounded wait the finished jobs are gone, log included.
    let deadline = Instant::now() + secs(20);
    let mut left = done.clone();
    while !left.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for &id in &left {
            if job(addr, id).await.is_some() {
                still.push(id);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(millis(200)).await;
        }
    }
    v.check(left.is_empty(), || {
        format!("finished jobs {left:?} still there 20 s after jobs.retain = 2s")
    });
    for &id in &done {
        let (code, _) = job_log(addr, id).await;
        v.check(code == 404, || {
            format!("job {id}'s log answers {code} after deletion")
        });
    }
    // The running and the queued job outlived the retention by far: both still there.
    for (id, want) in [(running, "running"), (queued, "queued")] {
        match job(addr, id).await {
            Some(j) => v.check(state(&j) == want, || format!("job {id}: {j}")),
            None => v.fail(format!("the {want} job {id} was deleted")),
        }
    }
    let (_, status) = request(&client(), "GET", addr, "/v1/status").await.unwrap();
    v.check(status["database"]["size_bytes"].is_u64(), || {
        format!(
            "/v1/status has no database.size_bytes: {}",
            status["database"]
        )
    });
    v.check(status["jobs"].is_object(), || {
        format!("/v1/status has no job counts by state: {}", status["jobs"])
    });
    let (_, metrics) = request(&client(), "GET", addr, "/metrics").await.unwrap();
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    v.check(metrics.contains("shiftd_database_size_bytes"), || {
        "/metrics has no shiftd_database_size_bytes".into()
    });
    ledger.touch("release");
    wait_all_final(addr, &[running, queued], secs(10)).await;
    stop_and_check_processes(&app, &ledger).await;
    v.finish(&format!("retention ({backend:?})"));
}

/// Finding 6: retention on SQLite (see `retention`).
#[tokio::test(flavor = "multi_thread")]
async fn retention_sqlite() {
    retention(Backend::Sqlite).await;
}

/// Finding 6: retention on PostgreSQL (see `retention`).
#[tokio::test(flavor = "multi_thread")]
async fn retention_postgres() {
    retention(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Finding 7: nodes with different task sets on one queue.
// ---------------------------------------------------------------------------------------

/// Finding 7: node A serves tasks `extra` and `count`, node B only `count`, on one
/// PostgreSQL. `extra` jobs queued through A while A is busy must survive B's start and
/// A's absence: B neither fails nor runs them, reports them as `unserved`, and when A
/// comes back they run, each once.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_with_different_tasks() {
    let (b, _db) = builder(Backend::Postgres).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let count = ledger.task(
        "count",
        "file:release",
        "on_shutdown = \"requeue\"\nkill_grace = \"1s\"",
    );
    let a_builder = b
        .clone()
        .set("jobs.workers", 1)
        .toml(&count)
        .toml(&ledger.task("extra", "0", ""));
    let a = a_builder.clone().start().await;
    // A's only worker is busy, so the extra jobs stay queued.
    let busy = submit_ok(a.addr, "count").await;
    ledger.wait_start(busy, secs(10)).await;
    let mut extras = Vec::new();
    for _ in 0..3 {
        extras.push(submit_ok(a.addr, "extra").await);
    }
    let node_b = b
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
        .toml(&count)
        .start()
        .await;
    a.sigterm();
    a.wait_exit(secs(20)).await;
    let mut v = Verdict::default();
    // B reports them as unserved, or (the bug) fails them: whichever comes first, bounded.
    let deadline = Instant::now() + secs(10);
    let unserved = loop {
        let (_, status) = request(&client(), "GET", node_b.addr, "/v1/status")
            .await
            .unwrap();
        let n = status["unserved"]["extra"].as_i64();
        let mut any_final = false;
        for &id in &extras {
            any_final |= job(node_b.addr, id).await.is_some_and(|j| is_final(&j));
        }
        if n.is_some() || any_final || Instant::now() >= deadline {
            break (n, status);
        }
        tokio::time::sleep(millis(200)).await;
    };
    for &id in &extras {
        let j = job(node_b.addr, id).await.unwrap();
        v.check(state(&j) == "queued" && j["attempts"] == 0, || {
            format!("node B touched a job of a task it does not serve: {j}")
        });
    }
    v.check(unserved.0 == Some(extras.len() as i64), || {
        format!(
            "B's /v1/status shows no \"unserved\": {{\"extra\": {}}}: {}",
            extras.len(),
            unserved.1
        )
    });
    v.check(extras.iter().all(|id| ledger.read().runs(*id) == 0), || {
        "an extra job ran while no node served it".into()
    });
    // A comes back: the extra jobs run, each once.
    let a2 = a_builder.start().await;
    ledger.touch("release");
    let not_done = wait_all_final(a2.addr, &extras, secs(20)).await;
    v.check(not_done.is_empty(), || {
        format!("extra jobs not final: {not_done:?}")
    });
    for &id in &extras {
        let j = job(a2.addr, id).await.unwrap();
        v.check(state(&j) == "succeeded", || {
            format!("extra job after A's return: {j}")
        });
        v.check(ledger.read().runs(id) == 1, || {
            format!("extra job {id} ran {} times", ledger.read().runs(id))
        });
    }
    wait_all_final(a2.addr, &[busy], secs(20)).await;
    stop_and_check_processes(&node_b, &ledger).await;
    stop_and_check_processes(&a2, &ledger).await;
    v.finish("nodes_with_different_tasks");
}

// ---------------------------------------------------------------------------------------
// Finding 9: SIGKILL, again and again.
// ---------------------------------------------------------------------------------------

/// Finding 9: the service is SIGKILLed 10 times at random moments while ~40 short jobs run
/// (restarted each time on the same database). Every 202 reaches a final state, no job
/// ever runs twice at once, and the job processes of a killed service die with it
/// (`PR_SET_PDEATHSIG`): none is alive 2 s after the kill, and none writes its `end` line
/// after it.
async fn sigkill_loop(backend: Backend) {
    let test = format!("sigkill_loop ({backend:?})");
    if skip_unless_slow(&test) {
        return;
    }
    let (b, _db) = builder(backend).await;
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let b = b.set("jobs.lease", "2s").toml(&ledger.task(
        "count",
        "auto",
        "concurrency = 4\nmax_attempts = 10\nretry_backoff = \"100ms\"",
    ));
    let mut ids = Vec::new();
    let mut v = Verdict::default();
    let mut kills = Vec::new(); // (service pid, kill time in ms)
    let mut survivors = 0;
    for round in 0..10 {
        let app = b.clone().start().await;
        for _ in 0..4 {
            ids.push(submit_ok(app.addr, "count").await);
        }
        // A random moment within the next 1.5 s (jobs take 0.3–0.9 s).
        let pause = millis(100 + rand::random::<u64>() % 1400);
        tokio::time::sleep(pause).await;
        let at = now_ms();
        app.signal(Signal::SIGKILL);
        app.wait_exit(secs(5)).await;
        kills.push((app.pid.as_raw(), at));
        let left = ledger.processes().gone_within(secs(2)).await;
        if !left.is_empty() {
            survivors += left.len();
            v.fail(format!(
                "round {round}: job processes {left:?} alive 2 s after their service was SIGKILLed"
            ));
        }
    }
    let app = b.clone().start().await;
    let lost = wait_all_final(app.addr, &ids, secs(60)).await;
    let ex = ledger.read();
    // An execution that wrote `end` well after its service was killed outlived it.
    let late_ends: Vec<&LedgerLine> = ex
        .lines
        .iter()
        .filter(|l| l.kind == "end")
        .filter(|l| {
            kills
                .iter()
                .any(|(pid, at)| *pid == l.ppid && l.at_ms > at + 100)
        })
        .collect();
    eprintln!(
        "{test}: submitted {}, executions {}, run more than once {:?}, overlaps {}, lost {}, \
         ends written after their service died {}, processes alive 2 s after a kill {survivors}",
        ids.len(),
        ex.total(),
        ex.repeated(),
        ex.overlaps.len(),
        lost.len(),
        late_ends.len()
    );
    v.check(lost.is_empty(), || format!("202s not final: {lost:?}"));
    v.check(ex.overlaps.is_empty(), || {
        format!("overlaps: {:?}", ex.overlaps)
    });
    v.check(late_ends.is_empty(), || {
        format!("executions that outlived their killed service: {late_ends:?}")
    });
    stop_and_check_processes(&app, &ledger).await;
    v.finish(&test);
}

/// Finding 9: the SIGKILL loop on SQLite (see `sigkill_loop`).
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loop_sqlite() {
    sigkill_loop(Backend::Sqlite).await;
}

/// Finding 9: the SIGKILL loop on PostgreSQL (see `sigkill_loop`).
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loop_postgres() {
    sigkill_loop(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Finding 13: PostgreSQL connections killed under load.
// ---------------------------------------------------------------------------------------

/// Finding 13: while every connection to the database is terminated every few
/// milliseconds, 300 mixed requests (POST with an Idempotency-Key, GET a job, list) are
/// answered 2xx or 503, never 500 or a dropped connection; every job that got a 202
/// reaches a final state, and no job runs twice at once (a rerun is reported).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_kills_under_load() {
    let (b, db) = builder(Backend::Postgres).await;
    let db = db.unwrap();
    let work = Workdir::new();
    let ledger = Ledger::new(&work.path().join("ledger"));
    let _reaper = ledger.reaper();
    let app = b
        .toml(&ledger.task(
            "count",
            "0.1",
            "concurrency = 4\nmax_attempts = 10\nretry_backoff = \"100ms\"",
        ))
        .start()
        .await;
    let addr = app.addr;
    let first = submit_ok(addr, "count").await;
    let killer = BackendKiller::start(&db.name, millis(5)).await;
    let c = client();
    let mut answers = BTreeMap::<String, usize>::new();
    let mut bad = Vec::new();
    let mut accepted = vec![first];
    // Ids answered per Idempotency-Key: a client retries a 503 with the same key, and
    // must end up with one job per key however many tries it took.
    let mut by_key = BTreeMap::<String, Vec<(u16, i64)>>::new();
    let mut pending_keys = Vec::<String>::new();
    for i in 0..300 {
        let (method, path, key) = match i % 3 {
            0 => {
                // A retry of an unanswered key first, else a new key.
                let key = pending_keys.pop().unwrap_or_else(|| format!("k-{i}"));
                ("POST", "/v1/tasks/count/jobs".to_string(), Some(key))
            }
            1 => (
                "GET",
                format!("/v1/jobs/{}", accepted[accepted.len() - 1]),
                None,
            ),
            _ => ("GET", "/v1/jobs?limit=20".to_string(), None),
        };
        let mut req = c.request(method.parse().unwrap(), format!("http://{addr}{path}"));
        if let Some(k) = &key {
            req = req.header("idempotency-key", k);
        }
        match req.send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                *answers.entry(format!("{method} {code}")).or_default() += 1;
                if let Some(k) = &key {
                    match (code, body["id"].as_i64()) {
                        (200 | 202, Some(id)) => {
                            by_key.entry(k.clone()).or_default().push((code, id))
                        }
                        _ => pending_keys.push(k.clone()),
                    }
                }
                if code == 202 {
                    accepted.push(body["id"].as_i64().expect("id"));
                }
                if !(200..300).contains(&code) && code != 503 && bad.len() < 10 {
                    bad.push(format!("{method} {path}: {code} {body}"));
                }
            }
            Err(e) => {
                *answers.entry(format!("{method} error")).or_default() += 1;
                if let Some(k) = key {
                    pending_keys.push(k);
                }
                if bad.len() < 10 {
                    bad.push(format!("{method} {path}: {e}"));
                }
            }
        }
    }
    let terminated = killer.stop().await;
    let lost = wait_all_final(addr, &accepted, secs(60)).await;
    let ex = ledger.read();
    eprintln!(
        "backend kills: {terminated} connections terminated; answers {answers:?}; jobs with a 202 {}, \
         executions {}, run more than once {:?}, overlaps {}, not final {}",
        accepted.len(),
        ex.total(),
        ex.repeated(),
        ex.overlaps.len(),
        lost.len()
    );
    let mut v = Verdict::default();
    v.check(terminated > 0, || {
        "no connection was terminated: the test proved nothing".into()
    });
    let split: Vec<_> = by_key
        .iter()
        .filter(|(_, answers)| {
            let ids: std::collections::BTreeSet<i64> = answers.iter().map(|(_, id)| *id).collect();
            ids.len() > 1 || answers.iter().filter(|(code, _)| *code == 202).count() > 1
        })
        .collect();
    v.check(split.is_empty(), || {
        format!("Idempotency-Keys that made more than one job: {split:?}")
    });
    v.check(bad.is_empty(), || {
        format!("answers other than 2xx/503: {bad:?}")
    });
    v.check(lost.is_empty(), || format!("202s not final: {lost:?}"));
    v.check(ex.overlaps.is_empty(), || {
        format!("overlaps: {:?}", ex.overlaps)
    });
    stop_and_check_processes(&app, &ledger).await;
    v.finish("postgres_backend_kills_under_load");
}
