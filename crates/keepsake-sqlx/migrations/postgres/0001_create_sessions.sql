-- keepsake: the session table (PostgreSQL).
-- Every statement is idempotent: running this file again changes nothing.
CREATE TABLE IF NOT EXISTS sessions (
    id varchar(64) PRIMARY KEY,
    user_id text NULL,
    ip_address varchar(45) NULL,
    user_agent text NULL,
    payload text NOT NULL,
    last_activity bigint NOT NULL,
    expires_at bigint NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires_at_idx ON sessions (expires_at);
