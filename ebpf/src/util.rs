//! Small helpers shared by the probes: configuration, the process filter, counters, event output
//! and tracepoint argument access.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    programs::TracePointContext,
};
use tracewire_common::{
    ActiveCall, CallParent, Config, ConnId, Counter, DEFAULT_PAYLOAD, EventHeader, FAMILY_V4, FAMILY_V6,
    ListenerState, SAMPLE_ALL, SELECT_ALL, SELECT_WATCHED, SockAddr, SockOffsets, WATCH_CLIENTS, WATCH_GO,
    WATCH_GO_TLS, WATCH_HANDOFF, WATCH_SELECTED, WATCH_TLS,
};

use crate::maps::{COUNTERS, EVENTS, WATCHED};

/// Written by userspace at load time (`EbpfLoader::set_global`); read-only for the verifier, so
/// branches on it are folded away.
#[unsafe(no_mangle)]
static TRACEWIRE_CONFIG: Config = Config {
    self_tgid: 0,
    select: SELECT_WATCHED,
    payload_cap: DEFAULT_PAYLOAD,
    port_filter: 0,
    fork_child_pid_offset: 20,
    flags: 0,
    wakeup_bytes: 0,
    sample_threshold: SAMPLE_ALL,
    rate_interval_ns: 0,
    sk: SockOffsets {
        valid: 0,
        daddr: 0,
        rcv_saddr: 0,
        dport: 0,
        num: 0,
        family: 0,
        v6_daddr: 0,
        v6_rcv_saddr: 0,
        socket: 0,
        protocol: 0,
    },
};

/// The configuration userspace set at load. Its address goes through a volatile read: the
/// compiler cannot see the static behind it, so it neither folds the compile-time defaults into
/// the code nor, unlike a volatile read of the whole struct, loads the fields a caller does not
/// use (every call used to load all twenty, several times per event).
#[inline(always)]
pub fn config() -> &'static Config {
    let p: *const Config = core::ptr::addr_of!(TRACEWIRE_CONFIG);
    // SAFETY: `p` points at a plain static that nothing in the programs writes (userspace sets
    // it before loading); reading a local through a volatile load is always sound.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// The agent's own tgid and the selection mode: two configuration fields, not the whole
/// configuration.
#[inline(always)]
fn selection() -> (u32, u32) {
    // SAFETY: fields of a plain static; volatile so the compiler does not fold the defaults.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(TRACEWIRE_CONFIG.self_tgid)),
            core::ptr::read_volatile(core::ptr::addr_of!(TRACEWIRE_CONFIG.select)),
        )
    }
}

/// True when `tgid` is selected for tracing. This is the whole cost an unwatched process pays on
/// a hooked call: two configuration fields and one inlined array lookup.
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    let (me, select) = selection();
    tgid != me && (select == SELECT_ALL || watch_bits(tgid) & WATCH_SELECTED != 0)
}

/// True when `tgid` is selected for tracing and may have client connections: [`is_watched`] and
/// the [`WATCH_CLIENTS`] bit from one read of its byte. A tgid beyond the array may have them.
#[inline(always)]
pub fn is_watched_client(tgid: u32) -> bool {
    let (me, select) = selection();
    if tgid == me {
        return false;
    }
    let Some(p) = watch_byte(tgid) else {
        return select == SELECT_ALL;
    };
    // SAFETY: pointer into the map value, valid for the program's run.
    let bits = unsafe { *p };
    bits & WATCH_CLIENTS != 0 && (select == SELECT_ALL || bits & WATCH_SELECTED != 0)
}

/// Records that `tgid` opened a client connection (once: the bit is checked first).
#[inline(always)]
pub fn set_clients(tgid: u32) {
    if watch_bits(tgid) & WATCH_CLIENTS == 0 {
        set_bits(tgid, WATCH_CLIENTS);
    }
}

