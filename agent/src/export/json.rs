//! OTLP-JSON lines (the OpenTelemetry Collector's file exporter format): one
//! `ExportTraceServiceRequest` per line, ids as hex, lowerCamelCase fields.
use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use crate::{correlate::span::SpanRecord, export::transform, metadata::Resources};

/// Writes span batches to a file.
pub struct JsonFile {
    out: BufWriter<File>,
    /// Spans written.
    pub written: u64,
    /// Spans that failed to be written (I/O errors).
    pub failed: u64,
}

impl JsonFile {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonFile { out: BufWriter::new(File::create(path)?), written: 0, failed: 0 })
    }

    /// Appends one line for `spans`.
    pub fn write(&mut self, spans: &[SpanRecord], resources: &mut Resources) {
        if spans.is_empty() {
            return;
        }
        let req = transform::request(spans, resources);
        let ok = serde_json::to_writer(&mut self.out, &req).is_ok() && self.out.write_all(b"\n").is_ok();
        if ok && self.out.flush().is_ok() {
            self.written += spans.len() as u64;
        } else {
            self.failed += spans.len() as u64;
        }
    }
}
