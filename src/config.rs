//! Configuration the way Laravel users know it: `SESSION_DRIVER`,
//! `SESSION_LIFETIME`, `SESSION_COOKIE` … from the environment (and a `.env`
//! file), or set in code.
//!
//! ```no_run
//! # async fn run() -> Result<(), keepsake::config::ConfigError> {
//! use axum::{Router, routing::get};
//!
//! // SESSION_DRIVER=postgres SESSION_CONNECTION=postgres://… SESSION_LIFETIME=30
//! let layer = keepsake::from_env().await?;
//! let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
//! # Ok(()) }
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SESSION_DRIVER` | `memory`, `cookie`, `file`, `sqlite`, `postgres`, `mysql`, `redis`, `redis-cluster`, `memcached` | `file` |
//! | `SESSION_LIFETIME` | idle lifetime in minutes | `120` |
//! | `SESSION_EXPIRE_ON_CLOSE` | cookie without `Max-Age` | `false` |
//! | `SESSION_ENCRYPT` | encrypt payloads at rest (XChaCha20-Poly1305) | `false` |
//! | `SESSION_FILES` | directory of the `file` driver | `storage/sessions` |
//! | `SESSION_CONNECTION`, else `DATABASE_URL` | database URL of the SQL drivers | — (required) |
//! | `SESSION_TABLE` | SQL table | `sessions` |
//! | `SESSION_LOTTERY` | garbage-collection odds, `hits,out_of` | `2,100` |
//! | `SESSION_GC_MIN_INTERVAL` | least seconds between two lottery collections of one layer; `0` for none | `60` |
//! | `SESSION_COOKIE` | cookie name | `keepsake_session` |
//! | `SESSION_PATH` | cookie path | `/` |
//! | `SESSION_DOMAIN` | cookie domain | none |
//! | `SESSION_SECURE_COOKIE` | `Secure` attribute | `true` |
//! | `SESSION_HTTP_ONLY` | `HttpOnly` attribute | `true` |
//! | `SESSION_SAME_SITE` | `lax`, `strict` or `none` | `lax` |
//! | `SESSION_PARTITIONED_COOKIE` | `Partitioned` attribute (needs `Secure`) | `false` |
//! | `SESSION_TRUSTED_PROXIES` | how many reverse proxies in front append to the forwarding header; `0` trusts none (see [`crate::middleware::TrustedProxies`]) | `0` |
//! | `SESSION_PROXY_HEADER` | the header they write: `x-forwarded-for` or `forwarded` (RFC 7239) | `x-forwarded-for` |
//! | `SESSION_REDIS_URL` | Redis URL; for `redis-cluster` a comma-separated list | `redis://127.0.0.1:6379` |
//! | `SESSION_MEMCACHED_SERVERS` | comma-separated `host:port` list | `127.0.0.1:11211` |
//! | `SESSION_PREFIX` | key prefix of the Redis and memcached drivers | `keepsake:` |
//! | `SESSION_KEY`, else `APP_KEY` | encryption key(s), base64 (`base64:` prefix allowed), comma-separated: the first encrypts, all decrypt | — (required by `cookie` and `SESSION_ENCRYPT`) |
//! | `APP_PREVIOUS_KEYS` | more keys that still decrypt (rotation) | none |
//!
//! A cookie name starting with `__Host-` (recommended over HTTPS) needs
//! `SESSION_SECURE_COOKIE=true`, no `SESSION_DOMAIN` and `SESSION_PATH=/`;
//! one starting with `__Secure-` needs `SESSION_SECURE_COOKIE=true`.
//!
//! Booleans accept `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`. Every bad
//! value is a [`ConfigError`] that names the variable and what was expected.
//! A driver whose cargo feature is not enabled is an error too, naming the
//! feature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keepsake_core::SessionStore;

use crate::cookie;
use crate::middleware::{ProxyHeader, TrustedProxies};
use crate::{SameSite, SessionLayer};

