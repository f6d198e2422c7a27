//! Go's `crypto/tls`: the plaintext of a Go program's TLS connections, from uprobes on its
//! binary (Go does not use OpenSSL).
//!
//! Return probes cannot be used in Go: a uretprobe replaces the return address on the goroutine's
//! stack, and the runtime, which walks and moves stacks (garbage collection, stack growth, a
//! read that parks), dies on the unknown address. Probes on the return instructions would work,
//! but the kernel single-steps a `ret`, which costs ten times a probe it emulates (measured
//! here: 1.1 µs for an emulated probe, 12 µs single-stepped). So every probe here sits on an
//! instruction the kernel emulates: the stack check's branch at a function's start (see the
//! agent's `runtime`), or a call.
//!
//! - `(*Conn).Write(b)`: the plaintext is whole at the entry, and reported there, before it is
//!   encrypted ([`go_tls_write`]). A client's request turn starts there, in time for the TCP
//!   option of its first segment.
//! - `(*Conn).Read(b)`: the plaintext is reported where `Read` copies it out of the connection's
//!   decrypted input into `b`, at its one call of `runtime.memmove(b, input, n)`
//!   ([`go_tls_read_copy`]). The connection is the receiver, which `Read` keeps in its argument
//!   spill slot on its stack for the whole call (where the agent found the spill in its
//!   prologue); otherwise the entry notes the connection for the goroutine ([`go_tls_read`]): a
//!   probe hit more per read. A socket read of ciphertext notes its connection for its goroutine
//!   too (see `data`): a read that began before tracewire started (blocked on an idle pooled
//!   connection) is named that way.
//! - `(*Conn).clientHandshake` / `serverHandshake`: the connection is marked TLS before its first
//!   handshake bytes move ([`go_tls_handshake`]), and its ciphertext is not reported. A server's
//!   connection is only opened at its first read, the client's hello: the socket hooks mark a
//!   connection of such a program TLS when its first bytes are a TLS record, which also catches
//!   connections open before tracewire, in the middle of their session ([`WATCH_GO_TLS`]).
//!
//! A connection is named by the fd of the `*net.TCPConn` under the `*tls.Conn` (see
//! `golang::net_conn_fd`); one over anything else is not followed.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
#[cfg(doc)]
use tracewire_common::WATCH_GO_TLS;
use tracewire_common::{Counter, DIR_INGRESS, GoProc};

use super::{
    data::{report_tls, report_tls_write, tls_conn_starts},
    golang::{abi, followed_process, key, net_conn_fd, reg},
};
use crate::{maps::GO_TLS_READS, util::count};

/// The fd of the TCP socket under `*tls.Conn` `c`.
#[inline(always)]
fn tls_fd(proc: &GoProc, c: u64) -> Option<u32> {
    net_conn_fd(proc, c + proc.tls_conn as u64, false)
}

/// The process a `crypto/tls` probe fired in, when its TLS connections are followed.
#[inline(always)]
fn followed_tls() -> Option<(u32, GoProc)> {
    followed_process().filter(|(_, p)| p.tls != 0)
}

/// `(*Conn).clientHandshake(c, ctx)` / `(*Conn).serverHandshake(c, ctx)`: the handshake of
/// connection `c` starts; its bytes are ciphertext from the first.
#[uprobe]
pub fn go_tls_handshake(ctx: ProbeContext) -> u32 {
    let fd = followed_fd(reg(&ctx, abi::ARG0));
    if fd <= u64::from(u32::MAX) {
        tls_conn_starts(bpf_get_current_pid_tgid(), fd as u32);
    }
    0
}

/// `(*Conn).Write(c, b []byte)`: `b`'s bytes are the plaintext.
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let len = reg(&ctx, abi::ARG2);
    if len == 0 {
        return 0;
    }
    let fd = followed_fd(reg(&ctx, abi::ARG0));
    if fd <= u64::from(u32::MAX) {
        report_tls_write(bpf_get_current_pid_tgid(), fd as u32, reg(&ctx, abi::ARG1), len, false);
    }
    0
}

/// The fd under `*tls.Conn` `c` when its process's TLS connections are followed (`u64::MAX`
/// otherwise). A function of its own: the process's facts on the stack and the report's frame
/// would not fit the BPF stack together.
#[inline(never)]
fn followed_fd(c: u64) -> u64 {
    let Some((_, proc)) = followed_tls() else {
        return u64::MAX;
    };
    match tls_fd(&proc, c) {
        Some(fd) => u64::from(fd),
        None => {
            count(Counter::TlsNoConn);
            u64::MAX
        }
    }
}

/// `(*Conn).Read(c, b []byte)`: the goroutine reads from `c` (its plaintext is reported at the
/// copy, [`go_tls_read_copy`]). The goroutine may move to another thread meanwhile: it is the key.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    let fd = followed_fd(reg(&ctx, abi::ARG0));
    if fd > u64::from(u32::MAX) {
        return 0;
    }
    let fd = fd as u32;
    let id = bpf_get_current_pid_tgid();
    tls_conn_starts(id, fd);
    note_tls_read((id >> 32) as u32, reg(&ctx, abi::G), fd);
    0
}

/// Goroutine `g` of `tgid` reads from TLS connection `fd`: the read's copy is `fd`'s.
#[inline(always)]
pub(crate) fn note_tls_read(tgid: u32, g: u64, fd: u32) {
    let k = key(tgid, g);
    // A goroutine reads over and over: its entry is rewritten in place.
    match GO_TLS_READS.get_ptr_mut(&k) {
        // SAFETY: map value pointer, valid for this run.
        Some(p) => unsafe { *p = fd },
        None => {
            let _ = GO_TLS_READS.insert(&k, &fd, 0);
        }
    }
}

/// `runtime.memmove(b, input, n)` inside `(*Conn).Read`: `n` bytes of plaintext at `input` are
/// what the read returns.
#[uprobe]
pub fn go_tls_read_copy(ctx: ProbeContext) -> u32 {
    let Some((tgid, proc)) = followed_tls() else {
        return 0;
    };
    let fd = if proc.read_conn_at != 0 {
        // The receiver, from Read's argument spill slot: no entry probe needed.
        // SAFETY: user memory, read through the checked helper.
        let c = unsafe { bpf_probe_read_user((reg(&ctx, abi::SP) + proc.read_conn_at as u64) as *const u64) };
        match c.ok().and_then(|c| tls_fd(&proc, c)) {
            Some(fd) => fd,
            None => {
                count(Counter::TlsNoConn);
                return 0;
            }
        }
    } else {
        let k = key(tgid, reg(&ctx, abi::G));
        // SAFETY: copied out of the map.
        match unsafe { GO_TLS_READS.get(&k) } {
            Some(fd) => *fd,
            None => {
                count(Counter::TlsNoConn);
                return 0;
            }
        }
    };
    let n = reg(&ctx, abi::ARG2);
    if n > 0 {
        report_tls(bpf_get_current_pid_tgid(), fd, reg(&ctx, abi::ARG1), n, DIR_INGRESS);
    }
    0
}
