-- The fleet: agents paused or revoked, what they say of their hosts, registration
-- tokens as objects (one-time, expiring, revocable), and which agents may build
-- a project's long-lived environments and its previews.
ALTER TABLE agents ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN revoked_at INTEGER;
ALTER TABLE agents ADD COLUMN facts TEXT;
ALTER TABLE agents ADD COLUMN registration_token_id TEXT;

CREATE TABLE registration_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT,
    token_hash TEXT NOT NULL UNIQUE,   -- sha256 of the token; the token itself is shown once
    one_time   INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    used_at    INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);

ALTER TABLE projects ADD COLUMN long_lived_agent_labels TEXT NOT NULL DEFAULT '[]';
ALTER TABLE projects ADD COLUMN preview_agent_labels TEXT NOT NULL DEFAULT '[]';
