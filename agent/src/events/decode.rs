//! Decoding of raw ring-buffer records.
//!
//! Every record starts with an [`EventHeader`]; the decoder reads it, checks the record is long
//! enough for the kind it names, and borrows the payload of data events without copying. Records
//! from the kernel are still treated as untrusted input: a short or unknown record is a
//! [`DecodeError`] (counted by the caller), never a panic.
use std::mem::size_of;

use thiserror::Error;
use tracewire_common::{ConnEvent, DataEvent, EventHeader, EventKind, MAX_PAYLOAD, ProcEvent};

/// One decoded event. Data payloads borrow from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Connection opened, closed, or a socket started listening (see `header.kind`).
    Conn(ConnEvent),
    /// Bytes moved on a connection; `payload` holds the first `captured` of them.
    Data(DataEvent, &'a [u8]),
    /// exec / exit / fork.
    Proc(ProcEvent),
}

impl Event<'_> {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        let raw = match self {
            Event::Conn(e) => e.header.kind,
            Event::Data(e, _) => e.header.kind,
            Event::Proc(e) => e.header.kind,
        };
        // Only constructed by `decode`, which validated the kind.
        EventKind::try_from(raw).unwrap_or(EventKind::Data)
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum DecodeError {
    /// Shorter than the fixed part its kind requires.
    #[error("record of {len} bytes is too short for {kind:?} ({need} bytes)")]
    Short {
        /// Kind named by the header.
        kind: EventKind,
        /// Record length.
        len: usize,
        /// Required length.
        need: usize,
    },
    /// Shorter than a header.
    #[error("record of {0} bytes is shorter than an event header")]
    NoHeader(usize),
    /// Unknown kind value.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// A data event claims more payload than the record holds or than any cap allows.
    #[error("data event claims {claimed} payload bytes but the record holds {present}")]
    PayloadMismatch {
        /// `captured` from the event.
        claimed: u32,
        /// Bytes actually present.
        present: usize,
    },
}

impl DecodeError {
    /// Stable name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short_record",
            DecodeError::NoHeader(_) => "no_header",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::PayloadMismatch { .. } => "payload_mismatch",
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: callers check the length first; T is a #[repr(C)] plain-old-data type from
    // tracewire-common (integers and integer arrays only), valid for any bit pattern;
    // read_unaligned handles the ring buffer's 8-byte (not T-) alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn need<T>(kind: EventKind, bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short { kind, len: bytes.len(), need: size_of::<T>() });
    }
    Ok(())
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::NoHeader(bytes.len()));
    }
    let header: EventHeader = read(bytes);
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        EventKind::ConnOpen | EventKind::ConnClose | EventKind::Listen | EventKind::ConnAddr => {
            need::<ConnEvent>(kind, bytes)?;
            Ok(Event::Conn(read(bytes)))
        }
        EventKind::Data => {
            need::<DataEvent>(kind, bytes)?;
            let ev: DataEvent = read(bytes);
            let rest = &bytes[size_of::<DataEvent>()..];
            let captured = ev.captured as usize;
            if captured > rest.len() || captured > MAX_PAYLOAD || ev.captured > ev.len {
                return Err(DecodeError::PayloadMismatch { claimed: ev.captured, present: rest.len() });
            }
            Ok(Event::Data(ev, &rest[..captured]))
        }
        EventKind::Exec | EventKind::Exit | EventKind::Fork => {
            need::<ProcEvent>(kind, bytes)?;
            Ok(Event::Proc(read(bytes)))
        }
    }
}

/// Encoding, the inverse of [`decode`]: used to record and replay captures and in tests.
pub mod encode {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: T is a padding-free #[repr(C)] POD type from tracewire-common.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    /// Encodes an event as the kernel would write it.
    pub fn encode(ev: &Event<'_>) -> Vec<u8> {
        match ev {
            Event::Conn(e) => bytes_of(e).to_vec(),
            Event::Proc(e) => bytes_of(e).to_vec(),
            Event::Data(e, payload) => {
                let mut v = bytes_of(e).to_vec();
                v.extend_from_slice(payload);
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracewire_common::{ConnId, DIR_INGRESS, FAMILY_V4, ROLE_SERVER, SockAddr, Syscall, TraceCtx};

    fn header(kind: EventKind) -> EventHeader {
        EventHeader { kind: kind as u32, cpu: 1, ts_ns: 42, pid_tgid: (7 << 32) | 8 }
    }

    fn data(payload: &[u8]) -> DataEvent {
        DataEvent {
            header: header(EventKind::Data),
            conn: ConnId { tgid: 7, fd: 3, generation: 9 },
            enter_ns: 40,
            thread_ctx: ConnId::default(),
            len: payload.len() as u32 + 10,
            captured: payload.len() as u32,
            direction: DIR_INGRESS,
            syscall: Syscall::Read as u8,
            flags: 0,
            role: ROLE_SERVER,
            _pad: 0,
            _pad2: 0,
            ctx: TraceCtx::default(),
        }
    }

    #[test]
    fn data_round_trip_borrows_payload() {
        let payload = b"GET / HTTP/1.1\r\n";
        let ev = Event::Data(data(payload), payload);
        let bytes = encode::encode(&ev);
        assert_eq!(decode(&bytes), Ok(ev));
    }

    #[test]
    fn conn_and_proc_round_trip() {
        let c = ConnEvent {
            header: header(EventKind::ConnOpen),
            conn: ConnId { tgid: 7, fd: 3, generation: 9 },
            role: ROLE_SERVER,
            flags: 0,
            _pad: [0; 2],
            listener_fd: 0,
            local: SockAddr {
                family: FAMILY_V4,
                port: 80,
                addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            remote: SockAddr::default(),
        };
        assert_eq!(decode(&encode::encode(&Event::Conn(c))), Ok(Event::Conn(c)));
        let p = ProcEvent {
            header: header(EventKind::Exit),
            pid: 7,
            ppid: 1,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(decode(&encode::encode(&Event::Proc(p))), Ok(Event::Proc(p)));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let payload = b"HTTP/1.1 200 OK\r\n";
        let bytes = encode::encode(&Event::Data(data(payload), payload));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn unknown_kind_and_lying_lengths_are_rejected() {
        let mut bytes = encode::encode(&Event::Data(data(b"abc"), b"abc"));
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));

        let mut ev = data(b"abc");
        ev.captured = 1_000; // more than present
        let bytes = encode::encode(&Event::Data(ev, b"abc"));
        assert!(matches!(decode(&bytes), Err(DecodeError::PayloadMismatch { .. })));

        let mut ev = data(b"abc");
        ev.len = 1; // captured more than the syscall moved
        let bytes = encode::encode(&Event::Data(ev, b"abc"));
        assert!(matches!(decode(&bytes), Err(DecodeError::PayloadMismatch { .. })));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no dependency, reproducible failures.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let mut buf = vec![0u8; len];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
            }
            if len >= 4 {
                // Make valid kinds common so deeper paths run.
                buf[..4].copy_from_slice(&[1u32, 2, 3, 10, 20, 21, 22][(x % 7) as usize].to_ne_bytes());
            }
            let _ = decode(&buf);
        }
    }
}
