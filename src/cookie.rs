//! Reading the session cookie from a request and writing `Set-Cookie`.

use http::HeaderMap;
use http::header::COOKIE;

use crate::middleware::{Config, SameSite};

/// Checks a cookie name: an RFC 6265 `token` (visible ASCII without
/// separators), as browsers accept it. The error says what was expected.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if valid {
        Ok(())
    } else {
        Err("a cookie name of visible ASCII characters without spaces or ()<>@,;:\\\"/[]?={}")
    }
}

/// Checks a cookie `Path`: starts with `/`, visible ASCII without `;`.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    let valid = path.starts_with('/')
        && path.len() <= 1024
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    if valid {
        Ok(())
    } else {
        Err("a path starting with '/', of visible ASCII characters without ';' or spaces")
    }
}

/// Checks a cookie `Domain`: letters, digits, `.`, `-` and `_` (an
/// internationalized name in its `xn--` form). Empty means none.
pub(crate) fn check_domain(domain: &str) -> Result<(), &'static str> {
    let valid = domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
    if valid {
        Ok(())
    } else {
        Err("a domain name of letters, digits, '.', '-' and '_'")
    }
}

/// A cookie configuration that browsers would refuse to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeProblem {
    HostNotSecure,
    HostWithDomain,
    HostPathNotRoot,
    SecurePrefixNotSecure,
    PartitionedNotSecure,
}

impl AttributeProblem {
    /// What is wrong, in terms of cookie attributes.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::HostNotSecure => "a `__Host-` cookie must be Secure",
            Self::HostWithDomain => "a `__Host-` cookie must not have a Domain",
            Self::HostPathNotRoot => "a `__Host-` cookie must have Path=/",
            Self::SecurePrefixNotSecure => "a `__Secure-` cookie must be Secure",
            Self::PartitionedNotSecure => "a Partitioned cookie must be Secure",
        }
    }

    /// What would be accepted, in terms of `SESSION_*` variables.
    pub(crate) fn expected_in_env(self) -> &'static str {
        match self {
            Self::HostNotSecure => "a `__Host-` cookie name only with SESSION_SECURE_COOKIE=true",
            Self::HostWithDomain => "a `__Host-` cookie name only without SESSION_DOMAIN",
            Self::HostPathNotRoot => "a `__Host-` cookie name only with SESSION_PATH=/",
            Self::SecurePrefixNotSecure => {
                "a `__Secure-` cookie name only with SESSION_SECURE_COOKIE=true"
            }
            Self::PartitionedNotSecure => {
                "SESSION_PARTITIONED_COOKIE=true only with SESSION_SECURE_COOKIE=true"
            }
        }
    }
}

/// The cookie prefixes (RFC 6265bis §4.1.3) and CHIPS: what a browser
/// requires of a cookie before it stores it at all. A configuration that
/// breaks these would set a cookie the browser silently drops.
pub(crate) fn check_attributes(
    name: &str,
    secure: bool,
    domain: Option<&str>,
    path: &str,
    partitioned: bool,
) -> Result<(), AttributeProblem> {
    let has_domain = domain.is_some_and(|d| !d.trim_start_matches('.').is_empty());
    if has_prefix(name, "__Host-") {
        if !secure {
            return Err(AttributeProblem::HostNotSecure);
        }
        if has_domain {
            return Err(AttributeProblem::HostWithDomain);
        }
        if path != "/" {
            return Err(AttributeProblem::HostPathNotRoot);
        }
    }
    if has_prefix(name, "__Secure-") && !secure {
        return Err(AttributeProblem::SecurePrefixNotSecure);
    }
    if partitioned && !secure {
        return Err(AttributeProblem::PartitionedNotSecure);
    }
    Ok(())
}

/// Browsers match the prefixes case-insensitively.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// The raw values of every cookie named `name` in the request, in order,
/// across all `Cookie` headers, with surrounding double quotes removed.
/// Matching is done on bytes, so a header that also carries another cookie
/// with non-ASCII bytes still yields the session cookie; a value is not
/// checked for UTF-8 here (an id parses from ASCII alone, see [`text`]).
pub(crate) fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
            (key == name.as_bytes()).then(|| unquote(value))
        })
}

/// `value` without the double quotes around it (all of them, as
/// `str::trim_matches('"')` would remove).
fn unquote(mut value: &[u8]) -> &[u8] {
    while let [b'"', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b'"'] = value {
        value = rest;
    }
    value
}

/// A cookie value as text: a value that is not UTF-8 is empty (sent, but
/// malformed).
pub(crate) fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).unwrap_or_default()
}

/// A `Set-Cookie` value carrying `value`, valid for `max_age` seconds (a
/// session cookie when `None`).
///
/// Written by hand rather than through `cookie::Cookie`: this runs on every
/// response that writes or touches a session, and the value (an id or a
/// sealed cookie, both base64url) needs no quoting.
pub(crate) fn set(config: &Config, value: &str, max_age: Option<i64>) -> String {
    let mut out = String::with_capacity(config.cookie_name.len() + value.len() + 128);
    out.push_str(&config.cookie_name);
    out.push('=');
    out.push_str(value);
    attributes(config, &mut out);
    if let Some(seconds) = max_age {
        let seconds = seconds.max(0);
        out.push_str("; Max-Age=");
        push_number(&mut out, seconds.unsigned_abs(), 1);
        out.push_str("; Expires=");
        http_date(keepsake_core::now().saturating_add(seconds), &mut out);
    }
    out
}

