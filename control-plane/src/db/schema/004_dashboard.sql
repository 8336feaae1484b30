-- Added for the dashboard: people who sign in, their sessions, and what agents say
-- of themselves.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,          -- argon2id, PHC string
    role          TEXT NOT NULL,          -- viewer | deployer | admin
    created_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,          -- sha256 of the cookie's token
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

ALTER TABLE agents ADD COLUMN version TEXT;
ALTER TABLE deployments ADD COLUMN author_avatar TEXT;
CREATE INDEX deployments_by_project ON deployments(project_id, seq);
CREATE INDEX jobs_by_agent ON jobs(agent_id, finished_at);
