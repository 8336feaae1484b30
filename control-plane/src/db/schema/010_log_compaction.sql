-- Logs in an object store: once a job has ended, the leader gathers each of its
-- streams' chunks (one object per acknowledged append) into one object, and
-- notes it here, so a finished log is read with one request, not thousands.
ALTER TABLE jobs ADD COLUMN logs_compacted_at INTEGER;
CREATE INDEX jobs_logs_to_compact ON jobs(finished_at) WHERE logs_compacted_at IS NULL;