/// A `Set-Cookie` value that removes the session cookie.
pub(crate) fn remove(config: &Config) -> String {
    let mut out = String::with_capacity(config.cookie_name.len() + 128);
    out.push_str(&config.cookie_name);
    out.push('=');
    attributes(config, &mut out);
    out.push_str("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    out
}

fn attributes(config: &Config, out: &mut String) {
    if config.http_only {
        out.push_str("; HttpOnly");
    }
    out.push_str(match config.same_site {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
        SameSite::None => "; SameSite=None",
    });
    if config.secure {
        out.push_str("; Secure");
    }
    out.push_str("; Path=");
    out.push_str(&config.cookie_path);
    if let Some(domain) = &config.cookie_domain {
        let domain = domain.trim_start_matches('.');
        if !domain.is_empty() {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
    }
    if config.partitioned {
        out.push_str("; Partitioned");
    }
}

/// Unix seconds as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), clamped
/// to years 1970 to 9999.
fn http_date(unix: i64, out: &mut String) {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 9999-12-31T23:59:59Z
    let unix = unix.clamp(0, 253_402_300_799);
    let at =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = at.to_calendar_date();
    let (hour, minute, second) = at.to_hms();
    out.push_str(DAYS[usize::from(at.weekday().number_days_from_monday())]);
    out.push_str(", ");
    push_number(out, u64::from(day), 2);
    out.push(' ');
    out.push_str(MONTHS[usize::from(u8::from(month) - 1)]);
    out.push(' ');
    push_number(out, u64::from(year.unsigned_abs()), 4);
    out.push(' ');
    push_number(out, u64::from(hour), 2);
    out.push(':');
    push_number(out, u64::from(minute), 2);
    out.push(':');
    push_number(out, u64::from(second), 2);
    out.push_str(" GMT");
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (this is
/// on every response that writes a session, where `write!` costs more than
/// the rest of the cookie).
fn push_number(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 || digits.len() - start < width {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits[start..].iter().map(|d| char::from(*d)));
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
        let found: Vec<_> = values(&headers, "s").map(text).collect();
        assert_eq!(found, ["first", "second", "", "third"]);
        assert_eq!(values(&headers, "missing").count(), 0);
    }

    #[test]
    fn tolerates_junk() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static(";;; = ;s; =x; s==; s=a=b"));
        let found: Vec<_> = values(&headers, "s").map(text).collect();
        assert_eq!(found, ["=", "a=b"]);
    }

    #[test]
    fn numbers() {
        for (n, width, expected) in [
            (0, 1, "0"),
            (5, 2, "05"),
            (42, 2, "42"),
            (2026, 4, "2026"),
            (7, 4, "0007"),
            (1_209_600, 1, "1209600"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = String::from("x");
            push_number(&mut out, n, width);
            assert_eq!(out, format!("x{expected}"));
        }
    }

    #[test]
    fn http_dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (-5, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (i64::MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (unix, expected) in cases {
            let mut out = String::new();
            http_date(unix, &mut out);
            assert_eq!(out, expected, "{unix}");
        }
    }

    #[test]
    fn set_cookie_parses_back_with_every_attribute() {
        let config = Config {
            cookie_domain: Some(".example.com".into()),
            secure: true,
            same_site: SameSite::Strict,
            ..Config::default()
        };
        let before = keepsake_core::now();
        let value = set(&config, "abc_-123", Some(90));
        let parsed = cookie::Cookie::parse(value.as_str()).expect("parses");
        assert_eq!(parsed.name(), config.cookie_name);
        assert_eq!(parsed.value(), "abc_-123");
        assert_eq!(parsed.http_only(), Some(true));
        assert_eq!(parsed.secure(), Some(true));
        assert_eq!(parsed.same_site(), Some(cookie::SameSite::Strict));
        assert_eq!(parsed.path(), Some("/"));
        assert_eq!(parsed.domain(), Some("example.com"));
        assert_eq!(parsed.max_age(), Some(time::Duration::seconds(90)));
        let expires = parsed.expires_datetime().expect("expires").unix_timestamp();
        assert!((before + 90..=keepsake_core::now() + 90).contains(&expires));

        let session_cookie =
            cookie::Cookie::parse(set(&Config::default(), "x", None)).expect("parses");
        assert_eq!(session_cookie.max_age(), None);
        assert_eq!(session_cookie.expires(), None);
        assert_eq!(session_cookie.secure(), Some(true));
        assert_eq!(session_cookie.same_site(), Some(cookie::SameSite::Lax));

        let removal = cookie::Cookie::parse(remove(&config)).expect("parses");
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(time::Duration::ZERO));
        assert_eq!(
            removal.expires_datetime().map(|t| t.unix_timestamp()),
            Some(0)
        );
    }
}
