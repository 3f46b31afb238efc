//! `keepsake stats`: what the store holds.
//!
//! SQL stores answer with two queries on the driver's own pool (the counts
//! and activity range in one aggregate, then the payload sizes of the live
//! rows, streamed). The file store's directory is scanned, reading only the
//! header of each file. Redis is scanned with `SCAN` over the key prefix —
//! O(number of keys), in batches, never `KEYS` — on each master of a
//! cluster. Memcached cannot list its keys.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;

use futures_util::TryStreamExt as _;
use keepsake_core::{Error, StorageKey};
use keepsake_redis::redis::{self, ConnectionAddr, ConnectionInfo, Value};
use keepsake_sqlx::sqlx;
use serde::{Deserialize, Serialize};

use crate::backend::Store;
use crate::fail::Failure;

/// Everything `stats` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Stats {
    /// The driver (`sqlite`, `redis` …).
    pub(crate) driver: &'static str,
    /// Where the sessions are (`table sessions`, `keys keepsake:*` …).
    pub(crate) location: String,
    /// The time the counts refer to (unix seconds).
    pub(crate) now: i64,
    /// Sessions that still load.
    pub(crate) active: u64,
    /// Sessions past their expiry that `prune` would delete.
    pub(crate) expired: u64,
    /// Live sessions tied to a user.
    pub(crate) with_user: u64,
    /// Distinct users with a live session.
    pub(crate) users: u64,
    /// The least recent `last_activity` of a live session (unix seconds).
    pub(crate) oldest_activity: Option<i64>,
    /// The most recent `last_activity` of a live session (unix seconds).
    pub(crate) newest_activity: Option<i64>,
    /// Payload sizes of the live sessions, in bytes.
    pub(crate) payload_bytes: Option<Sizes>,
    /// Entries that could not be read as sessions (damaged files, foreign
    /// keys under the prefix); left alone.
    pub(crate) unreadable: u64,
}

/// Nearest-rank percentiles of payload sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Sizes {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl Sizes {
    /// The percentiles of `sizes` (sorted here); `None` when empty.
    pub(crate) fn of(mut sizes: Vec<u64>) -> Option<Self> {
        if sizes.is_empty() {
            return None;
        }
        sizes.sort_unstable();
        let n = sizes.len();
        // Nearest rank: the smallest value with at least p % of the values
        // at or below it.
        let at = |p: usize| sizes[(p * n).div_ceil(100).clamp(1, n) - 1];
        Some(Self {
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: sizes[n - 1],
        })
    }
}

/// Counts sessions one by one (files, Redis).
#[derive(Debug, Default)]
struct Tally {
    active: u64,
    expired: u64,
    with_user: u64,
    users: HashSet<String>,
    oldest: Option<i64>,
    newest: Option<i64>,
    sizes: Vec<u64>,
    unreadable: u64,
}

impl Tally {
    fn add(
        &mut self,
        now: i64,
        expires_at: i64,
        last_activity: i64,
        user: Option<String>,
        size: u64,
    ) {
        if expires_at <= now {
            self.expired += 1;
            return;
        }
        self.active += 1;
        if let Some(user) = user {
            self.with_user += 1;
            self.users.insert(user);
        }
        self.oldest = Some(self.oldest.map_or(last_activity, |o| o.min(last_activity)));
        self.newest = Some(self.newest.map_or(last_activity, |n| n.max(last_activity)));
        self.sizes.push(size);
    }

    fn into_stats(self, store: &Store, now: i64) -> Stats {
        Stats {
            driver: store.as_dyn().kind(),
            location: store.location(),
            now,
            active: self.active,
            expired: self.expired,
            with_user: self.with_user,
            users: self.users.len() as u64,
            oldest_activity: self.oldest,
            newest_activity: self.newest,
            payload_bytes: Sizes::of(self.sizes),
            unreadable: self.unreadable,
        }
    }
}

/// The two statements of the SQL stores. Table names were checked by the
/// driver (`[A-Za-z0-9_]` only, quoted here), and `now` is an integer.
struct Sql {
    summary: String,
    sizes: String,
}

impl Sql {
    fn new(table: &str, length: &str, now: i64) -> Self {
        let live = format!("expires_at > {now}");
        Self {
            summary: format!(
                "SELECT COUNT(CASE WHEN {live} THEN 1 END), \
                 COUNT(CASE WHEN expires_at <= {now} THEN 1 END), \
                 COUNT(CASE WHEN {live} AND user_id IS NOT NULL THEN 1 END), \
                 COUNT(DISTINCT CASE WHEN {live} THEN user_id END), \
                 MIN(CASE WHEN {live} THEN last_activity END), \
                 MAX(CASE WHEN {live} THEN last_activity END) \
                 FROM {table}"
            ),
            sizes: format!("SELECT {length} FROM {table} WHERE {live}"),
        }
    }
}

