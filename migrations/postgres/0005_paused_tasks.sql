-- Paused tasks: no node claims their queued jobs while a row is here (the claim statement
-- reads this table), so every process and every restart honours a pause. Running jobs go
-- on. paused_at is the database's clock.
CREATE TABLE paused_tasks (
    task      TEXT   PRIMARY KEY,
    paused_at BIGINT NOT NULL
);
