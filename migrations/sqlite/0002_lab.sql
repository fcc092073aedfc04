-- A lab's service: users with API keys (stored as hashes) and per-user quota overrides (NULL:
-- the configured default); every job, data set and variant has an owner and a visibility.
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    running_jobs BIGINT,
    queued_jobs BIGINT,
    gpu_seconds_per_day BIGINT,
    sequences BIGINT,
    requests_per_minute BIGINT
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    hash TEXT NOT NULL UNIQUE,        -- SHA-256 of the key, hex; the key itself is never stored
    prefix TEXT NOT NULL,             -- its first characters, to recognise it in a list
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys (user_name);

ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
ALTER TABLE jobs ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private';
-- Attempts given back by a draining worker (they do not count against max_attempts).
ALTER TABLE jobs ADD COLUMN releases BIGINT NOT NULL DEFAULT 0;
-- Microseconds since the epoch: jobs created within one second keep their order.
ALTER TABLE jobs ADD COLUMN created_us BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN variant_deleted_at BIGINT;
UPDATE jobs SET created_us = created_at * 1000000;
CREATE INDEX jobs_kind_created_us ON jobs (kind, created_us);
CREATE INDEX jobs_owner_status ON jobs (owner, status);

ALTER TABLE job_events ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;

ALTER TABLE variants ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
ALTER TABLE variants ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private';

ALTER TABLE datasets ADD COLUMN owner TEXT NOT NULL DEFAULT 'local';
ALTER TABLE datasets ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private';
