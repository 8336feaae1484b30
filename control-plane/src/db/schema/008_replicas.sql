-- Replicas: the queue as claims read it (only what is waiting, in order), and
-- logs kept in an object store, one object per acknowledged append.
CREATE INDEX deployments_queued ON deployments(seq) WHERE status = 'queued';

-- One row per append acknowledged to an agent, when logs go to an object store:
-- the stream's bytes are the objects in start_at order, end to end.
CREATE TABLE log_chunks (
    job_id     TEXT NOT NULL,
    stream     TEXT NOT NULL,
    start_at   INTEGER NOT NULL,
    length     INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    marks      TEXT NOT NULL,       -- JSON [[offset, unix millis], ...]
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, stream, start_at)
);
