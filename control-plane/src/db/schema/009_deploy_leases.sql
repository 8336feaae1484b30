-- Replicas: the replica running a deployment's deploy step. It renews the
-- deployment's lease_expires_at while the step runs; once that lapses (the
-- replica died), the leader takes the deploy over and runs it again.
ALTER TABLE deployments ADD COLUMN deployer TEXT;
