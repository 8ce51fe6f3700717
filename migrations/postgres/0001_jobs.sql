-- Jobs and their output. Times are milliseconds since the Unix epoch; the same schema
-- exists for PostgreSQL in migrations/sqlite.
CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    task             TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    idempotency_key  TEXT,
    token_name       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    run_after        BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_owner      TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT  NOT NULL DEFAULT 0,
    exit_code        BIGINT,
    exit_signal      BIGINT,
    error            TEXT
);
CREATE INDEX jobs_claimable ON jobs (state, run_after);
CREATE INDEX jobs_by_task ON jobs (task, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (task, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_output (
    job_id  BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    stream  TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    line    TEXT   NOT NULL,
    PRIMARY KEY (job_id, seq)
);
