-- fleetops schema 5: fewer index entries to move on the hot path.
--
-- tasks_state (state, queue, agent) changed on every transition of every task: a
-- claim and a completion each deleted an entry in one part of it and inserted one
-- in another, pages that then went to the WAL with every commit. The counts come
-- from partial indexes now: the queued and running tasks (tasks_ready and
-- tasks_leases, which the queue keeps anyway) and the finished ones (tasks_done,
-- to which a completion adds one entry at the end of its group).
--
-- tasks_expiry is gone too: the running tasks, whose leases the reaper checks, are
-- few (at most the fleet's concurrency), and tasks_leases finds them all.
DROP INDEX tasks_state;
DROP INDEX tasks_expiry;
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_after, id, agent) WHERE state = 'queued';
CREATE INDEX tasks_done ON tasks (state, queue, agent) WHERE state IN ('succeeded', 'dead', 'cancelled');
