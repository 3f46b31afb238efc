//! The store's own connection for its loads on one Redis node.
//!
//! A plain request reads its session and writes nothing, so on a busy
//! server most of the store's round trips are batches of `HMGET`s (see
//! [`keepsake_core::batch`]). Only one batch of loads is in flight at a
//! time, so those need no multiplexing: the lead of a batch writes the
//! pipeline on a connection of its own and reads the replies itself, with
//! no background task between it and the socket, and decodes the one reply
//! shape it expects (an array of bulk strings) in place.
//!
//! The connection is taken out of its slot for the length of a batch and
//! put back only after every reply was read, so a batch that fails or is
//! cancelled half way never leaves a connection with unread replies behind;
//! the next batch opens a new one. A connection the server closed while it
//! sat idle fails the first batch that uses it: that batch is sent once
//! more on a new connection (an `HMGET` changes nothing, so sending it
//! twice is harmless).

use std::fmt;
use std::io;
use std::time::Duration;

use keepsake_core::StorageKey;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, ProtocolVersion, RedisError, RedisResult};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The fields of one session as `HMGET` returns them.
pub(crate) type Fields = Vec<Option<Vec<u8>>>;

/// A lazily opened connection to one node, used by one batch at a time.
pub(crate) struct Reader {
    host: String,
    port: u16,
    /// `AUTH` and `SELECT`, encoded, sent first on every new connection.
    hello: Vec<u8>,
    /// How many replies `hello` gets.
    hello_replies: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    slot: Mutex<Slot>,
}

impl fmt::Debug for Reader {
    /// The address only: `hello` holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What one batch at a time uses.
#[derive(Debug, Default)]
struct Slot {
    /// The open connection, when the last batch left one.
    wire: Option<Wire>,
    /// The commands of the batch, encoded (kept to be reused).
    out: Vec<u8>,
}

#[derive(Debug)]
struct Wire {
    stream: TcpStream,
    /// Bytes read and not yet parsed start at `start`.
    input: Vec<u8>,
    start: usize,
}

impl Reader {
    /// A reader for the node `info` names, when it is a plain TCP address
    /// spoken to in RESP2; `None` otherwise (TLS, a Unix socket or RESP3
    /// stay with the general client).
    pub(crate) fn for_node(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Self> {
        if std::env::var_os("KS_NO_READER").is_some() {
            return None;
        }
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        if settings.protocol() != ProtocolVersion::RESP2 {
            return None;
        }
        let mut hello = Vec::new();
        let mut hello_replies = 0;
        if let Some(password) = settings.password() {
            let mut args = vec!["AUTH".as_bytes()];
            if let Some(username) = settings.username() {
                args.push(username.as_bytes());
            }
            args.push(password.as_bytes());
            command(&mut hello, &args);
            hello_replies += 1;
        }
        if settings.db() != 0 {
            command(
                &mut hello,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            hello_replies += 1;
        }
        Some(Self {
            host: host.clone(),
            port: *port,
            hello,
            hello_replies,
            connect_timeout,
            response_timeout,
            slot: Mutex::default(),
        })
    }

    /// One `HMGET` of [`FIELDS`] per key, as one pipeline in one round
    /// trip. Each key is answered on its own (a key holding something other
    /// than a hash fails only its own load); a failure of the round trip
    /// fails the whole batch.
    pub(crate) async fn load(
        &self,
        prefix: &str,
        keys: &[StorageKey],
    ) -> RedisResult<Vec<RedisResult<Fields>>> {
        let mut slot = self.slot.lock().await;
        let Slot { wire: parked, out } = &mut *slot;
        out.clear();
        for key in keys {
            hmget(out, prefix, key);
        }
        let mut retried = false;
        loop {
            let (mut wire, reused) = match parked.take() {
                Some(wire) => (wire, true),
                None => (self.open().await?, false),
            };
            let exchange = wire.exchange(out, keys.len(), hmget_reply);
            match tokio::time::timeout(self.response_timeout, exchange).await {
                Ok(Ok(replies)) => {
                    // Bytes past the last reply were never asked for: a
                    // connection that holds any is not trusted again.
                    if wire.start == wire.input.len() {
                        *parked = Some(wire);
                    }
                    return Ok(replies);
                }
                // The server closed the connection while it sat idle.
                Ok(Err(e)) if reused && !retried && e.kind() == ErrorKind::Io => retried = true,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timed_out()),
            }
        }
    }

    /// A new connection, authenticated and on the right database.
    async fn open(&self) -> RedisResult<Wire> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        let mut wire = Wire {
            stream,
            input: Vec::with_capacity(4096),
            start: 0,
        };
        if self.hello_replies > 0 {
            let exchange = wire.exchange(&self.hello, self.hello_replies, ok_reply);
            let replies = tokio::time::timeout(self.response_timeout, exchange)
                .await
                .map_err(|_| timed_out())??;
            for reply in replies {
                reply?;
            }
            if wire.start != wire.input.len() {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "unexpected reply from Redis",
                )));
            }
        }
        Ok(wire)
    }
}

