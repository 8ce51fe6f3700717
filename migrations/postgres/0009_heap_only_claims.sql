-- A claim that writes no index entry. PostgreSQL writes a new entry into every index of the
-- table for an update that changes any indexed value (a partial index's predicate columns
-- included), unless the update is "heap-only" (HOT): no indexed value changed and the new
-- version of the row fits on the same page. `state` stood in three indexes (jobs_claimable,
-- and the predicates of jobs_runnable and jobs_finished), so a claim (queued -> running)
-- wrote four index entries and a finish four more, and those writes were most of the
-- database's time per job (docs/BENCHMARKS.md, 2026-12-07).
--
-- Now no index names `state`:
-- * the jobs that can still run are those not finished (`finished_at IS NULL`: every final
--   state sets finished_at, a retry clears it), and the claim's statement says so in these
--   words (RUNNABLE in src/jobs/store.rs);
-- * the finished jobs are indexed by time and `outcome`, the final state as a column the
--   database computes from `state`: NULL until the finish, so no statement has to set it
--   and a claim never changes it. The dashboard's chart counts outcomes in this index alone.
-- A claim, a lease renewal and a requeue then change no indexed value. jobs_claimable
-- (state, run_after) served nothing the two partial indexes do not.
--
-- Adding a stored column rewrites the table under an exclusive lock: about 5 s for a
-- million jobs here (1,000,000 finished jobs, 271 MB), within startup.step_timeout (30 s)
-- up to some six million. Meanwhile the process handing over (or another node) waits on
-- the table; an older version sharing the database keeps working with this schema, its
-- claims walking jobs_by_task instead of a partial index until it is upgraded too.
UPDATE jobs SET finished_at = updated_at
    WHERE finished_at IS NULL AND state IN ('succeeded', 'failed', 'cancelled');
ALTER TABLE jobs ADD COLUMN outcome TEXT
    GENERATED ALWAYS AS (CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN state END) STORED;

DROP INDEX jobs_claimable;
DROP INDEX jobs_runnable;
CREATE INDEX jobs_runnable ON jobs (task, id) WHERE finished_at IS NULL;
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, outcome) WHERE finished_at IS NOT NULL;

-- Heap-only needs room on the row's page. A claimed row is about a fifth longer than a
-- queued one (its lease), so pages filled to half by inserts gave 85 % of claims room; filled
-- to 40 %, 99.9 % (10,000 bulk-enqueued jobs claimed in batches, n_tup_hot_upd in
-- pg_stat_user_tables). Queued jobs take 2.5 times the pages, but once they have run the
-- table is the size it was (3.4 MB against 3.3 MB for those 10,000 jobs: each finish
-- writes the row anew in either schema).
ALTER TABLE jobs SET (fillfactor = 40);
