//! Sockets that existed before the agent started (or before a process was selected), found in
//! /proc: the process's socket inodes joined with its network namespace's TCP tables. Listeners
//! are added to the kernel's listener map, established connections to its connection map, and
//! both are traced from their next message.
use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

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

/// Network namespaces' TCP tables, each read once for a scan that covers many processes. A
/// namespace's table lists every socket in it (for the host's, every socket of the node): read
/// per process, starting in a busy host namespace cost the table's size once per process.
#[derive(Default)]
pub struct NetTables {
    by_ns: HashMap<u64, Rc<NetTable>>,
    /// Tables read (not taken from the cache).
    pub reads: usize,
}

struct NetTable {
    entries: Vec<TcpNetEntry>,
    /// Ports something listens on in the namespace: a connection on one is a server's.
    listening_ports: HashSet<u16>,
}

impl NetTables {
    /// The TCP tables of `proc_`'s network namespace.
    fn of(&mut self, proc_: &Process) -> Rc<NetTable> {
        use std::os::unix::fs::MetadataExt as _;
        // The namespace's identity: the inode its /proc link resolves to.
        let ns = std::fs::metadata(format!("/proc/{}/ns/net", proc_.pid)).map(|m| m.ino()).ok();
        if let Some(t) = ns.and_then(|ns| self.by_ns.get(&ns)) {
            return Rc::clone(t);
        }
        self.reads += 1;
        let mut entries: Vec<TcpNetEntry> = proc_.tcp().unwrap_or_default();
        entries.extend(proc_.tcp6().unwrap_or_default());
        let listening_ports =
            entries.iter().filter(|e| e.state == TcpState::Listen).map(|e| e.local_address.port()).collect();
        let table = Rc::new(NetTable { entries, listening_ports });
        if let Some(ns) = ns {
            self.by_ns.insert(ns, Rc::clone(&table));
        }
        table
    }
}

/// TCP sockets (listening or established) of `pid`, with its namespace's tables taken from (or
/// added to) `tables`.
pub fn tcp_sockets(pid: u32, tables: &mut NetTables) -> Vec<FoundSocket> {
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
    let table = tables.of(&proc_);
    let listening_ports = &table.listening_ports;
    table
        .entries
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_table_is_read_once_for_a_scan_of_many_processes() -> std::io::Result<()> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let c = std::net::TcpStream::connect(l.local_addr()?)?;
        let (accepted, _) = l.accept()?;
        let (listen_port, client_port) = (l.local_addr()?.port(), c.local_addr()?.port());
        let me = std::process::id();
        let mut tables = NetTables::default();
        // Other tests of this process open and close sockets meanwhile: only this test's own
        // sockets are compared.
        for _ in 0..3 {
            let found = tcp_sockets(me, &mut tables);
            let role_of = |local: u16, listening: bool| {
                found.iter().find(|s| s.local.port == local && s.listening == listening).map(|s| s.role)
            };
            assert_eq!(role_of(listen_port, true), Some(ROLE_UNKNOWN), "{found:?}");
            assert_eq!(role_of(client_port, false), Some(ROLE_CLIENT), "{found:?}");
            assert!(
                found.iter().any(|s| s.local.port == listen_port
                    && s.remote.port == client_port
                    && s.role == ROLE_SERVER),
                "{found:?}"
            );
        }
        assert_eq!(tables.reads, 1);
        drop((c, accepted));
        Ok(())
    }
}
