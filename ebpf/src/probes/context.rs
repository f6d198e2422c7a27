//! Trace context, minted where a request starts.
//!
//! A connection alternates turns: a server reads a request then writes its response; a client
//! writes a request then reads its response. The first bytes of a turn start a request, and that
//! is where its context is decided, in the kernel, so that the span id a client writes into the
//! TCP option (see `tcpopt`) is the one userspace later exports, and the node at the other end
//! makes its server span that span's child.
//!
//! - **Server turn** (first read after a write): the request's own `traceparent` header wins
//!   (found by a bounded scan of the first bytes read); else the context the peer's agent sent in
//!   the TCP option; else a new trace, sampled by the configured ratio (or admitted by the rate
//!   limiter). The reading thread now serves this request.
//! - **Client turn** (first write after a read): in a Go program, a child of the request the
//!   calling goroutine serves when the uprobes followed the call (see `golang`); in nginx, of
//!   the request the upstream connection was opened for (see `nginx`); else a child of
//!   the request the thread serves when it serves exactly one; a new trace flagged ambiguous when
//!   it has several open (an event loop interleaving requests: the parent is never guessed); else
//!   a new trace.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::LruHashMap};
use tracewire_common::{
    CFG_PARENT_BASED, CFG_SKIP_UNSAMPLED, CFG_TCP_OPTION, CTX_AMBIGUOUS, CTX_GOROUTINE, CTX_HEADER, CTX_ROOT,
    CTX_TCP, CTX_THREAD, CTX_UPSTREAM, CallParent, Config, ConnId, ConnState, Counter, DIR_EGRESS,
    DIR_INGRESS, GAP_UNSAMPLED, TcpCtx, TcpCtxEntry, ThreadCtx, TraceCtx, fd_key,
};

use super::{golang::call_parent, nginx::upstream_parent};

use crate::{
    maps::{CONNS, RATE, RNG, TCP_TX, THREAD_CTX},
    util::{config, count, hands_off, now, set_handoff, zeroed},
};

/// 64 random bits: SplitMix64 over a per-CPU state seeded from the kernel's generator. A
/// request needs three (trace id and span id); one helper call each would cost more than the
/// rest of the id minting. Each CPU walks the generator's 2^64-long cycle from its own random
/// point, so ids from different CPUs do not collide.
#[inline(always)]
fn rand64() -> u64 {
    let Some(state) = RNG.get_ptr_mut(0) else {
        return kernel_rand64();
    };
    // SAFETY: this CPU's value; tracing programs do not nest on a CPU.
    let mut x = unsafe { *state };
    if x == 0 {
        x = kernel_rand64();
    }
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    // SAFETY: as above.
    unsafe { *state = x };
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 bits from the kernel's generator (two helper calls).
#[inline(always)]
fn kernel_rand64() -> u64 {
    // SAFETY: helpers without arguments.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    ((a as u64) << 32) | b as u64
}

/// A new trace id; the sampled flag follows from it (the rightmost 7 bytes, as userspace's ratio
/// sampler and OpenTelemetry's do).
#[inline(always)]
fn new_trace(cfg: &Config, ctx: &mut TraceCtx) {
    // The top bit keeps the id non-zero without touching the 56 random bits sampling reads.
    let hi = rand64() | (1 << 63);
    let lo = rand64();
    ctx.trace_id[..8].copy_from_slice(&hi.to_be_bytes());
    ctx.trace_id[8..].copy_from_slice(&lo.to_be_bytes());
    ctx.trace_flags =
        if cfg.rate_interval_ns != 0 { admitted(cfg.rate_interval_ns) } else { by_ratio(cfg, &ctx.trace_id) }
            as u8;
}

/// The rate limiter's burst tolerance: how far ahead of now the next trace's theoretical
/// arrival time may be (about a second's worth of traces at once).
const RATE_BURST_NS: u64 = 1_000_000_000;

/// Head rate limiting (GCRA): a new trace is admitted while the theoretical arrival time of the
/// next one is at most a second ahead of now, and each admitted trace moves it one `interval`
/// further. One word for the node, updated with compare-and-swap: when another CPU admitted a
/// trace at the same moment, this one is not retried, just not sampled.
#[inline(never)]
fn admitted(interval: u64) -> bool {
    let Some(p) = RATE.get_ptr_mut(0) else {
        return false;
    };
    let t = now();
    // SAFETY: map value pointer, valid for this run; concurrent writers use compare-and-swap.
    let tat = unsafe { core::ptr::read_volatile(p) };
    let start = if tat > t { tat } else { t };
    if start - t > RATE_BURST_NS {
        return false;
    }
    // SAFETY: as above; BPF_CMPXCHG on the map word.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            p,
            tat,
            start + interval,
        )
    }
    .1
}

