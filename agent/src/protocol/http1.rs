//! HTTP/1.0 and 1.1 message heads (httparse) and body framing (RFC 9112 §6).
//!
//! Only what spans need is kept: method, target, version, status, the few headers that matter
//! (Host, User-Agent, trace context, framing). Header values other than those are never copied.
//! Nothing is allocated in proportion to a declared length: a body is skipped by counting.

/// At most this many headers per message; more is an invalid message (counted by the caller).
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// Method token as sent (a constant for the known methods: no allocation per request).
    pub method: std::borrow::Cow<'static, str>,
    /// Request target (origin-form path and query, or absolute-form).
    pub target: String,
    /// Minor version: 0 or 1.
    pub minor: u8,
    /// `Host` header.
    pub host: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Every `traceparent` value (several = invalid, the caller decides).
    pub traceparent: Vec<Vec<u8>>,
    /// `tracestate` values, joined with commas.
    pub tracestate: Option<Vec<u8>>,
    /// Body framing.
    pub framing: FramingSpec,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// Upgrade requested (`Upgrade` header) or CONNECT.
    pub upgrade: bool,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Minor version: 0 or 1.
    pub minor: u8,
    /// Body framing as declared (the caller applies HEAD/1xx/204/304 rules via [`response_framing`]).
    pub framing: FramingSpec,
    /// `Connection: close`.
    pub close: bool,
}

impl<T> Parsed<T> {
    /// Maps a complete head, keeping its length.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Parsed<U> {
        match self {
            Parsed::Complete(head, n) => Parsed::Complete(f(head), n),
            Parsed::Partial => Parsed::Partial,
            Parsed::Invalid(reason) => Parsed::Invalid(reason),
        }
    }
}

/// Framing headers as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FramingSpec {
    /// Content-Length, if present and valid.
    pub content_length: Option<u64>,
    /// Transfer-Encoding ends with chunked.
    pub chunked: bool,
}

/// Result of parsing a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A complete head of this many bytes.
    Complete(T, usize),
    /// More bytes needed.
    Partial,
    /// Not a valid HTTP/1 message head.
    Invalid(&'static str),
}

/// A header value as text, without the optional whitespace around it (RFC 9110 §5.6.3: spaces
/// and tabs; trimmed as bytes, which is cheaper than trimming Unicode whitespace as chars).
fn header_str(v: &[u8]) -> Option<String> {
    let v = v.trim_ascii();
    let s = if v.is_ascii() {
        // SAFETY: ASCII is UTF-8. Checked a word at a time, where the UTF-8 validator's setup
        // cost more than a Host value's dozen bytes (it was ~120 instructions per request).
        unsafe { std::str::from_utf8_unchecked(v) }
    } else {
        std::str::from_utf8(v).ok()?
    };
    Some(truncated(s, 256))
}

/// `s` cut to at most `max` characters, without building the string a character at a time
/// (that was a visible share of the pipeline, for the target of every request).
fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string(); // no more characters than bytes
    }
    let end = s.char_indices().nth(max).map_or(s.len(), |(i, _)| i);
    s[..end].to_string()
}

/// Whether the header name `name` is `lower` (lowercase letters and '-') in any case. Names
/// are tokens (httparse checks them), so OR-ing 0x20 into a byte turns an uppercase letter
/// into its lowercase and can make '-' only of '-' itself ('\r', the other byte it would map
/// there, is not a token character): eight bytes compare at once instead of one at a time.
#[inline(always)]
fn name_is(name: &str, lower: &str) -> bool {
    let (a, b) = (name.as_bytes(), lower.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    ac.zip(bc).all(|(x, y)| word(x) | 0x2020_2020_2020_2020 == word(y))
        && ar.iter().zip(br).all(|(x, y)| x | 0x20 == *y)
}

/// Whether `value` contains `token` (lowercase), in any case: a Connection header's options,
/// checked without allocating.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.windows(token.len()).any(|w| w.eq_ignore_ascii_case(token))
}

