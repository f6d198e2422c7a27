//! Bytes on tracked connections.
//!
//! Two hook sets feed the same entry and exit logic: the socket layer (`tcp_sendmsg_locked`,
//! `sock_send_length`, `sock_recv_length`; Linux 6.16+, the default) or, on older kernels, every
//! syscall (`raw_syscalls` sys_enter/sys_exit). Userspace attaches one set.
//!
//! Syscall hooks: the entry hook checks the process filter and the connection map and remembers
//! the buffer (or iovec array) for this thread; the exit hook knows how many bytes moved. Socket
//! hooks: the exit hooks (`sock_*_length`) take the fd and buffer from the registers the thread
//! entered the kernel with, and the send hook only starts a client's request. Either way the exit
//! copies a prefix of the bytes (up to the configured cap, across iovecs) into a per-CPU scratch
//! buffer behind a [`DataEvent`] header, and writes header + prefix to the ring buffer as one
//! variable-size record.
//!
//! Events are stamped when the call returns (a read's data has arrived); a client's write also
//! carries when its first bytes left (its span starts there). sendfile() counts bytes without
//! copying them: they are file content, and the response still ends at the right time.
//! recvmmsg/sendmmsg on a tracked connection are counted as not captured (TCP applications
//! practically never use them).
//!
//! Thread context: the first read of a request on a server connection marks the thread as serving
//! that request; the response clears the mark (generation 0). Data on client connections carries
//! the mark, and every event carries its turn's trace context (see `context`), which is how
//! userspace links outgoing calls to the request that caused them.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracewire_common::{
    ActiveCall, BODY_SKIP_MIN, CFG_SOCKET_LIFECYCLE, ConnId, ConnState, Counter, DATA_FLAG_AFTER_LOSS,
    DATA_FLAG_AFTER_SKIP, DATA_FLAG_BODY_SKIPPED, DATA_FLAG_COPY_FAILED, DATA_FLAG_IOV_OVERFLOW,
    DATA_FLAG_TLS, DATA_FLAG_TRUNCATED, DIR_EGRESS, DIR_INGRESS, DataEvent, EventKind, GAP_LOST,
    GAP_OPEN_LOST, GAP_UNSAMPLED, MAX_IOVECS, MAX_PAYLOAD, ROLE_CLIENT, ROLE_SERVER, Syscall,
    TLS_HANDSHAKING, TLS_ON, TLS_WRITE, TraceCtx, WATCH_GO_TLS, WATCH_TLS, fd_key,
};

use super::{
    conn::{conn_of_socket, end_if_closing, reopen, socket_read_prelude},
    context::{client_turn, server_turn, server_turn_end},
    golang::{goroutine_reg, h2_call, serving},
    gotls::note_tls_read,
};
use crate::{
    maps::{ACTIVE, CONNS, MUTED, SCRATCH, THREAD_CTX, TLS_CALLS, TLS_READS},
    util::{add, config, count, emit_bytes, header, is_watched, is_watched_client, now, watch_bits, zeroed},
};

const HDR: usize = core::mem::size_of::<DataEvent>();

/// The connection behind `fd`: through the socket a socket hook was handed (`sk`, which also
/// catches reused fds and opens accepted ones), or by fd alone (the syscall hooks, a send's
/// exit). An entry its socket's close left dead (generation 0) is no connection.
#[inline(always)]
pub(crate) fn conn_of(id: u64, fd: u32, sk: u64) -> Option<*mut ConnState> {
    if sk != 0 {
        return conn_of_socket(id, fd, sk);
    }
    let p = CONNS.get_ptr_mut(fd_key((id >> 32) as u32, fd))?;
    // SAFETY: map value pointer, valid for this run.
    (unsafe { (*p).generation } != 0).then_some(p)
}

/// A data syscall entered (syscall hooks). `active`: the thread's entry in `ACTIVE`, when the
/// caller looked it up already.
#[inline(always)]
fn enter(
    id: u64,
    fd: u64,
    syscall: Syscall,
    ptr: u64,
    count_arg: u32,
    direction: u8,
    active: Option<*mut ActiveCall>,
) {
    let Some(conn) = conn_of(id, fd as u32, 0) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    let client_write = direction == DIR_EGRESS && state.role == ROLE_CLIENT;
    if client_write
        && state.turn != DIR_EGRESS
        && !h2_control_write(id, state, syscall as u8, ptr, u64::from(count_arg))
    {
        client_turn(id, fd as u32, state);
    }
    // Only a client's write needs its start (a client span starts there); every other event
    // is stamped when its call returns, and a clock read costs tens of ns in a guest.
    let enter_ns = if client_write { now() } else { 0 };
    // A thread's entry stays in the map between calls and is rewritten in place: an insert
    // and a delete per syscall would cost several times the lookup.
    if let Some(p) = active {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            (*p).ptr = ptr;
            (*p).enter_ns = enter_ns;
            (*p).fd = fd as u32;
            (*p).count = count_arg;
            (*p).syscall = syscall as u8;
        }
        return;
    }
    let call = ActiveCall {
        ptr,
        enter_ns,
        fd: fd as u32,
        count: count_arg,
        syscall: syscall as u8,
        is_tcp: 1,
        _pad: [0; 6],
        addr: zeroed(),
        local: zeroed(),
    };
    if ACTIVE.insert(id, call, 0).is_err() {
        count(Counter::ActiveMapFull);
    }
}

/// How the payload is laid out in user memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One buffer (`ptr`).
    Flat,
    /// An iovec array (`ptr`, `count` entries).
    Iovec,
    /// A `struct user_msghdr` (`ptr`): iovec array at +16, count at +24.
    Msghdr,
    /// No payload (sendfile).
    None,
}

const EAGAIN: i64 = 11;

/// A call returned: its bytes are reported. A connection whose socket closed (see
/// `conn::still_readable`) ends at a call that moves no bytes (end of stream, an error), or when
/// the socket is freed: what the socket received may take more than one read. `sk`: the socket,
/// when the hook was handed it (socket-hook reads); 0 otherwise. `g`: the Go goroutine register
/// the thread entered the kernel with, when the hook read it (0: read it where needed).
#[inline(always)]
fn exit(id: u64, call: ActiveCall, r: i64, direction: u8, layout: Layout, sk: u64, g: u64) {
    if r <= 0 {
        count(Counter::DataNoBytes);
        // A call that would block ran no socket state change.
        if r != -EAGAIN && config().flags & CFG_SOCKET_LIFECYCLE != 0 {
            closed_without_bytes(id, call.fd);
        }
        return;
    }
    let Some(conn_ptr) = conn_of(id, call.fd, sk) else {
        return; // not a connection (or closed by another thread meanwhile)
    };
    report(id, call, r as u64, direction, layout, sk, conn_ptr, g, Source::Socket);
}

/// A call on `fd` that moved no bytes (end of stream, reset) may be the one its socket closed in.
#[inline(never)]
fn closed_without_bytes(id: u64, fd: u32) {
    let key = fd_key((id >> 32) as u32, fd);
    if let Some(p) = CONNS.get_ptr_mut(key) {
        end_if_closing(id, key, p);
    }
}

/// Where a reported call's bytes come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A socket call, which may carry a TLS connection's ciphertext.
    Socket,
    /// A socket call already found to carry plaintext.
    SocketChecked,
    /// A TLS library call's plaintext (see `tls`).
    Tls,
}

