-- fleetops schema 2: deployments and the change/audit log of the control plane.
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    fleet TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    actor TEXT NOT NULL,
    state TEXT NOT NULL,
    failed_phase TEXT,
    error TEXT,
    phases TEXT NOT NULL DEFAULT '[]',
    readiness TEXT
);

CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    before TEXT,
    after TEXT,
    diff TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX changes_at ON changes (at);
