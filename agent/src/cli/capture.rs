//! `tracewire capture`: prints connection and data events as they happen, human-readable or as
//! JSON lines, with a periodic status line. The first thing to run to see that tracewire sees a
//! service.
//!
//! Payload bytes are not printed unless asked for (`--show-payload`): by default a data event
//! shows only the first line of an HTTP message, with its query string removed.
use std::{
    io::{self, Write},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tracewire_common::{
    CONN_FLAG_PREEXISTING, CTX_AMBIGUOUS, CTX_GOROUTINE, CTX_HEADER, CTX_NONE, CTX_ROOT, CTX_TCP, CTX_THREAD,
    CTX_UPSTREAM, ConnEvent, Counter, DATA_FLAG_BODY_SKIPPED, DATA_FLAG_COPY_FAILED, DATA_FLAG_IOV_OVERFLOW,
    DATA_FLAG_TRUNCATED, DIR_INGRESS, DataEvent, EventKind, ProcEvent, ROLE_CLIENT, ROLE_LISTENER,
    ROLE_SERVER, SockAddr, Syscall,
};

use crate::{
    capture::{
        CaptureError, CaptureOptions, KernelCounters,
        session::{Session, SessionStats},
    },
    events::{Event, clock::Clock},
};

/// Output settings.
#[derive(Debug, Clone)]
pub struct CaptureOutput {
    /// JSON lines instead of text.
    pub json: bool,
    /// Include captured payload bytes.
    pub show_payload: bool,
    /// Status line period (0 = never, except at exit).
    pub status_every: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Write raw records here.
    pub record: Option<std::path::PathBuf>,
}

/// Formats an address; `None` when unknown.
pub fn addr(a: &SockAddr) -> Option<SocketAddr> {
    crate::events::socket_addr(a)
}

fn addr_str(a: &SockAddr) -> String {
    addr(a).map(|s| s.to_string()).unwrap_or_else(|| "?".into())
}

/// `ROLE_*` as text.
pub fn ctx_origin_name(origin: u8) -> &'static str {
    match origin {
        CTX_ROOT => "root",
        CTX_HEADER => "header",
        CTX_TCP => "tcp",
        CTX_THREAD => "thread",
        CTX_GOROUTINE => "goroutine",
        CTX_UPSTREAM => "upstream",
        CTX_AMBIGUOUS => "ambiguous",
        _ => "none",
    }
}

fn hex(b: &[u8]) -> String {
    crate::correlate::span::hex(b)
}

fn role_name(role: u8) -> &'static str {
    match role {
        ROLE_SERVER => "server",
        ROLE_CLIENT => "client",
        ROLE_LISTENER => "listener",
        _ => "unknown",
    }
}

fn syscall_name(s: u8) -> &'static str {
    match Syscall::try_from(s) {
        Ok(Syscall::Read) => "read",
        Ok(Syscall::Write) => "write",
        Ok(Syscall::Readv) => "readv",
        Ok(Syscall::Writev) => "writev",
        Ok(Syscall::Recvfrom) => "recvfrom",
        Ok(Syscall::Sendto) => "sendto",
        Ok(Syscall::Recvmsg) => "recvmsg",
        Ok(Syscall::Sendmsg) => "sendmsg",
        Ok(Syscall::Sendfile) => "sendfile",
        Ok(Syscall::SslRead) => "SSL_read",
        Ok(Syscall::SslWrite) => "SSL_write",
        Ok(Syscall::Accept) => "accept",
        Ok(Syscall::Accept4) => "accept4",
        Ok(Syscall::Connect) => "connect",
        Ok(Syscall::Listen) => "listen",
        Err(_) => "?",
    }
}

/// The first line of an HTTP-looking payload, query string removed; `None` for anything else.
pub fn http_head(payload: &[u8]) -> Option<String> {
    let end = payload.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(payload.len()).min(200);
    let line = std::str::from_utf8(&payload[..end]).ok()?;
    let looks_http =
        line.starts_with("HTTP/") || line.split(' ').nth(2).is_some_and(|v| v.starts_with("HTTP/"));
    if !looks_http {
        return None;
    }
    if line.starts_with("HTTP/") {
        return Some(line.to_string());
    }
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let path = target.split('?').next().unwrap_or(target);
    let redacted = if path.len() < target.len() { "?…" } else { "" };
    Some(format!("{method} {path}{redacted} {version}"))
}

