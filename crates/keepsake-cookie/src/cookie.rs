//! [`CookieStore`]: the whole session in the client's cookie.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keepsake_core::{
    Cas, ClientSideStore, Error, Record, Result, SessionId, SessionInfo, SessionStore, StorageKey,
};

use crate::key::{Keys, OVERHEAD};

const KIND: &str = "cookie";

/// The associated-data purpose of cookie values (the cookie name follows).
const PURPOSE: &[u8] = b"keepsake session cookie";

/// What browsers promise to keep of one cookie: 4096 bytes of name, value and
/// attributes (RFC 6265, section 6.1).
pub const COOKIE_LIMIT: usize = 4096;

/// The default room left for the cookie's attributes (`Path`, `Domain`,
/// `Expires`, `Max-Age`, `HttpOnly`, `Secure`, `SameSite`).
pub const DEFAULT_ATTRIBUTES_RESERVE: usize = 200;

/// The layer's default cookie name.
const DEFAULT_COOKIE_NAME: &str = "keepsake_session";

/// Raw id, last activity, expiry, version, flags.
const FIXED_LEN: usize = 32 + 8 + 8 + 8 + 1;
const HAS_USER_ID: u8 = 1;
const HAS_IP_ADDRESS: u8 = 2;
const HAS_USER_AGENT: u8 = 4;

/// Sessions kept entirely in the client's cookie, encrypted and
/// authenticated with XChaCha20-Poly1305: no server-side state at all.
///
/// See the [crate documentation](crate) for when to choose it and what it
/// cannot do (notably: a session cannot be revoked before it expires).
///
/// The layer calls [`ClientSideStore::seal`] and [`ClientSideStore::open`]
/// through [`SessionStore::client_side`]. The server-side methods of
/// [`SessionStore`] are never used for such a store; they are harmless
/// no-ops (`load` finds nothing, `create` and `save` report `Applied`,
/// `touch` and `destroy` do nothing, `gc` removes nothing), and the per-user
/// index is [`Error::Unsupported`].
///
/// # The cookie value
///
/// base64url without padding (only `A–Z a–z 0–9 - _`, safe in a cookie
/// unquoted) of: the format byte 2, a random 192-bit nonce, the
/// XChaCha20-Poly1305 ciphertext and its 16-byte tag. Values of format 1
/// (AES-256-GCM, 96-bit nonce), sealed by earlier versions, still open until
/// keepsake 0.3 (see [sealed formats](crate#sealed-formats)). The plaintext is compact binary: the
/// 32 bytes of the session id, `last_activity`, `expires_at` and `version`
/// (8 bytes each), a byte of flags, each of `user_id`, `ip_address`,
/// `user_agent` that is set as a 2-byte length and its bytes, then the
/// payload. The record's storage key is not stored: `open` derives it from
/// the id. The associated data is a fixed purpose string plus the
/// [cookie name](CookieStore::with_cookie_name), so a value sealed for
/// another purpose (an [`EncryptedStore`](crate::EncryptedStore) payload)
/// or another cookie does not open. There is no compression: compressing
/// secrets (the CSRF token) together with data an attacker can influence
/// would leak them through the length.
///
/// # The size limit
///
/// [`seal`](ClientSideStore::seal) refuses with [`Error::TooLarge`] (`limit`
/// 4096) when `name.len() + 1 + value.len() + attributes_reserve` would
/// exceed [`COOKIE_LIMIT`]: the `Set-Cookie` line's name, `=`, value and the
/// room kept for attributes ([`DEFAULT_ATTRIBUTES_RESERVE`] = 200 bytes
/// unless [changed](CookieStore::with_attributes_reserve)). With the default
/// name that leaves [`max_value_len`](CookieStore::max_value_len) = 3879
/// characters of value: about 2800 bytes of payload and client details.
///
/// ```
/// use keepsake_cookie::{CookieStore, Key};
/// use keepsake_core::{ClientSideStore, Record, SessionId};
///
/// let store = CookieStore::new(Key::generate());
/// let id = SessionId::generate();
/// let record = Record {
///     key: id.storage_key(),
///     payload: r#"{"d":{"theme":"dark"}}"#.into(),
///     last_activity: keepsake_core::now(),
///     expires_at: keepsake_core::now() + 3600,
///     version: 1,
///     user_id: None,
///     ip_address: None,
///     user_agent: None,
/// };
/// let value = store.seal(&id, &record)?;
/// assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
/// assert_eq!(store.open(&value), Some((id, record)));
/// assert_eq!(store.open("tampered"), None);
/// # Ok::<(), keepsake_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CookieStore {
    keys: Keys,
    cookie_name: String,
    attributes_reserve: usize,
}

