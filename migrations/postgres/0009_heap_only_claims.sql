-- A claim that writes no index entry. PostgreSQL writes a new entry into every index of the
-- table for an update that changes any indexed value (a partial index's predicate columns
-- included), unless the update is "heap-only" (HOT): no indexed value changed and the new
-- version of the row fits on the same page. `state` stood in three indexes (jobs_claimable,
-- and the predicates of jobs_runnable and jobs_finished), so a claim (queued -> running)
-- wrote four index entries and a finish four more, and those writes were most of the
-- database's time per job (docs/BENCHMARKS.md, 2026-12-07).
--
-- Now no index names `state`:
-- * `phase` is the state as the indexes need it, a column the database computes from
--   `state`, so no statement sets it: `live` (queued or running: a claim does not change
--   it), `waiting` (scheduled), or the final state. jobs_by_phase (phase, id) replaces
--   jobs_claimable for listing and counting jobs by state (src/jobs/store.rs, `phase_of`);
-- * the jobs that can still run are those not finished (`finished_at IS NULL`: every final
--   state sets finished_at, a retry clears it), and the claim's statement says so in these
--   words (RUNNABLE in src/jobs/store.rs);
-- * the finished jobs are indexed by time and phase (their final state), so the
--   dashboard's chart is still answered by this index alone.
-- A claim of a queued job, a lease renewal and a requeue then change no indexed value.
-- A job writes 8 index entries over its life instead of 12 (4 at the insert, 4 at the
-- finish); the claim of a scheduled job (waiting -> live) is not heap-only.
--
-- Adding a stored column rewrites the table under an exclusive lock: about 5 s for a
-- million jobs here (1,000,000 finished jobs, 271 MB), within startup.step_timeout (30 s)
-- up to some six million. Meanwhile the process handing over (or another node) waits on
-- the table; an older version sharing the database keeps working with this schema, its
-- claims walking jobs_by_task instead of a partial index until it is upgraded too.
UPDATE jobs SET finished_at = updated_at
    WHERE finished_at IS NULL AND state IN ('succeeded', 'failed', 'cancelled');
ALTER TABLE jobs ADD COLUMN phase TEXT GENERATED ALWAYS AS (
    CASE WHEN state IN ('queued', 'running') THEN 'live' WHEN state = 'scheduled' THEN 'waiting' ELSE state END
) STORED;

DROP INDEX jobs_claimable;
CREATE INDEX jobs_by_phase ON jobs (phase, id);
DROP INDEX jobs_runnable;
CREATE INDEX jobs_runnable ON jobs (task, id) WHERE finished_at IS NULL;
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, phase) WHERE finished_at IS NOT NULL;

-- Heap-only needs room on the row's page. A claimed row is about a fifth longer than a
-- queued one (its lease), so pages filled to half by inserts gave 85 % of claims room; filled
-- to 40 %, 99.9 % (10,000 bulk-enqueued jobs claimed in batches, n_tup_hot_upd in
-- pg_stat_user_tables). Queued jobs take 2.5 times the pages, but once they have run the
-- table is the size it was (3.4 MB against 3.3 MB for those 10,000 jobs: each finish
-- writes the row anew in either schema).
ALTER TABLE jobs SET (fillfactor = 40);
