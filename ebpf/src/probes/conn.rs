//! Connection lifecycle.
//!
//! Two ways to follow it, chosen by userspace with the data hooks:
//!
//! **From TCP state changes and socket events (the socket data path, default).** No syscall
//! tracepoint is attached: a single one puts every syscall of every task on the kernel's slow
//! path (TIF_SYSCALL_TRACEPOINT), a cost paid by processes tracewire does not even watch.
//! - A client connection opens at `sock:inet_sock_set_state` CLOSE→SYN_SENT, which runs inside
//!   the caller's connect() (or TCP Fast Open sendto/sendmsg): the fd is that syscall's first
//!   argument, read from the thread's saved registers; the addresses are in the record.
//! - A server connection: LISTEN→SYN_RECV (softirq, owner unknown) records the new socket in
//!   `SERVER_SKS`; the first read or write of it by a watched process opens its connection
//!   ([`conn_of_socket`]). A connection accepted in one process and served by another (fork per
//!   connection, fd passing) belongs to the process that uses it.
//! - A connection ends at LAST_ACK (the application closed after its peer) or CLOSE (every
//!   socket passes there before it is freed), found by socket address in `SK_CONN`; and when a
//!   socket hook finds its fd naming another socket (closed, fd reused, state change not yet
//!   seen). A socket that closes while its application still holds it (a reset, the peer's FIN
//!   after a half-close; see [`still_readable`]) may still be read: its connection ends once that
//!   has been read (a call that moves no bytes) or when the socket is freed. A server socket
//!   closed by a reset before its first read stays claimable in `SERVER_SKS`, and that read
//!   opens it.
//! - A state change runs in softirq context on any CPU, while the owning process may be opening
//!   a new connection on the same fd number on another: it ends a connection by claiming it
//!   (its generation swapped to 0 atomically) and leaves the dead entry for the process's own
//!   context to replace or remove. Entries keyed by socket address are removed only while that
//!   socket is alive, since a freed socket's address is soon another's.
//!
//! **From syscall tracepoints (the syscall data path of older kernels, which hooks every syscall
//! anyway).**
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
//! - **close()** removes the connection and tells userspace, which flushes its state.
//!
//! Either way, **identity** is (tgid, fd, generation = first-seen monotonic ns): a reused fd or
//! pid is a new generation, never the old connection.
use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracewire_common::{
    ActiveCall, CFG_INJECT, CFG_TCP_OPTION, CONN_FLAG_ENTRY_LEFT, CONN_FLAG_LOCAL_PARTIAL,
    CONN_FLAG_UNVERIFIED, ConnEvent, ConnId, ConnState, Counter, DIR_INGRESS, EventKind, FAMILY_V4, GAP_LOST,
    GAP_OPEN_LOST, ListenerState, ROLE_CLIENT, ROLE_LISTENER, ROLE_SERVER, SockAddr, Syscall, fd_key,
};