fn framing_headers(headers: &[httparse::Header<'_>]) -> Result<(FramingSpec, bool), &'static str> {
    let mut spec = FramingSpec::default();
    let mut te_seen = false;
    for h in headers {
        if name_is(h.name, "content-length") {
            // Nearly always one number: read straight from its digits (19 cannot overflow).
            let v = h.value;
            if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) {
                let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                if spec.content_length.is_some_and(|c| c != n) {
                    return Err("conflicting_content_length");
                }
                spec.content_length = Some(n);
                continue;
            }
            let s = std::str::from_utf8(h.value).map_err(|_| "bad_content_length")?.trim();
            // A list of identical values is allowed (RFC 9110 §8.6); anything else is invalid.
            let mut value: Option<u64> = None;
            for part in s.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("bad_content_length");
                }
                let n: u64 = part.parse().map_err(|_| "bad_content_length")?;
                if value.is_some_and(|v| v != n) || spec.content_length.is_some_and(|v| v != n) {
                    return Err("conflicting_content_length");
                }
                value = Some(n);
            }
            spec.content_length = value;
        } else if name_is(h.name, "transfer-encoding") {
            te_seen = true;
            let s = std::str::from_utf8(h.value).map_err(|_| "bad_transfer_encoding")?;
            spec.chunked =
                s.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    if te_seen && spec.content_length.is_some() {
        // Request smuggling shape (RFC 9112 §6.3): refuse to guess.
        return Err("content_length_and_transfer_encoding");
    }
    Ok((spec, te_seen))
}

fn map_err(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "too_many_headers",
        httparse::Error::Version => "bad_version",
        httparse::Error::Status => "bad_status",
        httparse::Error::Token => "bad_token",
        httparse::Error::NewLine => "bad_newline",
        httparse::Error::HeaderName => "bad_header_name",
        httparse::Error::HeaderValue => "bad_header_value",
    }
}

/// True when `buf` could be the start of a request (a method token then a space). Cheap
/// first-bytes check used to recognise non-HTTP traffic and to resynchronise.
pub fn looks_like_request(buf: &[u8]) -> bool {
    let n = buf.iter().take(16).position(|&b| b == b' ');
    match n {
        Some(n) if n > 0 => buf[..n].iter().all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_'),
        None => buf.len() < 16 && !buf.is_empty() && buf.iter().all(|b| b.is_ascii_uppercase()),
        _ => false,
    }
}

/// True when `buf` could be the start of a response.
pub fn looks_like_response(buf: &[u8]) -> bool {
    let p = b"HTTP/1.";
    let n = buf.len().min(p.len());
    n > 0 && buf[..n] == p[..n]
}

/// Parses a request head.
pub fn parse_request(buf: &[u8]) -> Parsed<RequestHead> {
    // Uninitialised: initialising 100 headers cost more than parsing a typical head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(map_err(e)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid("incomplete_request_line");
    };
    let (framing, _) = match framing_headers(req.headers) {
        Ok(f) => f,
        Err(e) => return Parsed::Invalid(e),
    };
    let mut head = RequestHead {
        method: match KNOWN_METHODS.iter().find(|m| **m == method) {
            Some(m) => std::borrow::Cow::Borrowed(*m),
            None => std::borrow::Cow::Owned(method.to_string()),
        },
        target: truncated(target, 2048),
        minor,
        framing,
        close: minor == 0,
        upgrade: method == "CONNECT",
        ..RequestHead::default()
    };
    for h in req.headers.iter() {
        let name = h.name;
        if name_is(name, "host") {
            head.host = header_str(h.value);
        } else if name_is(name, "user-agent") {
            head.user_agent = header_str(h.value);
        } else if name_is(name, "traceparent") {
            head.traceparent.push(h.value.to_vec());
        } else if name_is(name, "tracestate") {
            let ts = head.tracestate.get_or_insert_with(Vec::new);
            if !ts.is_empty() {
                ts.push(b',');
            }
            ts.extend_from_slice(h.value);
        } else if name_is(name, "expect") {
            head.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name_is(name, "connection") {
            if has_token(h.value, b"close") {
                head.close = true;
            } else if has_token(h.value, b"keep-alive") {
                head.close = false;
            }
            if has_token(h.value, b"upgrade") {
                head.upgrade = true;
            }
        }
    }
    Parsed::Complete(head, n)
}

/// Parses a response head.
pub fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    // Uninitialised, as for requests.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(map_err(e)),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Parsed::Invalid("incomplete_status_line");
    };
    let (framing, _) = match framing_headers(resp.headers) {
        Ok(f) => f,
        Err(e) => return Parsed::Invalid(e),
    };
    let close = resp.headers.iter().any(|h| name_is(h.name, "connection") && has_token(h.value, b"close"));
    Parsed::Complete(ResponseHead { status, minor, framing, close }, n)
}

/// Request body framing.
pub fn request_framing(head: &RequestHead) -> Framing {
    if head.framing.chunked {
        Framing::Chunked
    } else {
        match head.framing.content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    }
}