/// The ratio decision on a trace id: its rightmost 7 bytes below the threshold.
#[inline(always)]
fn by_ratio(cfg: &Config, trace_id: &[u8; 16]) -> bool {
    let lo = u64::from_be_bytes([
        0,
        trace_id[9],
        trace_id[10],
        trace_id[11],
        trace_id[12],
        trace_id[13],
        trace_id[14],
        trace_id[15],
    ]);
    lo < cfg.sample_threshold
}

/// A trace continued from a remote parent: the parent's flag decides for parent-based
/// samplers, the ratio otherwise (as userspace decides).
#[inline(always)]
fn continued(cfg: &Config, ctx: &mut TraceCtx) {
    if cfg.flags & CFG_PARENT_BASED == 0 {
        ctx.trace_flags = (ctx.trace_flags & !1) | by_ratio(cfg, &ctx.trace_id) as u8;
    }
}

/// Applies the sampling decision of the turn that starts: an unsampled request is not reported
/// (when configured so), and the next reported event says bytes were left out. An HTTP/2
/// connection's turns are not requests, and every byte of its header blocks is needed.
#[inline(always)]
fn decide_reporting(cfg: &Config, state: &mut ConnState) {
    if cfg.flags & CFG_SKIP_UNSAMPLED != 0 && state.ctx.trace_flags & 1 == 0 && state.h2 == 0 {
        state.skip = 1;
        state.gap |= GAP_UNSAMPLED;
        count(Counter::SampledOut);
    } else {
        state.skip = 0;
    }
}

/// A new span id, never zero.
#[inline(always)]
fn new_span() -> [u8; 8] {
    (rand64() | 0x100).to_be_bytes()
}

/// The open request of server connection `conn` (context `ctx`), as a call's parent.
#[inline(always)]
pub fn parent_of(conn: ConnId, ctx: &TraceCtx, goid: u64) -> CallParent {
    CallParent {
        goid,
        conn,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        trace_flags: ctx.trace_flags,
        _pad: 0,
        _pad2: 0,
        _pad3: 0,
    }
}

/// Whether the request `p` names is still the one its connection is in: a parent the uprobes
/// recorded earlier is used only while its request is open.
#[inline(always)]
pub fn still_open(p: &CallParent) -> bool {
    // SAFETY: copied out of the map.
    match unsafe { CONNS.get(&fd_key(p.conn.tgid, p.conn.fd)) } {
        Some(s) => {
            s.generation == p.conn.generation
                && s.turn == DIR_INGRESS
                && u64::from_ne_bytes(s.ctx.span_id) == u64::from_ne_bytes(p.span_id)
        }
        None => false,
    }
}

/// Takes the tie of client connection `key` from `ties` (nginx upstreams, Go calls): the request
/// the connection's next call is made for, if that request is still open.
#[inline(always)]
pub fn take_tie(ties: &LruHashMap<u64, CallParent>, key: u64, out: &mut CallParent) -> bool {
    // SAFETY: copied out of the map.
    let Some(p) = (unsafe { ties.get(&key) }).copied() else {
        return false;
    };
    let _ = ties.remove(&key);
    if !still_open(&p) {
        return false;
    }
    *out = p;
    true
}