use super::{
    context::server_turn_end,
    data::{current_syscall, data_call, is_close, is_connect, is_listen},
};
use crate::{
    maps::{
        ACTIVE, BINDS, CONNECTING, CONNS, GO_TIES, LISTENERS, NGX_TIES, PARENTS, PORTS, SCRATCH, SERVER_SKS,
        SK_CONN, TCP_RX, TCP_TRACED, TCP_TX,
    },
    util::{
        arg, config, count, emit, emit_bytes, header, is_watched, now, read_sockaddr, remove_present, ret,
        set_clients, sock_addr_v4, zero, zeroed,
    },
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn begin(ctx: &TracePointContext, syscall: Syscall, ptr: u64, addr: SockAddr) {
    let id = bpf_get_current_pid_tgid();
    if !is_watched((id >> 32) as u32) {
        return;
    }
    let call =
        ActiveCall { ptr, enter_ns: now(), fd: arg(ctx, 0) as u32, syscall: syscall as u8, addr, ..zeroed() };
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
    let key = fd_key(tgid, fd);
    if let Some(stale) = CONNS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run.
        if unsafe { (*stale).generation } != 0 {
            // The fd was closed without the end being seen (dup2 onto it; a state change still
            // to come): that connection is over, and ends before this one starts.
            count(Counter::FdReused);
            end_conn(id, key, stale, false);
        } else {
            // A dead entry (ended by its socket's state change; every connection whose peer
            // closes first leaves one): the insert below replaces it in place, which costs
            // neither a removal nor an element from the map's free list.
            forget_ties(key);
        }
    }
    if o.role == ROLE_CLIENT {
        set_clients(tgid);
    }
    let ts = now();
    // SAFETY: helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(slot) = SCRATCH.get_ptr_mut(cpu) else {
        count(Counter::ScratchMissing);
        return 0;
    };
    // SAFETY: this CPU's scratch slot (see probes::data), large enough for a ConnEvent followed
    // by a ConnState at STATE_AT.
    let buf = unsafe { &mut (*slot).0 };
    let state = unsafe { buf.as_mut_ptr().add(STATE_AT) } as *mut ConnState;
    // SAFETY: in bounds as above, 8-aligned (a Scratch slot, STATE_AT a multiple of 8).
    unsafe { zero(state) };
    // SAFETY: in bounds and 8-aligned (map values are); zeroed above, so every field is valid.
    let state = unsafe {
        (*state).generation = ts;
        (*state).role = o.role;
        (*state).local = o.local;
        (*state).remote = o.remote;
        (*state).skaddr = o.skaddr;
        &*state
    };
    if CONNS.insert(key, state, 0).is_err() {
        count(Counter::ConnMapFull);
        return 0;
    }
    if o.skaddr != 0 {
        let _ = SK_CONN.insert(o.skaddr, [key, ts], 0);
    }
    let ev = buf.as_mut_ptr() as *mut ConnEvent;
    // SAFETY: in bounds (STATE_AT > size_of::<ConnEvent>()) and 8-aligned (a Scratch slot).
    unsafe {
        core::ptr::write(
            ev,
            ConnEvent {
                header: header(EventKind::ConnOpen as u32, id, ts),
                conn: ConnId { tgid, fd, generation: ts },
                role: o.role,
                flags: o.flags,
                _pad: [0; 2],
                listener_fd: o.listener_fd,
                local: o.local,
                remote: o.remote,
            },
        )
    };
    if !emit_bytes(&cfg, buf, core::mem::size_of::<ConnEvent>()) {
        // Lost to a full ring: the connection's next data event sends it again (`reopen`), or
        // userspace would not know the connection for its whole life.
        if let Some(p) = CONNS.get_ptr_mut(key) {
            // SAFETY: map value pointer, valid for this run.
            unsafe { (*p).gap |= GAP_OPEN_LOST };
        }
    }
    ts
}

/// Sends again the open of connection `state` (on `fd`), whose open event a full ring lost, before
/// its data: the addresses the kernel has (a wildcard local one is resolved in userspace, as at
/// the first open). The data event that follows says events were lost.
#[inline(never)]
pub fn reopen(id: u64, fd: u32, state: &mut ConnState) {
    let flags =
        if state.local.port == 0 || is_unspecified(&state.local) { CONN_FLAG_LOCAL_PARTIAL } else { 0 };
    if emit_state(EventKind::ConnOpen, id, (id >> 32) as u32, fd, state, flags) {
        state.gap = (state.gap & !GAP_OPEN_LOST) | GAP_LOST;
    }
}

/// Reports a tracked connection's current state as a `kind` event (close, learned addresses).
/// Returns whether it entered the ring.
#[inline(always)]
fn emit_state(kind: EventKind, id: u64, tgid: u32, fd: u32, state: &ConnState, flags: u8) -> bool {
    let cfg = config();
    let ev = ConnEvent {
        header: header(kind as u32, id, now()),
        conn: ConnId { tgid, fd, generation: state.generation },
        role: state.role,
        flags,
        _pad: [0; 2],
        listener_fd: 0,
        local: state.local,
        remote: state.remote,
    };
    emit(&cfg, &ev)
}