/// Whether a socket call on `conn` carries ciphertext: the connection is TLS, or the call is made
/// inside a TLS library call of a process whose library is probed (which names the library
/// call's socket). Such calls are counted and not reported. A TLS connection's read outside any
/// library call, in such a process, is a library fed through memory buffers: the thread hands
/// what it read to the connection's session next, whose call this read names (see `tls`).
#[inline(always)]
fn ciphertext(id: u64, fd: u32, conn: &mut ConnState, direction: u8) -> bool {
    if watch_bits((id >> 32) as u32) & WATCH_TLS != 0 {
        if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
            // SAFETY: map value pointer, valid for this run.
            unsafe { (*call).fd = fd };
            conn.tls = TLS_ON;
        } else if conn.tls != 0 && direction == DIR_INGRESS && TLS_READS.insert(&id, &fd, 0).is_err() {
            count(Counter::TlsCallsFull);
        }
    }
    if conn.tls == 0 {
        return false;
    }
    count(Counter::TlsCiphertext);
    true
}

/// The first bytes seen on a connection (`ptr`, laid out as `layout`): a TLS record shows bytes
/// that are ciphertext from the first, which no library call named (a server's handshake, whose
/// connection opens at this read; a library fed through memory buffers; one tracewire does not
/// probe; a connection open before tracewire, in the middle of its session). The connection is
/// marked TLS and its socket calls are not reported.
#[inline(never)]
fn first_bytes(conn: &mut ConnState, layout: Layout, ptr: u64) {
    conn.looked = 1;
    if conn.tls != 0 {
        return;
    }
    // SAFETY (reads below): user memory, read through the checked helper.
    let iov = match layout {
        Layout::Flat => {
            if tls_record(ptr) {
                conn.tls = TLS_HANDSHAKING;
            }
            return;
        }
        Layout::Iovec => ptr,
        Layout::Msghdr => match unsafe { aya_ebpf::helpers::bpf_probe_read_user((ptr + 16) as *const u64) } {
            Ok(iov) => iov,
            Err(_) => return,
        },
        Layout::None => return,
    };
    if let Ok(base) = unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const u64) }
        && tls_record(base)
    {
        conn.tls = TLS_HANDSHAKING;
    }
}

/// A Go program is about to use connection `fd` through `crypto/tls` (see `gotls`): marked TLS
/// before its ciphertext moves, unless it was already. A connection not open yet (a server's,
/// opened at its first read) is marked by that read, which starts with a TLS record.
#[inline(always)]
pub(crate) fn tls_conn_starts(id: u64, fd: u32) {
    if let Some(conn) = conn_of(id, fd, 0) {
        // SAFETY: map value pointer, valid for this run.
        unsafe {
            if (*conn).tls == 0 {
                (*conn).tls = TLS_HANDSHAKING;
            }
        }
    }
}

/// Whether the bytes at `ptr` start a TLS record (content type 20 to 23, version 3.x): what a
/// connection carries when its first bytes seen are from the middle of a TLS session. Plain
/// text never starts so (the types are control characters).
#[inline(always)]
fn tls_record(ptr: u64) -> bool {
    // SAFETY: user memory, read through the checked helper.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const [u8; 3]) } {
        Ok([t, 3, v]) => (20..=23).contains(&t) && v <= 4,
        _ => false,
    }
}

/// A Go program's goroutine read ciphertext from TLS connection `fd`: the `crypto/tls` read it
/// is in copies the plaintext out next, and that copy is reported as `fd`'s (see `gotls`).
/// Names the connection for reads whose entry went unseen (a read that began before tracewire
/// started, blocked on an idle pooled connection). `g`: the goroutine register the thread
/// entered the kernel with (0: read here).
#[inline(never)]
fn go_tls_socket_read(tgid: u32, fd: u32, g: u64) {
    let g = if g != 0 {
        g
    } else {
        // SAFETY: helpers on the current task; the register block is BTF-typed.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
        if regs.is_null() {
            return;
        }
        goroutine_reg(regs)
    };
    note_tls_read(tgid, g, fd);
}

/// A TLS connection's plaintext is about to be reported: after a Go handshake, whose segments
/// took turns as ciphertext (a client's minted a context), the first plaintext starts afresh, as
/// `SSL_do_handshake`'s return makes it for OpenSSL.
#[inline(always)]
fn plaintext_starts(conn: &mut ConnState) {
    if conn.tls == TLS_HANDSHAKING {
        conn.turn = 0;
        conn.send_ns = 0;
    }
    conn.tls = TLS_ON;
}

/// Reports the plaintext a TLS library call moved on `fd` (see `tls`).
#[inline(always)]
pub(crate) fn report_tls(id: u64, fd: u32, buf: u64, moved: u64, direction: u8) {
    let Some(conn_ptr) = conn_of(id, fd, 0) else {
        count(Counter::TlsNoConn);
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn_ptr };
    plaintext_starts(conn);
    // A client's request turn began when its first ciphertext left (`tcp_sendmsg_locked`, or
    // the syscall hooks' entry), which minted its context; the socket hooks also noted when.
    let mut enter_ns = 0;
    if direction == DIR_EGRESS && conn.role == ROLE_CLIENT {
        enter_ns = conn.send_ns;
        conn.send_ns = 0;
    }
    report(
        id,
        tls_call(fd, buf, enter_ns, direction),
        moved,
        direction,
        Layout::Flat,
        0,
        conn_ptr,
        0,
        Source::Tls,
    );
}

/// Reports the plaintext a Go program hands `crypto/tls` to write on `fd`, before it is
/// encrypted (see `gotls`): a client's request turn starts here, in time for the TCP option
/// of its first segment.
#[inline(always)]
pub(crate) fn report_tls_write(id: u64, fd: u32, buf: u64, len: u64, handshake_turn: bool) {
    let enter_ns = tls_write_starts(id, fd, buf, len, handshake_turn);
    if enter_ns != u64::MAX {
        report_tls_written(id, fd, buf, len, enter_ns);
    }
}

/// The connection's side of a plaintext write of `len` bytes at `buf` about to start: a client's
/// request turn starts, unless the write goes on with one or holds only HTTP/2 control frames.
/// Returns when the write started (0: a server's, stamped when reported), `u64::MAX` when `fd`
/// is no connection. `handshake_turn`: a client's first request keeps the turn its handshake's
/// first segment started (its context rode the handshake's segments, which the server may take
/// it from: a library over memory buffers writes the request's ciphertext with the handshake's
/// last flight). Its own function, as is the report: `client_turn`'s frame and the report's do
/// not fit the BPF stack in one call chain.
#[inline(never)]
fn tls_write_starts(id: u64, fd: u32, buf: u64, len: u64, handshake_turn: bool) -> u64 {
    let Some(conn_ptr) = conn_of(id, fd, 0) else {
        count(Counter::TlsNoConn);
        return u64::MAX;
    };
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn_ptr };
    if handshake_turn && conn.tls == TLS_HANDSHAKING && conn.role == ROLE_CLIENT && conn.turn == DIR_EGRESS {
        conn.tls = TLS_ON;
    }
    plaintext_starts(conn);
    if conn.role != ROLE_CLIENT {
        return 0;
    }
    let starts = if conn.h2 == 0 {
        conn.turn != DIR_EGRESS
    } else if h2_starts_with_headers(buf) {
        // Each stream's request is a call of its own, whoever wrote last: a write that starts
        // with a HEADERS frame starts one (its context then rides its segments), for the
        // request of the goroutine writing it.
        h2_call((id >> 32) as u32, fd);
        true
    } else {
        conn.turn != DIR_EGRESS && !h2_control_plaintext(buf, len)
    };
    if starts {
        client_turn(id, fd, conn);
    }
    now()
}

