//! Span records → OTLP messages (pure functions). One `ResourceSpans` per traced process: the
//! service is the resource, not the agent.
use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, span::SpanKind, status::StatusCode},
};

use crate::{
    correlate::span::{Kind, SpanRecord, Value},
    metadata::{ProcessInfo, Resources},
};

/// OTLP span flags: the W3C flags in the low byte, then "has is_remote" (0x100) and "parent is
/// remote" (0x200).
pub(crate) const FLAG_HAS_IS_REMOTE: u32 = 0x100;
pub(crate) const FLAG_IS_REMOTE: u32 = 0x200;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

/// The OTLP span for a record.
pub fn span(s: &SpanRecord) -> Span {
    let attributes = s
        .attributes
        .iter()
        .map(|(k, v)| match v {
            Value::Str(x) => kv_str(k, x),
            Value::Int(i) => kv(k, any_value::Value::IntValue(*i)),
        })
        .collect();
    let mut flags = u32::from(s.flags) | FLAG_HAS_IS_REMOTE;
    if s.parent_remote {
        flags |= FLAG_IS_REMOTE;
    }
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone().unwrap_or_default(),
        parent_span_id: s.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: s.name.to_string(),
        kind: match s.kind {
            Kind::Server => SpanKind::Server as i32,
            Kind::Client => SpanKind::Client as i32,
        },
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes,
        links: s
            .links
            .iter()
            .map(|(trace_id, span_id)| span::Link {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                attributes: vec![kv_str("tracewire.link", "candidate_parent")],
                flags: FLAG_HAS_IS_REMOTE,
                ..Default::default()
            })
            .collect(),
        // Never `Ok`: instrumentation leaves success Unset (the specification says so).
        status: Some(Status {
            code: if s.error { StatusCode::Error as i32 } else { StatusCode::Unset as i32 },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// The OTLP resource for a process.
pub fn resource(p: &ProcessInfo) -> Resource {
    let mut attributes = vec![
        kv_str("service.name", &p.service_name),
        kv("process.pid", any_value::Value::IntValue(i64::from(p.pid))),
    ];
    attributes.extend(p.attributes.iter().map(|(k, v)| kv_str(k, v)));
    Resource { attributes, ..Default::default() }
}

/// One export request for `spans`, grouped by process.
pub fn request(spans: &[SpanRecord], resources: &mut Resources) -> ExportTraceServiceRequest {
    let mut by_pid: BTreeMap<u32, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_pid.entry(s.pid).or_default().push(span(s));
    }
    let resource_spans = by_pid
        .into_iter()
        .map(|(pid, spans)| ResourceSpans {
            resource: Some(resource(&resources.get(pid))),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracewire".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.44.0".to_string(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
pub(crate) mod tests {
    use prost::Message as _;

    use super::*;
    use crate::correlate::span::Link;

    pub(crate) fn sample(pid: u32) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            parent_remote: true,
            flags: 1,
            trace_state: Some("a=1".into()),
            kind: Kind::Server,
            name: "GET".into(),
            start_ns: 1_000,
            end_ns: 2_000,
            pid,
            tid: pid,
            error: false,
            attributes: vec![
                ("http.request.method", Value::Str("GET".into())),
                ("http.response.status_code", Value::Int(200)),
                ("url.path", Value::Str("/users".into())),
                ("server.address", Value::Str("api".into())),
                ("server.port", Value::Int(8080)),
                ("network.peer.address", Value::Str("10.0.0.1".into())),
                ("network.peer.port", Value::Int(40_000)),
                ("network.protocol.version", Value::Str("1.1".into())),
            ],
            link: Link::None,
            links: Vec::new(),
        }
    }

    #[test]
    fn spans_are_grouped_by_process_with_ids_flags_and_status() {
        let mut res = Resources::new(8);
        res.insert(ProcessInfo { service_name: "users".into(), attributes: vec![], pid: 7 });
        res.insert(ProcessInfo { service_name: "cart".into(), attributes: vec![], pid: 8 });
        let req = request(&[sample(7), sample(8), sample(7)], &mut res);
        assert_eq!(req.resource_spans.len(), 2);
        let rs = &req.resource_spans[0];
        let name = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(name.key, "service.name");
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_id, vec![1; 16]);
        assert_eq!(spans[0].parent_span_id, vec![3; 8]);
        assert_eq!(spans[0].flags, 0x301);
        assert_eq!(spans[0].kind, SpanKind::Server as i32);
        assert_eq!(spans[0].status.as_ref().unwrap().code, StatusCode::Unset as i32);
    }

    #[test]
    fn bytes_per_span_stay_small() {
        let mut res = Resources::new(8);
        res.insert(ProcessInfo { service_name: "users".into(), attributes: vec![], pid: 7 });
        let one = request(&[sample(7)], &mut res).encoded_len();
        let hundred = request(&vec![sample(7); 100], &mut res).encoded_len();
        let per_span = (hundred - one) / 99;
        // An HTTP server span with eight attributes: a few hundred bytes, not kilobytes.
        assert!(per_span < 400, "{per_span} bytes per span");
    }
}
