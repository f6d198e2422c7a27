//! Ring-buffer records → typed events. Pure code: no aya, no I/O, testable on recorded bytes.
pub mod clock;
pub mod decode;
pub mod record;

pub use decode::{DecodeError, Event, decode};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracewire_common::{FAMILY_V4, FAMILY_V6, SockAddr};

/// A kernel socket address as a std one (IPv4-mapped IPv6 shown as IPv4); `None` when unknown.
pub fn socket_addr(a: &SockAddr) -> Option<SocketAddr> {
    let ip = match a.family {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3])),
        FAMILY_V6 => {
            let v6 = Ipv6Addr::from(a.addr);
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, a.port))
}

/// The inverse of [`socket_addr`].
pub fn encode_sockaddr(a: &SocketAddr) -> SockAddr {
    match a {
        SocketAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.ip().octets());
            SockAddr { family: FAMILY_V4, port: v4.port(), addr }
        }
        SocketAddr::V6(v6) => SockAddr { family: FAMILY_V6, port: v6.port(), addr: v6.ip().octets() },
    }
}
