//! Finding the `_token` field in a buffered form body, urlencoded or
//! multipart. Every function here takes bytes from the client: none of them
//! panics, indexes out of bounds or allocates more than the body's size.

/// The kinds of body that can carry the token as a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormKind {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data`.
    Multipart,
}

/// The form kind named by a `Content-Type` value, if any.
pub(crate) fn form_kind(content_type: &[u8]) -> Option<FormKind> {
    let media = content_type.split(|&b| b == b';').next()?;
    let media = trim(media);
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Some(FormKind::UrlEncoded)
    } else if media.eq_ignore_ascii_case(b"multipart/form-data") {
        Some(FormKind::Multipart)
    } else {
        None
    }
}

/// The first value of field `name` in a body of the given kind.
pub(crate) fn field(
    kind: FormKind,
    content_type: &[u8],
    body: &[u8],
    name: &str,
) -> Option<Vec<u8>> {
    match kind {
        FormKind::UrlEncoded => urlencoded_field(body, name.as_bytes()),
        FormKind::Multipart => {
            let boundary = boundary(content_type)?;
            multipart_field(body, &boundary, name.as_bytes()).map(<[u8]>::to_vec)
        }
    }
}

/// Looks for field `name` in the complete pairs (those followed by `&`) of
/// a urlencoded body received so far, from byte `from` on; `from` moves
/// past the pairs checked. The first pair named `name` gives its value, as
/// [`field`] would for the whole body: no later byte can change it.
pub(crate) fn urlencoded_prefix_field(
    received: &[u8],
    from: &mut usize,
    name: &str,
) -> Option<Vec<u8>> {
    let rest = received.get(*from..)?;
    let complete = rest.iter().rposition(|&b| b == b'&')?;
    let found = urlencoded_field(rest.get(..complete)?, name.as_bytes());
    *from += complete + 1;
    found
}

/// What the first part of a multipart body, as far as it has arrived, says
/// about field `name`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstPart {
    /// The first part is not complete yet.
    Incomplete,
    /// The first part is the field, with this value: the same value
    /// [`field`] finds in the whole body, whatever follows.
    Field(Vec<u8>),
    /// The first part is something else (or the body is malformed): only the
    /// whole body can tell.
    Other,
}

