//! Connection lifecycle, from syscall tracepoints only.
//!
//! - **TCP or not.** Without kprobes the socket type is not visible at accept/connect. So:
//!   a socket is a TCP listener when `listen()` succeeds on an fd that was `bind()`-ed to an inet
//!   address (UDP cannot listen; AF_UNIX never has an inet address); an accepted fd is TCP when its
//!   listener is; a connected fd is TCP when `sock:inet_sock_set_state` reports CLOSE→SYN_SENT
//!   with protocol TCP while this thread is inside `connect()` (that transition runs in the
//!   caller's context, before connect returns).
//! - **Addresses.** connect: destination from the caller's sockaddr, source from the state
//!   change. accept: remote from the sockaddr the kernel fills in (when the caller passed one),
//!   local from the listener. Gaps (wildcard binds, a NULL sockaddr) are flagged and resolved by
//!   userspace with getsockname/getpeername on a pidfd_getfd copy.
//! - **Identity.** (tgid, fd, generation = first-seen monotonic ns): a reused fd or pid is a new
//!   generation, never the old connection.
//! - **close()** removes the connection and tells userspace, which flushes its state.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracewire_common::{
    ActiveCall, CFG_INJECT, CFG_TCP_OPTION, CONN_FLAG_LOCAL_PARTIAL, CONN_FLAG_UNVERIFIED, ConnEvent, ConnId,
    ConnState, Counter, DIR_INGRESS, EventKind, FAMILY_V4, ListenerState, ROLE_CLIENT, ROLE_LISTENER,
    ROLE_SERVER, SockAddr, Syscall, fd_key,
};

use super::{
    context::server_turn_end,
    data::{current_syscall, data_call},
};
use crate::{
    maps::{
        ACTIVE, BINDS, CONNECTING, CONNS, LISTENERS, NGX_TIES, PARENTS, PORTS, SCRATCH, SK_CONN, TCP_RX,
        TCP_TRACED, TCP_TX,
    },
    util::{arg, config, count, emit, emit_bytes, header, now, read_sockaddr, ret, watched},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn begin(ctx: &TracePointContext, syscall: Syscall, ptr: u64, addr: SockAddr) {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    if !watched(&cfg, (id >> 32) as u32) {
        return;
    }
    let call = ActiveCall {
        ptr,
        enter_ns: now(),
        fd: arg(ctx, 0) as u32,
        syscall: syscall as u8,
        addr,
        ..ActiveCall::default()
    };
    if ACTIVE.insert(id, call, 0).is_err() {
        count(Counter::ActiveMapFull);
    }
}

/// Takes this thread's in-flight call if it is `syscall`.
#[inline(always)]
fn finish(syscall: Syscall) -> Option<(u64, ActiveCall)> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let call = unsafe { ACTIVE.get(id) }.copied()?;
    let _ = ACTIVE.remove(id);
    if call.syscall != syscall as u8 {
        return None;
    }
    Some((id, call))
}

#[inline(always)]
fn is_unspecified(a: &SockAddr) -> bool {
    let n = if a.family == FAMILY_V4 { 4 } else { 16 };
    let mut i = 0;
    while i < 16 {
        if i < n && a.addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn port_selected(port: u16) -> bool {
    let cfg = config();
    if cfg.port_filter == 0 {
        return true;
    }
    // SAFETY: value is only tested for presence.
    if unsafe { PORTS.get(port) }.is_some() {
        return true;
    }
    count(Counter::PortFiltered);
    false
}

/// What a new connection starts with.
struct Opening {
    local: SockAddr,
    remote: SockAddr,
    skaddr: u64,
    listener_fd: u32,
    role: u8,
    flags: u8,
}

/// Offset in the scratch slot where the new connection's state is assembled (after the event).
const STATE_AT: usize = 256;

/// Records a new connection and reports it; returns its generation (0: not tracked). Not
/// inlined, and the state and event are assembled in the CPU's scratch slot rather than on the
/// stack: accept's exit would otherwise exceed the 512-byte BPF stack.
#[inline(never)]
fn open_conn(id: u64, fd: u32, o: &Opening) -> u64 {
    let cfg = config();
    let tgid = (id >> 32) as u32;
    let ts = now();
    // SAFETY: helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(slot) = SCRATCH.get_ptr_mut(cpu) else {
        count(Counter::ScratchMissing);
        return 0;
    };
    // SAFETY: this CPU's scratch slot (see probes::data), large enough for a ConnEvent followed
    // by a ConnState at STATE_AT.
    let buf = unsafe { &mut *slot };
    let st = unsafe { buf.as_mut_ptr().add(STATE_AT) } as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<ConnState>() / 8 {
        // SAFETY: in bounds as above.
        unsafe { *st.add(i) = 0 };
        i += 1;
    }
    let state = st as *mut ConnState;
    // SAFETY: in bounds and 8-aligned (map values are); zeroed above, so every field is valid.
    let state = unsafe {
        (*state).generation = ts;
        (*state).role = o.role;
        (*state).local = o.local;
        (*state).remote = o.remote;
        (*state).skaddr = o.skaddr;
        &*state
    };
    if CONNS.insert(fd_key(tgid, fd), state, 0).is_err() {
        count(Counter::ConnMapFull);
        return 0;
    }
    if cfg.flags & CFG_INJECT != 0 && o.role == ROLE_CLIENT && o.skaddr != 0 {
        let _ = SK_CONN.insert(o.skaddr, fd_key(tgid, fd), 0);
    }
    let ev = buf.as_mut_ptr() as *mut ConnEvent;
    // SAFETY: in bounds (STATE_AT > size_of::<ConnEvent>()); unaligned writes.
    unsafe {
        core::ptr::write_unaligned(
            core::ptr::addr_of_mut!((*ev).header),
            header(EventKind::ConnOpen as u32, id, ts),
        );
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).conn), ConnId { tgid, fd, generation: ts });
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).role), o.role);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).flags), o.flags);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev)._pad), [0u8; 2]);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).listener_fd), o.listener_fd);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).local), o.local);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*ev).remote), o.remote);
    }
    emit_bytes(&cfg, buf, core::mem::size_of::<ConnEvent>());
    ts
}