/// Where sessions are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Driver {
    /// [`MemoryStore`](crate::MemoryStore).
    Memory,
    /// `CookieStore` (feature `cookie`).
    Cookie,
    /// `FileStore` (feature `file`).
    File,
    /// `SqliteStore` (feature `sqlite`).
    Sqlite,
    /// `PostgresStore` (feature `postgres`).
    Postgres,
    /// `MySqlStore` (feature `mysql`).
    Mysql,
    /// `RedisStore` on one node (feature `redis`).
    Redis,
    /// `RedisStore` on Redis Cluster (feature `redis`).
    RedisCluster,
    /// `MemcachedStore` (feature `memcached`).
    Memcached,
}

impl Driver {
    /// The `SESSION_DRIVER` spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cookie => "cookie",
            Self::File => "file",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::Memcached => "memcached",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_lowercase().as_str() {
            "memory" | "array" => Self::Memory,
            "cookie" => Self::Cookie,
            "file" | "files" => Self::File,
            "sqlite" => Self::Sqlite,
            "postgres" | "postgresql" | "pgsql" => Self::Postgres,
            "mysql" | "mariadb" => Self::Mysql,
            "redis" => Self::Redis,
            "redis-cluster" | "redis_cluster" => Self::RedisCluster,
            "memcached" => Self::Memcached,
            _ => return None,
        })
    }
}

/// A configuration problem: each names the variable and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable holds a value that cannot be used.
    #[error("{variable}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// What it held.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A variable the chosen driver needs is not set.
    #[error("{variable} is not set: the `{driver}` session driver needs {expected}")]
    Missing {
        /// The variable.
        variable: &'static str,
        /// The driver that needs it.
        driver: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
    /// The driver is compiled out.
    #[error(
        "SESSION_DRIVER={driver} needs keepsake's `{feature}` cargo feature, which is not enabled"
    )]
    FeatureDisabled {
        /// The driver.
        driver: &'static str,
        /// The feature to enable.
        feature: &'static str,
    },
    /// An encryption key is unusable (too short, not base64).
    #[error("{variable} holds an unusable encryption key")]
    Key {
        /// The variable.
        variable: &'static str,
        /// Why.
        #[source]
        source: keepsake_core::Error,
    },
    /// The store could not be built (connection refused, migration failed …).
    #[error("the `{driver}` session store could not be set up")]
    Store {
        /// The driver.
        driver: &'static str,
        /// The store's error.
        #[source]
        source: keepsake_core::Error,
    },
}