/// The first part of a multipart body received so far.
pub(crate) fn multipart_first_part(content_type: &[u8], received: &[u8], name: &str) -> FirstPart {
    let Some(boundary) = boundary(content_type) else {
        return FirstPart::Other;
    };
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(&boundary);
    let opening = delimiter.get(2..).unwrap_or_default();
    let after_delimiter = match received.strip_prefix(opening) {
        Some(rest) => rest,
        None => match find(received, &delimiter) {
            Some(at) => received.get(at + delimiter.len()..).unwrap_or_default(),
            None => return FirstPart::Incomplete,
        },
    };
    if after_delimiter.len() < 2 {
        return FirstPart::Incomplete;
    }
    if after_delimiter.starts_with(b"--") {
        return FirstPart::Other;
    }
    let padding = after_delimiter
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(after_delimiter.len());
    let rest = after_delimiter.get(padding..).unwrap_or_default();
    if rest.len() < 2 && b"\r\n".starts_with(rest) {
        return FirstPart::Incomplete;
    }
    let Some(rest) = rest.strip_prefix(b"\r\n") else {
        return FirstPart::Other;
    };
    let (headers, content) = match rest.strip_prefix(b"\r\n") {
        Some(content) => (&[][..], content),
        None => match find(rest, b"\r\n\r\n") {
            Some(end) => (
                rest.get(..end).unwrap_or_default(),
                rest.get(end + 4..).unwrap_or_default(),
            ),
            None => return FirstPart::Incomplete,
        },
    };
    if !is_field_named(headers, name.as_bytes()) {
        return FirstPart::Other;
    }
    match find(content, &delimiter) {
        Some(end) => FirstPart::Field(content.get(..end).unwrap_or_default().to_vec()),
        None => FirstPart::Incomplete,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// application/x-www-form-urlencoded

fn urlencoded_field(body: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (pair.get(..i)?, pair.get(i + 1..)?),
            None => (pair, &[][..]),
        };
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Decodes `+` and `%XX`; a malformed escape is kept as it is (as browsers
/// and `form_urlencoded` do).
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input
                    .get(i + 1)
                    .and_then(|&h| hex_value(h))
                    .zip(input.get(i + 2).and_then(|&l| hex_value(l)));
                if let Some((high, low)) = hex {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        i += 1;
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// multipart/form-data (RFC 7578 over RFC 2046)

/// The `boundary` parameter of a multipart `Content-Type`: 1 to 70
/// characters per RFC 2046 (we allow up to 200), quoted or not.
fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let mut params = content_type.splitn(2, |&b| b == b';');
    params.next()?;
    let value = parameters(params.next()?)
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(b"boundary"))?
        .1;
    (!value.is_empty() && value.len() <= 200).then_some(value)
}

/// The value of the first part named `name` that is not a file.
fn multipart_field<'a>(body: &'a [u8], boundary: &[u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary);

    // The first delimiter may open the body (no CRLF before it) or follow
    // a preamble.
    let mut rest = match body.strip_prefix(delimiter.get(2..)?) {
        Some(rest) => rest,
        None => body.get(find(body, &delimiter)? + delimiter.len()..)?,
    };
    loop {
        // After a delimiter: `--` closes the body; otherwise optional
        // transport padding, then CRLF, then the part's headers.
        if rest.starts_with(b"--") {
            return None;
        }
        let padding = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(rest.len());
        rest = rest.get(padding..)?.strip_prefix(b"\r\n")?;

        let (headers, content) = match rest.strip_prefix(b"\r\n") {
            Some(content) => (&[][..], content),
            None => {
                let end = find(rest, b"\r\n\r\n")?;
                (rest.get(..end)?, rest.get(end + 4..)?)
            }
        };
        let end = find(content, &delimiter)?;
        if is_field_named(headers, name) {
            return content.get(..end);
        }
        rest = content.get(end + delimiter.len()..)?;
    }
}

/// True when the part's `Content-Disposition` is `form-data` with this
/// `name` and no `filename`.
fn is_field_named(headers: &[u8], name: &[u8]) -> bool {
    headers
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (key, value) = (line.get(..colon)?, line.get(colon + 1..)?);
            trim(key)
                .eq_ignore_ascii_case(b"content-disposition")
                .then_some(value)
        })
        .any(|value| {
            let mut split = value.splitn(2, |&b| b == b';');
            let kind = trim(split.next().unwrap_or_default());
            if !kind.eq_ignore_ascii_case(b"form-data") {
                return false;
            }
            let params = parameters(split.next().unwrap_or_default());
            let named = params
                .iter()
                .any(|(key, value)| key.eq_ignore_ascii_case(b"name") && value == name);
            let file = params
                .iter()
                .any(|(key, _)| key.eq_ignore_ascii_case(b"filename"));
            named && !file
        })
}

