//! Reads by state answer through an index however many jobs are finished or waiting, on
//! SQLite and PostgreSQL: the job list filtered by a state (`GET /v1/jobs?state=…`, the
//! dashboard's job list) and the runner's count of live jobs (every `jobs.poll_interval` on
//! every node). Since migration 0009 no PostgreSQL index names `state` (so claims are
//! heap-only); these reads go through `jobs_by_phase` there, and through `jobs_claimable`
//! on SQLite. The plans are printed and checked with 100,000 finished and 20,000 scheduled
//! jobs in the table, and the answers are checked too.

mod common;

use std::collections::BTreeMap;

use common::*;
use shiftd::jobs::store::{now_ms, JobState, ListFilter};
use shiftd::jobs::Store;
use sqlx::Row;

const FINISHED: i64 = 100_000;
const SCHEDULED: i64 = 20_000;

/// `FINISHED` jobs of task `a`, all succeeded but every 2,000th failed (50) and every
/// 5,000th after that cancelled (20); `SCHEDULED` jobs of `b` due tomorrow; then 30 queued
/// and 5 running of `a`, and 7 queued of `b`. Each kind by one statement.
async fn load(store: &Store) {
    let now = now_ms();
    let tomorrow = now + 86_400_000;
    let finished = format!(
        "INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after, finished_at) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {FINISHED}) \
         SELECT 'a', '{{}}', CASE WHEN i % 2000 = 0 THEN 'failed' WHEN i % 5000 = 1 THEN 'cancelled' ELSE 'succeeded' END, \
         1, 1, {now}, {now}, {now}, {now} FROM n"
    );
    let scheduled = format!(
        "INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SCHEDULED}) \
         SELECT 'b', '{{}}', 'scheduled', 0, 1, {now}, {now}, {tomorrow} FROM n"
    );
    let live = |task: &str, state: &str, n: i64| {
        format!(
            "INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             SELECT '{task}', '{{}}', '{state}', 0, 1, {now}, {now}, {now} FROM n"
        )
    };
    for sql in [
        finished,
        scheduled,
        live("a", "queued", 30),
        live("a", "running", 5),
        live("b", "queued", 7),
    ] {
        sqlx::query(&sql).execute(&store.pool).await.unwrap();
    }
    if store.backend == shiftd::config::Backend::Postgres {
        // As autovacuum would after such a load.
        sqlx::query("ANALYZE jobs")
            .execute(&store.pool)
            .await
            .unwrap();
    }
}

/// The plan of `sql` with `binds` (text, then the limit as a number), one line per step.
async fn plan(store: &Store, sql: &str, binds: &[&str], limit: Option<i64>) -> String {
    let (explain, column) = match store.backend {
        shiftd::config::Backend::Sqlite => (format!("EXPLAIN QUERY PLAN {sql}"), "detail"),
        shiftd::config::Backend::Postgres => (format!("EXPLAIN {sql}"), "QUERY PLAN"),
    };
    let mut q = sqlx::query(&explain);
    for b in binds {
        q = q.bind(b.to_string());
    }
    if let Some(limit) = limit {
        q = q.bind(limit);
    }
    let rows = q.fetch_all(&store.pool).await.unwrap();
    rows.iter()
        .map(|r| r.try_get::<String, _>(column).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn by_state(state: JobState, tasks: Option<Vec<String>>) -> ListFilter {
    ListFilter {
        task: None,
        tasks,
        state: Some(state),
        before_id: None,
        limit: 50,
    }
}

async fn reads_by_state_go_through_an_index(backend: Backend) {
    let (store, _guard, _dir) = migrated_store(backend).await;
    load(&store).await;
    let index = match backend {
        Backend::Sqlite => "jobs_claimable",
        Backend::Postgres => "jobs_by_phase",
    };
    let expect = [
        (JobState::Failed, 50),
        (JobState::Cancelled, 20),
        (JobState::Queued, 37),
        (JobState::Running, 5),
    ];
    for (state, count) in expect {
        let filter = by_state(state, None);
        let sql = store.list_sql(&filter).unwrap();
        let got = plan(&store, &sql, &[state.as_str()], Some(51)).await;
        println!("{backend:?} list state={}:\n{got}", state.as_str());
        assert!(got.contains(index), "list by {}: {got}", state.as_str());
        let page = store.list(&filter).await.unwrap();
        assert_eq!(page.jobs.len() as i64, count.min(50), "{}", state.as_str());
        assert!(page.jobs.iter().all(|j| j.state == state));
        assert!(
            page.jobs.windows(2).all(|w| w[0].id > w[1].id),
            "newest first"
        );
    }
    // A caller who may read some tasks only.
    let filter = by_state(JobState::Cancelled, Some(vec!["a".into(), "c".into()]));
    let sql = store.list_sql(&filter).unwrap();
    let got = plan(&store, &sql, &["a", "c", "cancelled"], Some(51)).await;
    println!("{backend:?} list tasks a, c, state=cancelled:\n{got}");
    assert!(got.contains(index), "{got}");
    assert_eq!(store.list(&filter).await.unwrap().jobs.len(), 20);

    let got = plan(&store, store.counts_active_sql(), &[], None).await;
    println!("{backend:?} counts_active:\n{got}");
    assert!(got.contains(index), "{got}");
    let counts: BTreeMap<String, (i64, i64)> = store.counts_active().await.unwrap();
    assert_eq!(counts.get("a"), Some(&(30, 5)));
    assert_eq!(counts.get("b"), Some(&(7, 0)));
}

#[tokio::test]
async fn reads_by_state_go_through_an_index_on_sqlite() {
    reads_by_state_go_through_an_index(Backend::Sqlite).await;
}

#[tokio::test]
async fn reads_by_state_go_through_an_index_on_postgres() {
    reads_by_state_go_through_an_index(Backend::Postgres).await;
}
