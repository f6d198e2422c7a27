//! MySQL's client/server protocol (MariaDB's too), as the client's end of a connection carries
//! it: packets of a 3-byte little-endian length and a sequence number, recognised from the
//! server's greeting or, on a connection that was open before tracing began, from a client's
//! write of one command.
//!
//! A packet's first bytes are kept (a query's text, an error's code) and the rest is counted,
//! so bytes the capture cap left out are skipped by length; when they hid a packet's start, the
//! direction is lost until the session tells it where a packet starts again.

/// `COM_QUIT`: the client closes (no response).
pub const COM_QUIT: u8 = 0x01;
/// `COM_INIT_DB`: selects the default database (`USE db`).
pub const COM_INIT_DB: u8 = 0x02;
/// `COM_QUERY`: a text query.
pub const COM_QUERY: u8 = 0x03;
/// `COM_PING`.
pub const COM_PING: u8 = 0x0e;
/// `COM_STMT_PREPARE`: a statement prepared on the server, answered with its id.
pub const COM_STMT_PREPARE: u8 = 0x16;
/// `COM_STMT_EXECUTE`: a prepared statement run by id, with its parameters in binary.
pub const COM_STMT_EXECUTE: u8 = 0x17;
/// `COM_STMT_SEND_LONG_DATA`: a parameter's data sent ahead (no response).
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
/// `COM_STMT_CLOSE`: a prepared statement dropped (no response).
pub const COM_STMT_CLOSE: u8 = 0x19;

/// Capability: the client sends the database it connects to.
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
/// Capability: the client asks for TLS (an `SSLRequest` before its handshake response).
pub const CLIENT_SSL: u32 = 0x0000_0800;
/// Capability: result sets end with an OK packet instead of EOF packets.
pub const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
/// Server status: another result set follows (multi-statements, stored procedures).
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// The protocol version a server's greeting starts with.
const PROTOCOL_10: u8 = 10;
/// A packet's payload at its largest; one this long continues in the next packet.
pub const MAX_PAYLOAD: u32 = 0xff_ffff;
/// Most bytes of a packet kept (a query's text beyond this is counted, not kept).
pub const KEEP: usize = 16 * 1024;

/// A packet, or its first bytes.
#[derive(Debug)]
pub struct Packet<'a> {
    /// Its sequence number.
    pub seq: u8,
    /// Its payload's length.
    pub len: u32,
    /// Its payload as kept.
    pub body: &'a [u8],
    /// Whether `body` is all of it.
    pub whole: bool,
    /// It continues the previous packet's payload (which was [`MAX_PAYLOAD`] long).
    pub continued: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a packet's start; `got` header bytes are in `head`.
    Head { got: usize },
    /// Inside a packet: `left` payload bytes to come.
    Body { seq: u8, len: u32, left: u32, whole: bool },
    /// A packet start was in bytes that were not captured.
    Lost,
}

/// One direction's packets.
#[derive(Debug)]
pub struct Framer {
    state: State,
    head: [u8; 4],
    /// The previous packet was [`MAX_PAYLOAD`] long: the next continues it.
    continues: bool,
    /// The kept bytes of a packet that spans calls.
    keep: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer { state: State::Head { got: 0 }, head: [0; 4], continues: false, keep: Vec::new() }
    }
}

impl Framer {
    /// Whether a packet start was lost.
    pub fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Whether the next byte starts a packet (as far as this framer knows).
    pub fn at_start(&self) -> bool {
        self.state == State::Head { got: 0 }
    }

    /// A packet starts with the next byte (the session knows it: the other side spoke).
    pub fn resync(&mut self) {
        self.state = State::Head { got: 0 };
        self.keep.clear();
        self.continues = false;
    }