/// The first write of a request on a client connection (called at syscall entry: the segments
/// leave during the call, and they must carry the option).
#[inline(never)]
pub fn client_turn(pid_tgid: u64, fd: u32, state: &mut ConnState) {
    let cfg = &config();
    // A new request: what the last one's body left is not looked for (see `report`).
    state.in_body &= !(1 << DIR_EGRESS);
    let tgid = (pid_tgid >> 32) as u32;
    let mut ctx = TraceCtx { span_id: new_span(), ..TraceCtx::default() };
    let mut followed: CallParent = zeroed();
    state.parent = zeroed();
    // A call the uprobes followed to its request: a child of it, and the connection it came in
    // on goes with the events (userspace confirms the parent from there).
    let mut child_of = |p: &CallParent, origin: u8, counter: Counter| {
        ctx.trace_id = p.trace_id;
        ctx.parent_id = p.span_id;
        ctx.trace_flags = p.trace_flags;
        ctx.origin = origin;
        state.parent = p.conn;
        count(counter);
    };
    // SAFETY: copied out of the map.
    match unsafe { THREAD_CTX.get(pid_tgid as u32) }.copied() {
        // A Go call whose request the uprobes followed from the serving goroutine.
        _ if call_parent(tgid, fd, &mut followed) => child_of(&followed, CTX_GOROUTINE, Counter::GoLinked),
        // An nginx upstream request on the connection nginx opened for its client request.
        _ if upstream_parent(tgid, fd, &mut followed) => {
            child_of(&followed, CTX_UPSTREAM, Counter::UpstreamLinked)
        }
        // Threads that hand requests to each other prove nothing about a call's parent.
        _ if hands_off(tgid) => {
            new_trace(cfg, &mut ctx);
            ctx.origin = CTX_AMBIGUOUS;
        }
        Some(t) if t.conn.tgid == tgid && t.conn.generation != 0 && t.open == 1 => {
            ctx.trace_id = t.trace_id;
            ctx.parent_id = t.span_id;
            ctx.trace_flags = t.trace_flags;
            ctx.origin = CTX_THREAD;
        }
        Some(t) if t.conn.tgid == tgid && t.open > 0 => {
            new_trace(cfg, &mut ctx);
            ctx.origin = CTX_AMBIGUOUS;
        }
        _ => {
            new_trace(cfg, &mut ctx);
            ctx.origin = CTX_ROOT;
        }
    }
    // The option has one flag bit to spare: the span id's lowest.
    ctx.span_id[7] = (ctx.span_id[7] & !1) | (ctx.trace_flags & 1);
    state.ctx = ctx;
    state.turn = DIR_EGRESS;
    state.injected = 0;
    decide_reporting(cfg, state);
    if cfg.flags & CFG_TCP_OPTION != 0 && state.skaddr != 0 {
        let entry = TcpCtxEntry {
            ctx: TcpCtx { trace_id: ctx.trace_id, span_id: ctx.span_id },
            local_port: state.local.port as u32,
            _pad: 0,
        };
        // A keep-alive connection's entry is rewritten in place, request after request: an LRU
        // insert takes an element from the map's free lists (locks) every time.
        match TCP_TX.get_ptr_mut(state.skaddr) {
            // SAFETY: map value pointer, valid for this run. The option callback reads it for
            // this socket's segments, and the previous request's are all sent and answered.
            Some(p) => unsafe { *p = entry },
            None => {
                let _ = TCP_TX.insert(state.skaddr, entry, 0);
            }
        }
    }
}