/// Claims connection `state` for ending if it still is generation `generation`: the generation
/// becomes 0, atomically. A socket's state change (softirq context, any CPU) and the owning
/// process (a reused fd, the exit of its own call) can end one connection at the same moment;
/// exactly one of them reports it. A claimed entry left in the map is dead: lookups take
/// generation 0 for no connection.
#[inline(always)]
fn claim(state: *mut ConnState, generation: u64) -> bool {
    // SAFETY: map value pointer; `generation` is the value's first field, 8-aligned like the
    // value itself. The BPF target has no `AtomicU64::compare_exchange` (its baseline CPU lacks
    // the instruction); the intrinsic emits BPF_CMPXCHG, which every kernel with the socket
    // hooks (6.16+) verifies.
    generation != 0
        && unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*state).generation),
                generation,
                0,
            )
        }
        .1
}

/// Ends connection `key`, generation `generation` (`state` points at its map value), if no other
/// path ended it first: userspace is told and flushes it, and a request read and never answered
/// stops being its thread's. The entry itself stays (dead); see [`end_conn`] and [`sk_closed`]
/// for what removes it. Returns whether this call ended it.
#[inline(never)]
fn end_claimed(id: u64, key: u64, state: *mut ConnState, generation: u64, flags: u8) -> bool {
    // SAFETY: map value pointer. Copied before the claim: a claim that succeeds proves the copy
    // was this connection's (generations are never reused), even if the slot is reused after.
    let mut copy = unsafe { *state };
    if generation == 0 || copy.generation != generation || !claim(state, generation) {
        return false;
    }
    let (tgid, fd) = ((key >> 32) as u32, key as u32);
    if copy.role == ROLE_SERVER {
        server_turn_end(&mut copy, &ConnId { tgid, fd, generation }, None);
    }
    emit_state(EventKind::ConnClose, id, tgid, fd, &copy, flags);
    true
}

/// Entries keyed by socket address: only removed while the socket is known to be alive (its own
/// state change, a call on it in progress), since a freed socket's address is soon another's.
/// `tracked`: the socket is (or was) a connection's, in `SK_CONN`. Only those have a context to
/// send (`TCP_TX`); any socket may have received one (`TCP_RX`). Most sockets that pass here are
/// not tracked (every socket of the node is freed here), and each lookup costs.
#[inline(always)]
fn forget_socket(skaddr: u64, tracked: bool) {
    if skaddr != 0 {
        remove_present!(TCP_RX, skaddr);
        if tracked {
            remove_present!(TCP_TX, skaddr);
            remove_present!(SK_CONN, skaddr);
        }
    }
}

/// Ends connection `key` (`state` points at its map value) in its own process's context, and
/// removes its entry (dead or alive). `socket_live`: the caller is inside a call on the socket or
/// at its close(), so its socket-keyed entries go too; otherwise (a reused fd) the socket may be
/// freed and its address another socket's: its own CLOSE removes them. `id` is the event
/// header's pid_tgid.
#[inline(never)]
fn end_conn(id: u64, key: u64, state: *mut ConnState, socket_live: bool) {
    // SAFETY: map value pointer, valid for this run.
    let (generation, skaddr) = unsafe { ((*state).generation, (*state).skaddr) };
    if end_claimed(id, key, state, generation, 0) && socket_live {
        forget_socket(skaddr, true);
    }
    forget_ties(key);
    let _ = CONNS.remove(key);
}

/// A request tied to fd `key` (nginx, Go) does not outlive its connection: the next connection
/// on the number is another one.
#[inline(always)]
fn forget_ties(key: u64) {
    remove_present!(NGX_TIES, &key);
    remove_present!(GO_TIES, &key);
}

/// The connection that fd `fd` of `id`'s process names, checked against the socket `sk` a socket
/// hook was handed: a tracked fd whose socket is not yet known (adopted from /proc) learns it if
/// the ports match; one that names another socket now ends its old connection; an untracked one
/// opens a server connection when `sk` was accepted since the agent started.
#[inline(always)]
pub fn conn_of_socket(id: u64, fd: u32, sk: u64) -> Option<*mut ConnState> {
    let key = fd_key((id >> 32) as u32, fd);
    if let Some(p) = CONNS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run.
        let (skaddr, generation) = unsafe { ((*p).skaddr, (*p).generation) };
        if generation != 0 {
            if skaddr == sk {
                return Some(p);
            }
            // SAFETY: as above.
            if skaddr == 0 && same_ports(sk, unsafe { &*p }) {
                // SAFETY: as above.
                unsafe { (*p).skaddr = sk };
                let _ = SK_CONN.insert(sk, [key, generation], 0);
                return Some(p);
            }
            count(Counter::FdReused);
            end_conn(id, key, p, false);
        }
        // A dead entry (its socket closed) is replaced if `sk` opens a connection.
    }
    accepted(id, fd, sk)
}

