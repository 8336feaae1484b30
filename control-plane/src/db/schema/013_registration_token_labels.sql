-- The labels a registration token may grant (a JSON list); an agent registered
-- with it carries at most these. NULL, for tokens made before, grants none.
ALTER TABLE registration_tokens ADD COLUMN labels TEXT;
