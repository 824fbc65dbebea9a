//! Port security, part of the ingress stage: a workload on a port with addresses may send
//! only as itself.
//!
//! - Its source MAC is the port's (or that of an allowed address pair).
//! - IPv4 and IPv6 packets come from its addresses (an allowed pair's prefix with the pair's
//!   MAC), its link-local address included. The unspecified address is let through only
//!   where a host uses it before it has an address: a DHCP client's request (UDP to port 67)
//!   and ICMPv6 neighbour and router solicitations and MLD reports.
//! - ARP says the sender is who the frame says and claims only its addresses (`0.0.0.0`,
//!   an ARP probe, included); a neighbour advertisement claims only its addresses.
//! - Router advertisements and DHCP server messages (UDP from port 67, DHCPv6 from 547) are
//!   dropped unless the port may send them. IPv6 extension headers in front of ICMPv6 are
//!   walked (RFC 7113), and a first fragment whose upper layer cannot be found is dropped as
//!   if it were a router advertisement.
//!
//! Other EtherTypes pass once the MAC is the port's. Each refusal is a counted drop with its
//! reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parse::Headers;
use super::router::dhcp::SERVER_PORT as DHCP_SERVER;
use super::routing::{same_subnet_v4, same_subnet_v6};
use super::state::{AllowedPair, PortSecurity};
use super::DropReason;
use crate::wire::EthernetAddress;

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const DHCPV6_SERVER: u16 = 547;

/// Whether the port may send `frame` (its L2 headers parsed as `headers`).
pub fn check(sec: &PortSecurity, headers: &Headers, frame: &[u8]) -> Result<(), DropReason> {
    let mac = headers.src;
    if mac != sec.mac && !sec.pairs.iter().any(|p| p.mac == Some(mac)) {
        return Err(DropReason::SpoofedMac);
    }
    let off = headers.inner_offset;
    let (Some(ethertype), Some(l3)) = (frame.get(off..off + 2), frame.get(off + 2..)) else {
        return Ok(());
    };
    match [ethertype[0], ethertype[1]] {
        ETHERTYPE_ARP => arp(sec, mac, l3),
        ETHERTYPE_IPV4 => ipv4(sec, mac, l3),
        ETHERTYPE_IPV6 => ipv6(sec, mac, l3),
        _ => Ok(()),
    }
}

/// The port owns `ip` when sending from `mac`.
fn owns(sec: &PortSecurity, mac: EthernetAddress, ip: IpAddr) -> bool {
    let own = mac == sec.mac
        && match ip {
            IpAddr::V4(a) => sec.ipv4.contains(&a),
            IpAddr::V6(a) => sec.ipv6.contains(&a),
        };
    own || sec
        .pairs
        .iter()
        .any(|p| p.mac.unwrap_or(sec.mac) == mac && contains(p, ip))
}

fn contains(p: &AllowedPair, ip: IpAddr) -> bool {
    match (p.prefix, ip) {
        (IpAddr::V4(net), IpAddr::V4(a)) => same_subnet_v4(net, a, p.len),
        (IpAddr::V6(net), IpAddr::V6(a)) => same_subnet_v6(net, a, p.len),
        _ => false,
    }
}

fn arp(sec: &PortSecurity, mac: EthernetAddress, p: &[u8]) -> Result<(), DropReason> {
    // Ethernet/IPv4 ARP only: hardware type 1, protocol 0x0800, lengths 6 and 4.
    if p.len() < 28 || p[..6] != [0, 1, 8, 0, 6, 4] {
        return Err(DropReason::SpoofedArp);
    }
    let sender_mac = EthernetAddress::from_bytes(&p[8..14]);
    let sender_ip = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    if sender_mac != mac || !(sender_ip.is_unspecified() || owns(sec, mac, sender_ip.into())) {
        return Err(DropReason::SpoofedArp);
    }
    Ok(())
}