/// Whether socket `sk` has the ports of connection `state`, found in /proc without its socket:
/// its fd may have been closed and reused before a byte moved on it (its close, known only by
/// socket, went unseen). When the socket cannot be read, it is taken as the connection's.
#[inline(never)]
fn same_ports(sk: u64, state: &ConnState) -> bool {
    let mut local: SockAddr = zeroed();
    let mut remote: SockAddr = zeroed();
    !sock_addrs(sk, &mut local, &mut remote)
        || (local.port == state.local.port && remote.port == state.remote.port)
}

/// [`SERVER_SKS`] values: accepted since the agent started, not used yet.
const SK_ACCEPTED: u8 = 1;
/// A server socket a reset closed before its first read: what it had received can still be read,
/// and that read opens its connection (which ends once that has been read).
const SK_ENDED: u8 = 2;

/// Opens the server connection of a socket accepted since the agent started (or closed by a
/// reset), at its first use.
#[inline(never)]
fn accepted(id: u64, fd: u32, sk: u64) -> Option<*mut ConnState> {
    // SAFETY: map value pointer, read once.
    let mark = unsafe { *SERVER_SKS.get_ptr(sk)? };
    let _ = SERVER_SKS.remove(sk);
    let mut local: SockAddr = zeroed();
    let mut remote: SockAddr = zeroed();
    if !sock_addrs(sk, &mut local, &mut remote) || !port_selected(local.port) {
        return None;
    }
    let o = Opening { local, remote, skaddr: sk, listener_fd: 0, role: ROLE_SERVER, flags: 0 };
    if open_conn(id, fd, &o) == 0 {
        return None;
    }
    let p = CONNS.get_ptr_mut(fd_key((id >> 32) as u32, fd))?;
    if mark == SK_ENDED {
        // Its socket is closed already: it ends once what it received has been read.
        // SAFETY: map value pointer, valid for this run.
        unsafe { (*p).closing = 1 };
    }
    Some(p)
}

/// The connection `SK_CONN` named for socket `sk` (`key`, `generation`), if its entry still is
/// that connection on that socket.
#[inline(always)]
fn conn_named(sk: u64, key: u64, generation: u64) -> Option<*mut ConnState> {
    let p = CONNS.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this run.
    (unsafe { (*p).generation == generation && (*p).skaddr == sk }).then_some(p)
}

/// Ends connection `key` from its socket's side (a state change, the socket's destruction), in
/// any context: the entry is left, dead, for its process to replace or remove, since a removal
/// by fd here could take the connection another CPU's thread has just opened on the same fd.
#[inline(always)]
fn end_from_socket(key: u64, state: *mut ConnState, generation: u64) {
    let tgid = key >> 32;
    end_claimed((tgid << 32) | tgid, key, state, generation, CONN_FLAG_ENTRY_LEFT);
}

