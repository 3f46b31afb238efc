//! The few commands of memcached's text protocol this store needs (`get`,
//! `gets`, `add`, `cas`, `delete`, `version`), over one TCP connection.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// The longest status or `VALUE` line accepted (keys are at most 250 bytes).
const MAX_LINE: u64 = 1024;

/// The largest value accepted in a reply: memcached's own ceiling for its
/// item size (`-I 1024m`). Memory is taken as the bytes arrive, never up
/// front from the announced length.
const MAX_VALUE: usize = 1 << 30;

/// What went wrong on one connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    /// The TCP connection could not be opened.
    #[error("could not connect")]
    Connect(#[source] io::Error),
    /// Reading or writing failed.
    #[error("i/o error")]
    Io(#[from] io::Error),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server closed the connection before it answered.
    #[error("the server closed the connection")]
    Closed,
    /// The reply is not what the protocol allows here.
    #[error("unexpected reply `{0}`")]
    BadReply(String),
    /// The server answered `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`.
    #[error("the server answered `{0}`")]
    Refused(String),
}

/// One item of a `get`/`gets` reply.
#[derive(Debug)]
pub(crate) struct Item {
    /// The item's flags.
    pub(crate) flags: u32,
    /// The stored bytes.
    pub(crate) value: Vec<u8>,
    /// The CAS token (`gets` only; 0 for `get`).
    pub(crate) cas: u64,
}

/// The reply to a storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `STORED`
    Stored,
    /// `NOT_STORED`: `add` found the key taken.
    NotStored,
    /// `EXISTS`: `cas` found the item changed since `gets`.
    Exists,
    /// `NOT_FOUND`: `cas` found no item.
    NotFound,
}

/// The storage commands used.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Store {
    /// Insert if absent.
    Add,
    /// Replace if unchanged since the `gets` that returned this token.
    Cas(u64),
}

/// One connection to one memcached server.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Opens a connection to `addr` (`host:port`).
    pub(crate) async fn connect(addr: &str) -> Result<Self, Fault> {
        let stream = TcpStream::connect(addr).await.map_err(Fault::Connect)?;
        // Requests are written whole; waiting to coalesce them only adds latency.
        stream.set_nodelay(true).map_err(Fault::Connect)?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// True when this idle connection can carry another request: nothing
    /// unread is buffered, and the server has not closed it (as it does on a
    /// restart or an idle timeout) nor sent anything unasked.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.get_ref().try_read(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// `get key` (or `gets key` when `with_cas`): the item, if there is one.
    pub(crate) async fn get(&mut self, key: &str, with_cas: bool) -> Result<Option<Item>, Fault> {
        let verb = if with_cas { "gets" } else { "get" };
        self.send(format!("{verb} {key}\r\n").as_bytes()).await?;
        let mut found = None;
        loop {
            let line = self.read_line().await?;
            if line == b"END" {
                return Ok(found);
            }
            let Some(header) = line.strip_prefix(b"VALUE ") else {
                return Err(unexpected(&line));
            };
            if found.is_some() {
                return Err(unexpected(&line));
            }
            let (flags, len, cas) =
                parse_value_header(header, key, with_cas).ok_or_else(|| unexpected(&line))?;
            let value = self.read_block(len).await?;
            found = Some(Item { flags, value, cas });
        }
    }

    /// `add` or `cas` of `value` under `key`.
    pub(crate) async fn store(
        &mut self,
        command: Store,
        key: &str,
        flags: u32,
        exptime: i64,
        value: &[u8],
    ) -> Result<Reply, Fault> {
        let header = match command {
            Store::Add => format!("add {key} {flags} {exptime} {}\r\n", value.len()),
            Store::Cas(token) => {
                format!("cas {key} {flags} {exptime} {} {token}\r\n", value.len())
            }
        };
        let mut request = Vec::with_capacity(header.len() + value.len() + 2);
        request.extend_from_slice(header.as_bytes());
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        self.send(&request).await?;
        let line = self.read_line().await?;
        match line.as_slice() {
            b"STORED" => Ok(Reply::Stored),
            b"NOT_STORED" => Ok(Reply::NotStored),
            b"EXISTS" => Ok(Reply::Exists),
            b"NOT_FOUND" => Ok(Reply::NotFound),
            _ => Err(unexpected(&line)),
        }
    }

    /// `delete key`: true when an item was deleted.
    pub(crate) async fn delete(&mut self, key: &str) -> Result<bool, Fault> {
        self.send(format!("delete {key}\r\n").as_bytes()).await?;
        let line = self.read_line().await?;
        match line.as_slice() {
            b"DELETED" => Ok(true),
            b"NOT_FOUND" => Ok(false),
            _ => Err(unexpected(&line)),
        }
    }

    /// `version`: the server's version string.
    pub(crate) async fn version(&mut self) -> Result<String, Fault> {
        self.send(b"version\r\n").await?;
        let line = self.read_line().await?;
        match line.strip_prefix(b"VERSION ") {
            Some(version) => Ok(String::from_utf8_lossy(version).into_owned()),
            None => Err(unexpected(&line)),
        }
    }

    async fn send(&mut self, request: &[u8]) -> Result<(), Fault> {
        let stream = self.stream.get_mut();
        stream.write_all(request).await?;
        stream.flush().await?;
        Ok(())
    }

    /// One `\r\n`-terminated line, without the terminator.
    async fn read_line(&mut self) -> Result<Vec<u8>, Fault> {
        let mut line = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            Ok(line)
        } else if line.ends_with(b"\n") {
            Err(unexpected(&line))
        } else if read as u64 >= MAX_LINE {
            Err(Fault::BadReply("reply line too long".into()))
        } else {
            // End of stream before the line was complete.
            Err(Fault::Closed)
        }
    }

    /// A data block of `len` bytes and its `\r\n`.
    async fn read_block(&mut self, len: usize) -> Result<Vec<u8>, Fault> {
        let mut block = Vec::with_capacity(len.min(64 * 1024) + 2);
        (&mut self.stream)
            .take(len as u64 + 2)
            .read_to_end(&mut block)
            .await?;
        if block.len() < len + 2 {
            return Err(Fault::Closed);
        }
        if !block.ends_with(b"\r\n") {
            return Err(Fault::BadReply("data block not terminated by CRLF".into()));
        }
        block.truncate(len);
        Ok(block)
    }
}