impl Wire {
    /// Writes `out` and reads `count` replies with `parse`.
    async fn exchange<T>(
        &mut self,
        out: &[u8],
        count: usize,
        parse: fn(&[u8]) -> Parsed<RedisResult<T>>,
    ) -> RedisResult<Vec<RedisResult<T>>> {
        self.stream.write_all(out).await?;
        let mut replies = Vec::with_capacity(count);
        while replies.len() < count {
            match parse(&self.input[self.start..]) {
                Parsed::Done(reply, used) => {
                    replies.push(reply);
                    self.start += used;
                }
                Parsed::Incomplete => {
                    if self.start == self.input.len() {
                        self.input.clear();
                        self.start = 0;
                    }
                    if self.stream.read_buf(&mut self.input).await? == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                    }
                }
                Parsed::Invalid => {
                    return Err(RedisError::from((
                        ErrorKind::Parse,
                        "unexpected reply from Redis",
                    )));
                }
            }
        }
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
        Ok(replies)
    }
}

fn timed_out() -> RedisError {
    io::Error::from(io::ErrorKind::TimedOut).into()
}

/// The end of every `HMGET` command: the field names.
const HMGET_TAIL: &[u8] = b"$7\r\npayload\r\n$7\r\nversion\r\n$10\r\nexpires_at\r\n\
$13\r\nlast_activity\r\n$7\r\nuser_id\r\n$10\r\nip_address\r\n$10\r\nuser_agent\r\n";

/// Appends `HMGET {prefix}{key} {FIELDS…}`.
fn hmget(out: &mut Vec<u8>, prefix: &str, key: &StorageKey) {
    let key = key.as_str();
    out.extend_from_slice(b"*9\r\n$5\r\nHMGET\r\n$");
    out.extend_from_slice((prefix.len() + key.len()).to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(HMGET_TAIL);
}

/// Appends one command of `args`.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One reply parsed from the front of a buffer.
#[derive(Debug, PartialEq)]
enum Parsed<T> {
    /// The reply and the bytes it took.
    Done(T, usize),
    /// The buffer ends before the reply does.
    Incomplete,
    /// Not a reply the command can get: the connection cannot be trusted.
    Invalid,
}

/// The line at the front of `buf` (without its `\r\n`) and the bytes it
/// took with the `\r\n`.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

/// A RESP length or count: `-1` or a non-negative decimal.
fn length(digits: &[u8]) -> Option<i64> {
    if digits == b"-1" {
        return Some(-1);
    }
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits.iter().try_fold(0_i64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
    })
}

/// An error reply (`-CODE detail`), as the server error it carries.
fn server_error(error_line: &[u8]) -> RedisError {
    let mut reply = error_line.to_vec();
    reply.extend_from_slice(b"\r\n");
    match redis::parse_redis_value(&reply).and_then(redis::Value::extract_error) {
        Err(e) => e,
        Ok(_) => RedisError::from((ErrorKind::Parse, "unexpected reply from Redis")),
    }
}

/// The reply to one `HMGET`: an array of bulk strings and nulls, or an
/// error.
fn hmget_reply(buf: &[u8]) -> Parsed<RedisResult<Fields>> {
    let Some((head, mut used)) = line(buf) else {
        return Parsed::Incomplete;
    };
    let count = match head.split_first() {
        Some((b'*', digits)) => match length(digits) {
            Some(n) if n >= 0 => n,
            _ => return Parsed::Invalid,
        },
        Some((b'-', _)) => return Parsed::Done(Err(server_error(head)), used),
        _ => return Parsed::Invalid,
    };
    let mut fields = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let Some((head, taken)) = line(&buf[used..]) else {
            return Parsed::Incomplete;
        };
        let len = match head.split_first() {
            Some((b'$', digits)) => match length(digits) {
                Some(n) => n,
                None => return Parsed::Invalid,
            },
            _ => return Parsed::Invalid,
        };
        used += taken;
        let Ok(len) = usize::try_from(len) else {
            fields.push(None);
            continue;
        };
        let Some(body) = buf.get(used..used + len + 2) else {
            return Parsed::Incomplete;
        };
        if !body.ends_with(b"\r\n") {
            return Parsed::Invalid;
        }
        fields.push(Some(body[..len].to_vec()));
        used += len + 2;
    }
    Parsed::Done(Ok(fields), used)
}

