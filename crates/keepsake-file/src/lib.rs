//! [`FileStore`]: keepsake sessions in files, one file per session.
//!
//! Applications use it through the `keepsake` crate (feature `file`).
//!
//! # When to choose it
//!
//! One server, or a few processes on one machine sharing a local directory,
//! that want sessions to survive a restart without running a database. For
//! several machines, use PostgreSQL, MySQL/MariaDB or Redis: the locks below
//! are advisory locks of the local kernel, and network filesystems implement
//! them unreliably or not at all.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use keepsake_core::SessionStore;
//! use keepsake_file::FileStore;
//!
//! # let dir = std::env::temp_dir().join(format!("keepsake-doc-lib-{}", std::process::id()));
//! let store = FileStore::new(&dir)?; // e.g. "/var/lib/myapp/sessions"
//! assert_eq!(store.kind(), "file");
//! // Collect expired sessions now and then (the layer's lottery does this).
//! let removed = store.gc(keepsake_core::now()).await?;
//! assert_eq!(removed, 0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), keepsake_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Layout
//!
//! ```text
//! <dir>/                         mode 0700, created by FileStore::new
//!   3f/                          one shard per first two hex characters of the key
//!     .lock                      the shard's lock file (never removed)
//!     3fa9…e1                    a session: its 64-hex storage key, mode 0600
//!     .tmp-5b0c1d2e3f405162      a write in progress (renamed into place when complete)
//!   users/                       the per-user index
//!     9c/9c41…07/                hex SHA-256 of a user id
//!       3fa9…e1                  empty marker: that user owns session 3fa9…e1
//! ```
//!
//! Every name comes from a storage key (the SHA-256 of the session id) or the
//! SHA-256 of a user id: nothing a client sends ever becomes part of a path,
//! and the directory listing does not hand out session ids.
//!
//! # File format
//!
//! ```text
//! keepsake-session 1
//! {"version":3,"last_activity":1700000000,"expires_at":1700007200,"user_id":"42","ip_address":null,"user_agent":null,"payload_len":27}
//! {"d":{"cart":3},"c":1700…}
//! ```
//!
//! A line naming the format and its version, one line of JSON with every
//! field of the record (the key is the file name) and the payload's length in
//! bytes, then the payload exactly as the layer encoded it. A file whose size
//! is not exactly header plus payload length, or whose header does not parse,
//! is torn or damaged: `load` logs it at `warn` and treats it as absent (the
//! visitor gets a fresh session), `create` may replace it, and `gc` removes
//! it. A file of a newer format version is treated as absent but never
//! replaced or removed, so a newer keepsake can share the directory during a
//! rolling upgrade.
//!
//! # Writes and crashes
//!
//! Every write goes to a temporary file in the session's shard directory
//! (`.tmp-` followed by random hex, a name no session can have), is flushed
//! with `fsync`, and is renamed over the session file; then the directory is
//! flushed. Rename is atomic, so readers (which take no lock) and a crash at
//! any instant see the old version or the new one, never a mix.
//! [`FileStore::with_sync`] can turn the flushes off: writes stay atomic, but
//! a power loss may forget the latest ones. Temporary files left by a crashed
//! writer are removed by `gc` once they are ten minutes old.
//!
//! # Locking
//!
//! `create`, `save` (compare-and-swap on the version), `touch`, `destroy` and
//! `gc`'s removals read the current file and write the new one while holding
//! an exclusive advisory lock (`flock` on unix) on the shard's `.lock` file.
//! The lock is on a file of its own because each write replaces the session
//! file with a new inode: a lock held on the old inode would not exclude a
//! writer that opened the new one. Locks are per shard, so 256 of them cover
//! the whole directory and none is ever deleted (deleting a lock file while
//! another process waits on it would let two writers in). Each operation opens
//! the lock file anew, so two `FileStore`s in one process exclude each other
//! exactly as two processes do: no write is lost either way.
//!
//! All file I/O runs on tokio's blocking thread pool
//! (`tokio::task::spawn_blocking`), never on an async worker.
//!
//! # Expiry and `gc`
//!
//! `load` never returns an expired record. [`SessionStore::gc`](keepsake_core::SessionStore::gc) walks the
//! shards one by one, reads only the header of each session file, and removes
//! the expired and the damaged ones (checking each again under the shard's
//! lock, so a session re-created meanwhile survives), along with their index
//! entries. Lock files, temporary files younger than ten minutes and any file
//! not named by 64 hex characters are left alone. It returns how many
//! sessions it removed. The `prune_bench` example measures it:
//! `cargo run --release -p keepsake-file --example prune_bench`.
//!
//! # Per-user index
//!
//! `users/<h[..2]>/<h>/` (where `h` is the hex SHA-256 of the user id) holds
//! one empty file per session of that user, named by the session's key, so
//! `list_for_user` and `destroy_for_user` read only that user's sessions. An
//! entry is added before the session file is written and removed after it
//! changes owner or is deleted; an entry left behind by a crash is ignored
//! (the session file's own `user_id` decides) and removed the next time the
//! user's sessions are listed.
//!
//! The index never fails a write that succeeded: when an entry cannot be
//! written or removed (a full disk, wrong permissions, something else in
//! its place), the session is still created, saved or destroyed, and the
//! failure is logged at `warn` ("per-user index not updated"). An entry left
//! behind is dropped by the next listing, as above. A missing entry is
//! written again by the session's next save, which checks that its entry
//! exists; until then `list_for_user` and `destroy_for_user` do not see that
//! session, so treat that warning as one to act on.
//!
//! # Permissions
//!
//! On unix the directories this store creates are mode 0700 and its files
//! 0600 (before the umask, which can only narrow them). An existing directory
//! passed to [`FileStore::new`] keeps its mode.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod format;
mod io;
mod store;

pub use store::FileStore;
