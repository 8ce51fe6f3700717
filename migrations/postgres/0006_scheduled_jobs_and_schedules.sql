-- Delayed jobs wait in the state `scheduled` until their run_after; the claim takes them
-- like queued ones once that time has come, so the partial index the claim walks must
-- hold them too (the predicate is the claim's `state IN (...)` word for word).
DROP INDEX jobs_runnable;
CREATE INDEX jobs_runnable ON jobs (task, id) WHERE state IN ('queued', 'scheduled', 'running');

-- Schedules: each task's cron expression as last registered, and since when. `since` is
-- the baseline of catch-up: no occurrence before it is ever enqueued, so a schedule seen
-- for the first time (or changed) does not run an occurrence from before it existed.
CREATE TABLE schedules (
    task  TEXT   PRIMARY KEY,
    spec  TEXT   NOT NULL,
    since BIGINT NOT NULL
);

-- One row per occurrence enqueued: the primary key makes every node sharing the database
-- enqueue an occurrence at most once (the row and its job are inserted in one
-- transaction). Rows older than jobs.retain are deleted as new ones arrive.
CREATE TABLE schedule_occurrences (
    task       TEXT   NOT NULL,
    occurrence BIGINT NOT NULL,
    job_id     BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task, occurrence)
);
