-- keepsake: the per-user index covers only sessions that have a user
-- (SQLite). Most sessions are anonymous, and a save then maintains no
-- user_id index entry at all; `WHERE user_id = ?` implies `user_id IS NOT
-- NULL`, so the per-user queries use this index. The full index that tables
-- made by earlier versions have, and their `last_activity` index (no query
-- filters or sorts a whole table on it), are dropped by `migrate()` after
-- this file has run.
CREATE INDEX IF NOT EXISTS sessions_user_id_partial_idx ON sessions (user_id) WHERE user_id IS NOT NULL;
