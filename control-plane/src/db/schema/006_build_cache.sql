-- The agents' build cache: a deployment may build without it (a redeploy with
-- `{"cache": false}`), and a preview reads its base branch's entries.
ALTER TABLE deployments ADD COLUMN use_cache INTEGER NOT NULL DEFAULT 1;
ALTER TABLE environments ADD COLUMN base_branch TEXT;
