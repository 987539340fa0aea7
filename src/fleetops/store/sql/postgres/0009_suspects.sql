-- fleetops schema 9: suspects, the tasks that were on SUSPECT_REDELIVERIES dead workers.
--
-- A task that kills its worker (a crash, a handler that blocks the event loop until
-- the worker is taken for hung) is redelivered with every task beside it, and each
-- is charged a redelivery. Claimed together again, they died together again, until
-- max_redeliveries dead-lettered the healthy ones with the culprit. A worker now runs
-- at most one suspect at a time (Store.claim's ``suspects``): a suspect takes down
-- only itself and the fresh tasks beside it, so a healthy task is charged for the
-- culprit at most SUSPECT_REDELIVERIES times.
--
-- tasks_ready gains redeliveries, so that the claim of the others (redeliveries < 3)
-- still reads the index alone; tasks_suspect finds the few suspects without reading
-- the others (its term is the claim's word for word, as a partial index needs).
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_after, id, agent, redeliveries) WHERE state = 'queued';
CREATE INDEX tasks_suspect ON tasks (queue, priority DESC, run_after, id) WHERE state = 'queued' AND redeliveries >= 3;