/// Records that `tgid` made a call into its probed TLS library (once: the bit is checked first).
/// Set by the library's first call rather than when the probes are placed: a process that maps
/// the library and never calls it (nginx serving plain HTTP) keeps the socket hooks' TLS check
/// to a bit test.
#[inline(always)]
pub fn set_tls(tgid: u32) {
    if watch_bits(tgid) & WATCH_TLS == 0 {
        set_bits(tgid, WATCH_TLS);
    }
}

/// `tgid`'s byte in [`WATCHED`] (eight processes to a value; byte k of a little- or big-endian
/// value is at address + k either way, and userspace indexes the mapped bytes by tgid).
#[inline(always)]
fn watch_byte(tgid: u32) -> Option<*mut u8> {
    let p = WATCHED.get_ptr_mut(tgid >> 3)? as *mut u8;
    // SAFETY: (tgid & 7) < 8, the value's size.
    Some(unsafe { p.add((tgid & 7) as usize) })
}

/// `tgid`'s map value and the shift of its byte in it.
#[inline(always)]
fn watch_word(tgid: u32) -> Option<(*mut u64, u32)> {
    let byte = tgid & 7;
    let shift = if cfg!(target_endian = "little") { byte * 8 } else { (7 - byte) * 8 };
    Some((WATCHED.get_ptr_mut(tgid >> 3)?, shift))
}

// The selection bits change atomically on their whole 8-byte value: the agent changes bytes of
// the same value at any time (with atomics of its own), and threads of one process on other
// CPUs change other bits of the same byte. A plain read-modify-write could undo either. The
// intrinsics emit BPF_ATOMIC AND/OR, which every kernel with the socket hooks verifies.

/// Sets `bits` in `tgid`'s byte (atomically, see above).
#[inline(always)]
fn set_bits(tgid: u32, bits: u8) {
    if let Some((word, shift)) = watch_word(tgid) {
        // SAFETY: pointer to the 8-aligned map value, valid for the program's run.
        unsafe {
            core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                word,
                u64::from(bits) << shift,
            );
        }
    }
}

/// Clears `bits` in `tgid`'s byte (atomically, see above).
#[inline(always)]
fn clear_bits(tgid: u32, bits: u8) {
    if let Some((word, shift)) = watch_word(tgid) {
        // SAFETY: as above.
        unsafe {
            core::intrinsics::atomic_and::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                word,
                !(u64::from(bits) << shift),
            );
        }
    }
}

/// `tgid`'s `WATCH_*` bits (0 for a tgid beyond the array).
#[inline(always)]
pub fn watch_bits(tgid: u32) -> u8 {
    // SAFETY: pointer into the map value, valid for the program's run.
    watch_byte(tgid).map_or(0, |p| unsafe { *p })
}

/// Selects or deselects `tgid`, keeping its other bits.
#[inline(always)]
pub fn set_watched(tgid: u32, on: bool) {
    if on { set_bits(tgid, WATCH_SELECTED) } else { clear_bits(tgid, WATCH_SELECTED) }
}

/// Forgets everything about `tgid` (it exited; the pid will be reused).
#[inline(always)]
pub fn clear_process(tgid: u32) {
    clear_bits(tgid, 0xff);
}

/// Whether `tgid`'s threads hand requests to each other (see [`WATCH_HANDOFF`]).
#[inline(always)]
pub fn hands_off(tgid: u32) -> bool {
    watch_bits(tgid) & WATCH_HANDOFF != 0
}

/// Records that `tgid`'s threads hand requests to each other (once: the bit is checked first).
#[inline(always)]
pub fn set_handoff(tgid: u32) {
    if !hands_off(tgid) {
        set_bits(tgid, WATCH_HANDOFF);
    }
}

/// A new program runs in `tgid`: what was learned about the old one's runtime (its threads
/// hand requests around, it is Go, its TLS library is probed) no longer holds. Only the
/// selection (and whether it has client connections, which may outlive the exec) stays.
#[inline(always)]
pub fn new_program(tgid: u32) {
    clear_bits(tgid, WATCH_HANDOFF | WATCH_GO | WATCH_TLS | WATCH_GO_TLS);
}

