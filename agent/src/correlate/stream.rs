//! One direction of one connection: bytes in, HTTP/1 messages out.
//!
//! Data arrives as (captured prefix, count of bytes not captured) per syscall. Heads are parsed
//! from captured bytes; bodies are skipped by counting, so a truncated capture still frames
//! messages correctly as long as the heads were captured. A head cut by the capture cap is parsed
//! from its first line and the message then ends when the other direction speaks (or the
//! connection closes). Garbage is reported and the stream resynchronises at the next plausible
//! message start. Nothing here allocates in proportion to a declared length.
use crate::protocol::http1::{
    self, Framing, Parsed, RequestHead, ResponseHead, looks_like_request, looks_like_response,
};

/// Which messages this stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Requests (server ingress, client egress).
    Request,
    /// Responses (server egress, client ingress).
    Response,
}

/// Largest head accumulated across reads before it is declared invalid.
pub const MAX_HEAD: usize = 64 * 1024;

/// Where and when a message started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Wall-clock ns of the message's first byte.
    pub start_ns: u64,
    /// Thread that read or wrote it.
    pub tid: u32,
    /// For client requests: the server connection the thread was serving (see `DataEvent`).
    pub thread_ctx: tracewire_common::ConnId,
    /// Trace context the kernel minted for the turn the message started in.
    pub kctx: tracewire_common::TraceCtx,
}

/// What the stream reports to its connection.
pub trait Sink {
    /// A request head; returns its body framing.
    fn request(&mut self, head: RequestHead, meta: Meta, head_truncated: bool) -> Framing;
    /// A response head; returns its body framing (depends on the request it answers).
    fn response(&mut self, head: ResponseHead, meta: Meta, head_truncated: bool) -> Framing;
    /// The current message ended at `end_ns`.
    fn end(&mut self, side: Side, end_ns: u64);
    /// Bytes that are not a valid message (reason for the counter).
    fn invalid(&mut self, side: Side, reason: &'static str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data: bytes left.
    Data(u64),
    /// The CRLF after chunk data: bytes left.
    DataEnd(u8),
    /// Trailer section after the last chunk.
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages or inside a head.
    Head,
    /// Body bytes left.
    Body(u64),
    /// Chunked body.
    Chunked(Chunk),
    /// Unframed: ends when the other direction speaks or the connection closes.
    UntilEnd,
    /// Tunnel (upgrade, CONNECT): nothing more is parsed.
    Stopped,
}

/// One direction's reassembly state.
#[derive(Debug)]
pub struct Stream {
    side: Side,
    state: State,
    /// Head bytes (or a chunk-size / trailer line) accumulated across reads.
    buf: Vec<u8>,
    meta: Meta,
    last_ns: u64,
}

impl Stream {
    /// A stream carrying `side` messages.
    pub fn new(side: Side) -> Self {
        Stream { side, state: State::Head, buf: Vec::new(), meta: Meta::default(), last_ns: 0 }
    }

    /// True while a message is in progress.
    pub fn in_message(&self) -> bool {
        !matches!(self.state, State::Head | State::Stopped) || !self.buf.is_empty()
    }

    /// Wall-clock ns of the last byte seen.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    /// The stream is a tunnel from now on.
    pub fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
    }

    /// Bytes were left out (requests that were not sampled): whatever was in progress is
    /// abandoned and the next bytes start a message.
    pub fn reset(&mut self) {
        if self.state != State::Stopped {
            self.state = State::Head;
            self.buf.clear();
        }
    }

    /// Whether the stream stopped parsing.
    pub fn stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The other direction spoke, or the connection closed: an unframed message ends at the last
    /// byte seen.
    pub fn finish(&mut self, sink: &mut impl Sink) {
        if self.state == State::UntilEnd {
            sink.end(self.side, self.last_ns);
            self.state = State::Head;
        }
    }

