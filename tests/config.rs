//! `SessionConfig::from_env`: every variable, every bad value, and building
//! the layer for the drivers that need no server.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use keepsake::SameSite;
use keepsake::config::{ConfigError, Driver, SessionConfig};

fn read(vars: &[(&str, &str)]) -> Result<SessionConfig, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    SessionConfig::from_vars_over(SessionConfig::default(), |name| map.get(name).cloned())
}

const KEY: &str = "base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn defaults() {
    let c = read(&[]).unwrap();
    assert_eq!(c.driver, Driver::File);
    assert_eq!(c.lifetime, Duration::from_secs(7200));
    assert_eq!(
        (c.lottery, c.table.as_str(), c.cookie.as_str()),
        ((2, 100), "sessions", "keepsake_session")
    );
    assert_eq!(c.gc_min_interval, Duration::from_secs(60));
    assert!(c.secure && c.http_only && !c.encrypt && !c.expire_on_close);
}

#[test]
fn every_variable_is_read() {
    let c = read(&[
        ("SESSION_DRIVER", "Redis-Cluster"),
        ("SESSION_LIFETIME", "30"),
        ("SESSION_EXPIRE_ON_CLOSE", "yes"),
        ("SESSION_ENCRYPT", "1"),
        ("SESSION_FILES", "/var/sessions"),
        ("DATABASE_URL", "postgres://db/app"),
        ("SESSION_TABLE", "web_sessions"),
        ("SESSION_LOTTERY", "1, 50"),
        ("SESSION_GC_MIN_INTERVAL", "0"),
        ("SESSION_COOKIE", "app_session"),
        ("SESSION_PATH", "/app"),
        ("SESSION_DOMAIN", "example.com"),
        ("SESSION_SECURE_COOKIE", "false"),
        ("SESSION_HTTP_ONLY", "off"),
        ("SESSION_SAME_SITE", "Strict"),
        ("SESSION_REDIS_URL", "redis://a:7000,redis://b:7000"),
        ("SESSION_MEMCACHED_SERVERS", "m1:11211,m2:11211"),
        ("SESSION_PREFIX", "app:"),
        ("APP_KEY", KEY),
        ("APP_PREVIOUS_KEYS", "old1, old2"),
    ])
    .unwrap();
    assert_eq!(c.driver, Driver::RedisCluster);
    assert_eq!(c.lifetime, Duration::from_secs(1800));
    assert!(c.expire_on_close && c.encrypt && !c.secure && !c.http_only);
    assert_eq!(c.files.to_str(), Some("/var/sessions"));
    assert_eq!(c.connection.as_deref(), Some("postgres://db/app"));
    assert_eq!((c.table.as_str(), c.lottery), ("web_sessions", (1, 50)));
    assert_eq!(c.gc_min_interval, Duration::ZERO);
    assert_eq!(
        (c.cookie.as_str(), c.path.as_str(), c.domain.as_deref()),
        ("app_session", "/app", Some("example.com"))
    );
    assert_eq!(c.same_site, SameSite::Strict);
    assert_eq!(c.redis_url, "redis://a:7000,redis://b:7000");
    assert_eq!(c.memcached_servers, "m1:11211,m2:11211");
    assert_eq!(c.prefix.as_deref(), Some("app:"));
    assert_eq!(c.keys, [KEY, "old1", "old2"]);
    assert_eq!(c.keys_variable, "APP_KEY");
    let c = read(&[
        ("SESSION_CONNECTION", "sqlite://x.db"),
        ("DATABASE_URL", "postgres://y"),
    ])
    .unwrap();
    assert_eq!(
        c.connection.as_deref(),
        Some("sqlite://x.db"),
        "SESSION_CONNECTION wins"
    );
}

