-- The runnable jobs are those not finished, in the same words as on PostgreSQL
-- (migrations/postgres/0009_heap_only_claims.sql says why: there no index may name `state`,
-- which a claim changes). SQLite has no heap-only updates to keep and rewrites only the
-- indexes whose columns an update changes, so its other indexes stay as they were:
-- jobs_claimable (state, run_after) for listing and counting by state, jobs_finished
-- (finished_at, state) for the chart (SQLite would read a computed column from the row, not
-- the index). A claim now leaves jobs_runnable alone.
UPDATE jobs SET finished_at = updated_at
    WHERE finished_at IS NULL AND state IN ('succeeded', 'failed', 'cancelled');
DROP INDEX jobs_runnable;
CREATE INDEX jobs_runnable ON jobs (task, id) WHERE finished_at IS NULL;