    /// Feeds one syscall's bytes: `data` captured, then `gap` bytes that were not.
    pub fn feed(&mut self, data: &[u8], mut gap: u64, meta: Meta, end_ns: u64, sink: &mut impl Sink) {
        self.last_ns = end_ns;
        // Bytes that follow a parsed head in the same buffer are handled on the next turn.
        let mut owned: Vec<u8>;
        let mut data = data;
        loop {
            match self.state {
                State::Stopped => return,
                State::UntilEnd => return,
                State::Body(left) => {
                    let take_data = (data.len() as u64).min(left);
                    data = &data[take_data as usize..];
                    let mut left = left - take_data;
                    let take_gap = gap.min(left);
                    gap -= take_gap;
                    left -= take_gap;
                    if left > 0 {
                        self.state = State::Body(left);
                        return;
                    }
                    sink.end(self.side, end_ns);
                    self.state = State::Head;
                }
                State::Chunked(chunk) => match self.chunked(chunk, &mut data, &mut gap) {
                    Ok(true) => {
                        sink.end(self.side, end_ns);
                        self.state = State::Head;
                    }
                    Ok(false) => return,
                    Err(reason) => {
                        // Framing lost (bad size, or sizes in uncaptured bytes): the message
                        // ends when the other side speaks or the connection closes.
                        sink.invalid(self.side, reason);
                        self.buf.clear();
                        self.state = State::UntilEnd;
                        return;
                    }
                },
                State::Head => {
                    if data.is_empty() {
                        if gap > 0 && self.buf.is_empty() {
                            // Uncaptured bytes where a message should start: cannot frame them.
                            sink.invalid(self.side, "uncaptured_message_start");
                        } else if gap > 0 {
                            self.truncated_head(sink);
                        }
                        return;
                    }
                    if self.buf.is_empty() {
                        let start = self.find_start(data);
                        match start {
                            Some(0) => {}
                            Some(i) => {
                                sink.invalid(self.side, "garbage_before_message");
                                data = &data[i..];
                            }
                            None => {
                                sink.invalid(self.side, "not_http");
                                return;
                            }
                        }
                        self.meta = meta;
                        // The usual case, a whole head in one read: parsed where it lies. Only a
                        // head split across reads (or invalid bytes) is copied into `buf`.
                        let parsed = match self.side {
                            Side::Request => http1::parse_request(data).map(|h| sink.request(h, meta, false)),
                            Side::Response => {
                                http1::parse_response(data).map(|h| sink.response(h, meta, false))
                            }
                        };
                        if let Parsed::Complete(framing, n) = parsed {
                            self.enter(framing);
                            data = &data[n..];
                            if self.state == State::Head {
                                // No body: the message ended with its head.
                                sink.end(self.side, end_ns);
                            }
                            continue;
                        }
                    }
                    if self.buf.len() + data.len() > MAX_HEAD {
                        sink.invalid(self.side, "head_too_large");
                        self.buf.clear();
                        return;
                    }
                    self.buf.extend_from_slice(data);
                    data = &[];
                    let meta = self.meta;
                    let parsed = match self.side {
                        Side::Request => {
                            http1::parse_request(&self.buf).map(|h| sink.request(h, meta, false))
                        }
                        Side::Response => {
                            http1::parse_response(&self.buf).map(|h| sink.response(h, meta, false))
                        }
                    };
                    let consumed = match parsed {
                        Parsed::Complete(framing, n) => {
                            self.enter(framing);
                            Some(n)
                        }
                        Parsed::Partial => None,
                        Parsed::Invalid(reason) => {
                            sink.invalid(self.side, reason);
                            self.resync();
                            continue;
                        }
                    };
                    match consumed {
                        Some(n) => {
                            owned = self.buf.split_off(n);
                            self.buf.clear();
                            data = &owned;
                            if self.state == State::Head {
                                // No body: the message ended with its head.
                                sink.end(self.side, end_ns);
                            }
                        }
                        None if gap > 0 => {
                            self.truncated_head(sink);
                            return;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    fn enter(&mut self, framing: Framing) {
        self.state = match framing {
            Framing::None => State::Head,
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilEnd,
        };
    }

    /// A head that continues into uncaptured bytes: report what its first line says, then treat
    /// the message as unframed.
    fn truncated_head(&mut self, sink: &mut impl Sink) {
        let line_end = self.buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(self.buf.len());
        let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let mut parts = line.splitn(3, ' ');
        let (a, b, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        match self.side {
            Side::Request if c.starts_with("HTTP/1.") => {
                let head = RequestHead {
                    method: a.to_string().into(),
                    target: b.chars().take(2048).collect(),
                    minor: u8::from(c == "HTTP/1.1"),
                    ..RequestHead::default()
                };
                sink.request(head, self.meta, true);
                self.state = State::UntilEnd;
            }
            Side::Response if a.starts_with("HTTP/1.") && b.len() == 3 && b.parse::<u16>().is_ok() => {
                let head = ResponseHead {
                    status: b.parse().unwrap_or(0),
                    minor: u8::from(a == "HTTP/1.1"),
                    ..ResponseHead::default()
                };
                sink.response(head, self.meta, true);
                self.state = State::UntilEnd;
            }
            _ => sink.invalid(self.side, "truncated_unparseable_head"),
        }
        self.buf.clear();
    }

    fn find_start(&self, data: &[u8]) -> Option<usize> {
        let ok = |d: &[u8]| match self.side {
            Side::Request => looks_like_request(d),
            Side::Response => looks_like_response(d),
        };
        if ok(data) {
            return Some(0);
        }
        // Resynchronise at the next line that starts like a message.
        (1..data.len()).find(|&i| data[i - 1] == b'\n' && ok(&data[i..]))
    }

    /// After an invalid head: keep looking from the next line start in the buffer.
    fn resync(&mut self) {
        let next = (1..self.buf.len()).find(|&i| {
            self.buf[i - 1] == b'\n'
                && match self.side {
                    Side::Request => looks_like_request(&self.buf[i..]),
                    Side::Response => looks_like_response(&self.buf[i..]),
                }
        });
        match next {
            Some(i) => {
                self.buf.drain(..i);
            }
            None => self.buf.clear(),
        }
    }

    /// Advances a chunked body: Ok(true) complete, Ok(false) needs more, Err(reason) framing lost.
    fn chunked(&mut self, mut chunk: Chunk, data: &mut &[u8], gap: &mut u64) -> Result<bool, &'static str> {
        loop {
            match chunk {
                Chunk::Data(left) => {
                    let take = (data.len() as u64).min(left);
                    *data = &data[take as usize..];
                    let mut left = left - take;
                    let tg = (*gap).min(left);
                    *gap -= tg;
                    left -= tg;
                    if left > 0 {
                        self.state = State::Chunked(Chunk::Data(left));
                        return Ok(false);
                    }
                    chunk = Chunk::DataEnd(2);
                }
                Chunk::DataEnd(left) => {
                    let take = data.len().min(left as usize);
                    *data = &data[take..];
                    let left = left - take as u8;
                    if left > 0 {
                        if *gap > 0 {
                            return Err("chunk_framing_uncaptured");
                        }
                        self.state = State::Chunked(Chunk::DataEnd(left));
                        return Ok(false);
                    }
                    chunk = Chunk::Size;
                }
                Chunk::Size | Chunk::Trailer => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        if *gap > 0 {
                            return Err("chunk_framing_uncaptured");
                        }
                        if self.buf.len() + data.len() > 1024 {
                            return Err("chunk_line_too_long");
                        }
                        self.buf.extend_from_slice(data);
                        *data = &[];
                        self.state = State::Chunked(chunk);
                        return Ok(false);
                    };
                    self.buf.extend_from_slice(&data[..nl]);
                    *data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches('\r');
                    if chunk == Chunk::Trailer {
                        if line.is_empty() {
                            return Ok(true);
                        }
                        continue;
                    }
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    let Ok(size) = u64::from_str_radix(size_str, 16) else {
                        return Err("bad_chunk_size");
                    };
                    chunk = if size == 0 { Chunk::Trailer } else { Chunk::Data(size) };
                }
            }
        }
    }
}