/// Reports a tracked connection's current state as a `kind` event (close, learned addresses).
#[inline(always)]
fn emit_state(kind: EventKind, id: u64, tgid: u32, fd: u32, state: &ConnState) {
    let cfg = config();
    let ev = ConnEvent {
        header: header(kind as u32, id, now()),
        conn: ConnId { tgid, fd, generation: state.generation },
        role: state.role,
        flags: 0,
        _pad: [0; 2],
        listener_fd: 0,
        local: state.local,
        remote: state.remote,
    };
    emit(&cfg, &ev);
}

// --- bind / listen -----------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !watched(&cfg, tgid) {
        return 0;
    }
    if let Some(addr) = read_sockaddr(arg(&ctx, 1)) {
        // Recorded at entry: a failed bind is overwritten by the next one or ages out (LRU).
        let _ = BINDS.insert(fd_key(tgid, arg(&ctx, 0) as u32), addr, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    begin(&ctx, Syscall::Listen, 0, SockAddr::default());
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let Some((id, call)) = finish(Syscall::Listen) else {
        return 0;
    };
    if ret(&ctx) != 0 {
        return 0;
    }
    let tgid = (id >> 32) as u32;
    let key = fd_key(tgid, call.fd);
    // SAFETY: copied.
    let Some(local) = (unsafe { BINDS.get(key) }).copied() else {
        // Not bound to an inet address by a call we saw: not TCP, or bound before we watched
        // (userspace resolves those from /proc).
        count(Counter::NotTcp);
        return 0;
    };
    if LISTENERS.insert(key, ListenerState { local }, 0).is_err() {
        count(Counter::ListenerMapFull);
        return 0;
    }
    let cfg = config();
    let ev = ConnEvent {
        header: header(EventKind::Listen as u32, id, now()),
        conn: ConnId { tgid, fd: call.fd, generation: 0 },
        role: ROLE_LISTENER,
        flags: if local.port == 0 || is_unspecified(&local) { CONN_FLAG_LOCAL_PARTIAL } else { 0 },
        _pad: [0; 2],
        listener_fd: 0,
        local,
        remote: SockAddr::default(),
    };
    emit(&cfg, &ev);
    0
}

// --- accept ------------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    begin(&ctx, Syscall::Accept, arg(&ctx, 1), SockAddr::default());
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    begin(&ctx, Syscall::Accept4, arg(&ctx, 1), SockAddr::default());
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext, syscall: Syscall) {
    let Some((id, call)) = finish(syscall) else {
        return;
    };
    let new_fd = ret(ctx);
    if new_fd < 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let remote = read_sockaddr(call.ptr).unwrap_or_default();
    let mut found = ListenerState::default();
    let listener = if find_listener(tgid, call.fd, &mut found) { Some(found) } else { None };
    let (local, mut flags) = match listener {
        Some(l) if l.local.family == 0 => {
            count(Counter::NotTcp);
            return;
        }
        Some(l) => {
            if !port_selected(l.local.port) {
                return;
            }
            (l.local, 0)
        }
        // A listener we never saw listen (inherited by a pre-fork worker, passed over a unix
        // socket): track it and let userspace verify it is TCP and apply the port filter.
        None => (SockAddr::default(), CONN_FLAG_UNVERIFIED | CONN_FLAG_LOCAL_PARTIAL),
    };
    if is_unspecified(&local) || local.port == 0 || remote.family == 0 {
        flags |= CONN_FLAG_LOCAL_PARTIAL;
    }
    let o = Opening { local, remote, skaddr: 0, listener_fd: call.fd, role: ROLE_SERVER, flags };
    open_conn(id, new_fd as u32, &o);
}

