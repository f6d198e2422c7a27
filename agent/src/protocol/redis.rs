//! Redis's serialization protocol (RESP2 and RESP3), as a client's connection carries it:
//! commands are arrays of bulk strings, replies any value, framed by type bytes, CRLF-ended
//! lines and declared lengths.
//!
//! A value's first bytes are kept (a command's name and first argument, an error's prefix) and
//! the rest is counted: a bulk string's payload is skipped by its length, so bytes the capture
//! cap left out inside one cost nothing; when they hid structure (a line, a type byte), the
//! direction is lost until the session tells it where a value starts again.

/// Most aggregate levels followed (a reply nested deeper is not framed).
pub const MAX_DEPTH: usize = 16;
/// Bytes kept of each part of a value's head.
pub const KEEP: usize = 32;
/// Longest line that is read whole (a length, an error's text is kept only to [`KEEP`]).
const MAX_LINE: usize = 64 * 1024;
/// Largest count or length a value may declare (Redis's own limit on a bulk string is 512 MB).
const MAX_LEN: i64 = 1 << 32;

/// Longest command name recognised (module commands such as `JSON.ARRAPPEND` included).
const MAX_NAME: usize = 32;

/// The first bytes of a part of a value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    buf: [u8; KEEP],
    len: u8,
    /// More bytes followed than were kept.
    pub cut: bool,
}

impl Default for Prefix {
    fn default() -> Prefix {
        Prefix { buf: [0; KEEP], len: 0, cut: false }
    }
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}{}", String::from_utf8_lossy(self.bytes()), if self.cut { "…" } else { "" })
    }
}

impl Prefix {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn push(&mut self, data: &[u8]) {
        let at = usize::from(self.len);
        let n = data.len().min(KEEP - at);
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n as u8;
        self.cut |= n < data.len();
    }
}

/// What one top-level value said, as far as a span needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Value {
    /// Its type byte (`*` for a command; `-`, `!` for errors; `>` a push; `|` attributes).
    pub kind: u8,
    /// Elements of an aggregate (-1: null).
    pub count: i64,
    /// A scalar's text (an error's message), or an aggregate's first element (a command's
    /// name).
    pub first: Prefix,
    /// An aggregate's second element (a command's first argument).
    pub second: Prefix,
}

impl Value {
    /// Whether it is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self.kind, b'-' | b'!')
    }

    /// Whether it answers a command: pushes (pub/sub messages, invalidations) and attributes
    /// (which precede the reply they describe) do not.
    pub fn is_reply(&self) -> bool {
        !matches!(self.kind, b'>' | b'|')
    }

    /// An error's prefix (`ERR`, `WRONGTYPE`...): its first word, when it is one in capitals.
    pub fn error_prefix(&self) -> Option<&[u8]> {
        let text = self.first.bytes();
        let word = text.split(|&b| b == b' ').next().unwrap_or(text);
        (!word.is_empty()
            && (word.len() < text.len() || !self.first.cut)
            && word.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-'))
        .then_some(word)
    }
}

/// What [`Framer::feed`] tells its caller.
#[derive(Debug)]
pub enum Event<'a> {
    /// A top-level value begins.
    Begin,
    /// A top-level value is complete.
    End(&'a Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a value's type byte.
    Type,
    /// In the line after type byte `kind`.
    Line { kind: u8 },
    /// In a bulk payload: `left` bytes to come, its final CRLF included.
    Payload { left: u64 },
    /// Structure was in bytes that were not captured, or the bytes were not RESP.
    Lost,
}

/// Which part of the top-level value the bytes being read belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    First,
    Second,
    None,
}

/// One direction's values.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Elements still to come in each open aggregate, innermost last.
    stack: [u64; MAX_DEPTH],
    depth: usize,
    /// The line being read (its first [`KEEP`] bytes; the rest counted in `line_len`).
    line: Prefix,
    line_len: usize,
    /// The line's last byte was a CR (its LF may come in the next call).
    cr: bool,
    /// The top-level value in progress.
    value: Value,
    /// Elements of the top-level aggregate completed so far.
    elem: u64,
    /// Only arrays of bulk strings (a client's commands).
    commands: bool,
}

impl Framer {
    /// A framer of a client's commands (`commands`) or of a server's replies.
    pub fn new(commands: bool) -> Framer {
        Framer {
            state: State::Type,
            stack: [0; MAX_DEPTH],
            depth: 0,
            line: Prefix::default(),
            line_len: 0,
            cr: false,
            value: Value::default(),
            elem: 0,
            commands,
        }
    }

