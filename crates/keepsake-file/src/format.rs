//! The on-disk format of one session file.
//!
//! ```text
//! keepsake-session 1\n
//! {"version":3,"last_activity":…,"expires_at":…,"user_id":…,"ip_address":…,"user_agent":…,"payload_len":N}\n
//! <exactly N bytes: the payload, as the layer encoded it>
//! ```
//!
//! The first line names the format and its version. The second is one line of
//! JSON (JSON escapes newlines inside strings, so it cannot contain one) with
//! every field of the [`Record`] except the key, which is the file name, and
//! the payload, which follows raw. A file whose length is not exactly the
//! header plus `payload_len` bytes is torn and is not read.

use std::fmt;
use std::io::{self, Read};

use keepsake_core::{Record, StorageKey};
use serde::{Deserialize, Serialize};

/// The first line of every file of this format.
const MAGIC: &[u8] = b"keepsake-session 1\n";
/// The start of the first line of any version of the format.
const FAMILY: &[u8] = b"keepsake-session ";
/// The most header bytes (both lines) a reader accepts.
const MAX_HEADER: usize = 1024 * 1024;

/// Everything of a record but its key and payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) version: i64,
    pub(crate) last_activity: i64,
    pub(crate) expires_at: i64,
    #[serde(default)]
    pub(crate) user_id: Option<String>,
    #[serde(default)]
    pub(crate) ip_address: Option<String>,
    #[serde(default)]
    pub(crate) user_agent: Option<String>,
    pub(crate) payload_len: u64,
}

impl Header {
    pub(crate) fn is_expired(&self, now: i64) -> bool {
        self.expires_at <= now
    }
}

/// Why a file could not be read as a session.
#[derive(Debug)]
pub(crate) enum FormatError {
    /// The file is of a newer version of this format (written by a newer
    /// keepsake sharing the directory): left alone, never deleted.
    UnknownVersion,
    /// The first line is not this format's.
    Magic,
    /// The header is not complete, or not valid JSON of the expected shape.
    Header(Option<serde_json::Error>),
    /// The payload is shorter or longer than the header says: a torn file.
    Length { expected: u64, found: u64 },
    /// The payload is not UTF-8.
    Utf8,
}

impl FormatError {
    /// True when the file is of this format but damaged (as opposed to a
    /// newer version that must be left alone).
    pub(crate) fn is_corrupt(&self) -> bool {
        !matches!(self, Self::UnknownVersion)
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownVersion => f.write_str("written by a newer version of the file format"),
            Self::Magic => f.write_str("not a keepsake session file"),
            Self::Header(_) => f.write_str("incomplete or malformed header"),
            Self::Length { expected, found } => write!(
                f,
                "torn file: header announces {expected} payload bytes, found {found}"
            ),
            Self::Utf8 => f.write_str("payload is not UTF-8"),
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Header(Some(e)) => Some(e),
            _ => None,
        }
    }
}

/// The bytes of the file that stores `record`.
pub(crate) fn encode(record: &Record) -> io::Result<Vec<u8>> {
    let header = Header {
        version: record.version,
        last_activity: record.last_activity,
        expires_at: record.expires_at,
        user_id: record.user_id.clone(),
        ip_address: record.ip_address.clone(),
        user_agent: record.user_agent.clone(),
        payload_len: record.payload.len() as u64,
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 160 + record.payload.len());
    out.extend_from_slice(MAGIC);
    serde_json::to_writer(&mut out, &header).map_err(io::Error::other)?;
    out.push(b'\n');
    out.extend_from_slice(record.payload.as_bytes());
    Ok(out)
}

