-- The last webhook delivery each project saw, for its Connect Git page:
-- when, which event, and how it was answered (or why it was refused).
ALTER TABLE projects ADD COLUMN last_hook_at INTEGER;
ALTER TABLE projects ADD COLUMN last_hook_event TEXT;
ALTER TABLE projects ADD COLUMN last_hook_status INTEGER;
ALTER TABLE projects ADD COLUMN last_hook_answer TEXT;
