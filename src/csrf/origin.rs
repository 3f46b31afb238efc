//! The origin check: `Sec-Fetch-Site` and `Origin` against the origins the
//! application is served from, before the token is looked at. Every
//! function here reads headers a client chooses: none of them panics.

use std::borrow::Cow;

use http::header::{HOST, ORIGIN};
use http::request::Parts;

use crate::middleware::{TrustedProxies, is_host};

/// A web origin: scheme, host and port (the port filled in from the scheme
/// when it was left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` as an `Origin` header serializes it
    /// (no path, no user info); a trailing `/` is tolerated. Scheme and host
    /// are compared case-insensitively.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.split_once("://")?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let scheme = scheme.to_ascii_lowercase();
        let valid_scheme = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !valid_scheme {
            return None;
        }
        Self::from_authority(&scheme, authority)
    }

    /// The origin of `scheme` and a `Host` value (`host[:port]`).
    fn from_authority(scheme: &str, authority: &str) -> Option<Self> {
        if !is_host(authority) {
            return None;
        }
        // `is_host` allows a port only after the host or the `]` of an
        // IPv6 literal: the last `:` after any `]` starts it.
        let split = match authority.rfind(']') {
            Some(close) => authority[close..].find(':').map(|at| close + at),
            None => authority.rfind(':'),
        };
        let (host, port) = match split {
            Some(at) => (
                &authority[..at],
                Some(authority[at + 1..].parse::<u16>().ok()?),
            ),
            None => (authority, None),
        };
        Some(Self {
            scheme: scheme.to_owned(),
            host: host.to_ascii_lowercase(),
            port: port.or_else(|| default_port(scheme)),
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Why a request fails the origin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    CrossSite,
    OriginMismatch,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::CrossSite => "Sec-Fetch-Site: cross-site",
            Self::OriginMismatch => "the Origin header is not an allowed origin",
        }
    }
}

/// The origin check of an unsafe request. `allowed` replaces the
/// request's own origin when it is not empty.
pub(crate) fn check(parts: &Parts, allowed: &[Origin]) -> Result<(), Refusal> {
    // Unparsable values (`null`, garbage) are `None`: never allowed.
    let origins: Vec<Option<Origin>> = parts
        .headers
        .get_all(ORIGIN)
        .iter()
        .map(|value| value.to_str().ok().and_then(Origin::parse))
        .collect();
    let all_in = |list: &[Origin]| {
        origins
            .iter()
            .all(|origin| origin.as_ref().is_some_and(|o| list.contains(o)))
    };
    // An origin the application lists explicitly may post cross-site.
    let explicitly_allowed = !origins.is_empty() && all_in(allowed);
    let cross_site = parts.headers.get_all("sec-fetch-site").iter().any(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"cross-site")
    });
    if cross_site && !explicitly_allowed {
        return Err(Refusal::CrossSite);
    }
    if origins.is_empty() || explicitly_allowed {
        return Ok(());
    }
    if allowed.is_empty() && all_in(&own_origins(parts)) {
        Ok(())
    } else {
        Err(Refusal::OriginMismatch)
    }
}