/// A socket's state change ends its connection (LAST_ACK: closed after the peer; CLOSE: every
/// socket passes there before it is freed). Runs in softirq context as often as not. `reset`:
/// the socket closed straight from an open state, while its application may still read it.
#[inline(never)]
fn sk_closed(skaddr: u64, reset: bool) {
    // SAFETY: copied out of the map.
    match unsafe { SERVER_SKS.get(skaddr) }.copied() {
        // Accepted and never used: a reset may leave a request in it that is read later.
        Some(SK_ACCEPTED) if reset => {
            let _ = SERVER_SKS.insert(skaddr, SK_ENDED, 0);
        }
        // Closed by its application, or the mark of an earlier socket at this address.
        Some(_) => {
            let _ = SERVER_SKS.remove(skaddr);
        }
        None => {}
    }
    // SAFETY: copied out of the map.
    let Some([key, generation]) = (unsafe { SK_CONN.get(skaddr) }).copied() else {
        return;
    };
    if let Some(p) = conn_named(skaddr, key, generation) {
        if still_readable(key, skaddr) {
            // Its application still holds the socket and is not closing it: what the socket
            // received (a response before the peer's FIN, a request before a reset) can still be
            // read, possibly by a call already in progress. The connection ends at the
            // application's first call on it that moves no bytes (`end_if_closing`), or when the
            // socket is freed (`tcp_destroy_sock`: the application closed it). Nothing more is
            // sent on a closed socket; a context received in the TCP option moves to the
            // connection now.
            // SAFETY: map value pointer, valid for this run.
            unsafe {
                (*p).closing = 1;
                if (*p).role == ROLE_SERVER && config().flags & CFG_TCP_OPTION != 0 {
                    take_tcp_ctx(&mut *p, skaddr);
                }
            }
            remove_present!(TCP_TX, skaddr);
            return;
        }
        // Its application closed it or is closing it: nothing more will be read.
        end_from_socket(key, p, generation);
    }
    // The socket is alive until this change returns: its entries are its own.
    forget_socket(skaddr, true);
}

/// `tcp:tcp_destroy_sock` (raw; argument 0 the socket): the socket is being freed, inside its
/// application's close() or, for one closed earlier, in softirq context. A connection still open
/// on it ends here: its socket closed while the application held it, and the application closed
/// it without another call (see [`still_readable`]). Attached with the socket data path.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    // A reset socket's mark (see `accepted`) goes with it.
    remove_present!(SERVER_SKS, sk);
    // SAFETY: copied out of the map.
    let named = unsafe { SK_CONN.get(sk) }.copied();
    if let Some([key, generation]) = named
        && let Some(p) = conn_named(sk, key, generation)
    {
        end_from_socket(key, p, generation);
    }
    // Whatever is still kept for the socket (a context received for a request never read) goes
    // with it.
    forget_socket(sk, named.is_some());
    0
}

/// Whether the application of connection `key` (its process and fd) can still read socket
/// `skaddr`, which a state change just closed: the socket still has an fd (not orphaned), and the
/// change is not that process closing it (close(), or exiting, which releases the socket before
/// orphaning it).
#[inline(always)]
fn still_readable(key: u64, skaddr: u64) -> bool {
    let id = bpf_get_current_pid_tgid();
    let closing = id >> 32 == key >> 32 && matches!(current_syscall(), Some((nr, _)) if is_close(nr));
    !closing && !orphaned(skaddr)
}

/// Whether socket `sk` has no `struct socket` (and so no fd) any more: its application closed it.
#[inline(never)]
fn orphaned(sk: u64) -> bool {
    let o = config().sk;
    // SAFETY: kernel read through the checked helper.
    o.valid != 0
        && unsafe { bpf_probe_read_kernel((sk + o.socket as u64) as *const u64) }.is_ok_and(|s| s == 0)
}

/// Ends connection `key` (`state` points at its map value) if its socket closed: the call whose
/// exit hook runs now moved no bytes, so everything the socket received has been read (see
/// [`ConnState::closing`]).
#[inline(always)]
pub fn end_if_closing(id: u64, key: u64, state: *mut ConnState) {
    // SAFETY: map value pointer, valid for this run.
    if unsafe { (*state).closing } != 0 {
        end_conn(id, key, state, true);
    }
}

/// CLOSE→SYN_SENT inside a watched thread's connect() (socket lifecycle): the client connection
/// opens, on the fd the syscall was called with. The caller checked the process is watched.
#[inline(never)]
fn connect_seen(skaddr: u64) {
    let id = bpf_get_current_pid_tgid();
    let Some((nr, [fd, _, _])) = current_syscall() else {
        return;
    };
    if !is_connect(nr) {
        count(Counter::ConnUnseen);
        return;
    }
    let (local, remote) = sock_ends(skaddr);
    if !port_selected(remote.port) {
        return;
    }
    mark_traced(skaddr);
    let o = Opening { local, remote, skaddr, listener_fd: 0, role: ROLE_CLIENT, flags: 0 };
    let generation = open_conn(id, fd as u32, &o);
    if local.port == 0 && generation != 0 {
        // The source port is chosen just after this change: the ESTABLISHED change fills it in.
        let key = fd_key((id >> 32) as u32, fd as u32);
        let _ = CONNECTING.insert(skaddr, [key, generation], 0);
    }
}