/// The reply to `AUTH` or `SELECT`: `+OK`, or an error.
fn ok_reply(buf: &[u8]) -> Parsed<RedisResult<()>> {
    match line(buf) {
        None => Parsed::Incomplete,
        Some((b"+OK", used)) => Parsed::Done(Ok(()), used),
        Some((head, used)) if head.starts_with(b"-") => Parsed::Done(Err(server_error(head)), used),
        Some(_) => Parsed::Invalid,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::FIELDS;

    /// A server that answers each connection's first `HMGET` with one
    /// empty array and then a byte nobody asked for, and counts the
    /// connections it accepted.
    async fn chatty_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    while socket.read(&mut request).await.is_ok_and(|n| n > 0) {
                        if socket.write_all(b"*0\r\n:").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn a_connection_with_unasked_bytes_is_not_used_again() {
        let (port, accepted) = chatty_server().await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let reader = Reader::for_node(
            client.get_connection_info(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let key = StorageKey::from_bytes([1; 32]);
        for _ in 0..2 {
            let replies = reader.load("p:", std::slice::from_ref(&key)).await.unwrap();
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].as_ref().unwrap(), &Vec::<Option<Vec<u8>>>::new());
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let client = redis::Client::open("redis://user:s3cret@127.0.0.1:6390/2").unwrap();
        let reader = Reader::for_node(
            client.get_connection_info(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(String::from_utf8_lossy(&reader.hello).contains("s3cret"));
        let shown = format!("{reader:?}");
        assert!(
            shown.contains("6390") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn only_plain_tcp_in_resp2_gets_a_reader() {
        let reader = |url: &str| {
            let client = redis::Client::open(url).unwrap();
            Reader::for_node(
                client.get_connection_info(),
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
        };
        assert!(reader("redis://127.0.0.1:6379").is_some());
        assert!(reader("redis://127.0.0.1:6379/?protocol=resp3").is_none());
        assert!(reader("redis+unix:///tmp/redis.sock").is_none());
    }

    #[test]
    fn the_field_names_are_the_stores() {
        let mut expected = Vec::new();
        let names: Vec<&[u8]> = FIELDS.iter().map(|f| f.as_bytes()).collect();
        command(&mut expected, &names);
        assert_eq!(&expected[4..], HMGET_TAIL);
    }

    #[test]
    fn an_hmget_is_encoded_as_resp() {
        let key = StorageKey::from_bytes([0xab; 32]);
        let mut out = Vec::new();
        hmget(&mut out, "p:", &key);
        let mut expected = Vec::new();
        let name = format!("p:{}", key.as_str());
        let mut args: Vec<&[u8]> = vec![b"HMGET", name.as_bytes()];
        args.extend(FIELDS.iter().map(|f| f.as_bytes()));
        command(&mut expected, &args);
        assert_eq!(out, expected);
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let reply = b"*3\r\n$2\r\nab\r\n$-1\r\n$0\r\n\r\n+OK\r\n";
        let whole = &reply[..reply.len() - 5];
        assert_eq!(
            hmget_reply(reply),
            Parsed::Done(
                Ok(vec![Some(b"ab".to_vec()), None, Some(Vec::new())]),
                whole.len()
            )
        );
        for end in 0..whole.len() {
            assert_eq!(
                hmget_reply(&reply[..end]),
                Parsed::Incomplete,
                "{end} bytes"
            );
        }
        // A bulk string may hold `\r\n` itself.
        assert_eq!(
            hmget_reply(b"*1\r\n$4\r\na\r\nb\r\n"),
            Parsed::Done(Ok(vec![Some(b"a\r\nb".to_vec())]), 14)
        );
    }

    #[test]
    fn an_error_reply_is_that_commands_error() {
        let Parsed::Done(Err(e), 12) = hmget_reply(b"-WRONGTYPE\r\n*0\r\n") else {
            panic!("not one error reply");
        };
        assert_eq!(e.code(), Some("WRONGTYPE"));
        let Parsed::Done(Err(e), _) = ok_reply(b"-WRONGPASS invalid password\r\n") else {
            panic!("not one error reply");
        };
        assert_eq!(e.code(), Some("WRONGPASS"));
        assert_eq!(ok_reply(b"+OK\r\n"), Parsed::Done(Ok(()), 5));
    }

    #[test]
    fn other_replies_are_invalid() {
        for reply in [
            &b":1\r\n"[..],
            b"+OK\r\n",
            b"*-1\r\n",
            b"*1\r\n:1\r\n",
            b"*1\r\n$2\r\nabc\r\n",
            b"*1\r\n$x\r\n",
        ] {
            assert_eq!(hmget_reply(reply), Parsed::Invalid, "{reply:?}");
        }
        assert_eq!(ok_reply(b"$2\r\nOK\r\n"), Parsed::Invalid);
    }
}
