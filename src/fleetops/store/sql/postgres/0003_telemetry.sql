-- fleetops schema 3: each worker's latest metrics snapshot, and the built-in span store.
CREATE TABLE telemetry (
    worker TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL
);

CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_time DOUBLE PRECISION NOT NULL,
    end_time DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    task_id BIGINT,
    cluster TEXT,
    agent TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_task ON spans (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX spans_start ON spans (start_time);