fn pid_tid(pid_tgid: u64) -> (u32, u32) {
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

fn conn_kind(c: &ConnEvent) -> &'static str {
    match EventKind::try_from(c.header.kind) {
        Ok(EventKind::ConnOpen) => "conn_open",
        Ok(EventKind::ConnClose) => "conn_close",
        Ok(EventKind::Listen) => "listen",
        Ok(EventKind::ConnAddr) => "conn_addr",
        _ => "conn",
    }
}

fn proc_kind(p: &ProcEvent) -> &'static str {
    match EventKind::try_from(p.header.kind) {
        Ok(EventKind::Exec) => "exec",
        Ok(EventKind::Exit) => "exit",
        Ok(EventKind::Fork) => "fork",
        _ => "proc",
    }
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// JSON form of an event (stable field names; tests and tools read them).
pub fn event_json(ev: &Event<'_>, clock: &Clock, show_payload: bool) -> Value {
    match ev {
        Event::Conn(c) => {
            // The connection's process: a conn_addr event may be written from another context.
            let (pid, tid) = (c.conn.tgid, pid_tid(c.header.pid_tgid).1);
            json!({
                "type": conn_kind(c),
                "ts": clock.wall_ns(c.header.ts_ns),
                "pid": pid, "tid": tid, "fd": c.conn.fd, "gen": c.conn.generation,
                "role": role_name(c.role),
                "local": addr(&c.local).map(|a| a.to_string()),
                "remote": addr(&c.remote).map(|a| a.to_string()),
                "preexisting": c.flags & CONN_FLAG_PREEXISTING != 0,
            })
        }
        Event::Data(d, payload) => data_json(d, payload, clock, show_payload),
        Event::Proc(p) => {
            let (_, tid) = pid_tid(p.header.pid_tgid);
            json!({
                "type": proc_kind(p),
                "ts": clock.wall_ns(p.header.ts_ns),
                "pid": p.pid, "tid": tid, "comm": comm(&p.comm),
            })
        }
    }
}

fn data_json(d: &DataEvent, payload: &[u8], clock: &Clock, show_payload: bool) -> Value {
    let (pid, tid) = pid_tid(d.header.pid_tgid);
    let mut v = json!({
        "type": "data",
        "ts": clock.wall_ns(d.header.ts_ns),
        "enter_ts": clock.wall_ns(d.enter_ns),
        "pid": pid, "tid": tid, "fd": d.conn.fd, "gen": d.conn.generation,
        "role": role_name(d.role),
        "direction": if d.direction == DIR_INGRESS { "ingress" } else { "egress" },
        "syscall": syscall_name(d.syscall),
        "len": d.len,
        "captured": d.captured,
        "truncated": d.flags & DATA_FLAG_TRUNCATED != 0,
        "body_skipped": d.flags & DATA_FLAG_BODY_SKIPPED != 0,
        "copy_failed": d.flags & DATA_FLAG_COPY_FAILED != 0,
        "iov_overflow": d.flags & DATA_FLAG_IOV_OVERFLOW != 0,
        "head": http_head(payload),
    });
    if let Some(frames) = crate::protocol::http2::describe(payload) {
        v["h2"] = json!(frames);
    }
    if d.thread_ctx.generation != 0 {
        v["serving"] = json!({"fd": d.thread_ctx.fd, "gen": d.thread_ctx.generation});
    }
    if d.ctx.origin != CTX_NONE {
        v["ctx"] = json!({
            "origin": ctx_origin_name(d.ctx.origin),
            "trace_id": hex(&d.ctx.trace_id),
            "span_id": hex(&d.ctx.span_id),
            "parent_id": hex(&d.ctx.parent_id),
            "flags": d.ctx.trace_flags,
        });
    }
    if show_payload {
        v["payload"] = Value::String(String::from_utf8_lossy(payload).into_owned());
    }
    v
}

