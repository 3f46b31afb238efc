//! [`RedisStore`]: keepsake sessions in Redis, on a single node or a Redis
//! Cluster.
//!
//! # When to choose Redis
//!
//! Choose it when several app servers share sessions and you already run
//! Redis, or want session reads and writes in well under a millisecond
//! without a database. Redis expires sessions itself, so there is no garbage
//! collection to schedule, and Redis Cluster spreads sessions over as many
//! nodes as you need. Choose PostgreSQL or MySQL instead when sessions must
//! survive a Redis restart without persistence configured, or when you want
//! to query them with SQL.
//!
//! # Setup
//!
//! ```no_run
//! # async fn example() -> keepsake_core::Result<()> {
//! use keepsake_redis::RedisStore;
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! // or: RedisStore::connect_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]).await?
//! let store = store.with_prefix("myapp:session:"); // default `keepsake:`
//! # let _ = store; Ok(()) }
//! ```
//!
//! Hand the store to the session layer (`SessionLayer::new(store)` in the
//! `keepsake` crate). A store is a cheap handle: clone it freely.
//! [`RedisStore::new`] and [`RedisStore::from_cluster`] take a connection you
//! configured yourself (TLS, other timeouts); this crate re-exports
//! [`redis`] so the versions match.
//!
//! # Data layout
//!
//! | key | type | contents |
//! |---|---|---|
//! | `{prefix}{storage key}` | hash | `payload`, `version`, `expires_at`, `last_activity`, and when present `user_id`, `ip_address`, `user_agent` |
//! | `{prefix}user:{hex SHA-256 of the user id}` | set | the storage keys of the user's sessions |
//!
//! The storage key is the hex SHA-256 of the session id, never the id
//! itself, so a Redis dump hands out no live session. The payload is stored
//! byte for byte as the layer encoded it. Timestamps are unix seconds, as in
//! the SQL stores.
//!
//! # Expiry is Redis's own
//!
//! Every session key carries a `PEXPIREAT` equal to its `expires_at` (in
//! milliseconds), kept in step by every create, save and touch, so a session
//! disappears the moment it expires (Redis never returns an expired key and
//! reclaims its memory soon after) and
//! [`gc`](keepsake_core::SessionStore::gc) has nothing to do: it returns 0.
//! A user's index set expires with the longest-lived session it lists (its
//! expiry only ever moves later), so the sets of users who never come back
//! disappear as well.
//!
//! # One round trip per operation
//!
//! - `load`: one `HMGET`. On a single node, loads that arrive while another
//!   is in flight wait for it and then go out together as one pipeline (no
//!   timer: a load alone goes out at once); each gets its own answer, and a
//!   failed round trip fails every load in it. Under load (once a pipeline
//!   carried more than one load), the load that starts a pipeline first
//!   yields to the scheduler once, so the loads of requests that are ready
//!   at that moment join it. On a cluster each load is its own command.
//!
//!   A store made by [`RedisStore::connect`] on a plain `redis://` address
//!   (not TLS, not a Unix socket, not RESP3) sends those pipelines on a
//!   second connection of its own, opened at the first load: only one
//!   pipeline of loads is in flight at a time, so the caller that leads it
//!   writes the `HMGET`s and reads their replies itself, with no background
//!   task in between, and decodes them in place. It logs in and selects the
//!   database as the URL says, is replaced after any failure (a pipeline
//!   the server closed while it sat idle is sent once more on a new one),
//!   and has the same 1 s connect and response timeouts. A store built with
//!   [`RedisStore::new`] sends its loads on the connection it was given.
//! - `create`: one Lua script: insert-if-absent, `PEXPIREAT`.
//! - `save`: one Lua script: compare-and-swap on `version`, then the new
//!   fields and `PEXPIREAT`. It never re-creates a key that was destroyed or
//!   has expired, so a late save cannot resurrect a session.
//! - `touch`: one Lua script that rewrites `last_activity`, `expires_at` and
//!   the key's expiry of an existing hash, never the payload, and never
//!   creates a missing key.
//! - `destroy`: one Lua script that deletes the hash.
//!
//! Scripts run by `EVALSHA` and fall back to loading the script when the
//! server does not know it (after a restart or failover).
//!
//! On a single node the script calls are grouped the way loads are: calls
//! that arrive while another is in flight (of any script, for any session)
//! go out together as one pipeline of `EVALSHA`s. Each is still its own
//! atomic script with its own answer; a script that fails on the server
//! fails only its own call, and a failed round trip fails every call in it.
//! Redis then spends its per-round-trip socket work once per pipeline
//! instead of once per save. On a cluster each call is its own command.
//!
//! On a single node the owner's index set is updated inside the same script
//! as the session, a `retire` included (a login or logout ends the old
//! record: the layer passes the owner it loaded, and the script removes the
//! entry from that owner's set). Keeping the index exact costs one more
//! command in the rarer cases: a `save` that changes the owner (removing the
//! entry from the previous owner's set), a `destroy` of a session with an
//! owner, and a `touch` of a session with an owner (extending the set's
//! expiry, so the set outlives the session whose expiry the touch just
//! moved). The removals are a small script too, so they join the pipeline
//! of the calls waiting beside them rather than taking a round trip of
//! their own.
//!
//! # Redis Cluster
//!
//! Each session is one key, so every script touches one slot and no
//! operation crosses slots. A user's index set is another key, usually in
//! another slot, so on a cluster it is maintained with separate commands
//! (passing both keys to one script would be a `CROSSSLOT` error):
//!
//! - `create` and `save` of a session with an owner first add it to the
//!   owner's set, then write the session (two round trips). A failure between
//!   the two leaves at most an entry without a session, never a session
//!   missing from its owner's set.
//! - The set can therefore briefly hold a stale entry (a session that was
//!   destroyed, expired, or not written after all), or briefly lack one (a
//!   listing that runs between the two steps of a concurrent `create` drops
//!   the entry whose session it does not see yet; the next save or touch of
//!   that session adds it back).
//! - [`list_for_user`](keepsake_core::SessionStore::list_for_user) heals the
//!   set: it loads every entry and removes those whose session is gone.
//! - [`destroy_for_user`](keepsake_core::SessionStore::destroy_for_user)
//!   deletes every session it finds in the set, checking the owner inside
//!   each session's own script; a session created concurrently with it may
//!   be missed. Call it again after the login that should be the only one if
//!   that matters.
//!
//! # Outages
//!
//! A request while Redis is unreachable fails with
//! [`Error::Backend`](keepsake_core::Error::Backend) carrying the driver's
//! error, within about two seconds with the connections that
//! [`RedisStore::connect`] and [`RedisStore::connect_cluster`] make (their
//! connect and response timeouts are 1 s). The connections re-establish
//! themselves in the background: once Redis is back, requests succeed again
//! without restarting the application. Sessions survive a Redis restart only
//! if Redis persistence (RDB or AOF) is enabled.
//!
//! Only commands available since Redis 4.0 are used.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod conn;
mod reader;
mod scripts;
mod store;

pub use redis;
pub use store::{DEFAULT_PREFIX, RedisStore};
