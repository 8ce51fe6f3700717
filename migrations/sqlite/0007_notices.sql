-- Notices: the outbox of job events for tasks with a `notify_url`. A row is written in the
-- same transaction as the job's state change: by the runner's finish (src/jobs/store.rs,
-- only when the task has a notify_url, so other jobs' finishes cost nothing more), by the
-- stop's requeue, and by the trigger below for the rare changes made elsewhere (a running
-- attempt taken over after its lease expired; a job cancelled before it ran). Rows are
-- deleted once delivered or given up, so the table holds only what is still to be sent.

-- Tasks whose jobs get notices: each process writes its own tasks at startup and reload.
CREATE TABLE notice_tasks (
    task TEXT PRIMARY KEY
);

CREATE TABLE notices (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- What the receiver deduplicates on: the same for every delivery of one event.
    id             TEXT    NOT NULL UNIQUE,
    event          TEXT    NOT NULL,
    reason         TEXT,
    job_id         BIGINT  NOT NULL,
    task           TEXT    NOT NULL,
    attempt        BIGINT  NOT NULL,
    max_attempts   BIGINT  NOT NULL,
    state          TEXT    NOT NULL,
    exit_code      BIGINT,
    exit_signal    BIGINT,
    error          TEXT,
    job_created_at BIGINT  NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    created_at     BIGINT  NOT NULL,
    -- When the next delivery may start; while one is in flight, the end of its lease.
    next_at        BIGINT  NOT NULL,
    tries          BIGINT  NOT NULL DEFAULT 0,
    last_error     TEXT
);
CREATE INDEX notices_due ON notices (next_at);
CREATE INDEX notices_created ON notices (created_at);

-- The WHEN compares columns only (a subquery there would cost every finish); the
-- look-up of the task is in the body, which runs for these rare changes alone.
CREATE TRIGGER jobs_notice AFTER UPDATE OF state ON jobs
WHEN (OLD.state = 'running' AND NEW.state = 'running' AND NEW.lease_owner IS NOT OLD.lease_owner)
     OR (NEW.state IN ('succeeded', 'failed', 'cancelled') AND OLD.state NOT IN ('running', 'succeeded', 'failed', 'cancelled'))
BEGIN
    INSERT INTO notices (id, event, reason, job_id, task, attempt, max_attempts, state, exit_code, exit_signal,
                         error, job_created_at, started_at, finished_at, created_at, next_at)
    SELECT
        lower(hex(randomblob(16))),
        CASE WHEN NEW.state = 'running' THEN 'job.interrupted' ELSE 'job.' || NEW.state END,
        CASE WHEN NEW.state = 'running' THEN 'lease_expired' ELSE NULL END,
        NEW.id, NEW.task,
        CASE WHEN NEW.state = 'running' THEN OLD.attempts ELSE NEW.attempts END,
        NEW.max_attempts,
        NEW.state,
        CASE WHEN NEW.state = 'running' THEN NULL ELSE NEW.exit_code END,
        CASE WHEN NEW.state = 'running' THEN NULL ELSE NEW.exit_signal END,
        CASE WHEN NEW.state = 'running' THEN 'the attempt''s lease expired (its process stopped renewing it: a crash, a kill or a lost database); it runs again' ELSE NEW.error END,
        NEW.created_at,
        CASE WHEN NEW.state = 'running' THEN OLD.started_at ELSE NEW.started_at END,
        NEW.finished_at,
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER),
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
    WHERE EXISTS (SELECT 1 FROM notice_tasks WHERE task = NEW.task);
END;