/// Splits `bytes` into the header and the offset where the payload starts.
/// `bytes` may be only the beginning of the file.
fn decode_head(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        let family_line = bytes.starts_with(FAMILY)
            && bytes[FAMILY.len()..]
                .iter()
                .take_while(|b| **b != b'\n')
                .all(u8::is_ascii_digit)
            && bytes.contains(&b'\n');
        return Err(if family_line {
            FormatError::UnknownVersion
        } else {
            FormatError::Magic
        });
    };
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        return Err(FormatError::Header(None));
    };
    let header: Header =
        serde_json::from_slice(&rest[..end]).map_err(|e| FormatError::Header(Some(e)))?;
    Ok((header, MAGIC.len() + end + 1))
}

/// Decodes a whole file into its header and payload.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Header, String), FormatError> {
    let (header, start) = decode_head(bytes)?;
    let body = &bytes[start..];
    if body.len() as u64 != header.payload_len {
        return Err(FormatError::Length {
            expected: header.payload_len,
            found: body.len() as u64,
        });
    }
    let payload = String::from_utf8(body.to_vec()).map_err(|_| FormatError::Utf8)?;
    Ok((header, payload))
}

/// The record stored under `key` in a file decoded by [`decode`].
pub(crate) fn to_record(key: StorageKey, header: Header, payload: String) -> Record {
    Record {
        key,
        payload,
        last_activity: header.last_activity,
        expires_at: header.expires_at,
        version: header.version,
        user_id: header.user_id,
        ip_address: header.ip_address,
        user_agent: header.user_agent,
    }
}

/// Reads only the header of an open file of `file_len` bytes, and checks the
/// file's length against it (so a torn file is found without reading the
/// payload). Outer `Err` is an I/O failure, inner `Err` a damaged file.
pub(crate) fn read_head(
    file: &mut impl Read,
    file_len: u64,
) -> io::Result<Result<Header, FormatError>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let mut newlines = 0;
    let mut scanned = 0;
    while newlines < 2 {
        if buf.len() >= MAX_HEADER {
            return Ok(Err(FormatError::Header(None)));
        }
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        newlines += buf[scanned..].iter().filter(|b| **b == b'\n').count();
        scanned = buf.len();
    }
    Ok(decode_head(&buf).and_then(|(header, start)| {
        let found = file_len.saturating_sub(start as u64);
        if found == header.payload_len {
            Ok(header)
        } else {
            Err(FormatError::Length {
                expected: header.payload_len,
                found,
            })
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keepsake_core::SessionId;

    use super::*;

    fn record() -> Record {
        Record {
            key: SessionId::generate().storage_key(),
            payload: "{\"d\":{\"s\":\"line\\nbreak ✓\"}}\n raw newline too".into(),
            last_activity: 1_700_000_000,
            expires_at: 1_700_003_600,
            version: 7,
            user_id: Some("user\n\"quoted\"".into()),
            ip_address: Some("2001:db8::1".into()),
            user_agent: None,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let r = record();
        let bytes = encode(&r).unwrap();
        let (header, payload) = decode(&bytes).unwrap();
        assert_eq!(to_record(r.key.clone(), header, payload), r);
        let head = read_head(&mut bytes.as_slice(), bytes.len() as u64)
            .unwrap()
            .unwrap();
        assert_eq!(head.version, 7);
        assert_eq!(head.user_id, r.user_id);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&record()).unwrap();
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(decode(cut).is_err(), "truncated at {len}");
            let head = read_head(&mut &*cut, len as u64).unwrap();
            assert!(head.is_err(), "head of truncated at {len}");
        }
        let mut longer = bytes;
        longer.push(b'x');
        assert!(matches!(decode(&longer), Err(FormatError::Length { .. })));
    }

    #[test]
    fn newer_versions_are_not_corrupt() {
        let e = decode(b"keepsake-session 2\n{}\n").unwrap_err();
        assert!(!e.is_corrupt());
        for garbage in [
            &b""[..],
            b"keepsake-session",
            b"hello\n",
            b"\xff\xfe",
            b"keepsake-session x\n",
        ] {
            assert!(decode(garbage).unwrap_err().is_corrupt(), "{garbage:?}");
        }
    }
}