fn ipv4(sec: &PortSecurity, mac: EthernetAddress, p: &[u8]) -> Result<(), DropReason> {
    if p.len() < 20 {
        // Too short to say where it is from: the router counts it as a bad header.
        return Ok(());
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let first = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
    let udp_ports = (p[9] == UDP && first)
        .then(|| p.get(ihl..ihl + 4))
        .flatten()
        .map(|u| {
            (
                u16::from_be_bytes([u[0], u[1]]),
                u16::from_be_bytes([u[2], u[3]]),
            )
        });
    if src.is_unspecified() {
        // A DHCP client before it has an address.
        return match udp_ports {
            Some((_, DHCP_SERVER)) => Ok(()),
            _ => Err(DropReason::SpoofedSource),
        };
    }
    if !owns(sec, mac, src.into()) {
        return Err(DropReason::SpoofedSource);
    }
    if matches!(udp_ports, Some((DHCP_SERVER, _))) && !sec.allow_dhcp_server {
        return Err(DropReason::DhcpGuard);
    }
    Ok(())
}

/// What follows an IPv6 header, past its extension headers.
pub(super) enum Upper<'a> {
    /// The upper-layer protocol and its bytes.
    Found(u8, &'a [u8]),
    /// A later fragment of this upper-layer protocol: no upper-layer header in it.
    LaterFragment(u8),
    /// Cut short, or more extension headers than are walked.
    Unknown,
}

/// Walks the extension headers from `next` (the IPv6 header's next header) over `rest` (what
/// follows the IPv6 header).
pub(super) fn upper(mut next: u8, mut rest: &[u8]) -> Upper<'_> {
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units past the first 8.
            0 | 43 | 60 => {
                let Some(h) = rest.get(..2) else {
                    return Upper::Unknown;
                };
                let len = (usize::from(h[1]) + 1) * 8;
                let Some(after) = rest.get(len..) else {
                    return Upper::Unknown;
                };
                next = h[0];
                rest = after;
            }
            // Fragment.
            44 => {
                let Some(h) = rest.get(..8) else {
                    return Upper::Unknown;
                };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Upper::LaterFragment(h[0]);
                }
                next = h[0];
                rest = &rest[8..];
            }
            proto => return Upper::Found(proto, rest),
        }
    }
    Upper::Unknown
}

fn ipv6(sec: &PortSecurity, mac: EthernetAddress, p: &[u8]) -> Result<(), DropReason> {
    if p.len() < 40 {
        return Ok(());
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&p[8..24]);
    let src = Ipv6Addr::from(a);
    let upper = upper(p[6], &p[40..]);
    if src.is_unspecified() {
        // Before the host has an address: duplicate address detection (neighbour
        // solicitations), router solicitations and MLD reports; nothing else.
        return match upper {
            Upper::Found(ICMPV6, icmp) if matches!(icmp.first(), Some(131 | 133 | 135 | 143)) => {
                Ok(())
            }
            _ => Err(DropReason::SpoofedSource),
        };
    }
    if !owns(sec, mac, src.into()) {
        return Err(DropReason::SpoofedSource);
    }
    match upper {
        Upper::Found(ICMPV6, icmp) => match icmp.first() {
            Some(&ROUTER_ADVERTISEMENT) if !sec.allow_ra => Err(DropReason::RaGuard),
            Some(&NEIGHBOUR_ADVERTISEMENT) => {
                let Some(t) = icmp.get(8..24) else {
                    return Err(DropReason::SpoofedNd);
                };
                a.copy_from_slice(t);
                if owns(sec, mac, Ipv6Addr::from(a).into()) {
                    Ok(())
                } else {
                    Err(DropReason::SpoofedNd)
                }
            }
            _ => Ok(()),
        },
        Upper::Found(UDP, udp) if !sec.allow_dhcp_server => {
            match udp.get(..2).map(|s| u16::from_be_bytes([s[0], s[1]])) {
                Some(DHCPV6_SERVER) => Err(DropReason::DhcpGuard),
                _ => Ok(()),
            }
        }
        Upper::Found(..) | Upper::LaterFragment(_) => Ok(()),
        // Hidden behind more headers than are walked: it could be a router advertisement.
        Upper::Unknown if !sec.allow_ra => Err(DropReason::RaGuard),
        Upper::Unknown => Ok(()),
    }
}

