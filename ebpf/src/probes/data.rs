//! Bytes on tracked connections.
//!
//! Entry hooks check the process filter and the connection map, and remember the buffer (or iovec
//! array) for this thread. Exit hooks know how many bytes moved, copy a prefix of them (up to the
//! configured cap, across iovecs) into a per-CPU scratch buffer behind a [`DataEvent`] header, and
//! write header + prefix to the ring buffer as one variable-size record.
//!
//! Reads are stamped when the syscall returns (the data has arrived), writes when it is entered
//! (the first byte leaves then). sendfile() counts bytes without copying them: they are file
//! content, and the response still ends at the right time. recvmmsg/sendmmsg on a tracked
//! connection are counted as not captured (TCP applications practically never use them).
//!
//! Thread context: the first read of a request on a server connection marks the thread as serving
//! that request; the response clears the mark (generation 0). Data on client connections carries
//! the mark, and every event carries its turn's trace context (see `context`), which is how
//! userspace links outgoing calls to the request that caused them.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracewire_common::{
    ActiveCall, ConnId, Counter, DATA_FLAG_COPY_FAILED, DATA_FLAG_IOV_OVERFLOW, DATA_FLAG_TRUNCATED,
    DIR_EGRESS, DIR_INGRESS, DataEvent, EventKind, MAX_IOVECS, MAX_PAYLOAD, ROLE_CLIENT, ROLE_SERVER,
    SockAddr, Syscall, fd_key,
};

use super::context::{client_turn, server_turn, server_turn_end};
use crate::{
    maps::{ACTIVE, CONNS, SCRATCH, THREAD_CTX},
    util::{add, arg, config, count, emit_bytes, header, now, ret, watched},
};

const HDR: usize = core::mem::size_of::<DataEvent>();

#[inline(always)]
fn enter(fd: u64, syscall: Syscall, ptr: u64, count_arg: u32, direction: u8) {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !watched(&cfg, tgid) {
        return;
    }
    let Some(conn) = CONNS.get_ptr_mut(fd_key(tgid, fd as u32)) else {
        return;
    };
    if direction == DIR_EGRESS {
        // SAFETY: map value pointer, valid for this run.
        let state = unsafe { &mut *conn };
        if state.role == ROLE_CLIENT && state.turn != DIR_EGRESS {
            client_turn(id, state);
        }
    }
    let call = ActiveCall {
        ptr,
        enter_ns: now(),
        fd: fd as u32,
        count: count_arg,
        syscall: syscall as u8,
        is_tcp: 1,
        _pad: [0; 6],
        addr: SockAddr::default(),
        local: SockAddr::default(),
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

#[inline(always)]
fn exit(ctx: &TracePointContext, direction: u8, layout: Layout) {
    let id = bpf_get_current_pid_tgid();
    // The cheap array check first: unwatched processes never reach the hash lookup.
    if !watched(&config(), (id >> 32) as u32) {
        return;
    }
    let Some(call_ptr) = ACTIVE.get_ptr(id) else {
        return;
    };
    // SAFETY: map value pointer; copied before removal.
    let call = unsafe { *call_ptr };
    let _ = ACTIVE.remove(id);
    let r = ret(ctx);
    if r <= 0 {
        count(Counter::DataNoBytes);
        return;
    }
    let moved = r as u64;
    let tgid = (id >> 32) as u32;
    let Some(conn_ptr) = CONNS.get_ptr_mut(fd_key(tgid, call.fd)) else {
        return; // closed by another thread meanwhile
    };
    // SAFETY: map value pointer, valid for this run.
    let conn = unsafe { &mut *conn_ptr };
    let cfg = config();
    // SAFETY: helper without arguments.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        count(Counter::ScratchMissing);
        return;
    };
    // SAFETY: this CPU's scratch slot, exclusively ours while this program runs (tracing programs
    // do not nest on one CPU).
    let buf = unsafe { &mut *scratch };
    let conn_id = ConnId { tgid, fd: call.fd, generation: conn.generation };

    let tid = id as u32;
    let mut thread_ctx = ConnId::default();
    if conn.role == ROLE_CLIENT {
        if direction == DIR_INGRESS {
            conn.turn = DIR_INGRESS;
        }
        // SAFETY: copied.
        if let Some(t) = unsafe { THREAD_CTX.get(tid) }
            && t.conn.tgid == tgid
            && t.conn.generation != 0
        {
            thread_ctx = t.conn;
        }
    } else if conn.role == ROLE_SERVER && direction == DIR_EGRESS && conn.turn != DIR_EGRESS {
        server_turn_end(conn, &conn_id, Some(tid));
    }

    let mut cap = cfg.payload_cap as u64;
    if cap > MAX_PAYLOAD as u64 {
        cap = MAX_PAYLOAD as u64;
    }
    let want = if moved < cap { moved } else { cap };
    let mut flags: u16 = 0;
    let captured = match layout {
        Layout::None => 0,
        Layout::Flat => copy_flat(buf, call.ptr, want, &mut flags),
        Layout::Iovec => copy_iov(buf, call.ptr, call.count as u64, want, &mut flags),
        Layout::Msghdr => {
            // SAFETY: user pointers are validated by the helper.
            let iov = unsafe { aya_ebpf::helpers::bpf_probe_read_user((call.ptr + 16) as *const u64) };
            let n = unsafe { aya_ebpf::helpers::bpf_probe_read_user((call.ptr + 24) as *const u64) };
            match (iov, n) {
                (Ok(iov), Ok(n)) => copy_iov(buf, iov, n, want, &mut flags),
                _ => {
                    flags |= DATA_FLAG_COPY_FAILED;
                    0
                }
            }
        }
    };
    if layout != Layout::None && captured < moved {
        flags |= DATA_FLAG_TRUNCATED;
        count(Counter::Truncated);
    }
    if flags & DATA_FLAG_COPY_FAILED != 0 {
        count(Counter::CopyFailed);
    }
    add(Counter::PayloadBytes, captured);
    let ev = DataEvent {
        header: header(EventKind::Data as u32, id, now()),
        conn: conn_id,
        enter_ns: call.enter_ns,
        thread_ctx,
        len: moved as u32,
        captured: captured as u32,
        direction,
        syscall: call.syscall,
        flags,
        role: conn.role,
        _pad: [0; 3],
        ctx: conn.ctx,
    };
    let at = buf.as_mut_ptr() as *mut DataEvent;
    // SAFETY: the scratch buffer starts with room for a DataEvent (SCRATCH_BYTES >= HDR).
    unsafe { core::ptr::write_unaligned(at, ev) };
    if conn.role == ROLE_SERVER && direction == DIR_INGRESS && conn.turn != DIR_INGRESS {
        // Everything that differs between the ways through the copy above is now in map memory,
        // which the verifier does not track: it verifies the turn once, not once per way.
        // SAFETY: in bounds as above; the payload starts right after the header.
        unsafe {
            let n = core::ptr::read_volatile(core::ptr::addr_of!((*at).captured)) as u64;
            server_turn(id, conn, call.fd, buf.as_mut_ptr().add(HDR), n);
            core::ptr::write_unaligned(core::ptr::addr_of_mut!((*at).ctx), conn.ctx);
        }
    }
    // SAFETY: in bounds as above.
    let captured = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*at).captured)) } as usize;
    let total = HDR + (captured & (MAX_PAYLOAD * 2 - 1));
    emit_bytes(&cfg, buf, total);
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