/// Which sock_ops treatment a client socket gets once established: 1 the TCP option, 2
/// traceparent injection.
#[inline(always)]
fn mark_traced(skaddr: u64) {
    let flags = config().flags;
    let mark = u8::from(flags & CFG_TCP_OPTION != 0) | (u8::from(flags & CFG_INJECT != 0) << 1);
    if mark != 0 {
        let _ = TCP_TRACED.insert(skaddr, mark, 0);
    }
}

/// →LISTEN inside a watched thread's listen() (socket lifecycle): reported, for the record. The
/// caller checked the process is watched.
#[inline(never)]
fn listen_seen(sk: u64) {
    let id = bpf_get_current_pid_tgid();
    let Some((nr, [fd, _, _])) = current_syscall() else {
        return;
    };
    if is_listen(nr) {
        emit_listen(id, fd as u32, sock_ends(sk).0);
    }
}

#[inline(always)]
fn emit_listen(id: u64, fd: u32, local: SockAddr) {
    let ev = ConnEvent {
        header: header(EventKind::Listen as u32, id, now()),
        conn: ConnId { tgid: (id >> 32) as u32, fd, generation: 0 },
        role: ROLE_LISTENER,
        flags: if local.port == 0 || is_unspecified(&local) { CONN_FLAG_LOCAL_PARTIAL } else { 0 },
        _pad: [0; 2],
        listener_fd: 0,
        local,
        remote: zeroed(),
    };
    emit(&config(), &ev);
}

// --- bind / listen -----------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
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
    begin(&ctx, Syscall::Listen, 0, zeroed());
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
    emit_listen(id, call.fd, local);
    0
}

// --- accept ------------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    begin(&ctx, Syscall::Accept, arg(&ctx, 1), zeroed());
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    begin(&ctx, Syscall::Accept4, arg(&ctx, 1), zeroed());
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
    let remote = read_sockaddr(call.ptr).unwrap_or_else(zeroed);
    let mut found: ListenerState = zeroed();
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
        None => (zeroed(), CONN_FLAG_UNVERIFIED | CONN_FLAG_LOCAL_PARTIAL),
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

/// The source address in a `sock:inet_sock_set_state` record: its port (host order) at 24, the
/// family at 28, the IPv4 and IPv6 addresses at 32 and 40. Array fields go through the helper:
/// the verifier rejects loads through a ctx pointer the compiler has offset, which is how it
/// lowers array copies.
#[inline(always)]
fn state_local(ctx: &TracePointContext) -> SockAddr {
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: constant offsets inside the tracepoint record.
    let (family, port) = unsafe { (*(p.add(28) as *const u16), *(p.add(24) as *const u16)) };
    if family == FAMILY_V4 {
        // SAFETY: helper read inside the record.
        let v4 = unsafe { ctx.read_at::<[u8; 4]>(32) }.unwrap_or([0; 4]);
        return sock_addr_v4(family, port, v4);
    }
    let mut a = sock_addr_v4(family, port, [0; 4]);
    // SAFETY: as above.
    if let Ok(v6) = unsafe { ctx.read_at::<[u8; 16]>(40) } {
        a.addr = v6;
    }
    a
}

/// A socket's (local, remote) addresses, read from the socket (zero where unreadable).
#[inline(always)]
fn sock_ends(sk: u64) -> (SockAddr, SockAddr) {
    let mut local: SockAddr = zeroed();
    let mut remote: SockAddr = zeroed();
    let _ = sock_addrs(sk, &mut local, &mut remote);
    (local, remote)
}

