//! How a [`Record`] becomes a memcached item, and its expiry an `exptime`.

use std::borrow::Cow;

use keepsake_core::{Record, StorageKey};
use serde::{Deserialize, Serialize};

/// The item flags that mark a value written in this module's format.
///
/// Only 16 bits are used, so servers older than 1.2.1 (16-bit flags) keep
/// them too.
pub(crate) const FORMAT_FLAGS: u32 = 0x4b31;

/// memcached reads an `exptime` above this many seconds (30 days) as an
/// absolute unix time rather than as seconds from now.
pub(crate) const MAX_RELATIVE_EXPTIME: i64 = 2_592_000;

/// The `exptime` that memcached treats as "already expired": the item is
/// stored and never returned.
pub(crate) const EXPIRED: i64 = -1;

/// The largest `exptime` memcached accepts (it parses a signed 32-bit integer).
const MAX_EXPTIME: i64 = i32::MAX as i64;

/// The memcached `exptime` for a record that expires at `expires_at`, at
/// `now` (both unix seconds).
///
/// - already expired: [`EXPIRED`], so the server drops the item at once;
/// - at most 30 days away: the seconds left (memcached's relative form);
/// - further away: the absolute unix time `expires_at`, since memcached would
///   read a larger relative value as a date in January 1970 and expire the
///   item immediately. Times after January 2038 are capped there, the
///   largest value memcached parses.
pub(crate) fn exptime(expires_at: i64, now: i64) -> i64 {
    let remaining = expires_at.saturating_sub(now);
    if remaining <= 0 {
        EXPIRED
    } else if remaining <= MAX_RELATIVE_EXPTIME {
        remaining
    } else {
        expires_at.clamp(MAX_RELATIVE_EXPTIME + 1, MAX_EXPTIME)
    }
}

/// The fields of a record besides its key and payload, as the first line of
/// an item. JSON escapes every control character inside strings, so this line
/// never contains a newline and the payload after it is stored byte for byte.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(rename = "a")]
    last_activity: i64,
    #[serde(rename = "e")]
    expires_at: i64,
    #[serde(rename = "v")]
    version: i64,
    #[serde(rename = "u", default, borrow, skip_serializing_if = "Option::is_none")]
    user_id: Option<Cow<'a, str>>,
    #[serde(rename = "i", default, borrow, skip_serializing_if = "Option::is_none")]
    ip_address: Option<Cow<'a, str>>,
    #[serde(rename = "g", default, borrow, skip_serializing_if = "Option::is_none")]
    user_agent: Option<Cow<'a, str>>,
}

/// Encodes `record` as an item value: a one-line JSON header with every field
/// but the key and the payload, a newline, then the payload as it is.
pub(crate) fn encode(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    let header = Header {
        last_activity: record.last_activity,
        expires_at: record.expires_at,
        version: record.version,
        user_id: record.user_id.as_deref().map(Cow::Borrowed),
        ip_address: record.ip_address.as_deref().map(Cow::Borrowed),
        user_agent: record.user_agent.as_deref().map(Cow::Borrowed),
    };
    let mut value = Vec::with_capacity(96 + record.payload.len());
    serde_json::to_writer(&mut value, &header)?;
    value.push(b'\n');
    value.extend_from_slice(record.payload.as_bytes());
    Ok(value)
}

