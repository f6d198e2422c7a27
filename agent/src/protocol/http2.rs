//! HTTP/2 (RFC 9113) as one direction of a connection carries it: frames cut out of the byte
//! stream by their 9-byte headers, header blocks (HEADERS or PUSH_PROMISE, then CONTINUATION)
//! put back together for the HPACK decoder (RFC 7541), everything else skipped by length.
//!
//! A connection is HTTP/2 from its client's preface (`PRI * HTTP/2.0...`): prior-knowledge
//! cleartext (h2c, what gRPC uses inside a cluster) and TLS connections that negotiated `h2`
//! alike, since TLS ones are read in plain text. HPACK keeps a table per direction that every
//! header block changes, so a direction whose bytes were not all seen from the preface on cannot
//! be decoded: bytes the capture cap left out are skipped by length where they fall in a DATA
//! frame (bodies), and make the direction `lost` where they fall in a frame header or a header
//! block. Header blocks are decoded by [`super::hpack`].
use std::borrow::Cow;

use super::hpack::{Decoder, HpackError};

/// What a client sends first.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame header's size.
const FRAME_HEADER: usize = 9;
/// Largest header block assembled (HEADERS and its CONTINUATIONs): beyond it the direction is
/// lost. Servers advertise 8-16 KiB as their header list limit; 64 KiB leaves room.
pub const MAX_BLOCK: usize = 64 * 1024;
/// Buffer capacity a direction keeps between header blocks (typical blocks are a few hundred
/// bytes).
const KEEP_CAPACITY: usize = 16 * 1024;
/// Largest dynamic table an encoder may ask for (its size update beyond this is an error): the
/// protocol's default is 4 KiB, and peers that raise it ask for 64 KiB at most in practice.
pub const MAX_TABLE: usize = 64 * 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// RST_STREAM's code for a stream its sender gave up on (a cancelled call).
pub const CANCEL: u32 = 0x8;
/// RST_STREAM's code for a stream the server refused before processing it.
pub const REFUSED_STREAM: u32 = 0x7;
/// RST_STREAM's code for a peer that sends too much.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// RST_STREAM's code for a connection whose security is not enough.
pub const INADEQUATE_SECURITY: u32 = 0xc;

/// Whether a connection's first bytes in its client's direction start the preface (at least
/// its first three bytes: a read may stop anywhere).
pub fn starts_preface(payload: &[u8]) -> bool {
    let n = payload.len().min(PREFACE.len());
    n >= 3 && payload[..n] == PREFACE[..n]
}

/// Whether a server connection's first bytes are the server's preface, a SETTINGS frame on
/// stream 0 (servers send theirs as soon as the connection opens, often before the client's
/// preface has been read).
pub fn starts_server_preface(payload: &[u8]) -> bool {
    match payload {
        [l0, l1, l2, SETTINGS, 0, 0, 0, 0, 0, ..] => {
            let len = u32::from_be_bytes([0, *l0, *l1, *l2]);
            len.is_multiple_of(6) && len <= 6 * 16
        }
        _ => false,
    }
}

