-- Log drains: an environment's OTLP collector (JSON: the endpoint and the
-- headers, which are never shown back), and how far each job's stream has been
-- sent to it, so a collector that was down gets what it missed.
ALTER TABLE environments ADD COLUMN log_drain TEXT;
CREATE TABLE log_drain_cursors (
    job_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    sent   INTEGER NOT NULL,
    PRIMARY KEY (job_id, stream)
);
