//! Span records → OTLP protobuf bytes, directly.
//!
//! The same bytes as building the `opentelemetry-proto` messages ([`super::transform`]) and
//! encoding them with prost, without the intermediate messages: no per-attribute key and value
//! strings, no id vectors, and every length computed once (prost computes a nested message's
//! length again at each level it is nested in). The unit test holds the two byte for byte.
use std::{mem::MaybeUninit, sync::Arc};

use hyper::body::Bytes;

use super::transform::{FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE};
use crate::{
    correlate::span::{Kind, SpanRecord, Value},
    metadata::ProcessInfo,
};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field (string, bytes or an already encoded message).
fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A message field whose content is written by `f` (into `scratch`, then framed into `buf`).
fn message(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    f(scratch);
    bytes(buf, field, scratch);
}

/// A message field whose content `f` writes straight into `buf`, after room for a `guess`-byte
/// length: the content is moved (once) only when its length takes another number of bytes.
/// Encoding into a scratch buffer and copying it in would move every byte at every level.
fn message_in_place(buf: &mut Vec<u8>, field: u32, guess: usize, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + guess, 0);
    f(buf);
    let n = buf.len() - at - guess;
    let need = len_varint(n as u64);
    if need < guess {
        buf.drain(at + need..at + guess);
    } else if need > guess {
        buf.splice(at + guess..at + guess, std::iter::repeat_n(0, need - guess));
    }
    let mut v = n as u64;
    for (i, b) in buf[at..at + need].iter_mut().enumerate() {
        *b = (v & 0x7f) as u8 | if i + 1 < need { 0x80 } else { 0 };
        v >>= 7;
    }
}

/// Appends what `f` writes through a cursor over `room` bytes, at most, to `buf`. The room is
/// `buf`'s spare capacity, not zeroed first: the cursor writes every byte it moves past.
fn with_room(buf: &mut Vec<u8>, room: usize, f: impl FnOnce(&mut Cursor<'_>)) {
    buf.reserve(room);
    let start = buf.len();
    let mut c = Cursor { b: &mut buf.spare_capacity_mut()[..room], at: 0 };
    f(&mut c);
    let written = c.at;
    // SAFETY: the cursor only advances past bytes it has written (every write in `Cursor` is a
    // store into `b[at..]` followed by moving `at` by its length), so `buf[start..start +
    // written]` is initialised; `written <= room <= capacity - start` (indexing checks it).
    unsafe { buf.set_len(start + written) };
}

/// `KeyValue { key, value: AnyValue { string_value | int_value } }`, appended to `buf`.
fn attribute(buf: &mut Vec<u8>, field: u32, k: &str, v: AttrValue<'_>) {
    with_room(buf, ATTR_OVERHEAD + k.len() + v.len(), |c| c.attribute(field, k, v));
}

/// The lengths of an attribute's `AnyValue` and of its `KeyValue`, as they are framed.
fn attribute_lengths(k: &str, v: AttrValue<'_>) -> (usize, usize) {
    let inner = match v {
        AttrValue::Str(s) => 1 + len_varint(s.len() as u64) + s.len(),
        // A oneof member is written even when it holds its default.
        AttrValue::Int(i) => 1 + len_varint(i as u64),
    };
    let kv_len = if k.is_empty() { 0 } else { 1 + len_varint(k.len() as u64) + k.len() }
        + 1
        + len_varint(inner as u64)
        + inner;
    (inner, kv_len)
}

/// Bytes an attribute takes beyond its key and string value, at most: four tags and four
/// varints of up to ten bytes each (an int value is one of them).
const ATTR_OVERHEAD: usize = 48;

/// Writes into a region sized beforehand for everything written (each caller bounds its content
/// from the lengths it writes): a store per byte, without the capacity check and length update
/// `Vec::push` makes for every one. Encoding a span was mostly those.
struct Cursor<'a> {
    b: &'a mut [MaybeUninit<u8>],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self, v: u8) {
        self.b[self.at].write(v);
        self.at += 1;
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// Copies `s` here.
    #[inline(always)]
    fn slice(&mut self, s: &[u8]) {
        copy_short(&mut self.b[self.at..self.at + s.len()], s);
        self.at += s.len();
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, FIXED64);
        self.slice(&v.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        self.key(field, FIXED32);
        self.slice(&v.to_le_bytes());
    }

    /// A length-delimited field.
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.slice(b);
    }

    /// A proto3 string or bytes field: left out when empty.
    fn opt_bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.bytes(field, b);
        }
    }

    #[inline]
    fn attribute(&mut self, field: u32, k: &str, v: AttrValue<'_>) {
        let (kb, kl) = (k.as_bytes(), k.len());
        if let AttrValue::Str(sv) = v {
            // Nearly every attribute: a string value, and every tag and length one byte (the
            // whole attribute is under 128), so its lengths add up without varints and the
            // region is checked once.
            let (sb, sl) = (sv.as_bytes(), sv.len());
            let kv_len = 6 + kl + sl;
            if field < 16 && kv_len < 0x80 && kl != 0 {
                let d = &mut self.b[self.at..self.at + 2 + kv_len];
                d[..4].write_copy_of_slice(&[
                    (field << 3 | LEN) as u8,
                    kv_len as u8,
                    1 << 3 | LEN as u8,
                    kl as u8,
                ]);
                copy_short(&mut d[4..4 + kl], kb);
                d[4 + kl..8 + kl].write_copy_of_slice(&[
                    2 << 3 | LEN as u8,
                    (2 + sl) as u8,
                    1 << 3 | LEN as u8,
                    sl as u8,
                ]);
                copy_short(&mut d[8 + kl..], sb);
                self.at += 2 + kv_len;
                return;
            }
        }
        let (inner, kv_len) = attribute_lengths(k, v);
        if let AttrValue::Int(i) = v
            && field < 16
            && kv_len < 0x80
            && kl != 0
        {
            self.slice(&[(field << 3 | LEN) as u8, kv_len as u8, 1 << 3 | LEN as u8, kl as u8]);
            self.slice(kb);
            self.slice(&[2 << 3 | LEN as u8, inner as u8, 3 << 3 | VARINT as u8]);
            self.varint(i as u64);
            return;
        }
        self.key(field, LEN);
        self.varint(kv_len as u64);
        self.opt_bytes(1, k.as_bytes());
        self.key(2, LEN);
        self.varint(inner as u64);
        match v {
            AttrValue::Str(s) => self.bytes(1, s.as_bytes()),
            AttrValue::Int(i) => {
                self.key(3, VARINT);
                self.varint(i as u64);
            }
        }
    }
}

