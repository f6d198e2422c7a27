//! Kernel structure layouts read from BTF, for the programs that are handed a kernel object
//! (the socket hooks receive `struct sock *`) and read a few fields of it.
use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use tracewire_common::SockOffsets;

/// Byte offset of `field` in the struct or union `ty`, looking through anonymous members.
fn member_offset(btf: &Btf, ty: &Type, field: &str) -> Option<u32> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return (m.bitfield_size().unwrap_or(0) == 0 && m.bit_offset() % 8 == 0)
                .then_some(m.bit_offset() / 8);
        }
        if name.is_empty() {
            let inner = resolve(btf, btf.resolve_chained_type(m).ok()?)?;
            if let Some(off) = member_offset(btf, &inner, field) {
                return Some(m.bit_offset() / 8 + off);
            }
        }
    }
    None
}

/// Follows typedefs and qualifiers to the underlying type.
fn resolve(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).ok()?,
            Type::Const(t) | Type::Volatile(t) => btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        };
        ty = next;
    }
    None
}

/// Where `struct sock_common` keeps a socket's family, ports and addresses on this kernel, and
/// `struct sock` its `struct socket`, or `None` when the BTF lacks any of them (a kernel without
/// IPv6, an unreadable file).
pub fn sock_offsets(vmlinux: &Path) -> Option<SockOffsets> {
    // Mapped, not parsed whole: parsing every type of vmlinux costs the agent ~18 MiB at start.
    let btf =
        Btf::from_file_with_backend(vmlinux, Backend::Mmap).or_else(|_| Btf::from_file(vmlinux)).ok()?;
    let sock_common =
        btf.resolve_types_by_name("sock_common").ok()?.into_iter().find(|t| matches!(t, Type::Struct(_)))?;
    let sock = btf.resolve_types_by_name("sock").ok()?.into_iter().find(|t| matches!(t, Type::Struct(_)))?;
    let at = |field: &str| member_offset(&btf, &sock_common, field).and_then(|o| u16::try_from(o).ok());
    Some(SockOffsets {
        valid: 1,
        daddr: at("skc_daddr")?,
        rcv_saddr: at("skc_rcv_saddr")?,
        dport: at("skc_dport")?,
        num: at("skc_num")?,
        family: at("skc_family")?,
        v6_daddr: at("skc_v6_daddr")?,
        v6_rcv_saddr: at("skc_v6_rcv_saddr")?,
        // `struct sock` starts with its `sock_common`, so offsets in either are from the socket.
        socket: member_offset(&btf, &sock, "sk_socket").and_then(|o| u16::try_from(o).ok())?,
        protocol: member_offset(&btf, &sock, "sk_protocol").and_then(|o| u16::try_from(o).ok())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 fields have sat at the start of `struct sock_common` for as long as BTF has
    /// existed; the IPv6 ones follow the bind node, the protocol and the netns pointers.
    #[test]
    fn this_kernels_sock_common() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return; // no BTF here: the agent refuses to start anyway
        }
        let o = sock_offsets(path).expect("sock_common in this kernel's BTF");
        assert_eq!((o.daddr, o.rcv_saddr, o.dport, o.num, o.family), (0, 4, 12, 14, 16));
        assert!(o.v6_daddr >= 24 && o.v6_rcv_saddr == o.v6_daddr + 16, "{o:?}");
        // Past the whole sock_common, 8-aligned (a pointer).
        assert!(o.socket >= 136 && o.socket.is_multiple_of(8), "{o:?}");
        // A plain u16 in `struct sock`, past its sock_common too.
        assert!(o.protocol >= 136 && o.protocol.is_multiple_of(2), "{o:?}");
    }
}
