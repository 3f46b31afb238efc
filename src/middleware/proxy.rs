//! The client behind trusted proxies: which forwarding header to believe and
//! how far. Every function here takes bytes a client can choose: none of them
//! panics, and a value that does not parse is `None` (the caller then uses
//! the socket address, the `Host` header, the request's own scheme).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;

/// The header that the trusted proxies add the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For` (with `X-Forwarded-Host` and `X-Forwarded-Proto`
    /// for the origin the client asked for), as nginx, HAProxy and cloud
    /// load balancers send it. The default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (its `for=`, `host=` and `proto=` parameters).
    Forwarded,
}

/// Trust in the reverse proxies in front of the application: which header
/// they write and how many of them there are. Off by default
/// ([`SessionLayer::with_trusted_proxies`](crate::SessionLayer::with_trusted_proxies)).
///
/// Each proxy appends the address it received the request from to the
/// header, after whatever the client sent. So the client's real address is
/// the entry `hops` places from the **right**, and anything to its left
/// may be forged. With fewer entries than `hops`, or an entry there that is
/// not an IP address (`unknown`, an obfuscated identifier, garbage), the
/// address of the connection is used instead (axum's `ConnectInfo`).
/// Only one header is ever believed: a proxy that writes `Forwarded` does not
/// overwrite an `X-Forwarded-For` the client made up, and the other way round.
///
/// ```
/// use http::HeaderMap;
/// use keepsake::middleware::{ProxyHeader, TrustedProxies};
///
/// let mut headers = HeaderMap::new();
/// // The client claimed 10.0.0.1; the proxy appended what it saw.
/// headers.insert("x-forwarded-for", "10.0.0.1, 203.0.113.7".parse().unwrap());
/// let one_proxy = TrustedProxies::new();
/// assert_eq!(one_proxy.client_ip(&headers), Some([203, 0, 113, 7].into()));
///
/// headers.insert("forwarded", r#"for="[2001:db8::1]:4711";proto=https"#.parse().unwrap());
/// let rfc7239 = TrustedProxies::new().with_header(ProxyHeader::Forwarded);
/// assert_eq!(rfc7239.client_ip(&headers), Some("2001:db8::1".parse().unwrap()));
/// assert_eq!(rfc7239.forwarded_proto(&headers).as_deref(), Some("https"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxies {
    header: ProxyHeader,
    hops: u8,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self {
            header: ProxyHeader::XForwardedFor,
            // One proxy (nginx, a load balancer) is the common deployment.
            hops: 1,
        }
    }
}

impl TrustedProxies {
    /// One proxy writing `X-Forwarded-For`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The header the proxies write. Defaults to
    /// [`ProxyHeader::XForwardedFor`].
    #[must_use]
    pub fn with_header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// How many proxies stand between the client and the application, each
    /// appending to the header. Defaults to 1; 0 counts as 1.
    #[must_use]
    pub fn with_hops(mut self, hops: u8) -> Self {
        self.hops = hops.max(1);
        self
    }

    /// The header the proxies write.
    #[must_use]
    pub fn header(&self) -> ProxyHeader {
        self.header
    }

    /// How many proxies are trusted.
    #[must_use]
    pub fn hops(&self) -> u8 {
        self.hops
    }

    /// The client's address as the outermost trusted proxy saw it, or `None`
    /// when the header has fewer entries than there are trusted hops or the
    /// entry is not an IP address (then use the connection's address).
    #[must_use]
    pub fn client_ip(&self, headers: &HeaderMap) -> Option<IpAddr> {
        match self.header {
            ProxyHeader::XForwardedFor => {
                let entries = list(headers, "x-forwarded-for");
                from_right(&entries, self.hops).and_then(parse_ip)
            }
            ProxyHeader::Forwarded => {
                let element = self.forwarded_element(headers)?;
                parse_node(&param(element, b"for")?)
            }
        }
    }

    /// The host (with its port, if any) the client asked the outermost
    /// trusted proxy for: the `host=` of that proxy's `Forwarded` element,
    /// or the `X-Forwarded-Host` entry `hops` from the right (the leftmost
    /// one when there are fewer: proxies often set this header rather than
    /// append to it). `None` when absent or not a plausible host.
    #[must_use]
    pub fn forwarded_host(&self, headers: &HeaderMap) -> Option<String> {
        let value = match self.header {
            ProxyHeader::XForwardedFor => {
                from_right_or_first(&list(headers, "x-forwarded-host"), self.hops)?.to_vec()
            }
            ProxyHeader::Forwarded => param(self.forwarded_element(headers)?, b"host")?,
        };
        let host = std::str::from_utf8(&value).ok()?;
        is_host(host).then(|| host.to_ascii_lowercase())
    }

