-- Deploys run by agents with the deploy role. An environment's deploy settings
-- (JSON), and on a deployment those its deploy uses, fixed when the deploy
-- begins (NULL: the control plane's own deploy step), with what it does
-- (deploy or rollback). A job is a build or a deploy.
ALTER TABLE environments ADD COLUMN deploy TEXT;
ALTER TABLE deployments ADD COLUMN deploy_settings TEXT;
ALTER TABLE deployments ADD COLUMN deploy_action TEXT;
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'build';
