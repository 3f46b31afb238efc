//! [`EncryptedStore`]: payloads encrypted at rest in any store.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keepsake_core::{Cas, ClientSideStore, Record, Result, SessionInfo, SessionStore, StorageKey};

use crate::key::Keys;

/// The associated-data purpose of payloads at rest.
const PURPOSE: &[u8] = b"keepsake session payload";

/// Wraps any [`SessionStore`] so that [`Record::payload`] is encrypted with
/// XChaCha20-Poly1305 before the inner store sees it, and decrypted after it is
/// loaded.
///
/// - The stored payload is base64url text (no padding), so text columns keep
///   working: the format byte 2, a random 192-bit nonce, the ciphertext and
///   the 16-byte tag. Payloads of format 1 (AES-256-GCM), stored by earlier
///   versions, still decrypt until keepsake 0.3 and are rewritten in format 2
///   when their session is next saved (see
///   [sealed formats](crate#sealed-formats)).
/// - The record's storage key is bound as associated data: a payload copied
///   into another session's row does not decrypt.
/// - Only the payload is encrypted. The fields the store indexes or expires
///   on (`user_id`, `last_activity`, `expires_at`, `version`) and the client
///   details (`ip_address`, `user_agent`) stay readable to the backend.
/// - A payload that does not decrypt (another key, tampered, copied from
///   another row, or written before encryption was turned on) is logged at
///   `warn` and loaded as an empty payload string, which the layer treats as
///   a corrupt payload: the visitor gets an empty session, never an error.
///   Turning encryption on therefore empties the sessions stored before.
/// - Key rotation: the first of the [`Keys`] encrypts, any of them decrypts;
///   a record is re-encrypted with the first key the next time it is saved.
///
/// Everything else (`create` and `save` conflicts, `touch`, `destroy`, `gc`,
/// the per-user index) is the inner store's.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use keepsake_cookie::{EncryptedStore, Key};
/// use keepsake_core::{Cas, MemoryStore, Record, SessionId, SessionStore};
///
/// let store = EncryptedStore::new(MemoryStore::new(), Key::generate());
/// let record = Record {
///     key: SessionId::generate().storage_key(),
///     payload: r#"{"d":{"card":"4111"}}"#.into(),
///     last_activity: keepsake_core::now(),
///     expires_at: keepsake_core::now() + 60,
///     version: 1,
///     user_id: None,
///     ip_address: None,
///     user_agent: None,
/// };
/// assert_eq!(store.create(&record).await?, Cas::Applied);
/// assert_eq!(store.load(&record.key).await?, Some(record.clone()));
///
/// let raw = store.inner().load(&record.key).await?.unwrap();
/// assert!(!raw.payload.contains("4111"));
/// # Ok::<(), keepsake_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct EncryptedStore<S> {
    inner: S,
    keys: Keys,
}

impl<S: SessionStore> EncryptedStore<S> {
    /// Encrypts the payloads of `inner` with `keys` (a [`Key`](crate::Key)
    /// or [`Keys`]).
    pub fn new(inner: S, keys: impl Into<Keys>) -> Self {
        Self {
            inner,
            keys: keys.into(),
        }
    }

    /// The wrapped store (which sees only ciphertext payloads).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn encrypt(&self, record: &Record) -> Result<Record> {
        let sealed = self.keys.seal(
            PURPOSE,
            record.key.as_str().as_bytes(),
            record.payload.as_bytes(),
        )?;
        Ok(Record {
            payload: URL_SAFE_NO_PAD.encode(sealed),
            ..record.clone()
        })
    }

    fn decrypt(&self, key: &StorageKey, stored: &str) -> Option<String> {
        let sealed = URL_SAFE_NO_PAD.decode(stored).ok()?;
        let plain = self.keys.open(PURPOSE, key.as_str().as_bytes(), &sealed)?;
        String::from_utf8(plain).ok()
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for EncryptedStore<S> {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>> {
        let Some(mut record) = self.inner.load(key).await? else {
            return Ok(None);
        };
        match self.decrypt(key, &record.payload) {
            Some(payload) => record.payload = payload,
            None => {
                tracing::warn!(
                    store = self.inner.kind(),
                    key = key.short(),
                    "stored session payload does not decrypt (another key, tampered, or \
                     copied from another session); loaded as an empty session"
                );
                record.payload = String::new();
            }
        }
        Ok(Some(record))
    }

    async fn create(&self, record: &Record) -> Result<Cas> {
        self.inner.create(&self.encrypt(record)?).await
    }

    async fn save(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        self.inner
            .save(&self.encrypt(record)?, expected_version)
            .await
    }

    async fn save_in_place(&self, record: &Record, expected_version: i64) -> Result<Cas> {
        self.inner
            .save_in_place(&self.encrypt(record)?, expected_version)
            .await
    }

    async fn touch(
        &self,
        key: &StorageKey,
        expected_version: i64,
        last_activity: i64,
        expires_at: i64,
    ) -> Result<Cas> {
        self.inner
            .touch(key, expected_version, last_activity, expires_at)
            .await
    }

    async fn retire(
        &self,
        key: &StorageKey,
        expected_version: i64,
        owner: Option<&str>,
    ) -> Result<Cas> {
        self.inner.retire(key, expected_version, owner).await
    }

    async fn destroy(&self, key: &StorageKey) -> Result<()> {
        self.inner.destroy(key).await
    }

    async fn gc(&self, now: i64) -> Result<u64> {
        self.inner.gc(now).await
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        self.inner.list_for_user(user_id).await
    }

    async fn destroy_for_user(&self, user_id: &str, except: Option<&StorageKey>) -> Result<u64> {
        self.inner.destroy_for_user(user_id, except).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// The inner store's: wrapping a client-side store such as
    /// [`CookieStore`](crate::CookieStore), which encrypts the whole record
    /// itself, adds nothing.
    fn client_side(&self) -> Option<&dyn ClientSideStore> {
        self.inner.client_side()
    }
}