    /// The scheme (`http`, `https`) the client used towards the outermost
    /// trusted proxy, lowercased: `proto=` of its `Forwarded` element, or
    /// `X-Forwarded-Proto` read as [`forwarded_host`](Self::forwarded_host)
    /// reads `X-Forwarded-Host`. `None` when absent or not a scheme.
    #[must_use]
    pub fn forwarded_proto(&self, headers: &HeaderMap) -> Option<String> {
        let value = match self.header {
            ProxyHeader::XForwardedFor => {
                from_right_or_first(&list(headers, "x-forwarded-proto"), self.hops)?.to_vec()
            }
            ProxyHeader::Forwarded => param(self.forwarded_element(headers)?, b"proto")?,
        };
        let scheme = std::str::from_utf8(&value).ok()?;
        is_scheme(scheme).then(|| scheme.to_ascii_lowercase())
    }

    /// The `Forwarded` element the outermost trusted proxy appended.
    fn forwarded_element<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        let elements: Vec<&[u8]> = headers
            .get_all(FORWARDED)
            .iter()
            .flat_map(|line| split_quoted(line.as_bytes(), b','))
            .map(<[u8]>::trim_ascii)
            .filter(|element| !element.is_empty())
            .collect();
        from_right(&elements, self.hops)
    }
}

/// The non-empty, trimmed entries of a comma-separated header, every line
/// in order (RFC 9110 lets a recipient join repeated lines with commas).
fn list<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// The entry `hops` places from the right (1 is the last).
fn from_right<'a>(entries: &[&'a [u8]], hops: u8) -> Option<&'a [u8]> {
    let at = entries.len().checked_sub(usize::from(hops.max(1)))?;
    entries.get(at).copied()
}

fn from_right_or_first<'a>(entries: &[&'a [u8]], hops: u8) -> Option<&'a [u8]> {
    from_right(entries, hops).or_else(|| entries.first().copied())
}

/// An `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a
/// port (`203.0.113.7:41234`, `[2001:db8::1]:443`) or IPv6 in brackets.
fn parse_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// An RFC 7239 node (`for=` value, unquoted): `IPv4[:port]` or
/// `"[IPv6]"[:port]`. `unknown` and obfuscated identifiers (`_hidden`) are
/// not addresses.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let ip = inner.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?),
        };
        (IpAddr::V6(ip), port)
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        (IpAddr::V4(name.parse().ok()?), port)
    };
    match port {
        None => Some(name),
        Some(port) if is_node_port(port) => Some(name),
        Some(_) => None,
    }
}

/// `node-port = port / obfport` (RFC 7239 §6): 1 to 5 digits, or `_`
/// followed by letters, digits, `.`, `_` and `-`.
fn is_node_port(port: &str) -> bool {
    let digits = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    digits || obfuscated
}

/// The value of parameter `name` (case-insensitive) of one `Forwarded`
/// element, unquoted. A parameter given twice makes the element invalid
/// (RFC 7239 §4), so `None`.
fn param(element: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut found = None;
    for pair in split_quoted(element, b';') {
        let pair = pair.trim_ascii();
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (
            pair.get(..eq)?.trim_ascii(),
            pair.get(eq + 1..)?.trim_ascii(),
        );
        if key.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return None;
            }
            found = Some(unquote(value)?);
        }
    }
    found
}

/// A token as it is, or a quoted string without its quotes and escapes.
/// An unterminated quoted string is `None`.
fn unquote(value: &[u8]) -> Option<Vec<u8>> {
    let Some(inner) = value.strip_prefix(b"\"") else {
        return (!value.contains(&b'"')).then(|| value.to_vec());
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => return bytes.as_slice().is_empty().then_some(out),
            other => out.push(other),
        }
    }
    None
}

/// Splits on `separator` outside double-quoted strings (a backslash escapes
/// the next byte inside them).
fn split_quoted(input: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in text.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == separator && !quoted {
                rest = text.get(i + 1..);
                return text.get(..i);
            }
        }
        rest = None;
        Some(text)
    })
}

/// A plausible `host[:port]`: letters, digits, `.`, `-`, `_`, an IPv6
/// literal in brackets, an optional port; at most 255 bytes.
pub(crate) fn is_host(host: &str) -> bool {
    if host.len() > 255 {
        return false;
    }
    let (name_ok, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            after => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (inner.parse::<Ipv6Addr>().is_ok(), port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        (valid, port)
    };
    name_ok && port.is_none_or(is_port)
}

fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
}

