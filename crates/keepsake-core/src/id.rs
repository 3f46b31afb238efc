//! Session ids and the storage keys derived from them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};

/// Length of an encoded [`SessionId`]: 32 bytes in base64url without padding.
pub const SESSION_ID_LEN: usize = 43;

/// Length of a [`StorageKey`]: the hex SHA-256 of the session id.
pub const STORAGE_KEY_LEN: usize = 64;

/// A session id as the client holds it: 256 bits from the operating system's
/// CSPRNG, encoded as 43 characters of base64url without padding.
///
/// The id is a bearer credential, so it is never printed in full: [`fmt::Debug`]
/// and [`fmt::Display`] show a short prefix of its [`StorageKey`] instead, which
/// is enough to correlate log lines and useless to an attacker. Stores never see
/// it either: they are handed the [`StorageKey`].
///
/// ```
/// use keepsake_core::SessionId;
///
/// let id = SessionId::generate();
/// assert_eq!(id.as_str().len(), 43);
/// assert_eq!(SessionId::parse(id.as_str()), Some(id.clone()));
/// assert_eq!(SessionId::parse("../../etc/passwd"), None);
/// assert!(!format!("{id:?}").contains(id.as_str()));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    /// A fresh id from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Panics if the operating system cannot provide random bytes, which
    /// leaves no safe way to mint a credential.
    #[must_use]
    pub fn generate() -> Self {
        let mut out = [0u8; SESSION_ID_LEN];
        match URL_SAFE_NO_PAD.encode_slice(random_bytes::<32>(), &mut out) {
            Ok(SESSION_ID_LEN) => Self(out),
            _ => unreachable!("32 bytes are 43 characters of unpadded base64url"),
        }
    }

    /// Parses an id sent by a client. Anything but 43 characters of the
    /// base64url alphabet that decode to exactly 32 bytes is `None`, so a
    /// malformed value never reaches a store.
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        Self::parse_bytes(value.as_bytes())
    }

    /// [`parse`](Self::parse) for the raw bytes of a header value, which
    /// need no UTF-8 check first: only ASCII passes.
    #[doc(hidden)]
    #[must_use]
    pub fn parse_bytes(value: &[u8]) -> Option<Self> {
        let bytes: &[u8; SESSION_ID_LEN] = value.try_into().ok()?;
        // One table lookup per character; any invalid one sets the high bit.
        let merged = bytes
            .iter()
            .fold(0u8, |acc, b| acc | BASE64URL[usize::from(*b)]);
        // 43 characters carry 258 bits: the last character's two low bits
        // are padding, zero in the canonical encoding. Checking them here
        // is what decoding would check, without decoding.
        let last = BASE64URL[usize::from(bytes[SESSION_ID_LEN - 1])];
        (merged & INVALID == 0 && last & 0b11 == 0).then_some(Self(*bytes))
    }

    /// The id as sent in the cookie. Treat it as a secret.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only base64url characters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key stores keep this session under: the hex SHA-256 of the id.
    #[must_use]
    pub fn storage_key(&self) -> StorageKey {
        StorageKey::from_bytes(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.storage_key().short())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.storage_key().short())
    }
}

/// The key a session is stored under: 64 lowercase hex characters of
/// SHA-256(session id). A leaked table, directory listing or Redis dump holds
/// only these, and they cannot be turned back into a cookie.
///
/// ```
/// use keepsake_core::{SessionId, StorageKey};
///
/// let key = SessionId::generate().storage_key();
/// assert_eq!(key.as_str().len(), 64);
/// assert_eq!(StorageKey::parse(key.as_str()), Some(key.clone()));
/// assert_eq!(key.short().len(), 8);
/// ```
///
/// Both types are held inline (no heap allocation), so cloning an id or a
/// key is a copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey([u8; STORAGE_KEY_LEN]);

impl StorageKey {
    /// Parses a storage key (for example one listed by
    /// [`SessionStore::list_for_user`](crate::SessionStore::list_for_user) or
    /// typed by an operator): exactly 64 lowercase hex characters.
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        if !value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        value.as_bytes().try_into().ok().map(Self)
    }

    /// The key as stored: 64 lowercase hex characters, safe in a file name,
    /// a Redis key or an SQL parameter.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only lowercase hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key from its 32 raw bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; STORAGE_KEY_LEN];
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        Self(out)
    }

    /// The 32 raw bytes of the key (for compact in-memory indexes).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        // A StorageKey holds lowercase hex digits by construction.
        fn nibble(digit: u8) -> u8 {
            if digit.is_ascii_digit() {
                digit - b'0'
            } else {
                digit.wrapping_sub(b'a' - 10) & 0x0f
            }
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(self.0.chunks_exact(2)) {
            *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        out
    }

    /// The first 8 characters, for log lines.
    #[must_use]
    pub fn short(&self) -> &str {
        std::str::from_utf8(&self.0[..8]).unwrap_or_default()
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({}…)", self.short())
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marks a byte outside the base64url alphabet in [`BASE64URL`].
const INVALID: u8 = 0x80;

/// The 6-bit value of every base64url character; [`INVALID`] for the rest.
const BASE64URL: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => INVALID,
        };
        i += 1;
    }
    table
};

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::expect_used)]
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// A random token of `N` bytes, base64url without padding.
pub(crate) fn random_token<const N: usize>() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ten_thousand_ids_are_distinct_and_well_formed() {
        let ids: HashSet<_> = (0..10_000).map(|_| SessionId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(SessionId::parse(id.as_str()).as_ref(), Some(id));
            assert!(StorageKey::parse(id.storage_key().as_str()).is_some());
        }
    }

    #[test]
    fn parse_rejects_everything_else() {
        let good = SessionId::generate();
        let bad = [
            String::new(),
            "../../etc/passwd".to_owned(),
            "a".repeat(42),
            "a".repeat(44),
            format!("{}=", &good.as_str()[..42]),
            format!("{}+", &good.as_str()[..42]),
            format!("{}é", &good.as_str()[..41]),
            // right length, wrong alphabet
            "/".repeat(43),
            // a storage key is not an id
            good.storage_key().as_str().to_owned(),
        ];
        for value in bad {
            assert_eq!(SessionId::parse(&value), None, "{value:?}");
        }
    }

    #[test]
    fn parse_agrees_with_a_strict_decoder_on_every_last_character() {
        let body = SessionId::generate().as_str()[..42].to_owned();
        for last in 0u8..=255 {
            let Ok(candidate) = String::from_utf8([body.as_bytes(), &[last]].concat()) else {
                continue;
            };
            let mut out = [0u8; 33];
            let strict = matches!(URL_SAFE_NO_PAD.decode_slice(&candidate, &mut out), Ok(32));
            assert_eq!(SessionId::parse(&candidate).is_some(), strict, "{last}");
        }
    }

    #[test]
    fn non_canonical_last_character_is_rejected() {
        // 'B' sets one of the padding bits of the final sextet.
        let canonical = format!("{}A", "A".repeat(42));
        assert!(SessionId::parse(&canonical).is_some());
        let padded = format!("{}B", "A".repeat(42));
        assert_eq!(SessionId::parse(&padded), None);
    }

    #[test]
    fn storage_key_is_hex_sha256() {
        let id = SessionId::parse(&"A".repeat(43)).expect("valid");
        assert_eq!(
            id.storage_key().as_str(),
            hex::encode(Sha256::digest("A".repeat(43)))
        );
        assert_eq!(StorageKey::parse(&"G".repeat(64)), None);
        assert_eq!(StorageKey::parse(&"A".repeat(64)), None);
    }
}