/// [`h2_control_only`] for a plaintext write of `len` bytes at `buf`. Its own function: the
/// frames it reads take stack that `client_turn`, called after it, needs.
#[inline(never)]
fn h2_control_plaintext(buf: u64, len: u64) -> bool {
    h2_control_only(Layout::Flat, buf, 0, len)
}

/// Whether an HTTP/2 client's plaintext at `buf` starts with a HEADERS frame (type 1: a request).
#[inline(always)]
fn h2_starts_with_headers(buf: u64) -> bool {
    // SAFETY: user memory, read through the checked helper.
    matches!(unsafe { aya_ebpf::helpers::bpf_probe_read_user((buf + 3) as *const u8) }, Ok(1))
}

/// Reports a plaintext write that started at `enter_ns` (see [`report_tls_write`]).
#[inline(never)]
fn report_tls_written(id: u64, fd: u32, buf: u64, len: u64, enter_ns: u64) {
    if let Some(conn_ptr) = conn_of(id, fd, 0) {
        let call = tls_call(fd, buf, enter_ns, DIR_EGRESS);
        report(id, call, len, DIR_EGRESS, Layout::Flat, 0, conn_ptr, 0, Source::Tls);
    }
}

/// The call record of a TLS library call's plaintext.
#[inline(always)]
fn tls_call(fd: u32, buf: u64, enter_ns: u64, direction: u8) -> ActiveCall {
    ActiveCall {
        ptr: buf,
        enter_ns,
        fd,
        count: 0,
        syscall: if direction == DIR_EGRESS { Syscall::SslWrite } else { Syscall::SslRead } as u8,
        is_tcp: 1,
        _pad: [0; 6],
        addr: zeroed(),
        local: zeroed(),
    }
}

/// Reports the `moved` bytes of a call on connection `conn_ptr`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report(
    id: u64,
    call: ActiveCall,
    moved: u64,
    direction: u8,
    layout: Layout,
    sk: u64,
    conn_ptr: *mut ConnState,
    g: u64,
    source: Source,
) {
    let tgid = (id >> 32) as u32;
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn_ptr };
    // A TLS library's plaintext is always reported: userspace may have given up on the
    // connection's ciphertext, seen before the library was probed, and reads the plaintext afresh.
    if source != Source::Tls && muted(tgid, call.fd, conn) {
        return;
    }
    if sk != 0 {
        // Before the scratch buffer is used: this may report the connection's addresses.
        socket_read_prelude(id, call.fd, sk, conn);
    }
    if conn.gap & GAP_OPEN_LOST != 0 {
        reopen(id, call.fd, conn);
    }
    if source == Source::Socket {
        if conn.looked == 0 {
            first_bytes(conn, layout, call.ptr);
        }
        if ciphertext(id, call.fd, conn, direction) {
            if direction == DIR_INGRESS && watch_bits(tgid) & WATCH_GO_TLS != 0 {
                go_tls_socket_read(tgid, call.fd, g);
            }
            return;
        }
    }
    let cfg = config();
    // SAFETY: helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        count(Counter::ScratchMissing);
        return;
    };
    // SAFETY: this CPU's scratch slot, exclusively ours while this program runs (tracing programs
    // do not nest on one CPU).
    let buf = unsafe { &mut (*scratch).0 };
    let conn_id = ConnId { tgid, fd: call.fd, generation: conn.generation };

    let bit = 1u8 << (direction & 7);
    // The other side spoke since this direction's last call: HTTP/1 takes turns, so the message
    // this direction was in is over, and this call is not looked into as more of its body (the
    // look reads user memory once or twice). A client's request turn has already begun here
    // (`client_turn` clears it). Were the message not over after all (a server answering before
    // a request body is all read, a client pipelining), the rest of its body is copied, not
    // counted.
    if (conn.role == ROLE_SERVER || conn.role == ROLE_CLIENT) && conn.turn != direction {
        conn.in_body &= !bit;
    }
    let tid = id as u32;
    let mut thread_ctx: ConnId = zeroed();
    if conn.role == ROLE_CLIENT {
        if direction == DIR_INGRESS {
            conn.turn = DIR_INGRESS;
            // Its sends are over (a send whose exit went unseen must not hold the next one's start).
            conn.send_ns = 0;
        }
        if conn.parent.generation != 0 {
            // A call the kernel followed through the runtime: the request it names, whatever
            // the thread did before.
            thread_ctx = conn.parent;
        // SAFETY: copied.
        } else if let Some(t) = unsafe { THREAD_CTX.get(tid) }.copied()
            && t.conn.tgid == tgid
            && t.conn.generation != 0
        {
            thread_ctx = t.conn;
        }
    } else if conn.role == ROLE_SERVER
        && direction == DIR_EGRESS
        && conn.turn != DIR_EGRESS
        && (conn.h2 == 0 || !h2_control_only(layout, call.ptr, call.count as u64, moved))
    {
        server_turn_end(conn, &conn_id, Some(tid));
    }
    // An HTTP/2 server may read a client's next request before writing anything (the client's
    // settings acknowledgement, then its first request): a context from another client span
    // than the turn's shows a new request.
    let h2_next = conn.h2 != 0
        && conn.turn == DIR_INGRESS
        && conn.rx_valid != 0
        && conn.rx.span_id != conn.ctx.parent_id;
    let starts_request = conn.role == ROLE_SERVER
        && direction == DIR_INGRESS
        && (conn.turn != DIR_INGRESS || h2_next)
        && (conn.h2 == 0 || !h2_control_only(layout, call.ptr, call.count as u64, moved));
    if starts_request && h2_next {
        // The turn before it ends here (not at a write: no thread wrote its response).
        server_turn_end(conn, &conn_id, None);
        conn.rx_valid = 1;
    }
    if conn.role == ROLE_SERVER && direction == DIR_INGRESS && !starts_request {
        // More of the request: the goroutine reading it serves it (Go programs only).
        serving(tgid, &conn_id, &conn.ctx, g);
    }
    if conn.skip != 0 && !starts_request {
        // A request that is not sampled: its bytes cost nothing more.
        return;
    }

    let mut cap = cfg.payload_cap as u64;
    if cap > MAX_PAYLOAD as u64 {
        cap = MAX_PAYLOAD as u64;
    }
    let want = if moved < cap { moved } else { cap };
    let mut flags: u16 = if source == Source::Tls { DATA_FLAG_TLS } else { 0 };
    let at = buf.as_mut_ptr() as *mut DataEvent;
    // The size is compared as read back from map memory, which the verifier does not track:
    // comparing `moved` itself would split every way through the copy below in two.
    // SAFETY: the scratch slot starts with room for a DataEvent (see below).
    let size = unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*at).len), moved as u32);
        core::ptr::read_volatile(core::ptr::addr_of!((*at).len))
    };
    let captured = match layout {
        Layout::None => 0,
        _ if conn.in_body & bit != 0
            && !starts_request
            && size as u64 >= BODY_SKIP_MIN
            && continues_body(layout, call.ptr, call.count as u64) =>
        {
            flags |= DATA_FLAG_BODY_SKIPPED;
            0
        }
        Layout::Flat if direction == DIR_EGRESS && size as u64 >= FLAT_SCAN_MIN => {
            copy_flat_head_first(buf, call.ptr, want, &mut flags)
        }
        Layout::Flat => copy_flat(buf, call.ptr, want, &mut flags),
        Layout::Iovec => copy_iov(buf, call.ptr, call.count as u64, want, direction, &mut flags),
        Layout::Msghdr => {
            // SAFETY: user pointers are validated by the helper.
            let iov = unsafe { aya_ebpf::helpers::bpf_probe_read_user((call.ptr + 16) as *const u64) };
            let n = unsafe { aya_ebpf::helpers::bpf_probe_read_user((call.ptr + 24) as *const u64) };
            match (iov, n) {
                (Ok(iov), Ok(n)) => copy_iov(buf, iov, n, want, direction, &mut flags),
                _ => {
                    flags |= DATA_FLAG_COPY_FAILED;
                    0
                }
            }
        }
    };
    if flags & DATA_FLAG_BODY_SKIPPED != 0 {
        count(Counter::BodySkipped);
    } else if layout != Layout::None && captured < moved {
        flags |= DATA_FLAG_TRUNCATED;
        count(Counter::Truncated);
    }
    if flags & DATA_FLAG_COPY_FAILED != 0 {
        count(Counter::CopyFailed);
    }
    add(Counter::PayloadBytes, captured);
    let t = now();
    let ev = DataEvent {
        header: header(EventKind::Data as u32, id, t),
        conn: conn_id,
        // Only client writes record an entry time (see `enter`); the rest start when they end.
        enter_ns: if call.enter_ns == 0 { t } else { call.enter_ns },
        thread_ctx,
        len: moved as u32,
        captured: captured as u32,
        direction,
        syscall: call.syscall,
        flags,
        role: conn.role,
        _pad: 0,
        _pad2: 0,
        ctx: conn.ctx,
    };
    // SAFETY: the scratch slot starts with room for a DataEvent (SCRATCH_BYTES >= HDR) and is
    // 8-aligned (see `Scratch`): the event is written with word stores.
    unsafe { core::ptr::write(at, ev) };
    if layout != Layout::None {
        // Here, from the event: one way into it whichever way the copy went, and nothing it
        // compares is used after it.
        body_after(conn, bit, buf);
    }
    if starts_request {
        // Everything that differs between the ways through the copy above is now in map memory,
        // which the verifier does not track: it verifies the turn once, not once per way.
        // SAFETY: in bounds as above; the payload starts right after the header.
        unsafe {
            let n = core::ptr::read_volatile(core::ptr::addr_of!((*at).captured)) as u64;
            server_turn(id, conn, call.fd, buf.as_mut_ptr().add(HDR), n);
            copy_ctx(core::ptr::addr_of_mut!((*at).ctx), &conn.ctx);
        }
        serving(tgid, &conn_id, &conn.ctx, g);
        if conn.skip != 0 {
            return;
        }
    }
    let gap = conn.gap;
    if gap & (GAP_UNSAMPLED | GAP_LOST) != 0 {
        // An open still to send again stays marked.
        conn.gap = gap & GAP_OPEN_LOST;
        // SAFETY: in bounds as above.
        unsafe {
            let f = core::ptr::addr_of_mut!((*at).flags);
            if gap & GAP_UNSAMPLED != 0 {
                *f |= DATA_FLAG_AFTER_SKIP;
            }
            if gap & GAP_LOST != 0 {
                *f |= DATA_FLAG_AFTER_LOSS;
            }
        }
    }
    // SAFETY: in bounds as above.
    let captured = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*at).captured)) } as usize;
    let total = HDR + (captured & (MAX_PAYLOAD * 2 - 1));
    if !emit_bytes(&cfg, buf, total) {
        // Lost to a full ring: the connection's next event says so, or userspace would pair a
        // request whose response this was with the next request's response.
        conn.gap = gap | GAP_LOST;
    }
}