#[test]
fn every_bad_value_names_its_variable() {
    let cases = [
        ("SESSION_DRIVER", "mongodb"),
        ("SESSION_LIFETIME", "ten"),
        ("SESSION_LIFETIME", "0"),
        ("SESSION_LIFETIME", "-5"),
        ("SESSION_EXPIRE_ON_CLOSE", "maybe"),
        ("SESSION_ENCRYPT", "2"),
        ("SESSION_TABLE", "sessions; drop table users"),
        ("SESSION_LOTTERY", "2"),
        ("SESSION_LOTTERY", "5,2"),
        ("SESSION_LOTTERY", "1,0"),
        ("SESSION_LOTTERY", "a,b"),
        ("SESSION_GC_MIN_INTERVAL", "-1"),
        ("SESSION_GC_MIN_INTERVAL", "1m"),
        ("SESSION_COOKIE", "bad name"),
        ("SESSION_PATH", "relative"),
        ("SESSION_DOMAIN", "a b"),
        ("SESSION_SECURE_COOKIE", "sure"),
        ("SESSION_HTTP_ONLY", "nope"),
        ("SESSION_SAME_SITE", "sometimes"),
        ("SESSION_COOKIE", "a;b"),
        ("SESSION_COOKIE", "s=x"),
        ("SESSION_COOKIE", "sessi\u{f6}n"),
        ("SESSION_PATH", "/a;Domain=evil.test"),
        ("SESSION_PATH", "/a b"),
        ("SESSION_DOMAIN", "example.com;x"),
        ("SESSION_PARTITIONED_COOKIE", "perhaps"),
        ("SESSION_TRUSTED_PROXIES", "-1"),
        ("SESSION_TRUSTED_PROXIES", "256"),
        ("SESSION_TRUSTED_PROXIES", "yes"),
        ("SESSION_PROXY_HEADER", "x-real-ip"),
        ("SESSION_PROXY_HEADER", "both"),
    ];
    for (variable, value) in cases {
        let error = read(&[(variable, value)]).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, ConfigError::Invalid { variable: v, .. } if *v == variable),
            "{variable}={value}: {error:?}"
        );
        assert!(
            message.contains(variable) && message.contains("expected"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn missing_urls_and_keys_name_their_variable() {
    for driver in ["sqlite", "postgres", "mysql"] {
        let error = read(&[("SESSION_DRIVER", driver)])
            .unwrap()
            .build()
            .await
            .unwrap_err();
        if matches!(error, ConfigError::FeatureDisabled { .. }) {
            continue;
        }
        assert!(
            matches!(
                error,
                ConfigError::Missing {
                    variable: "SESSION_CONNECTION",
                    ..
                }
            ),
            "{driver}: {error:?}"
        );
    }
    let error = read(&[
        ("SESSION_DRIVER", "postgres"),
        ("SESSION_CONNECTION", "mysql://x"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                variable: "SESSION_CONNECTION",
                ..
            }
        ),
        "{error:?}"
    );
    let error = read(&[
        ("SESSION_DRIVER", "redis"),
        ("SESSION_REDIS_URL", "localhost:6379"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                variable: "SESSION_REDIS_URL",
                ..
            }
        ),
        "{error:?}"
    );
}

#[cfg(feature = "cookie")]
#[tokio::test]
async fn keys_are_required_and_checked() {
    let error = read(&[("SESSION_DRIVER", "cookie")])
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Missing {
                variable: "SESSION_KEY",
                ..
            }
        ),
        "{error:?}"
    );
    let error = read(&[("SESSION_DRIVER", "cookie"), ("SESSION_KEY", "c2hvcnQ=")])
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Key {
                variable: "SESSION_KEY",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("SESSION_KEY"));
    let error = read(&[("SESSION_DRIVER", "cookie"), ("APP_KEY", "not base64 !!")])
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Key {
                variable: "APP_KEY",
                ..
            }
        ),
        "{error:?}"
    );
    let layer = read(&[("SESSION_DRIVER", "cookie"), ("APP_KEY", KEY)])
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(layer.store().kind(), "cookie");
}