/// The first read of a request on a server connection `fd`. `head` points at the bytes read
/// (`n` of them were copied).
#[inline(never)]
pub fn server_turn(pid_tgid: u64, state: &mut ConnState, fd: u32, head: *mut u8, n: u64) {
    let cfg = &config();
    let conn = &ConnId { tgid: (pid_tgid >> 32) as u32, fd, generation: state.generation };
    let mut ctx = TraceCtx { span_id: new_span(), ..TraceCtx::default() };
    if find_traceparent(head, n, &mut ctx) {
        ctx.origin = CTX_HEADER;
        count(Counter::CtxHeader);
        continued(cfg, &mut ctx);
    } else if state.rx_valid != 0 {
        ctx.trace_id = state.rx.trace_id;
        ctx.parent_id = state.rx.span_id;
        ctx.trace_flags = state.rx.span_id[7] & 1;
        ctx.origin = CTX_TCP;
        count(Counter::TcpOptUsed);
        continued(cfg, &mut ctx);
    } else {
        new_trace(cfg, &mut ctx);
        ctx.origin = CTX_ROOT;
    }
    state.rx_valid = 0;
    state.ctx = ctx;
    state.turn = DIR_INGRESS;
    decide_reporting(cfg, state);
    let tid = pid_tgid as u32;
    state.turn_tid = tid;
    match THREAD_CTX.get_ptr_mut(tid) {
        // SAFETY: map value pointer, valid for this run. Updated in place: a thread serving one
        // request after another keeps its entry.
        Some(t) => unsafe {
            (*t).conn = *conn;
            (*t).trace_id = ctx.trace_id;
            (*t).span_id = ctx.span_id;
            (*t).trace_flags = ctx.trace_flags;
            if (*t).open < u8::MAX {
                (*t).open += 1;
            }
        },
        None => {
            let t = ThreadCtx {
                conn: *conn,
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                trace_flags: ctx.trace_flags,
                open: 1,
                ..ThreadCtx::default()
            };
            let _ = THREAD_CTX.insert(tid, t, 0);
        }
    }
}

/// The request of a server turn is over: its response is being written by thread `tid`, or
/// (`tid` None) the connection closed. The thread that read it serves it no more. A response
/// written by another thread than the one that read the request shows this process hands
/// requests between threads.
#[inline(always)]
pub fn server_turn_end(state: &mut ConnState, conn: &ConnId, tid: Option<u32>) {
    if state.turn == DIR_INGRESS
        && let Some(tid) = tid
        && tid != state.turn_tid
    {
        set_handoff(conn.tgid);
    }
    if state.turn == DIR_INGRESS
        && let Some(t) = THREAD_CTX.get_ptr_mut(state.turn_tid)
    {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            if (*t).open > 0 {
                (*t).open -= 1;
            }
            if (*t).conn == *conn {
                (*t).conn.generation = 0;
            }
        }
    }
    state.turn = DIR_EGRESS;
    state.rx_valid = 0;
}

/// Bytes of a request head searched for `traceparent`.
pub(crate) const SCAN_BYTES: u64 = 1024;
/// Offsets into the scratch buffer are masked with this (it has room for mask + 64 more bytes).
const MASK: u64 = 2047;
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWER: u64 = 0x2020_2020_2020_2020;

#[inline(always)]
pub(crate) fn load64(base: *mut u8, off: u64) -> u64 {
    // SAFETY: the offset is masked into the scratch buffer (see MASK).
    unsafe { core::ptr::read_unaligned(base.add((off & MASK) as usize) as *const u64) }
}

/// The word at `off`, a multiple of 8: `base` is 8-aligned (a payload in a `Scratch` slot).
#[inline(always)]
fn load_word(base: *mut u8, off: u64) -> u64 {
    // SAFETY: masked into the scratch buffer as for load64; aligned as documented.
    unsafe { core::ptr::read(base.add((off & MASK & !7) as usize) as *const u64) }
}

#[inline(always)]
fn byte(base: *mut u8, off: u64) -> u8 {
    // SAFETY: as for load64.
    unsafe { *base.add((off & MASK) as usize) }
}

/// `v`, as a value the verifier knows nothing about. The verifier walks every path with the
/// values it can track and gives up at a million instructions; where many paths differ only in
/// such a value, a round trip through map memory (which it does not track) merges them. The 8
/// bytes before the payload are the event header's last field, written after this.
#[inline(always)]
pub(crate) fn opaque(head: *mut u8, v: u64) -> u64 {
    // SAFETY: `head` is HDR bytes into the scratch slot, so head - 8 is inside it.
    unsafe {
        let slot = head.sub(8) as *mut u64;
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}

/// Index of the lowest byte of `m` whose high bit is set: its bit is 8k+7; a multiply collects k.
#[inline(always)]
pub(crate) fn lowest(m: u64) -> u64 {
    ((m & m.wrapping_neg()) >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56
}

/// Bytes of `x` equal to zero, as their high bits (exact for the lowest one).
#[inline(always)]
pub(crate) fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Lowercase hex digit value, or 16 when not one (W3C: lowercase only).
#[inline(always)]
fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 16,
    }
}