/// Whether the connection is muted: userspace reads no protocol on it (see [`MUTED`]). Looked
/// up on a few calls only (see `ConnState::reports`).
#[inline(always)]
fn muted(tgid: u32, fd: u32, conn: &mut ConnState) -> bool {
    if conn.muted != 0 {
        return true;
    }
    let r = conn.reports.wrapping_add(1);
    conn.reports = r;
    if r < 4 || r & (r - 1) != 0 {
        return false;
    }
    // SAFETY: copied out of the map value.
    match unsafe { MUTED.get(&fd_key(tgid, fd)) } {
        Some(g) if *g == conn.generation => {
            conn.muted = 1;
            count(Counter::Muted);
            true
        }
        _ => false,
    }
}

/// Whether what follows a call in its direction may be body: its body was skipped, or it starts
/// a message (its first byte is a capital) and either ends where its head does or was cut at the
/// cap (a head longer than that is framed from its first line anyway). Any other message start
/// ends it. Reads the call's event at the start of `buf`.
#[inline(always)]
fn body_after(conn: &mut ConnState, bit: u8, buf: &[u8]) {
    let at = buf.as_ptr() as *const DataEvent;
    // SAFETY: the event was written at the start of the scratch buffer (see `report`).
    let (flags, captured, moved) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*at).flags)),
            core::ptr::read_volatile(core::ptr::addr_of!((*at).captured)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*at).len)) as usize,
        )
    };
    if flags & DATA_FLAG_BODY_SKIPPED != 0 {
        conn.in_body |= bit;
        return;
    }
    // The HTTP/2 preface looks like a head (capitals, then an empty line), but what follows it
    // is frames, never a body to count.
    if captured >= 8 && starts_preface(buf) {
        conn.h2 = 1;
    }
    if conn.h2 != 0 {
        conn.in_body &= !bit;
        return;
    }
    if captured == 0 {
        return;
    }
    // SAFETY: the payload starts after the header; captured >= 1.
    if !unsafe { *buf.as_ptr().add(HDR) }.is_ascii_uppercase() {
        return;
    }
    let cut = captured < moved && flags & (DATA_FLAG_COPY_FAILED | DATA_FLAG_IOV_OVERFLOW) == 0;
    let head_only = captured == moved && captured >= 4 && ends_with_empty_line(buf, captured as u64);
    if cut || head_only {
        conn.in_body |= bit;
    } else {
        conn.in_body &= !bit;
    }
}

/// The first buffer of a call (read from user memory for gathered ones), when it holds at least
/// `min` bytes: its address, its length (`u64::MAX` for a flat call: the call's own) and the
/// call's number of buffers.
#[inline(always)]
fn first_buffer(layout: Layout, ptr: u64, count: u64, min: u64) -> Option<(u64, u64, u64)> {
    let (mut iov, mut n) = (ptr, count);
    match layout {
        Layout::Flat => return Some((ptr, u64::MAX, 1)),
        Layout::None => return None,
        Layout::Iovec => {}
        Layout::Msghdr => {
            // SAFETY: user pointers are validated by the helper.
            match unsafe {
                (
                    aya_ebpf::helpers::bpf_probe_read_user((ptr + 16) as *const u64),
                    aya_ebpf::helpers::bpf_probe_read_user((ptr + 24) as *const u64),
                )
            } {
                (Ok(i), Ok(c)) => (iov, n) = (i, c),
                _ => return None,
            }
        }
    }
    // SAFETY: user pointer validated by the helper.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const [u64; 2]) } {
        Ok([base, len]) if n > 0 && len >= min => Some((base, len, n)),
        _ => None,
    }
}

/// Whether a call inside a body goes on with it: its first bytes (read from user memory) start
/// neither a chunk size nor a message. Only a call of at least [`BODY_SKIP_MIN`] bytes is asked.
#[inline(always)]
fn continues_body(layout: Layout, ptr: u64, count: u64) -> bool {
    self::count(Counter::BodyChecks);
    let Some((data, _, _)) = first_buffer(layout, ptr, count, 8) else {
        return false;
    };
    // SAFETY: user pointer validated by the helper.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(data as *const [u8; 8]) } {
        Ok(b) => !could_start_chunk_or_message(b),
        Err(_) => false,
    }
}

