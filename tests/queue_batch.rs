//! Batched claims, batched completions and the bulk enqueue endpoint (issue 13, item 5):
//! the store's batch statements on SQLite and PostgreSQL (limits, per-task caps, lease
//! fencing, retries, all-or-nothing inserts, idempotency), and
//! `POST /v1/tasks/{task}/jobs:batch` on the real binary (success, all-or-nothing,
//! idempotent replay, the limit, auth scope).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use shiftd::jobs::store::{Finish, FinishItem, JobState, KeyConflict, NewJob};
use tokio::time::Instant;

const TOKEN_A: &str = "token-a-0123456789abcdef";
const TOKEN_B: &str = "token-b-0123456789abcdef";
const LEASE: Duration = Duration::from_secs(30);

fn new_jobs(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob {
            params: json!({ "i": i.to_string() }),
            idempotency_key: None,
            run_after: None,
        })
        .collect()
}

fn ok() -> Finish {
    Finish {
        state: JobState::Succeeded,
        exit_code: Some(0),
        exit_signal: None,
        error: None,
    }
}

/// Claims take at most `limit` jobs and at most each task's cap, oldest first, in one
/// statement; every job of one claim carries that claim's lease token.
async fn claim_batch_keeps_limit_and_caps(backend: Backend) {
    let (store, _g, _d) = migrated_store(backend).await;
    let a = store
        .enqueue_batch("a", &new_jobs(5), 1, None)
        .await
        .unwrap()
        .unwrap();
    let b = store
        .enqueue_batch("b", &new_jobs(5), 1, None)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<i64> = a.iter().chain(&b).map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids in request order: {ids:?}"
    );
    // No cap binds: the 3 oldest overall.
    let tasks = [("a".to_string(), 10), ("b".to_string(), 10)];
    let got = store.claim_batch("n/1", &tasks, 3, LEASE).await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[..3].to_vec()
    );
    assert!(got
        .iter()
        .all(|j| j.state == JobState::Running && j.attempts == 1));
    assert!(got.iter().all(|j| j.lease_owner.as_deref() == Some("n/1")));
    // Task a capped at 1: one of a, the rest from b.
    let tasks = [("a".to_string(), 1), ("b".to_string(), 10)];
    let got = store.claim_batch("n/2", &tasks, 4, LEASE).await.unwrap();
    let tasks_of: Vec<&str> = got.iter().map(|j| j.task.as_str()).collect();
    assert_eq!(tasks_of, ["a", "b", "b", "b"], "{got:?}");
    // A cap of 0 takes nothing of that task.
    let tasks = [("a".to_string(), 0), ("b".to_string(), 10)];
    let got = store.claim_batch("n/3", &tasks, 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|j| j.task == "b"));
    // A claim of one, as before.
    let one = store.claim("n/4", &["a".to_string()], LEASE).await.unwrap();
    assert_eq!(one.map(|j| j.id), Some(ids[4]));
}

