//! PostgreSQL's frontend/backend protocol (version 3), as the client's end of a connection
//! carries it: messages framed by their length, recognised from a connection's first write or,
//! on a connection that was open before tracing began, from any write of queries.
//!
//! Every message is a type byte and a big-endian length that counts itself (the first message
//! of a connection has no type byte). A message's first bytes are kept (a query's text, an
//! error's fields) and the rest is counted, so bytes the capture cap left out are skipped by
//! length; when they hid a message's start, the direction is `Lost` until the session tells it
//! where a message starts again.

/// `StartupMessage` protocol version 3.0.
pub const PROTOCOL_3: u32 = 3 << 16;
/// `SSLRequest`.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest`.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest` (on a connection of its own).
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// The pseudo type of a message without a type byte (startup, SSL and GSS requests).
pub const UNTYPED: u8 = 0;
/// The pseudo type of the server's one-byte answer to an SSL or GSS request (`S`/`G`: the
/// connection is encrypted from here; `N`: it is not).
pub const ENCRYPTION_REPLY: u8 = 1;

/// Most bytes of a message kept (a query's text beyond this is counted, not kept).
pub const KEEP: usize = 16 * 1024;
/// Largest length a message may declare (PostgreSQL's own limit is 1 GB).
const MAX_LEN: u32 = 1 << 30;

/// Types of messages a client sends.
const FRONTEND: [bool; 256] = type_table(b"BCdcfDEHFPpQSX");
/// Types of messages a server sends.
const BACKEND: [bool; 256] = type_table(b"R23CGHWdcDIEVvnNAtSKsZT1");

/// A lookup table of message types: every message's header is checked against one, and a
/// search of the list per message was a visible share of a statement's cost.
const fn type_table(types: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < types.len() {
        t[types[i] as usize] = true;
        i += 1;
    }
    t
}

/// Which end's messages a [`Framer`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Frontend,
    Backend,
}

/// How a client connection's first write showed PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A startup (or SSL/GSS) request: the connection's start was seen.
    Startup,
    /// Queries on a connection that was already open.
    Established,
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Whether a client's write (`payload` captured of `len` bytes) is PostgreSQL: a startup or
/// encryption request that is the whole write, or a chain of frontend messages whose lengths
/// add up to exactly the write, starting with a query (`Q`) or an extended-query message
/// (`P`, `B`). An HTTP request cannot pass: its first bytes read as a length of hundreds of
/// megabytes.
pub fn detect(payload: &[u8], len: u32) -> Option<Opening> {
    let first = be32(payload)?;
    if first == len
        && (8..=10_000).contains(&first)
        && let Some(code) = be32(&payload[4..])
        && (code == PROTOCOL_3 || code == SSL_REQUEST || code == GSSENC_REQUEST)
    {
        return Some(Opening::Startup);
    }
    if !matches!(payload.first(), Some(b'Q' | b'P' | b'B')) {
        return None;
    }
    let (len, captured) = (u64::from(len), payload.len() as u64);
    let mut at: u64 = 0;
    loop {
        if at == len {
            return Some(Opening::Established);
        }
        // Past the write's end; or at a message start just where the capture stopped, where
        // nothing tells whether the chain goes on.
        if at > len || at == captured {
            return None;
        }
        if at > captured {
            // The last message runs on past the capture, consistently so far.
            return Some(Opening::Established);
        }
        let Some(header) = payload.get(at as usize..at as usize + 5) else {
            return FRONTEND[usize::from(payload[at as usize])].then_some(Opening::Established);
        };
        let size = be32(&header[1..])?;
        if !FRONTEND[usize::from(header[0])] || !(4..MAX_LEN).contains(&size) {
            return None;
        }
        at += 1 + u64::from(size);
    }
}

/// A message, or its first bytes.
#[derive(Debug)]
pub struct Message<'a> {
    /// Its type byte ([`UNTYPED`], [`ENCRYPTION_REPLY`] for those without).
    pub kind: u8,
    /// Its content (after the length) as kept.
    pub body: &'a [u8],
    /// Whether `body` is all of it.
    pub whole: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a message's start; `got` header bytes are in `head`.
    Head { got: usize },
    /// Inside a message of type `kind`: `left` content bytes to come.
    Body { kind: u8, left: u64, whole: bool },
    /// A message start was in bytes that were not captured.
    Lost,
}

