//! nginx: the client request an upstream request is made for.
//!
//! An nginx worker is one thread serving many requests at once, so its thread proves nothing
//! about an upstream call's parent. nginx itself knows: `ngx_http_upstream_init(r)` starts the
//! upstream of request `r`, and, while it runs, `ngx_event_connect_peer(pc)` connects a new
//! upstream connection (or takes one from the keep-alive pool) into `pc->connection`. Both are
//! exported (nginx exports its symbols for dynamic modules). The connection is tied to the
//! request's client connection; the first request written on it takes that request as its
//! parent ([`upstream_parent`]), if it is still the request open on the client connection.
//!
//! An upstream connected later (after an asynchronous DNS lookup, a retry on the next server)
//! is not within `ngx_http_upstream_init`: its tie is cleared, and the call stays unlinked. A
//! tie never outlives its fd (close() removes it).
//!
//! Layouts read (stable since nginx's first releases): `ngx_http_request_t.connection` at 8
//! (after the `signature` word), `ngx_connection_t.fd` at 24 (after `data`, `read`, `write`),
//! `ngx_peer_connection_t.connection` at 0.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracewire_common::{CallParent, ConnId, DIR_INGRESS, fd_key};

use super::context::{parent_of, take_tie};

use crate::{
    maps::{CONNS, NGX_PEER, NGX_REQ, NGX_TIES},
    util::is_watched,
};

const REQUEST_CONNECTION: u64 = 8;
const CONNECTION_FD: u64 = 24;

/// The fd of an `ngx_connection_t`.
#[inline(always)]
fn conn_fd(c: u64) -> Option<u32> {
    if c == 0 {
        return None;
    }
    // SAFETY: user memory, read through the checked helper.
    let fd = unsafe { bpf_probe_read_user((c + CONNECTION_FD) as *const i32) }.ok()?;
    u32::try_from(fd).ok()
}

/// The current pid_tgid, when the process is selected.
#[inline(always)]
fn selected_thread() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    is_watched((id >> 32) as u32).then_some(id)
}

/// `ngx_http_upstream_init(ngx_http_request_t *r)`: the worker starts request `r`'s upstream.
#[uprobe]
pub fn ngx_upstream_init(ctx: ProbeContext) -> u32 {
    let Some(id) = selected_thread() else {
        return 0;
    };
    let r: u64 = ctx.arg(0).unwrap_or(0);
    if r == 0 {
        return 0;
    }
    // SAFETY: user memory, read through the checked helper.
    let Ok(c) = (unsafe { bpf_probe_read_user((r + REQUEST_CONNECTION) as *const u64) }) else {
        return 0;
    };
    if let Some(fd) = conn_fd(c) {
        let _ = NGX_REQ.insert(&(id as u32), &fd, 0);
    }
    0
}

/// `ngx_http_upstream_init` returned: the worker is done starting that upstream.
#[uretprobe]
pub fn ngx_upstream_init_ret(_ctx: RetProbeContext) -> u32 {
    let Some(id) = selected_thread() else {
        return 0;
    };
    let _ = NGX_REQ.remove(&(id as u32));
    0
}

/// `ngx_event_connect_peer(ngx_peer_connection_t *pc)`: remembered until it returns.
#[uprobe]
pub fn ngx_connect_peer(ctx: ProbeContext) -> u32 {
    let Some(id) = selected_thread() else {
        return 0;
    };
    let pc: u64 = ctx.arg(0).unwrap_or(0);
    let _ = NGX_PEER.insert(&(id as u32), &pc, 0);
    0
}

/// `ngx_event_connect_peer` returned: `pc->connection` is the upstream connection (new or from
/// the keep-alive pool). Tied to the request whose upstream is starting, or untied.
#[uretprobe]
pub fn ngx_connect_peer_ret(_ctx: RetProbeContext) -> u32 {
    let Some(id) = selected_thread() else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    // SAFETY: copied out of the map.
    let Some(pc) = (unsafe { NGX_PEER.get(&tid) }).copied() else {
        return 0;
    };
    let _ = NGX_PEER.remove(&tid);
    // SAFETY: user memory, read through the checked helper.
    let Ok(c) = (unsafe { bpf_probe_read_user(pc as *const u64) }) else {
        return 0;
    };
    let Some(fd) = conn_fd(c) else {
        return 0;
    };
    let key = fd_key(tgid, fd);
    // SAFETY: copied out of the maps.
    let parent = unsafe { NGX_REQ.get(&tid) }.copied().and_then(|sfd| {
        let s = unsafe { CONNS.get(&fd_key(tgid, sfd)) }?;
        (s.turn == DIR_INGRESS && s.generation != 0)
            .then(|| parent_of(ConnId { tgid, fd: sfd, generation: s.generation }, &s.ctx, 0))
    });
    match parent {
        Some(p) => {
            let _ = NGX_TIES.insert(&key, &p, 0);
        }
        None => {
            let _ = NGX_TIES.remove(&key);
        }
    }
    0
}

/// The request an nginx upstream connection's new request is for, if one was tied to it and is
/// still the one open on its client connection. Consumes the tie.
#[inline(never)]
pub fn upstream_parent(tgid: u32, fd: u32, out: &mut CallParent) -> bool {
    take_tie(&NGX_TIES, fd_key(tgid, fd), out)
}