/// The frames a read or write holds, named (`SETTINGS HEADERS#1 DATA#1+end`), when it is a run of
/// HTTP/2 frames from its first byte (the preface allowed first): for `tracewire capture`.
pub fn describe(payload: &[u8]) -> Option<String> {
    const NAMES: [&str; 10] = [
        "DATA",
        "HEADERS",
        "PRIORITY",
        "RST_STREAM",
        "SETTINGS",
        "PUSH_PROMISE",
        "PING",
        "GOAWAY",
        "WINDOW_UPDATE",
        "CONTINUATION",
    ];
    let mut parts: Vec<String> = Vec::new();
    let mut p = payload;
    if let Some(rest) = p.strip_prefix(&PREFACE[..]) {
        parts.push("preface".into());
        p = rest;
    }
    while !p.is_empty() {
        if parts.len() == 8 {
            parts.push("...".into());
            break;
        }
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3, ..] = *p else {
            return None;
        };
        let name = NAMES.get(kind as usize)?;
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        let mut part = if stream != 0 { format!("{name}#{stream}") } else { name.to_string() };
        if flags & END_STREAM != 0 && matches!(kind, DATA | HEADERS) {
            part.push_str("+end");
        } else if flags & 1 != 0 && matches!(kind, SETTINGS | PING) {
            part.push_str("+ack");
        }
        parts.push(part);
        let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        // The last frame may go on beyond the bytes captured.
        p = p.get(FRAME_HEADER + len..).unwrap_or_default();
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// What a direction's frames say, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A complete header block, to be decoded now (the HPACK table changes with each). A
    /// PUSH_PROMISE's block (`promise`) is the request of a stream the server starts;
    /// `began_earlier`: its first bytes came in an earlier feed.
    Headers { stream: u32, end_stream: bool, promise: bool, began_earlier: bool, block: &'a [u8] },
    /// A DATA frame ended.
    Data { stream: u32, end_stream: bool },
    /// A stream was reset (RST_STREAM), with its error code.
    Reset { stream: u32, code: u32 },
    /// The connection is going away: streams above `last_stream` were not processed.
    GoAway { last_stream: u32, code: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
    /// Payload bytes kept (the rest is counted).
    keep: u32,
}

/// One direction's framing.
#[derive(Debug)]
pub struct Framer {
    /// Preface bytes still expected before the first frame.
    preface: u8,
    head: [u8; FRAME_HEADER],
    have: u8,
    frame: Option<Frame>,
    /// Payload bytes of the current frame not yet seen.
    left: u32,
    /// Kept payload of the current frame.
    kept: Vec<u8>,
    /// The header block being assembled.
    block: Vec<u8>,
    block_stream: u32,
    block_end_stream: bool,
    block_promise: bool,
    /// A header block is open: only its CONTINUATION frames may follow.
    continuing: bool,
    /// The frame header or header block in progress began in an earlier feed.
    carried: bool,
    lost: Option<&'static str>,
}

impl Framer {
    /// The client's direction (starts with the preface) or the server's.
    pub fn new(client: bool) -> Framer {
        Framer {
            preface: if client { PREFACE.len() as u8 } else { 0 },
            head: [0; FRAME_HEADER],
            have: 0,
            frame: None,
            left: 0,
            kept: Vec::new(),
            block: Vec::new(),
            block_stream: 0,
            block_end_stream: false,
            block_promise: false,
            continuing: false,
            carried: false,
            lost: None,
        }
    }

    /// Why the direction can no longer be read, once it cannot.
    pub fn lost(&self) -> Option<&'static str> {
        self.lost
    }

    /// Whether the bytes fed so far end inside a frame header or a header block: what the
    /// next feed completes may have begun here.
    pub fn mid_headers(&self) -> bool {
        self.continuing
            || self.have > 0
            || self.frame.is_some_and(|f| matches!(f.kind, HEADERS | PUSH_PROMISE | CONTINUATION))
    }

    fn lose(&mut self, why: &'static str) {
        if self.lost.is_none() {
            self.lost = Some(why);
            self.kept = Vec::new();
            self.block = Vec::new();
        }
    }

    /// Feeds one read or write: `data` captured, then `gap` bytes that were not.
    pub fn feed(&mut self, mut data: &[u8], mut gap: u64, out: &mut impl FnMut(Item<'_>)) {
        self.carried = self.mid_headers();
        while !data.is_empty() && self.lost.is_none() {
            if self.preface > 0 {
                let from = PREFACE.len() - self.preface as usize;
                let n = data.len().min(self.preface as usize);
                if data[..n] != PREFACE[from..from + n] {
                    self.lose("bad_preface");
                    return;
                }
                self.preface -= n as u8;
                data = &data[n..];
                continue;
            }
            let Some(f) = self.frame else {
                let n = data.len().min(FRAME_HEADER - self.have as usize);
                self.head[self.have as usize..self.have as usize + n].copy_from_slice(&data[..n]);
                self.have += n as u8;
                data = &data[n..];
                if self.have as usize == FRAME_HEADER {
                    self.have = 0;
                    self.start_frame(out);
                }
                continue;
            };
            let n = data.len().min(self.left as usize);
            let keep = (f.keep as usize).saturating_sub(self.kept.len()).min(n);
            self.kept.extend_from_slice(&data[..keep]);
            self.left -= n as u32;
            data = &data[n..];
            if self.left == 0 {
                self.end_frame(f, out);
            }
        }
        while gap > 0 && self.lost.is_none() {
            if self.preface > 0 {
                let n = gap.min(u64::from(self.preface));
                self.preface -= n as u8;
                gap -= n;
                continue;
            }
            let Some(f) = self.frame else {
                self.lose("gap_in_frame_header");
                return;
            };
            if self.kept.len() < f.keep as usize {
                self.lose("gap_in_header_block");
                return;
            }
            let n = gap.min(u64::from(self.left));
            self.left -= n as u32;
            gap -= n;
            if self.left == 0 {
                self.end_frame(f, out);
            }
        }
    }

    fn start_frame(&mut self, out: &mut impl FnMut(Item<'_>)) {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let kind = h[3];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if self.continuing && (kind != CONTINUATION || stream != self.block_stream) {
            self.lose("continuation_expected");
            return;
        }
        let keep = match kind {
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                if self.block.len() + len as usize > MAX_BLOCK {
                    self.lose("header_block_too_large");
                    return;
                }
                len
            }
            RST_STREAM => len.min(4),
            GOAWAY => len.min(8),
            _ => 0,
        };
        if !matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
            self.carried = false;
        }
        let f = Frame { len, kind, flags: h[4], stream, keep };
        self.kept.clear();
        self.left = len;
        self.frame = Some(f);
        if len == 0 {
            self.end_frame(f, out);
        }
    }

    fn end_frame(&mut self, f: Frame, out: &mut impl FnMut(Item<'_>)) {
        self.frame = None;
        match f.kind {
            DATA => out(Item::Data { stream: f.stream, end_stream: f.flags & END_STREAM != 0 }),
            HEADERS | PUSH_PROMISE => {
                let Some(fragment) = fragment(&self.kept, f.flags, f.kind == PUSH_PROMISE) else {
                    self.lose("bad_headers_frame");
                    return;
                };
                self.block.clear();
                self.block.extend_from_slice(fragment);
                self.block_stream = f.stream;
                self.block_end_stream = f.flags & END_STREAM != 0;
                self.block_promise = f.kind == PUSH_PROMISE;
                self.end_block(f.flags, out);
            }
            CONTINUATION => {
                if !self.continuing {
                    self.lose("continuation_unexpected");
                    return;
                }
                self.block.extend_from_slice(&self.kept);
                self.end_block(f.flags, out);
            }
            RST_STREAM if f.len == 4 && self.kept.len() == 4 => {
                let code = u32::from_be_bytes([self.kept[0], self.kept[1], self.kept[2], self.kept[3]]);
                out(Item::Reset { stream: f.stream, code });
            }
            GOAWAY if self.kept.len() == 8 => {
                let k = &self.kept;
                let last_stream = u32::from_be_bytes([k[0], k[1], k[2], k[3]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([k[4], k[5], k[6], k[7]]);
                out(Item::GoAway { last_stream, code });
            }
            _ => {}
        }
    }

    fn end_block(&mut self, flags: u8, out: &mut impl FnMut(Item<'_>)) {
        if flags & END_HEADERS == 0 {
            self.continuing = true;
            return;
        }
        self.continuing = false;
        let began_earlier = std::mem::take(&mut self.carried);
        out(Item::Headers {
            stream: self.block_stream,
            end_stream: self.block_end_stream,
            promise: self.block_promise,
            began_earlier,
            block: &self.block,
        });
        // A rare large block does not keep its buffers for the connection's life.
        if self.block.capacity() > KEEP_CAPACITY {
            self.block = Vec::new();
            self.kept = Vec::new();
        }
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: without its padding, its
/// priority fields or its promised stream id.
fn fragment(payload: &[u8], flags: u8, promise: bool) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if promise {
        p = p.get(4..)?;
    } else if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// A direction's HPACK decoding state.
#[derive(Debug)]
pub struct Table {
    decoder: Decoder,
}

impl Default for Table {
    fn default() -> Self {
        Table { decoder: Decoder::new(MAX_TABLE) }
    }
}

/// What a header block says that spans use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub method: Option<String>,
    pub path: Option<String>,
    /// `:authority` (or `host`).
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub status: Option<u16>,
    /// `content-type: application/grpc...`.
    pub grpc: bool,
    /// `grpc-status` (in trailers, or a trailers-only response).
    pub grpc_status: Option<i64>,
    pub user_agent: Option<String>,
    pub traceparent: Vec<Vec<u8>>,
    pub tracestate: Option<Vec<u8>>,
}

/// Longest value kept of a field (`:path` gets the request target's limit).
const MAX_VALUE: usize = 256;
const MAX_PATH: usize = 2048;

fn text(v: &[u8], max: usize) -> Option<String> {
    let s = std::str::from_utf8(v.trim_ascii()).ok()?;
    let end = if s.len() <= max { s.len() } else { s.char_indices().nth(max).map_or(s.len(), |(i, _)| i) };
    Some(s[..end].to_string())
}

impl Table {
    /// Decodes a header block: every block of the direction must be decoded, in order.
    pub fn decode(&mut self, block: &[u8]) -> Result<Fields, HpackError> {
        let mut f = Fields::default();
        self.decoder.decode(block, |name, v| match name {
            b":method" => f.method = text(v, MAX_VALUE),
            b":path" => f.path = text(v, MAX_PATH),
            b":authority" => f.authority = text(v, MAX_VALUE),
            b"host" if f.authority.is_none() => f.authority = text(v, MAX_VALUE),
            b":scheme" => f.scheme = text(v, MAX_VALUE),
            b":status" => f.status = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
            b"content-type" => f.grpc = v.starts_with(b"application/grpc"),
            b"grpc-status" => f.grpc_status = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
            b"user-agent" => f.user_agent = text(v, MAX_VALUE),
            b"traceparent" => f.traceparent.push(v.to_vec()),
            b"tracestate" => {
                let ts = f.tracestate.get_or_insert_with(Vec::new);
                if !ts.is_empty() {
                    ts.push(b',');
                }
                ts.extend_from_slice(v);
            }
            _ => {}
        })?;
        Ok(f)
    }
}

/// gRPC's status code names (`error.type` of a failed call).
pub fn grpc_code_name(code: i64) -> Cow<'static, str> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    match usize::try_from(code).ok().and_then(|i| NAMES.get(i)) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(code.to_string()),
    }
}

/// The gRPC status of a call its stream's reset ended (gRPC's HTTP/2 mapping: a cancel is
/// CANCELLED, a refused stream UNAVAILABLE, the rest INTERNAL).
pub fn grpc_status_of_reset(code: u32) -> i64 {
    match code {
        CANCEL => 1,
        REFUSED_STREAM => 14,
        ENHANCE_YOUR_CALM => 8,
        INADEQUATE_SECURITY => 7,
        _ => 13,
    }
}

/// Whether a gRPC status makes a server span an error (the semantic conventions: the codes
/// that say the server failed, not the caller).
pub fn grpc_server_error(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's bytes.
    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn items(framer: &mut Framer, data: &[u8], gap: u64) -> Vec<String> {
        let mut out = Vec::new();
        framer.feed(data, gap, &mut |i| out.push(format!("{i:?}")));
        out
    }

    #[test]
    fn frames_are_cut_out_of_any_split_of_the_stream() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode([(&b":method"[..], &b"POST"[..]), (b":path", b"/a.B/C")]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        // Padded, with priority, split across a CONTINUATION.
        let mut payload = vec![2];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block[..3]);
        payload.extend_from_slice(&[0, 0]);
        let block_at = wire.len();
        wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, &block[3..]));
        let block_end = wire.len();
        wire.extend(frame(DATA, END_STREAM, 1, b"hello"));
        wire.extend(frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()));
        wire.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0, b'x']));
        let whole = items(&mut Framer::new(true), &wire, 0);
        assert_eq!(whole.len(), 4, "{whole:?}");
        assert!(whole[0].starts_with("Headers { stream: 1, end_stream: false, promise: false"));
        assert_eq!(whole[1], "Data { stream: 1, end_stream: true }");
        assert_eq!(whole[2], "Reset { stream: 1, code: 8 }");
        assert_eq!(whole[3], "GoAway { last_stream: 1, code: 0 }");
        let mut t = Table::default();
        let mut got = None;
        Framer::new(true).feed(&wire, 0, &mut |i| {
            if let Item::Headers { block, .. } = i {
                got = Some(t.decode(block));
            }
        });
        let f = got.and_then(Result::ok).unwrap_or_default();
        assert_eq!((f.method.as_deref(), f.path.as_deref()), (Some("POST"), Some("/a.B/C")));
        // Every two-way split gives the same items; a header block split says it began in the
        // earlier feed.
        for at in 0..wire.len() {
            let mut fr = Framer::new(true);
            let mut got = items(&mut fr, &wire[..at], 0);
            got.extend(items(&mut fr, &wire[at..], 0));
            let split = block_at < at && at < block_end;
            assert_eq!(got[0].contains("began_earlier: true"), split, "split at {at}");
            got[0] = got[0].replace("began_earlier: true", "began_earlier: false");
            assert_eq!(got, whole, "split at {at}");
        }
    }

    #[test]
    fn bytes_left_out_of_bodies_are_skipped_and_elsewhere_lose_the_direction() {
        let mut wire = frame(DATA, 0, 1, &[7; 100]);
        wire.extend(frame(DATA, END_STREAM, 1, b"ok"));
        // 40 bytes of the first body captured, the rest counted.
        let mut fr = Framer::new(false);
        let mut got = items(&mut fr, &wire[..49], 60);
        got.extend(items(&mut fr, &wire[109..], 0));
        assert_eq!(got, ["Data { stream: 1, end_stream: false }", "Data { stream: 1, end_stream: true }"]);
        assert_eq!(fr.lost(), None);
        // A gap over the next frame's header.
        let mut fr = Framer::new(false);
        items(&mut fr, &wire[..109], 3);
        assert_eq!(fr.lost(), Some("gap_in_frame_header"));
        // A gap inside a header block.
        let mut fr = Framer::new(false);
        items(&mut fr, &frame(HEADERS, END_HEADERS, 1, &[0x88; 20])[..15], 14);
        assert_eq!(fr.lost(), Some("gap_in_header_block"));
    }

    #[test]
    fn frames_out_of_sequence_lose_the_direction() {
        let mut fr = Framer::new(false);
        let mut wire = frame(HEADERS, 0, 1, &[0x88]);
        wire.extend(frame(DATA, 0, 1, b"x"));
        items(&mut fr, &wire, 0);
        assert_eq!(fr.lost(), Some("continuation_expected"));
        let mut fr = Framer::new(false);
        items(&mut fr, &frame(CONTINUATION, END_HEADERS, 1, &[0x88]), 0);
        assert_eq!(fr.lost(), Some("continuation_unexpected"));
        let mut fr = Framer::new(true);
        items(&mut fr, b"GET / HTTP/1.1\r\n", 0);
        assert_eq!(fr.lost(), Some("bad_preface"));
        let mut fr = Framer::new(false);
        items(&mut fr, &frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x88]), 0);
        assert_eq!(fr.lost(), Some("bad_headers_frame"));
        let mut fr = Framer::new(false);
        items(&mut fr, &[0x02, 0, 0, HEADERS, 0, 0, 0, 0, 1], 0);
        assert_eq!(fr.lost(), Some("header_block_too_large"));
    }

    #[test]
    fn the_dynamic_table_carries_fields_from_block_to_block() {
        let mut enc = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":status", b"200"),
            (b"content-type", b"application/grpc+proto"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ];
        let first = enc.encode(headers.iter().copied());
        let second = enc.encode(headers.iter().copied());
        assert!(second.len() < first.len(), "the encoder indexed the fields");
        let mut t = Table::default();
        let a = t.decode(&first).unwrap_or_default();
        let b = t.decode(&second).unwrap_or_default();
        assert_eq!(a, b);
        assert!(b.grpc && b.status == Some(200) && b.traceparent.len() == 1);
        // A block that names an index the table does not have (its first was not seen).
        assert!(Table::default().decode(&second).is_err());
        // A size update beyond the limit.
        assert!(Table::default().decode(&[0x3f, 0xe1, 0xff, 0x07]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_framer_or_the_decoder() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            let _ = Table::default().decode(&bytes);
            let mut fr = Framer::new(rng.bool());
            let mut t = Table::default();
            fr.feed(&bytes, rng.u64(0..100), &mut |i| {
                if let Item::Headers { block, .. } = i {
                    let _ = t.decode(block);
                }
            });
        }
    }

    #[test]
    fn captures_name_their_frames() {
        let mut w = PREFACE.to_vec();
        w.extend(frame(SETTINGS, 0, 0, &[]));
        w.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82]));
        w.extend(frame(DATA, 0, 3, &[0; 100])[..20].iter());
        assert_eq!(describe(&w).as_deref(), Some("preface SETTINGS HEADERS#1+end DATA#3"));
        assert_eq!(describe(&frame(SETTINGS, 1, 0, &[])).as_deref(), Some("SETTINGS+ack"));
        assert_eq!(describe(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(describe(&[0, 0, 0, 4]), None, "a cut frame header");
    }

    #[test]
    fn a_server_is_recognised_from_its_settings() {
        assert!(starts_server_preface(&frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])));
        assert!(starts_server_preface(&frame(SETTINGS, 0, 0, &[])));
        assert!(!starts_server_preface(&frame(SETTINGS, 1, 0, &[])), "an acknowledgement");
        assert!(!starts_server_preface(&frame(SETTINGS, 0, 0, &[0, 3, 0])));
        assert!(!starts_server_preface(&frame(HEADERS, 4, 1, &[0x88])));
        assert!(!starts_server_preface(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn the_preface_is_recognised_from_its_first_bytes() {
        assert!(starts_preface(b"PRI"));
        assert!(starts_preface(PREFACE));
        assert!(starts_preface(&[&PREFACE[..], b"\0\0\0\x04"].concat()));
        assert!(!starts_preface(b"PR"));
        assert!(!starts_preface(b"PRINT / HTTP/1.1"));
        assert!(!starts_preface(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn grpc_codes_have_names_and_resets_map_to_statuses() {
        assert_eq!(grpc_code_name(14), "UNAVAILABLE");
        assert_eq!(grpc_code_name(99), "99");
        assert_eq!(grpc_status_of_reset(CANCEL), 1);
        assert_eq!(grpc_status_of_reset(0), 13);
        assert!(grpc_server_error(13) && !grpc_server_error(5));
    }
}
