//! Opt-in `traceparent` injection: the sk_msg program on the sockets of selected clients, and
//! the check that makes it safe to turn on.
//!
//! A socket in a sockhash has its protocol operations replaced, and on kernels with commit
//! 929e30f93125 (6.6.128+, 6.12.75+, 6.18.14+) `ioctl(FIONREAD)` on such a socket reports 0
//! bytes while data waits: clients that size their reads with it (nginx, Java, .NET) stall. So
//! before anything is injected, the agent puts one loopback socket of its own in the map and asks
//! it; injection stays off where the answer is wrong, unless the operator overrides it for
//! workloads known never to call FIONREAD.
use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use aya::{
    Ebpf,
    maps::{Array, SockHash},
    programs::SkMsg,
};
use log::{info, warn};
use tracewire_common::maps;

use super::CaptureError;

const PROGRAM: &str = "inject_traceparent";
/// A key no kernel socket address can take (those are in the upper half).
const PROBE_KEY: u64 = 1;

/// Whether injection runs, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectState {
    /// Not asked for.
    Off,
    On,
    /// Asked for, and not safe here.
    Refused(String),
}

impl InjectState {
    pub fn describe(&self) -> String {
        match self {
            InjectState::Off => "off".into(),
            InjectState::On => "on".into(),
            InjectState::Refused(why) => format!("refused: {why}"),
        }
    }
}

/// Attaches the sk_msg program to the injection sockhash, after checking FIONREAD on a socket
/// in that map. `despite_fionread` attaches it even where FIONREAD is broken.
pub fn start(ebpf: &mut Ebpf, despite_fionread: bool) -> Result<InjectState, CaptureError> {
    let check = {
        let map = ebpf.map_mut(maps::INJECT_SOCKS).ok_or(CaptureError::MissingMap(maps::INJECT_SOCKS))?;
        let mut socks: SockHash<_, u64> = SockHash::try_from(map).map_err(CaptureError::Map)?;
        fionread_in_sockhash(&mut socks)
    };
    match check {
        Ok(()) => info!("traceparent injection on (FIONREAD checked on a socket in the sockhash)"),
        Err(why) if despite_fionread => warn!("traceparent injection on despite: {why}"),
        Err(why) => {
            warn!(
                "traceparent injection refused: {why}; clients that size reads with FIONREAD (nginx, Java, \
                 .NET) would stall. --inject-despite-fionread turns it on for workloads that never call it"
            );
            // The switch stays off: no socket ever joins the map, and the program is not attached.
            return Ok(InjectState::Refused(why));
        }
    }
    let fd = {
        let map = ebpf.map(maps::INJECT_SOCKS).ok_or(CaptureError::MissingMap(maps::INJECT_SOCKS))?;
        let socks: SockHash<_, u64> = SockHash::try_from(map).map_err(CaptureError::Map)?;
        socks.fd().try_clone().map_err(|e| CaptureError::Io("duplicating the sockhash fd".into(), e))?
    };
    let prog: &mut SkMsg = ebpf
        .program_mut(PROGRAM)
        .ok_or(CaptureError::MissingProgram(PROGRAM))?
        .try_into()
        .map_err(|e| CaptureError::Program { program: PROGRAM, source: e })?;
    prog.load().map_err(|e| CaptureError::Program { program: PROGRAM, source: e })?;
    prog.attach(&fd).map_err(|e| CaptureError::Program { program: PROGRAM, source: e })?;
    let map = ebpf.map_mut(maps::INJECT_ON).ok_or(CaptureError::MissingMap(maps::INJECT_ON))?;
    let mut on: Array<_, u32> = Array::try_from(map).map_err(CaptureError::Map)?;
    on.set(0, 1, 0).map_err(CaptureError::Map)?;
    Ok(InjectState::On)
}

/// Puts one end of a loopback connection in the sockhash, sends it bytes and asks FIONREAD how
/// many wait.
fn fionread_in_sockhash<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    socks: &mut SockHash<T, u64>,
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("FIONREAD check: {what}: {e}");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| io("bind", e))?;
    let client = TcpStream::connect(listener.local_addr().map_err(|e| io("local address", e))?)
        .map_err(|e| io("connect", e))?;
    let (mut server, _) = listener.accept().map_err(|e| io("accept", e))?;
    socks
        .insert(PROBE_KEY, client.as_raw_fd(), 0)
        .map_err(|e| format!("FIONREAD check: sockhash insert: {e}"))?;
    let result = (|| {
        const SENT: i32 = 7;
        server.write_all(b"fionrd!").map_err(|e| io("write", e))?;
        let mut pfd = libc::pollfd { fd: client.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 2000) } != 1 {
            return Err("FIONREAD check: the bytes never arrived".to_string());
        }
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(client.as_raw_fd(), libc::FIONREAD, &mut waiting) } != 0 {
            return Err(io("ioctl", std::io::Error::last_os_error()));
        }
        if waiting == SENT {
            Ok(())
        } else {
            Err(format!(
                "on this kernel a socket in a sockhash reports {waiting} bytes to ioctl(FIONREAD) while {SENT} wait"
            ))
        }
    })();
    let _ = socks.remove(&PROBE_KEY);
    result
}