/// Decodes `N` bytes of lowercase hex at `off`.
#[inline(always)]
fn hex_bytes<const N: usize>(base: *mut u8, off: u64, out: &mut [u8; N]) -> bool {
    let mut any = 0u8;
    let mut i = 0;
    while i < N {
        let hi = hex(byte(base, off + 2 * i as u64));
        let lo = hex(byte(base, off + 2 * i as u64 + 1));
        if hi > 15 || lo > 15 {
            return false;
        }
        out[i] = (hi << 4) | lo;
        any |= out[i];
        i += 1;
    }
    any != 0
}

/// Looks for `traceparent: 00-<trace id>-<parent id>-<flags>` in the first bytes of a request
/// head, eight bytes per step: a line start followed by `t`/`T` is found with word-wide
/// arithmetic, then the name and value are checked. One header per request is the common case;
/// userspace parses the whole head and counts any disagreement.
#[inline(always)]
pub(crate) fn find_traceparent(head: *mut u8, n: u64, ctx: &mut TraceCtx) -> bool {
    // Callers reach here with many different known lengths (one per way through the iovec
    // copy); opaque, the scan is verified once.
    let n = opaque(head, n);
    let limit = if n < SCAN_BYTES { n } else { SCAN_BYTES };
    let name = u64::from_le_bytes(*b"tracepar");
    let name_end = u32::from_le_bytes(*b"ent:") as u64;
    let mut at: u64 = 0;
    let mut off: u64 = 0;
    // Words at multiples of 8 are loaded whole; the word one byte further is assembled from two
    // of them (an unaligned load is eight byte loads in BPF).
    let mut word = load_word(head, 0);
    while off < SCAN_BYTES {
        if off + 9 > limit {
            break;
        }
        let next = load_word(head, off + 8);
        // Positions holding '\n' whose next byte is 't' or 'T'.
        let nl = zero_bytes(word ^ (ONES * b'\n' as u64));
        let t = zero_bytes((((word >> 8) | (next << 56)) | LOWER) ^ (ONES * b't' as u64));
        let m = nl & t;
        if m != 0 {
            let k = lowest(m);
            let p = off + k + 1;
            let rest = load64(head, p + 8) & 0xffff_ffff;
            if (load64(head, p) | LOWER) == name && (rest | 0x2020_2020) == name_end {
                at = p + 12;
                break;
            }
        }
        word = next;
        off += 8;
    }
    if at == 0 {
        return false;
    }
    // Each way out of the loop leaves a different known value here: made opaque, the rest is
    // verified once.
    let at = opaque(head, at) & MASK;
    // Optional whitespace, then version "00" (or a later one: its first 55 bytes read the same).
    let mut v = at;
    if byte(head, v) == b' ' || byte(head, v) == b'\t' {
        v += 1;
    }
    if byte(head, v) == b' ' || byte(head, v) == b'\t' {
        v += 1;
    }
    if v + 55 > limit {
        return false;
    }
    let version = (hex(byte(head, v)), hex(byte(head, v + 1)));
    if version.0 > 15 || version.1 > 15 || version == (15, 15) {
        return false;
    }
    if byte(head, v + 2) != b'-' || byte(head, v + 35) != b'-' || byte(head, v + 52) != b'-' {
        return false;
    }
    let mut trace: [u8; 16] = zeroed();
    let mut parent: [u8; 8] = zeroed();
    let mut flags = [0u8; 1];
    if !hex_bytes(head, v + 3, &mut trace) || !hex_bytes(head, v + 36, &mut parent) {
        return false;
    }
    let _ = hex_bytes(head, v + 53, &mut flags);
    if hex(byte(head, v + 53)) > 15 || hex(byte(head, v + 54)) > 15 {
        return false;
    }
    ctx.trace_id = trace;
    ctx.parent_id = parent;
    ctx.trace_flags = flags[0];
    true
}
