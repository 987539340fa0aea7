-- fleetops schema 8: tasks_done's WHERE term without IN.
--
-- SQLite evaluates a partial index's WHERE term on the old and the new row of every
-- UPDATE that changes a column the term reads, and an IN list of three values
-- builds a temporary table each time it is evaluated. tasks_done's term reads
-- state, which every claim and every completion changes. Counted with callgrind
-- (SQLite 3.40, batches of 16 tasks), a claim cost 73,000 CPU instructions a task
-- and a completion 57,000; with the same set written with OR, 54,000 and 39,000.
-- PostgreSQL takes the same term, so that one query text serves both (a partial
-- index is used only by a query whose WHERE clause contains its term word for word).
DROP INDEX tasks_done;
CREATE INDEX tasks_done ON tasks (state, queue, agent, finished_at) WHERE (state = 'succeeded' OR state = 'dead' OR state = 'cancelled');
