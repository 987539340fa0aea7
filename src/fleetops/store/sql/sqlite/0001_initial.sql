-- fleetops schema 1: tasks with leases and epochs, attempts, effects journal,
-- workers and events.
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    agent TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    parent_id INTEGER,
    deadline REAL,
    max_attempts INTEGER NOT NULL,
    max_redeliveries INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    run_after REAL NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    dead_reason TEXT,
    headers TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_after, id) WHERE state = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_owner) WHERE state = 'running';
CREATE INDEX tasks_expiry ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state, queue, agent);

CREATE TABLE attempts (
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    worker TEXT,
    started_at REAL,
    ended_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE effects (
    task_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    result TEXT,
    executions INTEGER NOT NULL DEFAULT 1,
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (task_id, key)
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL,
    stopped_at REAL,
    concurrency INTEGER NOT NULL DEFAULT 0,
    inflight INTEGER NOT NULL DEFAULT 0,
    processed INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    cluster TEXT,
    worker TEXT,
    task_id INTEGER,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_kind ON events (kind, id);