/// Whether a client's send on HTTP/2 connection `state` holds only control frames (see
/// [`h2_control_only`]): its own bytes, or on a TLS connection, whose send is ciphertext, the
/// plaintext its thread is handing the library (`SSL_write`'s buffer).
#[inline(always)]
fn h2_control_send(id: u64, state: &ConnState, layout: Layout, ptr: u64, count: u64, moved: u64) -> bool {
    if state.h2 == 0 {
        return false;
    }
    if state.tls == 0 {
        return h2_control_only(layout, ptr, count, moved);
    }
    // SAFETY: copied out of the map.
    match unsafe { TLS_CALLS.get(&id) } {
        Some(c) if c.kind == TLS_WRITE && c.num != 0 => h2_control_only(Layout::Flat, c.buf, 0, c.num),
        _ => false,
    }
}

/// [`h2_control_send`] for a write the syscall hooks saw enter (`count`: its length, or its
/// number of buffers).
#[inline(always)]
fn h2_control_write(id: u64, state: &ConnState, syscall: u8, ptr: u64, count: u64) -> bool {
    match data_call_of(syscall) {
        Some(c) => {
            let moved = if c.layout == Layout::Flat { count } else { u64::MAX };
            h2_control_send(id, state, c.layout, ptr, count, moved)
        }
        None => false,
    }
}

/// Frames of a call looked at by [`h2_control_only`].
const H2_FRAMES: u64 = 4;

/// Whether an HTTP/2 call of `size` bytes holds nothing but frames that speak for the
/// connection, not a request (SETTINGS, PING, WINDOW_UPDATE): it neither starts nor ends a turn.
/// Peers exchange them at any time (settings and their acknowledgement around the first
/// request, flow control, pings), and were they turns, a client's would mint a context that
/// the TCP option carries to the server, whose next request would take it as its parent. Looks
/// at the first [`H2_FRAMES`] frames of the call's first buffer; anything else counts as a turn.
/// `moved`: the call's bytes (`u64::MAX` when not known).
#[inline(always)]
fn h2_control_only(layout: Layout, ptr: u64, count: u64, moved: u64) -> bool {
    let Some((data, len, n)) = first_buffer(layout, ptr, count, 9) else {
        return false;
    };
    // Frames beyond the first buffer are not looked at: the call is control only when that
    // buffer holds all of it.
    let (size, whole) = if len < moved { (len, n == 1) } else { (moved, true) };
    let mut off = 0u64;
    let mut i = 0;
    while i < H2_FRAMES {
        // SAFETY: user pointer validated by the helper.
        let Ok(h) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user((data + off) as *const [u8; 4]) })
        else {
            return false;
        };
        if !matches!(h[3], 4 | 6 | 8) {
            return false;
        }
        off += 9 + ((h[0] as u64) << 16 | (h[1] as u64) << 8 | h[2] as u64);
        if off >= size {
            return whole;
        }
        i += 1;
    }
    false
}

/// Copies a trace context between map values word by word: as a plain struct copy the compiler
/// makes it a call to a memmove that moves one byte at a time.
#[inline(always)]
fn copy_ctx(dst: *mut TraceCtx, src: &TraceCtx) {
    const WORDS: usize = core::mem::size_of::<TraceCtx>() / 8;
    let (d, s) = (dst as *mut u64, src as *const TraceCtx as *const u64);
    let mut i = 0;
    while i < WORDS {
        // SAFETY: both point at an 8-aligned TraceCtx (see its definition); volatile keeps the
        // words from being merged back into a memmove.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Copies `want` bytes from one user buffer after the header. Returns bytes copied.
#[inline(always)]
fn copy_flat(buf: &mut [u8], src: u64, want: u64, flags: &mut u16) -> u64 {
    let mut n = want;
    if n > MAX_PAYLOAD as u64 {
        n = MAX_PAYLOAD as u64;
    }
    if n == 0 {
        return 0;
    }
    // SAFETY: n <= MAX_PAYLOAD and the scratch buffer has HDR + 2 * MAX_PAYLOAD bytes.
    let rc = unsafe { bpf_probe_read_user(buf.as_mut_ptr().add(HDR).cast(), n as u32, src as *const _) };
    if rc != 0 {
        *flags |= DATA_FLAG_COPY_FAILED;
        return 0;
    }
    n
}

/// Writes of one buffer at least this long are looked into for a head followed by its body.
const FLAT_SCAN_MIN: u64 = 1024;
/// Bytes a head's end is looked for in (8 per step).
const HEAD_SCAN_WORDS: usize = 32;

/// Copies `want` bytes of one buffer that may hold a head and its body (a write of both, as Go's
/// net/http makes): the first bytes, then, unless they hold a whole head followed by body bytes
/// (see [`could_start_chunk_or_message`]), the rest. Returns bytes copied: the head's length
/// when the body is counted instead ([`DATA_FLAG_BODY_SKIPPED`]).
#[inline(never)]
fn copy_flat_head_first(buf: &mut [u8], src: u64, want: u64, flags: &mut u16) -> u64 {
    const FIRST: u64 = (HEAD_SCAN_WORDS * 8 + 8) as u64;
    if want <= FIRST {
        return copy_flat(buf, src, want, flags);
    }
    let first = copy_flat(buf, src, FIRST, flags);
    if first != FIRST {
        return first;
    }
    // SAFETY: the payload starts after the header.
    if unsafe { *buf.as_ptr().add(HDR) }.is_ascii_uppercase() {
        let end = head_end(buf);
        if end != 0 {
            // SAFETY: end <= HEAD_SCAN_WORDS * 8 + 3, and FIRST bytes were copied.
            let next =
                unsafe { core::ptr::read_unaligned(buf.as_ptr().add(HDR + (end & 511)) as *const [u8; 8]) };
            if end + 8 <= FIRST as usize && !could_start_chunk_or_message(next) {
                *flags |= DATA_FLAG_BODY_SKIPPED;
                return end as u64;
            }
        }
    }
    let mut rest = want - FIRST;
    if rest > MAX_PAYLOAD as u64 - FIRST {
        rest = MAX_PAYLOAD as u64 - FIRST;
    }
    // SAFETY: FIRST + rest <= MAX_PAYLOAD, inside HDR + 2 * MAX_PAYLOAD.
    let rc = unsafe {
        bpf_probe_read_user(
            buf.as_mut_ptr().add(HDR + FIRST as usize).cast(),
            rest as u32,
            (src + FIRST) as *const _,
        )
    };
    if rc != 0 {
        *flags |= DATA_FLAG_COPY_FAILED;
        return FIRST;
    }
    FIRST + rest
}

/// Where the first head in the payload ends (after its empty line), or 0 when it does not end
/// within the first `HEAD_SCAN_WORDS` words. Eight positions at a time, without branching per
/// byte: every branch is a way the verifier walks, and this runs inside every way to it.
#[inline(always)]
fn head_end(buf: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = ONES * 0x7f;
    // 0x80 in each byte of `x` equal to `c`, exactly (no borrow between bytes).
    let eq = |x: u64, c: u8| {
        let y = x ^ (ONES * u64::from(c));
        !(((y & LOW7) + LOW7) | y | LOW7)
    };
    let mut w = 0;
    while w < HEAD_SCAN_WORDS {
        // SAFETY: within the first HEAD_SCAN_WORDS * 8 + 8 payload bytes.
        let (a, b, c) = unsafe {
            let p = buf.as_ptr().add(HDR + w * 8);
            (
                core::ptr::read_unaligned(p as *const u64),
                core::ptr::read_unaligned(p.add(1) as *const u64),
                core::ptr::read_unaligned(p.add(2) as *const u64),
            )
        };
        // Little-endian: byte k of each word is position w * 8 + k (+1, +2): "\n\r\n" starts there.
        let m = eq(a, b'\n') & eq(b, b'\r') & eq(c, b'\n');
        if m != 0 {
            // The lowest match: its byte index from a multiply (BPF has no count-trailing-zeros).
            let k = (((m & m.wrapping_neg()) >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize;
            return w * 8 + (k & 7) + 3;
        }
        w += 1;
    }
    0
}

/// Gathers up to `want` bytes across an iovec array. Returns bytes copied.
#[inline(always)]
fn copy_iov(buf: &mut [u8], iov: u64, iovcnt: u64, want: u64, direction: u8, flags: &mut u16) -> u64 {
    // The offset so far lives in map memory (the event's `enter_ns`, written after the copy),
    // which the verifier does not track: every way through an iteration then ends in the same
    // state, and it walks the loop once per iteration instead of once per combination of the
    // earlier iterations' branches (which put gRPC's 24-buffer writes out of reach).
    // SAFETY: the scratch slot starts with room for a DataEvent; the field and the one after it
    // (`thread_ctx`) are 8-aligned.
    let slot = unsafe { buf.as_mut_ptr().add(core::mem::offset_of!(DataEvent, enter_ns)) as *mut u64 };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, 0) };
    let mut i: u64 = 0;
    // The first two entries in one read: a response is typically written as head + body, and
    // every user-memory read costs tens of ns.
    let mut first = [0u64; 4];
    if iovcnt >= 2 {
        // SAFETY: user pointer validated by the helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const [u64; 4]) } {
            Ok(e) => first = e,
            Err(_) => {
                *flags |= DATA_FLAG_COPY_FAILED;
                return 0;
            }
        }
    }
    while i < MAX_IOVECS as u64 {
        // SAFETY: as above.
        let off = unsafe { core::ptr::read_volatile(slot) };
        if i >= iovcnt || off >= want {
            break;
        }
        if i == 1 && iovcnt == 2 && direction == DIR_EGRESS && head_then_body(buf, off, first, flags) {
            break;
        }
        let entry = if iovcnt >= 2 && i == 0 {
            [first[0], first[1]]
        } else if iovcnt >= 2 && i == 1 {
            [first[2], first[3]]
        } else {
            // SAFETY: user pointer validated by the helper.
            match unsafe { aya_ebpf::helpers::bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) } {
                Ok(e) => e,
                Err(_) => {
                    *flags |= DATA_FLAG_COPY_FAILED;
                    break;
                }
            }
        };
        let mut n = entry[1];
        let room = want - off;
        if n > room {
            n = room;
        }
        // Bounded again as read back from map memory: the compiler cannot fold this check into
        // the ones above, whose bounds the verifier no longer sees with the offset untracked.
        // SAFETY: the slot after the offset's, also written after the copy.
        let n = unsafe {
            core::ptr::write_volatile(slot.add(1), n);
            core::ptr::read_volatile(slot.add(1))
        };
        let n = if n > MAX_PAYLOAD as u64 { MAX_PAYLOAD as u64 } else { n };
        // Masked offset < MAX_PAYLOAD and n <= MAX_PAYLOAD: always inside HDR + 2 * MAX_PAYLOAD.
        let at = (off & (MAX_PAYLOAD as u64 - 1)) as usize;
        if n > 0 {
            // SAFETY: bounds as above.
            let rc = unsafe {
                bpf_probe_read_user(buf.as_mut_ptr().add(HDR + at).cast(), n as u32, entry[0] as *const _)
            };
            if rc != 0 {
                *flags |= DATA_FLAG_COPY_FAILED;
                break;
            }
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, off + n) };
        i += 1;
    }
    // SAFETY: as above.
    let off = unsafe { core::ptr::read_volatile(slot) };
    if i == MAX_IOVECS as u64 && iovcnt > MAX_IOVECS as u64 && off < want {
        *flags |= DATA_FLAG_IOV_OVERFLOW;
    }
    off
}