/// `sock:inet_sock_set_state`, for the syscall data path. Fields read (their offsets checked
/// against tracefs by userspace): skaddr@8 oldstate@16 newstate@20 sport@24 family@28
/// protocol@30 saddr@32 saddr_v6@40.
///
/// CLOSE→SYN_SENT runs inside connect(), in the caller's thread: it marks the call's socket as
/// TCP. The source port is chosen just after that change, so it is learned at
/// SYN_SENT→ESTABLISHED, which runs in the caller's thread on loopback (still inside connect())
/// but in softirq context for remote peers (see [`connected`]).
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
        mark_traced(skaddr);
        return 0;
    }
    if old != TCP_SYN_SENT || new != TCP_ESTABLISHED {
        return 0;
    }
    // Still inside connect() (loopback): complete the call's source address.
    if let Some(call) = ACTIVE.get_ptr_mut(bpf_get_current_pid_tgid()) {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            if (*call).syscall == Syscall::Connect as u8 && (*call).ptr == skaddr {
                (*call).local = state_local(&ctx);
                return 0;
            }
        }
    }
    connected(skaddr, || state_local(&ctx));
    0
}

/// `sock:inet_sock_set_state` as a raw tracepoint (the socket, the old and new state), for the
/// socket data path, which it is attached with. A tracepoint program has its record built first,
/// for every TCP state change of the node: about a third of what the program itself cost when
/// every request opened and closed a connection. Here the few fields a change needs are read from
/// the socket, and the protocol only where a socket starts being followed.
///
/// - LISTEN→SYN_RECV (softirq): an accepted socket, whose first reader opens its connection
///   (see [`accepted`]).
/// - CLOSE→SYN_SENT inside a watched thread's connect(): a client connection opens.
/// - LAST_ACK, CLOSE: the socket's connection ends (see [`sk_closed`]).
/// - SYN_SENT→ESTABLISHED: the source port, chosen after SYN_SENT (see [`connected`]).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    // Only TCP sockets start being followed (MPTCP and SCTP sockets pass here too); the other
    // changes look the socket up in maps that hold TCP sockets only.
    let tcp = || {
        let o = config().sk;
        // SAFETY: kernel read through the checked helper.
        let protocol = unsafe { bpf_probe_read_kernel((sk + o.protocol as u64) as *const u16) };
        protocol == Ok(IPPROTO_TCP)
    };
    // A connect or a listen matters only in a watched process, which is the current one: a
    // cheaper check than the protocol's, so it comes first.
    let watched = || is_watched((bpf_get_current_pid_tgid() >> 32) as u32);
    match new {
        TCP_SYN_RECV if tcp() => {
            let _ = SERVER_SKS.insert(sk, SK_ACCEPTED, 0);
        }
        TCP_SYN_SENT if old == TCP_CLOSE && watched() && tcp() => connect_seen(sk),
        TCP_LISTEN if watched() && tcp() => listen_seen(sk),
        // The change into LAST_ACK did all a close does (its application had closed the socket
        // or still holds it; either way `tcp_destroy_sock` ends what is left when the socket
        // goes): the socket's entries are not looked up a second time.
        TCP_CLOSE if old == TCP_LAST_ACK => {}
        TCP_LAST_ACK | TCP_CLOSE => {
            // Straight from an open state: a reset, not a close the application made.
            let reset = new == TCP_CLOSE && (old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT);
            sk_closed(sk, reset);
        }
        TCP_ESTABLISHED if old == TCP_SYN_SENT => connected(sk, || sock_ends(sk).0),
        _ => {}
    }
    0
}

