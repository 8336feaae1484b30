-- Provenance: the control plane's signing keys (public halves; the private key
-- stays in the data dir), the build cache entries each job published, as the
-- control plane recorded them, the build variables a job was given (names and
-- flags, never values), the signed statements of each build, and the policy
-- an environment holds its releases to.
CREATE TABLE provenance_keys (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
CREATE TABLE cache_publications (
    job_id        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    cache_key     TEXT NOT NULL,
    project_id    TEXT NOT NULL,
    scope         TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    published_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, kind, cache_key)
);
ALTER TABLE jobs ADD COLUMN variables TEXT;
CREATE TABLE provenance (
    job_id        TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    subject       TEXT NOT NULL,
    envelope      TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (job_id, subject)
);
CREATE INDEX provenance_by_deployment ON provenance(deployment_id);
ALTER TABLE environments ADD COLUMN require_policy TEXT;
