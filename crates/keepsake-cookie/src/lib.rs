//! keepsake's XChaCha20-Poly1305 encryption: [`CookieStore`], which keeps the whole
//! session in the client's cookie, and [`EncryptedStore`], which encrypts
//! session payloads at rest in any other store.
//!
//! Applications use them through the `keepsake` crate (features `cookie` and
//! `encryption`).
//!
//! # Keys
//!
//! A [`Key`] is 32 bytes (256 bits), given as raw bytes or base64
//! (standard or url-safe, padded or not, with or without Laravel's `base64:`
//! prefix). Shorter keys are refused with [`Error::Config`](keepsake_core::Error::Config);
//! longer material is reduced to 32 bytes with SHA-256. Keys never appear in
//! `Debug` output: a short fingerprint does instead.
//!
//! [`Keys`] holds the keys in use: the first encrypts, every one decrypts.
//! To rotate a key, put the new one first and keep the old one after it for
//! one session lifetime, then remove it:
//!
//! ```
//! use keepsake_cookie::{CookieStore, Key, Keys};
//!
//! # let (new_key, old_key) = (Key::generate().to_base64(), Key::generate().to_base64());
//! // e.g. SESSION_KEY="<new key>,<old key>" in the environment
//! let keys = Keys::from_base64_list(&format!("{new_key},{old_key}"))?;
//! let store = CookieStore::new(keys);
//! # Ok::<(), keepsake_core::Error>(())
//! ```
//!
//! # Sealed formats
//!
//! Every sealed value (a cookie value, a stored payload) starts with a format
//! byte:
//!
//! - **Format 2**, what this version seals: XChaCha20-Poly1305 with a fresh
//!   random 192-bit nonce per value. Nonces that long never repeat in
//!   practice, so there is no practical limit on how many values one key
//!   seals; the cookie store seals on every write and touch.
//! - **Format 1**, what earlier versions sealed: AES-256-GCM with a random
//!   96-bit nonce, which is safe for only about 2^32 values per key. Such
//!   values still open with the same keys, rotation included, **until
//!   keepsake 0.3**, which will drop format 1: a cookie or stored payload
//!   still in format 1 then starts an empty session. A value is rewritten in
//!   format 2 the next time its session is saved (a cookie also when it is
//!   touched), so active sessions migrate by themselves.
//!
//! # The cookie store: when to choose it
//!
//! [`CookieStore`] needs no server-side state at all: nothing to run, nothing
//! to collect, any number of servers. It fits small sessions (a locale, a
//! flash message, a user id) when the points below are acceptable:
//!
//! - **4 KiB.** Browsers keep at most 4096 bytes per cookie, name and
//!   attributes included. A session that would not fit is refused with
//!   [`Error::TooLarge`](keepsake_core::Error::TooLarge) when it is saved; see
//!   [`CookieStore`] for the exact rule. Roughly 2.8 KB of payload fit.
//! - **No revocation before expiry.** The server keeps nothing, so it cannot
//!   end a session early: logging out removes the cookie from that browser,
//!   but a copy of the value (stolen, or simply kept) opens until its
//!   `expires_at`. "Log out other devices" (`destroy_for_user`) is
//!   unsupported. Keep lifetimes short, or use a server-side store when
//!   revocation matters. Rotating every key out ends all sessions at once.
//! - **No merging of concurrent writes.** Two requests of one session each
//!   carry their own copy, and the browser keeps the cookie of whichever
//!   response came last.
//! - Every request carries the cookie, so its size is paid on every request.
//!
//! The value is encrypted and authenticated: the client can read nothing and
//! change nothing. A tampered, truncated, foreign or garbage cookie opens as
//! nothing (logged at `warn`) and the visitor gets a fresh session.
//!
//! # Encryption at rest
//!
//! [`EncryptedStore`] wraps any store (`EncryptedStore::new(store, key)`):
//! payloads are encrypted before they reach the database, file or Redis,
//! bound to their storage key, and decrypted when loaded. A payload that does
//! not decrypt loads as an empty session with a `warn`. Turning encryption on
//! therefore starts everyone with an empty session; rotating keys as above
//! does not.
//!
//! # Features
//!
//! This crate has no features: the cookie store and encryption at rest share
//! everything they depend on.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod cookie;
mod encrypted;
mod key;

pub use cookie::{COOKIE_LIMIT, CookieStore, DEFAULT_ATTRIBUTES_RESERVE};
pub use encrypted::EncryptedStore;
pub use key::{KEY_LEN, Key, Keys};
