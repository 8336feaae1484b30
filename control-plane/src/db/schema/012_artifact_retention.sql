-- When the retention policy (`--artifact-retention-days`) removed this
-- deployment's artifacts and release; its artifact rows stay as the record of
-- what was built.
ALTER TABLE deployments ADD COLUMN artifacts_removed_at INTEGER;
CREATE INDEX deployments_artifacts_removed ON deployments(artifacts_removed_at)
    WHERE artifacts_removed_at IS NOT NULL;
