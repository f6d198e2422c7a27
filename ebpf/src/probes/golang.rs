//! Go: the request an outgoing net/http call is made for.
//!
//! Goroutines move between OS threads, so "a call belongs to the request its thread serves"
//! proves nothing in a Go program. The goroutine is what serves a request, and what it is can be
//! read wherever the program is stopped: the Go ABI keeps the current `g` in a register (r14 on
//! x86_64, x28 on arm64), and `g.goid` is a goroutine's id, never reused (the `g` struct is).
//!
//! 1. A goroutine that reads from a server connection serves that connection's current request
//!    (net/http's `conn.serve` reads each request and runs its handler on the same goroutine):
//!    recorded at every such read ([`serving`]).
//! 2. `net/http.(*persistConn).roundTrip` runs on the goroutine making the call, with the
//!    connection the request goes out on: if that goroutine serves a request still open, the
//!    connection's fd (read through `pc.conn`, a `*net.TCPConn`, to its `netFD`) is tied to that
//!    request ([`go_round_trip`]), and the connection's next client turn takes it as its parent
//!    ([`call_parent`]).
//! 3. Without the layouts this needs (a binary without DWARF, a position-independent one), the
//!    request object is tied instead, and `net/http.(*Request).write`, which runs on the
//!    transport's writer goroutine with that same object, hands it to that goroutine, whose next
//!    client turn is the call ([`go_request_write`]): one probe hit more per call.
//!
//! A goroutine the handler starts (fan-out, errgroup) inherits its creator's request when it is
//! created ([`go_new_goroutine`], on `runtime.gostartcallfn`, which `newproc1` calls with the new
//! goroutine's saved registers on the system stack of the thread whose `m.curg` is the creator).
//! A call it makes while that request is open is the request's child. Userspace attaches this
//! probe only after the program's first net/http call, since every goroutine creation stops on
//! it.
//!
//! Every entry carries the goroutine id and is checked against the server connection's current
//! turn, so neither a recycled `g` nor a request already answered becomes a parent. A call made
//! from a goroutine that serves no request and was started by none stays unlinked.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::uprobe,
    maps::LruHashMap,
    programs::ProbeContext,
};
use tracewire_common::{
    CallParent, ConnId, Counter, DIR_INGRESS, GoKey, GoProc, ROLE_SERVER, TraceCtx, WATCH_GO, fd_key,
};

use super::context::{parent_of, still_open, take_tie};
use crate::{
    maps::{CONNS, GO_ANCESTRY, GO_PROCS, GO_REQS, GO_SERVING, GO_TIES, GO_WRITERS},
    util::{count, is_watched, watch_bits, zeroed},
};

/// Where the Go ABI keeps things in the saved user registers (`struct pt_regs`).
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) mod abi {
    /// r14: the current goroutine's `g`.
    pub const G: usize = 8;
    /// rax, rbx, rcx: the first three integer arguments.
    pub const ARG0: usize = 80;
    pub const ARG1: usize = 40;
    pub const ARG2: usize = 88;
    /// rsp.
    pub const SP: usize = 152;
}

#[cfg(bpf_target_arch = "aarch64")]
pub(crate) mod abi {
    /// x28: the current goroutine's `g`.
    pub const G: usize = 28 * 8;
    /// x0, x1, x2: the first three integer arguments.
    pub const ARG0: usize = 0;
    pub const ARG1: usize = 8;
    pub const ARG2: usize = 16;
    /// sp.
    pub const SP: usize = 31 * 8;
}

/// The process's Go runtime facts, when the uprobes follow it.
#[inline(always)]
fn go_proc(tgid: u32) -> Option<GoProc> {
    if watch_bits(tgid) & WATCH_GO == 0 {
        return None;
    }
    // SAFETY: copied out of the map.
    unsafe { GO_PROCS.get(&tgid) }.copied()
}

/// A goroutine's id, from its `g`.
#[inline(always)]
fn goid(proc: &GoProc, g: u64) -> Option<u64> {
    if g == 0 {
        return None;
    }
    // SAFETY: user memory, read through the checked helper.
    unsafe { bpf_probe_read_user((g + proc.goid_offset as u64) as *const u64) }.ok()
}

