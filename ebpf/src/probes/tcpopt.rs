//! Trace context between agents, in the TCP header: no payload is touched.
//!
//! A sock_ops program on the cgroup2 root sees every TCP socket of the node. Client sockets get
//! the write-option callback when a watched process connects them, server sockets the parse
//! callback when they accept. When a traced client starts a request, `context` stores the request's trace id and
//! client span id under the socket's address (`TCP_TX`); every data segment of that socket then
//! carries them in an experimental TCP option (kind 253, ExID "tw"). On the receiving node the
//! option is parsed into `TCP_RX` under the server socket's address, and the read that starts
//! the request takes it (see `conn::take_tcp_ctx`). NAT rewrites addresses and ports, never
//! options, and each side keys by its own socket, so the context survives it.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_HDR_OPT_CB,
        BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use tracewire_common::{Counter, TCPOPT_EXID, TCPOPT_KIND, TCPOPT_LEN, TcpCtx, TcpCtxEntry};

use crate::{
    maps::{INJECT_ON, INJECT_SOCKS, TCP_RX, TCP_TRACED, TCP_TX},
    util::{Plain, count, zeroed},
};

const TCP_FLAG_SYN: u32 = 0x02;

/// An option's bytes (the first `TCPOPT_LEN`), 8-aligned so that zeroing it takes word stores
/// (see `util::zero`).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct OptBuf([u8; 32]);
// SAFETY: bytes.
unsafe impl Plain for OptBuf {}
const _: () = assert!(TCPOPT_LEN as usize <= 32);
const ENOSPC: i64 = 28;
/// `BPF_WRITE_HDR_TCP_CURRENT_MSS`: the length callback is the kernel sizing the MSS.
const WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;

#[sock_ops]
pub fn tcp_option(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        // Only the client sockets of watched processes (marked at connect): a flag on every
        // client socket of the node would cost a callback per segment of untraced processes.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let mut sk = sk(&ctx);
            // SAFETY: copied out of the map.
            let mark = if sk != 0 { unsafe { TCP_TRACED.get(sk) }.copied().unwrap_or(0) } else { 0 };
            if mark != 0 {
                let _ = TCP_TRACED.remove(sk);
            }
            if mark & 1 != 0 {
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            }
            if mark & 2 != 0 && INJECT_ON.get(0).copied().unwrap_or(0) != 0 {
                // SAFETY: this program's context is the established socket's.
                let ops = unsafe { &mut *ctx.ops };
                if INJECT_SOCKS.update(&mut sk, ops, 0).is_err() {
                    count(Counter::InjectSkipped);
                }
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG) as i32);
            // The segment that completed the handshake is this callback's: when it carries the
            // request (the client's ACK was dropped, a full accept queue), the flag above comes
            // too late for its option.
            parse(&ctx);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => reserve(&ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => write(&ctx),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => parse(&ctx),
        _ => {}
    }
    1
}

/// The socket's kernel address: the same value the socket tracepoints report as `skaddr`.
#[inline(always)]
fn sk(ctx: &SockOpsContext) -> u64 {
    // SAFETY: context field read; the verifier rewrites it into the socket pointer (or NULL).
    unsafe { (*ctx.ops).__bindgen_anon_2.sk as u64 }
}

/// The context to send on this socket, if a traced request is in flight on it.
#[inline(always)]
fn outgoing(ctx: &SockOpsContext) -> Option<TcpCtx> {
    let sk = sk(ctx);
    if sk == 0 {
        return None;
    }
    // SAFETY: copied out of the map.
    let entry = unsafe { TCP_TX.get(sk) }.copied()?;
    // SAFETY: context field read.
    let local_port = unsafe { (*ctx.ops).local_port };
    (entry.local_port == local_port).then_some(entry.ctx)
}

fn reserve(ctx: &SockOpsContext) {
    // SAFETY: context field reads.
    let (mss_query, len, flags) = unsafe {
        (
            (*ctx.ops).__bindgen_anon_1.args[0] & WRITE_HDR_TCP_CURRENT_MSS != 0,
            (*ctx.ops).skb_len,
            (*ctx.ops).skb_tcp_flags,
        )
    };
    // Data segments only (pure ACKs have no request to describe), and the MSS computation so
    // that segments stay within the path MTU with the option added.
    if !mss_query && (len == 0 || flags & TCP_FLAG_SYN != 0) {
        return;
    }
    if outgoing(ctx).is_none() {
        return;
    }
    // SAFETY: helper on this program's context.
    let rc = unsafe { bpf_reserve_hdr_opt(ctx.ops, TCPOPT_LEN as u32, 0) };
    if rc != 0 && !mss_query {
        count(Counter::TcpOptNoRoom);
    }
}

fn write(ctx: &SockOpsContext) {
    let Some(c) = outgoing(ctx) else {
        return;
    };
    let mut buf: OptBuf = zeroed();
    let opt = &mut buf.0;
    opt[0] = TCPOPT_KIND;
    opt[1] = TCPOPT_LEN;
    opt[2..4].copy_from_slice(&TCPOPT_EXID.to_be_bytes());
    opt[4..20].copy_from_slice(&c.trace_id);
    opt[20..28].copy_from_slice(&c.span_id);
    // SAFETY: helper on this program's context with a stack buffer of the stated length.
    let rc = unsafe { bpf_store_hdr_opt(ctx.ops, opt.as_ptr().cast(), TCPOPT_LEN as u32, 0) };
    if rc == 0 {
        count(Counter::TcpOptWritten);
    } else if rc == -ENOSPC {
        count(Counter::TcpOptNoRoom);
    }
}

fn parse(ctx: &SockOpsContext) {
    let sk = sk(ctx);
    if sk == 0 {
        return;
    }
    let mut buf: OptBuf = zeroed();
    let opt = &mut buf.0;
    // Search key: kind, then the length of kind + length + ExID, then the ExID.
    opt[0] = TCPOPT_KIND;
    opt[1] = 4;
    opt[2..4].copy_from_slice(&TCPOPT_EXID.to_be_bytes());
    // SAFETY: helper on this program's context with a stack buffer of the stated length.
    let rc = unsafe { bpf_load_hdr_opt(ctx.ops, opt.as_mut_ptr().cast(), TCPOPT_LEN as u32, 0) };
    if rc != TCPOPT_LEN as i64 || opt[1] != TCPOPT_LEN {
        return;
    }
    count(Counter::TcpOptReceived);
    // SAFETY: both ranges are inside the buffer.
    let c = unsafe {
        TcpCtx {
            trace_id: core::ptr::read_unaligned(opt.as_ptr().add(4) as *const [u8; 16]),
            span_id: core::ptr::read_unaligned(opt.as_ptr().add(20) as *const [u8; 8]),
        }
    };
    // SAFETY: context field read.
    let local_port = unsafe { (*ctx.ops).local_port };
    let _ = TCP_RX.insert(sk, TcpCtxEntry { ctx: c, local_port, _pad: 0 }, 0);
}
