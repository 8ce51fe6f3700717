//! The dashboard overview's store reads on SQLite and PostgreSQL: jobs finished per minute
//! by state over the last hour, the queue by task, the database's size; each answers right
//! and reads through its index (the plans are printed and checked), with 100,000 jobs in
//! the table.

mod common;

use common::*;
use shiftd::jobs::store::{
    finished_per_minute_sql, now_ms, JobState, QueueCounts, QUEUE_COUNTS_SQL,
};
use shiftd::jobs::Store;
use sqlx::Row;

const JOBS: i64 = 100_000;

/// `JOBS` finished jobs, one every 6 s back from `now` (a week's worth: about 600 in the
/// chart's hour), states in turn succeeded, failed, cancelled, tasks `a` and `b` in turn; then
/// 7 queued `a`, 2 running `a`, 3 scheduled `b`. One statement: a recursive CTE.
async fn load(store: &Store, now: i64) {
    let sql = format!(
        "INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after, finished_at) \
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {JOBS}) \
         SELECT CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, '{{}}', \
                CASE i % 3 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed' ELSE 'cancelled' END, \
                1, 1, {now} - i * 6000, {now} - i * 6000, {now} - i * 6000, {now} - i * 6000 FROM n"
    );
    sqlx::query(&sql).execute(&store.pool).await.unwrap();
    for (task, state, n) in [
        ("a", "queued", 7),
        ("a", "running", 2),
        ("b", "scheduled", 3),
    ] {
        for _ in 0..n {
            sqlx::query(
                "INSERT INTO jobs (task, params, state, attempts, max_attempts, created_at, updated_at, run_after) \
                 VALUES ($1, '{}', $2, 0, 1, $3, $3, $3)",
            )
            .bind(task)
            .bind(state)
            .bind(now)
            .execute(&store.pool)
            .await
            .unwrap();
        }
    }
}

/// The plan of `sql` (with `$1` = `since`), one line per step.
async fn plan(store: &Store, backend: Backend, sql: &str, since: i64) -> String {
    let explain = match backend {
        Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
        Backend::Postgres => format!("EXPLAIN {sql}"),
    };
    let mut q = sqlx::query(&explain);
    if sql.contains("$1") {
        q = q.bind(since);
    }
    let rows = q.fetch_all(&store.pool).await.unwrap();
    let column = match backend {
        Backend::Sqlite => "detail",
        Backend::Postgres => "QUERY PLAN",
    };
    rows.iter()
        .map(|r| r.try_get::<String, _>(column).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn the_overview_reads_answer_through_their_indexes(backend: Backend) {
    let (store, _guard, _dir) = migrated_store(backend).await;
    let now = now_ms();
    load(&store, now).await;
    // The chart's hour: the current minute and the 59 before it.
    let since = now - now % 60_000 - 59 * 60_000;
    let in_hour: Vec<i64> = (0..JOBS).filter(|i| now - i * 6000 >= since).collect();

    let started = std::time::Instant::now();
    let minutes = store.finished_per_minute(since, None).await.unwrap();
    let took = started.elapsed();
    let total: i64 = minutes.iter().map(|m| m.count).sum();
    assert_eq!(
        total,
        in_hour.len() as i64,
        "one job every 6 s over the hour"
    );
    assert!(minutes.len() <= 60 * 3, "{}", minutes.len());
    assert!(minutes.windows(2).all(|w| w[0].minute <= w[1].minute));
    for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        let n: i64 = minutes
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.count)
            .sum();
        let slot = match state {
            JobState::Succeeded => 0,
            JobState::Failed => 1,
            _ => 2,
        };
        let expected = in_hour.iter().filter(|i| *i % 3 == slot).count() as i64;
        assert_eq!(n, expected, "{state:?}");
    }
    assert!(minutes.iter().all(|m| m.minute % 60 == 0));
    println!("{backend:?}: finished_per_minute over 100,000 jobs took {took:?}");

    let only_a = store
        .finished_per_minute(since, Some(&["a".to_owned()]))
        .await
        .unwrap();
    let even = in_hour.iter().filter(|i| *i % 2 == 0).count() as i64;
    assert_eq!(only_a.iter().map(|m| m.count).sum::<i64>(), even);
    let none = store.finished_per_minute(since, Some(&[])).await.unwrap();
    assert!(
        none.is_empty(),
        "a caller who may read no task sees nothing"
    );

    let started = std::time::Instant::now();
    let queue = store.queue_counts().await.unwrap();
    println!("{backend:?}: queue_counts took {:?}", started.elapsed());
    assert_eq!(
        queue["a"],
        QueueCounts {
            queued: 7,
            running: 2,
            scheduled: 0
        }
    );
    assert_eq!(
        queue["b"],
        QueueCounts {
            queued: 0,
            running: 0,
            scheduled: 3
        }
    );
    assert!(store.size_bytes().await.unwrap() > 0);

    let chart = plan(
        &store,
        backend,
        &finished_per_minute_sql(0, store.backend),
        since,
    )
    .await;
    println!("{backend:?} finished_per_minute plan:\n{chart}");
    // Three counts per minute, each a range of the index alone.
    match backend {
        Backend::Sqlite => assert!(
            chart.contains("USING COVERING INDEX jobs_finished (finished_at>? AND finished_at<?)"),
            "{chart}"
        ),
        Backend::Postgres => assert!(chart.contains("jobs_finished"), "{chart}"),
    }
    assert!(!chart.contains("SCAN jobs"), "{chart}");
    let queue = plan(&store, backend, QUEUE_COUNTS_SQL, 0).await;
    println!("{backend:?} queue_counts plan:\n{queue}");
    // Both walk the partial index `jobs_runnable`: only jobs that are not final are read.
    assert!(queue.contains("jobs_runnable"), "{queue}");
}

#[tokio::test]
async fn the_overview_reads_answer_through_their_indexes_on_sqlite() {
    the_overview_reads_answer_through_their_indexes(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_overview_reads_answer_through_their_indexes_on_postgres() {
    the_overview_reads_answer_through_their_indexes(Backend::Postgres).await;
}