/// `s` into `d` (as long). A span's strings are short (keys, methods, addresses, paths): up to
/// 32 bytes move as two overlapping fixed-size copies, inline, where a call into memcpy would
/// cost as much in its call and size dispatch as the copy itself.
#[inline(always)]
fn copy_short(d: &mut [MaybeUninit<u8>], s: &[u8]) {
    let n = s.len();
    match n {
        0 => {}
        1..=3 => {
            d[0].write(s[0]);
            d[n / 2].write(s[n / 2]);
            d[n - 1].write(s[n - 1]);
        }
        4..=7 => overlapping::<4>(d, s),
        8..=15 => overlapping::<8>(d, s),
        16..=32 => overlapping::<16>(d, s),
        _ => {
            d.write_copy_of_slice(s);
        }
    }
}

/// `s` (N to 2N bytes) into `d` (as long): its first and last N bytes, which overlap unless
/// the length is exactly 2N. Fixed sizes compile to plain loads and stores.
#[inline(always)]
fn overlapping<const N: usize>(d: &mut [MaybeUninit<u8>], s: &[u8]) {
    let n = s.len();
    d[..N].write_copy_of_slice(&s[..N]);
    d[n - N..].write_copy_of_slice(&s[n - N..]);
}

#[derive(Clone, Copy)]
enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
}

impl AttrValue<'_> {
    /// Bytes of a string value (an int's are in `ATTR_OVERHEAD`).
    fn len(&self) -> usize {
        match self {
            AttrValue::Str(s) => s.len(),
            AttrValue::Int(_) => 0,
        }
    }
}

impl<'a> From<&'a Value> for AttrValue<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Str(x) => AttrValue::Str(x),
            Value::Int(i) => AttrValue::Int(*i),
        }
    }
}

