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
    export::{encode::EncodedSpans, request_metrics::RequestMetrics},
    metadata::{ProcessInfo, Resources},
    sampling::tail::{TailConfig, TailSampler},
};

/// Records the agent reads from the ring buffer in one poll, about, under load (a poll takes
/// 32 KiB of records, and an HTTP event with its head is ~220 B): the spans they finish are
/// taken together.
const RECORDS_PER_POLL: usize = 144;

/// Resident memory of this process, in bytes. The page size from libc: rustix's (behind
/// `procfs::page_size`) reads the auxiliary vector in a way valgrind's does not support, and replay
/// runs under valgrind to count instructions.
fn rss() -> u64 {
    // SAFETY: sysconf with a constant name.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    procfs::process::Process::myself().and_then(|p| p.statm()).map_or(0, |m| m.resident * page)
}

/// Replays `path` repeatedly for at least `min_time` and `min_passes` times (at least once) and
/// returns the measurements as JSON.
pub fn replay(path: &Path, min_time: Duration, min_passes: u64) -> anyhow::Result<Value> {
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
    // The spans of one pass, for tail sampling's figures.
    let mut all_spans = Vec::new();
    {
        let mut c = Correlator::new(Clock::with_offset(0), 1 << 16);
        let mut batch = EncodedSpans::for_batch(batch_size);
        let mut flush = |batch: &mut EncodedSpans, resources: &mut Resources| -> anyhow::Result<()> {
            if !batch.is_empty() {
                let mut raw = Vec::new();
                batch.request(&mut |pid| resources.get(pid), &mut raw);
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&raw)?;
                gz_bytes += gz.finish()?.len() as u64;
                gz_spans += batch.len() as u64;
                *batch = EncodedSpans::for_batch(batch_size);
            }
            Ok(())
        };
        for r in &records {
            if let Ok(ev) = decode(r) {
                c.on_event(&ev);
            }
            for s in c.take_spans() {
                batch.push(&s);
                all_spans.push(s);
                if batch.len() >= batch_size {
                    flush(&mut batch, &mut resources)?;
                }
            }
        }
        c.close_all();
        for s in c.take_spans() {
            batch.push(&s);
            all_spans.push(s);
        }
        flush(&mut batch, &mut resources)?;
    }
    // Tail sampling (errors, latency, adaptive per operation) over those spans: its time per
    // span as it runs (dropping the kept spans included), the spans arriving in batches of 512
    // on a clock that moves 1 ms a batch and decided once idle for 50 ms; then what a held span
    // costs in memory, all held at once.
    let n_tail = all_spans.len();
    // The request metrics alone over those spans: their time per span (also in every pass below).
    let started = Instant::now();
    let mut red = RequestMetrics::new(4096, Duration::from_secs(120));
    for s in &all_spans {
        red.record(s, &mut |pid| resources.get(pid));
    }
    let red_secs = started.elapsed().as_secs_f64();
    let red_series = red.series();
    let cfg = TailConfig {
        errors: true,
        latency: Some(Duration::from_millis(500)),
        per_operation: Some(10.0),
        wait: Duration::from_millis(50),
        max_spans: n_tail.max(1),
        ..TailConfig::default()
    };
    let mut chunks: Vec<Vec<crate::correlate::span::SpanRecord>> = Vec::new();
    for s in all_spans {
        match chunks.last_mut() {
            Some(c) if c.len() < 512 => c.push(s),
            _ => chunks.push(vec![s]),
        }
    }
    let epoch = Instant::now();
    let mut tail = TailSampler::new(cfg.clone(), epoch);
    let mut tail_kept = 0;
    let mut clock = epoch;
    let timed = chunks.clone();
    let started = Instant::now();
    for c in timed {
        clock += Duration::from_millis(1);
        tail_kept += tail.add(c, clock).len();
        tail_kept += tail.take_finished(clock, false).len();
    }
    tail_kept += tail.take_finished(clock, true).len();
    let tail_secs = started.elapsed().as_secs_f64();
    drop(tail);
    crate::alloc::running();
    let mut tail = TailSampler::new(cfg, epoch);
    for c in chunks {
        tail.add(c, epoch);
    }
    let held = tail.held();
    let rss_held = rss();
    // What holding them took: the memory given back once they are gone.
    drop(tail);
    crate::alloc::running();
    let rss_after = rss();
    let start = Instant::now();
    // The fastest pass too: on a shared machine it moves less from run to run than the mean.
    let mut best_pass = Duration::MAX;
    while passes < min_passes.max(1) || start.elapsed() < min_time {
        let pass_started = Instant::now();
        let mut c = Correlator::new(Clock::with_offset(0), 1 << 16);
        let mut red = RequestMetrics::new(4096, Duration::from_secs(120));
        let mut batch = EncodedSpans::for_batch(batch_size);
        // As the exporter does: spans encoded as they come, the request framed per batch.
        let mut flush = |batch: &mut EncodedSpans, resources: &mut Resources| {
            if !batch.is_empty() {
                spans += batch.len() as u64;
                let full = std::mem::replace(batch, EncodedSpans::for_batch(batch_size));
                bytes += full.into_request(&mut |pid| resources.get(pid)).len() as u64;
            }
        };
        // Spans are taken a poll's worth of records at a time, as the agent takes them.
        for poll in records.chunks(RECORDS_PER_POLL) {
            for r in poll {
                match decode(r) {
                    Ok(ev) => c.on_event(&ev),
                    Err(_) => decode_errors += 1,
                }
                events += 1;
            }
            for s in c.take_spans() {
                // As the agent does: every span measured, then encoded.
                red.record(&s, &mut |pid| resources.get(pid));
                batch.push(&s);
                if batch.len() >= batch_size {
                    flush(&mut batch, &mut resources);
                }
            }
        }
        c.close_all();
        for s in c.take_spans() {
            red.record(&s, &mut |pid| resources.get(pid));
            batch.push(&s);
        }
        flush(&mut batch, &mut resources);
        passes += 1;
        best_pass = best_pass.min(pass_started.elapsed());
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
        "best_pass_ns_per_event": best_pass.as_secs_f64() * 1e9 / records.len() as f64,
        "otlp_bytes_per_span": if spans > 0 { bytes as f64 / spans as f64 } else { 0.0 },
        "otlp_gzip_bytes_per_span": if gz_spans > 0 { gz_bytes as f64 / gz_spans as f64 } else { 0.0 },
        "batch_spans": batch_size,
        "tail_spans": n_tail,
        "request_metrics_ns_per_span": if n_tail > 0 { red_secs * 1e9 / n_tail as f64 } else { 0.0 },
        "request_metrics_series": red_series,
        "tail_traces_kept": tail_kept,
        "tail_ns_per_span": if n_tail > 0 { tail_secs * 1e9 / n_tail as f64 } else { 0.0 },
        "tail_bytes_per_held_span": if held > 0 { rss_held.saturating_sub(rss_after) as f64 / held as f64 } else { 0.0 },
    }))
}