/// Response body framing (RFC 9112 §6.3): no body for HEAD, 1xx, 204 and 304.
pub fn response_framing(head: &ResponseHead, request_method: Option<&str>) -> Framing {
    if request_method == Some("HEAD") || head.status < 200 || head.status == 204 || head.status == 304 {
        return Framing::None;
    }
    if head.framing.chunked {
        return Framing::Chunked;
    }
    match head.framing.content_length {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }
}

/// Methods known to the semantic conventions (RFC 9110 + PATCH).
const KNOWN_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// `http.request.method`: the method, or `_OTHER` for unknown methods.
pub fn normalize_method(method: &str) -> &'static str {
    KNOWN_METHODS.iter().find(|m| **m == method).copied().unwrap_or("_OTHER")
}

/// Query parameters whose values are always redacted (OpenTelemetry semantic conventions, plus
/// the usual credential names).
const SENSITIVE_PARAMS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "auth",
    "authorization",
    "client_secret",
    "code",
    "credential",
    "id_token",
    "key",
    "passwd",
    "password",
    "pwd",
    "refresh_token",
    "secret",
    "session",
    "sessionid",
    "session_id",
    "token",
    "jwt",
];

/// Words that make a query parameter sensitive wherever they appear in its name
/// (`card_token`, `userPassword`, `x-api-key`, `session.id`).
const SENSITIVE_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "authorization",
    "signature",
    "sig",
    "credential",
    "credentials",
    "session",
    "sessionid",
    "jwt",
    "apikey",
    "key",
];

/// Whether a query parameter's value is redacted: its name is a known credential parameter, or
/// one of its words (split at `_`, `-`, `.` and lower-to-upper case changes) is a
/// [`SENSITIVE_WORDS`] entry.
fn sensitive_param(name: &str) -> bool {
    if SENSITIVE_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return true;
    }
    let b = name.as_bytes();
    let mut start = 0;
    for i in 0..=b.len() {
        let boundary = i == b.len()
            || matches!(b[i], b'_' | b'-' | b'.')
            || (i > 0 && b[i].is_ascii_uppercase() && b[i - 1].is_ascii_lowercase());
        if !boundary {
            continue;
        }
        // Boundaries are ASCII bytes: char boundaries.
        let word = &name[start..i];
        if !word.is_empty() && SENSITIVE_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            return true;
        }
        start = if i < b.len() && b[i].is_ascii_uppercase() { i } else { i + 1 };
    }
    false
}

