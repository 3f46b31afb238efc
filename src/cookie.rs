//! Reading the session cookie from a request and writing `Set-Cookie`.

use http::HeaderMap;
use http::header::COOKIE;

use crate::middleware::Config;

/// The values of every cookie named `name` in the request, in order, across
/// all `Cookie` headers. Matching is done on bytes, so a header that also
/// carries another cookie with non-ASCII bytes still yields the session
/// cookie; a session cookie value that is not UTF-8 is yielded as an empty
/// string (sent, but malformed).
pub(crate) fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
            (key == name.as_bytes()).then(|| {
                let value = std::str::from_utf8(value).unwrap_or_default();
                value.trim_matches('"')
            })
        })
}

/// A `Set-Cookie` value carrying `value`, valid for `max_age` seconds (a
/// session cookie when `None`).
pub(crate) fn set(config: &Config, value: &str, max_age: Option<i64>) -> String {
    let mut cookie = cookie::Cookie::build((config.cookie_name.as_str(), value))
        .path(config.cookie_path.as_str())
        .http_only(config.http_only)
        .secure(config.secure)
        .same_site(config.same_site.into());
    if let Some(domain) = &config.cookie_domain {
        cookie = cookie.domain(domain.as_str());
    }
    if let Some(seconds) = max_age {
        let seconds = seconds.max(0);
        cookie = cookie
            .max_age(time::Duration::seconds(seconds))
            .expires(time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds));
    }
    cookie.build().to_string()
}

/// A `Set-Cookie` value that removes the session cookie.
pub(crate) fn remove(config: &Config) -> String {
    let mut cookie = cookie::Cookie::build((config.cookie_name.as_str(), ""))
        .path(config.cookie_path.as_str())
        .http_only(config.http_only)
        .secure(config.secure)
        .same_site(config.same_site.into())
        .max_age(time::Duration::ZERO)
        .expires(time::OffsetDateTime::UNIX_EPOCH);
    if let Some(domain) = &config.cookie_domain {
        cookie = cookie.domain(domain.as_str());
    }
    cookie.build().to_string()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn finds_values_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; s=first"));
        headers.append(COOKIE, HeaderValue::from_static("s=\"second\";b=2"));
        headers.append(COOKIE, HeaderValue::from_bytes(b"s=\xff").expect("bytes"));
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"name=J\xc3\xb6rg; s=third").expect("bytes"),
        );
        let found: Vec<_> = values(&headers, "s").collect();
        assert_eq!(found, ["first", "second", "", "third"]);
        assert_eq!(values(&headers, "missing").count(), 0);
    }

    #[test]
    fn tolerates_junk() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static(";;; = ;s; =x; s==; s=a=b"));
        let found: Vec<_> = values(&headers, "s").collect();
        assert_eq!(found, ["=", "a=b"]);
    }
}
