-- Nodes: every shiftd process sharing this database writes its row (and the tasks it
-- serves) every few seconds. A queued job whose task no live node serves is counted as
-- such in /v1/status instead of being failed by a node that lacks the task. The heartbeat
-- is also the write that tells a process its storage works again after a fault.
-- seen_at is the database's clock, like every lease time.
CREATE TABLE nodes (
    id         TEXT   PRIMARY KEY,
    tasks      TEXT   NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);

-- Retention walks finished jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
