-- The runnable jobs are those not finished, in the same words as on PostgreSQL
-- (migrations/postgres/0009_heap_only_claims.sql says why: there no index may name `state`,
-- which a claim changes). SQLite rewrites only the indexes whose columns an update changes,
-- so here a claim now leaves jobs_runnable alone, and jobs_claimable (state, run_after)
-- is gone. jobs_finished keeps `state` (SQLite cannot add a stored column to a table, and
-- reads a computed one from the row, not the index): a claim's row is in no range of it.
UPDATE jobs SET finished_at = updated_at
    WHERE finished_at IS NULL AND state IN ('succeeded', 'failed', 'cancelled');
DROP INDEX jobs_claimable;
DROP INDEX jobs_runnable;
CREATE INDEX jobs_runnable ON jobs (task, id) WHERE finished_at IS NULL;
