//! `tracewire replay FILE`: the userspace pipeline (decode → reassemble → parse → spans → OTLP
//! protobuf) over a recorded capture, on one thread, timed. What `cargo xtask bench` reports as
//! the userspace throughput.
use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    correlate::Correlator,
    events::{Event, clock::Clock, decode, record},
    export::encode::EncodedSpans,
    metadata::{ProcessInfo, Resources},
};

/// Replays `path` repeatedly for at least `min_time` and returns the measurements as JSON.
pub fn replay(path: &Path, min_time: Duration) -> anyhow::Result<Value> {
    // Batches as the OTLP exporter makes them by default.
    let batch_size = crate::export::otlp::OtlpConfig::default().batch_size;
    crate::alloc::running();
    let records = record::read_all(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(!records.is_empty(), "{}: no records", path.display());
    // Resources are fixed up front: the pipeline is timed, not /proc.
    let mut resources = Resources::new(1 << 16);
    for r in &records {
        if let Ok(Event::Conn(c)) = decode(r) {
            resources.insert(ProcessInfo {
                service_name: format!("service-{}", c.conn.tgid),
                attributes: vec![("host.name".into(), "replay".into())],
                pid: c.conn.tgid,
            });
        }
    }
    let (mut events, mut spans, mut bytes, mut decode_errors, mut passes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // Compressed size, measured once outside the timed passes.
    let (mut gz_bytes, mut gz_spans) = (0u64, 0u64);
    {
        let mut c = Correlator::new(Clock::with_offset(0), 1 << 16);
        let mut batch = EncodedSpans::default();
        let mut flush = |batch: &mut EncodedSpans, resources: &mut Resources| -> anyhow::Result<()> {
            if !batch.is_empty() {
                let mut raw = Vec::new();
                batch.request(&mut |pid| resources.get(pid), &mut raw);
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&raw)?;
                gz_bytes += gz.finish()?.len() as u64;
                gz_spans += batch.len() as u64;
                *batch = EncodedSpans::default();
            }
            Ok(())
        };
        for r in &records {
            if let Ok(ev) = decode(r) {
                c.on_event(&ev);
            }
            for s in c.take_spans() {
                batch.push(&s);
                if batch.len() >= batch_size {
                    flush(&mut batch, &mut resources)?;
                }
            }
        }
        c.close_all();
        for s in c.take_spans() {
            batch.push(&s);
        }
        flush(&mut batch, &mut resources)?;
    }
    let start = Instant::now();
    while passes == 0 || start.elapsed() < min_time {
        let mut c = Correlator::new(Clock::with_offset(0), 1 << 16);
        let mut batch = EncodedSpans::default();
        let mut out = Vec::new();
        // As the exporter does: spans encoded as they come, the request framed per batch.
        let mut flush = |batch: &mut EncodedSpans, resources: &mut Resources| {
            if !batch.is_empty() {
                out.clear();
                batch.request(&mut |pid| resources.get(pid), &mut out);
                bytes += out.len() as u64;
                spans += batch.len() as u64;
                *batch = EncodedSpans::default();
            }
        };
        for r in &records {
            match decode(r) {
                Ok(ev) => c.on_event(&ev),
                Err(_) => decode_errors += 1,
            }
            events += 1;
            for s in c.take_spans() {
                batch.push(&s);
                if batch.len() >= batch_size {
                    flush(&mut batch, &mut resources);
                }
            }
        }
        c.close_all();
        for s in c.take_spans() {
            batch.push(&s);
        }
        flush(&mut batch, &mut resources);
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "records": records.len(),
        "passes": passes,
        "events": events,
        "spans": spans,
        "decode_errors": decode_errors,
        "seconds": secs,
        "events_per_sec": events as f64 / secs,
        "ns_per_event": secs * 1e9 / events as f64,
        "otlp_bytes_per_span": if spans > 0 { bytes as f64 / spans as f64 } else { 0.0 },
        "otlp_gzip_bytes_per_span": if gz_spans > 0 { gz_bytes as f64 / gz_spans as f64 } else { 0.0 },
    }))
}
