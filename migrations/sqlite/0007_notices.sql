-- Notices: the outbox of job events for tasks with a `notify_url`. A row is written by a
-- trigger in the same transaction as the job's state change (a final state, or a running
-- attempt taken over after its lease expired) or, for a job stopped and requeued by the
-- service's stop, by the same transaction as that requeue (src/notices.rs). Rows are
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

CREATE TRIGGER jobs_notice AFTER UPDATE OF state ON jobs
WHEN ((NEW.state IN ('succeeded', 'failed', 'cancelled') AND OLD.state NOT IN ('succeeded', 'failed', 'cancelled'))
      OR (OLD.state = 'running' AND NEW.state = 'running' AND NEW.lease_owner IS NOT OLD.lease_owner))
     AND EXISTS (SELECT 1 FROM notice_tasks WHERE task = NEW.task)
BEGIN
    INSERT INTO notices (id, event, reason, job_id, task, attempt, max_attempts, state, exit_code, exit_signal,
                         error, job_created_at, started_at, finished_at, created_at, next_at)
    VALUES (
        lower(hex(randomblob(16))),
        CASE WHEN NEW.state = 'running' THEN 'job.interrupted' ELSE 'job.' || NEW.state END,
        CASE WHEN NEW.state = 'running' THEN 'lease_expired' ELSE NULL END,
        NEW.id, NEW.task,
        CASE WHEN NEW.state = 'running' THEN OLD.attempts ELSE NEW.attempts END,
        NEW.max_attempts,
        CASE WHEN NEW.state = 'running' THEN 'running' ELSE NEW.state END,
        CASE WHEN NEW.state = 'running' THEN NULL ELSE NEW.exit_code END,
        CASE WHEN NEW.state = 'running' THEN NULL ELSE NEW.exit_signal END,
        CASE WHEN NEW.state = 'running' THEN 'the attempt''s lease expired (its process stopped renewing it: a crash, a kill or a lost database); it runs again' ELSE NEW.error END,
        NEW.created_at,
        CASE WHEN NEW.state = 'running' THEN OLD.started_at ELSE NEW.started_at END,
        NEW.finished_at,
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER),
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
    );
END;