/// Whether a write of two iovecs is a complete head (copied, `head` bytes) then its body, whose bytes
/// need not be copied: the way nginx, Node and others write a response or a request with a body.
/// The body is skipped only when the rest of the message can be framed without it: the second
/// buffer does not start like a chunk size (chunked framing needs its size lines) or another
/// message (pipelined heads written together).
#[inline(always)]
fn head_then_body(buf: &[u8], head: u64, first: [u64; 4], flags: &mut u16) -> bool {
    if first[1] != head || head < 16 || head > MAX_PAYLOAD as u64 || first[3] < BODY_SKIP_MIN {
        return false;
    }
    // SAFETY: the payload starts after the header.
    if !unsafe { *buf.as_ptr().add(HDR) }.is_ascii_uppercase()
        || !ends_with_empty_line(buf, head)
        || starts_preface(buf)
    {
        return false;
    }
    // SAFETY: user pointer validated by the helper; the buffer has at least BODY_SKIP_MIN bytes.
    let Ok(next) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(first[2] as *const [u8; 8]) }) else {
        return false;
    };
    if could_start_chunk_or_message(next) {
        return false;
    }
    *flags |= DATA_FLAG_BODY_SKIPPED;
    true
}

/// Whether the payload (8 bytes or more copied) starts with the HTTP/2 client preface.
#[inline(always)]
fn starts_preface(buf: &[u8]) -> bool {
    // SAFETY: the scratch buffer holds HDR + 2 * MAX_PAYLOAD bytes.
    unsafe { core::ptr::read_unaligned(buf.as_ptr().add(HDR) as *const [u8; 8]) == *b"PRI * HT" }
}

/// Whether the first `n` (4 or more) payload bytes end with the empty line that ends a head.
#[inline(always)]
fn ends_with_empty_line(buf: &[u8], n: u64) -> bool {
    let at = HDR + ((n - 4) & (MAX_PAYLOAD as u64 - 1)) as usize;
    // SAFETY: at + 4 <= HDR + MAX_PAYLOAD + 4, inside the scratch buffer.
    unsafe { core::ptr::read_unaligned(buf.as_ptr().add(at) as *const [u8; 4]) == *b"\r\n\r\n" }
}