/// SYN_SENT→ESTABLISHED of a connection opened before its source port was chosen (the socket
/// path at SYN_SENT, or a connect() that returned before the handshake completed): its local
/// address (`local`, read only then) completes it, and userspace is told.
#[inline(always)]
fn connected(skaddr: u64, local: impl FnOnce() -> SockAddr) {
    let Some(pending) = CONNECTING.get_ptr(skaddr) else {
        return;
    };
    // SAFETY: map value pointer, copied.
    let [key, generation] = unsafe { *pending };
    let _ = CONNECTING.remove(skaddr);
    let Some(conn) = CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    if state.generation != generation {
        return;
    }
    state.local = local();
    let id = bpf_get_current_pid_tgid();
    emit_state(EventKind::ConnAddr, id, (key >> 32) as u32, key as u32, state, 0);
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
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let key = fd_key(tgid, arg(&ctx, 0) as u32);
    remove_present!(LISTENERS, key);
    remove_present!(BINDS, key);
    match CONNS.get_ptr_mut(key) {
        Some(state) => end_conn(id, key, state, true),
        // No connection on it (a connect that failed): a tie nginx made for it still goes.
        None => remove_present!(NGX_TIES, &key),
    }
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
/// state before a read from socket `sk` is reported: an incomplete connection learns its
/// addresses from `struct sock_common` (offsets from the kernel's BTF), and a server connection
/// takes the context a TCP option brought.
#[inline(always)]
pub fn socket_read_prelude(id: u64, fd: u32, sk: u64, state: &mut ConnState) {
    let cfg = config();
    if state.remote.family == 0 || state.local.port == 0 || is_unspecified(&state.local) {
        fill_addrs_from_sock(id, fd, state, sk);
    }
    if cfg.flags & CFG_TCP_OPTION != 0 && state.role == ROLE_SERVER {
        take_tcp_ctx(state, sk);
    }
}

#[inline(never)]
fn fill_addrs_from_sock(id: u64, fd: u32, state: &mut ConnState, sk: u64) {
    if sock_addrs(sk, &mut state.local, &mut state.remote) {
        emit_state(EventKind::ConnAddr, id, (id >> 32) as u32, fd, state, 0);
    }
}

/// A socket's local and remote addresses, from `struct sock_common` (offsets from the kernel's
/// BTF). Returns false, leaving both as they were, when they cannot be read.
#[inline(never)]
fn sock_addrs(sk: u64, local_out: &mut SockAddr, remote_out: &mut SockAddr) -> bool {
    let o = config().sk;
    if o.valid == 0 {
        return false;
    }
    // SAFETY: kernel reads through the checked helper.
    let read16 = |off: u16| unsafe { bpf_probe_read_kernel((sk + off as u64) as *const u16) }.ok();
    let (Some(family), Some(num), Some(dport)) = (read16(o.family), read16(o.num), read16(o.dport)) else {
        return false;
    };
    let remote_port = u16::from_be(dport);
    // SAFETY: as above.
    unsafe {
        if family == FAMILY_V4 {
            let (Ok(s), Ok(d)) = (
                bpf_probe_read_kernel((sk + o.rcv_saddr as u64) as *const [u8; 4]),
                bpf_probe_read_kernel((sk + o.daddr as u64) as *const [u8; 4]),
            ) else {
                return false;
            };
            *local_out = sock_addr_v4(family, num, s);
            *remote_out = sock_addr_v4(family, remote_port, d);
        } else {
            let (Ok(s), Ok(d)) = (
                bpf_probe_read_kernel((sk + o.v6_rcv_saddr as u64) as *const [u8; 16]),
                bpf_probe_read_kernel((sk + o.v6_daddr as u64) as *const [u8; 16]),
            ) else {
                return false;
            };
            *local_out = SockAddr { family, port: num, addr: s };
            *remote_out = SockAddr { family, port: remote_port, addr: d };
        }
    }
    true
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
    if !is_watched((id >> 32) as u32) {
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
    let mut local = sock_addr_v4(family, sport, [0; 4]);
    let mut remote = sock_addr_v4(family, dport, [0; 4]);
    if family == FAMILY_V4 {
        // SAFETY: helper reads inside the record.
        if let (Ok(s), Ok(d)) = unsafe { (ctx.read_at::<[u8; 4]>(22), ctx.read_at::<[u8; 4]>(26)) } {
            local.addr[..4].copy_from_slice(&s);
            remote.addr[..4].copy_from_slice(&d);
        }
    // SAFETY: as above.
    } else if let (Ok(s), Ok(d)) = unsafe { (ctx.read_at::<[u8; 16]>(30), ctx.read_at::<[u8; 16]>(46)) } {
        local.addr = s;
        remote.addr = d;
    }
    state.local = local;
    state.remote = remote;
    emit_state(EventKind::ConnAddr, id, tgid, fd, state, 0);
}
