//! Opt-in `traceparent` injection, for peers that run no agent.
//!
//! Client sockets of selected processes are put in `INJECT_SOCKS` when their handshake
//! completes (see `tcpopt`); this sk_msg program then runs on each of their sends, before the
//! bytes are queued. On the first send of a request it mints the request's context (the same
//! one the TCP option and the exported client span carry), and when the message starts with an
//! HTTP/1 request line and its head, complete within the first [`HEAD_SCAN`] bytes, has no
//! `traceparent`, it inserts `traceparent: 00-<trace id>-<span id>-<flags>` after the request
//! line. A request that already has one keeps it, alone. The message is always passed on.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_smp_processor_id, bpf_msg_pull_data, bpf_probe_read_kernel},
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use tracewire_common::{Counter, DIR_EGRESS, DataEvent, ROLE_CLIENT, TraceCtx};

use super::context::{ONES, SCAN_BYTES, client_turn, find_traceparent, load64, lowest, opaque, zero_bytes};
use crate::{
    maps::{CONNS, SCRATCH, SK_CONN},
    util::count,
};

const SK_PASS: u32 = 1;
/// `traceparent: 00-` + 32 + `-` + 16 + `-` + 2 + CRLF.
const HEADER_LEN: u32 = 70;
const HDR: usize = core::mem::size_of::<DataEvent>();
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Bytes searched for the end of the request line, and for the end of the head: a longer head
/// gets no header (counted as skipped). Kept short so the verifier's walk of the loops stays small.
const LINE_SCAN: u64 = 256;
const HEAD_SCAN: u64 = 512;
/// Where the header line is composed in the scratch slot, after the head and its zero padding.
const LINE_AT: usize = 2 * SCAN_BYTES as usize + 64;

#[sk_msg]
pub fn inject_traceparent(ctx: SkMsgContext) -> u32 {
    inject(&ctx);
    SK_PASS
}

#[inline(always)]
fn inject(ctx: &SkMsgContext) {
    // SAFETY: context field read: the sending socket.
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    // SAFETY: copied out of the map.
    let Some([key, _]) = (unsafe { SK_CONN.get(sk) }).copied() else {
        return;
    };
    let Some(conn) = CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    // A TLS connection's bytes are ciphertext: nothing to insert into. An HTTP/2 connection's
    // headers are compressed (and its requests' turns are decided by the send hooks, which see
    // its control frames).
    if state.role != ROLE_CLIENT
        || state.skaddr != sk
        || state.generation == 0
        || state.tls != 0
        || state.h2 != 0
    {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) != (key >> 32) {
        return; // a socket shared with another process: its state is not this sender's
    }
    if state.turn != DIR_EGRESS {
        // The first send of a request: its context is minted here, before the bytes leave.
        client_turn(id, key as u32, state);
    }
    if state.injected != 0 {
        return; // decided on this request's first send
    }
    state.injected = 1;
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(slot) = SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    // Sampled or not, the header travels: a peer must not sample what this side did not.
    match write_header(ctx, slot.cast(), &state.ctx) {
        Ok(true) => count(Counter::InjectWritten),
        Ok(false) => {}
        Err(counter) => count(counter),
    }
}

/// The header line for `c`, into `line` (scratch memory).
#[inline(never)]
fn compose(line: *mut u8, c: &TraceCtx) {
    let prefix = b"traceparent: 00-";
    let mut i = 0;
    while i < 16 {
        // SAFETY: `line` has HEADER_LEN bytes of scratch after it.
        unsafe { *line.add(i) = prefix[i] };
        i += 1;
    }
    hex_into(line, 16, &c.trace_id);
    hex_into(line, 49, &c.span_id);
    // SAFETY: as above.
    unsafe {
        *line.add(48) = b'-';
        *line.add(65) = b'-';
        *line.add(66) = b'0';
        *line.add(67) = if c.trace_flags & 1 != 0 { b'1' } else { b'0' };
        *line.add(68) = b'\r';
        *line.add(69) = b'\n';
    }
}

