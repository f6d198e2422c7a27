//! Sockets that existed before the agent started (or before a process was selected), found in
//! /proc: the process's socket inodes joined with its network namespace's TCP tables. Listeners
//! are added to the kernel's listener map, established connections to its connection map, and
//! both are traced from their next message.
use std::collections::{HashMap, HashSet};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};
use tracewire_common::{FAMILY_V4, FAMILY_V6, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SockAddr};

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

/// Converts a std socket address.
pub fn sockaddr(a: &std::net::SocketAddr) -> SockAddr {
    match a {
        std::net::SocketAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.ip().octets());
            SockAddr { family: FAMILY_V4, port: v4.port(), addr }
        }
        std::net::SocketAddr::V6(v6) => {
            SockAddr { family: FAMILY_V6, port: v6.port(), addr: v6.ip().octets() }
        }
    }
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
                local: sockaddr(&e.local_address),
                remote: sockaddr(&e.remote_address),
            })
        })
        .collect()
}
