-- Why an agent that is not paused claims no jobs now (it says so with its
-- claims: its disk is below `min_free_disk`); cleared by its next plain claim.
ALTER TABLE agents ADD COLUMN holding_back TEXT;
