//! Sockets that existed before the agent started (or before a process was selected), found in
//! /proc: the process's socket inodes joined with its network namespace's TCP tables. Listeners
//! are added to the kernel's listener map, established connections to its connection map, and
//! both are traced from their next message.
use std::collections::{HashMap, HashSet};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};
use tracewire_common::{ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SockAddr};

use crate::events::encode_sockaddr;

/// One socket of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSocket {
    /// fd in the process.
    pub fd: u32,
    /// Listening (true) or established (false).
    pub listening: bool,
    /// `ROLE_*` for established connections (server when the local port is a listening port).
    pub role: u8,
    /// Local address.
    pub local: SockAddr,
    /// Remote address.
    pub remote: SockAddr,
}

/// TCP sockets (listening or established) of `pid`.
pub fn tcp_sockets(pid: u32) -> Vec<FoundSocket> {
    let Ok(proc_) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let Ok(fds) = proc_.fd() else {
        return Vec::new();
    };
    let inodes: HashMap<u64, u32> = fds
        .filter_map(Result::ok)
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some((inode, fd.fd as u32)),
            _ => None,
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut table: Vec<TcpNetEntry> = proc_.tcp().unwrap_or_default();
    table.extend(proc_.tcp6().unwrap_or_default());
    let listening_ports: HashSet<u16> =
        table.iter().filter(|e| e.state == TcpState::Listen).map(|e| e.local_address.port()).collect();
    table
        .iter()
        .filter_map(|e| {
            let fd = *inodes.get(&e.inode)?;
            let listening = match e.state {
                TcpState::Listen => true,
                TcpState::Established | TcpState::CloseWait => false,
                _ => return None,
            };
            let role = if listening {
                ROLE_UNKNOWN
            } else if listening_ports.contains(&e.local_address.port()) {
                ROLE_SERVER
            } else {
                ROLE_CLIENT
            };
            Some(FoundSocket {
                fd,
                listening,
                role,
                local: encode_sockaddr(&e.local_address),
                remote: encode_sockaddr(&e.remote_address),
            })
        })
        .collect()
}