/// The goroutine register in a thread's saved user registers `regs` (a BTF-typed `struct
/// pt_regs` pointer from `bpf_task_pt_regs`: the verifier makes the load fault-safe, no helper).
#[inline(always)]
pub(crate) fn goroutine_reg(regs: *const u8) -> u64 {
    // SAFETY: a constant offset inside `struct pt_regs`, loaded through its BTF type.
    unsafe { core::ptr::read_volatile(regs.add(abi::G) as *const u64) }
}

/// The goroutine running on this thread right now (`g` and its id), from the registers the
/// thread entered the kernel with.
#[inline(always)]
fn current_goroutine(proc: &GoProc) -> Option<(u64, u64)> {
    // SAFETY: helpers on the current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return None;
    }
    let g = goroutine_reg(regs);
    Some((g, goid(proc, g)?))
}

/// The process a uprobe fired in and its runtime facts, when it is selected and followed.
#[inline(always)]
pub(crate) fn followed_process() -> Option<(u32, GoProc)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return None;
    }
    Some((tgid, go_proc(tgid)?))
}

/// A register saved at the uprobe.
#[inline(always)]
pub(crate) fn reg(ctx: &ProbeContext, at: usize) -> u64 {
    // SAFETY: `at` is a constant offset inside the context's `pt_regs`.
    unsafe { core::ptr::read_unaligned((ctx.regs as *const u8).add(at) as *const u64) }
}

/// The key of goroutine (or request object) `addr` of process `tgid`.
#[inline(always)]
pub(crate) fn key(tgid: u32, addr: u64) -> GoKey {
    GoKey { tgid, _pad: 0, addr }
}

/// A goroutine of `tgid` read from server connection `conn`, whose current request has context
/// `ctx`: it serves that request. `g`: the goroutine register, when the caller has read it
/// (0: read here).
#[inline(never)]
pub fn serving(tgid: u32, conn: &ConnId, ctx: &TraceCtx, g: u64) {
    let Some(proc) = go_proc(tgid) else {
        return;
    };
    let found = if g != 0 { goid(&proc, g).map(|id| (g, id)) } else { current_goroutine(&proc) };
    let Some((g, goid)) = found else {
        return;
    };
    let v = parent_of(*conn, ctx, goid);
    let k = key(tgid, g);
    // A goroutine reads request after request: its entry is rewritten in place (an LRU insert
    // allocates a new element every time).
    match GO_SERVING.get_ptr_mut(&k) {
        // SAFETY: map value pointer, valid for this run.
        Some(p) => unsafe { *p = v },
        None => {
            let _ = GO_SERVING.insert(&k, &v, 0);
        }
    }
}

/// The request the client turn starting on connection `fd` (on this thread's goroutine) is a
/// call for, if the uprobes tied one to it. Consumes the tie.
#[inline(never)]
pub fn call_parent(tgid: u32, fd: u32, out: &mut CallParent) -> bool {
    let Some(proc) = go_proc(tgid) else {
        return false;
    };
    if proc.tcp_itab != 0 {
        return take_tie(&GO_TIES, fd_key(tgid, fd), out);
    }
    let Some((g, goid)) = current_goroutine(&proc) else {
        return false;
    };
    let k = key(tgid, g);
    // SAFETY: copied out of the map.
    let Some(p) = (unsafe { GO_WRITERS.get(&k) }).copied() else {
        return false;
    };
    let _ = GO_WRITERS.remove(&k);
    if p.goid != goid || !still_open(&p) {
        return false;
    }
    *out = p;
    true
}

/// The open request goroutine `g` (id `goid`) works for: the one it serves, else the one it
/// inherited from the goroutine that started it.
#[inline(never)]
fn request_of(tgid: u32, g: u64, goid: u64, out: &mut CallParent) -> bool {
    let k = key(tgid, g);
    // SAFETY: copied out of the map.
    if let Some(p) = unsafe { GO_SERVING.get(&k) }.copied()
        && p.goid == goid
        && still_open(&p)
    {
        *out = p;
        return true;
    }
    // SAFETY: as above.
    if let Some(p) = unsafe { GO_ANCESTRY.get(&k) }.copied()
        && still_open(&p)
    {
        *out = p;
        return true;
    }
    false
}