/// One direction's messages.
#[derive(Debug)]
pub struct Framer {
    end: End,
    state: State,
    head: [u8; 5],
    /// The next message has no type byte (a connection's first, or a startup after an SSL
    /// request was declined).
    untyped: bool,
    /// The next byte is the answer to an encryption request.
    reply: bool,
    /// The kept bytes of a message that spans calls.
    keep: Vec<u8>,
}

impl Framer {
    /// A framer at a message's start; `untyped`: the connection's first message comes next.
    pub fn new(end: End, untyped: bool) -> Framer {
        Framer { end, state: State::Head { got: 0 }, head: [0; 5], untyped, reply: false, keep: Vec::new() }
    }

    /// The next byte is a one-byte answer to an encryption request (backend), or the next
    /// message is untyped again (frontend, after such a request).
    pub fn expect_untyped(&mut self) {
        match self.end {
            End::Frontend => self.untyped = true,
            End::Backend => self.reply = true,
        }
    }

    /// Whether a message start was lost.
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Whether the next byte starts a message (as far as this framer knows).
    pub fn at_start(&self) -> bool {
        self.state == State::Head { got: 0 }
    }

    /// A message starts with the next byte (the session knows it: the other side spoke).
    pub fn resync(&mut self) {
        self.state = State::Head { got: 0 };
        self.keep.clear();
        self.reply = false;
    }

    /// Reads `data` (captured bytes) followed by `gap` bytes that were not captured. Returns
    /// false when bytes that are not this protocol were found (the framer is then `Lost`).
    pub fn feed(&mut self, mut data: &[u8], gap: u64, on: &mut impl FnMut(Message<'_>)) -> bool {
        while !data.is_empty() {
            match self.state {
                State::Lost => return true,
                State::Head { got: 0 } if self.reply => {
                    self.reply = false;
                    on(Message { kind: ENCRYPTION_REPLY, body: &data[..1], whole: true });
                    data = &data[1..];
                }
                State::Head { got } => {
                    let need = if self.untyped { 4 } else { 5 };
                    // A whole message in this call: handed on without a copy.
                    if got == 0
                        && let Some(size) = self.size_at(data)
                        && let Some(msg) = data.get(need..need - 4 + size as usize)
                    {
                        let kind = if self.untyped { UNTYPED } else { data[0] };
                        self.untyped = false;
                        let end = need - 4 + size as usize;
                        let body = &msg[..msg.len().min(KEEP)];
                        on(Message { kind, body, whole: body.len() == msg.len() });
                        data = &data[end..];
                        continue;
                    }
                    let take = (need - got).min(data.len());
                    self.head[got..got + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    if got + take < need {
                        self.state = State::Head { got: got + take };
                        continue;
                    }
                    let Some(size) = self.size_at(&self.head[..need]) else {
                        self.state = State::Lost;
                        return false;
                    };
                    let kind = if self.untyped { UNTYPED } else { self.head[0] };
                    self.untyped = false;
                    self.keep.clear();
                    self.state = State::Body { kind, left: u64::from(size - 4), whole: true };
                    self.finish_if_done(on);
                }
                State::Body { kind, left, whole } => {
                    let take = (left as usize).min(data.len());
                    let room = KEEP.saturating_sub(self.keep.len());
                    self.keep.extend_from_slice(&data[..take.min(room)]);
                    let whole = whole && take <= room;
                    data = &data[take..];
                    self.state = State::Body { kind, left: left - take as u64, whole };
                    self.finish_if_done(on);
                }
            }
        }
        self.skip(gap);
        true
    }

    /// The length of the message whose header starts `b` (its type byte unless untyped), when
    /// valid for this end; None when it is not a message at all.
    fn size_at(&self, b: &[u8]) -> Option<u32> {
        let (kind, len) =
            if self.untyped { (None, be32(b)?) } else { (Some(*b.first()?), be32(b.get(1..)?)?) };
        let types = match self.end {
            End::Frontend => &FRONTEND,
            End::Backend => &BACKEND,
        };
        let valid = kind.is_none_or(|k| types[usize::from(k)]) && (4..MAX_LEN).contains(&len);
        valid.then_some(len)
    }

    fn finish_if_done(&mut self, on: &mut impl FnMut(Message<'_>)) {
        if let State::Body { kind, left: 0, whole } = self.state {
            on(Message { kind, body: &self.keep, whole });
            self.keep.clear();
            self.state = State::Head { got: 0 };
        }
    }

    /// `gap` bytes went by uncaptured.
    fn skip(&mut self, gap: u64) {
        if gap == 0 {
            return;
        }
        self.state = match self.state {
            State::Body { kind, left, .. } if gap < left => {
                State::Body { kind, left: left - gap, whole: false }
            }
            // The rest of a message ended exactly at the gap's end: the next byte starts one,
            // but what the message said was not all seen; it is dropped, not half-reported.
            State::Body { left, .. } if gap == left => {
                self.keep.clear();
                State::Head { got: 0 }
            }
            _ => State::Lost,
        };
    }
}

/// A C string at the start of `b`, and what follows it.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    // A plain loop: these strings are short (names, often empty), where a call into memchr
    // costs more than the search.
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0 {
            return (&b[..i], &b[i + 1..]);
        }
        i += 1;
    }
    (b, &[])
}

/// The `(name, value)` parameters of a startup message's content (after its version).
pub fn startup_params(body: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = body.get(4..).unwrap_or_default();
    while !rest.is_empty() && rest[0] != 0 {
        let (k, r) = cstr(rest);
        let (v, r) = cstr(r);
        out.push((k, v));
        rest = r;
    }
    out
}

/// The SQLSTATE code (field `C`) of an `ErrorResponse`'s content. Its message (`M`) and detail
/// (`D`) are not read: they quote the values a statement failed on.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, r)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (v, r) = cstr(r);
        if field == b'C' {
            return Some(v);
        }
        rest = r;
    }
    None
}