fn clock_str(clock: &Clock, ts: u64) -> String {
    let wall = clock.wall_ns(ts);
    let secs = wall / 1_000_000_000;
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, wall % 1_000_000_000 / 1000)
}

/// Text form of an event.
pub fn event_text(ev: &Event<'_>, clock: &Clock, show_payload: bool) -> String {
    match ev {
        Event::Conn(c) => {
            let pid = c.conn.tgid;
            let arrow = if c.role == ROLE_CLIENT { "->" } else { "<-" };
            let pre = if c.flags & CONN_FLAG_PREEXISTING != 0 { " (existing)" } else { "" };
            let peer = if c.role == ROLE_LISTENER {
                String::new()
            } else {
                format!(" {arrow} {}", addr_str(&c.remote))
            };
            format!(
                "{} {:<10} pid={pid} fd={} {} {}{peer}{pre}",
                clock_str(clock, c.header.ts_ns),
                conn_kind(c),
                c.conn.fd,
                role_name(c.role),
                addr_str(&c.local),
            )
        }
        Event::Data(d, payload) => {
            let (pid, tid) = pid_tid(d.header.pid_tgid);
            let dir = if d.direction == DIR_INGRESS { "in " } else { "out" };
            let mut s = format!(
                "{} {:<10} pid={pid} tid={tid} fd={} {} {dir} {:<8} {} B",
                clock_str(clock, d.header.ts_ns),
                "data",
                d.conn.fd,
                role_name(d.role),
                syscall_name(d.syscall),
                d.len,
            );
            if d.flags & DATA_FLAG_TRUNCATED != 0 {
                s.push_str(&format!(" ({} captured)", d.captured));
            } else if d.flags & DATA_FLAG_BODY_SKIPPED != 0 {
                s.push_str(&format!(" (head {} B, body counted)", d.captured));
            }
            if let Some(head) = http_head(payload) {
                s.push_str(&format!("  {head}"));
            }
            if let Some(frames) = crate::protocol::http2::describe(payload) {
                s.push_str(&format!("  h2 {frames}"));
            }
            if show_payload {
                s.push_str(&format!("\n    {:?}", String::from_utf8_lossy(payload)));
            }
            s
        }
        Event::Proc(p) => format!(
            "{} {:<10} pid={} {}",
            clock_str(clock, p.header.ts_ns),
            proc_kind(p),
            p.pid,
            comm(&p.comm)
        ),
    }
}

/// Rates and drop counts since the previous status.
struct Status {
    last: Instant,
    last_events: u64,
    last_bytes: u64,
}

fn status_json(k: &KernelCounters, s: &SessionStats, rate: f64, byte_rate: f64) -> Value {
    let kernel: serde_json::Map<String, Value> =
        Counter::ALL.iter().map(|c| (c.name().to_string(), json!(k[*c as usize]))).collect();
    json!({
        "type": "status",
        "events_per_sec": rate.round(),
        "bytes_per_sec": byte_rate.round(),
        "records": s.records,
        "open_conns": s.open_conns,
        "preexisting": s.preexisting,
        "resolved": s.resolved,
        "resolve_failed": s.resolve_failed,
        "decode_errors": s.decode_errors,
        "conn_table_full": s.conn_table_full,
        "not_tcp": s.not_tcp,
        "port_filtered": s.port_filtered,
        "data_unknown_conn": s.data_unknown_conn,
        "kernel": kernel,
    })
}

fn status_text(k: &KernelCounters, s: &SessionStats, rate: f64, byte_rate: f64) -> String {
    let drops: Vec<String> = [
        Counter::RingFull,
        Counter::ConnMapFull,
        Counter::ActiveMapFull,
        Counter::ListenerMapFull,
        Counter::CopyFailed,
        Counter::MmsgNotCaptured,
        Counter::ConnUnseen,
    ]
    .iter()
    .map(|c| format!("{}={}", c.name(), k[*c as usize]))
    .collect();
    let decode: u64 = s.decode_errors.values().sum();
    format!(
        "status: {rate:.0} events/s, {:.1} KiB/s payload, {} events, {} open conns, truncated={}, decode_errors={decode}, drops: {}",
        byte_rate / 1024.0,
        k[Counter::EventsOut as usize],
        s.open_conns,
        k[Counter::Truncated as usize],
        drops.join(" ")
    )
}