/// Whether bytes could start a chunk-size line (hex digits, then CR, `;` or whitespace, or the
/// CRLF that ends the previous chunk) or a message (an uppercase token, then a space, or
/// `HTTP/`). Eight hex digits or eight uppercase letters could still be either: true.
#[inline(always)]
fn could_start_chunk_or_message(b: [u8; 8]) -> bool {
    if b[0] == b'\r' {
        // The end of a chunk's data, and maybe the next size.
        return true;
    }
    let (mut hex, mut upper) = (true, true);
    let mut i = 0;
    while i < 8 {
        let c = b[i];
        if hex && !c.is_ascii_hexdigit() {
            if i > 0 && (c == b'\r' || c == b';' || c == b' ' || c == b'\t') {
                return true;
            }
            hex = false;
        }
        if upper && !c.is_ascii_uppercase() {
            if i > 0 && (c == b' ' || (i == 4 && c == b'/')) {
                return true;
            }
            upper = false;
        }
        if !hex && !upper {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("tracewire's syscall hooks know the x86_64 and aarch64 syscall tables");

/// Syscall numbers of the data syscalls (`id` of `raw_syscalls:sys_enter`).
#[cfg(bpf_target_arch = "x86_64")]
mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SENDFILE: i64 = 40;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const RECVMMSG: i64 = 299;
    pub const SENDMMSG: i64 = 307;
    pub const CONNECT: i64 = 42;
    pub const LISTEN: i64 = 50;
    pub const CLOSE: i64 = 3;
    pub const CLOSE_RANGE: i64 = 436;
    pub const EXIT: i64 = 60;
    pub const EXIT_GROUP: i64 = 231;
    /// `struct pt_regs`: the first three syscall arguments are di, si, dx, stored as
    /// dx@96 si@104 di@112, so one read covers them (in reverse order).
    pub const ARGS_AT: u64 = 96;
    #[inline(always)]
    pub fn args(r: [u64; 3]) -> [u64; 3] {
        [r[2], r[1], r[0]]
    }
    /// The syscall number: `orig_ax`, at 120.
    ///
    /// # Safety
    /// `regs` is the BTF-typed register block of `bpf_task_pt_regs`.
    #[inline(always)]
    pub unsafe fn syscall_nr(regs: *const u8) -> i64 {
        // SAFETY: see above; the verifier checks the offset against `struct pt_regs`.
        unsafe { core::ptr::read_volatile(regs.add(120) as *const i64) }
    }
}

/// Syscall numbers of the data syscalls (the generic table).
#[cfg(bpf_target_arch = "aarch64")]
mod nr {
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const READV: i64 = 65;
    pub const WRITEV: i64 = 66;
    pub const SENDFILE: i64 = 71;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SENDMSG: i64 = 211;
    pub const RECVMSG: i64 = 212;
    pub const RECVMMSG: i64 = 243;
    pub const SENDMMSG: i64 = 269;
    pub const CONNECT: i64 = 203;
    pub const LISTEN: i64 = 201;
    pub const CLOSE: i64 = 57;
    pub const CLOSE_RANGE: i64 = 436;
    pub const EXIT: i64 = 93;
    pub const EXIT_GROUP: i64 = 94;
    /// `struct user_pt_regs`: x0, x1, x2 at the start.
    pub const ARGS_AT: u64 = 0;
    #[inline(always)]
    pub fn args(r: [u64; 3]) -> [u64; 3] {
        r
    }
    /// The syscall number: `syscallno` (s32), after regs[31], sp, pc, pstate and orig_x0.
    ///
    /// # Safety
    /// `regs` is the BTF-typed register block of `bpf_task_pt_regs`.
    #[inline(always)]
    pub unsafe fn syscall_nr(regs: *const u8) -> i64 {
        // SAFETY: see above; the verifier checks the offset against `struct pt_regs`.
        i64::from(unsafe { core::ptr::read_volatile(regs.add(280) as *const i32) })
    }
}

/// A data syscall: what it is, which way the bytes go, how they lie in memory, and whether its
/// third argument is an iovec count.
#[derive(Clone, Copy)]
pub(crate) struct DataCall {
    syscall: Syscall,
    pub(crate) direction: u8,
    layout: Layout,
    wants_count: bool,
}

/// The data syscalls by number; recvmmsg/sendmmsg are told apart by [`is_mmsg`].
#[inline(always)]
pub(crate) fn data_call(nr: i64) -> Option<DataCall> {
    let (syscall, direction, layout, wants_count) = match nr {
        nr::READ => (Syscall::Read, DIR_INGRESS, Layout::Flat, false),
        nr::WRITE => (Syscall::Write, DIR_EGRESS, Layout::Flat, false),
        nr::READV => (Syscall::Readv, DIR_INGRESS, Layout::Iovec, true),
        nr::WRITEV => (Syscall::Writev, DIR_EGRESS, Layout::Iovec, true),
        nr::RECVFROM => (Syscall::Recvfrom, DIR_INGRESS, Layout::Flat, false),
        nr::SENDTO => (Syscall::Sendto, DIR_EGRESS, Layout::Flat, false),
        nr::RECVMSG => (Syscall::Recvmsg, DIR_INGRESS, Layout::Msghdr, false),
        nr::SENDMSG => (Syscall::Sendmsg, DIR_EGRESS, Layout::Msghdr, false),
        nr::SENDFILE => (Syscall::Sendfile, DIR_EGRESS, Layout::None, false),
        _ => return None,
    };
    Some(DataCall { syscall, direction, layout, wants_count })
}

#[inline(always)]
fn is_mmsg(nr: i64) -> bool {
    nr == nr::RECVMMSG || nr == nr::SENDMMSG
}

/// A syscall that starts a TCP connection with its fd as first argument: connect(), or a TCP Fast
/// Open sendto/sendmsg.
#[inline(always)]
pub(crate) fn is_connect(nr: i64) -> bool {
    nr == nr::CONNECT || nr == nr::SENDTO || nr == nr::SENDMSG
}

/// A syscall that releases fds: a socket's state change inside it is its application closing it.
#[inline(always)]
pub(crate) fn is_close(nr: i64) -> bool {
    nr == nr::CLOSE || nr == nr::CLOSE_RANGE || nr == nr::EXIT || nr == nr::EXIT_GROUP
}

#[inline(always)]
pub(crate) fn is_listen(nr: i64) -> bool {
    nr == nr::LISTEN
}

// --- socket hooks ------------------------------------------------------------------------------
//
// Where the kernel has them (6.16+), the data path hooks the socket layer instead of every
// syscall: `tcp:tcp_sendmsg_locked` (inside a TCP send, before any byte is queued: the request's
// context is minted there, in time for the TCP option of its first segment) and
// `sock:sock_send_length` / `sock:sock_recv_length` (after a socket send or receive, with the
// byte count). The syscall's own arguments (fd, buffer) come from the registers the thread
// entered the kernel with. A process that does no socket I/O runs none of these programs, and a
// request costs a handful of program runs instead of two per syscall.

/// The current thread's syscall number and first three arguments, from the registers it entered
/// the kernel with.
#[inline(always)]
pub(crate) fn current_syscall() -> Option<(i64, [u64; 3])> {
    let (nr, args, _) = current_syscall_g()?;
    Some((nr, args))
}

/// [`current_syscall`], and the register a Go program keeps its current goroutine in (see
/// `golang`): read from the same register block, it spares Go's request reads the helper calls
/// that find the block again.
#[inline(always)]
fn current_syscall_g() -> Option<(i64, [u64; 3], u64)> {
    // SAFETY: helpers on the current task. The register block is a BTF-typed pointer: the
    // verifier checks each load against `struct pt_regs` and makes it fault-safe, so plain loads
    // replace helper calls (two per call, tens of ns each in a guest).
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        if regs.is_null() {
            return None;
        }
        let nr = nr::syscall_nr(regs);
        let at = regs.add(nr::ARGS_AT as usize) as *const u64;
        let raw = [
            core::ptr::read_volatile(at),
            core::ptr::read_volatile(at.add(1)),
            core::ptr::read_volatile(at.add(2)),
        ];
        Some((nr, nr::args(raw), goroutine_reg(regs)))
    }
}

/// A TCP send is about to queue bytes (once per segment-sized chunk of a call). Only a client's
/// request needs anything here: its context is minted before its first segment is built (in
/// time for the TCP option), and its span starts when its first bytes are queued. A server's
/// response is reported by the exit hook alone, from the registers: no per-thread state.
#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    // A process that never opened a client connection (a server) has nothing to do here: its
    // responses are reported by the exit hook, and its connections open at their first read.
    if !is_watched_client((id >> 32) as u32) {
        return 0;
    }
    let Some((nr, [fd, arg1, arg2])) = current_syscall() else {
        return 0;
    };
    let layout = match data_call(nr) {
        Some(c) if c.direction == DIR_EGRESS => c.layout,
        _ => return 0,
    };
    // Args: sk, msghdr, skb, size_goal.
    let Some(conn) = conn_of(id, fd as u32, ctx.arg(0)) else {
        count(Counter::SendUntracked);
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let state = unsafe { &mut *conn };
    if state.role != ROLE_CLIENT || state.send_ns != 0 || state.muted != 0 {
        return 0; // a response, a later chunk of this call, or a connection no span comes of
    }
    let moved = if layout == Layout::Flat { arg2 } else { u64::MAX };
    if state.turn != DIR_EGRESS && !h2_control_send(id, state, layout, arg1, arg2, moved) {
        client_turn(id, fd as u32, state);
    }
    state.send_ns = now();
    0
}

/// A socket send returned (args: sk, bytes or -errno, flags). The call's fd and buffer are in
/// the registers the thread entered the kernel with.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let Some((c, [fd, ptr, cnt], g)) = socket_call(tgid, DIR_EGRESS) else {
        return 0;
    };
    let sk: u64 = ctx.arg(0);
    // Only the socket the send hook saw for this connection: this hook also runs for UDP and
    // Unix sockets, whose fd may be the number of a connection whose close went unseen.
    let Some(conn_ptr) = CONNS.get_ptr_mut(fd_key(tgid, fd as u32)) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn_ptr };
    if conn.generation == 0 || conn.skaddr != sk {
        return 0;
    }
    let r: i32 = ctx.arg(1);
    if r > 0 {
        if conn.looked == 0 {
            first_bytes(conn, c.layout, ptr);
        }
        // A TLS connection's request has not been reported yet: its send start stays for the
        // plaintext (see `tls`).
        if ciphertext(id, fd as u32, conn, DIR_EGRESS) {
            return 0;
        }
    }
    let enter_ns = conn.send_ns;
    conn.send_ns = 0;
    if r <= 0 {
        count(Counter::DataNoBytes);
        // A call that would block ran no socket state change.
        if i64::from(r) != -EAGAIN && config().flags & CFG_SOCKET_LIFECYCLE != 0 {
            closed_without_bytes(id, fd as u32);
        }
        return 0;
    }
    let call = call_of(&c, [fd, ptr, cnt], enter_ns);
    report(id, call, r as u64, DIR_EGRESS, c.layout, 0, conn_ptr, g, Source::SocketChecked);
    0
}