/// Removes `$key` from hash map `$map` when it is there. A lookup takes no lock; a removal takes
/// the key's bucket lock with interrupts off whether the key is there or not, and most removals
/// on the connection lifecycle find nothing (every TCP socket of the node is closed and freed, and
/// few have entries).
macro_rules! remove_present {
    ($map:expr, $key:expr) => {{
        let key = $key;
        if $map.get_ptr(key).is_some() {
            let _ = $map.remove(key);
        }
    }};
}
pub(crate) use remove_present;

/// Zeroes `*p` a word at a time (words as wide as `T`'s alignment allows). The BPF backend
/// emits every other way of zeroing memory (`Default`, `[0; N]`, a loop storing zeros, which
/// LLVM recognises) as a call to a memset that stores one byte per loop turn: about five
/// instructions per byte, which made a new connection's 96-byte state cost ~500 instructions.
/// Volatile stores are not turned back into a memset.
///
/// # Safety
/// `p` is valid for writes of a `T` and aligned for it, and every bit pattern of zeros is a
/// valid `T` (plain data).
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    let n = core::mem::size_of::<T>();
    let align = core::mem::align_of::<T>();
    // SAFETY: `n` bytes from `p`, in words the alignment allows (all constant: one branch is
    // left after folding).
    unsafe {
        if align >= 8 && n.is_multiple_of(8) {
            zero_words(p as *mut u64, n / 8);
        } else if align >= 4 && n.is_multiple_of(4) {
            zero_words(p as *mut u32, n / 4);
        } else if align >= 2 && n.is_multiple_of(2) {
            zero_words(p as *mut u16, n / 2);
        } else {
            zero_words(p as *mut u8, n);
        }
    }
}

/// Stores `n` zero words from `p` (see [`zero`]).
#[inline(always)]
unsafe fn zero_words<W: Default>(p: *mut W, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller's bounds.
        unsafe { core::ptr::write_volatile(p.add(i), W::default()) };
        i += 1;
    }
}

/// Types made of integers and arrays of them only (no references, no niches), for which all
/// zero bits are a valid value: what [`zeroed`] may produce.
///
/// # Safety
/// Implemented only for such types.
pub unsafe trait Plain: Copy {}
// SAFETY: `#[repr(C)]` structs of integers, arrays of integers and each other.
unsafe impl Plain for SockAddr {}
// SAFETY: as above.
unsafe impl Plain for ConnId {}
// SAFETY: as above.
unsafe impl Plain for CallParent {}
// SAFETY: as above.
unsafe impl Plain for ActiveCall {}
// SAFETY: as above.
unsafe impl Plain for ListenerState {}
// SAFETY: bytes.
unsafe impl<const N: usize> Plain for [u8; N] {}

/// A zeroed `T`, written as [`zero`] does.
#[inline(always)]
pub fn zeroed<T: Plain>() -> T {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: a local of the right size and alignment, and zeros are a valid `T` (`Plain`).
    unsafe {
        zero(v.as_mut_ptr());
        // Hides the zeros from the optimiser: copying memory it knows is zero is a memset again.
        core::hint::black_box(v.as_mut_ptr());
        v.assume_init()
    }
}

/// An address of `family` and `port` whose first bytes are `bytes` (an IPv4 address; the rest
/// zero), built without a memset (see [`zero`]).
#[inline(always)]
pub fn sock_addr_v4(family: u16, port: u16, bytes: [u8; 4]) -> SockAddr {
    let mut a: SockAddr = zeroed();
    a.family = family;
    a.port = port;
    a.addr[..4].copy_from_slice(&bytes);
    a
}

#[inline(always)]
pub fn count(c: Counter) {
    add(c, 1);
}

#[inline(always)]
pub fn add(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn header(kind: u32, pid_tgid: u64, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: helper without arguments.
        cpu: unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() },
        ts_ns,
        pid_tgid,
    }
}

