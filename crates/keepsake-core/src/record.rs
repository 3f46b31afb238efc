//! What a store persists: [`Record`], and the [`Payload`] encoded inside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::id::StorageKey;

/// One stored session, as every [`SessionStore`](crate::SessionStore) sees it.
///
/// The fields are the columns of the SQL schema: everything a store needs to
/// index or expire on is a field of its own, and the session's contents travel
/// as an opaque `payload` string that the layer encodes ([`Payload::encode`])
/// before any store sees it. That is what lets a wrapper such as an encrypting
/// store transform the payload without knowing the backend, and a backend
/// persist it without knowing the format.
///
/// Timestamps are unix seconds, as in Laravel's `sessions` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The storage key: hex SHA-256 of the session id, never the id itself.
    pub key: StorageKey,
    /// The encoded [`Payload`] (JSON, or ciphertext when encrypted at rest).
    pub payload: String,
    /// Unix seconds of the last request that wrote or touched the session.
    pub last_activity: i64,
    /// Unix seconds after which the session no longer loads.
    pub expires_at: i64,
    /// The compare-and-swap counter: bumped by every successful save.
    pub version: i64,
    /// The user the session belongs to, for the per-user index.
    pub user_id: Option<String>,
    /// The client address, when the layer records it.
    pub ip_address: Option<String>,
    /// The client's `User-Agent`, when the layer records it.
    pub user_agent: Option<String>,
}

impl Record {
    /// True when the record has expired at `now` (unix seconds).
    #[must_use]
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at <= now
    }

    /// The listing entry of this record.
    #[must_use]
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            key: self.key.clone(),
            user_id: self.user_id.clone(),
            last_activity: self.last_activity,
            expires_at: self.expires_at,
            ip_address: self.ip_address.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

/// One entry of [`SessionStore::list_for_user`](crate::SessionStore::list_for_user):
/// what a "your devices" page shows. It carries the storage key, never the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The storage key (compare with [`Session::storage_key`](crate::Session::storage_key)
    /// to mark the current device).
    pub key: StorageKey,
    /// The owner.
    pub user_id: Option<String>,
    /// Unix seconds of the last write or touch.
    pub last_activity: i64,
    /// Unix seconds of expiry.
    pub expires_at: i64,
    /// The client address, when recorded.
    pub ip_address: Option<String>,
    /// The client's user agent, when recorded.
    pub user_agent: Option<String>,
}

/// The contents of a session: what [`Record::payload`] encodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The application's data: a JSON object.
    #[serde(default, rename = "d")]
    pub data: Map<String, Value>,
    /// keepsake's own bookkeeping, apart from the user data.
    #[serde(default, rename = "m", skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    /// Unix seconds when the session was created (for the absolute timeout).
    #[serde(default, rename = "c")]
    pub created_at: i64,
    /// Per-session idle lifetime in seconds ("remember me"), overriding the layer's.
    #[serde(default, rename = "l", skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<u64>,
}

impl Payload {
    /// Encodes the payload as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Payload`] if a value cannot be serialized (never for values that
    /// came from JSON).
    pub fn encode(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Payload {
            action: "encoded",
            source: e.into(),
        })
    }

    /// The user value at a dot path (`"user.name"`, `"teams.1"`).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        crate::path::get(&self.data, key)
    }

    /// Decodes a payload written by [`Payload::encode`].
    ///
    /// # Errors
    ///
    /// [`Error::Payload`] for anything that is not such a payload.
    pub fn decode(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Payload {
            action: "decoded",
            source: e.into(),
        })
    }
}

/// keepsake's bookkeeping, kept beside the user data so no user key is reserved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Flashed keys that survive the next end of request.
    #[serde(default, rename = "fn", skip_serializing_if = "Vec::is_empty")]
    pub flash_new: Vec<String>,
    /// Flashed keys deleted at the end of this request.
    #[serde(default, rename = "fo", skip_serializing_if = "Vec::is_empty")]
    pub flash_old: Vec<String>,
    /// The CSRF token.
    #[serde(default, rename = "t", skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The previous URL, for "back" redirects.
    #[serde(default, rename = "p", skip_serializing_if = "Option::is_none")]
    pub previous_url: Option<String>,
    /// Flashed form input, for re-populating a form.
    #[serde(default, rename = "i", skip_serializing_if = "Option::is_none")]
    pub old_input: Option<Map<String, Value>>,
    /// Whether `old_input` survives the next end of request.
    #[serde(default, rename = "ik", skip_serializing_if = "std::ops::Not::not")]
    pub old_input_kept: bool,
    /// Keys stored with [`Session::put_for`](crate::Session::put_for): the unix
    /// millisecond after which each disappears.
    #[serde(default, rename = "x", skip_serializing_if = "BTreeMap::is_empty")]
    pub expiring: BTreeMap<String, i64>,
    /// Fingerprint the session is bound to (hijacking mitigation), if any.
    #[serde(default, rename = "b", skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

impl Meta {
    /// True when there is nothing to store.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// The current time in unix seconds.
#[must_use]
pub fn now() -> i64 {
    now_millis().div_euclid(1000)
}

/// The current time in unix milliseconds.
#[must_use]
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_payload_is_small_and_round_trips() {
        let payload = Payload {
            created_at: 1_700_000_000,
            ..Payload::default()
        };
        let text = payload.encode().expect("encodes");
        assert_eq!(text, r#"{"d":{},"c":1700000000}"#);
        assert_eq!(Payload::decode(&text).expect("decodes"), payload);
    }

    #[test]
    fn full_payload_round_trips() {
        let mut payload = Payload::default();
        payload.data.insert("a".into(), Value::from(1));
        payload.meta.flash_new.push("a".into());
        payload.meta.token = Some("t".into());
        payload.meta.expiring.insert("a".into(), 5);
        payload.lifetime = Some(60);
        let text = payload.encode().expect("encodes");
        assert_eq!(Payload::decode(&text).expect("decodes"), payload);
    }

    #[test]
    fn garbage_is_an_error() {
        for text in ["", "null", "{\"d\": 5}", "\u{0}"] {
            assert!(Payload::decode(text).is_err(), "{text:?}");
        }
    }
}
