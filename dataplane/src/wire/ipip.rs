//! IPv4-in-IPv4 (RFC 2003): an outer IPv4 header with protocol 4 in front of an inner IPv4
//! packet, as the Linux `ipip` device and Calico's IPIP mode send it.

use std::net::Ipv4Addr;

use super::{IpProtocol, Ipv4Packet, WireError};

/// Length of the outer header tapswitch writes (no options).
pub const OUTER_LEN: usize = 20;

/// The outer header for an inner packet of `inner_len` bytes. `local` unspecified lets the
/// host fill in its source address (a raw socket with the header included does). DF is set,
/// as the Linux ipip device does with path MTU discovery on (its default); TOS is copied from
/// the inner header (`inner_tos`). The checksum is filled in.
pub fn outer_header(
    local: Ipv4Addr,
    remote: Ipv4Addr,
    inner_len: usize,
    inner_tos: u8,
    ident: u16,
    ttl: u8,
) -> [u8; OUTER_LEN] {
    let mut h = [0u8; OUTER_LEN];
    h[1] = inner_tos;
    let mut ip = Ipv4Packet::new_unchecked(&mut h[..]);
    ip.set_version(4);
    ip.set_header_len(OUTER_LEN as u8);
    ip.set_total_len((OUTER_LEN + inner_len).min(usize::from(u16::MAX)) as u16);
    ip.set_ident(ident);
    ip.set_frag(true, false, 0);
    ip.set_ttl(ttl);
    ip.set_protocol(IpProtocol::IpIp);
    ip.set_src_addr(local);
    ip.set_dst_addr(remote);
    ip.fill_checksum();
    h
}

/// Where the inner packet of a received IPIP packet (the whole outer packet, as a raw socket
/// hands it over) starts and how long it is. The inner packet must look like IPv4: version 4,
/// a header length of at least 20 that fits.
pub fn inner(outer: &[u8]) -> Result<(usize, usize), WireError> {
    let ip = Ipv4Packet::new_checked(outer)?;
    if ip.version() != 4 || ip.protocol() != IpProtocol::IpIp {
        return Err(WireError::Malformed);
    }
    let start = usize::from(ip.header_len());
    let end = usize::from(ip.total_len()).min(outer.len());
    let inner = outer.get(start..end).ok_or(WireError::Truncated)?;
    if inner.len() < 20 || inner[0] >> 4 != 4 || usize::from(inner[0] & 0x0f) * 4 < 20 {
        return Err(WireError::Malformed);
    }
    Ok((start, inner.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // scapy 2.8.0: IP(src="192.168.205.2", dst="192.168.205.5", id=7, flags="DF", ttl=64,
    // proto=4) / IP(src="10.42.0.2", dst="10.42.2.3", ttl=63, id=1) / ICMP() -- the outer
    // header only.
    static OUTER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x30, 0x00, 0x07, 0x40, 0x00, 0x40, 0x04, 0x1f, 0x6a, 0xc0, 0xa8, 0xcd,
        0x02, 0xc0, 0xa8, 0xcd, 0x05,
    ];

    #[test]
    fn outer_header_matches_fixture() {
        let h = outer_header(
            Ipv4Addr::new(192, 168, 205, 2),
            Ipv4Addr::new(192, 168, 205, 5),
            28,
            0,
            7,
            64,
        );
        assert_eq!(h, OUTER);
        assert!(Ipv4Packet::new_unchecked(&h[..]).verify_checksum());
    }

    #[test]
    fn inner_found_and_checked() {
        let mut pkt = OUTER.to_vec();
        let mut inner = vec![0u8; 28];
        inner[0] = 0x45;
        pkt.extend_from_slice(&inner);
        assert_eq!(super::inner(&pkt), Ok((20, 28)));
        // Not IPv4 inside.
        pkt[20] = 0x60;
        assert!(super::inner(&pkt).is_err());
        // Cut short.
        assert!(super::inner(&pkt[..30]).is_err());
        assert!(super::inner(&pkt[..10]).is_err());
        // Not protocol 4.
        let mut other = OUTER.to_vec();
        other[9] = 17;
        other.extend_from_slice(&inner);
        assert!(super::inner(&other).is_err());
    }
}