impl CookieStore {
    /// A store sealing with `keys` (a [`Key`](crate::Key) or [`Keys`]).
    pub fn new(keys: impl Into<Keys>) -> Self {
        Self {
            keys: keys.into(),
            cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
            attributes_reserve: DEFAULT_ATTRIBUTES_RESERVE,
        }
    }

    /// The name of the session cookie. It is bound into every value (a value
    /// sealed under one name does not open under another) and counts toward
    /// the size limit, so set it to the name the layer uses.
    ///
    /// Defaults to `keepsake_session`, the layer's default.
    #[must_use]
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The bytes kept free for the cookie's attributes when checking the
    /// 4096-byte limit. Raise it for a long `Domain` or `Path`.
    ///
    /// Defaults to [`DEFAULT_ATTRIBUTES_RESERVE`] (200).
    #[must_use]
    pub fn with_attributes_reserve(mut self, bytes: usize) -> Self {
        self.attributes_reserve = bytes;
        self
    }

    /// The longest cookie value [`seal`](ClientSideStore::seal) produces:
    /// 4096 minus the name, the `=` and the attributes reserve.
    #[must_use]
    pub fn max_value_len(&self) -> usize {
        COOKIE_LIMIT.saturating_sub(self.cookie_name.len() + 1 + self.attributes_reserve)
    }

    fn too_large(&self, value_len: usize) -> Error {
        Error::TooLarge {
            store: KIND,
            size: self.cookie_name.len() + 1 + value_len + self.attributes_reserve,
            limit: COOKIE_LIMIT,
        }
    }
}

/// Length of unpadded base64 of `n` bytes.
fn base64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

fn optional_fields(record: &Record) -> [Option<&str>; 3] {
    [
        record.user_id.as_deref(),
        record.ip_address.as_deref(),
        record.user_agent.as_deref(),
    ]
}

