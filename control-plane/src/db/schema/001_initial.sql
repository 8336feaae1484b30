-- Times are Unix milliseconds (UTC). JSON columns hold serde_json text.

CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    labels       TEXT NOT NULL,          -- JSON array
    token_hash   TEXT NOT NULL UNIQUE,   -- sha256 hex; the token itself is never stored
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER
);

CREATE TABLE projects (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    repository_url   TEXT NOT NULL,
    backend_path     TEXT NOT NULL,
    storefront_path  TEXT,
    agent_labels     TEXT NOT NULL,      -- JSON array
    repository_token TEXT,
    created_at       INTEGER NOT NULL
);

CREATE TABLE environments (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects(id),
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,          -- long_lived | preview
    branch       TEXT NOT NULL,          -- branch name or glob
    pull_request INTEGER,
    auto_deploy  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    removed_at   INTEGER                 -- preview environments of closed pull requests
);
CREATE UNIQUE INDEX environments_live_name ON environments(project_id, name) WHERE removed_at IS NULL;

CREATE TABLE variables (
    environment_id TEXT NOT NULL REFERENCES environments(id),
    name           TEXT NOT NULL,
    value          TEXT NOT NULL,
    secret         INTEGER NOT NULL,
    PRIMARY KEY (environment_id, name)
);

CREATE TABLE deployments (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: newest first is seq DESC
    id                TEXT NOT NULL UNIQUE,
    project_id        TEXT NOT NULL REFERENCES projects(id),
    environment_id    TEXT NOT NULL REFERENCES environments(id),
    commit_sha        TEXT NOT NULL,
    branch            TEXT NOT NULL,
    author            TEXT NOT NULL,
    message           TEXT NOT NULL,
    status            TEXT NOT NULL,
    backend_status    TEXT NOT NULL,
    storefront_status TEXT NOT NULL,
    reason            TEXT,
    detail            TEXT,              -- JSON
    redeploy_of       TEXT REFERENCES deployments(id),
    attempts          INTEGER NOT NULL DEFAULT 0,
    current_job_id    TEXT,
    agent_id          TEXT,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX deployments_by_environment ON deployments(environment_id, seq);
CREATE INDEX deployments_by_status ON deployments(status, seq);
-- The model's rule, enforced by the database too.
CREATE UNIQUE INDEX deployments_one_live_per_environment ON deployments(environment_id) WHERE status = 'live';

CREATE TABLE transitions (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    status        TEXT NOT NULL,
    at            INTEGER NOT NULL,
    reason        TEXT
);
CREATE INDEX transitions_by_deployment ON transitions(deployment_id, seq);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    agent_id      TEXT NOT NULL REFERENCES agents(id),
    attempt       INTEGER NOT NULL,
    claimed_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX jobs_by_deployment ON jobs(deployment_id, attempt);

CREATE TABLE artifacts (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);

CREATE TABLE upload_tickets (
    token_hash    TEXT PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    expires_at    INTEGER NOT NULL
);