/// Runs the capture until `stop` is set or the duration ends.
pub fn run(options: CaptureOptions, out: CaptureOutput, stop: Arc<AtomicBool>) -> Result<(), CaptureError> {
    let mut session = Session::start(options)?;
    if let Some(path) = &out.record {
        let rec = crate::events::record::Recorder::create(path)
            .map_err(|e| CaptureError::Io(format!("--record {}", path.display()), e))?;
        session.record_to(rec);
    }
    let mut clock = Clock::now();
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    let started = Instant::now();
    eprintln!(
        "tracewire: capturing with {} programs attached (Ctrl-C to stop)",
        session.capture().attached()
    );
    if out.json {
        let _ = writeln!(
            w,
            "{}",
            json!({"type": "ready", "programs": session.capture().attached(), "data_hooks": session.capture().data_hooks().name(), "inject": session.capture().inject().describe()})
        );
        let _ = w.flush();
    }
    let mut status = Status { last: Instant::now(), last_events: 0, last_bytes: 0 };
    let mut write_failed = false;
    // On the way out, non-blocking polls read what the ring holds (a poll takes a bounded share).
    let mut drain = session.drain_polls();
    loop {
        let stopping = stop.load(Ordering::Relaxed) || out.duration.is_some_and(|d| started.elapsed() >= d);
        let timeout = if stopping { Duration::ZERO } else { Duration::from_millis(20) };
        let read = session.poll(timeout, |ev| {
            let line = if out.json {
                event_json(ev, &clock, out.show_payload).to_string()
            } else {
                event_text(ev, &clock, out.show_payload)
            };
            if writeln!(w, "{line}").is_err() {
                write_failed = true;
            }
        })?;
        if write_failed || w.flush().is_err() {
            // stdout closed (e.g. piped into `head`): stop quietly.
            break;
        }
        if stopping {
            drain = drain.saturating_sub(1);
            if read == 0 || drain == 0 {
                break;
            }
        }
        if !out.status_every.is_zero() && status.last.elapsed() >= out.status_every {
            print_status(&session, &mut status, &out, &mut w)?;
            clock.refresh();
        }
    }
    print_status(&session, &mut status, &out, &mut w)?;
    let _ = w.flush();
    Ok(())
}

fn print_status(
    session: &Session,
    status: &mut Status,
    out: &CaptureOutput,
    w: &mut impl Write,
) -> Result<(), CaptureError> {
    let k = session.kernel_counters()?;
    let secs = status.last.elapsed().as_secs_f64().max(1e-3);
    let events = k[Counter::EventsOut as usize];
    let bytes = k[Counter::PayloadBytes as usize];
    let rate = (events - status.last_events.min(events)) as f64 / secs;
    let byte_rate = (bytes - status.last_bytes.min(bytes)) as f64 / secs;
    *status = Status { last: Instant::now(), last_events: events, last_bytes: bytes };
    eprintln!("{}", status_text(&k, session.stats(), rate, byte_rate));
    if out.json {
        let _ = writeln!(w, "{}", status_json(&k, session.stats(), rate, byte_rate));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_heads_drop_the_query() {
        assert_eq!(
            http_head(b"GET /a?token=x HTTP/1.1\r\nHost: h\r\n").as_deref(),
            Some("GET /a?… HTTP/1.1")
        );
        assert_eq!(http_head(b"HTTP/1.1 200 OK\r\n").as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(http_head(b"\x16\x03\x01binary"), None);
        assert_eq!(http_head(b""), None);
    }

    #[test]
    fn addresses_format_and_unmap() {
        use tracewire_common::FAMILY_V6;
        let mut a = SockAddr { family: FAMILY_V6, port: 80, addr: [0; 16] };
        a.addr[10] = 0xff;
        a.addr[11] = 0xff;
        a.addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr_str(&a), "127.0.0.1:80");
        a.addr = [0; 16];
        a.addr[15] = 1;
        assert_eq!(addr_str(&a), "[::1]:80");
        assert_eq!(addr_str(&SockAddr::default()), "?");
    }
}