/// Rows a `CommandComplete` tag counts, for the commands that return rows (`SELECT 3`,
/// `FETCH 3`, `COPY 3` out...): its last word.
pub fn returned_rows(tag: &[u8]) -> Option<i64> {
    let (tag, _) = cstr(tag);
    let space = tag.iter().rposition(|&c| c == b' ')?;
    let (command, count) = (&tag[..space], &tag[space + 1..]);
    if !matches!(command, b"SELECT" | b"FETCH" | b"MOVE" | b"COPY") || count.is_empty() || count.len() > 18 {
        return None;
    }
    // Digits only (at most 18: no overflow), as the server writes them.
    count.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0app\0database\0shop\0\0");
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn collect(f: &mut Framer, parts: &[(&[u8], u64)]) -> Vec<(u8, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for (data, gap) in parts {
            f.feed(data, *gap, &mut |m| out.push((m.kind, m.body.to_vec(), m.whole)));
        }
        out
    }

    #[test]
    fn recognises_a_startup_and_established_queries_but_not_http() {
        let s = startup();
        assert_eq!(detect(&s, s.len() as u32), Some(Opening::Startup));
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(detect(&ssl, 8), Some(Opening::Startup));
        let q = msg(b'Q', b"SELECT 1\0");
        assert_eq!(detect(&q, q.len() as u32), Some(Opening::Established));
        let mut ext = msg(b'P', b"\0SELECT $1\0\0\0");
        ext.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        ext.extend(msg(b'E', b"\0\0\0\0\0"));
        ext.extend(msg(b'S', b""));
        assert_eq!(detect(&ext, ext.len() as u32), Some(Opening::Established));
        // Captured in part: consistent as far as it goes.
        assert_eq!(detect(&ext[..12], ext.len() as u32), Some(Opening::Established));
        // Lengths that do not add up to the write, or HTTP.
        assert_eq!(detect(&q, q.len() as u32 + 1), None);
        let post = b"POST /cart HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(detect(post, post.len() as u32), None);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n\r\n", 18), None);
        assert_eq!(detect(&[0, 0], 2), None);
    }

    #[test]
    fn messages_across_calls_and_several_in_one() {
        let mut f = Framer::new(End::Frontend, true);
        let s = startup();
        let mut stream = s.clone();
        stream.extend(msg(b'Q', b"SELECT 1\0"));
        stream.extend(msg(b'X', b""));
        // Every split point.
        for cut in 0..stream.len() {
            let mut f2 = Framer::new(End::Frontend, true);
            let got = collect(&mut f2, &[(&stream[..cut], 0), (&stream[cut..], 0)]);
            let kinds: Vec<u8> = got.iter().map(|m| m.0).collect();
            assert_eq!(kinds, [UNTYPED, b'Q', b'X'], "cut at {cut}");
            assert_eq!(got[1].1, b"SELECT 1\0");
            assert!(got.iter().all(|m| m.2));
        }
        let got = collect(&mut f, &[(&stream, 0)]);
        assert_eq!(startup_params(&got[0].1), [(&b"user"[..], &b"app"[..]), (b"database", b"shop")]);
    }

    #[test]
    fn uncaptured_bytes_are_skipped_by_length_or_lose_the_framing() {
        let mut f = Framer::new(End::Backend, false);
        let mut rows = msg(b'D', &[7u8; 100]);
        rows.extend(msg(b'C', b"SELECT 1\0"));
        rows.extend(msg(b'Z', b"I"));
        // The data row cut after 20 bytes, its rest uncaptured: the messages after it are seen.
        let got = collect(&mut f, &[(&rows[..20], 85), (&rows[105..], 0)]);
        assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), [b'C', b'Z']);
        // Uncaptured bytes past a message's end: the next start is unknown.
        let mut f = Framer::new(End::Backend, false);
        collect(&mut f, &[(&rows[..20], 100)]);
        assert!(f.lost());
        f.resync();
        let got = collect(&mut f, &[(&msg(b'Z', b"I"), 0)]);
        assert_eq!(got[0].0, b'Z');
        // Not this protocol at all.
        let mut f = Framer::new(End::Backend, false);
        assert!(!f.feed(b"HTTP/1.1 200 OK\r\n", 0, &mut |_| {}));
        assert!(f.lost());
    }

    #[test]
    fn long_messages_keep_their_first_bytes() {
        let q = format!("SELECT '{}'\0", "x".repeat(KEEP * 2));
        let m = msg(b'Q', q.as_bytes());
        let mut f = Framer::new(End::Frontend, false);
        let got = collect(&mut f, &[(&m, 0)]);
        assert_eq!((got[0].1.len(), got[0].2), (KEEP, false));
        let mut f = Framer::new(End::Frontend, false);
        let got = collect(&mut f, &[(&m[..100], 0), (&m[100..], 0)]);
        assert_eq!((got[0].1.len(), got[0].2), (KEEP, false));
    }

    #[test]
    fn an_encryption_request_and_its_one_byte_answer() {
        let mut fe = Framer::new(End::Frontend, true);
        let mut be = Framer::new(End::Backend, false);
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let got = collect(&mut fe, &[(&ssl, 0)]);
        assert_eq!(be32(&got[0].1), Some(SSL_REQUEST));
        be.expect_untyped();
        fe.expect_untyped();
        let mut answer = b"N".to_vec();
        answer.extend(msg(b'R', &[0, 0, 0, 0]));
        let got = collect(&mut be, &[(&answer, 0)]);
        assert_eq!((got[0].0, got[0].1.as_slice(), got[1].0), (ENCRYPTION_REPLY, &b"N"[..], b'R'));
        assert_eq!(collect(&mut fe, &[(&startup(), 0)])[0].0, UNTYPED);
    }

    #[test]
    fn error_codes_and_row_counts() {
        let e = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0";
        assert_eq!(error_code(e), Some(&b"42P01"[..]));
        assert_eq!(error_code(b"SERROR\0\0"), None);
        assert_eq!(returned_rows(b"SELECT 3\0"), Some(3));
        assert_eq!(returned_rows(b"INSERT 0 1\0"), None);
        assert_eq!(returned_rows(b"BEGIN\0"), None);
    }
}