/// The listener behind `fd` in `tgid`, or in the process it was forked from (pre-fork servers:
/// nginx, gunicorn and Apache workers accept on the socket their master listened on). A listener
/// found through the parent is recorded for the child, so the next accept is one lookup.
// Not inlined: accept's exit already holds a connection event on its stack, and the 512-byte BPF
// stack does not fit this lookup's copies as well.
#[inline(never)]
fn find_listener(tgid: u32, fd: u32, out: &mut ListenerState) -> bool {
    if let Some(l) = LISTENERS.get_ptr(fd_key(tgid, fd)) {
        // SAFETY: map value pointer, copied.
        *out = unsafe { *l };
        return true;
    }
    let mut pid = tgid;
    let mut depth = 0;
    while depth < 3 {
        let Some(parent) = PARENTS.get_ptr(pid) else {
            return false;
        };
        // SAFETY: map value pointer, copied.
        let parent = unsafe { *parent };
        if let Some(l) = LISTENERS.get_ptr(fd_key(parent, fd)) {
            // SAFETY: as above.
            *out = unsafe { *l };
            let _ = LISTENERS.insert(fd_key(tgid, fd), *out, 0);
            return true;
        }
        pid = parent;
        depth += 1;
    }
    false
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, Syscall::Accept);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, Syscall::Accept4);
    0
}

// --- connect -----------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    // Only inet destinations can be TCP; AF_UNIX and friends never enter the map.
    if let Some(addr) = read_sockaddr(arg(&ctx, 1)) {
        begin(&ctx, Syscall::Connect, 0, addr);
    }
    0
}

/// The source address in a `sock:inet_sock_set_state` record. Array fields go through the
/// helper: the verifier rejects loads through a ctx pointer the compiler has offset, which is
/// how it lowers array copies.
#[inline(always)]
fn state_local(ctx: &TracePointContext) -> SockAddr {
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offsets inside the tracepoint record.
    let (family, port) = unsafe { (*(p.add(28) as *const u16), *(p.add(24) as *const u16)) };
    let mut local = SockAddr { family, port, addr: [0; 16] };
    if family == FAMILY_V4 {
        // SAFETY: helper read inside the record.
        if let Ok(v4) = unsafe { ctx.read_at::<[u8; 4]>(32) } {
            local.addr[..4].copy_from_slice(&v4);
        }
    // SAFETY: as above.
    } else if let Ok(v6) = unsafe { ctx.read_at::<[u8; 16]>(40) } {
        local.addr = v6;
    }
    local
}

