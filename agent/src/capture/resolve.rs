//! Socket addresses the kernel programs could not see (wildcard listeners, accept() called with a
//! NULL sockaddr, connections found in /proc): a copy of the target's fd is taken with
//! pidfd_getfd(2) and asked with getsockname/getpeername. Needs CAP_SYS_PTRACE.
use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use tracewire_common::{FAMILY_V4, FAMILY_V6, SockAddr};

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Duplicates `fd` of process `tgid` into this process.
fn steal_fd(tgid: u32, fd: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; the results are owned fds.
    unsafe {
        let pidfd = check(libc::syscall(libc::SYS_pidfd_open, tgid as libc::c_int, 0))?;
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = check(libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as libc::c_int, 0))?;
        Ok(OwnedFd::from_raw_fd(dup as i32))
    }
}

fn to_sockaddr(ss: &libc::sockaddr_storage) -> SockAddr {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
            SockAddr { family: FAMILY_V4, port: u16::from_be(sin.sin_port), addr }
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            SockAddr { family: FAMILY_V6, port: u16::from_be(sin6.sin6_port), addr: sin6.sin6_addr.s6_addr }
        }
        _ => SockAddr::default(),
    }
}

type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: RawFd, f: NameFn) -> io::Result<SockAddr> {
    // SAFETY: sockaddr_storage is valid zeroed; len is its size.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: pointers to our own storage.
    let rc = unsafe { f(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(to_sockaddr(&ss))
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pointers to our own int.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Local and remote address of `fd` in `tgid` when it is an inet TCP socket, `None` when it is
/// some other kind of fd. The remote is the default (family 0) for a listening socket.
pub fn tcp_socket(tgid: u32, fd: u32) -> io::Result<Option<(SockAddr, SockAddr)>> {
    let dup = steal_fd(tgid, fd)?;
    tcp_names(dup.as_raw_fd())
}

/// [`tcp_socket`] of an fd of this process.
fn tcp_names(fd: RawFd) -> io::Result<Option<(SockAddr, SockAddr)>> {
    let domain = match sockopt(fd, libc::SO_DOMAIN) {
        Ok(d) => d,
        // ENOTSOCK: a file, pipe...
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Ok(None),
        Err(e) => return Err(e),
    };
    if (domain != libc::AF_INET && domain != libc::AF_INET6)
        || sockopt(fd, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return Ok(None);
    }
    let local = name(fd, libc::getsockname)?;
    let remote = name(fd, libc::getpeername).unwrap_or_default();
    Ok(Some((local, remote)))
}

/// This process's connected TCP sockets, as (local, remote): its fds asked directly, a few
/// syscalls per fd. (The netns's socket table, which `/proc/self/net/tcp` lists, holds every
/// socket of the node for an agent in the host's namespace: reading it cost milliseconds.)
/// An fd closed by another thread meanwhile is skipped (its syscalls fail).
pub fn own_tcp_connections() -> Vec<(SockAddr, SockAddr)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| tcp_names(fd).ok().flatten())
        .filter(|(_, remote)| remote.family != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn resolves_own_sockets() -> io::Result<()> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let c = TcpStream::connect(("127.0.0.1", port))?;
        let me = std::process::id();
        let (local, remote) = tcp_socket(me, c.as_raw_fd() as u32)?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!(local.family, FAMILY_V4);
        assert_eq!(remote.port, port);
        assert_eq!(&remote.addr[..4], &[127, 0, 0, 1]);
        assert_eq!(local.port, c.local_addr()?.port());
        let (llocal, lremote) = tcp_socket(me, l.as_raw_fd() as u32)?.ok_or(io::ErrorKind::NotFound)?;
        assert_eq!(llocal.port, port);
        assert_eq!(lremote.family, 0);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        assert_eq!(tcp_socket(me, udp.as_raw_fd() as u32)?, None);
        let file = std::fs::File::open("/proc/self/status")?;
        assert_eq!(tcp_socket(me, file.as_raw_fd() as u32)?, None);
        Ok(())
    }

    #[test]
    fn lists_own_connections_and_not_listeners() -> std::io::Result<()> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpStream::connect(l.local_addr()?)?;
        let (accepted, _) = l.accept()?;
        let own = own_tcp_connections();
        let port = |s: &SockAddr| s.port;
        let listener = l.local_addr()?.port();
        let client = c.local_addr()?.port();
        // Both ends of the connection are this process's, each as (local, remote).
        assert!(own.iter().any(|(a, b)| port(a) == client && port(b) == listener), "{own:?}");
        assert!(own.iter().any(|(a, b)| port(a) == listener && port(b) == client), "{own:?}");
        // The listener has no remote.
        assert!(own.iter().all(|(_, b)| b.family != 0));
        drop((c, accepted));
        Ok(())
    }
}