    /// Whether it is between values.
    pub fn at_start(&self) -> bool {
        self.state == State::Type && self.depth == 0
    }

    /// Whether it lost track of where values start.
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// The next bytes start a value.
    pub fn resync(&mut self) {
        self.state = State::Type;
        self.depth = 0;
        self.cr = false;
    }

    /// Reads `data`, then skips `gap` bytes that were not captured; `f` hears of each top-level
    /// value's beginning and end.
    pub fn feed(&mut self, data: &[u8], gap: u64, f: &mut impl FnMut(Event<'_>)) {
        let mut at = 0;
        while at < data.len() {
            at += match self.state {
                State::Lost => return,
                State::Type => {
                    self.value_type(data[at], f);
                    1
                }
                State::Line { kind } => self.read_line(kind, &data[at..], f),
                State::Payload { left } => {
                    let n = (data.len() - at).min(usize::try_from(left).unwrap_or(usize::MAX));
                    // The payload's content, without its final CRLF.
                    let content = n.min(usize::try_from(left.saturating_sub(2)).unwrap_or(usize::MAX));
                    self.keep(&data[at..at + content]);
                    self.payload_moved(left - n as u64, f);
                    n
                }
            }
        }
        if gap == 0 {
            return;
        }
        match self.state {
            State::Payload { left } if left >= gap => self.payload_moved(left - gap, f),
            State::Lost => {}
            _ => self.state = State::Lost,
        }
    }

    /// Bytes of the current value's head go where they belong.
    fn keep(&mut self, bytes: &[u8]) {
        match self.slot() {
            Slot::First => self.value.first.push(bytes),
            Slot::Second => self.value.second.push(bytes),
            Slot::None => {}
        }
    }

    fn slot(&self) -> Slot {
        match (self.depth, self.elem) {
            (0, _) | (1, 0) => Slot::First,
            (1, 1) => Slot::Second,
            _ => Slot::None,
        }
    }

    fn value_type(&mut self, kind: u8, f: &mut impl FnMut(Event<'_>)) {
        let ok = if self.commands {
            if self.depth == 0 { kind == b'*' } else { kind == b'$' }
        } else {
            matches!(
                kind,
                b'+' | b'-'
                    | b':'
                    | b'$'
                    | b'*'
                    | b'_'
                    | b','
                    | b'#'
                    | b'('
                    | b'!'
                    | b'='
                    | b'%'
                    | b'~'
                    | b'>'
                    | b'|'
            )
        };
        if !ok {
            self.state = State::Lost;
            return;
        }
        if self.depth == 0 {
            self.value = Value { kind, ..Value::default() };
            self.elem = 0;
            f(Event::Begin);
        }
        self.line_len = 0;
        self.line = Prefix::default();
        self.cr = false;
        self.state = State::Line { kind };
    }

    /// Reads a line's bytes; returns how many it took.
    fn read_line(&mut self, kind: u8, data: &[u8], f: &mut impl FnMut(Event<'_>)) -> usize {
        let end = data.iter().position(|&b| b == b'\n');
        let took = end.map_or(data.len(), |i| i + 1);
        let body = &data[..end.unwrap_or(data.len())];
        if self.line_len + body.len() > MAX_LINE {
            self.state = State::Lost;
            return took;
        }
        // A scalar's text is part of the head; a length or count only of the line.
        if !matches!(kind, b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|') {
            let text = body.strip_suffix(b"\r").filter(|_| end.is_some()).unwrap_or(body);
            self.keep(text);
        }
        self.line.push(body);
        self.line_len += body.len();
        self.cr = body.last() == Some(&b'\r') || (body.is_empty() && self.cr);
        if end.is_none() {
            return took;
        }
        if !self.cr {
            self.state = State::Lost;
            return took;
        }
        self.line_done(kind, f);
        took
    }

    fn line_done(&mut self, kind: u8, f: &mut impl FnMut(Event<'_>)) {
        let text = self.line.bytes();
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match kind {
            b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|' => {
                let Some(n) = (!self.line.cut)
                    .then(|| parse_int(text))
                    .flatten()
                    .filter(|n| (-1..=MAX_LEN).contains(n))
                else {
                    self.state = State::Lost;
                    return;
                };
                if self.depth == 0 {
                    self.value.count = n;
                }
                if n < 0 {
                    self.element_done(f);
                } else if matches!(kind, b'$' | b'!' | b'=') {
                    self.state = State::Payload { left: n as u64 + 2 };
                } else if n == 0 {
                    self.element_done(f);
                } else if self.depth == MAX_DEPTH || (self.commands && self.depth > 0) {
                    self.state = State::Lost;
                } else {
                    let elements = if matches!(kind, b'%' | b'|') { 2 * n as u64 } else { n as u64 };
                    self.stack[self.depth] = elements;
                    self.depth += 1;
                    self.state = State::Type;
                }
            }
            _ => self.element_done(f),
        }
    }

    fn payload_moved(&mut self, left: u64, f: &mut impl FnMut(Event<'_>)) {
        if left == 0 {
            self.element_done(f);
        } else {
            self.state = State::Payload { left };
        }
    }

    /// A value is complete: the aggregates it closes are too, up to the top level.
    fn element_done(&mut self, f: &mut impl FnMut(Event<'_>)) {
        self.state = State::Type;
        while self.depth > 0 {
            let left = &mut self.stack[self.depth - 1];
            *left -= 1;
            if self.depth == 1 {
                self.elem += 1;
            }
            if *left > 0 {
                return;
            }
            self.depth -= 1;
        }
        f(Event::End(&self.value));
    }
}

fn parse_int(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Whether a client's write starts with a Redis command: an array of bulk strings whose first
/// is a command's name (letters, digits, `.`, `_`, `-`, `|`, at least one letter). HTTP and
/// PostgreSQL never start with `*`.
pub fn detect(payload: &[u8]) -> bool {
    let Some(rest) = payload.strip_prefix(b"*") else {
        return false;
    };
    let Some((count, rest)) = number_line(rest) else {
        return false;
    };
    if !(1..=MAX_LEN).contains(&count) {
        return false;
    }
    let Some((len, rest)) = rest.strip_prefix(b"$").and_then(number_line) else {
        return false;
    };
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    (1..=MAX_NAME).contains(&len)
        && rest.len() >= len
        && is_name(&rest[..len])
        && (rest.len() == len || rest[len..].starts_with(b"\r"))
}

/// A command's name, upper case, held in place: one is read for every command, and comparing
/// or copying it costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name {
    buf: [u8; MAX_NAME],
    len: u8,
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        // Letters, digits and `._-|` only (see `is_name`), upper-cased: ASCII.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

/// A command's name as spans show it: upper case (clients send either).
pub fn command_name(bytes: &[u8]) -> Option<Name> {
    if bytes.len() > MAX_NAME || !is_name(bytes) {
        return None;
    }
    let mut name = Name { buf: [0; MAX_NAME], len: bytes.len() as u8 };
    name.buf[..bytes.len()].copy_from_slice(bytes);
    name.buf.make_ascii_uppercase();
    Some(name)
}

fn is_name(b: &[u8]) -> bool {
    b.iter().any(u8::is_ascii_alphabetic)
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'|'))
}

/// A decimal line (`12\r\n`) and what follows it.
fn number_line(b: &[u8]) -> Option<(i64, &[u8])> {
    let end = b.iter().take(21).position(|&c| c == b'\r')?;
    let n = parse_int(&b[..end])?;
    let rest = &b[end + 1..];
    Some((n, rest.strip_prefix(b"\n")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(framer: &mut Framer, chunks: &[(&[u8], u64)]) -> (usize, Vec<Value>) {
        let mut begun = 0;
        let mut done = Vec::new();
        for (data, gap) in chunks {
            framer.feed(data, *gap, &mut |e| match e {
                Event::Begin => begun += 1,
                Event::End(v) => done.push(*v),
            });
        }
        (begun, done)
    }

    #[test]
    fn commands_are_framed_with_name_and_first_argument() {
        let mut f = Framer::new(true);
        let (begun, done) =
            frame(&mut f, &[(b"*2\r\n$3\r\nGET\r\n$7\r\ncart:42\r\n*1\r\n$4\r\nPING\r\n", 0)]);
        assert_eq!(begun, 2);
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].first.bytes(), b"GET");
        assert_eq!(done[0].second.bytes(), b"cart:42");
        assert_eq!(done[0].count, 2);
        assert_eq!(done[1].first.bytes(), b"PING");
        assert!(f.at_start());
    }

    #[test]
    fn every_split_of_a_value_frames_the_same() {
        let bytes: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..=bytes.len() {
            let mut f = Framer::new(true);
            let (begun, done) = frame(&mut f, &[(&bytes[..cut], 0), (&bytes[cut..], 0)]);
            assert_eq!((begun, done.len()), (1, 1), "cut at {cut}");
            assert_eq!(done[0].first.bytes(), b"SET");
            assert_eq!(done[0].second.bytes(), b"k");
            assert!(f.at_start());
        }
        let reply: &[u8] = b"*2\r\n*2\r\n:1\r\n$-1\r\n-ERR no\r\n+OK\r\n";
        for cut in 0..=reply.len() {
            let mut f = Framer::new(false);
            let (begun, done) = frame(&mut f, &[(&reply[..cut], 0), (&reply[cut..], 0)]);
            assert_eq!((begun, done.len()), (2, 2), "cut at {cut}");
            assert_eq!(done[0].count, 2);
            assert_eq!(done[1].kind, b'+');
        }
    }

    #[test]
    fn bytes_left_out_inside_a_payload_are_skipped_by_length() {
        // A 10,000-byte value of which the capture kept 100.
        let mut head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$10000\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'x', 100));
        let mut f = Framer::new(true);
        let (_, done) = frame(&mut f, &[(&head, 9_902), (b"*1\r\n$4\r\nPING\r\n", 0)]);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].first.bytes(), b"PING");

        // A gap across structure loses the framing, until told where a value starts.
        let mut f = Framer::new(false);
        let (_, done) = frame(&mut f, &[(b"*3\r\n:1\r\n", 10), (b":2\r\n", 0)]);
        assert!(done.is_empty());
        assert!(f.lost());
        f.resync();
        let (_, done) = frame(&mut f, &[(b"+OK\r\n", 0)]);
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn replies_of_every_type_are_framed() {
        let mut f = Framer::new(false);
        let stream: &[u8] =
            b"+OK\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n\
            _\r\n,3.14\r\n#t\r\n(123456789012345678901234567890\r\n!21\r\nSYNTAX invalid syntax\r\n\
            =15\r\ntxt:Some string\r\n%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n~2\r\n+x\r\n+y\r\n\
            >3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n|1\r\n+ttl\r\n:3\r\n+after-attribute\r\n";
        let (begun, done) = frame(&mut f, &[(stream, 0)]);
        let kinds: Vec<u8> = done.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, b"+-:$$**_,#(!=%~>|+");
        assert_eq!(begun, done.len());
        assert_eq!(done[1].error_prefix(), Some(&b"WRONGTYPE"[..]));
        assert_eq!(done[11].error_prefix(), Some(&b"SYNTAX"[..]));
        assert!(done[1].is_error() && done[11].is_error() && !done[0].is_error());
        assert!(!done[15].is_reply() && !done[16].is_reply() && done[17].is_reply());
        assert_eq!(done[4].count, -1);
        assert!(f.at_start());
    }

