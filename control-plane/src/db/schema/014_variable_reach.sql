-- Where a variable reaches: the build, and the running release's containers.
-- Both, for the variables made before.
ALTER TABLE variables ADD COLUMN build INTEGER NOT NULL DEFAULT 1;
ALTER TABLE variables ADD COLUMN runtime INTEGER NOT NULL DEFAULT 1;
