//! Which store to open, from the flags and the environment.
//!
//! The environment is read by the library's own
//! [`SessionConfig::from_vars_over`], so the command resolves exactly the
//! store the application uses (same variables, same defaults: without
//! `SESSION_DRIVER` that is the file driver in `storage/sessions`). Flags
//! then override what they name. Everything is checked here, before any
//! connection, so that a configuration mistake is a usage error (exit 2)
//! with a message naming the variable to fix.

use std::fmt;
use std::path::PathBuf;

use keepsake::config::{ConfigError, Driver as LibDriver, SessionConfig};

use crate::cli::StoreArgs;
use crate::fail::Failure;

/// The session drivers the library knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    Sqlite,
    Postgres,
    MySql,
    File,
    Redis,
    RedisCluster,
    Memcached,
}

impl Driver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::Memcached => "memcached",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything needed to open the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Sql {
        driver: Driver,
        url: String,
        table: String,
    },
    File {
        dir: PathBuf,
        /// True when neither `SESSION_DRIVER` nor `--driver` chose the file
        /// driver (it is the library's default), for a clearer message.
        by_default: bool,
    },
    Redis {
        urls: Vec<String>,
        cluster: bool,
        prefix: Option<String>,
    },
    Memcached {
        url: String,
        prefix: Option<String>,
    },
}

/// Resolves the target from the flags and `env` (the process environment
/// in `main`, a map in tests).
pub(crate) fn resolve(
    flags: &StoreArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Target, Failure> {
    // An empty value counts as unset, as in a `.env` line `SESSION_TABLE=`.
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let flag = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());

    let driver_flag = flag(&flags.driver);
    let by_default = driver_flag.is_none() && env("SESSION_DRIVER").is_none();
    let get = |name: &str| match (name, &driver_flag) {
        ("SESSION_DRIVER", Some(driver)) => Some(driver.clone()),
        _ => env(name),
    };
    let config =
        SessionConfig::from_vars_over(SessionConfig::default(), get).map_err(|e| {
            match (&e, &driver_flag) {
                (ConfigError::Invalid { variable, .. }, Some(driver))
                    if *variable == "SESSION_DRIVER" =>
                {
                    Failure::usage(format!(
                        "unknown session driver `{}` in --driver: {e}",
                        driver.trim()
                    ))
                }
                _ => Failure::usage(e.to_string()),
            }
        })?;

    let prefix = flag(&flags.prefix).or_else(|| config.prefix.clone());
    let url = flag(&flags.url);
    let driver = match config.driver {
        LibDriver::Memory => {
            return Err(Failure::usage(
                "SESSION_DRIVER=memory keeps sessions inside each application process: \
                 there is nothing the keepsake command can reach (they disappear with the process)",
            ));
        }
        LibDriver::Cookie => {
            return Err(Failure::usage(
                "SESSION_DRIVER=cookie keeps each session in the visitor's browser: \
                 there is nothing stored on the server to migrate, prune, count or revoke",
            ));
        }
        LibDriver::File => Driver::File,
        LibDriver::Sqlite => Driver::Sqlite,
        LibDriver::Postgres => Driver::Postgres,
        LibDriver::Mysql => Driver::MySql,
        LibDriver::Redis => Driver::Redis,
        LibDriver::RedisCluster => Driver::RedisCluster,
        LibDriver::Memcached => Driver::Memcached,
        other => {
            return Err(Failure::usage(format!(
                "the keepsake command does not know the `{}` session driver yet",
                other.name()
            )));
        }
    };
    match driver {
        Driver::File => {
            let dir = flags
                .dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| config.files.clone());
            Ok(Target::File { dir, by_default })
        }
        Driver::Sqlite | Driver::Postgres | Driver::MySql => {
            let url = url.or_else(|| config.connection.clone()).ok_or_else(|| {
                Failure::usage(format!(
                    "SESSION_DRIVER={driver} needs a database URL: set SESSION_CONNECTION or \
                     DATABASE_URL (or pass --url)"
                ))
            })?;
            check_scheme(driver, &url)?;
            let table = flag(&flags.table).unwrap_or_else(|| config.table.clone());
            Ok(Target::Sql { driver, url, table })
        }
        Driver::Redis | Driver::RedisCluster => {
            let urls = url.unwrap_or_else(|| config.redis_url.clone());
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            let cluster = driver == Driver::RedisCluster;
            if urls.is_empty() {
                return Err(Failure::usage(
                    "SESSION_REDIS_URL holds no URL (or pass --url)",
                ));
            }
            if !cluster && urls.len() > 1 {
                return Err(Failure::usage(
                    "SESSION_DRIVER=redis takes one URL; for several nodes of a Redis Cluster \
                     use SESSION_DRIVER=redis-cluster",
                ));
            }
            for url in &urls {
                check_scheme(driver, url)?;
            }
            Ok(Target::Redis {
                urls,
                cluster,
                prefix,
            })
        }
        Driver::Memcached => {
            let url = url.unwrap_or_else(|| config.memcached_servers.clone());
            Ok(Target::Memcached { url, prefix })
        }
    }
}