/// Wakeup policy: wake the reader when the record of `len` bytes about to be written takes the
/// bytes this CPU has written across a multiple of the configured size. A wakeup costs the
/// traced thread an irq_work and a self-IPI (in a VM, an exit to the hypervisor:
/// microseconds); waking on every record would pay that per record. This way there is at most
/// one wakeup per `wakeup_bytes` of records per CPU, and userspace also polls on a short timer,
/// so nothing waits long. The count is this CPU's own: asking the ring how much is unread would
/// pull the reader's position (its cache line, written on another CPU) over on every record.
#[inline(always)]
fn wake_flags(cfg: &Config, len: u64) -> u64 {
    let every = cfg.wakeup_bytes;
    if every == 0 {
        return 0;
    }
    let Some(p) = COUNTERS.get_ptr_mut(Counter::RingBytes as u32) else {
        return 0;
    };
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    let before = unsafe { *p };
    // Each record also takes an 8-byte header in the ring.
    let after = before + len + 8;
    // SAFETY: as above.
    unsafe { *p = after };
    // `every` is a power of two (see `Config::wakeup_bytes`): a mask instead of a division,
    // which costs tens of cycles.
    let mask = !(every - 1);
    if after & mask != before & mask {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        count(Counter::WakeupsSkipped);
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Counts an output to the ring: written, or lost to a full ring (false).
#[inline(always)]
fn counted(written: Result<(), i32>) -> bool {
    count(if written.is_ok() { Counter::EventsOut } else { Counter::RingFull });
    written.is_ok()
}

/// Writes a fixed-size event, counting success or loss. Returns whether it was written.
#[inline(always)]
pub fn emit<T: 'static>(cfg: &Config, ev: &T) -> bool {
    let flags = wake_flags(cfg, core::mem::size_of::<T>() as u64);
    counted(EVENTS.output::<T>(ev, flags))
}

/// Writes the first `len` bytes of `buf` as one event. Returns whether it was written.
#[inline(always)]
pub fn emit_bytes(cfg: &Config, buf: &[u8], len: usize) -> bool {
    let flags = wake_flags(cfg, len as u64);
    if len > buf.len() {
        return false;
    }
    // SAFETY: len <= buf.len() checked above.
    let bytes = unsafe { buf.get_unchecked(..len) };
    counted(EVENTS.output::<[u8]>(bytes, flags))
}

/// Argument `n` of a `syscalls:sys_enter_*` tracepoint. Their format is stable: 8 bytes of common
/// fields, `int __syscall_nr`, 4 bytes of padding, then 8-byte arguments (checked by userspace
/// against tracefs before loading).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: constant offset inside the tracepoint record; direct context access.
    unsafe { *(ctx.as_ptr() as *const u64).add(2 + n) }
}

/// Return value of a `syscalls:sys_exit_*` tracepoint (`long ret` at offset 16).
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: as for `arg`.
    unsafe { *(ctx.as_ptr() as *const i64).add(2) }
}

/// Reads a `struct sockaddr_in{,6}` from user memory. Anything else (AF_UNIX, AF_NETLINK...) is
/// `None`: only inet sockets can be TCP.
#[inline(always)]
pub fn read_sockaddr(ptr: u64) -> Option<SockAddr> {
    if ptr == 0 {
        return None;
    }
    // Read the 16 bytes every inet sockaddr has first: the caller's buffer may be exactly a
    // sockaddr_in at the end of a page.
    // SAFETY: bpf_probe_read_user validates the user address.
    let head: [u8; 16] = unsafe { bpf_probe_read_user(ptr as *const [u8; 16]) }.ok()?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    if family == FAMILY_V4 {
        Some(sock_addr_v4(family, port, [head[4], head[5], head[6], head[7]]))
    } else if family == FAMILY_V6 {
        // sin6_addr is at offset 8 of the 28-byte sockaddr_in6.
        // SAFETY: as above.
        let addr = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.ok()?;
        Some(SockAddr { family, port, addr })
    } else {
        None
    }
}
