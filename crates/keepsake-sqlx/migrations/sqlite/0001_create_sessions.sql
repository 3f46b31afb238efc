-- keepsake: the session table (SQLite).
-- Every statement is idempotent: running this file again changes nothing.
CREATE TABLE IF NOT EXISTS sessions (
    id VARCHAR(64) PRIMARY KEY NOT NULL,
    user_id TEXT NULL,
    ip_address VARCHAR(45) NULL,
    user_agent TEXT NULL,
    payload TEXT NOT NULL,
    last_activity INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
