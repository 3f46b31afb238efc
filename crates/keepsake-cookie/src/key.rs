//! [`Key`], [`Keys`], and the sealing both stores share.
//!
//! A sealed value is `format ‖ nonce ‖ ciphertext ‖ tag`. The first byte
//! names the format:
//!
//! - **2**, what [`Keys::seal`] writes: XChaCha20-Poly1305 with a random
//!   192-bit nonce. Random nonces of that size never collide in practice, so
//!   the number of values sealed under one key has no practical bound.
//! - **1**, written by earlier versions: AES-256-GCM with a random 96-bit
//!   nonce, safe for only about 2^32 seals per key. Values of this format
//!   still open, until keepsake 0.3; nothing seals it any more.

use std::fmt;

use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
use keepsake_core::{Error, Result};
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Length of a key in bytes (256 bits): also the least key material accepted.
pub const KEY_LEN: usize = 32;

/// Sealed format 1: AES-256-GCM, 96-bit nonce. Opened only, until 0.3.
const FORMAT_AES_GCM: u8 = 1;
/// Sealed format 2: XChaCha20-Poly1305, 192-bit nonce. What [`Keys::seal`]
/// writes.
const FORMAT_XCHACHA: u8 = 2;
const AES_GCM_NONCE_LEN: usize = 12;
const XCHACHA_NONCE_LEN: usize = 24;
/// The tag length of both formats.
const TAG_LEN: usize = 16;

/// Bytes that sealing adds to the plaintext: format byte, nonce, tag.
pub(crate) const OVERHEAD: usize = 1 + XCHACHA_NONCE_LEN + TAG_LEN;

/// One 256-bit encryption key: XChaCha20-Poly1305 seals with it, and it
/// also opens values an earlier release sealed with AES-256-GCM under the
/// same key (sealed format 1, until 0.3).
///
/// Its [`Debug`](fmt::Debug) output shows a short [fingerprint](Key::fingerprint),
/// never the key.
///
/// ```
/// use keepsake_cookie::Key;
///
/// let key = Key::generate();
/// let same = Key::from_base64(&key.to_base64())?;
/// assert_eq!(key.fingerprint(), same.fingerprint());
/// assert!(!format!("{key:?}").contains(&key.to_base64()));
///
/// // Laravel-style `APP_KEY` values work as they are.
/// let laravel = format!("base64:{}", key.to_base64());
/// assert_eq!(Key::from_base64(&laravel)?.fingerprint(), key.fingerprint());
///
/// assert!(Key::from_bytes(b"too short").is_err());
/// # Ok::<(), keepsake_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    /// Seals and opens format 2.
    xchacha: XChaCha20Poly1305,
    /// Opens format 1.
    aes_gcm: Aes256Gcm,
}