#[cfg(all(feature = "encryption", feature = "file"))]
#[tokio::test]
async fn encrypt_wraps_server_stores() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().to_str().unwrap();
    let error = read(&[("SESSION_ENCRYPT", "true"), ("SESSION_FILES", files)])
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Missing {
                variable: "SESSION_KEY",
                ..
            }
        ),
        "{error:?}"
    );
    let layer = read(&[
        ("SESSION_ENCRYPT", "true"),
        ("SESSION_FILES", files),
        ("SESSION_KEY", KEY),
    ])
    .unwrap()
    .build()
    .await
    .unwrap();
    assert_eq!(layer.store().kind(), "file");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_is_created_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let layer = read(&[
        ("SESSION_DRIVER", "sqlite"),
        ("SESSION_CONNECTION", &url),
        ("SESSION_TABLE", "web_sessions"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap();
    assert_eq!(layer.store().kind(), "sqlite");
    assert_eq!(
        layer.store().gc(keepsake::now()).await.unwrap(),
        0,
        "the table exists"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_unreachable_store_is_a_store_error() {
    let error = read(&[
        ("SESSION_DRIVER", "sqlite"),
        ("SESSION_CONNECTION", "sqlite:///nonexistent-dir/x/y.db"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Store {
                driver: "sqlite",
                ..
            }
        ),
        "{error:?}"
    );
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn a_driver_compiled_out_names_its_feature() {
    let error = read(&[("SESSION_DRIVER", "redis")])
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::FeatureDisabled {
                feature: "redis",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn memory_builds_with_the_configured_cookie() {
    let layer = read(&[("SESSION_DRIVER", "memory"), ("SESSION_COOKIE", "app")])
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(layer.store().kind(), "memory");
    assert!(format!("{layer:?}").contains("\"app\""));
}

#[tokio::test]
async fn trusted_proxies_from_the_environment() {
    use keepsake::middleware::ProxyHeader;

    let c = read(&[]).unwrap();
    assert_eq!(
        (c.trusted_proxies, c.proxy_header),
        (0, ProxyHeader::XForwardedFor)
    );
    let c = read(&[
        ("SESSION_TRUSTED_PROXIES", " 2 "),
        ("SESSION_PROXY_HEADER", "Forwarded"),
    ])
    .unwrap();
    assert_eq!(
        (c.trusted_proxies, c.proxy_header),
        (2, ProxyHeader::Forwarded)
    );

    let layer = read(&[
        ("SESSION_DRIVER", "memory"),
        ("SESSION_TRUSTED_PROXIES", "2"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap();
    let debug = format!("{layer:?}");
    assert!(
        debug.contains("trusted_proxies: Some(TrustedProxies { header: XForwardedFor, hops: 2 })"),
        "{debug}"
    );
    let layer = read(&[
        ("SESSION_DRIVER", "memory"),
        ("SESSION_PROXY_HEADER", "forwarded"),
    ])
    .unwrap()
    .build()
    .await
    .unwrap();
    assert!(format!("{layer:?}").contains("trusted_proxies: None"));
}

#[test]
fn cookie_prefixes_need_their_attributes() {
    let c = read(&[
        ("SESSION_COOKIE", "__Host-session"),
        ("SESSION_PARTITIONED_COOKIE", "on"),
    ])
    .unwrap();
    assert_eq!(c.cookie, "__Host-session");
    assert!(c.partitioned);

    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("SESSION_COOKIE", "__Host-s"),
                ("SESSION_SECURE_COOKIE", "false"),
            ],
            "SESSION_COOKIE",
        ),
        (
            &[
                ("SESSION_COOKIE", "__Host-s"),
                ("SESSION_DOMAIN", "example.com"),
            ],
            "SESSION_COOKIE",
        ),
        (
            &[("SESSION_COOKIE", "__host-s"), ("SESSION_PATH", "/app")],
            "SESSION_COOKIE",
        ),
        (
            &[
                ("SESSION_COOKIE", "__Secure-s"),
                ("SESSION_SECURE_COOKIE", "0"),
            ],
            "SESSION_COOKIE",
        ),
        (
            &[
                ("SESSION_PARTITIONED_COOKIE", "true"),
                ("SESSION_SECURE_COOKIE", "false"),
            ],
            "SESSION_PARTITIONED_COOKIE",
        ),
    ];
    for (vars, variable) in cases {
        let error = read(vars).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { variable: v, .. } if v == variable),
            "{vars:?}: {error:?}"
        );
        assert!(error.to_string().contains(variable), "{error}");
    }
    // `null` is Laravel's "no domain", which `__Host-` allows.
    let c = read(&[("SESSION_COOKIE", "__Host-s"), ("SESSION_DOMAIN", "null")]).unwrap();
    assert_eq!(c.domain, None);
}

#[tokio::test]
async fn fields_set_in_code_are_checked_by_build() {
    let mut c = read(&[("SESSION_DRIVER", "memory")]).unwrap();
    c.cookie = "bad name".to_owned();
    let error = c.build().await.unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                variable: "SESSION_COOKIE",
                ..
            }
        ),
        "{error:?}"
    );

    let mut c = read(&[("SESSION_DRIVER", "memory")]).unwrap();
    c.cookie = "__Host-s".to_owned();
    c.path = "/app".to_owned();
    let error = c.build().await.unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                variable: "SESSION_COOKIE",
                ..
            }
        ),
        "{error:?}"
    );

    let mut c = read(&[("SESSION_DRIVER", "memory")]).unwrap();
    c.partitioned = true;
    c.cookie = "__Host-s".to_owned();
    let layer = c.build().await.unwrap();
    assert!(format!("{layer:?}").contains("partitioned: true"));
}
