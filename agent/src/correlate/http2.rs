//! HTTP/2 connections → one span per stream: plain HTTP/2 requests as HTTP spans, gRPC calls
//! (`content-type: application/grpc`) as RPC spans named `{service}/{method}`.
//!
//! Streams share the connection, so several are in flight at once and answered in any order:
//! each is its own exchange, from its request's HEADERS to the frame that ends its response
//! (END_STREAM, usually gRPC's trailers) or a RST_STREAM either way. Its parent is decided as
//! for an HTTP/1 request (its `traceparent`, the kernel's context for the turn it arrived in,
//! the request its thread serves); a server connection with several streams open makes the
//! calls its thread sends meanwhile ambiguous, so they stay unlinked rather than guessed.
//!
//! Every header block of a direction is decoded, the ones of streams not traced too, since each
//! changes the direction's HPACK table. A direction whose bytes were not all seen (a gap in a
//! header block, events lost or left out) cannot be decoded any more: the connection's streams
//! in flight are dropped and counted, and the connection is left alone from there.
use tracewire_common::CTX_TCP;

use super::{
    ConnSink, Info, Pending, peer_address, push_endpoints,
    span::{Kind, Link, SpanRecord, Text, Value},
    stream::Meta,
};
use crate::protocol::{
    http1::{RequestHead, ResponseHead},
    http2::{self, Fields, Framer, Item, Table},
};

/// Streams in flight on one connection (peers allow 100 to 250 by default); beyond it the
/// oldest is dropped and counted.
pub(super) const MAX_STREAMS: usize = 256;

/// Counters of HTTP/2 connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct H2Stats {
    /// Connections recognised as HTTP/2 from their preface.
    pub conns: u64,
    /// Of their streams' spans, gRPC calls.
    pub grpc: u64,
    /// Connections that could not be read further (see the invalid reasons `h2_*`).
    pub lost: u64,
    /// Streams in flight dropped with their connection's lost direction.
    pub lost_streams: u64,
    /// Streams ended by a RST_STREAM.
    pub resets: u64,
    /// Responses on streams whose request was not seen.
    pub unpaired: u64,
    /// Streams dropped because too many were in flight on one connection.
    pub overflow: u64,
    /// Server streams whose parent from the TCP option was dropped: the kernel read their
    /// request with others in one turn, and the option it kept was the last segment's.
    pub tcp_ambiguous: u64,
}

impl H2Stats {
    /// The counters by name, as the summary and the metrics page report them.
    pub fn counts(&self) -> [(&'static str, u64); 8] {
        [
            ("conns", self.conns),
            ("grpc", self.grpc),
            ("lost", self.lost),
            ("lost_streams", self.lost_streams),
            ("resets", self.resets),
            ("unpaired", self.unpaired),
            ("overflow", self.overflow),
            ("tcp_ambiguous", self.tcp_ambiguous),
        ]
    }
}

/// A stream in flight.
#[derive(Debug)]
struct Exchange {
    id: u32,
    req: Box<Pending>,
    grpc: bool,
    status: Option<u16>,
    grpc_status: Option<i64>,
}

/// One HTTP/2 connection's state: its two directions' framing and HPACK tables, and its streams.
#[derive(Debug)]
pub(super) struct Session {
    /// The client's direction (requests) and the server's (responses).
    req: Framer,
    resp: Framer,
    req_table: Table,
    resp_table: Table,
    streams: Vec<Exchange>,
    /// The read or write the request direction's unfinished frame header or header block began
    /// in: a request whose block began there starts there.
    req_start: Option<Meta>,
    lost: bool,
}

impl Session {
    pub(super) fn new() -> Session {
        Session {
            req: Framer::new(true),
            resp: Framer::new(false),
            req_table: Table::default(),
            resp_table: Table::default(),
            streams: Vec::new(),
            req_start: None,
            lost: false,
        }
    }

    /// The trace contexts of the streams in flight (same-node pairing re-parents them).
    pub(super) fn contexts(&mut self) -> impl Iterator<Item = &mut super::SpanCtx> {
        self.streams.iter_mut().map(|s| &mut s.req.ctx)
    }

    /// Bytes of the connection were not reported: its tables cannot be followed any more.
    /// Returns the streams dropped.
    pub(super) fn lose(&mut self, why: &'static str, sink: &mut ConnSink<'_>) -> u64 {
        if self.lost {
            return 0;
        }
        self.lost = true;
        let dropped = self.streams.len() as u64;
        for s in self.streams.drain(..) {
            sink.forget(&s.req.ctx);
        }
        sink.g.stats.h2.lost += 1;
        sink.g.stats.h2.lost_streams += dropped;
        *sink.g.stats.invalid.entry(why).or_default() += 1;
        self.req = Framer::new(false);
        self.resp = Framer::new(false);
        self.req_table = Table::default();
        self.resp_table = Table::default();
        dropped
    }