/// Everything `from_env` reads, as plain fields: read it with
/// [`SessionConfig::from_env`], adjust fields in code, then
/// [`build`](SessionConfig::build) the layer.
///
/// ```
/// use keepsake::config::{Driver, SessionConfig};
///
/// let mut config = SessionConfig::default();
/// config.driver = Driver::Memory;
/// config.lifetime = std::time::Duration::from_secs(30 * 60);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// `SESSION_DRIVER`.
    pub driver: Driver,
    /// `SESSION_LIFETIME` (minutes in the environment).
    pub lifetime: Duration,
    /// `SESSION_EXPIRE_ON_CLOSE`.
    pub expire_on_close: bool,
    /// `SESSION_ENCRYPT`.
    pub encrypt: bool,
    /// `SESSION_FILES`.
    pub files: PathBuf,
    /// `SESSION_CONNECTION`, else `DATABASE_URL`.
    pub connection: Option<String>,
    /// `SESSION_TABLE`.
    pub table: String,
    /// `SESSION_LOTTERY`.
    pub lottery: (u32, u32),
    /// `SESSION_GC_MIN_INTERVAL` (seconds in the environment).
    pub gc_min_interval: Duration,
    /// `SESSION_COOKIE`.
    pub cookie: String,
    /// `SESSION_PATH`.
    pub path: String,
    /// `SESSION_DOMAIN`.
    pub domain: Option<String>,
    /// `SESSION_SECURE_COOKIE`.
    pub secure: bool,
    /// `SESSION_HTTP_ONLY`.
    pub http_only: bool,
    /// `SESSION_SAME_SITE`.
    pub same_site: SameSite,
    /// `SESSION_PARTITIONED_COOKIE`.
    pub partitioned: bool,
    /// `SESSION_TRUSTED_PROXIES`: 0 trusts no forwarding header.
    pub trusted_proxies: u8,
    /// `SESSION_PROXY_HEADER`.
    pub proxy_header: ProxyHeader,
    /// `SESSION_REDIS_URL`.
    pub redis_url: String,
    /// `SESSION_MEMCACHED_SERVERS`.
    pub memcached_servers: String,
    /// `SESSION_PREFIX`.
    pub prefix: Option<String>,
    /// `SESSION_KEY` (else `APP_KEY`) followed by `APP_PREVIOUS_KEYS`.
    pub keys: Vec<String>,
    /// The variable the keys came from, for error messages.
    pub keys_variable: &'static str,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            driver: Driver::File,
            lifetime: Duration::from_secs(120 * 60),
            expire_on_close: false,
            encrypt: false,
            files: PathBuf::from("storage/sessions"),
            connection: None,
            table: "sessions".to_owned(),
            lottery: (2, 100),
            gc_min_interval: Duration::from_secs(60),
            cookie: "keepsake_session".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
            trusted_proxies: 0,
            proxy_header: ProxyHeader::XForwardedFor,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            memcached_servers: "127.0.0.1:11211".to_owned(),
            prefix: None,
            keys: Vec::new(),
            keys_variable: "SESSION_KEY",
        }
    }
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value
        .trim()
        .trim_matches(|c| c == '(' || c == ')')
        .to_ascii_lowercase()
        .as_str()
    {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            variable,
            value: value.to_owned(),
            expected: "a boolean (true/false, 1/0, yes/no, on/off)",
        }),
    }
}