type Summary = (i64, i64, i64, i64, Option<i64>, Option<i64>);

/// Runs [`Sql`] on the pool of an SQL store (one macro for three sqlx
/// database types).
macro_rules! sql_stats {
    ($sql_store:expr, $sql:expr, $store:expr, $now:expr) => {{
        let kind = $store.as_dyn().kind();
        async {
            let pool = $sql_store.pool();
            let (active, expired, with_user, users, oldest, newest): Summary =
                sqlx::query_as(&$sql.summary)
                    .fetch_one(pool)
                    .await
                    .map_err(|e| Error::backend(kind, "stats", e))?;
            let mut sizes = Vec::with_capacity(usize::try_from(active).unwrap_or(0));
            let mut rows = sqlx::query_scalar::<_, Option<i64>>(&$sql.sizes).fetch(pool);
            while let Some(size) = rows
                .try_next()
                .await
                .map_err(|e| Error::backend(kind, "stats", e))?
            {
                sizes.push(u64::try_from(size.unwrap_or(0)).unwrap_or(0));
            }
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            Ok::<_, Error>(Stats {
                driver: kind,
                location: $store.location(),
                now: $now,
                active: count(active),
                expired: count(expired),
                with_user: count(with_user),
                users: count(users),
                oldest_activity: oldest,
                newest_activity: newest,
                payload_bytes: Sizes::of(sizes),
                unreadable: 0,
            })
        }
        .await
    }};
}

/// Collects the statistics of `store` at `now`.
pub(crate) async fn collect(store: &Store, now: i64) -> Result<Stats, Failure> {
    let fail = |e| Failure::store("reading the statistics failed", e);
    match store {
        Store::Sqlite(s) => {
            let sql = Sql::new(
                &format!("\"{}\"", s.table_name()),
                "length(CAST(payload AS BLOB))",
                now,
            );
            sql_stats!(s, sql, store, now).map_err(fail)
        }
        Store::Postgres(s) => {
            let table = match s.schema_name() {
                Some(schema) => format!("\"{schema}\".\"{}\"", s.table_name()),
                None => format!("\"{}\"", s.table_name()),
            };
            let sql = Sql::new(&table, "octet_length(payload)::bigint", now);
            sql_stats!(s, sql, store, now).map_err(fail)
        }
        Store::MySql(s) => {
            let sql = Sql::new(
                &format!("`{}`", s.table_name()),
                "CAST(LENGTH(payload) AS SIGNED)",
                now,
            );
            sql_stats!(s, sql, store, now).map_err(fail)
        }
        Store::File(s) => {
            let dir = s.path().to_owned();
            let tally = tokio::task::spawn_blocking(move || scan_files(&dir, now))
                .await
                .map_err(|e| Failure::runtime("the directory scan stopped", e))?
                .map_err(|e| Failure::runtime("scanning the session directory failed", e))?;
            Ok(tally.into_stats(store, now))
        }
        Store::Redis { store: redis, .. } => {
            let urls = store.redis_urls().unwrap_or_default();
            let tally = scan_redis(urls, redis.is_cluster(), redis.prefix(), now)
                .await
                .map_err(|e| Failure::runtime("scanning Redis failed", e))?;
            Ok(tally.into_stats(store, now))
        }
        Store::Memcached(_) => Err(Failure::usage(
            "memcached cannot list its keys, so it has no statistics to give \
             (its own `stats` command counts items of every application together)",
        )),
    }
}

/// The header line of a session file (see `keepsake_file`'s format): the
/// fields `stats` needs.
#[derive(Debug, Deserialize)]
struct FileHeader {
    last_activity: i64,
    expires_at: i64,
    #[serde(default)]
    user_id: Option<String>,
    payload_len: u64,
}

/// The first line of a session file of format version 1.
const FILE_MAGIC: &str = "keepsake-session 1\n";
/// The most header bytes read from one file.
const MAX_FILE_HEADER: u64 = 1024 * 1024;