/// `runtime.gostartcallfn(gobuf *gobuf, fv *funcval)`: a goroutine is being created, `gobuf` is
/// its `sched`. Runs on the system stack, so the creator is the thread's `m.curg`.
#[uprobe]
pub fn go_new_goroutine(ctx: ProbeContext) -> u32 {
    let Some((tgid, proc)) = followed_process() else {
        return 0;
    };
    if proc.g_m == 0 {
        return 0;
    }
    let child = key(tgid, reg(&ctx, abi::ARG0).wrapping_sub(proc.g_sched as u64));
    let g0 = reg(&ctx, abi::G);
    // SAFETY: user memory, read through the checked helper.
    let creator = unsafe {
        bpf_probe_read_user((g0 + proc.g_m as u64) as *const u64)
            .and_then(|m| bpf_probe_read_user((m + proc.m_curg as u64) as *const u64))
    };
    let mut p: CallParent = zeroed();
    let inherits = match creator {
        Ok(creator) => match goid(&proc, creator) {
            Some(creator_id) => request_of(tgid, creator, creator_id, &mut p),
            None => false,
        },
        Err(_) => false,
    };
    if inherits {
        let _ = GO_ANCESTRY.insert(&child, &p, 0);
    } else {
        // The `g` may have served an earlier goroutine: its entry goes with it.
        let _ = GO_ANCESTRY.remove(&child);
    }
    0
}

/// `net/http.(*persistConn).roundTrip(pc, req *transportRequest)`, on the calling goroutine.
#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let Some((tgid, proc)) = followed_process() else {
        return 0;
    };
    note_calls(tgid, &proc);
    let g = reg(&ctx, abi::G);
    let Some(goid) = goid(&proc, g) else {
        return 0;
    };
    let mut p: CallParent = zeroed();
    let linked = request_of(tgid, g, goid, &mut p);
    if proc.tcp_itab != 0 {
        // The connection itself is tied (a *net.TCPConn, or the one under a *tls.Conn).
        if let Some(fd) = conn_fd(&proc, reg(&ctx, abi::ARG0)) {
            tie(&GO_TIES, &fd_key(tgid, fd), linked.then_some(&p));
        }
        return 0;
    }
    // transportRequest embeds the *Request first: the object the writer goroutine writes.
    // SAFETY: user memory, read through the checked helper.
    let Ok(req) = (unsafe { bpf_probe_read_user(reg(&ctx, abi::ARG1) as *const u64) }) else {
        return 0;
    };
    tie(&GO_REQS, &key(tgid, req), linked.then_some(&p));
    0
}

/// The program makes net/http calls: userspace starts following its goroutine creation (see
/// [`GoProc::calls`]).
#[inline(always)]
fn note_calls(tgid: u32, proc: &GoProc) {
    if proc.calls == 0
        && let Some(p) = GO_PROCS.get_ptr_mut(&tgid)
    {
        // SAFETY: map value pointer, valid for this run.
        unsafe { (*p).calls = 1 };
    }
}

/// The current goroutine of `tgid` is about to write a request's HEADERS frame on HTTP/2 client
/// connection `fd` through `crypto/tls` (see `data`). An HTTP/2 connection carries the calls of
/// many goroutines at once, and no `persistConn.roundTrip` ties them: net/http's HTTP/2
/// transport writes each request from a goroutine the calling one starts for it
/// (`clientStream.doRequest`), which inherited the caller's request when it was created. The
/// write is tied to that goroutine's request, and the call it starts takes it. Such a call also
/// starts the following of goroutine creation, as a first HTTP/1 call does.
#[inline(never)]
pub(crate) fn h2_call(tgid: u32, fd: u32) {
    let Some(proc) = go_proc(tgid) else {
        return;
    };
    note_calls(tgid, &proc);
    let Some((g, goid)) = current_goroutine(&proc) else {
        return;
    };
    let mut p: CallParent = zeroed();
    let linked = request_of(tgid, g, goid, &mut p);
    tie(&GO_TIES, &fd_key(tgid, fd), linked.then_some(&p));
}