/// `sock:inet_sock_set_state`. Format (checked against tracefs by userspace):
/// skaddr@8 oldstate@16 newstate@20 sport@24 dport@26 family@28 protocol@30 saddr@32
/// daddr@36 saddr_v6@40 daddr_v6@56.
///
/// CLOSE→SYN_SENT runs inside connect(), in the caller's thread: it marks the socket as TCP.
/// The source port is chosen just after that transition, so it is learned at
/// SYN_SENT→ESTABLISHED, which runs in the caller's thread on loopback but in softirq context
/// for remote peers: the socket address (skaddr) recorded at SYN_SENT finds the connection then.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offsets inside the tracepoint record.
    let (skaddr, old, new, protocol) = unsafe {
        (
            *(p.add(8) as *const u64),
            *(p.add(16) as *const i32),
            *(p.add(20) as *const i32),
            *(p.add(30) as *const u16),
        )
    };
    if protocol != IPPROTO_TCP {
        return 0;
    }
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        let id = bpf_get_current_pid_tgid();
        let Some(call) = ACTIVE.get_ptr_mut(id) else {
            return 0;
        };
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            if (*call).syscall != Syscall::Connect as u8 {
                return 0;
            }
            (*call).local = state_local(&ctx);
            (*call).is_tcp = 1;
            (*call).ptr = skaddr;
        }
        // Which sock_ops treatment the socket gets once established: 1 the TCP option, 2
        // traceparent injection.
        let flags = config().flags;
        let mark = u8::from(flags & CFG_TCP_OPTION != 0) | (u8::from(flags & CFG_INJECT != 0) << 1);
        if mark != 0 {
            let _ = TCP_TRACED.insert(skaddr, mark, 0);
        }
        return 0;
    }
    if old != TCP_SYN_SENT || new != TCP_ESTABLISHED {
        return 0;
    }
    // Still inside connect() (loopback): complete the call's source address.
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = ACTIVE.get_ptr_mut(id) {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            if (*call).syscall == Syscall::Connect as u8 && (*call).ptr == skaddr {
                (*call).local = state_local(&ctx);
                return 0;
            }
        }
    }
    // connect() already returned (non-blocking connect to a remote peer).
    let Some(pending) = CONNECTING.get_ptr(skaddr) else {
        return 0;
    };
    // SAFETY: map value pointer, copied.
    let [key, generation] = unsafe { *pending };
    let _ = CONNECTING.remove(skaddr);
    let Some(conn) = CONNS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    if state.generation != generation {
        return 0;
    }
    state.local = state_local(&ctx);
    emit_state(EventKind::ConnAddr, id, (key >> 32) as u32, key as u32, state);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((id, call)) = finish(Syscall::Connect) else {
        return 0;
    };
    let r = ret(&ctx);
    if r != 0 && r != -EINPROGRESS {
        return 0;
    }
    if call.is_tcp == 0 {
        count(Counter::NotTcp);
        return 0;
    }
    if !port_selected(call.addr.port) {
        return 0;
    }
    let o = Opening {
        local: call.local,
        remote: call.addr,
        skaddr: call.ptr,
        listener_fd: 0,
        role: ROLE_CLIENT,
        flags: 0,
    };
    let generation = open_conn(id, call.fd, &o);
    if o.local.port == 0 && generation != 0 {
        // The handshake has not completed yet: its ESTABLISHED transition fills the port in.
        let key = fd_key((id >> 32) as u32, call.fd);
        let _ = CONNECTING.insert(call.ptr, [key, generation], 0);
    }
    0
}

// --- close -------------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !watched(&cfg, tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0) as u32;
    let key = fd_key(tgid, fd);
    let _ = LISTENERS.remove(key);
    let _ = BINDS.remove(key);
    // A request tied to this fd (nginx, before its connection is even established) does not
    // outlive it: the next connection on the number is another one.
    let _ = NGX_TIES.remove(&key);
    // SAFETY: copied before removal.
    let Some(mut state) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(key);
    if state.role == ROLE_SERVER {
        // A request read and never answered is over: its thread serves it no more.
        let id = ConnId { tgid, fd, generation: state.generation };
        server_turn_end(&mut state, &id, None);
    }
    if state.skaddr != 0 {
        let _ = TCP_TX.remove(state.skaddr);
        let _ = TCP_RX.remove(state.skaddr);
    }
    emit_state(EventKind::ConnClose, id, tgid, fd, &state);
    0
}

/// A context the peer's agent sent in the TCP option of this request's segments (parsed by
/// `tcpopt` in softirq context, keyed by socket) moves to the connection, for the read that
/// starts the request.
#[inline(always)]
fn take_tcp_ctx(state: &mut ConnState, skaddr: u64) {
    // SAFETY: copied out of the map.
    let Some(entry) = (unsafe { TCP_RX.get(skaddr) }).copied() else {
        return;
    };
    let _ = TCP_RX.remove(skaddr);
    // A socket address reused by a new connection must not inherit an old option.
    if entry.local_port == state.local.port as u32 {
        state.rx = entry.ctx;
        state.rx_valid = 1;
    }
}

// --- addresses learned on first read --------------------------------------------------------

/// The socket hooks' counterpart of `tcp_rcv_space_adjust` below, run on connection `fd`'s
/// state before a read from socket `sk` is reported: the connection learns its socket address
/// and, when incomplete, its addresses from `struct sock_common` (offsets from the kernel's BTF),
/// and a server connection takes the context a TCP option brought.
#[inline(always)]
pub fn socket_read_prelude(id: u64, fd: u32, sk: u64, state: &mut ConnState) {
    let cfg = config();
    if cfg.sk.valid == 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    state.skaddr = sk;
    if state.remote.family == 0 || state.local.port == 0 || is_unspecified(&state.local) {
        fill_addrs_from_sock(id, tgid, fd, state, sk);
    }
    if cfg.flags & CFG_TCP_OPTION != 0 && state.role == ROLE_SERVER {
        take_tcp_ctx(state, sk);
    }
}