/// Scans the message head and inserts the header line for `c` after the request line.
/// Ok(false): not an HTTP/1 request (nothing counted); Err: the counter that says why nothing
/// was inserted.
#[inline(never)]
fn write_header(ctx: &SkMsgContext, slot: *mut u8, c: &TraceCtx) -> Result<bool, Counter> {
    let size = ctx.size() as u64;
    let want = if size < SCAN_BYTES { size } else { SCAN_BYTES };
    // SAFETY: helper on this program's context: makes the first `want` bytes one run.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, want as u32, 0) } != 0 {
        return Err(Counter::InjectSkipped);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let avail = (end - data) as u64;
    let n = if avail < want { avail } else { want };
    if n < 16 {
        return Ok(false);
    }
    // SAFETY: the head is copied after the event-header room, as the data path does, so the
    // shared scanner sees the same layout.
    let head = unsafe { slot.add(HDR) };
    // SAFETY: n <= SCAN_BYTES, inside the slot; the source is the message's linear head.
    if unsafe { bpf_probe_read_kernel(head.cast(), n as u32 & 1023, data as *const _) } != 0 {
        return Err(Counter::InjectSkipped);
    }
    if !is_request_line(head) {
        return Ok(false);
    }
    let mut found = TraceCtx::default();
    if find_traceparent(head, n, &mut found) {
        return Err(Counter::InjectHadHeader);
    }
    // Where the request line ends, and whether the whole head was scanned (a header further on
    // could be a traceparent the scan did not see).
    let (line_end, head_end) = line_and_head_end(head, n);
    if line_end == 0 || head_end == 0 {
        return Err(Counter::InjectSkipped);
    }
    let at = ((line_end + 1) & (SCAN_BYTES - 1)) as u32;
    if ctx.push_data(at, HEADER_LEN, 0).is_err() {
        return Err(Counter::InjectSkipped);
    }
    // SAFETY: helper on this program's context: the new bytes as one run.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + HEADER_LEN, 0) } != 0 {
        return Err(Counter::InjectSkipped);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + HEADER_LEN as usize > end {
        return Err(Counter::InjectSkipped);
    }
    let out = data as *mut u8;
    // SAFETY: scratch after the head and its padding.
    let line = unsafe { slot.add(HDR + LINE_AT) };
    compose(line, c);
    let mut i = 0;
    while i < HEADER_LEN as usize {
        // SAFETY: data + HEADER_LEN <= data_end, checked above; the line is in scratch.
        unsafe { *out.add(i) = *line.add(i) };
        i += 1;
    }
    Ok(true)
}

/// The offsets of the first `\n` (the request line's end, within [`LINE_SCAN`]) and of the blank
/// line that ends the head (within [`HEAD_SCAN`]), among the first `n` bytes (0: not found),
/// eight bytes per step. Two loops that each
/// stop at their first hit: the verifier walks each once.
#[inline(always)]
fn line_and_head_end(head: *mut u8, n: u64) -> (u64, u64) {
    let n = opaque(head, n) & (SCAN_BYTES - 1 + SCAN_BYTES);
    // Zeros after the copied bytes: the word-wide loads below read past `n`, and stale scratch
    // bytes there must not look like line ends.
    // SAFETY: n < 2 * SCAN_BYTES, and the slot extends well past head + 2 * SCAN_BYTES + 16.
    unsafe {
        core::ptr::write_unaligned(head.add(n as usize) as *mut u64, 0);
        core::ptr::write_unaligned(head.add(n as usize + 8) as *mut u64, 0);
    }
    let nl = ONES * b'\n' as u64;
    let cr = ONES * b'\r' as u64;
    let mut line_end = 0;
    let mut off: u64 = 0;
    while off < LINE_SCAN {
        if off >= n {
            break;
        }
        let lf = zero_bytes(load64(head, off) ^ nl);
        if lf != 0 {
            line_end = off + lowest(lf);
            break;
        }
        off += 8;
    }
    let line_end = opaque(head, line_end);
    let mut head_end = 0;
    let mut off: u64 = 0;
    while off < HEAD_SCAN {
        if off >= n {
            break;
        }
        let lf = zero_bytes(load64(head, off) ^ nl);
        let w1 = load64(head, off + 1);
        // "\n\n" or "\n\r\n".
        let blank =
            lf & (zero_bytes(w1 ^ nl) | (zero_bytes(w1 ^ cr) & zero_bytes(load64(head, off + 2) ^ nl)));
        if blank != 0 {
            head_end = off + lowest(blank);
            break;
        }
        off += 8;
    }
    (line_end, opaque(head, head_end))
}

#[inline(always)]
fn hex_into<const N: usize>(line: *mut u8, at: usize, bytes: &[u8; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: `line` has HEADER_LEN bytes of scratch after it; at + 2N <= HEADER_LEN.
        unsafe {
            *line.add(at + 2 * i) = HEX[(bytes[i] >> 4) as usize];
            *line.add(at + 2 * i + 1) = HEX[(bytes[i] & 15) as usize];
        }
        i += 1;
    }
}

#[inline(always)]
fn byte(head: *mut u8, off: u64) -> u8 {
    // SAFETY: masked into the first SCAN_BYTES of the head.
    unsafe { *head.add((off & (SCAN_BYTES - 1)) as usize) }
}

/// A request line starts with an HTTP method and a space.
#[inline(always)]
fn is_request_line(head: *mut u8) -> bool {
    let w = [byte(head, 0), byte(head, 1), byte(head, 2), byte(head, 3), byte(head, 4)];
    matches!(
        &w,
        [b'G', b'E', b'T', b' ', _]
            | [b'P', b'U', b'T', b' ', _]
            | [b'P', b'O', b'S', b'T', b' ']
            | [b'H', b'E', b'A', b'D', b' ']
            | [b'P', b'A', b'T', b'C', b'H']
            | [b'D', b'E', b'L', b'E', b'T']
            | [b'O', b'P', b'T', b'I', b'O']
    )
}
