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
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
    EbpfContext as _,
};
use tracewire_common::{
    ActiveCall, ConnEvent, ConnId, ConnState, Counter, EventKind, ListenerState, SockAddr,
    Syscall, CONN_FLAG_LOCAL_PARTIAL, FAMILY_V4, ROLE_CLIENT, ROLE_LISTENER,
    ROLE_SERVER, fd_key,
};

use crate::{
    maps::{ACTIVE, BINDS, CONNS, LISTENERS, PORTS, THREAD_CTX},
    util::{arg, config, count, emit, header, now, read_sockaddr, ret, watched},
};

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

#[inline(always)]
fn open_conn(id: u64, fd: u32, role: u8, local: SockAddr, remote: SockAddr, flags: u8) {
    let cfg = config();
    let tgid = (id >> 32) as u32;
    let ts = now();
    let state = ConnState {
        generation: ts,
        role,
        local,
        remote,
        ..ConnState::default()
    };
    if CONNS.insert(fd_key(tgid, fd), state, 0).is_err() {
        count(Counter::ConnMapFull);
        return;
    }
    let ev = ConnEvent {
        header: header(EventKind::ConnOpen as u32, id, ts),
        conn: ConnId { tgid, fd, generation: ts },
        role,
        flags,
        _pad: [0; 6],
        local,
        remote,
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
        _pad: [0; 6],
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
    // SAFETY: copied.
    let Some(listener) = (unsafe { LISTENERS.get(fd_key(tgid, call.fd)) }).copied() else {
        count(Counter::NotTcp);
        return;
    };
    if !port_selected(listener.local.port) {
        return;
    }
    let remote = read_sockaddr(call.ptr).unwrap_or_default();
    let mut flags = 0;
    if is_unspecified(&listener.local) || remote.family == 0 {
        flags |= CONN_FLAG_LOCAL_PARTIAL;
    }
    open_conn(id, new_fd as u32, ROLE_SERVER, listener.local, remote, flags);
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

/// `sock:inet_sock_set_state`. Format (checked against tracefs by userspace):
/// skaddr@8 oldstate@16 newstate@20 sport@24 dport@26 family@28 protocol@30 saddr@32
/// daddr@36 saddr_v6@40 daddr_v6@56.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offsets inside the tracepoint record.
    let (old, new, protocol) = unsafe {
        (
            *(p.add(16) as *const i32),
            *(p.add(20) as *const i32),
            *(p.add(30) as *const u16),
        )
    };
    if old != TCP_CLOSE || new != TCP_SYN_SENT || protocol != IPPROTO_TCP {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(call) = ACTIVE.get_ptr_mut(id) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run; constant record offsets.
    unsafe {
        if (*call).syscall != Syscall::Connect as u8 {
            return 0;
        }
        let family = *(p.add(28) as *const u16);
        let mut local = SockAddr { family, port: *(p.add(24) as *const u16), addr: [0; 16] };
        // Array fields go through the helper: the verifier rejects loads through a ctx pointer
        // the compiler has offset, which is how it lowers array copies.
        if family == FAMILY_V4 {
            if let Ok(v4) = ctx.read_at::<[u8; 4]>(32) {
                local.addr[..4].copy_from_slice(&v4);
            }
        } else if let Ok(v6) = ctx.read_at::<[u8; 16]>(40) {
            local.addr = v6;
        }
        (*call).local = local;
        (*call).is_tcp = 1;
    }
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
    open_conn(id, call.fd, ROLE_CLIENT, call.local, call.addr, 0);
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
    // SAFETY: copied before removal.
    let Some(state) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(key);
    if state.role == ROLE_SERVER {
        // The thread no longer serves this connection.
        let tid = id as u32;
        // SAFETY: copied.
        if let Some(t) = unsafe { THREAD_CTX.get(tid) }
            && t.conn.fd == fd
            && t.conn.generation == state.generation
        {
            let _ = THREAD_CTX.remove(tid);
        }
    }
    let ev = ConnEvent {
        header: header(EventKind::ConnClose as u32, id, now()),
        conn: ConnId { tgid, fd, generation: state.generation },
        role: state.role,
        flags: 0,
        _pad: [0; 6],
        local: state.local,
        remote: state.remote,
    };
    emit(&cfg, &ev);
    0
}