#[inline(never)]
fn fill_addrs_from_sock(id: u64, tgid: u32, fd: u32, state: &mut ConnState, sk: u64) {
    let o = config().sk;
    // SAFETY: kernel reads through the checked helper.
    let read16 = |off: u16| unsafe { bpf_probe_read_kernel((sk + off as u64) as *const u16) }.ok();
    let (Some(family), Some(num), Some(dport)) = (read16(o.family), read16(o.num), read16(o.dport)) else {
        return;
    };
    let mut local = SockAddr { family, port: num, addr: [0; 16] };
    let mut remote = SockAddr { family, port: u16::from_be(dport), addr: [0; 16] };
    // SAFETY: as above.
    unsafe {
        if family == FAMILY_V4 {
            let (Ok(s), Ok(d)) = (
                bpf_probe_read_kernel((sk + o.rcv_saddr as u64) as *const [u8; 4]),
                bpf_probe_read_kernel((sk + o.daddr as u64) as *const [u8; 4]),
            ) else {
                return;
            };
            local.addr[..4].copy_from_slice(&s);
            remote.addr[..4].copy_from_slice(&d);
        } else {
            let (Ok(s), Ok(d)) = (
                bpf_probe_read_kernel((sk + o.v6_rcv_saddr as u64) as *const [u8; 16]),
                bpf_probe_read_kernel((sk + o.v6_daddr as u64) as *const [u8; 16]),
            ) else {
                return;
            };
            local.addr = s;
            remote.addr = d;
        }
    }
    state.local = local;
    state.remote = remote;
    emit_state(EventKind::ConnAddr, id, tgid, fd, state);
}

/// `tcp:tcp_rcv_space_adjust` runs inside tcp_recvmsg, in the reading thread, with the socket's
/// addresses: skaddr@8 sport@16 dport@18 family@20 saddr@22 daddr@26 saddr_v6@30 daddr_v6@46
/// (ports in host order; checked against tracefs by userspace). When this thread is inside a
/// read on a tracked connection whose addresses are incomplete (accept() without a sockaddr, a
/// wildcard listener, a listener bound to port 0), they are filled in here, once, before the
/// data is reported.
#[tracepoint]
pub fn tcp_rcv_space_adjust(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !watched(&config(), (id >> 32) as u32) {
        return 0;
    }
    // The read this runs in, from the thread's syscall registers (the socket hooks record no
    // entry for reads).
    let Some((nr, [fd, _, _])) = current_syscall() else {
        return 0;
    };
    if !data_call(nr).is_some_and(|c| c.direction == DIR_INGRESS) {
        return 0;
    }
    let fd = fd as u32;
    let tgid = (id >> 32) as u32;
    let Some(conn) = CONNS.get_ptr_mut(fd_key(tgid, fd)) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offset inside the tracepoint record.
    let skaddr = unsafe { *(p.add(8) as *const u64) };
    state.skaddr = skaddr;
    if state.remote.family == 0 || state.local.port == 0 || is_unspecified(&state.local) {
        fill_addrs(&ctx, id, tgid, fd, state);
    }
    if config().flags & CFG_TCP_OPTION != 0 && state.role == ROLE_SERVER {
        take_tcp_ctx(state, skaddr);
    }
    0
}

/// Completes a connection's addresses from a `tcp:tcp_rcv_space_adjust` record, once.
#[inline(always)]
fn fill_addrs(ctx: &TracePointContext, id: u64, tgid: u32, fd: u32, state: &mut ConnState) {
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offsets inside the tracepoint record.
    let (sport, dport, family) =
        unsafe { (*(p.add(16) as *const u16), *(p.add(18) as *const u16), *(p.add(20) as *const u16)) };
    let mut local = SockAddr { family, port: sport, addr: [0; 16] };
    let mut remote = SockAddr { family, port: dport, addr: [0; 16] };
    if family == FAMILY_V4 {
        // SAFETY: helper reads inside the record.
        if let (Ok(s), Ok(d)) = unsafe { (ctx.read_at::<[u8; 4]>(22), ctx.read_at::<[u8; 4]>(26)) } {
            local.addr[..4].copy_from_slice(&s);
            remote.addr[..4].copy_from_slice(&d);
        }
    } else if let (Ok(s), Ok(d)) = unsafe { (ctx.read_at::<[u8; 16]>(30), ctx.read_at::<[u8; 16]>(46)) } {
        local.addr = s;
        remote.addr = d;
    }
    state.local = local;
    state.remote = remote;
    emit_state(EventKind::ConnAddr, id, tgid, fd, state);
}
