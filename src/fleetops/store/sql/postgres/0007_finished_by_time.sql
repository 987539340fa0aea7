-- fleetops schema 7: each cluster and agent's finished tasks in the order they finished.
--
-- A fleet keeps its finished tasks for store.retention, then deletes them
-- (Store.prune_tasks). tasks_done gains finished_at as its last column, so the
-- tasks of a state, cluster and agent due to go are one range at the front of its
-- part of the index, not a scan of everything kept. The counts by state, cluster
-- and agent read it in its order as before, and a completion still adds one entry
-- (a second index by finish time cost 20-40 % more CPU per group commit).
DROP INDEX tasks_done;
CREATE INDEX tasks_done ON tasks (state, queue, agent, finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');
