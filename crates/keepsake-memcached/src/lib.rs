//! [`MemcachedStore`]: keepsake sessions in memcached, the default session
//! driver of Lumen.
//!
//! # When to choose memcached
//!
//! Choose it when memcached is already part of the deployment and sessions may
//! be lost now and then: memcached is a cache. It keeps items in memory only,
//! loses them all when a server restarts, and evicts the least recently used
//! ones when it runs out of memory, so give it room for every live session.
//! Several app servers share the sessions without sticky routing. When
//! sessions must survive restarts, or when users need a "your devices" page,
//! use Redis or an SQL store instead.
//!
//! # Setup
//!
//! ```no_run
//! # async fn run() -> keepsake_core::Result<()> {
//! use keepsake_memcached::MemcachedStore;
//!
//! // One server, default settings: keys `keepsake:<storage key>`, 16
//! // connections, 2 s timeouts, memcached's default 1 MiB item size.
//! let store = MemcachedStore::connect("memcache://127.0.0.1:11211").await?;
//!
//! // Or tuned, on several servers:
//! let store = MemcachedStore::builder("memcache://10.0.0.1:11211,10.0.0.2:11211")
//!     .prefix("shop:session:")
//!     .max_item_size(2 * 1024 * 1024) // the servers run with `-I 2m`
//!     .connect()
//!     .await?;
//! # drop(store);
//! # Ok(()) }
//! ```
//!
//! Hand the store to keepsake's `SessionLayer` like any other store.
//!
//! # How sessions are stored
//!
//! Each session is one item under `{prefix}{storage key}` (the 64 hex
//! characters of the hashed session id, so the key is always a valid
//! memcached key and never the id itself). Its value is a one-line JSON
//! header with `last_activity`, `expires_at`, `version`, `user_id`,
//! `ip_address` and `user_agent`, a newline, then the payload byte for byte.
//! Items this store cannot read (written by something else, or damaged) are
//! logged at `warn` and treated as absent.
//!
//! # Expiry
//!
//! memcached expires items itself, so [`gc`](keepsake_core::SessionStore::gc)
//! has nothing to do and returns 0. An item's expiry time (`exptime`) is
//! derived from the record's `expires_at`, following memcached's rule that a
//! value above 30 days (2,592,000 seconds) is an absolute unix time:
//!
//! | `expires_at` is … | `exptime` sent |
//! |---|---|
//! | already past | `-1`: memcached stores the item as expired and never returns it (an `add` on a taken key is still refused) |
//! | at most 30 days away | the seconds left |
//! | more than 30 days away ("remember me") | `expires_at` itself, as an absolute time (capped at January 2038, the largest time memcached parses) |
//!
//! memcached's clock moves in whole seconds, so an item can outlive its
//! expiry by a moment; the `expires_at` inside the value decides, and an
//! expired record never loads.
//!
//! # Compare and swap
//!
//! - `create` is memcached's `add`: it stores only if the key is free, so an
//!   id collision is a [`Cas::Conflict`](keepsake_core::Cas::Conflict), never
//!   an overwrite.
//! - `save(record, expected)` is `gets` then `cas` on one connection: a
//!   missing item is a conflict (a destroyed, expired or evicted session is
//!   never re-created), so is a stored version other than `expected`, and the
//!   `cas` with the token from `gets` applies only if nothing wrote or deleted
//!   the item in between.
//!
//! # `touch` rewrites the item
//!
//! `last_activity` and `expires_at` live inside the value, and memcached's
//! classic commands cannot report an item's remaining lifetime. memcached's
//! own `touch` command would move the expiry but leave the value's
//! timestamps stale, so `load` would report a wrong `expires_at`. This store
//! therefore touches with `gets` then `cas`: it rewrites the item with the new
//! timestamps and the same payload and version, in two round trips. If a
//! concurrent save wins the race, the touch reads the item again (a few times
//! at most; every such save moved the expiry itself). A missing or expired
//! session is never brought back. The layer touches only when its
//! `touch_after` interval has passed, so this is rare.
//!
//! # No per-user index
//!
//! memcached cannot list or scan keys, so it cannot find a user's sessions:
//! [`list_for_user`](keepsake_core::SessionStore::list_for_user) and
//! [`destroy_for_user`](keepsake_core::SessionStore::destroy_for_user) return
//! [`Error::Unsupported`](keepsake_core::Error::Unsupported). `user_id` is
//! still stored with each session. Everything else works.
//!
//! # Size limit
//!
//! memcached refuses items larger than its item size (`-I`, 1 MiB by
//! default), header and key included. A session whose item would not fit is
//! refused before anything is sent, with
//! [`Error::TooLarge`](keepsake_core::Error::TooLarge) naming its size and the
//! limit ([`MemcachedStore::max_value_size`]). Set
//! [`max_item_size`](MemcachedStoreBuilder::max_item_size) when the servers run
//! with another `-I`.
//!
//! # Several servers
//!
//! Give several comma-separated addresses. Each session lives on exactly one
//! server, chosen by rendezvous hashing of the server's address and the key:
//! the order of the list does not matter, and adding or removing a server
//! moves only the sessions it gains or held. Every app server must list the
//! same addresses, spelled the same way. There is no failover: while a server
//! is down, requests for its sessions fail with
//! [`Error::Backend`](keepsake_core::Error::Backend) (answered with a 500 by the
//! layer) rather than being sent elsewhere, where they would look like new,
//! empty sessions.
//!
//! # Connections
//!
//! The client speaks memcached's text protocol (`get`, `gets`, `add`, `cas`,
//! `delete`, `version`) over tokio's `TcpStream`, with a pool of connections
//! per server ([`pool_size`](MemcachedStoreBuilder::pool_size), 16 by
//! default), so concurrent requests run side by side rather than one after
//! another. A connection that failed, timed out or was abandoned mid-request
//! is closed, never reused; one the server closed while idle (a restart) is
//! noticed and replaced before use. A failed request is not retried, since a
//! retried `cas` could apply twice. Every request has a time limit
//! ([`timeout`](MemcachedStoreBuilder::timeout), 2 seconds by default). SASL
//! authentication (binary protocol only) and TLS are not supported: keep
//! memcached on a private network.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod pool;
mod proto;
mod store;

pub use store::{
    DEFAULT_MAX_ITEM_SIZE, DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_TIMEOUT, MemcachedStore,
    MemcachedStoreBuilder,
};