fn encode(raw_id: &[u8; 32], record: &Record) -> Vec<u8> {
    let optional = optional_fields(record);
    let extra: usize = optional.iter().flatten().map(|s| 2 + s.len()).sum();
    let mut out = Vec::with_capacity(FIXED_LEN + extra + record.payload.len());
    out.extend_from_slice(raw_id);
    out.extend_from_slice(&record.last_activity.to_be_bytes());
    out.extend_from_slice(&record.expires_at.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    let flags = [HAS_USER_ID, HAS_IP_ADDRESS, HAS_USER_AGENT]
        .iter()
        .zip(&optional)
        .filter(|(_, field)| field.is_some())
        .fold(0u8, |flags, (bit, _)| flags | bit);
    out.push(flags);
    for field in optional.into_iter().flatten() {
        // Callers check that every field fits (anything longer than a
        // cookie is refused before encoding).
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
    }
    out.extend_from_slice(record.payload.as_bytes());
    out
}

/// Reads the plaintext written by [`encode`]; `None` for anything else.
fn decode(plain: &[u8]) -> Option<(SessionId, Record)> {
    let (fixed, mut rest) = plain.split_at_checked(FIXED_LEN)?;
    let int = |at: usize| -> Option<i64> {
        Some(i64::from_be_bytes(fixed.get(at..at + 8)?.try_into().ok()?))
    };
    let id = SessionId::parse(&URL_SAFE_NO_PAD.encode(&fixed[..32]))?;
    let (last_activity, expires_at, version) = (int(32)?, int(40)?, int(48)?);
    let flags = fixed[56];
    if flags & !(HAS_USER_ID | HAS_IP_ADDRESS | HAS_USER_AGENT) != 0 {
        return None;
    }
    let mut field = |bit: u8| -> Option<Option<String>> {
        if flags & bit == 0 {
            return Some(None);
        }
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (text, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(Some(std::str::from_utf8(text).ok()?.to_owned()))
    };
    let user_id = field(HAS_USER_ID)?;
    let ip_address = field(HAS_IP_ADDRESS)?;
    let user_agent = field(HAS_USER_AGENT)?;
    let payload = std::str::from_utf8(rest).ok()?.to_owned();
    let record = Record {
        key: id.storage_key(),
        payload,
        last_activity,
        expires_at,
        version,
        user_id,
        ip_address,
        user_agent,
    };
    Some((id, record))
}

impl ClientSideStore for CookieStore {
    fn seal(&self, id: &SessionId, record: &Record) -> Result<String> {
        let max = self.max_value_len();
        // Anything longer than a whole cookie cannot fit: refuse before
        // encoding (this also keeps every field within its 2-byte length).
        let rough = FIXED_LEN
            + optional_fields(record)
                .iter()
                .flatten()
                .map(|s| 2 + s.len())
                .sum::<usize>()
            + record.payload.len();
        let value_len = base64_len(OVERHEAD + rough);
        if value_len > max {
            return Err(self.too_large(value_len));
        }
        let mut raw_id = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(id.as_str(), &mut raw_id) {
            Ok(32) => {}
            // A SessionId is 43 characters of base64url for 32 bytes by
            // construction, so this does not happen.
            _ => {
                return Err(Error::Payload {
                    action: "encoded",
                    source: "session id is not 32 bytes of base64url".into(),
                });
            }
        }
        let plain = encode(&raw_id, record);
        let sealed = self
            .keys
            .seal(PURPOSE, self.cookie_name.as_bytes(), &plain)?;
        let value = URL_SAFE_NO_PAD.encode(sealed);
        debug_assert_eq!(value.len(), value_len);
        if value.len() > max {
            return Err(self.too_large(value.len()));
        }
        Ok(value)
    }

    fn open(&self, value: &str) -> Option<(SessionId, Record)> {
        let reject = |reason: &'static str| {
            tracing::warn!(
                store = KIND,
                reason,
                "session cookie rejected; starting a fresh session"
            );
        };
        if value.len() > COOKIE_LIMIT {
            reject("longer than any cookie this store seals");
            return None;
        }
        let Ok(sealed) = URL_SAFE_NO_PAD.decode(value) else {
            reject("not base64url");
            return None;
        };
        let Some(plain) = self
            .keys
            .open(PURPOSE, self.cookie_name.as_bytes(), &sealed)
        else {
            reject("does not decrypt: tampered, truncated, or sealed with a key not configured");
            return None;
        };
        let Some((id, record)) = decode(&plain) else {
            reject("decrypts but is malformed");
            return None;
        };
        if record.is_expired(keepsake_core::now()) {
            tracing::debug!(
                store = KIND,
                key = id.storage_key().short(),
                "session cookie expired"
            );
            return None;
        }
        Some((id, record))
    }
}

#[async_trait]
impl SessionStore for CookieStore {
    /// Finds nothing: the record travels in the cookie.
    async fn load(&self, _key: &StorageKey) -> Result<Option<Record>> {
        Ok(None)
    }

    /// Does nothing and reports `Applied`: the record travels in the cookie.
    async fn create(&self, _record: &Record) -> Result<Cas> {
        Ok(Cas::Applied)
    }

    /// Does nothing and reports `Applied`: the record travels in the cookie.
    async fn save(&self, _record: &Record, _expected_version: i64) -> Result<Cas> {
        Ok(Cas::Applied)
    }

    /// Does nothing and reports `Applied`: the expiry travels in the cookie.
    async fn touch(
        &self,
        _key: &StorageKey,
        _expected_version: i64,
        _last_activity: i64,
        _expires_at: i64,
    ) -> Result<Cas> {
        Ok(Cas::Applied)
    }

    /// Does nothing: the layer removes the cookie.
    async fn destroy(&self, _key: &StorageKey) -> Result<()> {
        Ok(())
    }

    /// Removes nothing: an expired cookie no longer opens.
    async fn gc(&self, _now: i64) -> Result<u64> {
        Ok(0)
    }

    /// [`Error::Unsupported`]: the server does not know the sessions.
    async fn list_for_user(&self, _user_id: &str) -> Result<Vec<SessionInfo>> {
        Err(Error::Unsupported {
            store: KIND,
            operation: "list_for_user",
        })
    }

    /// [`Error::Unsupported`]: the server cannot revoke a cookie.
    async fn destroy_for_user(&self, _user_id: &str, _except: Option<&StorageKey>) -> Result<u64> {
        Err(Error::Unsupported {
            store: KIND,
            operation: "destroy_for_user",
        })
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn client_side(&self) -> Option<&dyn ClientSideStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(id: &SessionId) -> Record {
        Record {
            key: id.storage_key(),
            payload: r#"{"d":{"n":1}}"#.into(),
            last_activity: 1_700_000_000,
            expires_at: i64::MAX,
            version: 3,
            user_id: Some("u-1".into()),
            ip_address: None,
            user_agent: Some("agent ✓".into()),
        }
    }

    #[test]
    fn plaintext_round_trips_and_rejects_every_truncation() {
        let id = SessionId::generate();
        let mut raw = [0u8; 32];
        URL_SAFE_NO_PAD.decode_slice(id.as_str(), &mut raw).unwrap();
        let r = record(&id);
        let plain = encode(&raw, &r);
        assert_eq!(decode(&plain), Some((id, r)));
        // The payload is the tail, so only cuts inside the header must fail.
        for len in 0..FIXED_LEN + 2 + 3 + 2 + "agent ✓".len() {
            assert_eq!(decode(&plain[..len]), None, "cut at {len}");
        }
        let mut bad_flags = plain;
        bad_flags[56] |= 8;
        assert_eq!(decode(&bad_flags), None);
    }

    #[test]
    fn predicted_length_is_exact() {
        for n in 0..64 {
            assert_eq!(base64_len(n), URL_SAFE_NO_PAD.encode(vec![0u8; n]).len());
        }
    }
}