/// Parses `key=value; key="quoted \"value\""; …` (what follows the first
/// `;` of a header value) into `(key, value)` pairs. Quoted values may hold
/// `;`; a backslash escapes the next character.
fn parameters(input: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        // Key: up to `=` or `;`.
        let key_start = i;
        while input.get(i).is_some_and(|&b| b != b'=' && b != b';') {
            i += 1;
        }
        let key = trim(input.get(key_start..i).unwrap_or_default()).to_vec();
        let mut value = Vec::new();
        if input.get(i) == Some(&b'=') {
            i += 1;
            while input.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                i += 1;
            }
            if input.get(i) == Some(&b'"') {
                i += 1;
                while let Some(&byte) = input.get(i) {
                    i += 1;
                    match byte {
                        b'"' => break,
                        b'\\' => {
                            if let Some(&escaped) = input.get(i) {
                                value.push(escaped);
                                i += 1;
                            }
                        }
                        other => value.push(other),
                    }
                }
                // Skip anything between the closing quote and the next `;`.
                while input.get(i).is_some_and(|&b| b != b';') {
                    i += 1;
                }
            } else {
                let start = i;
                while input.get(i).is_some_and(|&b| b != b';') {
                    i += 1;
                }
                value = trim(input.get(start..i).unwrap_or_default()).to_vec();
            }
        }
        if !key.is_empty() {
            out.push((key, value));
        }
        i += 1; // the `;`
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &[u8] = b"multipart/form-data; boundary=XyZ";

    fn multipart(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, content) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            body.extend_from_slice(headers.as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(content.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn kinds() {
        assert_eq!(
            form_kind(b"application/x-www-form-urlencoded; charset=UTF-8"),
            Some(FormKind::UrlEncoded)
        );
        assert_eq!(
            form_kind(b" Multipart/Form-Data ; boundary=a"),
            Some(FormKind::Multipart)
        );
        assert_eq!(form_kind(b"application/json"), None);
        assert_eq!(form_kind(b""), None);
    }

    #[test]
    fn urlencoded() {
        let get = |body: &[u8]| urlencoded_field(body, b"_token");
        assert_eq!(get(b"a=1&_token=abc&b=2"), Some(b"abc".to_vec()));
        assert_eq!(get(b"%5Ftoken=a%2Bb+c"), Some(b"a+b c".to_vec()));
        assert_eq!(get(b"_token"), Some(Vec::new()));
        assert_eq!(get(b"_token=%zz%"), Some(b"%zz%".to_vec()));
        assert_eq!(get(b"_token=1&_token=2"), Some(b"1".to_vec()));
        assert_eq!(get(b"token=abc&x_token=1"), None);
        assert_eq!(get(b""), None);
    }

    #[test]
    fn boundaries() {
        assert_eq!(boundary(CT), Some(b"XyZ".to_vec()));
        assert_eq!(
            boundary(b"multipart/form-data; charset=utf-8; BOUNDARY=\"a;b c\""),
            Some(b"a;b c".to_vec())
        );
        assert_eq!(boundary(b"multipart/form-data"), None);
        assert_eq!(boundary(b"multipart/form-data; boundary="), None);
        assert_eq!(boundary(b"multipart/form-data; boundary=\"\""), None);
    }

    #[test]
    fn multipart_fields() {
        let body = multipart(&[
            (
                "Content-Disposition: form-data; name=\"file\"; filename=\"_token\"",
                "not it",
            ),
            (
                "Content-Disposition: form-data; name=\"title\"",
                "hello\r\nworld",
            ),
            (
                "content-type: text/plain\r\ncontent-disposition: form-data; name=_token",
                "tok",
            ),
        ]);
        assert_eq!(
            field(FormKind::Multipart, CT, &body, "_token"),
            Some(b"tok".to_vec())
        );
        assert_eq!(
            field(FormKind::Multipart, CT, &body, "title"),
            Some(b"hello\r\nworld".to_vec())
        );
        assert_eq!(field(FormKind::Multipart, CT, &body, "file"), None);
        assert_eq!(field(FormKind::Multipart, CT, &body, "absent"), None);
    }

    #[test]
    fn multipart_with_preamble_padding_and_empty_headers() {
        let body = b"preamble\r\n--XyZ  \r\n\r\nheaderless\r\n--XyZ\r\nContent-Disposition: form-data; name=\"_token\"\r\n\r\n\r\n--XyZ--";
        assert_eq!(multipart_field(body, b"XyZ", b"_token"), Some(&b""[..]));
    }

    #[test]
    fn multipart_rejects_what_is_not_closed() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"_token\"\r\n\r\nabc";
        assert_eq!(multipart_field(body, b"XyZ", b"_token"), None);
        assert_eq!(multipart_field(b"--XyZ--", b"XyZ", b"_token"), None);
        assert_eq!(multipart_field(b"", b"XyZ", b"_token"), None);
        assert_eq!(multipart_field(b"--XyZ", b"XyZ", b"_token"), None);
    }

    #[test]
    fn quoted_parameters() {
        let params = parameters(b" name=\"a\\\"b;c\" ; filename=x.txt;=novalue; flag");
        assert_eq!(
            params,
            vec![
                (b"name".to_vec(), b"a\"b;c".to_vec()),
                (b"filename".to_vec(), b"x.txt".to_vec()),
                (b"flag".to_vec(), Vec::new()),
            ]
        );
        assert_eq!(
            parameters(b"name=\"unterminated\\"),
            vec![(b"name".to_vec(), b"unterminated".to_vec())]
        );
    }

    #[test]
    fn urlencoded_prefixes() {
        let mut from = 0;
        assert_eq!(
            urlencoded_prefix_field(b"a=1&_tok", &mut from, "_token"),
            None
        );
        assert_eq!(from, 4);
        // An unterminated pair may still grow.
        assert_eq!(
            urlencoded_prefix_field(b"a=1&_token=ab", &mut from, "_token"),
            None
        );
        assert_eq!(from, 4);
        assert_eq!(
            urlencoded_prefix_field(b"a=1&_token=abc&big=", &mut from, "_token"),
            Some(b"abc".to_vec())
        );
        let mut from = 0;
        assert_eq!(
            urlencoded_prefix_field(b"%5Ftoken=x&_token=y&", &mut from, "_token"),
            Some(b"x".to_vec())
        );
        let mut from = 0;
        assert_eq!(urlencoded_prefix_field(b"", &mut from, "_token"), None);
        assert_eq!(urlencoded_prefix_field(b"&&&", &mut from, "_token"), None);
        assert_eq!(from, 3);
    }

    #[test]
    fn multipart_first_parts() {
        let body = multipart(&[
            ("Content-Disposition: form-data; name=\"_token\"", "tok"),
            (
                "Content-Disposition: form-data; name=\"file\"; filename=\"a\"",
                "data",
            ),
        ]);
        // Every prefix is incomplete until the token's closing delimiter.
        let complete = find(&body, b"tok\r\n--XyZ").expect("the token") + 10;
        for end in 0..complete {
            assert_eq!(
                multipart_first_part(CT, &body[..end], "_token"),
                FirstPart::Incomplete,
                "{end}"
            );
        }
        for end in complete..=body.len() {
            assert_eq!(
                multipart_first_part(CT, &body[..end], "_token"),
                FirstPart::Field(b"tok".to_vec())
            );
        }
        let later = multipart(&[
            ("Content-Disposition: form-data; name=\"title\"", "x"),
            ("Content-Disposition: form-data; name=\"_token\"", "tok"),
        ]);
        assert_eq!(multipart_first_part(CT, &later, "_token"), FirstPart::Other);
        assert_eq!(
            multipart_first_part(
                CT,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n",
                "_token"
            ),
            FirstPart::Other
        );
        assert_eq!(
            multipart_first_part(CT, b"--XyZ--", "_token"),
            FirstPart::Other
        );
        assert_eq!(
            multipart_first_part(CT, b"--XyZ-x", "_token"),
            FirstPart::Other
        );
        assert_eq!(
            multipart_first_part(CT, b"--XyZx\r\n", "_token"),
            FirstPart::Other
        );
        assert_eq!(
            multipart_first_part(b"multipart/form-data", &body, "_token"),
            FirstPart::Other
        );
        let preamble = [&b"preamble\r\n"[..], &body].concat();
        assert_eq!(
            multipart_first_part(CT, &preamble, "_token"),
            FirstPart::Field(b"tok".to_vec())
        );
    }

    /// Random and mutated bodies never panic (a cheap, deterministic fuzz).
    #[test]
    fn garbage_never_panics() {
        let seed = multipart(&[
            ("Content-Disposition: form-data; name=\"_token\"", "abc"),
            ("Content-Disposition: form-data; name=\"x\"", "y"),
        ]);
        let alphabet = b"-XyZ\r\n\"\\;=: _tokenform-data%+&";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut body = if round % 2 == 0 {
                seed.clone()
            } else {
                Vec::new()
            };
            for _ in 0..(next() % 12) {
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 => body.insert(at, byte),
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    _ => body.truncate(at),
                }
            }
            let ct = if round % 3 == 0 {
                body.clone()
            } else {
                CT.to_vec()
            };
            let _ = field(FormKind::Multipart, &ct, &body, "_token");
            let _ = field(FormKind::UrlEncoded, &ct, &body, "_token");
            let _ = form_kind(&body);
            // What a prefix decides, the whole body agrees with.
            let whole = field(FormKind::Multipart, &ct, &body, "_token");
            for end in [body.len() / 3, body.len() / 2, body.len()] {
                if let FirstPart::Field(value) = multipart_first_part(&ct, &body[..end], "_token") {
                    assert_eq!(whole.as_deref(), Some(&value[..]));
                }
                let mut from = 0;
                if let Some(value) = urlencoded_prefix_field(&body[..end], &mut from, "_token") {
                    assert_eq!(
                        field(FormKind::UrlEncoded, &ct, &body, "_token"),
                        Some(value)
                    );
                }
            }
        }
    }
}