/// Gathers up to `want` bytes across an iovec array. Returns bytes copied.
#[inline(always)]
fn copy_iov(buf: &mut [u8], iov: u64, iovcnt: u64, want: u64, flags: &mut u16) -> u64 {
    let mut off: u64 = 0;
    let mut i: u64 = 0;
    while i < MAX_IOVECS as u64 {
        if i >= iovcnt || off >= want {
            break;
        }
        // SAFETY: user pointer validated by the helper.
        let Ok(entry) =
            (unsafe { aya_ebpf::helpers::bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) })
        else {
            *flags |= DATA_FLAG_COPY_FAILED;
            break;
        };
        let mut n = entry[1];
        let room = want - off;
        if n > room {
            n = room;
        }
        if n > MAX_PAYLOAD as u64 {
            n = MAX_PAYLOAD as u64;
        }
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
        off += n;
        i += 1;
    }
    if i == MAX_IOVECS as u64 && iovcnt > MAX_IOVECS as u64 && off < want {
        *flags |= DATA_FLAG_IOV_OVERFLOW;
    }
    off
}

macro_rules! data_hooks {
    ($enter:ident, $exit:ident, $sys:expr, $dir:expr, $layout:expr, $ptr_arg:expr, $cnt_arg:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let cnt = if $cnt_arg > 0 { arg(&ctx, $cnt_arg) as u32 } else { 0 };
            enter(arg(&ctx, 0), $sys, arg(&ctx, $ptr_arg), cnt, $dir);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $dir, $layout);
            0
        }
    };
}

// read(fd, buf, count) / write(fd, buf, count)
data_hooks!(sys_enter_read, sys_exit_read, Syscall::Read, DIR_INGRESS, Layout::Flat, 1, 0);
data_hooks!(sys_enter_write, sys_exit_write, Syscall::Write, DIR_EGRESS, Layout::Flat, 1, 0);
// readv(fd, iov, iovcnt) / writev(fd, iov, iovcnt)
data_hooks!(sys_enter_readv, sys_exit_readv, Syscall::Readv, DIR_INGRESS, Layout::Iovec, 1, 2);
data_hooks!(sys_enter_writev, sys_exit_writev, Syscall::Writev, DIR_EGRESS, Layout::Iovec, 1, 2);
// recvfrom(fd, buf, len, flags, addr, addrlen) / sendto(fd, buf, len, flags, addr, addrlen)
data_hooks!(sys_enter_recvfrom, sys_exit_recvfrom, Syscall::Recvfrom, DIR_INGRESS, Layout::Flat, 1, 0);
data_hooks!(sys_enter_sendto, sys_exit_sendto, Syscall::Sendto, DIR_EGRESS, Layout::Flat, 1, 0);
// recvmsg(fd, msg, flags) / sendmsg(fd, msg, flags)
data_hooks!(sys_enter_recvmsg, sys_exit_recvmsg, Syscall::Recvmsg, DIR_INGRESS, Layout::Msghdr, 1, 0);
data_hooks!(sys_enter_sendmsg, sys_exit_sendmsg, Syscall::Sendmsg, DIR_EGRESS, Layout::Msghdr, 1, 0);

// sendfile64(out_fd, in_fd, offset, count): bytes only.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(arg(&ctx, 0), Syscall::Sendfile, 0, 0, DIR_EGRESS);
    0
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit(&ctx, DIR_EGRESS, Layout::None);
    0
}

#[inline(always)]
fn mmsg(ctx: &TracePointContext) {
    let cfg = config();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if watched(&cfg, tgid) && CONNS.get_ptr(fd_key(tgid, arg(ctx, 0) as u32)).is_some() {
        count(Counter::MmsgNotCaptured);
    }
}

#[tracepoint]
pub fn sys_enter_recvmmsg(ctx: TracePointContext) -> u32 {
    mmsg(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    mmsg(&ctx);
    0
}
