-- Outbound webhooks: per project, the events each asks for, and every delivery
-- with its attempts. A delivery's body is fixed when its event happens; each
-- attempt signs it afresh.
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,        -- JSON list
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_by_project ON webhooks(project_id);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL,
    event           TEXT NOT NULL,
    deployment_id   TEXT NOT NULL,
    body            TEXT NOT NULL,
    next_attempt_at INTEGER,         -- NULL once delivered or given up
    give_up_at      INTEGER NOT NULL,
    delivered       INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries(webhook_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    at          INTEGER NOT NULL,
    status      INTEGER,
    answer      TEXT NOT NULL,
    took_ms     INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts(delivery_id, at);
