//! Port security against arbitrary frames and settings: `security::check` never panics, and
//! what it lets through is sent as the port: its MAC or an allowed pair's, and an IPv4 or
//! IPv6 source it owns (or the unspecified address), ARP claiming only what it owns.
//!
//! Input: 6 bytes of MAC, 4 of IPv4 address, 16 of IPv6 address, 4 + 1 of a pair prefix and
//! length, 6 of the pair's MAC, 1 of flags (bit 0: allow RA, bit 1: allow DHCP server, bit
//! 2: the pair has a MAC, bit 3: copy the port's MAC into the frame's source, bit 4: copy its
//! IPv4 address into an IPv4 source), then the frame.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tapswitch_dataplane::pipeline::parse::parse;
use tapswitch_dataplane::pipeline::security::{check, link_local};
use tapswitch_dataplane::pipeline::{AllowedPair, PortSecurity};
use tapswitch_dataplane::wire::EthernetAddress;

const HEAD: usize = 6 + 4 + 16 + 5 + 6 + 1;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEAD {
        return;
    }
    let (h, frame) = data.split_at(HEAD);
    let mac = EthernetAddress::from_bytes(&h[..6]);
    let v4 = Ipv4Addr::new(h[6], h[7], h[8], h[9]);
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[10..26]);
    let v6 = Ipv6Addr::from(a);
    let pair_prefix = Ipv4Addr::new(h[26], h[27], h[28], h[29]);
    let pair_len = h[30] % 33;
    let pair_mac = EthernetAddress::from_bytes(&h[31..37]);
    let flags = h[37];
    let sec = PortSecurity {
        mac,
        ipv4: vec![v4],
        ipv6: vec![v6, link_local(mac)],
        pairs: vec![AllowedPair {
            prefix: IpAddr::V4(pair_prefix),
            len: pair_len,
            mac: (flags & 4 != 0).then_some(pair_mac),
        }],
        allow_ra: flags & 1 != 0,
        allow_dhcp_server: flags & 2 != 0,
    };
    let mut frame = frame.to_vec();
    if flags & 8 != 0 && frame.len() >= 12 {
        frame[6..12].copy_from_slice(mac.as_bytes());
    }
    if flags & 16 != 0 && frame.len() >= 14 + 20 && frame[12..14] == [8, 0] {
        frame[14 + 12..14 + 16].copy_from_slice(&v4.octets());
    }
    let Ok(headers) = parse(&frame) else {
        return;
    };
    if check(&sec, &headers, &frame).is_err() {
        return;
    }
    // Let through: from the port's MAC or the pair's.
    let src = headers.src;
    let pair_mac = sec.pairs[0].mac;
    assert!(src == mac || Some(src) == pair_mac, "{src} let through");
    let in_pair = |ip: Ipv4Addr| {
        let mask = u32::MAX.checked_shl(32 - u32::from(pair_len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(pair_prefix) & mask && pair_mac.unwrap_or(mac) == src
    };
    let off = headers.inner_offset;
    let Some(l3) = frame.get(off + 2..) else {
        return;
    };
    match frame.get(off..off + 2) {
        Some([8, 0]) if l3.len() >= 20 => {
            let ip = Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15]);
            assert!(
                ip.is_unspecified() || (src == mac && ip == v4) || in_pair(ip),
                "IPv4 from {ip} let through"
            );
        }
        Some([8, 6]) if l3.len() >= 28 => {
            let ip = Ipv4Addr::new(l3[14], l3[15], l3[16], l3[17]);
            assert_eq!(&l3[8..14], src.as_bytes(), "ARP sender MAC");
            assert!(
                ip.is_unspecified() || (src == mac && ip == v4) || in_pair(ip),
                "ARP claiming {ip} let through"
            );
        }
        Some([0x86, 0xdd]) if l3.len() >= 40 => {
            a.copy_from_slice(&l3[8..24]);
            let ip = Ipv6Addr::from(a);
            assert!(
                ip.is_unspecified() || (src == mac && (ip == v6 || ip == link_local(mac))),
                "IPv6 from {ip} let through"
            );
        }
        _ => {}
    }
});