/// A batch of finishes records only the jobs still held under their own lease token
/// (fencing), sends a failure with attempts left back to the queue, and commits once.
async fn finish_batch_is_fenced_by_lease_token(backend: Backend) {
    let (store, _g, _d) = migrated_store(backend).await;
    store
        .enqueue_batch("t", &new_jobs(2), 1, None)
        .await
        .unwrap()
        .unwrap();
    store
        .enqueue_batch("r", &new_jobs(1), 3, None)
        .await
        .unwrap()
        .unwrap();
    let tasks = [("t".to_string(), 10), ("r".to_string(), 10)];
    let jobs = store.claim_batch("n/1", &tasks, 10, LEASE).await.unwrap();
    assert_eq!(jobs.len(), 3);
    let failed = Finish {
        state: JobState::Failed,
        exit_code: Some(3),
        exit_signal: None,
        error: Some("exited with status 3 \0 nul".into()),
    };
    let items = vec![
        FinishItem::new(&jobs[0], "n/1", &ok(), Duration::ZERO),
        // An attempt whose lease was taken over: another token.
        FinishItem::new(&jobs[1], "n/0", &ok(), Duration::ZERO),
        FinishItem::new(&jobs[2], "n/1", &failed, Duration::from_secs(60)),
    ];
    let mut done = store.finish_batch(&items).await.unwrap();
    done.sort();
    assert_eq!(done, vec![jobs[0].id, jobs[2].id]);
    let first = store.get(jobs[0].id).await.unwrap().unwrap();
    assert_eq!(first.state, JobState::Succeeded);
    assert!(first.finished_at.is_some() && first.lease_owner.is_none());
    let fenced = store.get(jobs[1].id).await.unwrap().unwrap();
    assert_eq!(fenced.state, JobState::Running, "not ours: left alone");
    let retry = store.get(jobs[2].id).await.unwrap().unwrap();
    assert_eq!(
        retry.state,
        JobState::Queued,
        "attempts left: back to the queue"
    );
    assert!(retry.finished_at.is_none());
    assert!(
        retry.run_after >= retry.updated_at + 59_000,
        "after its back-off"
    );
    assert_eq!(retry.exit_code, Some(3));
    // The same batch again changes nothing: every row has left `running` under n/1.
    assert_eq!(
        store.finish_batch(&items[..1]).await.unwrap(),
        Vec::<i64>::new()
    );
}

/// A batch insert is one commit in request order; a replayed key returns the existing job;
/// a replayed key with other parameters refuses the whole batch before anything is written.
async fn enqueue_batch_is_all_or_nothing(backend: Backend) {
    let (store, _g, _d) = migrated_store(backend).await;
    let keyed = |k: &str, v: &str| NewJob {
        params: json!({ "v": v }),
        idempotency_key: Some(k.into()),
        run_after: None,
    };
    let first = store
        .enqueue_batch("t", &[keyed("k1", "x"), keyed("k2", "y")], 1, Some("tok"))
        .await
        .unwrap()
        .unwrap();
    assert!(first.iter().all(|e| e.existing_params.is_none()));
    let again = store
        .enqueue_batch("t", &[keyed("k0", "w"), keyed("k2", "y")], 1, Some("tok"))
        .await
        .unwrap()
        .unwrap();
    assert!(again[0].existing_params.is_none());
    assert_eq!(again[1].id, first[1].id);
    assert_eq!(again[1].existing_params, Some(json!({"v": "y"})));
    let refused = store
        .enqueue_batch(
            "t",
            &[keyed("k3", "z"), keyed("k1", "other")],
            1,
            Some("tok"),
        )
        .await
        .unwrap();
    assert_eq!(
        refused,
        Err(KeyConflict {
            index: 1,
            id: first[0].id
        })
    );
    let all = store
        .list(&shiftd::jobs::ListFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.jobs.len(),
        3,
        "nothing of the refused batch: {:?}",
        all.jobs
    );
    // Another token's keys never meet these.
    let other = store
        .enqueue_batch("t", &[keyed("k1", "x")], 1, Some("other"))
        .await
        .unwrap()
        .unwrap();
    assert!(other[0].existing_params.is_none());
}

/// The largest batch `jobs.batch_max` allows goes in whole, its ids in request order, with
/// delayed jobs among them: more binds than one SQLite statement may carry (four a job).
async fn the_largest_batch_goes_in_whole(backend: Backend) {
    let (store, _g, _d) = migrated_store(backend).await;
    let n = shiftd::config::MAX_BATCH as usize;
    let mut jobs = new_jobs(n);
    jobs[n - 1].run_after = Some(shiftd::jobs::store::now_ms() + 86_400_000);
    jobs[n - 1].idempotency_key = Some("last".into());
    let ids: Vec<i64> = store
        .enqueue_batch("t", &jobs, 1, None)
        .await
        .expect("the largest batch is one transaction")
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), n);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in request order");
    let last = store.get(ids[n - 1]).await.unwrap().expect("the last job");
    assert_eq!(last.params, json!({ "i": (n - 1).to_string() }));
    assert_eq!(last.state, JobState::Scheduled);
}

