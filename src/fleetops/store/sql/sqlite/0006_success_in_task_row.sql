-- fleetops schema 6: a successful attempt is recorded in its task's row.
--
-- Every completion used to insert an attempts row as well: the most common write
-- of all, and a fifth of a group commit's time. The task row already holds all
-- of that attempt but its worker: its number (attempts), epoch, started_at,
-- finished_at. finished_by adds the worker, and Store.attempts() answers the
-- successful attempt from the task. Failed, released, lost and cancelled attempts
-- are still rows of attempts. Tasks completed before this schema keep their rows
-- (their finished_by is NULL, so they are not counted twice).
ALTER TABLE tasks ADD COLUMN finished_by TEXT;