/// The EUI-64 link-local address of `mac` (`fe80::` + the MAC with `ff:fe` in the middle and
/// the universal/local bit flipped), as a Linux host makes it by default.
pub fn link_local(mac: EthernetAddress) -> Ipv6Addr {
    let m = mac.as_bytes();
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;
    use crate::wire::builder::ethernet_frame;
    use crate::wire::EtherType;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 5]);
    const OTHER: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 6]);
    const VRRP: EthernetAddress = EthernetAddress([0, 0, 0x5e, 0, 1, 1]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 5);
    const IP6: Ipv6Addr = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 5);

    fn sec() -> PortSecurity {
        PortSecurity {
            mac: MAC,
            ipv4: vec![IP],
            ipv6: vec![IP6, link_local(MAC)],
            pairs: vec![AllowedPair {
                prefix: IpAddr::V4(Ipv4Addr::new(10, 42, 0, 100)),
                len: 32,
                mac: Some(VRRP),
            }],
            allow_ra: false,
            allow_dhcp_server: false,
        }
    }

    fn check_frame(sec: &PortSecurity, frame: &[u8]) -> Result<(), DropReason> {
        check(sec, &parse(frame).unwrap(), frame)
    }

    fn ipv4(src_mac: EthernetAddress, src: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[10, 42, 0, 1]);
        p.extend_from_slice(l4);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        ethernet_frame(
            EthernetAddress::BROADCAST,
            src_mac,
            None,
            EtherType::Ipv4,
            &p,
        )
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 8, 0, 0]);
        u
    }

    fn arp(src_mac: EthernetAddress, sender_mac: EthernetAddress, sender: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, 2];
        p.extend_from_slice(sender_mac.as_bytes());
        p.extend_from_slice(&sender.octets());
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[10, 42, 0, 1]);
        ethernet_frame(
            EthernetAddress::BROADCAST,
            src_mac,
            None,
            EtherType::Arp,
            &p,
        )
    }

    fn ipv6(src: Ipv6Addr, next: u8, upper: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(upper.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 255]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets());
        p.extend_from_slice(upper);
        ethernet_frame(EthernetAddress::BROADCAST, MAC, None, EtherType::Ipv6, &p)
    }

    fn icmpv6(kind: u8, target: Ipv6Addr) -> Vec<u8> {
        let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m
    }

    #[test]
    fn own_traffic_passes() {
        let s = sec();
        assert_eq!(check_frame(&s, &ipv4(MAC, IP, UDP, &udp(5000, 53))), Ok(()));
        assert_eq!(check_frame(&s, &arp(MAC, MAC, IP)), Ok(()));
        assert_eq!(
            check_frame(&s, &arp(MAC, MAC, Ipv4Addr::UNSPECIFIED)),
            Ok(())
        );
        assert_eq!(
            check_frame(&s, &ipv4(MAC, Ipv4Addr::UNSPECIFIED, UDP, &udp(68, 67))),
            Ok(())
        );
        assert_eq!(
            check_frame(&s, &ipv6(IP6, ICMPV6, &icmpv6(128, IP6))),
            Ok(())
        );
        assert_eq!(
            check_frame(&s, &ipv6(link_local(MAC), ICMPV6, &icmpv6(133, IP6))),
            Ok(())
        );
        assert_eq!(
            check_frame(&s, &ipv6(IP6, ICMPV6, &icmpv6(136, IP6))),
            Ok(())
        );
        // Duplicate address detection: a solicitation from the unspecified address.
        assert_eq!(
            check_frame(&s, &ipv6(Ipv6Addr::UNSPECIFIED, ICMPV6, &icmpv6(135, IP6))),
            Ok(())
        );
        // The allowed pair: its address from its MAC.
        let vip = Ipv4Addr::new(10, 42, 0, 100);
        assert_eq!(check_frame(&s, &ipv4(VRRP, vip, UDP, &udp(1, 2))), Ok(()));
        assert_eq!(check_frame(&s, &arp(VRRP, VRRP, vip)), Ok(()));
    }

    #[test]
    fn spoofing_is_dropped_with_its_reason() {
        let s = sec();
        let other_ip = Ipv4Addr::new(10, 42, 0, 6);
        assert_eq!(
            check_frame(&s, &ipv4(OTHER, IP, UDP, &udp(1, 2))),
            Err(DropReason::SpoofedMac)
        );
        assert_eq!(
            check_frame(&s, &ipv4(MAC, other_ip, UDP, &udp(1, 2))),
            Err(DropReason::SpoofedSource)
        );
        // The pair's address, but not from the pair's MAC.
        let vip = Ipv4Addr::new(10, 42, 0, 100);
        assert_eq!(
            check_frame(&s, &ipv4(MAC, vip, UDP, &udp(1, 2))),
            Err(DropReason::SpoofedSource)
        );
        // The unspecified source for anything but a DHCP request.
        assert_eq!(
            check_frame(&s, &ipv4(MAC, Ipv4Addr::UNSPECIFIED, UDP, &udp(68, 53))),
            Err(DropReason::SpoofedSource)
        );
        // ARP for a neighbour's address, a gratuitous ARP for it, another sender MAC.
        assert_eq!(
            check_frame(&s, &arp(MAC, MAC, other_ip)),
            Err(DropReason::SpoofedArp)
        );
        assert_eq!(
            check_frame(&s, &arp(MAC, OTHER, IP)),
            Err(DropReason::SpoofedArp)
        );
        let other6 = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 6);
        assert_eq!(
            check_frame(&s, &ipv6(other6, ICMPV6, &icmpv6(128, other6))),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            check_frame(&s, &ipv6(IP6, ICMPV6, &icmpv6(136, other6))),
            Err(DropReason::SpoofedNd)
        );
        assert_eq!(
            check_frame(&s, &ipv6(link_local(MAC), ICMPV6, &icmpv6(134, IP6))),
            Err(DropReason::RaGuard)
        );
        // An RA behind a hop-by-hop header is still one.
        let mut hbh = vec![ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend(icmpv6(134, IP6));
        assert_eq!(
            check_frame(&s, &ipv6(link_local(MAC), 0, &hbh)),
            Err(DropReason::RaGuard)
        );
        // DHCP server replies, v4 and v6.
        assert_eq!(
            check_frame(&s, &ipv4(MAC, IP, UDP, &udp(67, 68))),
            Err(DropReason::DhcpGuard)
        );
        assert_eq!(
            check_frame(&s, &ipv6(IP6, UDP, &udp(547, 546))),
            Err(DropReason::DhcpGuard)
        );
    }

    #[test]
    fn the_unspecified_source_only_solicits() {
        let s = sec();
        let any = Ipv6Addr::UNSPECIFIED;
        for kind in [131, 133, 135, 143] {
            assert_eq!(
                check_frame(&s, &ipv6(any, ICMPV6, &icmpv6(kind, IP6))),
                Ok(())
            );
        }
        let other6 = Ipv6Addr::new(0xfd42, 0, 0, 0, 0, 0, 0, 6);
        for kind in [128, 134, 136] {
            assert_eq!(
                check_frame(&s, &ipv6(any, ICMPV6, &icmpv6(kind, other6))),
                Err(DropReason::SpoofedSource),
                "type {kind}"
            );
        }
    }

    #[test]
    fn what_a_port_is_allowed_passes() {
        let mut s = sec();
        s.allow_ra = true;
        s.allow_dhcp_server = true;
        assert_eq!(
            check_frame(&s, &ipv6(link_local(MAC), ICMPV6, &icmpv6(134, IP6))),
            Ok(())
        );
        assert_eq!(check_frame(&s, &ipv4(MAC, IP, UDP, &udp(67, 68))), Ok(()));
        assert_eq!(check_frame(&s, &ipv6(IP6, UDP, &udp(547, 546))), Ok(()));
    }

    #[test]
    fn the_link_local_address_is_eui_64() {
        assert_eq!(
            link_local(EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
    }
}
