-- Replicas: the queue as claims read it (only what is waiting, in order), and
-- logs kept in an object store, one object per acknowledged append.
CREATE INDEX deployments_queued ON deployments(seq) WHERE status = 'queued';