/// A batched finish keeps what each job's outcome says to the byte: quotes, backslashes,
/// line breaks, non-ASCII text, absent and present exit codes and signals, in a batch of
/// many (PostgreSQL and SQLite both bind each value: a VALUES list, no text assembled).
async fn a_batched_finish_keeps_every_outcome_exactly(backend: Backend) {
    let (store, _g, _d) = migrated_store(backend).await;
    store
        .enqueue_batch("t", &new_jobs(40), 1, None)
        .await
        .unwrap()
        .unwrap();
    let jobs = store
        .claim_batch("n/1", &[("t".to_string(), 40)], 40, LEASE)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 40);
    let texts = [
        None,
        Some(r#"said "no" \ then \"quit\""#.to_string()),
        Some("line one\nline two\r\n\ttabbed".to_string()),
        Some("ünïcödé ✓ 日本 🦀".to_string()),
        Some("{\"json\": [1, 2]} ' ; DROP TABLE jobs; --".to_string()),
    ];
    let outcome = |i: usize| Finish {
        state: if i % 2 == 0 {
            JobState::Failed
        } else {
            JobState::Succeeded
        },
        exit_code: (i % 3 != 0).then_some(i as i64 - 20),
        exit_signal: (i % 4 == 0).then_some(9),
        error: texts[i % texts.len()].clone(),
    };
    let items: Vec<FinishItem> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| FinishItem::new(job, "n/1", &outcome(i), Duration::ZERO))
        .collect();
    assert_eq!(store.finish_batch(&items).await.unwrap().len(), 40);
    for (i, job) in jobs.iter().enumerate() {
        let got = store.get(job.id).await.unwrap().unwrap();
        let want = outcome(i);
        assert_eq!(got.state, want.state, "job {i}");
        assert_eq!(got.exit_code, want.exit_code, "job {i}");
        assert_eq!(got.exit_signal, want.exit_signal, "job {i}");
        assert_eq!(got.error, want.error, "job {i}");
    }
}

