-- Added in v1.3: whether a project's builds clone git submodules (off by default).
ALTER TABLE projects ADD COLUMN submodules INTEGER NOT NULL DEFAULT 0;
