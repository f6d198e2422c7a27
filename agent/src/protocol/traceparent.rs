//! W3C Trace Context `traceparent` / `tracestate` parsing, exactly per the specification
//! (https://www.w3.org/TR/trace-context/ and its test suite).

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// 8-byte parent span id (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags; only the bits defined by the spec are kept (sampled, random).
    pub flags: u8,
}

/// Sampled flag.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Random trace-id flag (Level 2).
pub const FLAG_RANDOM: u8 = 0x02;

/// Why a `traceparent` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Wrong length or separators.
    Format,
    /// Not lowercase hex.
    Hex,
    /// Version `ff`.
    Version,
    /// All-zero trace id.
    ZeroTraceId,
    /// All-zero parent id.
    ZeroParentId,
    /// Version 00 with data after the flags.
    TrailingData,
    /// More than one `traceparent` header.
    Duplicate,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex<const N: usize>(s: &[u8]) -> Result<[u8; N], Invalid> {
    if s.len() != N * 2 {
        return Err(Invalid::Format);
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(Invalid::Hex)?;
        let lo = hex_val(pair[1]).ok_or(Invalid::Hex)?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|c| *c != b' ' && *c != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|c| *c != b' ' && *c != b'\t').map_or(start, |e| e + 1);
    &s[start..end]
}

/// Parses one `traceparent` header value.
pub fn parse(value: &[u8]) -> Result<TraceParent, Invalid> {
    let v = trim_ows(value);
    if v.len() < 55 {
        return Err(Invalid::Format);
    }
    let version: [u8; 1] = hex(&v[0..2])?;
    if version[0] == 0xff {
        return Err(Invalid::Version);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(Invalid::Format);
    }
    if version[0] == 0 && v.len() != 55 {
        return Err(Invalid::TrailingData);
    }
    // Higher versions: the version-00 fields, then end of string or '-'.
    if v.len() > 55 && v[55] != b'-' {
        return Err(Invalid::Format);
    }
    let trace_id: [u8; 16] = hex(&v[3..35])?;
    let parent_id: [u8; 8] = hex(&v[36..52])?;
    let flags: [u8; 1] = hex(&v[53..55])?;
    if trace_id == [0; 16] {
        return Err(Invalid::ZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(Invalid::ZeroParentId);
    }
    Ok(TraceParent { trace_id, parent_id, flags: flags[0] & (FLAG_SAMPLED | FLAG_RANDOM) })
}

/// Parses every `traceparent` value a request carried: exactly one valid value is required.
pub fn parse_all(values: &[&[u8]]) -> Result<Option<TraceParent>, Invalid> {
    match values {
        [] => Ok(None),
        [one] => parse(one).map(Some),
        _ => Err(Invalid::Duplicate),
    }
}

/// Validates a `tracestate` value; returns it trimmed when it is well formed (at most 32
/// members, keys and values per the spec), `None` otherwise. An invalid `tracestate` never
/// affects `traceparent`.
pub fn tracestate(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?;
    let mut members = 0;
    let mut keys: Vec<&str> = Vec::new();
    for member in s.split(',') {
        let m = member.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue;
        }
        members += 1;
        if members > 32 {
            return None;
        }
        let (k, v) = m.split_once('=')?;
        let key_ok = !k.is_empty()
            && k.len() <= 256
            && k.bytes().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && k.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(&c));
        let val_ok = !v.is_empty()
            && v.len() <= 256
            && v.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
            && !v.ends_with(' ');
        if !key_ok || !val_ok || keys.contains(&k) {
            return None;
        }
        keys.push(k);
    }
    Some(s.trim_matches([' ', '\t']).to_string())
}

/// Formats a version-00 `traceparent`.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    for b in trace_id {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('-');
    for b in span_id {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(&format!("-{flags:02x}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_round_trips() {
        let tp = parse(TP.as_bytes()).unwrap();
        assert_eq!(tp.flags, FLAG_SAMPLED);
        assert_eq!(format(&tp.trace_id, &tp.parent_id, tp.flags), TP);
        // Optional whitespace around the value is accepted (test suite: OWS).
        assert_eq!(parse(format!(" \t{TP} ").as_bytes()), Ok(tp));
    }

    // Cases ported from the W3C trace-context test suite (test/test.py).
    #[test]
    fn w3c_test_suite_cases() {
        let bad: &[(&str, Invalid)] = &[
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", Invalid::ZeroTraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", Invalid::ZeroParentId),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Invalid::Version),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", Invalid::Hex),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", Invalid::Hex),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.", Invalid::TrailingData),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what", Invalid::TrailingData),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", Invalid::Format),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", Invalid::Format),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", Invalid::Format),
            ("0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Invalid::Hex),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", Invalid::Format),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-g1", Invalid::Hex),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what", Invalid::Format),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", Invalid::Format),
            ("", Invalid::Format),
        ];
        for (v, why) in bad {
            assert_eq!(parse(v.as_bytes()), Err(*why), "{v}");
        }
        // A future version is parsed at the version-00 positions; unknown flags dropped.
        let future =
            parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-will-be-like");
        assert_eq!(future.map(|t| t.flags), Ok(FLAG_SAMPLED));
        // Two traceparent headers: invalid, restart the trace.
        assert_eq!(parse_all(&[TP.as_bytes(), TP.as_bytes()]), Err(Invalid::Duplicate));
        assert_eq!(parse_all(&[]), Ok(None));
    }

    #[test]
    fn tracestate_rules() {
        assert_eq!(
            tracestate(b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7").as_deref(),
            Some("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")
        );
        assert_eq!(tracestate(b"").as_deref(), Some(""));
        assert_eq!(tracestate(b"a=1,a=2"), None, "duplicate keys");
        assert_eq!(tracestate(b"A=1"), None, "uppercase key");
        assert_eq!(tracestate(b"a=b=c"), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(tracestate(many.join(",").as_bytes()), None, "more than 32 members");
        assert!(tracestate(b"tenant@system=v, x=y").is_some());
    }
}
