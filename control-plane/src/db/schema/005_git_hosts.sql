-- Git hosts: webhooks in (a secret per project, deliveries remembered), commit
-- statuses and preview comments out (an outbox, delivered in order per commit and
-- context, retried across restarts).
ALTER TABLE projects ADD COLUMN webhook_secret TEXT;
ALTER TABLE projects ADD COLUMN git_host_kind TEXT;      -- github | gitlab | gitea
ALTER TABLE projects ADD COLUMN git_host_api_url TEXT;
ALTER TABLE projects ADD COLUMN git_host_token TEXT;     -- never shown back
ALTER TABLE deployments ADD COLUMN author_login TEXT;
ALTER TABLE deployments ADD COLUMN pusher TEXT;

-- One row per webhook delivery, so a redelivery gets the first answer again.
CREATE TABLE hook_deliveries (
    delivery    TEXT PRIMARY KEY,     -- '<host>:<delivery id>'
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX hook_deliveries_by_age ON hook_deliveries(received_at);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id      TEXT NOT NULL,
    deployment_id   TEXT NOT NULL,
    kind            TEXT NOT NULL,    -- status | comment
    ordering_key    TEXT NOT NULL,    -- rows with one key go out in id order
    status          TEXT NOT NULL,    -- the deployment status reported
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    done_at         INTEGER,          -- delivered, or given up
    delivered       INTEGER NOT NULL DEFAULT 0,
    result          TEXT,             -- the last attempt's answer or error
    created_at      INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox(done_at, id);
CREATE INDEX outbox_by_deployment ON outbox(deployment_id, id);

-- The one comment a pull request's preview keeps editing.
CREATE TABLE preview_comments (
    project_id   TEXT NOT NULL,
    pull_request INTEGER NOT NULL,
    comment_id   TEXT NOT NULL,
    PRIMARY KEY (project_id, pull_request)
);
