-- keepsake: the session table (MySQL 5.7+/8, MariaDB 10.3+).
-- Every statement is idempotent: running this file again changes nothing.
-- The indexes are declared inside CREATE TABLE because MySQL has no
-- CREATE INDEX IF NOT EXISTS. user_id is a VARCHAR so that it can be indexed
-- whole; the binary collation makes every comparison exact, as on the other
-- backends. The payload is LONGTEXT: a session is not limited to 64 KiB.
-- Tables made by earlier versions also have an index on last_activity,
-- which `migrate()` drops (no query needs it; every save maintained it).
CREATE TABLE IF NOT EXISTS sessions (
    id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id VARCHAR(255) NULL,
    ip_address VARCHAR(45) NULL,
    user_agent TEXT NULL,
    payload LONGTEXT NOT NULL,
    last_activity BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (id),
    INDEX sessions_expires_at_idx (expires_at),
    INDEX sessions_user_id_idx (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
