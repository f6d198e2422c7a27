//! TLS: the plaintext of connections encrypted by OpenSSL (and the libraries that keep its API:
//! BoringSSL, LibreSSL), from uprobes on the library.
//!
//! A TLS connection's socket calls carry ciphertext. The agent puts uprobes on `SSL_read`,
//! `SSL_write`, their `_ex` forms and `SSL_do_handshake` in the selected processes that map the
//! library (or on the internal functions `SSL_read_ex`/`SSL_write_ex` call, see the agent's
//! `runtime`); a process's first call into it marks the process ([`WATCH_TLS`]). An entry probe
//! remembers the call (session, buffer) for its thread; a socket call made inside it names the
//! connection (the socket hooks see the fd in the registers) and marks the connection TLS: its
//! socket calls are not reported from then on. The return probe reports the plaintext as the
//! connection's data, through the same path socket calls take (turns, trace context, body
//! counting), flagged [`DATA_FLAG_TLS`].
//!
//! A session's socket is remembered ([`TLS_FDS`]) for the calls the library answers from what it
//! had already read, which make no socket call. A session is named by its first handshake or
//! data call that moves socket bytes; until then its calls are counted ([`Counter::TlsNoConn`]).
//!
//! A program that feeds the library through memory buffers (Node.js, Python's asyncio) moves the
//! ciphertext itself, outside the library's calls, so none of them makes a socket call. Its
//! thread hands what it read to the session right away: a TLS connection's read outside a library
//! call notes the connection for the thread ([`TLS_READS`]), and the thread's next call names its
//! session by it (see `data::first_bytes` for how such a connection is known to be TLS). Its
//! writes' ciphertext leaves after `SSL_write` returns: a client's request turn starts there.
//!
//! A client's request starts where its first ciphertext segment is queued (the send hook mints its
//! context there, in time for the TCP option), as for plain text. The handshake's own segments
//! start a turn too; its return ends it, so that the request written next is a turn of its own.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracewire_common::{
    Counter, DIR_EGRESS, DIR_INGRESS, TLS_HANDSHAKE, TLS_NO_FD, TLS_READ, TLS_WRITE, TlsCall, TlsKey,
};
#[cfg(doc)]
use tracewire_common::{DATA_FLAG_TLS, WATCH_TLS};

use super::data::{conn_of, report_tls, report_tls_write};
use crate::{
    maps::{TLS_CALLS, TLS_FDS, TLS_READS},
    util::{count, is_watched, set_tls},
};