const MSG_PEEK: i32 = 2;

/// A socket receive returned (args: sk, bytes or -errno, flags): the bytes are in the caller's
/// buffer now.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let r: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if r <= 0 {
        // End of stream or reset: the call may be the one its socket closed in.
        if i64::from(r) != -EAGAIN
            && let Some((nr, [fd, _, _])) = current_syscall()
            && data_call(nr).is_some()
        {
            closed_without_bytes(id, fd as u32);
        }
        return 0;
    }
    // A peek leaves the bytes for the read that follows, which reports them.
    if flags & MSG_PEEK != 0 {
        return 0;
    }
    let Some((c, args, g)) = socket_call(tgid, DIR_INGRESS) else {
        return 0;
    };
    exit(id, call_of(&c, args, 0), r as i64, DIR_INGRESS, c.layout, ctx.arg(0), g);
    0
}

/// The data call in `direction` the current thread is in, its first three arguments and its Go
/// goroutine register, from the registers it entered the kernel with. recvmmsg/sendmmsg on a
/// tracked connection are counted (not captured).
#[inline(always)]
fn socket_call(tgid: u32, direction: u8) -> Option<(DataCall, [u64; 3], u64)> {
    let (nr, args, g) = current_syscall_g()?;
    let Some(c) = data_call(nr) else {
        if is_mmsg(nr) && CONNS.get_ptr(fd_key(tgid, args[0] as u32)).is_some() {
            count(Counter::MmsgNotCaptured);
        }
        return None;
    };
    (c.direction == direction).then_some((c, args, g))
}

/// A socket hook's call record, from the registers' arguments `[fd, buffer, count]`.
#[inline(always)]
fn call_of(c: &DataCall, [fd, ptr, cnt]: [u64; 3], enter_ns: u64) -> ActiveCall {
    ActiveCall {
        // sendfile(out_fd, in_fd, offset, count): bytes only, no buffer.
        ptr: if c.layout == Layout::None { 0 } else { ptr },
        enter_ns,
        fd: fd as u32,
        count: if c.wants_count { cnt as u32 } else { 0 },
        syscall: c.syscall as u8,
        is_tcp: 1,
        _pad: [0; 6],
        addr: zeroed(),
        local: zeroed(),
    }
}

/// The table entry of a recorded call.
#[inline(always)]
fn data_call_of(syscall: u8) -> Option<DataCall> {
    let nr = match syscall {
        s if s == Syscall::Read as u8 => nr::READ,
        s if s == Syscall::Write as u8 => nr::WRITE,
        s if s == Syscall::Readv as u8 => nr::READV,
        s if s == Syscall::Writev as u8 => nr::WRITEV,
        s if s == Syscall::Recvfrom as u8 => nr::RECVFROM,
        s if s == Syscall::Sendto as u8 => nr::SENDTO,
        s if s == Syscall::Recvmsg as u8 => nr::RECVMSG,
        s if s == Syscall::Sendmsg as u8 => nr::SENDMSG,
        s if s == Syscall::Sendfile as u8 => nr::SENDFILE,
        _ => return None,
    };
    data_call(nr)
}

// --- syscall hooks (kernels without the socket tracepoints) -----------------------------------

/// Every syscall entry of every process, through the raw tracepoint: the kernel calls the
/// program directly with the registers, without building a per-syscall trace record. That is
/// what makes the hooks nearly free for everything tracewire does not watch: a compare on the
/// syscall number, then one inlined array lookup.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(1);
    let Some(c) = data_call(nr) else {
        if is_mmsg(nr) {
            mmsg(ctx.arg(0));
        }
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    if !is_watched((id >> 32) as u32) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    // SAFETY: the helper validates the kernel address.
    let Ok(raw) = (unsafe { bpf_probe_read_kernel((regs + nr::ARGS_AT) as *const [u64; 3]) }) else {
        return 0;
    };
    let [fd, ptr, cnt] = nr::args(raw);
    // sendfile(out_fd, in_fd, offset, count): bytes only, no buffer.
    let ptr = if c.layout == Layout::None { 0 } else { ptr };
    let count_arg = if c.wants_count { cnt as u32 } else { 0 };
    enter(id, fd, c.syscall, ptr, count_arg, c.direction, ACTIVE.get_ptr_mut(id));
    0
}

/// Every syscall exit. Only a thread with a data call in flight (recorded at entry) goes past
/// the array lookup and one hash lookup.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    if !is_watched((id >> 32) as u32) {
        return 0;
    }
    let Some(call_ptr) = ACTIVE.get_ptr_mut(id) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this run; copied before it is marked idle.
    let call = unsafe { *call_ptr };
    // accept, connect, listen: their own exit hooks take the call.
    let Some(c) = data_call_of(call.syscall) else {
        return 0;
    };
    // Idle (no call in flight), kept for the thread's next call.
    // SAFETY: as above.
    unsafe { (*call_ptr).syscall = 0 };
    exit(id, call, ctx.arg(1), c.direction, c.layout, 0, 0);
    0
}

/// recvmmsg/sendmmsg on a tracked connection: counted, not captured.
#[inline(always)]
fn mmsg(regs: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return;
    }
    // SAFETY: the helper validates the kernel address.
    let Ok(raw) = (unsafe { bpf_probe_read_kernel((regs + nr::ARGS_AT) as *const [u64; 3]) }) else {
        return;
    };
    if CONNS.get_ptr(fd_key(tgid, nr::args(raw)[0] as u32)).is_some() {
        count(Counter::MmsgNotCaptured);
    }
}