/// A URI scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && scheme.len() <= 32
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("a name");
            map.append(name, HeaderValue::from_str(value).expect("a value"));
        }
        map
    }

    fn xff(hops: u8, lines: &[&str]) -> Option<IpAddr> {
        let lines: Vec<_> = lines.iter().map(|l| ("x-forwarded-for", *l)).collect();
        TrustedProxies::new()
            .with_hops(hops)
            .client_ip(&headers(&lines))
    }

    fn fwd(hops: u8, lines: &[&str]) -> Option<IpAddr> {
        let lines: Vec<_> = lines.iter().map(|l| ("forwarded", *l)).collect();
        TrustedProxies::new()
            .with_header(ProxyHeader::Forwarded)
            .with_hops(hops)
            .client_ip(&headers(&lines))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn defaults() {
        let trust = TrustedProxies::default();
        assert_eq!(trust.header(), ProxyHeader::XForwardedFor);
        assert_eq!(trust.hops(), 1);
        assert_eq!(trust.with_hops(0).hops(), 1);
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_right() {
        assert_eq!(xff(1, &["203.0.113.7"]), ip("203.0.113.7"));
        // The client forged the first entry; the proxy appended the second.
        assert_eq!(xff(1, &["10.9.9.9, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            xff(2, &["10.9.9.9, 203.0.113.7, 10.0.0.2"]),
            ip("203.0.113.7")
        );
        // Repeated lines are one list, in order.
        assert_eq!(xff(1, &["10.9.9.9", "203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(xff(2, &["203.0.113.7", "10.0.0.2"]), ip("203.0.113.7"));
        // Empty elements are ignored.
        assert_eq!(xff(1, &[" ,203.0.113.7,, "]), ip("203.0.113.7"));
    }

    #[test]
    fn x_forwarded_for_forms_of_an_address() {
        assert_eq!(xff(1, &["2001:db8::1"]), ip("2001:db8::1"));
        assert_eq!(xff(1, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(xff(1, &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(xff(1, &["203.0.113.7:41234"]), ip("203.0.113.7"));
    }

    #[test]
    fn x_forwarded_for_falls_back() {
        // Fewer entries than hops: the connection's address.
        assert_eq!(xff(2, &["203.0.113.7"]), None);
        assert_eq!(xff(1, &[]), None);
        assert_eq!(xff(1, &[" , "]), None);
        // Not an address: never stored as if it were one.
        for junk in [
            "unknown",
            "example.com",
            "203.0.113",
            "1.2.3.4.5",
            "<script>",
            "[::1",
        ] {
            assert_eq!(xff(1, &[junk]), None, "{junk}");
        }
        // Garbage to the left does not matter.
        assert_eq!(xff(1, &["<script>, 203.0.113.7"]), ip("203.0.113.7"));
    }

    #[test]
    fn non_utf8_bytes_are_an_unparsable_entry() {
        let mut map = HeaderMap::new();
        map.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4, \xff\xfe").expect("bytes"),
        );
        assert_eq!(TrustedProxies::new().client_ip(&map), None);
        assert_eq!(
            TrustedProxies::new().with_hops(2).client_ip(&map),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_for() {
        assert_eq!(
            fwd(1, &["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd(1, &[r#"For="[2001:db8:cafe::17]:4711""#]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(fwd(1, &[r#"for="[2001:db8::17]""#]), ip("2001:db8::17"));
        assert_eq!(fwd(1, &[r#"for="192.0.2.43:47011""#]), ip("192.0.2.43"));
        assert_eq!(fwd(1, &["for=192.0.2.43:_port1"]), ip("192.0.2.43"));
        // Read from the right, across lines.
        assert_eq!(fwd(1, &["for=10.9.9.9, for=192.0.2.43"]), ip("192.0.2.43"));
        assert_eq!(
            fwd(2, &["for=10.9.9.9, for=192.0.2.43", "for=10.0.0.2"]),
            ip("192.0.2.43")
        );
        // A quoted comma or semicolon does not split.
        assert_eq!(
            fwd(
                1,
                &[r#"for=10.9.9.9;host="a,b", for=192.0.2.43;host="x;y""#]
            ),
            ip("192.0.2.43")
        );
    }

    #[test]
    fn forwarded_for_that_is_not_an_address() {
        for element in [
            "for=unknown",
            "for=_hidden",
            "for=\"_SEVKISEK\"",
            "proto=https",
            "for=192.0.2.43;for=192.0.2.44",
            "for=\"192.0.2.43",
            "for=2001:db8::1",
            "for=\"[2001:db8::1\"",
            "for=\"[2001:db8::1]:\"",
            "for=192.0.2.43:123456",
            "for=192.0.2.43:_",
            "for=\"[::1]x\"",
        ] {
            assert_eq!(fwd(1, &[element]), None, "{element}");
        }
        assert_eq!(fwd(2, &["for=192.0.2.43"]), None);
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        let map = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let forwarded = TrustedProxies::new().with_header(ProxyHeader::Forwarded);
        assert_eq!(TrustedProxies::new().client_ip(&map), ip("203.0.113.7"));
        assert_eq!(forwarded.client_ip(&map), ip("10.0.0.1"));
        let only_xff = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(forwarded.client_ip(&only_xff), None);
    }

    #[test]
    fn forwarded_host_and_proto() {
        let forwarded = TrustedProxies::new().with_header(ProxyHeader::Forwarded);
        let map = headers(&[(
            "forwarded",
            r#"for=10.9.9.9;host=evil.test, for=192.0.2.43;Host="Example.COM:8443";proto=HTTPS"#,
        )]);
        assert_eq!(
            forwarded.forwarded_host(&map).as_deref(),
            Some("example.com:8443")
        );
        assert_eq!(forwarded.forwarded_proto(&map).as_deref(), Some("https"));
        assert_eq!(forwarded.forwarded_host(&HeaderMap::new()), None);

        let xff = TrustedProxies::new();
        let map = headers(&[
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "host=evil.test;proto=http"),
        ]);
        assert_eq!(xff.forwarded_host(&map).as_deref(), Some("example.com"));
        assert_eq!(xff.forwarded_proto(&map).as_deref(), Some("https"));
        // Set rather than appended by the outer of two proxies: the one entry.
        assert_eq!(
            xff.with_hops(2).forwarded_proto(&map).as_deref(),
            Some("https")
        );
        let appended = headers(&[("x-forwarded-proto", "http, https")]);
        assert_eq!(xff.forwarded_proto(&appended).as_deref(), Some("https"));
        assert_eq!(
            xff.with_hops(2).forwarded_proto(&appended).as_deref(),
            Some("http")
        );

        let junk = headers(&[("x-forwarded-host", "a b"), ("x-forwarded-proto", "1ttp")]);
        assert_eq!(xff.forwarded_host(&junk), None);
        assert_eq!(xff.forwarded_proto(&junk), None);
    }

    #[test]
    fn hosts() {
        for good in [
            "example.com",
            "example.com:8080",
            "[::1]",
            "[::1]:80",
            "127.0.0.1:3000",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "example.com:",
            "example.com:123456",
            "[::1",
            "[zz]",
            "[::1]80",
            "a/b",
            "ex:am:ple",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(unquote(b"token"), Some(b"token".to_vec()));
        assert_eq!(unquote(br#""a\"b""#), Some(b"a\"b".to_vec()));
        assert_eq!(unquote(br#""open"#), None);
        assert_eq!(unquote(br#""a"b"#), None);
        assert_eq!(unquote(br#"a"b"#), None);
        let parts: Vec<&[u8]> = split_quoted(br#"a;"b;\";c";d"#, b';').collect();
        assert_eq!(parts, [&b"a"[..], br#""b;\";c""#, b"d"]);
    }

    /// The client controls only what is left of the trusted proxies'
    /// entries: whatever it prepends, the answer is the same.
    #[test]
    fn what_the_client_prepends_never_matters() {
        let prefixes = [
            "",
            "1.1.1.1",
            "unknown",
            "\"",
            "for=\"[",
            "a=\"b,c\"",
            ",,,",
            "for=1.1.1.1;for",
        ];
        for hops in 1..=3u8 {
            for header in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
                let trust = TrustedProxies::new().with_header(header).with_hops(hops);
                let (name, proxies) = match header {
                    ProxyHeader::XForwardedFor => {
                        ("x-forwarded-for", "192.0.2.1, 192.0.2.2, 192.0.2.3")
                    }
                    ProxyHeader::Forwarded => {
                        ("forwarded", "for=192.0.2.1, for=192.0.2.2, for=192.0.2.3")
                    }
                };
                let expected = trust.client_ip(&headers(&[(name, proxies)]));
                assert!(expected.is_some());
                for prefix in prefixes {
                    let map = headers(&[(name, prefix), (name, proxies)]);
                    assert_eq!(
                        trust.client_ip(&map),
                        expected,
                        "{header:?} {hops} {prefix:?}"
                    );
                }
            }
        }
    }
}