/// Remembers a library call of a selected thread until it returns.
#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u8, ex: bool) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
        return;
    }
    set_tls(tgid);
    let call = TlsCall {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: if kind == TLS_HANDSHAKE { 0 } else { ctx.arg(1).unwrap_or(0) },
        len_ptr: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        fd: TLS_NO_FD,
        kind,
        _pad: [0; 3],
        // SSL_write's `int num` and SSL_write_ex's `size_t num` alike: the third argument.
        num: if kind == TLS_WRITE { ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff } else { 0 },
    };
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        count(Counter::TlsCallsFull);
    }
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`: returns the bytes read.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, TLS_READ, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`: returns 1 on success.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, TLS_READ, true);
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`: returns the bytes written.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, TLS_WRITE, false);
    0
}

/// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, TLS_WRITE, true);
    0
}

/// `int SSL_do_handshake(SSL *ssl)`: its socket calls are ciphertext too, and name the session's
/// socket before its first data call.
#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, TLS_HANDSHAKE, false);
    0
}

/// `SSL_read` / `SSL_read_ex` returned. One program per direction: a request read may start a
/// server turn and a write a client turn, and both paths in one program would not fit the BPF
/// stack.
#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    // A read that returned nothing (a handshake step, no record complete yet) moved no plaintext:
    // the connection's handshake is not over for it.
    if let Some((id, fd, buf, moved, _)) = returned(&ctx)
        && moved > 0
    {
        report_tls(id, fd, buf, moved, DIR_INGRESS);
    }
    0
}

/// `SSL_write` / `SSL_write_ex` returned. A write that made no socket call of its own fed a
/// memory buffer: its ciphertext leaves after it, so a client's request turn starts here, in time
/// for the TCP option of its first segment, as a Go write's does at its entry.
#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    if let Some((id, fd, buf, moved, named)) = returned(&ctx) {
        if named {
            report_sent(id, fd, buf, moved);
        } else if moved > 0 {
            report_tls_write(id, fd, buf, moved, true);
        }
    }
    0
}

/// Reports a write whose socket call named its connection. Its own function: the report's frame
/// and a memory-buffer write's client turn do not fit the BPF stack in one call chain.
#[inline(never)]
fn report_sent(id: u64, fd: u32, buf: u64, moved: u64) {
    report_tls(id, fd, buf, moved, DIR_EGRESS);
}

/// `SSL_do_handshake` returned: the handshake's turn is over, and the request written next
/// starts one of its own.
#[uretprobe]
pub fn ssl_handshake_ret(ctx: RetProbeContext) -> u32 {
    let Some((id, fd, _, _, _)) = returned(&ctx) else {
        return 0;
    };
    if let Some(conn) = conn_of(id, fd, 0) {
        // SAFETY: map value pointer, valid for this run.
        let state = unsafe { &mut *conn };
        state.tls = 1;
        state.turn = 0;
        state.send_ns = 0;
    }
    0
}

/// The call of the current thread that returned: (pid_tgid, its socket's fd, its buffer, the
/// bytes it moved, whether a socket call inside it named the socket), when the thread is
/// selected and the call's socket is known. A handshake moves no plaintext (0).
#[inline(always)]
fn returned(ctx: &RetProbeContext) -> Option<(u64, u32, u64, u64, bool)> {
    let mut r = Returned { id: 0, buf: 0, moved: 0, fd: 0, named: 0 };
    if !call_returned(i64::from(ctx.ret::<i32>()), &mut r) {
        return None;
    }
    Some((r.id, r.fd, r.buf, r.moved, r.named != 0))
}

/// What [`returned`] finds, written into its caller's frame.
#[repr(C)]
struct Returned {
    id: u64,
    buf: u64,
    moved: u64,
    fd: u32,
    named: u32,
}

/// [`returned`], for the call that returned `rc`. Its own function, which fills `out`: a return
/// probe's frame then holds little more than `out`, and a memory-buffer write's client turn
/// (`client_turn`'s frame, the largest) fits the BPF stack behind it.
#[inline(never)]
fn call_returned(rc: i64, out: &mut Returned) -> bool {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) {
        return false;
    }
    let Some(p) = TLS_CALLS.get_ptr(&id) else {
        return false;
    };
    // SAFETY: map value pointer, valid for this run; read before the entry is removed.
    let (ssl, buf, len_ptr, call_fd, kind) =
        unsafe { ((*p).ssl, (*p).buf, (*p).len_ptr, (*p).fd, (*p).kind) };
    let _ = TLS_CALLS.remove(&id);
    let moved: u64 = if rc <= 0 || kind == TLS_HANDSHAKE {
        0
    } else if len_ptr != 0 {
        // SAFETY: user memory, read through the checked helper.
        unsafe { bpf_probe_read_user(len_ptr as *const u64) }.unwrap_or(0)
    } else {
        rc as u64
    };
    let key = TlsKey { ssl, tgid, _pad: 0 };
    *out = Returned { id, buf, moved, fd: call_fd, named: 0 };
    if call_fd != TLS_NO_FD {
        let _ = TLS_FDS.insert(&key, &call_fd, 0);
        out.named = 1;
        return true;
    }
    // A library fed through memory buffers: a call right after this thread read a TLS
    // connection's ciphertext is that connection's session's (its program hands the bytes over
    // at once, and may first retry a write the handshake held back, as Node's does), which names
    // a session new to this address too. A write to a known session keeps it: a thread may write
    // to one session after reading another's bytes.
    // SAFETY: copied out of the map.
    if (kind != TLS_WRITE || unsafe { TLS_FDS.get(&key) }.is_none())
        && let Some(fd) = unsafe { TLS_READS.get(&id) }.copied()
    {
        let _ = TLS_READS.remove(&id);
        let _ = TLS_FDS.insert(&key, &fd, 0);
        out.fd = fd;
        return true;
    }
    // SAFETY: copied out of the map.
    match unsafe { TLS_FDS.get(&key) }.copied() {
        Some(fd) => {
            out.fd = fd;
            true
        }
        None => {
            if moved > 0 {
                count(Counter::TlsNoConn);
            }
            false
        }
    }
}
