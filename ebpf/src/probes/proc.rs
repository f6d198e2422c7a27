//! Processes: selection follows forks and execs, and exits clean up.
//!
//! - fork: a child of a watched process is watched (a pre-fork server's workers, a shell's
//!   children), and its parent is remembered so that accepts on inherited listening sockets are
//!   recognised. The tracepoint also fires for new threads; their tid entries are harmless and are
//!   cleared when the thread exits (WATCHED) or age out (PARENTS).
//! - exec: reported to userspace, which re-evaluates `--exe` globs and recognises Go programs;
//!   `--cgroup` is decided here. What was learned about the old program's threads is forgotten.
//! - exit: a watched group leader's exit is reported so userspace drops its connections; every
//!   exiting thread loses its WATCHED entry (pid reuse must not inherit selection) and its
//!   in-flight state.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracewire_common::{EventKind, ProcEvent, SELECT_WATCHED};

use crate::{
    maps::{ACTIVE, CGROUPS, PARENTS, THREAD_CTX},
    util::{clear_process, config, emit, header, is_watched, new_program, now, set_watched},
};

/// `sched:sched_process_fork`: the child_pid offset comes from tracefs (see `Config`).
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let off = (cfg.fork_child_pid_offset & 0xff) as usize;
    // SAFETY: offset validated by userspace against the tracepoint format; read via helper
    // because it is not a compile-time constant.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(off) }) else {
        return 0;
    };
    let _ = PARENTS.insert(child, tgid, 0);
    if cfg.select == SELECT_WATCHED {
        set_watched(child, true);
    }
    0
}

/// `sched:sched_process_exec`.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // A new program: what was learned about the old one's runtime no longer holds.
    new_program(tgid);
    if cfg.select == SELECT_WATCHED {
        // SAFETY: helper without arguments.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: presence test only.
        if unsafe { CGROUPS.get(cgroup) }.is_some() {
            set_watched(tgid, true);
        }
    } else if tgid == cfg.self_tgid {
        return 0;
    }
    let ev =
        ProcEvent { header: header(EventKind::Exec as u32, id, now()), pid: tgid, ppid: 0, comm: comm() };
    emit(&cfg, &ev);
    0
}

/// `sched:sched_process_exit`.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let cfg = config();
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    let _ = THREAD_CTX.remove(tid);
    let _ = ACTIVE.remove(id);
    if tid != tgid {
        if cfg.select == SELECT_WATCHED {
            clear_process(tid);
        }
        return 0;
    }
    let was = is_watched(tgid);
    // The pid will be reused: nothing about this process may stick to it.
    clear_process(tgid);
    if !was {
        return 0;
    }
    let ev =
        ProcEvent { header: header(EventKind::Exit as u32, id, now()), pid: tgid, ppid: 0, comm: comm() };
    emit(&cfg, &ev);
    0
}

/// The current task's name. The helper fills all 16 bytes (the name padded with zeros, or zeros
/// when it fails), so the buffer needs no zeroing first (see `util::zero`).
#[inline(always)]
fn comm() -> [u8; 16] {
    let mut c = core::mem::MaybeUninit::<[u8; 16]>::uninit();
    // SAFETY: a 16-byte local the helper writes whole.
    unsafe {
        generated::bpf_get_current_comm(c.as_mut_ptr().cast(), 16);
        c.assume_init()
    }
}