    /// Reads `data` (captured bytes) followed by `gap` bytes that were not captured.
    pub fn feed(&mut self, mut data: &[u8], gap: u64, on: &mut impl FnMut(Packet<'_>)) {
        while !data.is_empty() {
            match self.state {
                State::Lost => return,
                State::Head { got } => {
                    // A whole packet in this call: handed on without a copy.
                    if got == 0
                        && let Some(b) = data.get(..4)
                        && let (len, seq) = header(b)
                        && let Some(payload) = data.get(4..4 + len as usize)
                    {
                        let body = &payload[..payload.len().min(KEEP)];
                        let continued = std::mem::replace(&mut self.continues, len == MAX_PAYLOAD);
                        on(Packet { seq, len, body, whole: body.len() == payload.len(), continued });
                        data = &data[4 + len as usize..];
                        continue;
                    }
                    let take = (4 - got).min(data.len());
                    self.head[got..got + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    if got + take < 4 {
                        self.state = State::Head { got: got + take };
                        continue;
                    }
                    let (len, seq) = header(&self.head);
                    self.keep.clear();
                    self.state = State::Body { seq, len, left: len, whole: true };
                    self.finish_if_done(on);
                }
                State::Body { seq, len, left, whole } => {
                    let take = (left as usize).min(data.len());
                    let room = KEEP.saturating_sub(self.keep.len());
                    self.keep.extend_from_slice(&data[..take.min(room)]);
                    let whole = whole && take <= room;
                    data = &data[take..];
                    self.state = State::Body { seq, len, left: left - take as u32, whole };
                    self.finish_if_done(on);
                }
            }
        }
        if gap == 0 {
            return;
        }
        self.state = match self.state {
            State::Body { seq, len, left, .. } if gap < u64::from(left) => {
                State::Body { seq, len, left: left - gap as u32, whole: false }
            }
            // The rest of a packet ended exactly at the gap's end: the next byte starts one, but
            // what the packet said was not all seen (a row's, whose count is what matters here).
            State::Body { seq, len, left, .. } if gap == u64::from(left) => {
                let continued = std::mem::replace(&mut self.continues, len == MAX_PAYLOAD);
                on(Packet { seq, len, body: &self.keep, whole: false, continued });
                self.keep.clear();
                State::Head { got: 0 }
            }
            _ => State::Lost,
        };
    }

    fn finish_if_done(&mut self, on: &mut impl FnMut(Packet<'_>)) {
        if let State::Body { seq, len, left: 0, whole } = self.state {
            let continued = std::mem::replace(&mut self.continues, len == MAX_PAYLOAD);
            on(Packet { seq, len, body: &self.keep, whole, continued });
            self.keep.clear();
            self.state = State::Head { got: 0 };
        }
    }
}

/// A packet header's payload length and sequence number.
fn header(b: &[u8]) -> (u32, u8) {
    (u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16, b[3])
}

/// What a server's greeting says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The server's version (`10.11.19-MariaDB-0+deb12u1`, `8.0.36`).
    pub version: String,
    /// Its capability flags.
    pub capabilities: u32,
}

impl Greeting {
    /// MariaDB says so in its version; MySQL does not.
    pub fn mariadb(&self) -> bool {
        self.version.contains("MariaDB")
    }
}

/// Whether a client's read (`payload` captured, the whole read) is a server's greeting.
pub fn is_greeting(payload: &[u8]) -> bool {
    let Some(b) = payload.get(..4) else {
        return false;
    };
    let (len, seq) = header(b);
    seq == 0
        && len as usize == payload.len() - 4
        && (20..=1024).contains(&len)
        && greeting(&payload[4..]).is_some()
}

/// Whether a client's read (the whole read) is just the header of a packet that may be a
/// server's greeting: drivers that read a packet's header and then its body (pure-Python ones)
/// show the greeting in two reads.
pub fn is_greeting_header(payload: &[u8]) -> bool {
    payload.len() == 4 && {
        let (len, seq) = header(payload);
        seq == 0 && (20..=1024).contains(&len)
    }
}

/// What a server's greeting (protocol 10) says, from its body.
pub fn greeting(body: &[u8]) -> Option<Greeting> {
    if body.first() != Some(&PROTOCOL_10) {
        return None;
    }
    let end = body[1..].iter().position(|&b| b == 0)? + 1;
    let version = &body[1..end];
    if version.is_empty() || version.len() > 100 || !version.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // Thread id (4), scramble part 1 (8), a filler (1), then the capabilities' low half; the
    // character set (1) and status (2) before their high half.
    let rest = body.get(end + 1..)?;
    let low = u16::from_le_bytes([*rest.get(13)?, *rest.get(14)?]);
    let high = rest.get(18..20).map_or(0, |h| u16::from_le_bytes([h[0], h[1]]));
    Some(Greeting {
        version: String::from_utf8_lossy(version).into_owned(),
        capabilities: u32::from(low) | u32::from(high) << 16,
    })
}

/// What a client's handshake response says (`payload` is the packet's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub capabilities: u32,
    /// It is an `SSLRequest`: TLS follows.
    pub ssl: bool,
    /// The database it connects to.
    pub database: Option<Vec<u8>>,
}

/// A `HandshakeResponse41` (or an `SSLRequest`, its first 32 bytes) from its body.
pub fn login(body: &[u8]) -> Option<Login> {
    let capabilities = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    if body.len() == 32 {
        return Some(Login { capabilities, ssl: capabilities & CLIENT_SSL != 0, database: None });
    }
    // Capabilities (4), max packet size (4), character set (1), filler (23), then the user.
    let (_user, rest) = cstr(body.get(32..)?);
    // The auth response: length-encoded with CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, else one
    // length byte (CLIENT_SECURE_CONNECTION), else a C string.
    let rest = if capabilities & 0x0020_0000 != 0 {
        let (n, r) = lenenc(rest)?;
        r.get(usize::try_from(n).ok()?..)?
    } else if capabilities & 0x0000_8000 != 0 {
        let (&n, r) = rest.split_first()?;
        r.get(usize::from(n)..)?
    } else {
        cstr(rest).1
    };
    let database =
        (capabilities & CLIENT_CONNECT_WITH_DB != 0).then(|| cstr(rest).0.to_vec()).filter(|d| !d.is_empty());
    Some(Login { capabilities, ssl: false, database })
}

/// Whether a client's write (`payload` captured of `len` bytes) is one MySQL command: a packet
/// at sequence 0 that is the whole write, whose command byte and contents fit. An HTTP or
/// PostgreSQL request cannot pass: its first bytes read as a length of megabytes.
pub fn is_command(payload: &[u8], len: u32) -> bool {
    let Some(b) = payload.get(..5) else {
        return false;
    };
    let (size, seq) = header(b);
    if seq != 0 || size + 4 != len || size == 0 || size >= MAX_PAYLOAD {
        return false;
    }
    let text_start = |t: Option<&u8>| {
        t.is_some_and(|&c| c.is_ascii_alphabetic() || matches!(c, b'(' | b'/' | b' ' | b'\n'))
    };
    match b[4] {
        COM_QUERY | COM_STMT_PREPARE => size >= 2 && text_start(payload.get(5)),
        COM_STMT_EXECUTE => size >= 10,
        COM_PING => size == 1,
        COM_INIT_DB => size >= 2 && payload.get(5).is_some_and(u8::is_ascii_graphic),
        _ => false,
    }
}

/// A length-encoded integer at the start of `b`, and what follows it.
pub fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    let v = bytes.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    Some((v, &rest[n..]))
}