/// Reads the header of every session file under `dir`: `<2 hex>/<64 hex>`.
fn scan_files(dir: &Path, now: i64) -> std::io::Result<Tally> {
    let mut tally = Tally::default();
    for shard in fs::read_dir(dir)? {
        let shard = shard?;
        let name = shard.file_name();
        let is_shard = name
            .to_str()
            .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_shard || !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let entry = entry?;
            let is_session = entry
                .file_name()
                .to_str()
                .is_some_and(|n| StorageKey::parse(n).is_some());
            if !is_session {
                continue; // the lock file, temporary files
            }
            match read_file_header(&entry.path()) {
                Ok(Some(h)) => {
                    tally.add(now, h.expires_at, h.last_activity, h.user_id, h.payload_len);
                }
                Ok(None) => tally.unreadable += 1,
                // Removed between the listing and the read (gc, logout).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(tally)
}

/// The header of one session file; `None` when it is not one of this format.
fn read_file_header(path: &Path) -> std::io::Result<Option<FileHeader>> {
    let mut reader = BufReader::new(fs::File::open(path)?.take(MAX_FILE_HEADER));
    let mut magic = String::new();
    reader.read_line(&mut magic)?;
    if magic != FILE_MAGIC {
        return Ok(None);
    }
    let mut header = String::new();
    reader.read_line(&mut header)?;
    Ok(serde_json::from_str(&header).ok())
}

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 1000;

/// Scans the session hashes under `prefix`: on the node of `urls[0]`, or on
/// every master of the cluster that `urls` reach.
async fn scan_redis(
    urls: &[String],
    cluster: bool,
    prefix: &str,
    now: i64,
) -> redis::RedisResult<Tally> {
    let Some(first) = urls.first() else {
        return Ok(Tally::default());
    };
    let mut tally = Tally::default();
    let nodes = if cluster {
        cluster_masters(urls).await?
    } else {
        vec![
            redis::Client::open(first.as_str())?
                .get_connection_info()
                .clone(),
        ]
    };
    let pattern = format!("{}*", escape_glob(prefix));
    for node in nodes {
        let client = redis::Client::open(node)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await?;
            let sessions: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    k.strip_prefix(prefix)
                        .is_some_and(|rest| StorageKey::parse(rest).is_some())
                })
                .collect();
            // Besides sessions, only the per-user index sets belong under the prefix.
            let foreign = keys
                .iter()
                .filter(|k| {
                    k.strip_prefix(prefix).is_some_and(|rest| {
                        StorageKey::parse(rest).is_none() && !rest.starts_with("user:")
                    })
                })
                .count();
            tally.unreadable += foreign as u64;
            if !sessions.is_empty() {
                let mut pipe = redis::pipe();
                for key in &sessions {
                    pipe.cmd("HMGET")
                        .arg(key.as_str())
                        .arg("expires_at")
                        .arg("last_activity")
                        .arg("user_id");
                    pipe.cmd("HSTRLEN").arg(key.as_str()).arg("payload");
                }
                let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                for pair in replies.chunks(2) {
                    let [fields, size] = pair else { continue };
                    let (expires_at, last_activity, user): (
                        Option<i64>,
                        Option<i64>,
                        Option<String>,
                    ) = redis::from_redis_value(fields.clone())?;
                    let size: i64 = redis::from_redis_value(size.clone())?;
                    match (expires_at, last_activity) {
                        (Some(expires_at), Some(last_activity)) => tally.add(
                            now,
                            expires_at,
                            last_activity,
                            user,
                            u64::try_from(size).unwrap_or(0),
                        ),
                        // Expired and removed between SCAN and HMGET.
                        (None, None) => {}
                        _ => tally.unreadable += 1,
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(tally)
}

/// The masters of the cluster, from `CLUSTER NODES` of the first node that
/// answers, with the credentials and TLS settings of the URL it was reached by.
async fn cluster_masters(urls: &[String]) -> redis::RedisResult<Vec<ConnectionInfo>> {
    let mut last_error = None;
    for url in urls {
        let client = redis::Client::open(url.as_str())?;
        let listing: redis::RedisResult<String> = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
        }
        .await;
        match listing {
            Ok(listing) => {
                let info = client.get_connection_info().clone();
                return Ok(parse_masters(&listing)
                    .into_iter()
                    .map(|(host, port)| {
                        let addr = match info.addr() {
                            ConnectionAddr::TcpTls {
                                insecure,
                                tls_params,
                                ..
                            } => ConnectionAddr::TcpTls {
                                host,
                                port,
                                insecure: *insecure,
                                tls_params: tls_params.clone(),
                            },
                            _ => ConnectionAddr::Tcp(host, port),
                        };
                        info.clone().set_addr(addr)
                    })
                    .collect());
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Client, "no Redis Cluster URL given"))
    }))
}

/// `(host, port)` of each live master in a `CLUSTER NODES` listing.
fn parse_masters(listing: &str) -> Vec<(String, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let address = fields.next()?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master")
                || flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
            {
                return None;
            }
            // `host:port@cport[,hostname]`; an IPv6 host has colons of its own.
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse().ok()?;
            (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
        })
        .collect()
}