impl Key {
    /// A new random key from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Panics if the operating system cannot provide random bytes.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut *bytes);
        Self::from_array(bytes)
    }

    /// A key from raw bytes: exactly 32 bytes are the key; longer
    /// material (a 64-byte secret, say) is reduced to 32 bytes with SHA-256.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `bytes` is shorter than 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        match bytes.len() {
            n if n < KEY_LEN => {
                return Err(Error::Config {
                    message: format!(
                        "the session encryption key is {n} bytes long; at least {KEY_LEN} bytes \
                         are required (make one with `Key::generate()`, or `openssl rand -base64 32`)"
                    ),
                });
            }
            KEY_LEN => key.copy_from_slice(bytes),
            _ => key.copy_from_slice(&Sha256::digest(bytes)),
        }
        Ok(Self::from_array(key))
    }

    /// A key from base64 text: standard or url-safe alphabet, with or
    /// without padding, surrounding whitespace ignored, and an optional
    /// `base64:` prefix (the form of Laravel's `APP_KEY`). The decoded bytes
    /// go through [`Key::from_bytes`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the text is not base64 or decodes to fewer than
    /// 32 bytes. The message never contains the text.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim();
        let text = text.strip_prefix("base64:").unwrap_or(text);
        let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| Error::Config {
                message: format!(
                    "the session encryption key ({} characters) is not valid base64 \
                     (standard or url-safe alphabet)",
                    text.len()
                ),
            })?;
        Self::from_bytes(&decoded)
    }

    /// The key as standard base64 with padding: to store a
    /// [generated](Key::generate) key in a secret manager. Treat the result
    /// as the secret it is.
    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes.as_slice())
    }

    /// A short, non-secret name for the key (8 hex characters of a hash of
    /// it), for telling keys apart in logs and configuration checks.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"keepsake key fingerprint\0");
        hasher.update(self.bytes.as_slice());
        let digest = hasher.finalize();
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_array(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let xchacha = XChaCha20Poly1305::new(&(*bytes).into());
        let aes_gcm = Aes256Gcm::new(&(*bytes).into());
        Self {
            bytes,
            xchacha,
            aes_gcm,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The keys in use: the first encrypts, every one decrypts.
///
/// To rotate, put the new key first and keep the old one after it until
/// everything sealed with it has expired (the session lifetime), then drop
/// it.
///
/// ```
/// use keepsake_cookie::{Key, Keys};
///
/// let old = Key::generate();
/// let new = Key::generate();
/// let keys = Keys::new(new.clone()).with_previous(old);
/// assert_eq!(keys.primary().fingerprint(), new.fingerprint());
/// assert_eq!(keys.len(), 2);
///
/// // The same from configuration text: comma- or space-separated, newest first.
/// let text = format!("{}, {}", Key::generate().to_base64(), Key::generate().to_base64());
/// assert_eq!(Keys::from_base64_list(&text)?.len(), 2);
/// # Ok::<(), keepsake_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Keys {
    // Never empty.
    keys: Vec<Key>,
}

impl Keys {
    /// One key, which encrypts and decrypts.
    #[must_use]
    pub fn new(primary: Key) -> Self {
        Self {
            keys: vec![primary],
        }
    }

    /// Adds an older key, which still decrypts but no longer encrypts.
    #[must_use]
    pub fn with_previous(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Keys from base64 texts separated by commas or whitespace, the
    /// encrypting key first (see [`Key::from_base64`] for the accepted forms).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when there is no key or one of them is invalid (the
    /// message says which position, never the key).
    pub fn from_base64_list(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, item) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            keys.push(Key::from_base64(item).map_err(|e| match e {
                Error::Config { message } => Error::Config {
                    message: format!("key {} of the list: {message}", i + 1),
                },
                other => other,
            })?);
        }
        if keys.is_empty() {
            return Err(Error::Config {
                message: "no session encryption key given".to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// The key that encrypts.
    #[must_use]
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// How many keys there are (at least one).
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: there is at least one key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The keys, the encrypting one first.
    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    /// Encrypts `plaintext` with the primary key in format 2, binding
    /// `purpose` and `context` as associated data:
    /// `2 ‖ 192-bit nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn seal(&self, purpose: &[u8], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; XCHACHA_NONCE_LEN];
        fill_random(&mut nonce);
        let aad = associated_data(FORMAT_XCHACHA, purpose, context);
        let ciphertext = self
            .primary()
            .xchacha
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|e| Error::Payload {
                action: "encrypted",
                source: e.into(),
            })?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(FORMAT_XCHACHA);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts what [`Keys::seal`] made (format 2), or what earlier
    /// versions sealed (format 1, until 0.3), with any of the keys, for the same `purpose` and
    /// `context`; `None` for anything else.
    pub(crate) fn open(&self, purpose: &[u8], context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = sealed.split_first()?;
        let aad = associated_data(format, purpose, context);
        match format {
            FORMAT_XCHACHA => {
                let (nonce, ciphertext) = split_nonce::<XCHACHA_NONCE_LEN>(rest)?;
                self.first_opening(|key| {
                    key.xchacha
                        .decrypt(&nonce.into(), payload(ciphertext, &aad))
                })
            }
            FORMAT_AES_GCM => {
                let (nonce, ciphertext) = split_nonce::<AES_GCM_NONCE_LEN>(rest)?;
                self.first_opening(|key| {
                    key.aes_gcm
                        .decrypt(&nonce.into(), payload(ciphertext, &aad))
                })
            }
            _ => None,
        }
    }

    /// The plaintext of the first key that opens the value.
    fn first_opening<E>(
        &self,
        open: impl Fn(&Key) -> std::result::Result<Vec<u8>, E>,
    ) -> Option<Vec<u8>> {
        self.keys.iter().find_map(|key| open(key).ok())
    }
}

/// The nonce and the `ciphertext ‖ tag` after the format byte; `None` when
/// too short to hold a nonce and a tag.
fn split_nonce<const N: usize>(rest: &[u8]) -> Option<([u8; N], &[u8])> {
    if rest.len() < N + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(N);
    Some((nonce.try_into().ok()?, ciphertext))
}

fn payload<'a>(msg: &'a [u8], aad: &'a [u8]) -> Payload<'a, 'a> {
    Payload { msg, aad }
}

impl From<Key> for Keys {
    fn from(key: Key) -> Self {
        Self::new(key)
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

/// `format ‖ purpose ‖ 0 ‖ context`: what a ciphertext is bound to besides
/// the key. The purpose strings contain no NUL, so the split is unambiguous.
fn associated_data(format: u8, purpose: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(2 + purpose.len() + context.len());
    aad.push(format);
    aad.extend_from_slice(purpose);
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

fn fill_random(bytes: &mut [u8]) {
    #[allow(clippy::expect_used)]
    OsRng
        .try_fill_bytes(bytes)
        .expect("the operating system's random number generator failed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn short_keys_are_refused_with_a_clear_message() {
        for len in [0, 1, 16, 31] {
            let error = Key::from_bytes(&vec![7u8; len]).unwrap_err();
            let Error::Config { message } = error else {
                panic!("expected a configuration error");
            };
            assert!(message.contains(&format!("{len} bytes")), "{message}");
            assert!(message.contains("at least 32"), "{message}");
        }
        let short = STANDARD.encode([1u8; 16]);
        assert!(matches!(
            Key::from_base64(&short),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn every_base64_form_is_accepted() {
        // Bytes whose encodings differ between the alphabets and need padding.
        let bytes: Vec<u8> = (0u8..32).map(|i| 0xfb ^ i.wrapping_mul(37)).collect();
        let key = Key::from_bytes(&bytes).unwrap();
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            let text = engine.encode(&bytes);
            for form in [text.clone(), format!("  base64:{text}\n")] {
                assert_eq!(
                    Key::from_base64(&form).unwrap().fingerprint(),
                    key.fingerprint()
                );
            }
        }
        assert_eq!(
            Key::from_base64(&key.to_base64()).unwrap().fingerprint(),
            key.fingerprint()
        );
    }

    #[test]
    fn bad_base64_is_refused_without_echoing_it() {
        let secret = "not*base64*at*all*but*secret*material*here!";
        let Err(Error::Config { message }) = Key::from_base64(secret) else {
            panic!("expected a configuration error");
        };
        assert!(!message.contains(secret));
        assert!(matches!(
            Keys::from_base64_list(" , "),
            Err(Error::Config { .. })
        ));
        let list = format!("{},{secret}", Key::generate().to_base64());
        let Err(Error::Config { message }) = Keys::from_base64_list(&list) else {
            panic!("expected a configuration error");
        };
        assert!(message.starts_with("key 2 of the list"), "{message}");
    }

    #[test]
    fn longer_material_is_hashed_down() {
        let a = Key::from_bytes(&[1u8; 64]).unwrap();
        let b = Key::from_bytes(&[1u8; 64]).unwrap();
        let c = Key::from_bytes(&[2u8; 64]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = Key::from_bytes(&[0x41; 32]).unwrap();
        let keys = Keys::new(key.clone()).with_previous(Key::generate());
        for text in [
            format!("{key:?}"),
            format!("{keys:?}"),
            format!("{keys:#?}"),
        ] {
            assert!(!text.contains(&key.to_base64()), "{text}");
            assert!(!text.contains("AAAA") && !text.contains("65, 65"), "{text}");
            assert!(text.contains(&key.fingerprint()), "{text}");
        }
    }

    #[test]
    fn seal_and_open_bind_purpose_context_and_key() {
        let keys = Keys::new(Key::generate());
        let sealed = keys.seal(b"p", b"ctx", b"hello").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(keys.open(b"p", b"ctx", &sealed).unwrap(), b"hello");
        assert!(keys.open(b"p", b"other", &sealed).is_none());
        assert!(keys.open(b"q", b"ctx", &sealed).is_none());
        assert!(keys.open(b"p\0c", b"tx", &sealed).is_none());
        assert!(
            Keys::new(Key::generate())
                .open(b"p", b"ctx", &sealed)
                .is_none()
        );
        let again = keys.seal(b"p", b"ctx", b"hello").unwrap();
        assert_ne!(sealed, again, "fresh nonce every time");
    }

    #[test]
    fn new_values_are_format_2_and_short_values_of_any_format_open_as_nothing() {
        let keys = Keys::new(Key::generate());
        let sealed = keys.seal(b"p", b"ctx", b"").unwrap();
        assert_eq!(sealed[0], FORMAT_XCHACHA);
        assert_eq!(sealed.len(), 1 + XCHACHA_NONCE_LEN + TAG_LEN);
        assert_eq!(keys.open(b"p", b"ctx", &sealed).unwrap(), b"");
        for format in [0, FORMAT_AES_GCM, FORMAT_XCHACHA, 3, 0xff] {
            for len in 0..=1 + XCHACHA_NONCE_LEN + TAG_LEN {
                let mut value = vec![0u8; len];
                if let Some(first) = value.first_mut() {
                    *first = format;
                }
                assert!(keys.open(b"p", b"ctx", &value).is_none(), "{format} {len}");
            }
        }
    }
}