/// A C string at the start of `b`, and what follows it.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// What a response packet is, by its first byte and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An OK packet: its status flags.
    Ok { status: u16 },
    /// An ERR packet: its error number.
    Err { code: u16 },
    /// An EOF packet (before `CLIENT_DEPRECATE_EOF`): its status flags.
    Eof { status: u16 },
    /// Anything else: a column count, a column definition, a row.
    Other,
}

/// Reads a response packet's kind. `first`: the response's first packet, where `0x00` starts
/// an OK packet; later (rows), it starts a row (an empty first column, or any binary row).
pub fn kind(p: &Packet<'_>, first: bool) -> Kind {
    match p.body.first() {
        Some(0xff) if p.body.len() >= 3 => Kind::Err { code: u16::from_le_bytes([p.body[1], p.body[2]]) },
        // An EOF packet is 5 bytes, the OK packet that replaces it 7 or more; a row starting
        // with 0xFE (an 8-byte length) holds more than 16 MB, so its packet is the largest there is.
        Some(0xfe) if p.len == 5 => {
            Kind::Eof { status: p.body.get(3..5).map_or(0, |s| u16::from_le_bytes([s[0], s[1]])) }
        }
        Some(0xfe) if p.len < MAX_PAYLOAD => Kind::Ok { status: ok_status(&p.body[1..]).unwrap_or(0) },
        Some(0x00) if first => ok_status(&p.body[1..]).map_or(Kind::Other, |status| Kind::Ok { status }),
        _ => Kind::Other,
    }
}