impl SessionConfig {
    /// Reads the environment (after loading a `.env` file from the current
    /// directory or its parents, if there is one) over the defaults.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_vars_over(Self::default(), |name| std::env::var(name).ok())
    }

    /// Reads variables through `get` over `defaults`: what is set wins.
    ///
    /// ```
    /// use keepsake::config::{Driver, SessionConfig};
    ///
    /// let vars = [("SESSION_DRIVER", "memory"), ("SESSION_LIFETIME", "30")];
    /// let get = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    /// let config = SessionConfig::from_vars_over(SessionConfig::default(), get).unwrap();
    /// assert_eq!(config.driver, Driver::Memory);
    /// assert_eq!(config.lifetime.as_secs(), 1800);
    ///
    /// let bad = |name: &str| (name == "SESSION_LIFETIME").then(|| "soon".to_string());
    /// let error = SessionConfig::from_vars_over(SessionConfig::default(), bad).unwrap_err();
    /// assert!(error.to_string().contains("SESSION_LIFETIME"));
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad variable.
    pub fn from_vars_over(
        defaults: Self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut c = defaults;
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = var("SESSION_DRIVER") {
            c.driver = Driver::parse(&v).ok_or(ConfigError::Invalid {
                variable: "SESSION_DRIVER",
                value: v,
                expected: "one of memory, cookie, file, sqlite, postgres, mysql, redis, redis-cluster, memcached",
            })?;
        }
        if let Some(v) = var("SESSION_LIFETIME") {
            let minutes = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|m| *m > 0 && *m <= 60 * 24 * 365 * 10);
            let minutes = minutes.ok_or(ConfigError::Invalid {
                variable: "SESSION_LIFETIME",
                value: v,
                expected: "a whole number of minutes greater than 0",
            })?;
            c.lifetime = Duration::from_secs(minutes * 60);
        }
        if let Some(v) = var("SESSION_EXPIRE_ON_CLOSE") {
            c.expire_on_close = parse_bool("SESSION_EXPIRE_ON_CLOSE", &v)?;
        }
        if let Some(v) = var("SESSION_ENCRYPT") {
            c.encrypt = parse_bool("SESSION_ENCRYPT", &v)?;
        }
        if let Some(v) = var("SESSION_FILES") {
            c.files = PathBuf::from(v);
        }
        if let Some(v) = var("SESSION_CONNECTION").or_else(|| var("DATABASE_URL")) {
            c.connection = Some(v);
        }
        if let Some(v) = var("SESSION_TABLE") {
            let valid = v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(ConfigError::Invalid {
                    variable: "SESSION_TABLE",
                    value: v,
                    expected: "a table name of letters, digits and underscores (at most 63)",
                });
            }
            c.table = v;
        }
        if let Some(v) = var("SESSION_LOTTERY") {
            let parsed = v
                .split_once(',')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                })
                .filter(|(hits, out_of)| *out_of > 0 && hits <= out_of);
            c.lottery = parsed.ok_or(ConfigError::Invalid {
                variable: "SESSION_LOTTERY",
                value: v,
                expected: "two whole numbers `hits,out_of` with hits <= out_of and out_of > 0, e.g. 2,100",
            })?;
        }
        if let Some(v) = var("SESSION_GC_MIN_INTERVAL") {
            let seconds = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= 60 * 60 * 24 * 365);
            let seconds = seconds.ok_or(ConfigError::Invalid {
                variable: "SESSION_GC_MIN_INTERVAL",
                value: v,
                expected: "a whole number of seconds, 0 (no floor) to one year",
            })?;
            c.gc_min_interval = Duration::from_secs(seconds);
        }
        if let Some(v) = var("SESSION_COOKIE") {
            if let Err(expected) = cookie::check_name(&v) {
                return Err(ConfigError::Invalid {
                    variable: "SESSION_COOKIE",
                    value: v,
                    expected,
                });
            }
            c.cookie = v;
        }
        if let Some(v) = var("SESSION_PATH") {
            if let Err(expected) = cookie::check_path(&v) {
                return Err(ConfigError::Invalid {
                    variable: "SESSION_PATH",
                    value: v,
                    expected,
                });
            }
            c.path = v;
        }
        if let Some(v) = var("SESSION_DOMAIN") {
            // Laravel's `.env` spells "no domain" as `null`.
            if !v.trim().eq_ignore_ascii_case("null") {
                if let Err(expected) = cookie::check_domain(&v) {
                    return Err(ConfigError::Invalid {
                        variable: "SESSION_DOMAIN",
                        value: v,
                        expected,
                    });
                }
                c.domain = Some(v);
            }
        }
        if let Some(v) = var("SESSION_SECURE_COOKIE") {
            c.secure = parse_bool("SESSION_SECURE_COOKIE", &v)?;
        }
        if let Some(v) = var("SESSION_HTTP_ONLY") {
            c.http_only = parse_bool("SESSION_HTTP_ONLY", &v)?;
        }
        if let Some(v) = var("SESSION_SAME_SITE") {
            c.same_site = match v.trim().to_ascii_lowercase().as_str() {
                "lax" | "null" => SameSite::Lax,
                "strict" => SameSite::Strict,
                "none" => SameSite::None,
                _ => {
                    return Err(ConfigError::Invalid {
                        variable: "SESSION_SAME_SITE",
                        value: v,
                        expected: "lax, strict or none",
                    });
                }
            };
        }
        if let Some(v) = var("SESSION_PARTITIONED_COOKIE") {
            c.partitioned = parse_bool("SESSION_PARTITIONED_COOKIE", &v)?;
        }
        if let Some(v) = var("SESSION_TRUSTED_PROXIES") {
            c.trusted_proxies = v.trim().parse().map_err(|_| ConfigError::Invalid {
                variable: "SESSION_TRUSTED_PROXIES",
                value: v,
                expected: "how many proxies append to the forwarding header, 0 to 255 (0: none)",
            })?;
        }
        if let Some(v) = var("SESSION_PROXY_HEADER") {
            c.proxy_header = match v.trim().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ProxyHeader::XForwardedFor,
                "forwarded" => ProxyHeader::Forwarded,
                _ => {
                    return Err(ConfigError::Invalid {
                        variable: "SESSION_PROXY_HEADER",
                        value: v,
                        expected: "x-forwarded-for or forwarded",
                    });
                }
            };
        }
        if let Some(v) = var("SESSION_REDIS_URL") {
            c.redis_url = v;
        }
        if let Some(v) = var("SESSION_MEMCACHED_SERVERS") {
            c.memcached_servers = v;
        }
        if let Some(v) = var("SESSION_PREFIX") {
            c.prefix = Some(v);
        }
        let (keys_variable, primary) = match var("SESSION_KEY") {
            Some(v) => ("SESSION_KEY", Some(v)),
            None => ("APP_KEY", var("APP_KEY")),
        };
        if let Some(primary) = primary {
            c.keys_variable = keys_variable;
            c.keys = primary
                .split(',')
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect();
            if let Some(previous) = var("APP_PREVIOUS_KEYS") {
                c.keys.extend(
                    previous
                        .split(',')
                        .map(|k| k.trim().to_owned())
                        .filter(|k| !k.is_empty()),
                );
            }
        }
        c.check_cookie()?;
        Ok(c)
    }

    /// Whether browsers would store the cookie these fields describe: the
    /// `__Host-` and `__Secure-` prefixes and `Partitioned` require
    /// attributes that the other fields may lack. The error names the
    /// cookie-name variable (or `SESSION_PARTITIONED_COOKIE`) and what
    /// would be accepted.
    fn check_cookie(&self) -> Result<(), ConfigError> {
        let checked = cookie::check_attributes(
            &self.cookie,
            self.secure,
            self.domain.as_deref(),
            &self.path,
            self.partitioned,
        );
        checked.map_err(|problem| {
            let (variable, value) = if problem == cookie::AttributeProblem::PartitionedNotSecure {
                ("SESSION_PARTITIONED_COOKIE", self.partitioned.to_string())
            } else {
                ("SESSION_COOKIE", self.cookie.clone())
            };
            ConfigError::Invalid {
                variable,
                value,
                expected: problem.expected_in_env(),
            }
        })
    }

    /// The layer with this configuration (cookie, lifetime, lottery,
    /// trusted proxies …) over `store`.
    ///
    /// # Panics
    ///
    /// When fields changed in code after reading the environment describe a
    /// cookie the layer's setters reject (see
    /// [`SessionLayer::with_cookie_name`]); [`build`](Self::build) answers
    /// those with a [`ConfigError`] instead.
    #[must_use]
    pub fn layer(&self, store: Arc<dyn SessionStore>) -> SessionLayer {
        // `Secure` first: a `__Host-` name is checked against it.
        let mut layer = SessionLayer::from_arc(store)
            .with_lifetime(self.lifetime)
            .with_expire_on_close(self.expire_on_close)
            .with_lottery(self.lottery.0, self.lottery.1)
            .with_gc_min_interval(self.gc_min_interval)
            .with_secure(self.secure)
            .with_path(self.path.clone())
            .with_cookie_name(self.cookie.clone())
            .with_http_only(self.http_only)
            .with_same_site(self.same_site)
            .with_partitioned(self.partitioned);
        if let Some(domain) = &self.domain {
            layer = layer.with_domain(domain.clone());
        }
        if self.trusted_proxies > 0 {
            layer = layer.with_trusted_proxies(
                TrustedProxies::new()
                    .with_header(self.proxy_header)
                    .with_hops(self.trusted_proxies),
            );
        }
        layer
    }

    /// Builds the store (running migrations for the SQL drivers) and the
    /// layer over it. The store is [`SessionLayer::store`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: a missing URL or key, a driver whose feature is off,
    /// or a store that cannot be set up (with its cause).
    pub async fn build(&self) -> Result<SessionLayer, ConfigError> {
        self.check_values()?;
        let store = self.store().await?;
        Ok(self.layer(store))
    }

    /// The cookie fields checked as the environment's are, for fields set
    /// in code.
    fn check_values(&self) -> Result<(), ConfigError> {
        let invalid = |variable, value: &str, expected| ConfigError::Invalid {
            variable,
            value: value.to_owned(),
            expected,
        };
        cookie::check_name(&self.cookie).map_err(|e| invalid("SESSION_COOKIE", &self.cookie, e))?;
        cookie::check_path(&self.path).map_err(|e| invalid("SESSION_PATH", &self.path, e))?;
        if let Some(domain) = &self.domain {
            cookie::check_domain(domain).map_err(|e| invalid("SESSION_DOMAIN", domain, e))?;
        }
        self.check_cookie()
    }

    /// Builds the store only.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub async fn store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        let store: Arc<dyn SessionStore> = match self.driver {
            Driver::Memory => Arc::new(crate::MemoryStore::new()),
            Driver::Cookie => return self.cookie_store(),
            Driver::File => self.file_store()?,
            Driver::Sqlite | Driver::Postgres | Driver::Mysql => self.sql_store().await?,
            Driver::Redis | Driver::RedisCluster => self.redis_store().await?,
            Driver::Memcached => self.memcached_store().await?,
        };
        if self.encrypt {
            return self.encrypted(store);
        }
        Ok(store)
    }

    #[allow(dead_code)]
    fn store_error(&self, source: keepsake_core::Error) -> ConfigError {
        ConfigError::Store {
            driver: self.driver.name(),
            source,
        }
    }

    #[allow(dead_code)]
    fn disabled(&self, feature: &'static str) -> ConfigError {
        ConfigError::FeatureDisabled {
            driver: self.driver.name(),
            feature,
        }
    }

    #[cfg(any(feature = "cookie", feature = "encryption"))]
    fn keys(&self) -> Result<keepsake_cookie::Keys, ConfigError> {
        let variable = self.keys_variable;
        let mut keys = self.keys.iter();
        let Some(first) = keys.next() else {
            return Err(ConfigError::Missing {
                variable,
                driver: self.driver.name(),
                expected: "a base64 encryption key of at least 32 bytes (SESSION_KEY or APP_KEY)",
            });
        };
        let parse = |text: &String| {
            keepsake_cookie::Key::from_base64(text)
                .map_err(|source| ConfigError::Key { variable, source })
        };
        let mut all = keepsake_cookie::Keys::new(parse(first)?);
        for key in keys {
            all = all.with_previous(parse(key)?);
        }
        Ok(all)
    }

    fn cookie_store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        #[cfg(feature = "cookie")]
        {
            Ok(Arc::new(
                keepsake_cookie::CookieStore::new(self.keys()?)
                    .with_cookie_name(self.cookie.clone()),
            ))
        }
        #[cfg(not(feature = "cookie"))]
        {
            Err(self.disabled("cookie"))
        }
    }

    fn encrypted(
        &self,
        store: Arc<dyn SessionStore>,
    ) -> Result<Arc<dyn SessionStore>, ConfigError> {
        #[cfg(feature = "encryption")]
        {
            Ok(Arc::new(keepsake_cookie::EncryptedStore::new(
                store,
                self.keys()?,
            )))
        }
        #[cfg(not(feature = "encryption"))]
        {
            let _ = store;
            Err(ConfigError::FeatureDisabled {
                driver: self.driver.name(),
                feature: "encryption",
            })
        }
    }

    fn file_store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        #[cfg(feature = "file")]
        {
            let store =
                keepsake_file::FileStore::new(&self.files).map_err(|e| self.store_error(e))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "file"))]
        {
            Err(self.disabled("file"))
        }
    }

    #[allow(clippy::unused_async)]
    async fn sql_store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        let driver = self.driver.name();
        let Some(url) = self.connection.as_deref() else {
            return Err(ConfigError::Missing {
                variable: "SESSION_CONNECTION",
                driver,
                expected: "a database URL (or DATABASE_URL)",
            });
        };
        let wrong_scheme = |expected: &'static str| ConfigError::Invalid {
            variable: "SESSION_CONNECTION",
            value: url.to_owned(),
            expected,
        };
        match self.driver {
            Driver::Sqlite => {
                if !url.starts_with("sqlite:") {
                    return Err(wrong_scheme(
                        "a sqlite: URL, e.g. sqlite://sessions.db?mode=rwc",
                    ));
                }
                #[cfg(feature = "sqlite")]
                {
                    let store = keepsake_sqlx::SqliteStore::connect(url)
                        .await
                        .and_then(|s| s.with_table_name(&self.table))
                        .map_err(|e| self.store_error(e))?;
                    store.migrate().await.map_err(|e| self.store_error(e))?;
                    Ok(Arc::new(store))
                }
                #[cfg(not(feature = "sqlite"))]
                Err(self.disabled("sqlite"))
            }
            Driver::Postgres => {
                if !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
                    return Err(wrong_scheme("a postgres:// URL"));
                }
                #[cfg(feature = "postgres")]
                {
                    let store = keepsake_sqlx::PostgresStore::connect(url)
                        .await
                        .and_then(|s| s.with_table_name(&self.table))
                        .map_err(|e| self.store_error(e))?;
                    store.migrate().await.map_err(|e| self.store_error(e))?;
                    Ok(Arc::new(store))
                }
                #[cfg(not(feature = "postgres"))]
                Err(self.disabled("postgres"))
            }
            _ => {
                if !url.starts_with("mysql:") && !url.starts_with("mariadb:") {
                    return Err(wrong_scheme("a mysql:// URL"));
                }
                #[cfg(feature = "mysql")]
                {
                    let store = keepsake_sqlx::MySqlStore::connect(url)
                        .await
                        .and_then(|s| s.with_table_name(&self.table))
                        .map_err(|e| self.store_error(e))?;
                    store.migrate().await.map_err(|e| self.store_error(e))?;
                    Ok(Arc::new(store))
                }
                #[cfg(not(feature = "mysql"))]
                Err(self.disabled("mysql"))
            }
        }
    }

    #[allow(clippy::unused_async)]
    async fn redis_store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        let urls: Vec<&str> = self
            .redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty()
            || urls
                .iter()
                .any(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid {
                variable: "SESSION_REDIS_URL",
                value: self.redis_url.clone(),
                expected: "redis:// URLs (comma-separated for redis-cluster)",
            });
        }
        #[cfg(feature = "redis")]
        {
            let store = if self.driver == Driver::RedisCluster {
                keepsake_redis::RedisStore::connect_cluster(urls).await
            } else {
                keepsake_redis::RedisStore::connect(urls[0]).await
            };
            let mut store = store.map_err(|e| self.store_error(e))?;
            if let Some(prefix) = &self.prefix {
                store = store.with_prefix(prefix.clone());
            }
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redis"))]
        Err(self.disabled("redis"))
    }

    #[allow(clippy::unused_async)]
    async fn memcached_store(&self) -> Result<Arc<dyn SessionStore>, ConfigError> {
        #[cfg(feature = "memcached")]
        {
            let mut builder =
                keepsake_memcached::MemcachedStore::builder(self.memcached_servers.clone());
            if let Some(prefix) = &self.prefix {
                builder = builder.prefix(prefix.clone());
            }
            let store = builder.connect().await.map_err(|e| self.store_error(e))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "memcached"))]
        Err(self.disabled("memcached"))
    }
}

/// Reads the configuration from the environment (and `.env`), builds the
/// store (migrating SQL tables) and returns the layer.
///
/// # Errors
///
/// A [`ConfigError`] naming the bad variable, or the store's failure.
pub async fn from_env() -> Result<SessionLayer, ConfigError> {
    SessionConfig::from_env()?.build().await
}