/// Parses `<key> <flags> <bytes>[ <cas>]` of a `VALUE` line for `key`.
fn parse_value_header(header: &[u8], key: &str, with_cas: bool) -> Option<(u32, usize, u64)> {
    let header = std::str::from_utf8(header).ok()?;
    let mut fields = header.split(' ');
    if fields.next()? != key {
        return None;
    }
    let flags = fields.next()?.parse().ok()?;
    let len: usize = fields.next()?.parse().ok()?;
    let cas = match (fields.next(), with_cas) {
        (Some(cas), true) => cas.parse().ok()?,
        (None, false) => 0,
        _ => return None,
    };
    (fields.next().is_none() && len <= MAX_VALUE).then_some((flags, len, cas))
}

/// The fault for a reply line that does not fit: the server's own error
/// message when it sent one, otherwise the line itself (shortened).
fn unexpected(line: &[u8]) -> Fault {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if let Some((cut, _)) = text.char_indices().nth(200) {
        text.truncate(cut);
        text.push('…');
    }
    let text = text.trim_end().to_owned();
    if text == "ERROR" || text.starts_with("CLIENT_ERROR") || text.starts_with("SERVER_ERROR") {
        Fault::Refused(text)
    } else {
        Fault::BadReply(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_headers() {
        assert_eq!(parse_value_header(b"k 1 5", "k", false), Some((1, 5, 0)));
        assert_eq!(parse_value_header(b"k 1 5 99", "k", true), Some((1, 5, 99)));
        assert_eq!(parse_value_header(b"k 1 5", "k", true), None);
        assert_eq!(parse_value_header(b"k 1 5 99", "k", false), None);
        assert_eq!(parse_value_header(b"other 1 5", "k", false), None);
        assert_eq!(parse_value_header(b"k x 5", "k", false), None);
        assert_eq!(parse_value_header(b"k 1 -5", "k", false), None);
        assert_eq!(parse_value_header(b"k 1 5 6 7", "k", true), None);
        assert_eq!(parse_value_header(b"k 1 99999999999", "k", false), None);
        assert_eq!(parse_value_header(b"\xff 1 5", "k", false), None);
    }

    #[test]
    fn error_replies_are_named() {
        assert!(
            matches!(unexpected(b"SERVER_ERROR out of memory"), Fault::Refused(m) if m == "SERVER_ERROR out of memory")
        );
        assert!(matches!(unexpected(b"ERROR"), Fault::Refused(_)));
        assert!(matches!(unexpected(b"HELLO"), Fault::BadReply(_)));
        let long = vec![b'x'; 5000];
        assert!(matches!(unexpected(&long), Fault::BadReply(m) if m.chars().count() == 201));
    }
}