/// The origins the request was addressed to: its host (`Host`, or the
/// URI's authority as HTTP/2 sends it) with its scheme, both as the
/// outermost trusted proxy received them when there are trusted proxies.
/// When nothing says the scheme (HTTP/1.1 straight to the application),
/// `http` and `https` on that host are both the request's own.
fn own_origins(parts: &Parts) -> Vec<Origin> {
    let trust = parts.extensions.get::<TrustedProxies>();
    let forwarded_host = trust.and_then(|t| t.forwarded_host(&parts.headers));
    let host: Option<Cow<'_, str>> = forwarded_host.map(Cow::Owned).or_else(|| {
        parts
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
            .map(Cow::Borrowed)
    });
    let Some(host) = host else {
        return Vec::new();
    };
    let scheme = trust
        .and_then(|t| t.forwarded_proto(&parts.headers))
        .or_else(|| parts.uri.scheme_str().map(str::to_ascii_lowercase));
    match scheme {
        Some(scheme) => Origin::from_authority(&scheme, host.trim())
            .into_iter()
            .collect(),
        None => ["http", "https"]
            .iter()
            .filter_map(|scheme| Origin::from_authority(scheme, host.trim()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::middleware::ProxyHeader;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).expect("an origin")
    }

    fn parts(uri: &str, headers: &[(&str, &str)], trust: Option<TrustedProxies>) -> Parts {
        let mut request = Request::post(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).expect("a request").into_parts();
        if let Some(trust) = trust {
            parts.extensions.insert(trust);
        }
        parts
    }

    #[test]
    fn parsing() {
        assert_eq!(
            origin("https://Example.COM"),
            origin("https://example.com:443")
        );
        assert_eq!(
            origin("http://example.com/"),
            origin("http://example.com:80")
        );
        assert_ne!(origin("http://example.com"), origin("https://example.com"));
        assert_ne!(
            origin("https://example.com:8443"),
            origin("https://example.com")
        );
        assert_eq!(origin("http://[::1]:3000").port, Some(3000));
        assert_eq!(origin("http://[::1]").host, "[::1]");
        for bad in [
            "null",
            "",
            "example.com",
            "https://",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:99999",
            "https://exa mple.com",
            "1http://example.com",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_request_s_own_origin() {
        let host = [("host", "example.com")];
        assert_eq!(check(&parts("/", &host, None), &[]), Ok(()));
        for own in ["https://example.com", "http://example.com"] {
            let with = [("host", "example.com"), ("origin", own)];
            assert_eq!(check(&parts("/", &with, None), &[]), Ok(()), "{own}");
        }
        for other in [
            "https://evil.test",
            "https://example.com:8443",
            "https://example.com.evil.test",
            "null",
        ] {
            let with = [("host", "example.com"), ("origin", other)];
            assert_eq!(
                check(&parts("/", &with, None), &[]),
                Err(Refusal::OriginMismatch),
                "{other}"
            );
        }
        // An absolute URI says the scheme.
        let with = [("origin", "http://example.com")];
        assert_eq!(
            check(&parts("https://example.com/", &with, None), &[]),
            Err(Refusal::OriginMismatch)
        );
        // No host at all: nothing is the request's own.
        assert_eq!(
            check(&parts("/", &[("origin", "https://example.com")], None), &[]),
            Err(Refusal::OriginMismatch)
        );
    }

    #[test]
    fn sec_fetch_site() {
        let cross = [("host", "example.com"), ("sec-fetch-site", "cross-site")];
        assert_eq!(
            check(&parts("/", &cross, None), &[]),
            Err(Refusal::CrossSite)
        );
        for fine in ["same-origin", "same-site", "none"] {
            let with = [("host", "example.com"), ("sec-fetch-site", fine)];
            assert_eq!(check(&parts("/", &with, None), &[]), Ok(()), "{fine}");
        }
        // Same-site but another origin: the Origin decides.
        let with = [
            ("host", "example.com"),
            ("sec-fetch-site", "same-site"),
            ("origin", "https://blog.example.com"),
        ];
        assert_eq!(
            check(&parts("/", &with, None), &[]),
            Err(Refusal::OriginMismatch)
        );
    }

    #[test]
    fn configured_origins_replace_the_own() {
        let allowed = [
            origin("https://app.example.com"),
            origin("https://partner.test"),
        ];
        let with = |origin: &'static str| {
            parts("/", &[("host", "internal:8080"), ("origin", origin)], None)
        };
        assert_eq!(check(&with("https://app.example.com"), &allowed), Ok(()));
        assert_eq!(
            check(&with("http://internal:8080"), &allowed),
            Err(Refusal::OriginMismatch)
        );
        // A listed origin may be cross-site.
        let partner = parts(
            "/",
            &[
                ("origin", "https://partner.test"),
                ("sec-fetch-site", "cross-site"),
            ],
            None,
        );
        assert_eq!(check(&partner, &allowed), Ok(()));
    }

    #[test]
    fn behind_a_trusted_proxy() {
        let headers = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://example.com"),
        ];
        let trust = Some(TrustedProxies::new());
        assert_eq!(check(&parts("/", &headers, trust), &[]), Ok(()));
        // Without trust the forwarded headers mean nothing.
        assert_eq!(
            check(&parts("/", &headers, None), &[]),
            Err(Refusal::OriginMismatch)
        );
        // The scheme the proxy saw counts.
        let http = [
            ("host", "example.com"),
            ("x-forwarded-proto", "http"),
            ("origin", "https://example.com"),
        ];
        assert_eq!(
            check(&parts("/", &http, trust), &[]),
            Err(Refusal::OriginMismatch)
        );
        let forwarded = [
            ("host", "10.0.0.5:8080"),
            ("forwarded", "for=192.0.2.1;host=example.com;proto=https"),
            ("origin", "https://example.com"),
        ];
        let rfc = Some(TrustedProxies::new().with_header(ProxyHeader::Forwarded));
        assert_eq!(check(&parts("/", &forwarded, rfc), &[]), Ok(()));
    }
}