/// Why a stored item could not be read back as a record.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Corrupt {
    /// The item was not written by this store (or by another version of it).
    #[error("item flags {0:#x} are not keepsake's format")]
    Flags(u32),
    /// No header line.
    #[error("item has no header line")]
    NoHeader,
    /// The header is not the expected JSON.
    #[error("item header is not valid")]
    Header(#[source] serde_json::Error),
    /// The payload is not UTF-8.
    #[error("item payload is not UTF-8")]
    Payload(#[source] std::string::FromUtf8Error),
}

/// Decodes an item written by [`encode`] back into the record stored under `key`.
pub(crate) fn decode(key: &StorageKey, flags: u32, value: &[u8]) -> Result<Record, Corrupt> {
    if flags != FORMAT_FLAGS {
        return Err(Corrupt::Flags(flags));
    }
    let split = value
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Corrupt::NoHeader)?;
    let (header, payload) = (&value[..split], &value[split + 1..]);
    let header: Header<'_> = serde_json::from_slice(header).map_err(Corrupt::Header)?;
    let payload = String::from_utf8(payload.to_vec()).map_err(Corrupt::Payload)?;
    Ok(Record {
        key: key.clone(),
        payload,
        last_activity: header.last_activity,
        expires_at: header.expires_at,
        version: header.version,
        user_id: header.user_id.map(Cow::into_owned),
        ip_address: header.ip_address.map(Cow::into_owned),
        user_agent: header.user_agent.map(Cow::into_owned),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keepsake_core::SessionId;

    use super::*;

    const NOW: i64 = 1_700_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn up_to_thirty_days_is_relative() {
        assert_eq!(exptime(NOW + 1, NOW), 1);
        assert_eq!(exptime(NOW + 3600, NOW), 3600);
        assert_eq!(exptime(NOW + 30 * DAY, NOW), 2_592_000);
    }

    #[test]
    fn beyond_thirty_days_is_the_absolute_time() {
        // One second past the boundary: relative 2_592_001 would be read as a
        // date in 1970, so the absolute unix time is sent.
        assert_eq!(exptime(NOW + 30 * DAY + 1, NOW), NOW + 30 * DAY + 1);
        assert_eq!(exptime(NOW + 400 * DAY, NOW), NOW + 400 * DAY);
        // Past what memcached parses: capped at the largest 32-bit time.
        assert_eq!(exptime(i64::MAX, NOW), i64::from(i32::MAX));
        // Every absolute value is above the boundary, so never read as relative.
        assert_eq!(exptime(20 * DAY, -20 * DAY), MAX_RELATIVE_EXPTIME + 1);
    }

    #[test]
    fn expired_records_get_an_already_expired_time() {
        assert_eq!(exptime(NOW, NOW), EXPIRED);
        assert_eq!(exptime(NOW - 10, NOW), EXPIRED);
        assert_eq!(exptime(i64::MIN, NOW), EXPIRED);
        assert_eq!(exptime(i64::MIN, i64::MAX), EXPIRED);
    }

    fn record() -> Record {
        Record {
            key: SessionId::generate().storage_key(),
            payload: "line one\nline \"two\"\r\n\u{0}🦀".into(),
            last_activity: NOW,
            expires_at: NOW + 60,
            version: 7,
            user_id: Some("user\n\"1\"".into()),
            ip_address: Some("2001:db8::1".into()),
            user_agent: None,
        }
    }

    #[test]
    fn records_round_trip_byte_for_byte() {
        let r = record();
        let value = encode(&r).unwrap();
        assert_eq!(value.iter().filter(|&&b| b == b'\n').count(), 3);
        assert!(value.ends_with(r.payload.as_bytes()));
        assert_eq!(decode(&r.key, FORMAT_FLAGS, &value).unwrap(), r);

        let bare = Record {
            payload: String::new(),
            user_id: None,
            ip_address: None,
            ..r
        };
        let value = encode(&bare).unwrap();
        assert_eq!(value, b"{\"a\":1700000000,\"e\":1700000060,\"v\":7}\n");
        assert_eq!(decode(&bare.key, FORMAT_FLAGS, &value).unwrap(), bare);
    }

    #[test]
    fn foreign_or_damaged_items_are_errors() {
        let r = record();
        let value = encode(&r).unwrap();
        assert!(matches!(decode(&r.key, 0, &value), Err(Corrupt::Flags(0))));
        assert!(matches!(
            decode(&r.key, FORMAT_FLAGS, b"{}"),
            Err(Corrupt::NoHeader)
        ));
        assert!(matches!(
            decode(&r.key, FORMAT_FLAGS, b"{\"a\":1}\npayload"),
            Err(Corrupt::Header(_))
        ));
        assert!(matches!(
            decode(&r.key, FORMAT_FLAGS, b"{\"a\":1,\"e\":2,\"v\":3}\n\xff"),
            Err(Corrupt::Payload(_))
        ));
        assert!(decode(&r.key, FORMAT_FLAGS, b"").is_err());
        assert!(decode(&r.key, FORMAT_FLAGS, b"\n").is_err());
    }
}