/// A URL of another backend (a PostgreSQL URL with `--driver mysql`) is a
/// configuration mistake, caught before connecting anywhere.
fn check_scheme(driver: Driver, url: &str) -> Result<(), Failure> {
    let schemes: &[&str] = match driver {
        Driver::Sqlite => &["sqlite"],
        Driver::Postgres => &["postgres", "postgresql"],
        Driver::MySql => &["mysql", "mariadb"],
        Driver::Redis | Driver::RedisCluster => &["redis", "rediss", "redis+unix", "unix"],
        Driver::File | Driver::Memcached => return Ok(()),
    };
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme {
        Some(s) if schemes.contains(&s.as_str()) => Ok(()),
        _ => Err(Failure::usage(format!(
            "SESSION_DRIVER={driver} needs a URL starting with {}: (got `{}`)",
            schemes.join(": or "),
            redact(url)
        ))),
    }
}

/// A URL fit for an error message: the password, if any, replaced.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn message(result: Result<Target, Failure>) -> String {
        let failure = result.unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        failure.to_string()
    }

    #[test]
    fn sql_from_the_environment() {
        let target = resolve(
            &StoreArgs::default(),
            env(&[
                ("SESSION_DRIVER", "pgsql"),
                ("DATABASE_URL", "postgres://db/app"),
                ("SESSION_TABLE", "web_sessions"),
            ]),
        )
        .unwrap();
        assert_eq!(
            target,
            Target::Sql {
                driver: Driver::Postgres,
                url: "postgres://db/app".into(),
                table: "web_sessions".into(),
            }
        );
    }

    #[test]
    fn session_connection_wins_over_database_url_and_flags_win_over_both() {
        let vars = env(&[
            ("SESSION_DRIVER", "sqlite"),
            ("SESSION_CONNECTION", "sqlite://sessions.db"),
            ("DATABASE_URL", "sqlite://app.db"),
            ("SESSION_TABLE", ""),
        ]);
        let target = resolve(&StoreArgs::default(), &vars).unwrap();
        assert_eq!(
            target,
            Target::Sql {
                driver: Driver::Sqlite,
                url: "sqlite://sessions.db".into(),
                table: "sessions".into(),
            }
        );
        let flags = StoreArgs {
            driver: Some("mysql".into()),
            url: Some("mysql://root@127.0.0.1/test".into()),
            table: Some("t".into()),
            ..StoreArgs::default()
        };
        assert_eq!(
            resolve(&flags, &vars).unwrap(),
            Target::Sql {
                driver: Driver::MySql,
                url: "mysql://root@127.0.0.1/test".into(),
                table: "t".into(),
            }
        );
    }

    #[test]
    fn other_drivers() {
        let flags = StoreArgs {
            dir: Some("/var/lib/app/sessions".into()),
            ..StoreArgs::default()
        };
        assert_eq!(
            resolve(&flags, env(&[("SESSION_DRIVER", "file")])).unwrap(),
            Target::File {
                dir: "/var/lib/app/sessions".into(),
                by_default: false,
            }
        );
        assert_eq!(
            resolve(
                &StoreArgs::default(),
                env(&[
                    ("SESSION_DRIVER", "redis-cluster"),
                    ("SESSION_REDIS_URL", "redis://a:7000, redis://b:7001"),
                    ("SESSION_PREFIX", "app:"),
                ])
            )
            .unwrap(),
            Target::Redis {
                urls: vec!["redis://a:7000".into(), "redis://b:7001".into()],
                cluster: true,
                prefix: Some("app:".into()),
            }
        );
        assert_eq!(
            resolve(
                &StoreArgs::default(),
                env(&[
                    ("SESSION_DRIVER", "memcached"),
                    ("SESSION_MEMCACHED_SERVERS", "memcache://127.0.0.1:11211"),
                ])
            )
            .unwrap(),
            Target::Memcached {
                url: "memcache://127.0.0.1:11211".into(),
                prefix: None,
            }
        );
    }

    #[test]
    fn the_library_defaults_apply() {
        let none = StoreArgs::default();
        // Laravel's default driver, in its default directory.
        assert_eq!(
            resolve(&none, env(&[])).unwrap(),
            Target::File {
                dir: "storage/sessions".into(),
                by_default: true,
            }
        );
        assert_eq!(
            resolve(&none, env(&[("SESSION_DRIVER", "redis")])).unwrap(),
            Target::Redis {
                urls: vec!["redis://127.0.0.1:6379".into()],
                cluster: false,
                prefix: None,
            }
        );
    }

    #[test]
    fn configuration_mistakes_name_what_to_fix() {
        let none = StoreArgs::default();
        let unknown = message(resolve(&none, env(&[("SESSION_DRIVER", "mongo")])));
        assert!(
            unknown.contains("SESSION_DRIVER") && unknown.contains("mongo"),
            "{unknown}"
        );
        let flags = StoreArgs {
            driver: Some("mongo".into()),
            ..StoreArgs::default()
        };
        assert!(message(resolve(&flags, env(&[]))).contains("--driver"));
        let no_url = message(resolve(&none, env(&[("SESSION_DRIVER", "postgres")])));
        assert!(no_url.contains("DATABASE_URL"), "{no_url}");
        let memory = message(resolve(&none, env(&[("SESSION_DRIVER", "memory")])));
        assert!(memory.contains("memory"), "{memory}");
        let cookie = message(resolve(&none, env(&[("SESSION_DRIVER", "cookie")])));
        assert!(cookie.contains("browser"), "{cookie}");
        let wrong = message(resolve(
            &none,
            env(&[
                ("SESSION_DRIVER", "mysql"),
                ("DATABASE_URL", "postgres://u:hunter2@db/app"),
            ]),
        ));
        assert!(
            wrong.contains("mysql:") && !wrong.contains("hunter2"),
            "{wrong}"
        );
        let several = message(resolve(
            &none,
            env(&[
                ("SESSION_DRIVER", "redis"),
                ("SESSION_REDIS_URL", "redis://a,redis://b"),
            ]),
        ));
        assert!(several.contains("redis-cluster"), "{several}");
        let lifetime = message(resolve(
            &none,
            env(&[("SESSION_DRIVER", "sqlite"), ("SESSION_LIFETIME", "soon")]),
        ));
        assert!(lifetime.contains("SESSION_LIFETIME"), "{lifetime}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/app?x=1"),
            "postgres://app:***@db:5432/app?x=1"
        );
        assert_eq!(redact("redis://:pw@cache"), "redis://:***@cache");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
    }
}