/// `prefix` as a literal in a `SCAN MATCH` glob.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The human-readable form of `stats`.
pub(crate) fn render(stats: &Stats, self_expiring: bool) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<17}{value}");
    };
    line("store", format!("{} ({})", stats.driver, stats.location));
    line("live sessions", stats.active.to_string());
    line(
        "expired",
        if self_expiring {
            format!(
                "{} ({} removes expired sessions itself)",
                stats.expired, stats.driver
            )
        } else if stats.expired > 0 {
            format!(
                "{} (not pruned yet: `keepsake prune` deletes them)",
                stats.expired
            )
        } else {
            "0".to_owned()
        },
    );
    line(
        "with a user",
        format!(
            "{} live sessions of {} {}",
            stats.with_user,
            stats.users,
            if stats.users == 1 { "user" } else { "users" }
        ),
    );
    let when = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| timestamp(t, stats.now));
    line("oldest activity", when(stats.oldest_activity));
    line("newest activity", when(stats.newest_activity));
    line(
        "payload bytes",
        stats.payload_bytes.map_or_else(
            || "-".to_owned(),
            |s| format!("p50 {}  p90 {}  p99 {}  max {}", s.p50, s.p90, s.p99, s.max),
        ),
    );
    if stats.unreadable > 0 {
        line(
            "unreadable",
            format!(
                "{} entries that are not sessions of this format (left alone)",
                stats.unreadable
            ),
        );
    }
    out
}

/// `2024-05-01 12:00:00 UTC (3h 4m ago)`.
fn timestamp(t: i64, now: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let ago = now.saturating_sub(t);
    let relative = if ago < 0 {
        "in the future".to_owned()
    } else if ago < 60 {
        format!("{ago}s ago")
    } else if ago < 3600 {
        format!("{}m ago", ago / 60)
    } else if ago < 86_400 {
        format!("{}h {}m ago", ago / 3600, ago % 3600 / 60)
    } else {
        format!("{}d {}h ago", ago / 86_400, ago % 86_400 / 3600)
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC ({relative})",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(Sizes::of(vec![]), None);
        assert_eq!(
            Sizes::of(vec![7]),
            Some(Sizes {
                p50: 7,
                p90: 7,
                p99: 7,
                max: 7
            })
        );
        let hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(
            Sizes::of(hundred),
            Some(Sizes {
                p50: 50,
                p90: 90,
                p99: 99,
                max: 100
            })
        );
        assert_eq!(
            Sizes::of(vec![10, 20, 30, 40]),
            Some(Sizes {
                p50: 20,
                p90: 40,
                p99: 40,
                max: 40
            })
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            timestamp(1_700_000_000, 1_700_000_000 + 3 * 3600 + 240),
            "2023-11-14 22:13:20 UTC (3h 4m ago)"
        );
        assert_eq!(timestamp(0, 30), "1970-01-01 00:00:00 UTC (30s ago)");
    }

    #[test]
    fn cluster_listing() {
        let listing = "\
07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002,node-2 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 connected 10923-16383
824f 127.0.0.1:30004@40004 slave 07c3 0 1 1 connected
e7d1 ::1:30005@40005 master - 0 1 5 connected
";
        assert_eq!(
            parse_masters(listing),
            [
                ("127.0.0.1".to_owned(), 30001),
                ("127.0.0.1".to_owned(), 30002),
                ("::1".to_owned(), 30005),
            ]
        );
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(escape_glob("app:"), "app:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn renders_a_table() {
        let stats = Stats {
            driver: "sqlite",
            location: "table sessions".into(),
            now: 1_700_000_000,
            active: 3,
            expired: 2,
            with_user: 2,
            users: 1,
            oldest_activity: Some(1_699_999_000),
            newest_activity: Some(1_700_000_000),
            payload_bytes: Sizes::of(vec![10, 20, 30]),
            unreadable: 0,
        };
        let text = render(&stats, false);
        assert!(text.contains("live sessions    3\n"), "{text}");
        assert!(text.contains("2 live sessions of 1 user\n"), "{text}");
        assert!(text.contains("p50 20  p90 30  p99 30  max 30"), "{text}");
        assert!(text.contains("(16m ago)"), "{text}");
    }
}