/// `net/http.(*http2serverConn).processHeaders(sc, f)`, on the goroutine that serves HTTP/2
/// connection `sc`, for a stream's request headers the connection's reader goroutine read: it
/// starts the stream's handler on a goroutine of its own (`go sc.runHandler`), which inherits
/// what this goroutine serves. The reader read the request, so the connection's turn is the
/// request's; the serving goroutine is noted as serving it (and checked as every parent is: a
/// turn another stream's request or a response ended is not linked to).
#[uprobe]
pub fn go_h2_headers(ctx: ProbeContext) -> u32 {
    let Some((tgid, proc)) = followed_process() else {
        return 0;
    };
    if proc.h2_conn == 0 {
        return 0;
    }
    note_calls(tgid, &proc);
    let Some(fd) = net_conn_fd(&proc, reg(&ctx, abi::ARG0) + proc.h2_conn as u64, true) else {
        return 0;
    };
    // SAFETY: copied out of the map.
    let Some(conn) = (unsafe { CONNS.get(&fd_key(tgid, fd)) }).copied() else {
        return 0;
    };
    if conn.generation == 0 || conn.role != ROLE_SERVER || conn.turn != DIR_INGRESS {
        return 0;
    }
    let id = ConnId { tgid, fd, generation: conn.generation };
    serving(tgid, &id, &conn.ctx, reg(&ctx, abi::G));
    0
}

/// Ties a call (its connection, or its request object) to request `p`; with none, unties it:
/// a stale tie for a reused fd or address must not outlive this call.
#[inline(always)]
fn tie<K>(ties: &LruHashMap<K, CallParent>, k: &K, p: Option<&CallParent>) {
    match p {
        Some(p) => {
            let _ = ties.insert(k, p, 0);
        }
        None => {
            let _ = ties.remove(k);
            count(Counter::GoNoParent);
        }
    }
}

/// The fd of persistent connection `pc`'s socket (its `conn`, see [`net_conn_fd`]).
#[inline(always)]
fn conn_fd(proc: &GoProc, pc: u64) -> Option<u32> {
    net_conn_fd(proc, pc + proc.pc_conn as u64, true)
}

/// The fd of the socket under the `net.Conn` interface (itab, data) at `at`: when its itab is the
/// `*net.TCPConn` one, data points at the TCPConn, whose `netFD` holds the fd; when it is the
/// `*tls.Conn` one (`tls`: followed one level down), the TLS connection's own `conn` is looked
/// at the same way.
#[inline(always)]
pub(crate) fn net_conn_fd(proc: &GoProc, at: u64, tls: bool) -> Option<u32> {
    // SAFETY: user memory, read through the checked helper.
    unsafe {
        let [mut itab, mut data] = bpf_probe_read_user(at as *const [u64; 2]).ok()?;
        if tls && itab == proc.tls_itab && itab != 0 {
            [itab, data] = bpf_probe_read_user((data + proc.tls_conn as u64) as *const [u64; 2]).ok()?;
        }
        if itab != proc.tcp_itab {
            return None;
        }
        let netfd = bpf_probe_read_user((data + proc.tcp_fd as u64) as *const u64).ok()?;
        let fd = bpf_probe_read_user((netfd + proc.netfd_sysfd as u64) as *const i64).ok()?;
        u32::try_from(fd).ok()
    }
}

/// `net/http.(*Request).write(r, ...)`, on the transport's writer goroutine.
#[uprobe]
pub fn go_request_write(ctx: ProbeContext) -> u32 {
    let Some((tgid, proc)) = followed_process() else {
        return 0;
    };
    let g = reg(&ctx, abi::G);
    let Some(goid) = goid(&proc, g) else {
        return 0;
    };
    let req_key = key(tgid, reg(&ctx, abi::ARG0));
    let writer = key(tgid, g);
    // SAFETY: copied out of the map.
    match unsafe { GO_REQS.get(&req_key) }.copied() {
        Some(mut p) => {
            p.goid = goid;
            let _ = GO_WRITERS.insert(&writer, &p, 0);
            let _ = GO_REQS.remove(&req_key);
        }
        None => {
            let _ = GO_WRITERS.remove(&writer);
        }
    }
    0
}