/// Splits a target into (path, query) and redacts sensitive query values.
pub fn split_target(target: &str) -> (&str, Option<String>) {
    // '?' is ASCII: its byte index is a char boundary.
    let (path, query) = match target.bytes().position(|c| c == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if sensitive_param(k) => {
                    format!("{k}=REDACTED")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    (path, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_compare_as_eq_ignore_ascii_case_does_for_every_token_byte() {
        // Every name the parser looks for, with each of its bytes replaced by every token
        // character (what httparse lets through in a name), in both cases: the word-at-a-time
        // comparison agrees with the byte-at-a-time one.
        let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        for lower in [
            "host",
            "expect",
            "connection",
            "user-agent",
            "tracestate",
            "traceparent",
            "content-length",
            "transfer-encoding",
        ] {
            assert!(name_is(lower, lower));
            assert!(name_is(&lower.to_ascii_uppercase(), lower));
            assert!(!name_is(&lower[1..], lower));
            assert!(!name_is(&format!("{lower}s"), lower));
            for at in 0..lower.len() {
                for c in (0u8..128).filter(|c| tchar(*c)) {
                    let mut name = lower.as_bytes().to_vec();
                    name[at] = c;
                    let name = String::from_utf8(name).unwrap_or_default();
                    assert_eq!(
                        name_is(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{name:?} vs {lower}"
                    );
                }
            }
        }
    }

    #[test]
    fn request_heads() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: curl/8\r\ntraceparent: t1\r\ntracestate: a=1\r\ntracestate: b=2\r\n\r\nrest";
        let Parsed::Complete(h, n) = parse_request(raw) else { panic!() };
        assert_eq!(n, raw.len() - 4);
        assert_eq!((&*h.method, h.target.as_str(), h.minor), ("GET", "/a?x=1", 1));
        assert_eq!(h.host.as_deref(), Some("svc:8080"));
        assert_eq!(h.traceparent, vec![b"t1".to_vec()]);
        assert_eq!(h.tracestate.as_deref(), Some(&b"a=1,b=2"[..]));
        assert_eq!(request_framing(&h), Framing::None);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial);
    }

    #[test]
    fn framing_rules() {
        let Parsed::Complete(h, _) = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n") else {
            panic!()
        };
        assert_eq!(request_framing(&h), Framing::Length(5));
        let Parsed::Complete(h, _) =
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(request_framing(&h), Framing::Chunked);
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Invalid("content_length_and_transfer_encoding")
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Parsed::Invalid("conflicting_content_length")
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Parsed::Invalid("bad_content_length")
        );
        // A list of the same number is that number; of two, invalid; past u64, invalid.
        let Parsed::Complete(h, _) = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n") else {
            panic!()
        };
        assert_eq!(request_framing(&h), Framing::Length(7));
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7, 8\r\n\r\n"),
            Parsed::Invalid("conflicting_content_length")
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            Parsed::Invalid("bad_content_length")
        );
        // A huge declared length is only a number: nothing is allocated for it.
        let Parsed::Complete(h, _) =
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1000000000000000000\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(request_framing(&h), Framing::Length(1_000_000_000_000_000_000));
        let Parsed::Complete(r, _) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") else {
            panic!()
        };
        assert_eq!(response_framing(&r, Some("HEAD")), Framing::None);
        assert_eq!(response_framing(&r, Some("GET")), Framing::Length(10));
        let Parsed::Complete(r, _) =
            parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(response_framing(&r, Some("GET")), Framing::None);
        let Parsed::Complete(r, _) = parse_response(b"HTTP/1.0 200 OK\r\n\r\n") else { panic!() };
        assert_eq!(response_framing(&r, Some("GET")), Framing::UntilClose);
    }

    #[test]
    fn malformed_heads_are_invalid_not_panics() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(raw.as_bytes()), Parsed::Invalid("too_many_headers"));
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(parse_response(raw.as_bytes()), Parsed::Invalid("too_many_headers"));
        // Up to the limit, a long head parses, and the header after many others still counts.
        let some: String = (0..60).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{some}Content-Length: 3\r\n\r\n");
        let Parsed::Complete(r, _) = parse_response(raw.as_bytes()) else { panic!("60 headers") };
        assert_eq!(response_framing(&r, Some("GET")), Framing::Length(3));
        assert!(
            matches!(parse_request(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), Parsed::Invalid(_)),
            "obs-fold"
        );
        assert!(matches!(parse_request(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n"), Parsed::Invalid(_)));
        assert!(!looks_like_request(b"\x16\x03\x01\x02"));
        assert!(looks_like_request(b"GET /"));
        assert!(looks_like_request(b"GE"));
        assert!(looks_like_response(b"HTTP/1.1 200"));
        assert!(looks_like_response(b"HT"));
    }

    #[test]
    fn methods_and_query_redaction() {
        assert_eq!(normalize_method("GET"), "GET");
        assert_eq!(normalize_method("get"), "_OTHER");
        assert_eq!(normalize_method("PROPFIND"), "_OTHER");
        assert_eq!(
            split_target("/p?a=1&token=abc&SIG=x"),
            ("/p", Some("a=1&token=REDACTED&SIG=REDACTED".to_string()))
        );
        assert_eq!(split_target("/p"), ("/p", None));
        // A credential word anywhere in the name.
        assert_eq!(
            split_target("/p?card_token=1&userPassword=2&x-api-key=3&session.id=4&monkey=5&sort=6&keyboard=7"),
            (
                "/p",
                Some(
                    "card_token=REDACTED&userPassword=REDACTED&x-api-key=REDACTED&session.id=REDACTED&monkey=5&sort=6&keyboard=7"
                        .to_string()
                )
            )
        );
        assert_eq!(split_target("/p?"), ("/p", Some(String::new())));
        assert_eq!(split_target("/é?q=ü?"), ("/é", Some("q=ü?".to_string())));
    }

    #[test]
    fn host_and_user_agent_values_as_text() {
        let head = |h: &[u8]| {
            let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
            buf.extend_from_slice(h);
            buf.extend_from_slice(b"\r\n\r\n");
            match parse_request(&buf) {
                Parsed::Complete(head, _) => head,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(head(b"Host: a.example:81").host.as_deref(), Some("a.example:81"));
        assert_eq!(head(b"Host:\t a.example \t").host.as_deref(), Some("a.example"));
        // Non-ASCII (obs-text) that is UTF-8 is kept; bytes that are not UTF-8 are left out.
        assert_eq!(head("User-Agent: café/1".as_bytes()).user_agent.as_deref(), Some("café/1"));
        assert_eq!(head(b"User-Agent: caf\xe9/1").user_agent, None);
        let long = format!("User-Agent: {}", "é".repeat(300));
        assert_eq!(head(long.as_bytes()).user_agent.map(|u| u.chars().count()), Some(256));
    }
}
