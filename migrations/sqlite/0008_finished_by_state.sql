-- The dashboard counts jobs finished per minute by state over the last hour. With the state
-- in the index of finished jobs, each count is a range of this index alone (no row is
-- read): with 100,000 jobs finished within the hour the chart's statement took ~150 ms on
-- SQLite through the old index, ~35 ms through this one. It replaces the old index rather
-- than adding one, so a finish updates no more indexes than before; retention's walk by
-- age (ORDER BY finished_at, with its state check) uses it as it used the old one.
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, state) WHERE finished_at IS NOT NULL;
