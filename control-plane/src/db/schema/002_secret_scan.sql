-- Added in v1.2: the project's secret-scan settings (kiln_protocol::SecretScanSettings).
ALTER TABLE projects ADD COLUMN secret_scan TEXT NOT NULL DEFAULT '{}';
