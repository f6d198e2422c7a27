//! Span records → OTLP protobuf bytes, directly.
//!
//! The same bytes as building the `opentelemetry-proto` messages ([`super::transform`]) and
//! encoding them with prost, without the intermediate messages: no per-attribute key and value
//! strings, no id vectors, and every length computed once (prost computes a nested message's
//! length again at each level it is nested in). The unit test holds the two byte for byte.
use std::sync::Arc;

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

/// A proto3 string or bytes field: left out when empty.
fn opt_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        bytes(buf, field, b);
    }
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

/// `KeyValue { key, value: AnyValue { string_value | int_value } }`.
fn attribute(buf: &mut Vec<u8>, field: u32, k: &str, v: AttrValue<'_>) {
    // Small enough to size by hand: key, then the AnyValue.
    let inner = match v {
        AttrValue::Str(s) => 1 + len_varint(s.len() as u64) + s.len(),
        // A oneof member is written even when it holds its default.
        AttrValue::Int(i) => 1 + len_varint(i as u64),
    };
    let kv_len = if k.is_empty() { 0 } else { 1 + len_varint(k.len() as u64) + k.len() }
        + 1
        + len_varint(inner as u64)
        + inner;
    key(buf, field, LEN);
    varint(buf, kv_len as u64);
    opt_bytes(buf, 1, k.as_bytes());
    key(buf, 2, LEN);
    varint(buf, inner as u64);
    match v {
        AttrValue::Str(s) => bytes(buf, 1, s.as_bytes()),
        AttrValue::Int(i) => {
            key(buf, 3, VARINT);
            varint(buf, i as u64);
        }
    }
}

#[derive(Clone, Copy)]
enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
}

fn len_varint(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// One `Span` message's content.
fn span(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, s: &SpanRecord) {
    bytes(buf, 1, &s.trace_id);
    bytes(buf, 2, &s.span_id);
    opt_bytes(buf, 3, s.trace_state.as_deref().unwrap_or("").as_bytes());
    if let Some(p) = &s.parent_id {
        bytes(buf, 4, p);
    }
    opt_bytes(buf, 5, s.name.as_bytes());
    key(buf, 6, VARINT);
    varint(buf, if s.kind == Kind::Server { SPAN_KIND_SERVER } else { SPAN_KIND_CLIENT });
    for (field, t) in [(7, s.start_ns), (8, s.end_ns)] {
        if t != 0 {
            key(buf, field, FIXED64);
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    for (k, v) in &s.attributes {
        let v = match v {
            Value::Str(x) => AttrValue::Str(x),
            Value::Int(i) => AttrValue::Int(*i),
        };
        attribute(buf, 9, k, v);
    }
    for (trace_id, span_id) in &s.links {
        message(buf, scratch, 13, |l| {
            bytes(l, 1, trace_id);
            bytes(l, 2, span_id);
            attribute(l, 4, "tracewire.link", AttrValue::Str("candidate_parent"));
            key(l, 6, FIXED32);
            l.extend_from_slice(&FLAG_HAS_IS_REMOTE.to_le_bytes());
        });
    }
    // Never `Ok`: instrumentation leaves success Unset (the specification says so).
    key(buf, 15, LEN);
    if s.error {
        varint(buf, 2);
        key(buf, 3, VARINT);
        varint(buf, STATUS_ERROR);
    } else {
        varint(buf, 0);
    }
    // Fields in tag order, as prost writes them: flags (16) last.
    let mut flags = u32::from(s.flags) | FLAG_HAS_IS_REMOTE;
    if s.parent_remote {
        flags |= FLAG_IS_REMOTE;
    }
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&flags.to_le_bytes());
}

fn resource(buf: &mut Vec<u8>, p: &ProcessInfo) {
    attribute(buf, 1, "service.name", AttrValue::Str(&p.service_name));
    attribute(buf, 1, "process.pid", AttrValue::Int(i64::from(p.pid)));
    for (k, v) in &p.attributes {
        attribute(buf, 1, k, AttrValue::Str(v));
    }
}

/// Bytes a span's length takes (spans are 128 to 16383 bytes long).
const SPAN_LEN_GUESS: usize = 2;
/// Bytes a batch's length takes (16 KiB to 2 MiB).
const BATCH_LEN_GUESS: usize = 3;
/// Spans a batch makes room for at first (it grows past that by doubling).
const START_SPANS: usize = 256;
/// Encoded bytes a span takes, about.
const SPAN_BYTES: usize = 384;

/// Spans encoded as they are handed over: the content of the next request. A span record
/// (about a kilobyte with its attributes) is freed as soon as it is encoded, by the thread that
/// made it, and a batch waiting to be sent holds its spans' ~350 encoded bytes each.
#[derive(Default)]
pub struct EncodedSpans {
    /// Every span as a `ScopeSpans.spans` field, in the order they came.
    bytes: Vec<u8>,
    /// Each span's process and where its field starts in `bytes`.
    index: Vec<(u32, u32)>,
    /// Span links' content, before it is framed.
    scratch: Vec<u8>,
}

impl EncodedSpans {
    /// Encodes `s` after the spans already held.
    pub fn push(&mut self, s: &SpanRecord) {
        if self.index.is_empty() {
            self.bytes.reserve(START_SPANS * SPAN_BYTES);
            self.index.reserve(START_SPANS);
        }
        // Batches are cut at a few MiB (see the exporter), far below 4 GiB.
        self.index.push((s.pid, self.bytes.len() as u32));
        let scratch = &mut self.scratch;
        message_in_place(&mut self.bytes, 2, SPAN_LEN_GUESS, |one| span(one, scratch, s));
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
        self.bytes.len()
    }

    /// The processes whose spans are held, in pid order.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.index.iter().map(|(pid, _)| *pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
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
                    message(ss, &mut scratch, 1, |scope| {
                        bytes(scope, 1, b"tracewire");
                        bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
                    });
                    for i in run {
                        ss.extend_from_slice(field(*i));
                    }
                    bytes(ss, 3, SCHEMA_URL.as_bytes());
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
        out
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
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), len_varint(v), "{v}");
        }
    }
}
