-- Jobs (pruning and evaluation), their progress events, pruned variants, uploaded datasets.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,               -- pruning | evaluation
    model TEXT NOT NULL,
    task TEXT,
    dataset TEXT,
    params TEXT NOT NULL,             -- JSON: hyperparameters / split
    suffix TEXT,
    status TEXT NOT NULL,             -- queued | running | succeeded | failed | cancelled
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    result TEXT,                      -- JSON
    error_code TEXT,
    error_message TEXT,
    pruned_model TEXT
);
CREATE INDEX jobs_status ON jobs (status, created_at);
CREATE INDEX jobs_kind_created ON jobs (kind, created_at);

CREATE TABLE job_events (
    id BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at BIGINT NOT NULL,
    phase TEXT NOT NULL,
    fraction DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE variants (
    id TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    job_id TEXT NOT NULL UNIQUE,
    object_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    summary TEXT NOT NULL             -- JSON
);

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    rows BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
