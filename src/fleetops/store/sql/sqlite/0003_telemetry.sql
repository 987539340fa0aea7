-- fleetops schema 3: each worker's latest metrics snapshot, and the built-in span store.
CREATE TABLE telemetry (
    worker TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);

CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    status TEXT NOT NULL,
    task_id INTEGER,
    cluster TEXT,
    agent TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_task ON spans (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX spans_start ON spans (start_time);