fn len_varint(v: u64) -> usize {
    // Nearly every length in a span is under 128: one predicted branch instead of the count,
    // multiply and shift, several times per attribute.
    if v < 0x80 {
        return 1;
    }
    // 1 byte per 7 bits.
    (64 - v.leading_zeros() as usize).div_ceil(7)
}

/// The link attribute every span link carries.
const LINK_ATTR: (&str, AttrValue<'static>) = ("tracewire.link", AttrValue::Str("candidate_parent"));

/// Bytes a `Span` message's content takes, at most: what [`span`] writes, with every varint
/// counted at its longest.
fn span_bound(s: &SpanRecord) -> usize {
    // Ids, parent, kind, times, status, flags: their tags and lengths.
    const FIXED: usize = 160;
    const LINK: usize = 2 + 10 + 18 + 10 + ATTR_OVERHEAD + 14 + 16 + 5;
    let attrs: usize =
        s.attributes.iter().map(|(k, v)| ATTR_OVERHEAD + k.len() + AttrValue::from(v).len()).sum();
    FIXED
        + 11
        + s.trace_state.as_deref().map_or(0, str::len)
        + 11
        + s.name.len()
        + attrs
        + LINK * s.links.len()
}

/// One `Span` message's content, at the cursor (sized with [`span_bound`]).
fn span(c: &mut Cursor<'_>, s: &SpanRecord) {
    c.bytes(1, &s.trace_id);
    c.bytes(2, &s.span_id);
    c.opt_bytes(3, s.trace_state.as_deref().unwrap_or("").as_bytes());
    if let Some(p) = &s.parent_id {
        c.bytes(4, p);
    }
    c.opt_bytes(5, s.name.as_bytes());
    c.key(6, VARINT);
    c.varint(if s.kind == Kind::Server { SPAN_KIND_SERVER } else { SPAN_KIND_CLIENT });
    for (field, t) in [(7, s.start_ns), (8, s.end_ns)] {
        if t != 0 {
            c.fixed64(field, t);
        }
    }
    for (k, v) in &s.attributes {
        c.attribute(9, k, v.into());
    }
    for (trace_id, span_id) in &s.links {
        let (_, kv_len) = attribute_lengths(LINK_ATTR.0, LINK_ATTR.1);
        let link_len = 2 + trace_id.len() + 2 + span_id.len() + 1 + len_varint(kv_len as u64) + kv_len + 5;
        c.key(13, LEN);
        c.varint(link_len as u64);
        c.bytes(1, trace_id);
        c.bytes(2, span_id);
        c.attribute(4, LINK_ATTR.0, LINK_ATTR.1);
        c.fixed32(6, FLAG_HAS_IS_REMOTE);
    }
    // Never `Ok`: instrumentation leaves success Unset (the specification says so).
    c.key(15, LEN);
    if s.error {
        c.varint(2);
        c.key(3, VARINT);
        c.varint(STATUS_ERROR);
    } else {
        c.varint(0);
    }
    // Fields in tag order, as prost writes them: flags (16) last.
    let mut flags = u32::from(s.flags) | FLAG_HAS_IS_REMOTE;
    if s.parent_remote {
        flags |= FLAG_IS_REMOTE;
    }
    c.fixed32(16, flags);
}

fn resource(buf: &mut Vec<u8>, p: &ProcessInfo) {
    attribute(buf, 1, "service.name", AttrValue::Str(&p.service_name));
    attribute(buf, 1, "process.pid", AttrValue::Int(i64::from(p.pid)));
    for (k, v) in &p.attributes {
        attribute(buf, 1, k, AttrValue::Str(v));
    }
}

/// `ScopeSpans.scope`: this instrumentation's name and version.
fn scope_field(buf: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    message(buf, scratch, 1, |scope| {
        bytes(scope, 1, b"tracewire");
        bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    });
}

/// `ScopeSpans.schema_url`.
fn schema_field(buf: &mut Vec<u8>) {
    bytes(buf, 3, SCHEMA_URL.as_bytes());
}

/// Bytes a batch's length takes (16 KiB to 2 MiB).
const BATCH_LEN_GUESS: usize = 3;
/// Spans a batch makes room for at first unless told (it grows past that by doubling).
const START_SPANS: usize = 256;
/// Encoded bytes a span takes, about.
const SPAN_BYTES: usize = 384;
/// Room made at first, at most: a batch of larger spans grows.
const MAX_START_BYTES: usize = 1 << 20;

/// Bytes kept free before a batch's first span: a one-process batch's request framing and
/// resource are written there when it is sent, so that its spans are not copied into another
/// buffer (a batch is a few hundred KiB, built on another core than the one that sends it).
const HEAD_ROOM: usize = 4096;

/// Spans encoded as they are handed over: the content of the next request. A span record
/// (about a kilobyte with its attributes) is freed as soon as it is encoded, by the thread that
/// made it, and a batch waiting to be sent holds its spans' ~350 encoded bytes each.
#[derive(Default)]
pub struct EncodedSpans {
    /// [`HEAD_ROOM`] bytes (once a span is held), then every span as a `ScopeSpans.spans`
    /// field, in the order they came.
    bytes: Vec<u8>,
    /// Each span's process and where its field starts in `bytes`.
    index: Vec<(u32, u32)>,
    /// Spans to make room for at the first push (0: `START_SPANS`).
    expect: usize,
}

impl EncodedSpans {
    /// An empty batch that makes room for `spans` spans when its first one comes (not before:
    /// an idle exporter holds no buffer), so that a batch of the usual size never grows, which
    /// would copy everything encoded so far.
    pub fn for_batch(spans: usize) -> Self {
        EncodedSpans { expect: spans, ..EncodedSpans::default() }
    }

    /// Encodes `s` after the spans already held.
    pub fn push(&mut self, s: &SpanRecord) {
        let bound = span_bound(s);
        if self.index.is_empty() {
            let spans = if self.expect == 0 { START_SPANS } else { self.expect };
            // And a span's worth more: each is encoded into room for its largest encoding.
            self.bytes.reserve(HEAD_ROOM + (spans * SPAN_BYTES).min(MAX_START_BYTES) + bound);
            self.bytes.resize(HEAD_ROOM, 0);
            self.index.reserve(spans.min(MAX_START_BYTES / SPAN_BYTES));
        }
        // Batches are cut at a few MiB (see the exporter), far below 4 GiB.
        self.index.push((s.pid, self.bytes.len() as u32));
        // `ScopeSpans.spans`, its length guessed as long as the bound's: the content moves back
        // when the actual one takes fewer bytes.
        message_in_place(&mut self.bytes, 2, len_varint(bound as u64), |buf| {
            with_room(buf, bound, |c| span(c, s));
        });
    }

    /// Spans held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of the spans' encoding.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len().saturating_sub(HEAD_ROOM)
    }

    /// The processes whose spans are held, in pid order.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.index.iter().map(|(pid, _)| *pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The `ExportTraceServiceRequest` of these spans, as [`EncodedSpans::request`] writes it.
    /// The spans of one process (the usual batch of a node agent watching a few busy services
    /// is one process's, or a few alternating) are framed where they are: the framing and the
    /// resource go into the room left before them, the schema after them.
    pub fn into_request(mut self, resource_of: &mut dyn FnMut(u32) -> Arc<ProcessInfo>) -> Bytes {
        if let Some(start) = self.frame_in_place(resource_of) {
            return Bytes::from(self.bytes).slice(start..);
        }
        let mut out = Vec::with_capacity(self.encoded_bytes() + 1024);
        self.request(resource_of, &mut out);
        Bytes::from(out)
    }

    /// Writes the request framing and resource of a batch of one process's spans into the room
    /// before them, and the schema after them; returns where the request starts. None (nothing
    /// written) for a batch of several processes, or a resource too large for the room.
    fn frame_in_place(&mut self, resource_of: &mut dyn FnMut(u32) -> Arc<ProcessInfo>) -> Option<usize> {
        let &(pid, _) = self.index.first()?;
        if self.index.iter().any(|(p, _)| *p != pid) {
            return None;
        }
        let mut res = Vec::new();
        resource(&mut res, &resource_of(pid));
        let mut scope = Vec::new();
        scope_field(&mut scope, &mut Vec::new());
        let mut schema = Vec::new();
        schema_field(&mut schema);
        let spans = self.bytes.len() - HEAD_ROOM;
        let ss_len = scope.len() + spans + schema.len();
        let res_field = 1 + len_varint(res.len() as u64) + res.len();
        let rs_len = res_field + 1 + len_varint(ss_len as u64) + ss_len;
        // ExportTraceServiceRequest.resource_spans { resource, scope_spans { scope, spans.. } }
        let mut head = Vec::with_capacity(16 + res_field + scope.len());
        key(&mut head, 1, LEN);
        varint(&mut head, rs_len as u64);
        bytes(&mut head, 1, &res);
        key(&mut head, 2, LEN);
        varint(&mut head, ss_len as u64);
        head.extend_from_slice(&scope);
        let start = HEAD_ROOM.checked_sub(head.len())?;
        self.bytes[start..HEAD_ROOM].copy_from_slice(&head);
        self.bytes.extend_from_slice(&schema);
        Some(start)
    }

    /// The `ExportTraceServiceRequest` of these spans, appended to `out`: one `ResourceSpans`
    /// per process, in pid order, each with its spans in the order they came.
    pub fn request(&self, resource_of: &mut dyn FnMut(u32) -> Arc<ProcessInfo>, out: &mut Vec<u8>) {
        let field = |i: usize| {
            let end = self.index.get(i + 1).map_or(self.bytes.len(), |(_, at)| *at as usize);
            &self.bytes[self.index[i].1 as usize..end]
        };
        // Stable: a process's spans keep their order.
        let mut order: Vec<usize> = (0..self.index.len()).collect();
        if !self.index.is_sorted_by_key(|(pid, _)| *pid) {
            order.sort_by_key(|i| self.index[*i].0);
        }
        let (mut res, mut scratch) = (Vec::new(), Vec::new());
        for run in order.chunk_by(|a, b| self.index[*a].0 == self.index[*b].0) {
            res.clear();
            resource(&mut res, &resource_of(self.index[run[0]].0));
            // ResourceSpans: resource, scope_spans, written straight into `out`.
            message_in_place(out, 1, BATCH_LEN_GUESS, |rs| {
                bytes(rs, 1, &res);
                // ScopeSpans: scope, spans, schema_url.
                message_in_place(rs, 2, BATCH_LEN_GUESS, |ss| {
                    scope_field(ss, &mut scratch);
                    for i in run {
                        ss.extend_from_slice(field(*i));
                    }
                    schema_field(ss);
                });
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{correlate::span::Link, export::transform, metadata::Resources};

    fn records() -> Vec<SpanRecord> {
        let mut a = transform::tests::sample(7);
        let mut b = transform::tests::sample(8);
        b.kind = Kind::Client;
        b.parent_id = None;
        b.parent_remote = false;
        b.trace_state = None;
        b.error = true;
        b.link = Link::Unlinked;
        b.links = vec![([9; 16], [8; 8]), ([7; 16], [6; 8])];
        b.attributes.push(("tracewire.link", Value::Str("unlinked".into())));
        b.attributes.push(("zero", Value::Int(0)));
        b.attributes.push(("negative", Value::Int(-5)));
        b.attributes.push(("big", Value::Int(i64::MAX)));
        b.attributes.push(("empty", Value::Str("".into())));
        a.name = "x".repeat(300).into();
        a.attributes.push(("url.full", Value::Str("y".repeat(200).into())));
        let mut c = transform::tests::sample(7);
        c.start_ns = 0;
        c.name = "".into();
        vec![a, b, c]
    }

    #[test]
    fn the_same_bytes_as_the_prost_messages() {
        let mut res = Resources::new(8);
        res.insert(ProcessInfo {
            service_name: "users".into(),
            attributes: vec![("host.name".into(), "n1".into()), ("k8s.pod.name".into(), String::new())],
            pid: 7,
        });
        res.insert(ProcessInfo { service_name: "cart".into(), attributes: vec![], pid: 8 });
        let spans = records();
        let expected = transform::request(&spans, &mut res).encode_to_vec();
        assert_eq!(encode(&spans, &mut res), expected);
        assert_eq!(encode(&spans[..1], &mut res), transform::request(&spans[..1], &mut res).encode_to_vec());
    }

    fn encode(spans: &[SpanRecord], res: &mut Resources) -> Vec<u8> {
        let mut enc = EncodedSpans::default();
        for s in spans {
            enc.push(s);
        }
        assert_eq!(enc.len(), spans.len());
        let mut out = Vec::new();
        enc.request(&mut |pid| res.get(pid), &mut out);
        // Framed in place (one process) or copied (several), the same request.
        assert!(enc.into_request(&mut |pid| res.get(pid)) == out);
        out
    }

    #[test]
    fn one_process_with_a_resource_larger_than_the_room_before_its_spans() {
        // The framing then goes the copying way, to the same bytes.
        let mut res = Resources::new(8);
        let big = (0..50).map(|i| (format!("k{i}"), "v".repeat(100))).collect();
        res.insert(ProcessInfo { service_name: "users".into(), attributes: big, pid: 7 });
        let spans = vec![transform::tests::sample(7), transform::tests::sample(7)];
        assert_eq!(encode(&spans, &mut res), transform::request(&spans, &mut res).encode_to_vec());
    }

    #[test]
    fn lengths_of_every_size_are_framed_as_prost_frames_them() {
        // Spans and batches whose lengths take one, two and three bytes: the in-place framing
        // guesses two (spans) and three (batches) and must move the content either way.
        let mut res = Resources::new(8);
        res.insert(ProcessInfo { service_name: "s".into(), attributes: vec![], pid: 7 });
        for name_len in [0, 100, 20_000] {
            for count in [1, 40, 700] {
                let mut spans = Vec::new();
                for i in 0..count {
                    let mut s = transform::tests::sample(7);
                    s.name = "n".repeat(name_len).into();
                    s.attributes.clear();
                    s.span_id = [i as u8; 8];
                    spans.push(s);
                }
                let expected = transform::request(&spans, &mut res).encode_to_vec();
                assert!(encode(&spans, &mut res) == expected, "name {name_len} B, {count} spans");
            }
        }
    }

    #[test]
    fn the_longest_lengths_fit_the_room_a_span_is_given() {
        // Every varint at its longest: a length of three bytes, ints of ten, a key past one
        // byte of length, links; the room is computed, not grown, so a short one panics here.
        let mut res = Resources::new(8);
        res.insert(ProcessInfo { service_name: "s".into(), attributes: vec![], pid: 7 });
        let long_key: &'static str = Box::leak("k".repeat(200).into_boxed_str());
        let mut s = transform::tests::sample(7);
        s.name = "n".repeat(20_000).into();
        s.trace_state = Some("t".repeat(20_000));
        s.links = vec![([1; 16], [2; 8]); 5];
        s.attributes = vec![
            ("min", Value::Int(i64::MIN)),
            ("minus_one", Value::Int(-1)),
            (long_key, Value::Str("v".repeat(20_000).into())),
            (long_key, Value::Int(i64::MAX)),
            ("", Value::Str("".into())),
            ("", Value::Int(-1)),
        ];
        // Enough of them that their own room, not the fixed fields', has to hold them.
        s.attributes.extend(std::iter::repeat_n(("", Value::Int(i64::MIN)), 1000));
        let spans = vec![s];
        assert!(encode(&spans, &mut res) == transform::request(&spans, &mut res).encode_to_vec());
    }

    #[test]
    fn strings_of_every_short_length_and_around_the_one_byte_attribute() {
        // Short strings move as overlapping fixed-size copies by length class (0, 1-3, 4-7,
        // 8-15, 16-32, longer); an attribute of up to 127 bytes takes the one-byte fast path.
        // Keys and values of every length up to past both bounds, each a distinct pattern so a
        // misplaced byte shows.
        let mut res = Resources::new(8);
        res.insert(ProcessInfo { service_name: "s".into(), attributes: vec![], pid: 7 });
        let text = |n: usize, salt: usize| -> String {
            (0..n).map(|i| char::from(b'a' + ((i + salt) % 26) as u8)).collect()
        };
        let mut spans = Vec::new();
        for key_len in [1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 60, 121, 122, 130] {
            let key: &'static str = Box::leak(text(key_len, 3).into_boxed_str());
            let mut s = transform::tests::sample(7);
            s.attributes = (0..=130).map(|n| (key, Value::Str(text(n, n).into()))).collect();
            s.attributes.push((key, Value::Int(300)));
            spans.push(s);
        }
        assert!(encode(&spans, &mut res) == transform::request(&spans, &mut res).encode_to_vec());
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), len_varint(v), "{v}");
        }
    }
}
