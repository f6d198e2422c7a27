//! A BPF program that does nothing, attached to a raw tracepoint: what bpf_stats reports for it
//! is bpf_stats' own cost per run (its two clock reads), the figure to subtract from every run
//! of tracewire's programs. Loaded with the bare `bpf()` syscall: two instructions need no
//! toolchain.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// The name bpftool shows (at most 15 bytes).
pub const NAME: &str = "tw_stats_empty";

/// The attached program; detached and unloaded when dropped (both fds close).
pub struct EmptyProgram {
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised union bpf_attr large enough for both commands.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl EmptyProgram {
    /// `r0 = 0; exit`, attached to raw tracepoint `tracepoint`.
    pub fn attach(tracepoint: &str) -> Result<EmptyProgram> {
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = CString::new("GPL")?;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
        let prog = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty raw tracepoint program")?;
        let name = CString::new(tracepoint)?;
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .with_context(|| format!("attaching the empty program to {tracepoint}"))?;
        Ok(EmptyProgram { _prog: prog, _link: link })
    }
}