/// PostgreSQL: a claim changes no indexed value (no index names `state`; migration 0009), so
/// with the table's fillfactor leaving room it is a heap-only update that writes no index
/// entry, nor does a lease renewal. Counted by the server itself (`pg_stat_user_tables`).
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_and_a_renewal_write_no_index_entry_on_postgres() {
    use sqlx::Row;
    const JOBS: usize = 300;
    let (store, _g, _d) = migrated_store(Backend::Postgres).await;
    store
        .enqueue_batch("a", &new_jobs(JOBS), 1, None)
        .await
        .unwrap()
        .unwrap();
    let tasks = [("a".to_string(), JOBS)];
    let mut claimed = Vec::new();
    for owner in ["claim-1", "claim-2", "claim-3"] {
        let got = store.claim_batch(owner, &tasks, 100, LEASE).await.unwrap();
        claimed.extend(got.into_iter().map(|j| (j.id, owner)));
    }
    assert_eq!(claimed.len(), JOBS);
    for (id, owner) in claimed.iter().take(50) {
        assert_eq!(store.renew(*id, owner, LEASE).await.unwrap(), Some(false));
    }
    let updates = (JOBS + 50) as i64;
    // The counts reach the shared statistics when each backend goes idle (within about a
    // second): wait for all of them, then compare.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (upd, hot) = loop {
        let row = sqlx::query(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        let (upd, hot): (i64, i64) = (row.get(0), row.get(1));
        if upd >= updates || Instant::now() > deadline {
            break (upd, hot);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        upd, updates,
        "the server counted {upd} updates of jobs, expected {updates}"
    );
    assert_eq!(
        hot,
        updates,
        "{} of {updates} claims and renewals wrote index entries (not heap-only)",
        updates - hot
    );
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
    claim_batch_keeps_limit_and_caps,
    finish_batch_is_fenced_by_lease_token,
    enqueue_batch_is_all_or_nothing,
    the_largest_batch_goes_in_whole,
    batch_endpoint_runs_every_job,
    long_jobs_keep_one_ahead_and_leave_the_rest,
    a_batched_finish_keeps_every_outcome_exactly,
);

// ---------------------------------------------------------------------------------------
// POST /v1/tasks/{task}/jobs:batch on the real binary.
// ---------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

async fn post_batch(
    addr: SocketAddr,
    token: Option<&str>,
    task: &str,
    body: Value,
) -> (u16, Value) {
    let mut request = client()
        .post(format!("http://{addr}/v1/tasks/{task}/jobs:batch"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_job(addr: SocketAddr, token: Option<&str>, id: i64) -> (u16, Value) {
    let mut request = client().get(format!("http://{addr}/v1/jobs/{id}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn count_jobs(addr: SocketAddr, token: Option<&str>) -> usize {
    let mut request = client().get(format!("http://{addr}/v1/jobs?limit=500"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let page: Value = request.send().await.unwrap().json().await.unwrap();
    page["jobs"].as_array().map(Vec::len).unwrap_or(0)
}

/// Every job of a batch runs once with its own parameters, in the order given: the ids come
/// back in request order, and each job ends `succeeded` (claimed in batches, finished in
/// batches).
async fn batch_endpoint_runs_every_job(backend: Backend) {
    let (b, _db) = builder(backend).await;
    let app = b
        .set("jobs.workers", 4)
        .set("jobs.prefetch", 4)
        .toml(
            r#"[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z0-9]+" }"#,
        )
        .start()
        .await;
    let jobs: Vec<Value> = (0..40)
        .map(|i| json!({"params": {"who": format!("w{i}")}}))
        .collect();
    let (status, body) = post_batch(app.addr, None, "echo", json!({ "jobs": jobs })).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["created"], 40);
    let ids: Vec<i64> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let deadline = Instant::now() + secs(60);
    for (i, id) in ids.iter().enumerate() {
        loop {
            let (status, job) = get_job(app.addr, None, *id).await;
            assert_eq!(status, 200, "{job}");
            if job["state"] == "succeeded" {
                assert_eq!(job["params"]["who"], format!("w{i}"));
                assert_eq!(job["attempts"], 1, "ran once: {job}");
                assert_eq!(
                    job["output_tail"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|l| *l == &json!(format!("w{i}")))
                        .count(),
                    1,
                    "{job}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "job {id} did not succeed: {job}");
            tokio::time::sleep(millis(50)).await;
        }
    }
}

/// Waits until `addr` lists at least `n` jobs in `state`, and returns how many it lists;
/// fails the test after 30 s.
async fn wait_count(addr: SocketAddr, state: &str, n: usize) -> usize {
    let deadline = Instant::now() + secs(30);
    loop {
        let page: Value = client()
            .get(format!("http://{addr}/v1/jobs?state={state}&limit=500"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = page["jobs"].as_array().map(Vec::len).unwrap_or(0);
        if got >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{got} {state} jobs, not {n}");
        tokio::time::sleep(millis(20)).await;
    }
}

const GATE: &str = r#"[tasks.gate]
command = ["/bin/sh", "-c", "while [ ! -e \"$0\" ]; do sleep 0.02; done", "{file}"]
params = { file = "/[a-zA-Z0-9/._-]+" }
concurrency = 10"#;

/// With the default `jobs.prefetch` (a deep ceiling), a node whose jobs run long claims its
/// free workers plus one ahead, not the ceiling: of 10 queued jobs a node with 2 workers
/// takes 3 (2 run, 1 waits), and on PostgreSQL a second node takes 3 of the 7 left. The
/// counts are read after the claims, which take their jobs in one statement each, and no
/// claim is made while no worker is free. Then every job runs once.
async fn long_jobs_keep_one_ahead_and_leave_the_rest(backend: Backend) {
    let (b, db) = builder(backend).await;
    // A long lease: the job held ahead stays held (up to a quarter of it) however slowly
    // the second node starts.
    let b = b
        .set("jobs.workers", 2)
        .set("jobs.lease", "120s")
        .toml(GATE);
    let a = b.clone().start().await;
    let gate = a.workdir().path().join("open");
    let jobs: Vec<Value> = (0..10)
        .map(|_| json!({"params": {"file": gate.display().to_string()}}))
        .collect();
    let (status, body) = post_batch(a.addr, None, "gate", json!({ "jobs": jobs })).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        wait_count(a.addr, "running", 1).await,
        3,
        "2 workers + 1 ahead"
    );
    assert_eq!(wait_count(a.addr, "queued", 0).await, 7);
    let second = match &db {
        Some(db) => Some(
            Shiftd::builder()
                .set("jobs.poll_interval", "100ms")
                .set("database.url", db.url.clone())
                .set("jobs.workers", 2)
                .set("jobs.lease", "120s")
                .toml(GATE)
                .start()
                .await,
        ),
        None => None,
    };
    if second.is_some() {
        assert_eq!(
            wait_count(a.addr, "running", 4).await,
            6,
            "the second node's 2 + 1"
        );
        assert_eq!(wait_count(a.addr, "queued", 0).await, 4);
    }
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(wait_count(a.addr, "succeeded", 10).await, 10);
    let page: Value = client()
        .get(format!("http://{}/v1/jobs?limit=500", a.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for job in page["jobs"].as_array().unwrap() {
        assert_eq!(job["attempts"], 1, "ran once: {job}");
    }
}

/// One bad job refuses the batch (422 naming its index) and nothing is queued; a batch over
/// `jobs.batch_max` is 413 with the setting named; an empty batch is 422.
#[tokio::test]
async fn a_batch_is_all_or_nothing_and_bounded() {
    let app = Shiftd::builder()
        .set("jobs.batch_max", 5)
        .toml(
            r#"[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z]+" }"#,
        )
        .start()
        .await;
    let ok = json!({"params": {"who": "ann"}});
    let bad = json!({"params": {"who": "ANN1"}});
    let (status, body) =
        post_batch(app.addr, None, "echo", json!({"jobs": [ok, ok, bad, ok]})).await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("jobs[2]:") && message.contains("nothing was queued"),
        "{message}"
    );
    assert_eq!(
        count_jobs(app.addr, None).await,
        0,
        "nothing of a refused batch is queued"
    );
    let unknown = json!({"params": {"who": "ann", "extra": "x"}});
    let (status, body) = post_batch(app.addr, None, "echo", json!({"jobs": [ok, unknown]})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("jobs[1]:"),
        "{body}"
    );
    let six: Vec<Value> = (0..6).map(|_| ok.clone()).collect();
    let (status, body) = post_batch(app.addr, None, "echo", json!({ "jobs": six })).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("jobs.batch_max"),
        "{body}"
    );
    let (status, body) = post_batch(app.addr, None, "echo", json!({"jobs": []})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = post_batch(app.addr, None, "echo", json!({"jobz": []})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(count_jobs(app.addr, None).await, 0);
    let five: Vec<Value> = (0..5).map(|_| ok.clone()).collect();
    let (status, body) = post_batch(app.addr, None, "echo", json!({ "jobs": five })).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(count_jobs(app.addr, None).await, 5);
}

/// A replayed batch returns the same ids (200, nothing added); a batch mixing new and
/// replayed keys adds only the new ones (202); a replayed key with other parameters
/// refuses the batch (409 naming the index and the job) and adds nothing.
#[tokio::test]
async fn a_replayed_batch_returns_the_same_jobs() {
    let app = Shiftd::builder()
        .toml(
            r#"[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z]+" }"#,
        )
        .start()
        .await;
    let job = |k: &str, who: &str| json!({"params": {"who": who}, "idempotency_key": k});
    let batch = json!({"jobs": [job("k1", "ann"), job("k2", "bob")]});
    let (status, first) = post_batch(app.addr, None, "echo", batch.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = post_batch(app.addr, None, "echo", batch).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["ids"], first["ids"]);
    assert_eq!(again["created"], 0);
    let (status, mixed) = post_batch(
        app.addr,
        None,
        "echo",
        json!({"jobs": [job("k3", "cy"), job("k2", "bob")]}),
    )
    .await;
    assert_eq!(status, 202, "{mixed}");
    assert_eq!(mixed["created"], 1);
    assert_eq!(mixed["ids"][1], first["ids"][1]);
    let (status, refused) = post_batch(
        app.addr,
        None,
        "echo",
        json!({"jobs": [job("k4", "dee"), job("k1", "eve")]}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.starts_with("jobs[1]:") && message.contains(&format!("job {}", first["ids"][0])),
        "{message}"
    );
    assert_eq!(count_jobs(app.addr, None).await, 3, "k4 was not queued");
}

/// The batch endpoint is scoped as the single one: no token 401, a token without the task
/// 403, a token with it 202; keys of two tokens never meet.
#[tokio::test]
async fn a_batch_needs_a_token_allowed_the_task() {
    let app = Shiftd::builder()
        .toml(&format!(
            r#"[[auth.tokens]]
name = "a"
secret = "{TOKEN_A}"
tasks = ["echo"]
[[auth.tokens]]
name = "b"
secret = "{TOKEN_B}"
tasks = ["other"]
[tasks.echo]
command = ["/bin/echo", "{{who}}"]
params = {{ who = "[a-z]+" }}
[tasks.other]
command = ["/bin/true"]"#
        ))
        .start()
        .await;
    let batch = json!({"jobs": [{"params": {"who": "ann"}, "idempotency_key": "k"}]});
    let (status, body) = post_batch(app.addr, None, "echo", batch.clone()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post_batch(app.addr, Some(TOKEN_B), "echo", batch.clone()).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post_batch(
        app.addr,
        Some("wrong-token-0123456789"),
        "echo",
        batch.clone(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, a) = post_batch(app.addr, Some(TOKEN_A), "echo", batch.clone()).await;
    assert_eq!(status, 202, "{a}");
    let (status, _) = get_job(app.addr, Some(TOKEN_B), a["ids"][0].as_i64().unwrap()).await;
    assert_eq!(status, 404, "token b may not read task echo");
    let (status, body) = post_batch(app.addr, Some(TOKEN_A), "nope", batch).await;
    assert_eq!(status, 404, "{body}");
}

/// A key names one job within a batch too: repeated with the same parameters it is that
/// job again (its id twice, created once); with other parameters the batch is refused
/// (409 naming both indexes) and nothing is added.
#[tokio::test]
async fn a_key_repeated_within_a_batch_names_one_job() {
    let app = Shiftd::builder()
        .toml(
            r#"[tasks.echo]
command = ["/bin/echo", "{who}"]
params = { who = "[a-z]+" }"#,
        )
        .start()
        .await;
    let job = |k: &str, who: &str| json!({"params": {"who": who}, "idempotency_key": k});
    let (status, body) = post_batch(
        app.addr,
        None,
        "echo",
        json!({"jobs": [job("a", "ann"), job("b", "bob"), job("a", "ann")]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["created"], 2, "{body}");
    assert_eq!(body["ids"][0], body["ids"][2], "{body}");
    assert_ne!(body["ids"][0], body["ids"][1], "{body}");
    let (status, refused) = post_batch(
        app.addr,
        None,
        "echo",
        json!({"jobs": [job("c", "cat"), job("c", "dan")]}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.starts_with("jobs[1]:") && message.contains("jobs[0]"),
        "{message}"
    );
    assert_eq!(
        count_jobs(app.addr, None).await,
        2,
        "nothing of the refused batch was queued"
    );
}