    /// One read or write of the connection; `request_side` for the client's direction.
    pub(super) fn feed(
        &mut self,
        request_side: bool,
        data: &[u8],
        gap: u64,
        meta: Meta,
        end_ns: u64,
        sink: &mut ConnSink<'_>,
    ) {
        if self.lost {
            return;
        }
        let Session { req, resp, req_table, resp_table, streams, req_start, .. } = self;
        let (framer, table) = if request_side { (req, req_table) } else { (resp, resp_table) };
        let mut failed = None;
        framer.feed(data, gap, &mut |item| {
            if failed.is_some() {
                return;
            }
            let meta = match item {
                Item::Headers { began_earlier, .. } if request_side => {
                    let earlier = req_start.take();
                    if began_earlier { earlier.unwrap_or(meta) } else { meta }
                }
                _ => meta,
            };
            if let Err(why) = on_item(item, request_side, table, streams, &meta, end_ns, sink) {
                failed = Some(why);
            }
        });
        if request_side {
            if framer.mid_headers() {
                req_start.get_or_insert(meta);
            } else {
                *req_start = None;
            }
        }
        let why = failed.or_else(|| framer.lost().map(lost_reason));
        if let Some(why) = why {
            self.lose(why, sink);
        }
    }

    /// The connection closed: streams still open end without a response.
    pub(super) fn close(&mut self, at: u64, sink: &mut ConnSink<'_>) {
        for s in std::mem::take(&mut self.streams) {
            finish(s, at, sink);
        }
    }
}

/// The invalid reason of a direction the framer lost.
fn lost_reason(why: &'static str) -> &'static str {
    match why {
        "bad_preface" => "h2_bad_preface",
        "gap_in_frame_header" => "h2_gap_in_frame_header",
        "gap_in_header_block" => "h2_gap_in_header_block",
        "continuation_expected" => "h2_continuation_expected",
        "continuation_unexpected" => "h2_continuation_unexpected",
        "bad_headers_frame" => "h2_bad_headers_frame",
        "header_block_too_large" => "h2_header_block_too_large",
        _ => "h2_lost",
    }
}

fn on_item(
    item: Item<'_>,
    request_side: bool,
    table: &mut Table,
    streams: &mut Vec<Exchange>,
    meta: &Meta,
    end_ns: u64,
    sink: &mut ConnSink<'_>,
) -> Result<(), &'static str> {
    match item {
        Item::Headers { stream, end_stream, promise, block, .. } => {
            let fields = table.decode(block).map_err(|_| "h2_hpack")?;
            if promise {
                // A pushed response's request: no call was made for it.
                return Ok(());
            }
            let at = streams.iter().position(|s| s.id == stream);
            if request_side {
                // A request's trailers say nothing spans use.
                if at.is_none() {
                    open(stream, fields, streams, meta, sink);
                }
                return Ok(());
            }
            let Some(at) = at else {
                sink.g.stats.h2.unpaired += 1;
                return Ok(());
            };
            let s = &mut streams[at];
            match (s.status, fields.status) {
                // Informational (100, 103): the final response follows.
                (None, Some(code)) if (100..200).contains(&code) => {}
                (None, Some(code)) => s.status = Some(code),
                _ => {}
            }
            if fields.grpc_status.is_some() {
                s.grpc_status = fields.grpc_status;
            }
            if end_stream {
                finish(streams.remove(at), end_ns, sink);
            }
        }
        Item::Data { stream, end_stream: true } if !request_side => {
            if let Some(at) = streams.iter().position(|s| s.id == stream) {
                finish(streams.remove(at), end_ns, sink);
            }
        }
        Item::Reset { stream, code } => {
            if let Some(at) = streams.iter().position(|s| s.id == stream) {
                let mut s = streams.remove(at);
                sink.g.stats.h2.resets += 1;
                if s.grpc && s.grpc_status.is_none() {
                    s.grpc_status = Some(http2::grpc_status_of_reset(code));
                }
                finish(s, end_ns, sink);
            }
        }
        Item::Data { .. } | Item::GoAway { .. } => {}
    }
    Ok(())
}

/// A request's HEADERS opened a stream.
fn open(stream: u32, f: Fields, streams: &mut Vec<Exchange>, meta: &Meta, sink: &mut ConnSink<'_>) {
    let Fields { method, path, authority, grpc, user_agent, traceparent, tracestate, .. } = f;
    let method = method.unwrap_or_default();
    let head = RequestHead {
        method: match crate::protocol::http1::normalize_method(&method) {
            "_OTHER" => method.into(),
            known => known.into(),
        },
        target: path.unwrap_or_default(),
        minor: 1,
        host: authority,
        user_agent,
        traceparent,
        tracestate,
        ..RequestHead::default()
    };
    let ctx = sink.new_ctx(&head.traceparent, head.tracestate.as_deref(), meta);
    // A server turn the kernel read several requests in: the TCP option it took its parent
    // from is the last segment's, so the stream that took the turn's context may have another
    // stream's call as its parent. Neither is linked through it (the stream keeps the trace id
    // its handler's calls went out with).
    if meta.kctx.origin == CTX_TCP
        && ctx.span_id != meta.kctx.span_id
        && let Some(first) = streams.iter_mut().find(|s| s.req.ctx.span_id == meta.kctx.span_id)
        && first.req.ctx.parent_remote
        && first.req.ctx.parent_id == Some(meta.kctx.parent_id)
    {
        first.req.ctx.parent_id = None;
        first.req.ctx.parent_remote = false;
        first.req.ctx.link = Link::Unlinked;
        sink.g.stats.h2.tcp_ambiguous += 1;
        sink.g.stats.linked_tcp = sink.g.stats.linked_tcp.saturating_sub(1);
    }
    sink.begin(&ctx);
    if streams.len() >= MAX_STREAMS {
        let old = streams.remove(0);
        sink.g.stats.h2.overflow += 1;
        sink.forget(&old.req.ctx);
    }
    streams.push(Exchange {
        id: stream,
        req: Box::new(Pending { head, meta: *meta, ctx }),
        grpc,
        status: None,
        grpc_status: None,
    });
}

/// A stream ended at `end_ns`: its span.
fn finish(s: Exchange, end_ns: u64, sink: &mut ConnSink<'_>) {
    if !s.grpc {
        let resp = s.status.map(|status| ResponseHead { status, minor: 1, ..ResponseHead::default() });
        sink.finish_exchange(s.req, resp.as_ref(), end_ns);
        return;
    }
    sink.forget(&s.req.ctx);
    if s.status.is_none() && s.grpc_status.is_none() {
        sink.g.stats.no_response += 1;
    }
    sink.g.stats.h2.grpc += 1;
    sink.g.stats.spans += 1;
    let span = grpc_span(sink.info, s, end_ns);
    sink.g.out.push(span);
}

/// A gRPC call's span (the semantic conventions' RPC spans).
fn grpc_span(info: &Info, s: Exchange, end_ns: u64) -> SpanRecord {
    let server = info.role == tracewire_common::ROLE_SERVER;
    let kind = if server { Kind::Server } else { Kind::Client };
    let Pending { head, meta, ctx } = *s.req;
    // `/package.Service/Method`.
    let full = head.target.strip_prefix('/').unwrap_or(&head.target);
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    let name: Text = if service.is_empty() { "grpc".into() } else { full.to_string().into() };
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("rpc.system", Value::Str("grpc".into())));
    if !service.is_empty() {
        attrs.push(("rpc.service", Value::Str(service.to_string().into())));
    }
    if !method.is_empty() {
        attrs.push(("rpc.method", Value::Str(method.to_string().into())));
    }
    if let Some(code) = s.grpc_status {
        attrs.push(("rpc.grpc.status_code", Value::Int(code)));
    }
    if let Some(status) = s.status.filter(|&c| c != 200) {
        attrs.push(("http.response.status_code", Value::Int(i64::from(status))));
    }
    attrs.push(("network.protocol.name", Value::Str("http".into())));
    attrs.push(("network.protocol.version", Value::Str("2".into())));
    push_endpoints(&mut attrs, info, head.host, if info.tls { 443 } else { 80 });
    if server && info.remote.is_some() {
        attrs.push(("client.address", peer_address(info)));
    }
    let error_type = match (s.grpc_status, s.status) {
        (Some(code), _) if (server && http2::grpc_server_error(code)) || (!server && code != 0) => {
            Some(http2::grpc_code_name(code).into_owned())
        }
        (Some(_), _) => None,
        (None, None) => Some("no_response".to_string()),
        // Answered without a gRPC status (its trailers were not seen, or an HTTP error).
        (None, Some(status)) if status != 200 => Some(status.to_string()),
        (None, Some(_)) => None,
    };
    if let Some(e) = &error_type {
        attrs.push(("error.type", Value::Str(e.clone().into())));
    }
    ctx.record(kind, name, info.id.tgid, &meta, end_ns, error_type.is_some(), attrs)
}