/// An OK packet's status flags, after its header byte: affected rows and last insert id
/// (length-encoded), then the status.
fn ok_status(b: &[u8]) -> Option<u16> {
    let (_, b) = lenenc(b)?;
    let (_, b) = lenenc(b)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, body: &[u8]) -> Vec<u8> {
        let n = body.len() as u32;
        let mut p = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        p.extend_from_slice(body);
        p
    }

    fn frame(f: &mut Framer, chunks: &[(&[u8], u64)]) -> Vec<(u8, u32, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for (data, gap) in chunks {
            f.feed(data, *gap, &mut |p| out.push((p.seq, p.len, p.body.to_vec(), p.whole)));
        }
        out
    }

    #[test]
    fn packets_are_framed_across_any_split() {
        let mut bytes = packet(1, b"\x01");
        bytes.extend(packet(2, b"\x03def\x04shop\x05users\x05users\x04name\x04name\x0c\x21\0"));
        bytes.extend(packet(3, b"\x05Alice"));
        bytes.extend(packet(4, b"\xfe\0\0\x22\0"));
        for cut in 0..=bytes.len() {
            let mut f = Framer::default();
            let got = frame(&mut f, &[(&bytes[..cut], 0), (&bytes[cut..], 0)]);
            assert_eq!(got.len(), 4, "cut at {cut}");
            assert_eq!(got[2], (3, 6, b"\x05Alice".to_vec(), true));
            assert!(f.at_start());
        }
    }

    #[test]
    fn bytes_left_out_inside_a_packet_are_skipped_by_length() {
        let mut row = packet(5, &[b'x'; 1000]);
        row.truncate(100);
        let eof = packet(6, b"\xfe\0\0\x22\0");
        let mut f = Framer::default();
        let got = frame(&mut f, &[(&row, 904), (&eof, 0)]);
        assert_eq!(got.len(), 2);
        assert!(!got[0].3, "the row was not all seen");
        assert_eq!(got[1].0, 6);
        // A gap across a header loses the framing.
        let mut f = Framer::default();
        frame(&mut f, &[(&eof, 3)]);
        assert!(f.lost());
    }

    #[test]
    fn greeting_and_login_are_read() {
        let mut body = vec![PROTOCOL_10];
        body.extend(b"10.11.19-MariaDB-0+deb12u1\0");
        body.extend([1, 0, 0, 0]); // thread id
        body.extend(b"scramble"); // part 1
        body.push(0);
        body.extend(0xf7feu16.to_le_bytes()); // capabilities, low
        body.push(45); // character set
        body.extend(2u16.to_le_bytes()); // status
        body.extend(0x81bfu16.to_le_bytes()); // capabilities, high
        body.extend([21; 11]);
        assert!(is_greeting(&packet(0, &body)));
        let g = greeting(&body).expect("a greeting");
        assert!(g.mariadb());
        assert_eq!(g.capabilities, 0x81bf_f7fe);
        assert!(g.capabilities & CLIENT_DEPRECATE_EOF != 0);
        assert!(!is_greeting(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_greeting(&packet(1, &body)));
        assert!(is_greeting_header(&packet(0, &body)[..4]));
        assert!(!is_greeting_header(b"HTTP"));

        let caps = CLIENT_CONNECT_WITH_DB | 0x0000_8000 | 0x0000_0200;
        let mut login_body = caps.to_le_bytes().to_vec();
        login_body.extend([0; 28]);
        login_body.extend(b"app\0");
        login_body.push(3);
        login_body.extend(b"abc");
        login_body.extend(b"shop\0mysql_native_password\0");
        let l = login(&login_body).expect("a login");
        assert_eq!(l.database.as_deref(), Some(&b"shop"[..]));
        assert!(!l.ssl);
        let ssl =
            login(&[&(CLIENT_SSL | caps).to_le_bytes()[..], &[0; 28]].concat()).expect("an SSL request");
        assert!(ssl.ssl);
    }

    #[test]
    fn commands_are_told_from_other_protocols() {
        assert!(is_command(&packet(0, b"\x03SELECT 1"), 13));
        assert!(is_command(&packet(0, b"\x0e"), 5));
        assert!(is_command(&packet(0, b"\x17\x01\0\0\0\0\x01\0\0\0"), 14));
        assert!(!is_command(&packet(1, b"\x03SELECT 1"), 13), "not a command's sequence");
        assert!(!is_command(&packet(0, b"\x03SELECT 1"), 20), "not the whole write");
        assert!(!is_command(&packet(0, b"\x03\x01\x02"), 7), "not text");
        assert!(!is_command(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27));
        assert!(!is_command(b"Q\0\0\0\x0dSELECT 1\0", 14));
    }

    #[test]
    fn response_packets_are_told_apart() {
        let p = |body: &'static [u8]| Packet {
            seq: 1,
            len: body.len() as u32,
            body,
            whole: true,
            continued: false,
        };
        assert_eq!(kind(&p(b"\x00\x01\x00\x02\x00\x00\x00"), true), Kind::Ok { status: 2 });
        // The same bytes among rows: a row whose first column is empty.
        assert_eq!(kind(&p(b"\x00\x01\x00\x02\x00\x00\x00"), false), Kind::Other);
        assert_eq!(kind(&p(b"\xff\x26\x04#23000Duplicate entry"), false), Kind::Err { code: 1062 });
        assert_eq!(kind(&p(b"\xfe\x00\x00\x0a\x00"), false), Kind::Eof { status: 10 });
        assert_eq!(kind(&p(b"\xfe\x00\x00\x0a\x00\x00\x00"), false), Kind::Ok { status: 10 });
        assert_eq!(kind(&p(b"\x05Alice"), false), Kind::Other);
        assert_eq!(lenenc(b"\xfc\x10\x27rest"), Some((10_000, &b"rest"[..])));
    }
}