    #[test]
    fn what_is_not_resp_is_lost_not_misread() {
        for bad in [&b"GET / HTTP/1.1\r\n"[..], b"*x\r\n", b"*2\r\n+OK\r\n", b"$99999999999\r\n", b"*1\n"] {
            let mut f = Framer::new(true);
            let (_, done) = frame(&mut f, &[(bad, 0)]);
            assert!(done.is_empty(), "{bad:?}");
            assert!(f.lost(), "{bad:?}");
        }
        // Nesting beyond the limit.
        let mut f = Framer::new(false);
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        frame(&mut f, &[(&deep, 0)]);
        assert!(f.lost());
    }

    #[test]
    fn a_long_error_keeps_its_prefix() {
        let mut f = Framer::new(false);
        let mut line = b"-ERR ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 500));
        line.extend(b"\r\n");
        let (_, done) = frame(&mut f, &[(&line, 0)]);
        assert_eq!(done[0].error_prefix(), Some(&b"ERR"[..]));
        assert!(done[0].first.cut);
    }

    #[test]
    fn detect_knows_commands_from_other_protocols() {
        assert!(detect(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"));
        assert!(detect(b"*1\r\n$4\r\nping\r\n"));
        assert!(detect(b"*3\r\n$8\r\nJSON.SET\r\n"));
        assert!(detect(b"*2\r\n$6\r\nCLIENT"));
        assert!(!detect(b"*2\r\n$3\r\nGE"));
        assert!(!detect(b"GET / HTTP/1.1\r\n"));
        assert!(!detect(b"PRI * HTTP/2.0\r\n"));
        assert!(!detect(b"*0\r\n"));
        assert!(!detect(b"*1\r\n$3\r\n123\r\n"));
        assert!(!detect(b"*1\r\n$2\r\nGET\r\n"));
        assert!(!detect(b"\0\0\0\x08\x04\xd2\x16\x2f"));
        assert_eq!(command_name(b"hgetall").as_deref(), Some("HGETALL"));
        assert_eq!(command_name(b"\xff"), None);
    }
}
